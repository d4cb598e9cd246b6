"""Django admin for lifecycle."""

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from core.admin import CustomerScopedAdmin
from lifecycle import services
from lifecycle.models import CustomerStage, Stage, StageModel, StageTransition


class StageInline(admin.TabularInline):
    model = Stage
    extra = 0
    fields = ("position", "key", "name", "precedence", "color", "condition", "win_back_from")
    ordering = ("position",)


@admin.register(StageModel)
class StageModelAdmin(admin.ModelAdmin):
    list_display = ("name", "key", "active", "monotonic", "lock_days", "interval_minutes",
                    "last_evaluated_at")
    list_filter = ("active", "monotonic", "built_in")
    search_fields = ("name", "key")
    readonly_fields = ("built_in", "last_evaluated_at")
    inlines = (StageInline,)
    actions = ("evaluate_now",)

    @admin.action(description=_("Evaluate the selected models now"))
    def evaluate_now(self, request, queryset):
        results = services.stage_models_evaluate(keys=list(queryset.values_list("key",
                                                                                flat=True)))
        self.message_user(request, _("%(n)d customers moved.")
                          % {"n": sum(r.changed for r in results)})


@admin.register(CustomerStage)
class CustomerStageAdmin(CustomerScopedAdmin):
    list_display = ("customer", "model", "stage", "entered_at", "source", "locked_until")
    list_filter = ("model", "stage", "source")
    search_fields = ("=customer__external_id", "customer__name")
    list_select_related = ("customer", "model", "stage")
    raw_id_fields = ("customer",)


@admin.register(StageTransition)
class StageTransitionAdmin(CustomerScopedAdmin):
    list_display = ("at", "customer", "model", "from_key", "to_key", "source", "win_back",
                    "backward", "actor", "reason")
    list_filter = ("model", "source", "win_back", "backward")
    search_fields = ("=customer__external_id", "customer__name", "reason")
    list_select_related = ("customer", "model", "actor")
    raw_id_fields = ("customer", "from_stage", "to_stage")

    def has_change_permission(self, request, obj=None):
        return False    # the history is written by the services only

    def has_delete_permission(self, request, obj=None):
        return False    # nor deleted by hand (the metrics' stored spells build on it)
