"""Django admin for outreach."""

from django.contrib import admin
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
from core.admin import CustomerScopedAdmin


class SopStepInline(admin.TabularInline):
    model = SopStep
    extra = 0
    fields = ("order", "delay_minutes", "day", "at_time", "channel", "category", "template",
              "paused", "paused_reason")
    readonly_fields = ("paused_reason",)


@admin.register(Sop)
class SopAdmin(admin.ModelAdmin):
    list_display = ("name", "model", "stage", "active", "holdout_percent",
                    "override_stage_guard", "built_in")
    list_filter = ("active", "model", "built_in")
    search_fields = ("name",)
    list_select_related = ("model", "stage")
    readonly_fields = ("override_stage_guard", "overridden_by", "built_in")
    inlines = (SopStepInline,)


@admin.register(Enrollment)
class EnrollmentAdmin(CustomerScopedAdmin):
    list_display = ("customer", "sop", "entered_at", "status", "ended_at", "exit_reason")
    list_filter = ("status", "sop")
    search_fields = ("=customer__external_id", "customer__name")
    list_select_related = ("customer", "sop")
    raw_id_fields = ("customer",)


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    list_display = ("name", "status", "channel", "category", "send_at", "audience_size",
                    "started_at", "finished_at")
    list_filter = ("status", "channel", "category")
    search_fields = ("name",)
    readonly_fields = ("status", "audience_size", "started_at", "finished_at",
                       "override_stage_guard", "overridden_by")
    actions = ("cancel",)

    @admin.action(description=_("Cancel the unsent rest"))
    def cancel(self, request, queryset):
        for campaign in queryset.exclude(status__in=["done", "cancelled"]):
            services.campaign_cancel(campaign=campaign)


@admin.register(Message)
class MessageAdmin(CustomerScopedAdmin):
    list_display = ("id", "customer", "channel", "category", "status", "skip_reason", "due_at",
                    "sent_at", "attempts")
    list_filter = ("status", "skip_reason", "channel", "category")
    search_fields = ("=customer__external_id", "=provider_id", "=dedupe_key")
    list_select_related = ("customer",)
    raw_id_fields = ("customer", "enrollment", "sop_step", "campaign")
    readonly_fields = ("dedupe_key", "attempts", "provider_id", "claimed_at", "sent_at",
                       "delivered_at", "read_at", "replied_at", "clicked_at", "last_error")


@admin.register(OperatorTask)
class OperatorTaskAdmin(admin.ModelAdmin):
    list_display = ("title", "assignee", "kind", "status", "due_at", "closed_at")
    list_filter = ("status", "kind")
    search_fields = ("title", "=customer__external_id")
    list_select_related = ("assignee", "customer")
    raw_id_fields = ("customer", "message")


@admin.register(OutreachPolicy)
class OutreachPolicyAdmin(admin.ModelAdmin):
    list_display = ("promo_min_days_between", "promo_max_per_month", "block_rate_pause",
                    "block_min_sends", "max_attempts")

    def has_add_permission(self, request):
        return not OutreachPolicy.objects.exists()
