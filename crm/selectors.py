"""Every non-trivial read of crm data, always scoped to the user who asks."""

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet
from django.utils.translation import gettext as _

from core import access, conditions
from core.exceptions import ApplicationError
from core.people import staff_name
from crm import extensions, listing, timeline
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


def dashboard_recent_events(*, user, limit: int = 15, window: int = 500) -> list[Event]:
    """The latest events of the user's customers (none for analysts), newest first. Only the
    last `window` received are sorted by time: the primary key index finds those at once,
    where sorting every event by `occurred_at` would read the whole table."""
    received = event_list(user=user).order_by("-id").values("id")[:window]
    return list(Event.objects.filter(id__in=received).select_related("customer")
                .order_by("-occurred_at", "-id")[:limit])


# Filters the dashboard's filter bar translates into leaves of the condition language; other
# registered filter extensions (crm.extensions.customer_filters) narrow the queryset directly.
CONDITION_FILTERS = ("tag", "stage", "segment")
TAG_MODES = ("any", "all", "none")
EXACT_COUNT_LIMIT = 10_000      # beyond this many matches a count is PostgreSQL's estimate


@dataclass
class CustomerFilters:
    """What the customer list's filter bar asks for, as plain values."""

    search: str = ""
    channel: str = ""
    owner: str = ""
    status: str = ""
    gender: str = ""
    stages: list[str] = field(default_factory=list)    # "model:stage" ("model:a,b" too)
    tags: list[str] = field(default_factory=list)      # ids or names
    tag_mode: str = "any"
    segment: str = ""
    joined_from: date | None = None
    joined_to: date | None = None
    advanced: Any = None                               # a condition tree, ANDed

    @property
    def active(self) -> bool:
        return any((self.search, self.channel, self.owner, self.status, self.gender,
                    self.stages, self.tags, self.segment, self.joined_from, self.joined_to,
                    self.advanced))


def customer_filters_condition(*, filters: CustomerFilters) -> dict | None:
    """The filter bar as one condition (DESIGN §3), or None when nothing is filtered: the list,
    its count, the bulk actions on "all matching" and a campaign started from it all evaluate
    this same tree. A malformed stage or an unknown segment is an ApplicationError."""
    leaves: list[dict] = []
    term = filters.search.strip()
    if term:
        leaves.append({"any": [{"field": name, "op": "contains", "value": term}
                               for name in ("name", "external_id", "phone")]})
    for name, value in (("channel", filters.channel), ("owner", filters.owner),
                        ("status", filters.status), ("gender", filters.gender)):
        if value:
            leaves.append({"field": name, "op": "eq", "value": value})
    by_model: dict[str, list[str]] = {}
    for raw in filters.stages:
        model_key, sep, stage_keys = raw.partition(":")
        if not sep or not model_key or not stage_keys:
            raise ApplicationError(_("stage: use model_key:stage_key, e.g. value:dormant"))
        for key in stage_keys.split(","):
            if key.strip() and key.strip() not in by_model.setdefault(model_key, []):
                by_model[model_key].append(key.strip())
    for model_key, keys in by_model.items():
        leaves.append({"field": "stage", "model": model_key, "op": "in", "value": keys})
    if filters.tags:
        mode = filters.tag_mode if filters.tag_mode in TAG_MODES else "any"
        leaves.append({"field": "tag", "op": mode,
                       "value": [int(t) if t.isdigit() else t for t in filters.tags]})
    if filters.segment:
        leaves.append(_segment_condition(filters.segment))
    if filters.joined_from:
        leaves.append({"field": "joined_at", "op": "gte",
                       "value": filters.joined_from.isoformat()})
    if filters.joined_to:
        leaves.append({"field": "joined_at", "op": "lt",
                       "value": (filters.joined_to + timedelta(days=1)).isoformat()})
    if filters.advanced:
        leaves.append(filters.advanced)
    if not leaves:
        return None
    # Validated where it is compiled (customer_browse): a refused value is an error there.
    return leaves[0] if len(leaves) == 1 else {"all": leaves}


def _segment_condition(value: str) -> Any:
    source = listing.segment_sources.get("segments")
    found = source.condition(int(value)) if source and value.isdigit() else None
    if found is None:
        raise ApplicationError(_("segment: unknown segment %(id)r") % {"id": value})
    return found


def customer_browse(*, user, condition: Any = None, sort: str = "",
                    extension_filters: dict[str, list[str]] | None = None,
                    ) -> QuerySet[Customer]:
    """The dashboard's customer list: the customers the user may see that match `condition`
    (and any other registered filter extension), sorted by one of `CUSTOMER_SORTS`; an unknown
    sort falls back to the newest joined first."""
    qs = customer_list(user=user, filters=extension_filters)
    if condition is not None:
        qs = qs.filter(conditions.compile_condition(condition))
    return qs.order_by(*CUSTOMER_SORTS.get(sort, CUSTOMER_SORTS[CUSTOMER_DEFAULT_SORT]))


def customer_set(*, user, condition: Any = None,
                 customer_ids: list[int] | None = None) -> QuerySet[Customer]:
    """The customers a bulk action works on: the ids (a selection) or the condition ("all
    matching"), always within what the user may see; no ordering, nothing prefetched."""
    qs = access.scope_customers(Customer.objects.all(), user).order_by()
    if customer_ids is not None:
        qs = qs.filter(pk__in=customer_ids)
    if condition is not None:
        qs = qs.filter(conditions.compile_condition(condition))
    return qs


