"""Every non-trivial read of crm data, always scoped to the user who asks."""

from typing import Any

from django.db.models import Count, Exists, OuterRef, Q, QuerySet

from core import access
from crm import extensions, timeline
from crm.models import Customer, Event, Group, GroupMembership, Order


def customer_list(*, user, filters: dict[str, Any] | None = None) -> QuerySet[Customer]:
    """The customers the user may see, with what the list shows loaded in a fixed number of
    queries; `filters` holds extension filters (`tag`, `stage`, …) by name."""
    qs = access.scope_customers(Customer.objects.all(), user)
    qs = qs.select_related("channel", "owner", "referred_by")
    for name, values in (filters or {}).items():
        extension = extensions.customer_filters.get(name)
        if extension and values:
            qs = extension.apply(qs, values)
    return extensions.prepare_customers(qs)


def customer_search(queryset: QuerySet[Customer], term: str) -> QuerySet[Customer]:
    """Name (contains), external id or phone (exact or prefix)."""
    term = term.strip()
    if not term:
        return queryset
    return queryset.filter(Q(name__icontains=term) | Q(external_id__startswith=term)
                           | Q(phone__startswith=term))


def customer_get(*, user, pk: int) -> Customer:
    """A customer the user may see; anything else is a 404, never a 403 that leaks existence."""
    from django.shortcuts import get_object_or_404

    return get_object_or_404(customer_list(user=user), pk=pk)


def customer_timeline(*, customer_id: int, page: int, page_size: int) -> dict[str, Any]:
    """Entries of every registered source, newest first, paginated over the merged stream."""
    need = page * page_size
    entries: list[dict] = []
    total = 0
    for source in timeline.sources:
        entries.extend(source.entries(customer_id, need))
        total += source.count(customer_id)
    entries.sort(key=lambda e: e["at"], reverse=True)
    start = (page - 1) * page_size
    return {"count": total, "results": entries[start:start + page_size]}


def event_list(*, user) -> QuerySet[Event]:
    qs = access.scope_customers(Event.objects.all(), user, owner_field="customer__owner")
    return qs.select_related("customer")


def order_list(*, user) -> QuerySet[Order]:
    qs = access.scope_customers(Order.objects.all(), user, owner_field="customer__owner")
    return qs.select_related("customer").prefetch_related("items")


def group_list(*, user) -> QuerySet[Group]:
    """Admins see every group; operators the groups they own or where a customer of theirs is
    a member now."""
    qs = Group.objects.select_related("owner").annotate(
        member_count=Count("memberships", filter=Q(memberships__left_at__isnull=True))
    ).order_by("name", "id")
    role = access.user_role(user)
    if role == access.ADMIN:
        return qs
    if role == access.OPERATOR:
        mine = GroupMembership.objects.filter(group=OuterRef("pk"), left_at__isnull=True,
                                              customer__owner=user)
        return qs.filter(Q(owner=user) | Exists(mine))
    return qs.none()


def group_members(*, user, group: Group) -> QuerySet[Customer]:
    current = GroupMembership.objects.filter(group=group, customer=OuterRef("pk"),
                                             left_at__isnull=True)
    return customer_list(user=user).filter(Exists(current))
