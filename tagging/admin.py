"""Django admin for tagging: tag groups, tags, rules and segments are written by tagging's
services (core.admin.ServiceAdmin); customers' tags, their history, rule runs and bulk jobs are
shown only (manual tagging goes through the dashboard or `customers/{id}/tags/`)."""

from django.contrib import admin, messages
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from core.admin import CustomerScopedAdmin, ReadOnlyAdmin, ReadOnlyInline, ServiceAdmin
from tagging import services
from tagging.models import (
    BulkTagJob,
    CustomerTag,
    Segment,
    SegmentIndex,
    Tag,
    TagChange,
    TagGroup,
    TagRule,
    TagRuleRun,
)


class TagInline(ReadOnlyInline):
    """The group's tags; each is changed on its own page (tags keep their holders' history)."""

    model = Tag
    fields = ("name", "color", "order", "description")
    readonly_fields = fields


@admin.register(TagGroup)
class TagGroupAdmin(ServiceAdmin):
    list_display = ("name", "exclusive", "key", "order")
    search_fields = ("name",)
    inlines = (TagInline,)

    def service_save(self, request, original, fields, rows):
        return services.tag_group_save(group=original, **fields)


@admin.register(Tag)
class TagAdmin(ServiceAdmin):
    list_display = ("name", "group", "color", "order")
    list_filter = ("group",)
    search_fields = ("name", "group__name")
    list_select_related = ("group",)

    def service_save(self, request, original, fields, rows):
        return services.tag_save(tag=original, **fields)

    def service_delete(self, request, obj):
        services.tag_delete(tag=obj, actor=request.user)


@admin.register(CustomerTag)
class CustomerTagAdmin(CustomerScopedAdmin, ReadOnlyAdmin):
    list_display = ("customer", "tag", "source", "rule", "added_by", "added_at", "expires_at")
    list_filter = ("source", "tag__group", "tag")
    search_fields = ("=customer__external_id", "customer__name")
    list_select_related = ("customer", "tag", "rule", "added_by")
    raw_id_fields = ("customer",)


@admin.register(TagChange)
class TagChangeAdmin(CustomerScopedAdmin, ReadOnlyAdmin):
    list_display = ("at", "customer", "action", "tag_name", "group_name", "source", "rule", "actor")
    list_filter = ("action", "source")
    search_fields = ("=customer__external_id", "tag_name")
    list_select_related = ("customer", "rule", "actor")
    raw_id_fields = ("customer", "tag")
    show_full_result_count = False



class TagRuleRunInline(ReadOnlyInline):
    model = TagRuleRun
    fields = ("trigger", "started_at", "duration_ms", "matched", "added", "removed")
    readonly_fields = fields
    ordering = ("-started_at",)
    show_change_link = False


@admin.register(TagRule)
class TagRuleAdmin(ServiceAdmin):
    list_display = ("name", "tag", "mode", "active", "priority", "interval_minutes",
                    "last_run_at")
    list_filter = ("active", "mode", "tag__group")
    search_fields = ("name", "tag__name")
    list_select_related = ("tag",)
    actions = ("run_now",)
    inlines = (TagRuleRunInline,)
    readonly_fields = ("last_run_at",)

    @admin.action(description=_("Run the selected rules now"))
    def run_now(self, request, queryset):
        runs = [services.tag_rule_run(rule=rule) for rule in queryset]
        done = [r for r in runs if r is not None]
        self.message_user(request, ngettext(
            "%(n)d rule ran: %(added)d tags added, %(removed)d removed.",
            "%(n)d rules ran: %(added)d tags added, %(removed)d removed.", len(done)) % {
            "n": len(done), "added": sum(r.added for r in done),
            "removed": sum(r.removed for r in done)}, messages.SUCCESS)

    def service_save(self, request, original, fields, rows):
        return services.tag_rule_save(rule=original, **fields)


@admin.register(TagRuleRun)
class TagRuleRunAdmin(ReadOnlyAdmin):
    list_display = ("rule", "trigger", "started_at", "duration_ms", "matched", "added",
                    "removed", "scope_size")
    list_filter = ("trigger", "rule")
    list_select_related = ("rule",)


@admin.register(Segment)
class SegmentAdmin(ServiceAdmin):
    list_display = ("name", "created_by", "updated_at")
    search_fields = ("name",)
    readonly_fields = ("created_by",)

    def service_save(self, request, original, fields, rows):
        return services.segment_save(segment=original, actor=request.user, **fields)

    def service_delete(self, request, obj) -> None:
        services.segment_delete(segment=obj, actor=request.user)


@admin.register(BulkTagJob)
class BulkTagJobAdmin(ReadOnlyAdmin):
    list_display = ("id", "actor", "status", "total", "processed", "added", "removed",
                    "created_at")
    list_filter = ("status",)
    readonly_fields = ("status", "total", "processed", "added", "removed", "last_customer_id",
                       "error")


@admin.register(SegmentIndex)
class SegmentIndexAdmin(ReadOnlyAdmin):
    """The builds of the segment index: when, how big, how long (beat builds them,
    `manage.py build_segment_index` builds one now)."""

    list_display = ("id", "built_at", "customers", "size_bytes", "seconds")
    fields = list_display