@dataclass(frozen=True)
class CustomerCount:
    """How many customers a list holds, and how that was found out: `exact` (counted now),
    `index` (from the segment index, as of `as_of`) or `estimate` (the planner's estimate)."""

    value: int
    kind: str
    as_of: datetime | None = None

    @property
    def exact(self) -> bool:
        return self.kind == "exact"


def customer_count(*, user, condition: Any, queryset: QuerySet[Customer],
                   narrowed: bool = False, limit: int | None = None) -> CustomerCount:
    """The list's total without a COUNT(*) over every customer on each page load: from the
    segment index when it can answer (it says as of when), else counted — but only up to
    `limit` matches; beyond that PostgreSQL's estimate. `narrowed`: the queryset is filtered
    by more than `condition` (a filter extension), which only a count of it knows."""
    limit = EXACT_COUNT_LIMIT if limit is None else limit
    base = queryset.order_by()
    if condition is None and not narrowed and access.is_admin(user):
        estimate = _table_estimate()
        if estimate is not None and estimate > limit:
            return CustomerCount(estimate, "estimate")
        return CustomerCount(base.count(), "exact")
    if not narrowed:
        asked = condition
        if asked is None:       # an operator's whole list: their customers
            asked = {"field": "owner", "op": "eq", "value": user.get_username()}
        for counter in listing.customer_counters:
            answer = counter(user=user, condition=asked)
            if answer is not None:
                return CustomerCount(answer.count, "index", answer.as_of)
    found = base[:limit + 1].count()
    if found <= limit or connection.vendor != "postgresql":
        return CustomerCount(found if found <= limit else base.count(), "exact")
    return CustomerCount(max(_query_estimate(base), limit + 1), "estimate")


def _table_estimate() -> int | None:
    """The planner's row count of the customers table (pg_class.reltuples), None where there
    is none (SQLite, a table never analysed)."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                       [Customer._meta.db_table])
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None and row[0] >= 0 else None


def _query_estimate(queryset: QuerySet) -> int:
    """The planner's estimate of the rows a query returns (EXPLAIN, nothing executed)."""
    sql, params = queryset.values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


def owner_ids() -> set[int]:
    """The ids of the staff who own at least one customer: one index probe per owner (a loose
    index scan written as a recursive query), where `SELECT DISTINCT owner_id` would read
    every customer and a correlated EXISTS per staff member is planned as a table scan for
    those who own nobody (PostgreSQL's generic estimate)."""
    table = connection.ops.quote_name(Customer._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH RECURSIVE owners(id) AS ("
            f"SELECT (SELECT MIN(owner_id) FROM {table}) UNION ALL "
            f"SELECT (SELECT MIN(c.owner_id) FROM {table} c WHERE c.owner_id > o.id) "
            f"FROM owners o WHERE o.id IS NOT NULL) "
            f"SELECT id FROM owners WHERE id IS NOT NULL")
        return {row[0] for row in cursor.fetchall()}


def staff_owner_choices() -> list[tuple[str, str]]:
    """The owner pickers' choices: active staff who hold the operator role or own customers,
    by username."""
    owning = owner_ids()
    staff = (get_user_model().objects.filter(is_active=True)
             .filter(Q(pk__in=owning) | Q(groups__name=access.OPERATOR)).distinct()
             .order_by("username"))
    return [(u.username, staff_name(u)) for u in staff]


def customer_filter_choices(*, user) -> dict[str, Any]:
    """What the filter bar offers: every channel; for admins the staff who own customers or
    hold the operator role (operators only ever see their own customers); and, from the
    condition language's registered fields (filled by the apps that own them), the stages of
    every model by name and the tags with their groups and colours; the saved segments."""
    channels = [(code, name) for code, name in
                Channel.objects.order_by("name", "code").values_list("code", "name")]
    owners: list[tuple[str, str]] = []
    if access.is_admin(user):
        owners = staff_owner_choices()
    stage_groups: list[dict[str, Any]] = []
    stage_field = conditions.fields.get("stage")
    if stage_field is not None and stage_field.choices:
        model_choices = stage_field.param_info.get("model", {}).get("choices")
        groups = {c["value"]: {"model": c["value"], "label": c["label"], "stages": []}
                  for c in (model_choices() if model_choices else [])}
        for stage in stage_field.choices():
            model_key = (stage.get("when") or {}).get("model", "")
            group = groups.setdefault(model_key, {"model": model_key, "label": model_key,
                                                  "stages": []})
            group["stages"].append({"value": f"{model_key}:{stage['value']}",
                                    "label": stage["label"], "color": stage.get("color", "")})
        stage_groups = [g for g in groups.values() if g["stages"]]
    tag_field = conditions.fields.get("tag")
    tags = tag_field.choices() if tag_field is not None and tag_field.choices else []
    source = listing.segment_sources.get("segments")
    segments = source.choices() if source else []
    return {"channels": channels, "owners": owners, "stage_groups": stage_groups,
            "tags": tags, "segments": segments}


def customer_current_groups(*, customer: Customer) -> QuerySet[GroupMembership]:
    """The groups the customer is in now, most recently joined first."""
    return (GroupMembership.objects.filter(customer=customer, left_at__isnull=True)
            .select_related("group").order_by("-joined_at", "-id"))
