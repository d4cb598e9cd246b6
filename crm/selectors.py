"""Every non-trivial read of crm data, always scoped to the user who asks."""

from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Count, DecimalField, Exists, F, OuterRef, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce

from core import access, moments
from core.people import staff_name
from crm import extensions, timeline
from crm.models import Channel, Customer, CustomerNote, Event, Group, GroupMembership, Order


def customer_list(*, user, filters: dict[str, Any] | None = None) -> QuerySet[Customer]:
    """The customers the user may see, with what the list shows loaded in a fixed number of
    queries; `filters` holds extension filters (`tag`, `stage`, …) by name."""
    qs = access.scope_customers(Customer.objects.all(), user)
    qs = qs.select_related("channel", "owner", "referred_by")
    if filters:
        qs = customer_filter_extensions(qs, filters)
    return extensions.prepare_customers(qs)


def customer_filter_extensions(queryset: QuerySet[Customer],
                               filters: dict[str, list[str]]) -> QuerySet[Customer]:
    """Apply the filters other apps registered (`tag`, `segment`, `stage`, …) by name."""
    for name, values in filters.items():
        extension = extensions.customer_filters.get(name)
        if extension and values:
            queryset = extension.apply(queryset, values)
    return queryset


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
    sources = list(timeline.sources)
    total = sum(source.count(customer_id) for source in sources)
    start = (page - 1) * page_size
    if start >= total:
        # Past the end: nothing to fetch (and no LIMIT beyond what the database can count).
        return {"count": total, "results": []}
    need = page * page_size
    entries: list[dict] = []
    for source in sources:
        entries.extend(source.entries(customer_id, need))
    entries.sort(key=lambda e: e["at"], reverse=True)
    return {"count": total, "results": entries[start:start + page_size]}


def customer_notes(*, customer: Customer) -> QuerySet[CustomerNote]:
    return (CustomerNote.objects.filter(customer=customer).select_related("author")
            .order_by("-created_at", "-id"))


def customer_orders(*, customer: Customer, limit: int = 10) -> list[Order]:
    """The customer's latest orders with their items (two queries)."""
    return list(Order.objects.filter(customer=customer).prefetch_related("items")
                .order_by("-placed_at", "-id")[:limit])


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


# --- Dashboard ------------------------------------------------------------------------------

# Sort keys the customer list accepts, each with its tie-breaker so pages are stable.
CUSTOMER_SORTS: dict[str, tuple] = {
    "joined_at": (F("joined_at").asc(), F("id").asc()),
    "-joined_at": (F("joined_at").desc(), F("id").desc()),
    "name": (F("name").asc(), F("id").asc()),
    "-name": (F("name").desc(), F("id").desc()),
    "last_active_at": (F("last_active_at").asc(nulls_first=True), F("id").asc()),
    "-last_active_at": (F("last_active_at").desc(nulls_last=True), F("id").desc()),
    "orders_count": (F("orders_count").asc(), F("id").asc()),
    "-orders_count": (F("orders_count").desc(), F("id").desc()),
    "total_spent": (F("total_spent").asc(), F("id").asc()),
    "-total_spent": (F("total_spent").desc(), F("id").desc()),
}
CUSTOMER_DEFAULT_SORT = "-joined_at"


def dashboard_figures(*, user) -> dict[str, Any]:
    """The home page's figures in two aggregate queries: the user's customers (admins and
    analysts: all customers, analysts only ever as counts) and their paid orders."""
    # "The last N days" are calendar days ending today, as in the metrics (their default
    # range), so the home page and the Metrics page count the same orders.
    week_ago, month_ago = moments.last_days_start(7), moments.last_days_start(30)
    customers, orders = Customer.objects.all(), Order.objects.all()
    if access.user_role(user) != access.ANALYST:
        customers = access.scope_customers(customers, user)
        orders = access.scope_customers(orders, user, owner_field="customer__owner")
    deleted = Q(status=Customer.Status.DELETED_US)
    figures = customers.aggregate(
        total=Count("id"),
        new_7d=Count("id", filter=Q(joined_at__gte=week_ago)),
        active_30d=Count("id", filter=Q(last_active_at__gte=month_ago)),
        deleted_us=Count("id", filter=deleted),
        deleted_us_30d=Count("id", filter=deleted & Q(status_changed_at__gte=month_ago)),
    )
    money = DecimalField(max_digits=16, decimal_places=2)
    figures.update(orders.filter(status=Order.Status.PAID, placed_at__gte=month_ago).aggregate(
        orders_30d=Count("id"),
        revenue_30d=Coalesce(Sum("amount"), Value(Decimal("0")), output_field=money),
    ))
    total, orders_30d = figures["total"], figures["orders_30d"]
    figures["active_30d_percent"] = round(figures["active_30d"] * 100 / total) if total else 0
    figures["average_order_30d"] = (
        (figures["revenue_30d"] / orders_30d).quantize(Decimal("0.01")) if orders_30d else None)
    return figures


def dashboard_recent_events(*, user, limit: int = 15, window: int = 500) -> list[Event]:
    """The latest events of the user's customers (none for analysts), newest first. Only the
    last `window` received are sorted by time: the primary key index finds those at once,
    where sorting every event by `occurred_at` would read the whole table."""
    received = event_list(user=user).order_by("-id").values("id")[:window]
    return list(Event.objects.filter(id__in=received).select_related("customer")
                .order_by("-occurred_at", "-id")[:limit])


def customer_browse(*, user, search: str = "", channel: str = "", owner: str = "",
                    status: str = "", gender: str = "", sort: str = "",
                    extension_filters: dict[str, list[str]] | None = None,
                    ) -> QuerySet[Customer]:
    """The dashboard's customer list: `customer_list` narrowed by the filter bar and sorted
    by one of `CUSTOMER_SORTS`; an unknown sort falls back to the newest joined first."""
    qs = customer_search(customer_list(user=user, filters=extension_filters), search)
    if channel:
        qs = qs.filter(channel__code=channel)
    if owner:
        qs = qs.filter(owner__username=owner)
    if status:
        qs = qs.filter(status=status)
    if gender:
        qs = qs.filter(gender=gender)
    return qs.order_by(*CUSTOMER_SORTS.get(sort, CUSTOMER_SORTS[CUSTOMER_DEFAULT_SORT]))


def customer_filter_choices(*, user) -> dict[str, list[tuple[str, str]]]:
    """What the filter bar offers: every channel, and for admins the staff who own customers
    or hold the operator role (operators only ever see their own customers)."""
    channels = [(code, name) for code, name in
                Channel.objects.order_by("name", "code").values_list("code", "name")]
    owners: list[tuple[str, str]] = []
    if access.is_admin(user):
        owns = Customer.objects.filter(owner=OuterRef("pk"))
        staff = (get_user_model().objects.filter(is_active=True)
                 .filter(Q(groups__name=access.OPERATOR) | Exists(owns)).distinct()
                 .order_by("username"))
        owners = [(u.username, staff_name(u)) for u in staff]
    return {"channels": channels, "owners": owners}


def customer_current_groups(*, customer: Customer) -> QuerySet[GroupMembership]:
    """The groups the customer is in now, most recently joined first."""
    return (GroupMembership.objects.filter(customer=customer, left_at__isnull=True)
            .select_related("group").order_by("-joined_at", "-id"))
