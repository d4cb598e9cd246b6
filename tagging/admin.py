"""Django admin for tagging."""

from django.contrib import admin, messages
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from core.admin import CustomerScopedAdmin
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


class TagInline(admin.TabularInline):
    model = Tag
    extra = 0
    fields = ("name", "color", "order", "description")


@admin.register(TagGroup)
class TagGroupAdmin(admin.ModelAdmin):
    list_display = ("name", "exclusive", "key", "order")
    list_editable = ("order",)
    search_fields = ("name",)
    inlines = (TagInline,)


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ("name", "group", "color", "order")
    list_filter = ("group",)
    search_fields = ("name", "group__name")
    list_select_related = ("group",)


@admin.register(CustomerTag)
class CustomerTagAdmin(CustomerScopedAdmin):
    list_display = ("customer", "tag", "source", "rule", "added_by", "added_at", "expires_at")
    list_filter = ("source", "tag__group", "tag")
    search_fields = ("=customer__external_id", "customer__name")
    list_select_related = ("customer", "tag", "rule", "added_by")
    raw_id_fields = ("customer",)


@admin.register(TagChange)
class TagChangeAdmin(CustomerScopedAdmin):
    list_display = ("at", "customer", "action", "tag_name", "group_name", "source", "rule", "actor")
    list_filter = ("action", "source")
    search_fields = ("=customer__external_id", "tag_name")
    list_select_related = ("customer", "rule", "actor")
    raw_id_fields = ("customer", "tag")
    show_full_result_count = False

    def has_change_permission(self, request, obj=None):
        return False   # history is written by the services only



class TagRuleRunInline(admin.TabularInline):
    model = TagRuleRun
    extra = 0
    max_num = 0
    can_delete = False
    fields = ("trigger", "started_at", "duration_ms", "matched", "added", "removed")
    readonly_fields = fields
    ordering = ("-started_at",)


@admin.register(TagRule)
class TagRuleAdmin(admin.ModelAdmin):
    list_display = ("name", "tag", "mode", "active", "priority", "interval_minutes",
                    "last_run_at")
    list_filter = ("active", "mode", "tag__group")
    search_fields = ("name", "tag__name")
    list_select_related = ("tag",)
    actions = ("run_now",)
    inlines = (TagRuleRunInline,)

    @admin.action(description=_("Run the selected rules now"))
    def run_now(self, request, queryset):
        runs = [services.tag_rule_run(rule=rule) for rule in queryset]
        done = [r for r in runs if r is not None]
        self.message_user(request, ngettext(
            "%(n)d rule ran: %(added)d tags added, %(removed)d removed.",
            "%(n)d rules ran: %(added)d tags added, %(removed)d removed.", len(done)) % {
            "n": len(done), "added": sum(r.added for r in done),
            "removed": sum(r.removed for r in done)}, messages.SUCCESS)


@admin.register(TagRuleRun)
class TagRuleRunAdmin(admin.ModelAdmin):
    list_display = ("rule", "trigger", "started_at", "duration_ms", "matched", "added",
                    "removed", "scope_size")
    list_filter = ("trigger", "rule")
    list_select_related = ("rule",)


@admin.register(Segment)
class SegmentAdmin(admin.ModelAdmin):
    list_display = ("name", "created_by", "updated_at")
    search_fields = ("name",)


@admin.register(BulkTagJob)
class BulkTagJobAdmin(admin.ModelAdmin):
    list_display = ("id", "actor", "status", "total", "processed", "added", "removed",
                    "created_at")
    list_filter = ("status",)
    readonly_fields = ("status", "total", "processed", "added", "removed", "last_customer_id",
                       "error")


@admin.register(SegmentIndex)
class SegmentIndexAdmin(admin.ModelAdmin):
    """The builds of the segment index: when, how big, how long (read-only; beat builds them,
    `manage.py build_segment_index` builds one now)."""

    list_display = ("id", "built_at", "customers", "size_bytes", "seconds")
    fields = list_display

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
