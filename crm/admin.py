"""Django admin for crm: the columns, filters and searches an operator reaches for.

Querysets go through `core.access.scope_customers`, so an operator with admin-site access sees
only their own customers here too. Large tables use `show_full_result_count = False` and raw-id
widgets so that pages stay fast at a million rows.
"""

from django.contrib import admin
from django.db.models import Count, Q
from django.utils.translation import gettext_lazy as _

from core.admin import CustomerScopedAdmin
from crm.models import Channel, Customer, Event, Group, GroupMembership, Order, OrderItem


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    list_display = ("name", "code", "kind", "cost", "active", "customer_count", "created_at")
    list_filter = ("kind", "active")
    search_fields = ("name", "code")
    ordering = ("name",)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_customers=Count("customers"))

    @admin.display(description=_("customers"), ordering="_customers")
    def customer_count(self, obj):
        return obj._customers


class GroupMembershipInline(admin.TabularInline):
    model = GroupMembership
    extra = 0
    raw_id_fields = ("customer", "group")
    fields = ("group", "customer", "joined_at", "left_at")
    ordering = ("-joined_at",)
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("group", "customer")


class OrderInline(admin.TabularInline):
    model = Order
    extra = 0
    fields = ("source", "external_id", "amount", "status", "placed_at", "refunded_at")
    readonly_fields = fields
    ordering = ("-placed_at",)
    show_change_link = True
    can_delete = False
    max_num = 0


@admin.register(Customer)
class CustomerAdmin(CustomerScopedAdmin):
    owner_field = "owner"
    list_display = ("name", "external_id", "phone", "channel", "owner", "status", "opted_out",
                    "joined_at", "last_active_at", "orders_count", "total_spent")
    list_filter = ("status", "opted_out", "gender", "channel", "owner", "joined_at")
    search_fields = ("=external_id", "name", "^phone")
    list_select_related = ("channel", "owner")
    raw_id_fields = ("referred_by",)
    autocomplete_fields = ("channel",)
    readonly_fields = ("orders_count", "total_spent", "first_order_at", "last_order_at",
                       "last_active_at", "status_changed_at", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("external_id", "name", "phone", "gender", "city", "channel",
                           "owner", "referred_by")}),
        (_("Relationship"), {"fields": ("joined_at", "status", "status_changed_at", "opted_out",
                                        "attributes")}),
        (_("Aggregates"), {"fields": ("orders_count", "total_spent", "first_order_at",
                                      "last_order_at", "last_active_at")}),
        (_("Record"), {"fields": ("created_at", "updated_at")}),
    )
    inlines = (GroupMembershipInline, OrderInline)


@admin.register(Group)
class GroupAdmin(admin.ModelAdmin):
    list_display = ("name", "chat_id", "owner", "member_count", "created_at")
    search_fields = ("name", "=chat_id")
    list_filter = ("owner",)
    list_select_related = ("owner",)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            _members=Count("memberships", filter=Q(memberships__left_at__isnull=True)))

    @admin.display(description=_("members now"), ordering="_members")
    def member_count(self, obj):
        return obj._members


@admin.register(GroupMembership)
class GroupMembershipAdmin(CustomerScopedAdmin):
    list_display = ("group", "customer", "joined_at", "left_at")
    list_filter = ("group",)
    search_fields = ("=customer__external_id", "customer__name", "group__name")
    list_select_related = ("group", "customer")
    raw_id_fields = ("group", "customer")


class OrderItemInline(admin.TabularInline):
    model = OrderItem
    extra = 0
    fields = ("sku", "name", "category", "quantity", "price")


@admin.register(Order)
class OrderAdmin(CustomerScopedAdmin):
    list_display = ("external_id", "source", "customer", "amount", "status", "placed_at",
                    "refunded_at")
    list_filter = ("status", "source", "placed_at")
    search_fields = ("=external_id", "=customer__external_id", "customer__name")
    list_select_related = ("customer",)
    raw_id_fields = ("customer",)
    inlines = (OrderItemInline,)


@admin.register(OrderItem)
class OrderItemAdmin(CustomerScopedAdmin):
    owner_field = "order__customer__owner"
    list_display = ("name", "sku", "category", "quantity", "price", "order")
    list_filter = ("category",)
    search_fields = ("=sku", "name", "=order__external_id")
    list_select_related = ("order",)
    raw_id_fields = ("order",)


@admin.register(Event)
class EventAdmin(CustomerScopedAdmin):
    list_display = ("type", "customer", "occurred_at", "idempotency_key", "received_at")
    list_filter = ("type", "occurred_at")
    search_fields = ("=idempotency_key", "=customer__external_id")
    list_select_related = ("customer",)
    raw_id_fields = ("customer",)
    readonly_fields = ("received_at",)
