"""Django admin for crm: the columns, filters and searches an operator reaches for.

Querysets go through `core.access.scope_customers`, so an operator with admin-site access sees
only their own customers here too. Large tables use `show_full_result_count = False` and raw-id
widgets so that pages stay fast at a million rows. Channels, customers and groups are written by
crm's services (core.admin.ServiceAdmin); events, orders and memberships — facts from ingest —
are shown only.
"""

from django.contrib import admin
from django.db.models import Count, Q
from django.utils.translation import gettext_lazy as _

from core.admin import CustomerScopedAdmin, ReadOnlyAdmin, ReadOnlyInline, ServiceAdmin
from crm import services
from crm.models import Channel, Customer, Event, Group, GroupMembership, Order, OrderItem


@admin.register(Channel)
class ChannelAdmin(ServiceAdmin):
    list_display = ("name", "code", "kind", "cost", "active", "customer_count", "created_at")
    list_filter = ("kind", "active")
    search_fields = ("name", "code")
    ordering = ("name",)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_customers=Count("customers"))

    @admin.display(description=_("customers"), ordering="_customers")
    def customer_count(self, obj):
        return obj._customers

    def service_save(self, request, original, fields, rows):
        return services.channel_save(channel=original, **fields)

    def service_delete(self, request, obj) -> None:
        services.channel_delete(channel=obj)


class GroupMembershipInline(ReadOnlyInline):
    model = GroupMembership
    fields = ("group", "customer", "joined_at", "left_at")
    readonly_fields = fields
    ordering = ("-joined_at",)
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("group", "customer")


class OrderInline(ReadOnlyInline):
    model = Order
    fields = ("source", "external_id", "amount", "status", "placed_at", "refunded_at")
    readonly_fields = fields
    ordering = ("-placed_at",)


@admin.register(Customer)
class CustomerAdmin(CustomerScopedAdmin, ServiceAdmin):
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

    def service_save(self, request, original, fields, rows):
        if original is None:
            return services.customer_create(actor=request.user, **fields)
        return services.customer_update(actor=request.user, customer=original, **fields)

    def service_delete(self, request, obj):
        services.customer_delete(customer=obj)


@admin.register(Group)
class GroupAdmin(ServiceAdmin):
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

    def service_save(self, request, original, fields, rows):
        return services.group_save(actor=request.user, group=original, **fields)

    def service_delete(self, request, obj):
        services.group_delete(actor=request.user, group=obj)


@admin.register(GroupMembership)
class GroupMembershipAdmin(CustomerScopedAdmin, ReadOnlyAdmin):
    list_display = ("group", "customer", "joined_at", "left_at")
    list_filter = ("group",)
    search_fields = ("=customer__external_id", "customer__name", "group__name")
    list_select_related = ("group", "customer")
    raw_id_fields = ("group", "customer")


class OrderItemInline(ReadOnlyInline):
    model = OrderItem
    fields = ("sku", "name", "category", "quantity", "price")
    readonly_fields = fields
    show_change_link = False


@admin.register(Order)
class OrderAdmin(CustomerScopedAdmin, ReadOnlyAdmin):
    list_display = ("external_id", "source", "customer", "amount", "status", "placed_at",
                    "refunded_at")
    list_filter = ("status", "source", "placed_at")
    search_fields = ("=external_id", "=customer__external_id", "customer__name")
    list_select_related = ("customer",)
    raw_id_fields = ("customer",)
    inlines = (OrderItemInline,)


@admin.register(OrderItem)
class OrderItemAdmin(CustomerScopedAdmin, ReadOnlyAdmin):
    owner_field = "order__customer__owner"
    list_display = ("name", "sku", "category", "quantity", "price", "order")
    list_filter = ("category",)
    search_fields = ("=sku", "name", "=order__external_id")
    list_select_related = ("order",)
    raw_id_fields = ("order",)


@admin.register(Event)
class EventAdmin(CustomerScopedAdmin, ReadOnlyAdmin):
    list_display = ("type", "customer", "occurred_at", "idempotency_key", "received_at")
    list_filter = ("type", "occurred_at")
    search_fields = ("=idempotency_key", "=customer__external_id")
    list_select_related = ("customer",)
    raw_id_fields = ("customer",)
    readonly_fields = ("received_at",)
