"""Django admin for lifecycle: a stage model and its stages are saved together by
`stage_model_save` (core.admin.ServiceAdmin) — the same checks as the API, thresholds included;
customers' stages and their transitions are shown only (moves go through the dashboard or
`customers/{id}/stage/`)."""

from django import forms
from django.contrib import admin
from django.db import models
from django.utils.translation import gettext_lazy as _

from core.admin import CustomerScopedAdmin, ReadOnlyAdmin, ServiceAdmin
from lifecycle import services
from lifecycle.models import CustomerStage, Stage, StageModel, StageTransition


class StageInline(admin.TabularInline):
    """A stage leaves its model through the API's `stages/{stage}/delete/`, which asks where
    its customers go."""

    model = Stage
    extra = 0
    can_delete = False
    formfield_overrides = {models.JSONField: {"widget": forms.Textarea(attrs={"rows": 2,
                                                                              "cols": 40})},
                           models.TextField: {"widget": forms.Textarea(attrs={"rows": 2,
                                                                              "cols": 24})}}
    fields = ("position", "key", "name", "description", "precedence", "color", "condition",
              "win_back_from")
    ordering = ("position",)


@admin.register(StageModel)
class StageModelAdmin(ServiceAdmin):
    list_display = ("name", "key", "active", "monotonic", "lock_days", "interval_minutes",
                    "last_evaluated_at")
    list_filter = ("active", "monotonic", "built_in")
    search_fields = ("name", "key")
    readonly_fields = ("built_in", "last_evaluated_at")
    inlines = (StageInline,)
    service_inline = StageInline
    actions = ("evaluate_now",)

    def service_save(self, request, original, fields, rows):
        return services.stage_model_save(model=original, stages=rows, **fields)

    def service_delete(self, request, obj):
        services.stage_model_delete(model=obj)

    @admin.action(description=_("Evaluate the selected models now"))
    def evaluate_now(self, request, queryset):
        results = services.stage_models_evaluate(keys=list(queryset.values_list("key",
                                                                                flat=True)))
        self.message_user(request, _("%(n)d customers moved.")
                          % {"n": sum(r.changed for r in results)})


@admin.register(CustomerStage)
class CustomerStageAdmin(CustomerScopedAdmin, ReadOnlyAdmin):
    list_display = ("customer", "model", "stage", "entered_at", "source", "locked_until")
    list_filter = ("model", "stage", "source")
    search_fields = ("=customer__external_id", "customer__name")
    list_select_related = ("customer", "model", "stage")
    raw_id_fields = ("customer",)


@admin.register(StageTransition)
class StageTransitionAdmin(CustomerScopedAdmin, ReadOnlyAdmin):
    """The history, written by the services only and never deleted by hand (the metrics'
    stored spells build on it)."""

    list_display = ("at", "customer", "model", "from_key", "to_key", "source", "win_back",
                    "backward", "actor", "reason")
    list_filter = ("model", "source", "win_back", "backward")
    search_fields = ("=customer__external_id", "customer__name", "reason")
    list_select_related = ("customer", "model", "actor")
    raw_id_fields = ("customer", "from_stage", "to_stage")
