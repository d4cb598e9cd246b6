"""Django admin for outreach: SOPs (with their steps), campaigns and the policy are written by
campaigns' services (core.admin.ServiceAdmin) — the stage guard and the template checks
included; enrolments, the outbox and to-dos are shown only."""

from django import forms
from django.contrib import admin
from django.db import models
from django.utils.translation import gettext_lazy as _

from campaigns import services
from campaigns.models import (
    Campaign,
    Enrollment,
    Message,
    OperatorTask,
    OutreachPolicy,
    Sop,
    SopStep,
)
from core.admin import CustomerScopedAdmin, ReadOnlyAdmin, ServiceAdmin


class SopStepInline(admin.TabularInline):
    model = SopStep
    extra = 0
    formfield_overrides = {models.JSONField: {"widget": forms.Textarea(attrs={"rows": 2,
                                                                              "cols": 24})},
                           models.TextField: {"widget": forms.Textarea(attrs={"rows": 3,
                                                                              "cols": 40})}}
    fields = ("order", "delay_minutes", "day", "at_time", "channel", "category", "template",
              "condition", "paused", "paused_reason")
    readonly_fields = ("paused_reason",)


@admin.register(Sop)
class SopAdmin(ServiceAdmin):
    list_display = ("name", "model", "stage", "active", "holdout_percent",
                    "override_stage_guard", "built_in")
    list_filter = ("active", "model", "built_in")
    search_fields = ("name",)
    list_select_related = ("model", "stage")
    readonly_fields = ("overridden_by", "created_by", "built_in")
    inlines = (SopStepInline,)
    service_inline = SopStepInline

    def service_save(self, request, original, fields, rows):
        return services.sop_save(sop=original, actor=request.user, steps=rows, **fields)

    def service_delete(self, request, obj):
        services.sop_delete(sop=obj)


@admin.register(Enrollment)
class EnrollmentAdmin(CustomerScopedAdmin, ReadOnlyAdmin):
    list_display = ("customer", "sop", "entered_at", "status", "ended_at", "exit_reason")
    list_filter = ("status", "sop")
    search_fields = ("=customer__external_id", "customer__name")
    list_select_related = ("customer", "sop")
    raw_id_fields = ("customer",)


@admin.register(Campaign)
class CampaignAdmin(ServiceAdmin):
    list_display = ("name", "status", "channel", "category", "send_at", "audience_size",
                    "started_at", "finished_at")
    list_filter = ("status", "channel", "category")
    search_fields = ("name",)
    readonly_fields = ("status", "audience_size", "started_at", "finished_at", "overridden_by",
                       "paused", "paused_reason", "counted_since", "created_by")
    actions = ("cancel", "resume")

    @admin.action(description=_("Cancel the unsent rest"))
    def cancel(self, request, queryset):
        for campaign in queryset.exclude(status__in=["done", "cancelled"]):
            services.campaign_cancel(campaign=campaign)

    @admin.action(description=_("Resume the paused campaigns"))
    def resume(self, request, queryset):
        for campaign in queryset.filter(paused=True):
            services.campaign_resume(campaign=campaign, actor=request.user)

    def service_save(self, request, original, fields, rows):
        return services.campaign_save(campaign=original, actor=request.user, **fields)

    def service_delete(self, request, obj):
        services.campaign_delete(campaign=obj)


@admin.register(Message)
class MessageAdmin(CustomerScopedAdmin, ReadOnlyAdmin):
    list_display = ("id", "customer", "channel", "category", "status", "skip_reason", "due_at",
                    "sent_at", "attempts")
    list_filter = ("status", "skip_reason", "channel", "category")
    search_fields = ("=customer__external_id", "=provider_id", "=dedupe_key")
    list_select_related = ("customer",)
    raw_id_fields = ("customer", "enrollment", "sop_step", "campaign")
    readonly_fields = ("dedupe_key", "attempts", "provider_id", "claimed_at", "sent_at",
                       "delivered_at", "read_at", "replied_at", "clicked_at", "last_error")


@admin.register(OperatorTask)
class OperatorTaskAdmin(ReadOnlyAdmin):
    list_display = ("title", "assignee", "kind", "status", "due_at", "closed_at")
    list_filter = ("status", "kind")
    search_fields = ("title", "=customer__external_id")
    list_select_related = ("assignee", "customer")
    raw_id_fields = ("customer", "message")


@admin.register(OutreachPolicy)
class OutreachPolicyAdmin(ServiceAdmin):
    list_display = ("promo_min_days_between", "promo_max_per_month", "block_rate_pause",
                    "block_min_sends", "max_attempts")

    def has_add_permission(self, request):
        return not OutreachPolicy.objects.exists()

    def has_delete_permission(self, request, obj=None):
        return False

    def service_save(self, request, original, fields, rows):
        return services.policy_save(**fields)
