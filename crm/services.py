"""Every write to crm's facts: customers, events, orders, groups, imports, aggregates.

Ingestion is set-based per batch: a handful of statements for a batch of up to 1000 items, no
query per item. It is idempotent under races because the database decides what is new
(`INSERT … ON CONFLICT DO NOTHING RETURNING`), and only newly stored facts have effects.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import operator
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import reduce
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.db.models import (
    BigIntegerField,
    Case,
    Count,
    DateTimeField,
    DecimalField,
    Exists,
    F,
    IntegerField,
    Max,
    Min,
    OuterRef,
    Q,
    Subquery,
    Sum,
    Value,
    When,
    Window,
)
from django.db.models.functions import Coalesce, Greatest, RowNumber
from django.utils import timezone, translation
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.translation import gettext as _

from core import access, audit, moments
from core.db import (
    Differs,
    heavy_statements,
    in_pk_range,
    insert_ignore_returning,
    pk_ranges,
    update_to_later,
)
from core.exceptions import ApplicationError
from core.text import find_unstorable
from crm.hooks import customers_deleted_us, notify_customers_touched
from crm.models import (
    EVENT_COUNT_LATEST,
    INBOUND_EVENT_TYPES,
    LATEST_FIELDS,
    STATUS_EVENT_TYPES,
    Channel,
    Customer,
    CustomerImport,
    CustomerNote,
    ErasedIdentity,
    Event,
    EventCount,
    Group,
    GroupMembership,
    Order,
    OrderItem,
)

logger = logging.getLogger(__name__)
ERASED_PREFIX = "erased:"       # the external id of a customer erased on request: erased:<id>
User = get_user_model()

MAX_BATCH = 1000
MAX_QUANTITY = 2_147_483_647  # the column is a PostgreSQL integer
PROFILE_FIELDS = ("name", "phone", "city", "gender")


# --- Reports --------------------------------------------------------------------------------

@dataclass
class IngestReport:
    """The bulk-ingest answer of DESIGN §4: accepted, duplicates, per-item rejections."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, int] = field(default_factory=dict)

    def reject(self, index: int, message: str) -> None:
        self.rejected.append({"index": index, "message": message})

    def as_dict(self) -> dict[str, Any]:
        self.rejected.sort(key=lambda r: r["index"])
        return {"accepted": self.accepted, "duplicates": self.duplicates,
                "rejected": self.rejected, **self.extra}


class ItemError(Exception):
    """One item of a batch is invalid; the message names the field."""


# --- Small parsers shared by the ingest paths --------------------------------------------------

def parse_timestamp(value: Any, name: str, *, default_now: bool = False) -> datetime | None:
    """A fact's time: an ISO 8601 date or date-time, in UTC, not more than
    INGEST_MAX_FUTURE_MINUTES ahead of now (core.moments)."""
    if value in (None, ""):
        if default_now:
            return timezone.now()
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = parse_datetime(value.strip())
        except ValueError:
            parsed = None
        if parsed is None:
            day = None
            try:
                day = parse_date(value.strip())
            except ValueError:
                day = None
            if day is None:
                raise ItemError(_("%(name)s: not an ISO 8601 date-time: %(value)r")
                                % {"name": name, "value": value})
            parsed = datetime(day.year, day.month, day.day)
    else:
        raise ItemError(_("%(name)s: must be an ISO 8601 string") % {"name": name})
    try:
        return moments.check_past(moments.in_utc(parsed))
    except moments.MomentError as exc:
        raise ItemError(f"{name}: {exc}")


def _text(item: dict, name: str, *, required: bool = False, max_length: int = 128,
          prefix: str = "") -> str:
    value = item.get(name)
    label = f"{prefix}{name}"
    if value is None or value == "":
        if required:
            raise ItemError(_("%(name)s: this field is required") % {"name": label})
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ItemError(_("%(name)s: must be a string") % {"name": label})
    value = str(value).strip()
    if not _storable(value):
        raise ItemError(_("%(name)s: must be text without NUL characters or lone surrogates")
                        % {"name": label})
    if required and not value:
        raise ItemError(_("%(name)s: this field is required") % {"name": label})
    if len(value) > max_length:
        raise ItemError(_("%(name)s: at most %(n)d characters") % {"name": label, "n": max_length})
    return value


def _storable(value: Any) -> bool:
    """Whether the database can store every string (key or value) of a JSON value."""
    return find_unstorable(value) is None


def _decimal(value: Any, name: str) -> Decimal:
    if isinstance(value, bool) or value is None or value == "":
        raise ItemError(_("%(name)s: this field is required") % {"name": name})
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ItemError(_("%(name)s: not a decimal number: %(value)r")
                        % {"name": name, "value": value})
    if not number.is_finite() or number < 0:
        raise ItemError(_("%(name)s: must be a number at or above 0") % {"name": name})
    # The size first: quantizing a number too large for the context (1e30) raises.
    if number >= Decimal("1e12") or number != number.quantize(Decimal("0.01")):
        raise ItemError(_("%(name)s: at most 12 digits before and 2 after the point")
                        % {"name": name})
    return number.quantize(Decimal("0.01"))


def check_batch(items: Any) -> list[Any]:
    """One object or a list of at most MAX_BATCH; anything else is a 400 for the whole request."""
    if isinstance(items, dict):
        return [items]
    if not isinstance(items, list):
        raise ApplicationError(_("Expected an object or a list of objects."))
    if not items:
        raise ApplicationError(_("The list is empty: send at least one item."))
    if len(items) > MAX_BATCH:
        raise ApplicationError(
            _("Too many items: at most %(max)d per request, got %(n)d.")
            % {"max": MAX_BATCH, "n": len(items)},
            extra={"max": MAX_BATCH, "count": len(items)})
    return items


# --- Look-ups in bulk ------------------------------------------------------------------------

def _customer_ids(external_ids: set[str], actor) -> dict[str, int]:
    if not external_ids:
        return {}
    qs = access.scope_customers(Customer.objects.filter(external_id__in=external_ids), actor)
    return dict(qs.values_list("external_id", "id"))


def _users_by_username(usernames: set[str]) -> dict[str, int]:
    if not usernames:
        return {}
    return dict(User.objects.filter(username__in=usernames, is_active=True)
                .values_list("username", "id"))


def channels_by_code(codes: set[str], *, create_missing: bool) -> dict[str, int]:
    """Channel ids by code; unknown codes (a new WeCom `state`) are created when asked."""
    if not codes:
        return {}
    found = dict(Channel.objects.filter(code__in=codes).values_list("code", "id"))
    missing = codes - found.keys()
    if missing and create_missing:
        now = timezone.now()
        Channel.objects.bulk_create(
            [Channel(code=c, name=c, kind=Channel.Kind.OTHER, created_at=now, updated_at=now)
             for c in sorted(missing)],
            ignore_conflicts=True)
        found.update(Channel.objects.filter(code__in=missing).values_list("code", "id"))
    return found


def _lock_customers(ids) -> None:
    """Lock the customers' rows in id order, so concurrent batches never deadlock.

    FOR NO KEY UPDATE, the lock an UPDATE of the figures takes anyway: batches still wait for
    each other, but not for the foreign-key checks (FOR KEY SHARE) of a worker writing rows
    that point at these customers — a stage evaluation or an enrolment, whose transaction
    takes them in any order and may last seconds. A plain FOR UPDATE conflicts with those,
    and under load the two deadlocked (bench/soak.py, 1,000 events/s at 1M)."""
    if ids:
        list(Customer.objects.select_for_update(no_key=True).filter(pk__in=ids).order_by("pk")
             .values_list("pk", flat=True))


def _update_by_pk(field_name: str, values: dict[int, Any], output_field, **filters) -> int:
    """One UPDATE that sets a different value per customer (CASE on the primary key)."""
    if not values:
        return 0
    case = Case(*[When(pk=pk, then=Value(v, output_field=output_field))
                  for pk, v in values.items()], output_field=output_field)
    return Customer.objects.filter(pk__in=values.keys(), **filters).update(
        **{field_name: case, "updated_at": timezone.now()})


# --- Customers -------------------------------------------------------------------------------

def customer_owner_for(*, actor, requested_owner=None):
    """The owner of a customer an actor creates: operators own what they create."""
    if requested_owner is None:
        return actor
    if access.user_role(actor) != access.ADMIN and requested_owner.pk != actor.pk:
        raise ApplicationError(_("owner: operators can only create or keep customers they own."),
                               extra={"field": "owner"})
    return requested_owner


def _joined_at(fields: dict[str, Any]) -> None:
    """A joining date is a fact's time: within the years held, not ahead of now."""
    if fields.get("joined_at") is not None:
        try:
            fields["joined_at"] = moments.check_past(moments.in_utc(fields["joined_at"]))
        except moments.MomentError as exc:
            raise ApplicationError(f"joined_at: {exc}", extra={"field": "joined_at"})


@transaction.atomic
def customer_create(*, actor, external_id: str, owner=None, **fields: Any) -> Customer:
    _joined_at(fields)
    customer = Customer(external_id=external_id,
                        owner=customer_owner_for(actor=actor, requested_owner=owner), **fields)
    if customer.status != Customer.Status.ACTIVE and customer.status_changed_at is None:
        customer.status_changed_at = timezone.now()
    customer.full_clean()
    customer.save()
    logger.info("crm.customer_created", extra={"customer_id": customer.pk})
    notify_customers_touched([customer.pk])
    return customer


@transaction.atomic
def customer_update(*, actor, customer: Customer, **fields: Any) -> Customer:
    if "owner" in fields:
        fields["owner"] = customer_owner_for(actor=actor, requested_owner=fields["owner"])
    if "status" in fields and fields["status"] != customer.status:
        customer.status_changed_at = timezone.now()
    _joined_at(fields)
    joined_before = customer.joined_at
    for name, value in fields.items():
        setattr(customer, name, value)
    customer.full_clean()
    customer.save()
    if joined_before != customer.joined_at:    # "since joining" counts move with the date
        event_counts_refresh(customer_ids=[customer.pk])
    notify_customers_touched([customer.pk])
    return customer


@transaction.atomic
def customer_delete(*, customer: Customer) -> None:
    customer.delete()


# --- Personal-data requests (PIPL) ---------------------------------------------------------

def identity_hash(external_id: str) -> str:
    return hashlib.sha256(external_id.encode()).hexdigest()


def _erased_at(external_ids) -> dict[str, datetime]:
    """Erasure times of the external ids that were erased on request."""
    hashes = {identity_hash(e): e for e in external_ids}
    return {hashes[h]: at for h, at in ErasedIdentity.objects.filter(
        external_id_hash__in=hashes.keys()).values_list("external_id_hash", "erased_at")}


def _own_personal_data(customer: Customer) -> dict[str, Any]:
    profile = {name: getattr(customer, name) for name in (
        "external_id", "name", "phone", "gender", "city", "joined_at", "status",
        "status_changed_at", "opted_out", "attributes", "orders_count", "total_spent",
        "first_order_at", "last_order_at", "last_active_at", "created_at")}
    profile["owner"] = customer.owner.get_username() if customer.owner_id else None
    profile["channel"] = customer.channel.code if customer.channel_id else None
    return {
        "profile": profile,
        "events": list(customer.events.order_by("occurred_at", "pk").values(
            "type", "occurred_at", "received_at", "data")),
        "orders": [{**{k: getattr(o, k) for k in ("source", "external_id", "amount", "status",
                                                  "placed_at", "refunded_at")},
                    "items": list(o.items.values("sku", "name", "category", "quantity",
                                                 "price"))}
                   for o in customer.orders.prefetch_related("items").order_by("placed_at")],
        "notes": list(customer.notes.order_by("created_at").values(
            "text", "created_at", "author__username")),
        "groups": list(GroupMembership.objects.filter(customer=customer).order_by(
            "joined_at").values("group__chat_id", "group__name", "joined_at", "left_at")),
    }


def customer_personal_data(*, customer: Customer, actor) -> dict[str, Any]:
    """Everything held about one customer (a personal-data request): the profile, events,
    orders, notes and groups, and what the other apps hold (tags, stages, messages, …)."""
    from crm.extensions import personal_data

    data = _own_personal_data(Customer.objects.select_related("owner", "channel")
                              .get(pk=customer.pk))
    for part in personal_data:
        data[part.name] = part.export(customer)
    audit.record("customer.data_export", target=customer, customer=customer, actor=actor,
                 summary=customer.external_id)
    return data


@transaction.atomic
def customer_erase(*, customer: Customer, actor) -> dict[str, int]:
    """Erase a customer's personal data on request, keeping anonymous aggregates: the profile
    blanked (name, phone, city, attributes; the external id replaced, so nothing sent later
    under the old one lands here), the free text of events and notes gone, what other apps
    hold blanked (message contents, to-do texts, …); no more outreach (opted out). Orders,
    event types and times, stages and tags stay, without a person behind them. The old
    external id is remembered hashed: an import or sync does not bring the customer back, a
    `friend_added` after now (they added the brand again) does."""
    from crm.extensions import personal_data

    customer = Customer.objects.select_for_update().get(pk=customer.pk)
    if customer.external_id.startswith(ERASED_PREFIX):
        raise ApplicationError(_("This customer's personal data was erased already."))
    now = timezone.now()
    ErasedIdentity.objects.update_or_create(
        external_id_hash=identity_hash(customer.external_id), defaults={"erased_at": now})
    counts = {
        "events": customer.events.exclude(data={}).update(data={}),
        "notes": customer.notes.all().delete()[0],
    }
    Customer.objects.filter(pk=customer.pk).update(
        external_id=f"{ERASED_PREFIX}{customer.pk}", name="", phone="", city="",
        gender=Customer.Gender.UNKNOWN, attributes={}, opted_out=True, updated_at=now)
    for part in personal_data:
        counts.update({f"{part.name}.{k}": v for k, v in part.erase(customer).items()})
    audit.record("customer.erase", target=customer, customer=customer, actor=actor,
                 summary=_("personal data erased on request"), data=counts)
    notify_customers_touched([customer.pk])
    logger.info("crm.customer_erased", extra={"customer": customer.pk, **counts})
    return counts


def customer_aggregates_refresh(*, customer_ids=None, chunk_size: int = 20_000) -> int:
    """Recompute every customer aggregate from the facts, set-based, in primary-key chunks —
    for everyone writing only the rows whose aggregates differ (the nightly repair that finds
    nothing wrong writes nothing, and touches nobody).

    Used for repair (`refresh_customer_aggregates`) and by order ingestion, where a refund can
    move `last_order_at` backwards and only a recomputation is right. Returns rows updated.
    """
    paid = Order.objects.filter(customer=OuterRef("pk"), status=Order.Status.PAID)

    def agg(expr):
        return Subquery(paid.order_by().values("customer").annotate(v=expr).values("v")[:1])

    last_event = Subquery(
        Event.objects.filter(customer=OuterRef("pk"), type__in=INBOUND_EVENT_TYPES)
        .order_by("-occurred_at").values("occurred_at")[:1])
    dt = DateTimeField()
    last_order = agg(Max("placed_at"))
    values = {
        "orders_count": Coalesce(agg(Count("id")), Value(0), output_field=IntegerField()),
        "total_spent": Coalesce(agg(Sum("amount")), Value(Decimal("0")),
                                output_field=DecimalField(max_digits=14, decimal_places=2)),
        "first_order_at": agg(Min("placed_at")),
        "last_order_at": last_order,
        # GREATEST is NULL on SQLite when either side is; coalescing each side to the other
        # gives the later of the two, or whichever exists, on both databases.
        "last_active_at": Greatest(Coalesce(last_event, last_order, output_field=dt),
                                   Coalesce(last_order, last_event, output_field=dt),
                                   output_field=dt),
    }
    stale = reduce(operator.or_, (Q(Differs(F(name), value)) for name, value in values.items()))
    updated = 0
    if customer_ids is not None:
        ids = sorted(set(customer_ids))
        for start in range(0, len(ids), chunk_size):
            chunk = ids[start:start + chunk_size]
            with transaction.atomic():
                _lock_customers(chunk)
                # (given customers just had an order: their aggregates change anyway)
                updated += Customer.objects.filter(pk__in=chunk).update(**values)
        return updated
    for low, high in pk_ranges(Customer.objects.all(), chunk_size):
        with transaction.atomic():
            updated += Customer.objects.filter(stale, in_pk_range(low, high)).update(**values)
    return updated


def customer_facts_repair(*, customer_ids=None) -> tuple[int, int]:
    """The nightly repair: customer aggregates and per-type event counts recomputed from the
    facts (of everyone, or the given customers). Returns (customers updated, count rows
    written or deleted)."""
    return (customer_aggregates_refresh(customer_ids=customer_ids),
            event_counts_refresh(customer_ids=customer_ids))


# --- Event counts ----------------------------------------------------------------------------

def _event_counts_add(rows: list[tuple[int, str, datetime]]) -> None:
    """Add newly stored events — (customer id, type, occurred_at) — to the customers' counts
    and latest times: one read and one upsert per batch, in the events' transaction (the
    customers are locked, so nothing changes their rows in between)."""
    ids = {r[0] for r in rows}
    joined = dict(Customer.objects.filter(pk__in=ids).values_list("pk", "joined_at"))
    counts: dict[tuple[int, str], list] = defaultdict(lambda: [0, 0, []])
    for customer_id, kind, occurred_at in rows:
        cell = counts[(customer_id, kind)]
        cell[0] += 1
        cell[1] += occurred_at >= joined[customer_id]
        cell[2].append(occurred_at)
    stored = {(c, t): latest for c, t, *latest in EventCount.objects.filter(
        customer_id__in=ids, type__in={k for _c, k in counts}).values_list(
        "customer_id", "type", *LATEST_FIELDS)}
    table = EventCount._meta.db_table
    items = []
    adapt = connection.ops.adapt_datetimefield_value
    for key, (total, since, times) in counts.items():
        merged = sorted([t for t in stored.get(key, ()) if t is not None] + times,
                        reverse=True)[:EVENT_COUNT_LATEST]
        items.append((*key, total, since, *(adapt(t) for t in merged),
                      *[None] * (EVENT_COUNT_LATEST - len(merged))))
    columns = ("customer_id", "type", "total", "since_joined", *LATEST_FIELDS)
    marks = "(" + ", ".join(["%s"] * len(columns)) + ")"
    with connection.cursor() as cursor:
        for start in range(0, len(items), 1000):
            chunk = items[start:start + 1000]
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                + ", ".join([marks] * len(chunk))
                + f" ON CONFLICT (customer_id, type) DO UPDATE SET "
                f"total = {table}.total + excluded.total, "
                f"since_joined = {table}.since_joined + excluded.since_joined, "
                + ", ".join(f"{c} = excluded.{c}" for c in LATEST_FIELDS),
                [v for item in chunk for v in item])


def event_counts_refresh(*, customer_ids=None, chunk_size: int = 200_000) -> int:
    """Recompute the event counts from the events, set-based — of the given customers (their
    joining date changed) or of everyone (the nightly repair; `seed_demo`), by chunks of
    customers. Only rows that differ are written, so a repair that finds nothing wrong writes
    nothing. Returns the rows written or deleted.

    Each chunk locks its customers first, as ingestion does before adding to their counts: an
    ingest that stored events before the lock adds them after the recount (which did not see
    them), one that committed before it is in the recount — never counted twice or lost."""
    if customer_ids is not None:
        ids = sorted(set(customer_ids))
        return sum(_event_counts_recount(Q(pk__in=ids[start:start + chunk_size]))
                   for start in range(0, len(ids), chunk_size))
    return sum(_event_counts_recount(in_pk_range(low, high))
               for low, high in pk_ranges(Customer.objects.all(), chunk_size))


def event_counts_select(events) -> tuple[str, list]:
    """SQL of (customer_id, type, total, since_joined, latest_1 … latest_5) for the events of
    a queryset: one pass numbering each customer's events of a type newest first."""
    numbered = events.order_by().annotate(
        joined=F("customer__joined_at"),
        rn=Window(RowNumber(), partition_by=[F("customer_id"), F("type")],
                  order_by=[F("occurred_at").desc()]),
    ).values_list("customer_id", "type", "occurred_at", "joined", "rn")
    sql, params = numbered.query.sql_with_params()
    latest = ", ".join(f"MAX(CASE WHEN x.rn = {k} THEN x.occurred_at END)"
                       for k in range(1, EVENT_COUNT_LATEST + 1))
    return (f"SELECT x.customer_id, x.type, COUNT(*), "
            f"SUM(CASE WHEN x.occurred_at >= x.joined THEN 1 ELSE 0 END), {latest} "
            f"FROM ({sql}) AS x "
            f"GROUP BY x.customer_id, x.type", list(params))


def _event_counts_recount(customers: Q) -> int:
    table = EventCount._meta.db_table
    with transaction.atomic():
        heavy_statements()
        locked = list(Customer.objects.select_for_update(no_key=True).filter(customers)
                      .order_by("pk").values_list("pk", flat=True))
        if not locked:
            return 0
        low, high = locked[0], locked[-1]
        events = Event.objects.order_by().filter(customer_id__gte=low, customer_id__lte=high)
        stale = EventCount.objects.filter(customer_id__gte=low, customer_id__lte=high)
        if len(locked) != high - low + 1:      # not a contiguous range: the ids themselves
            events = events.filter(customer_id__in=locked)
            stale = stale.filter(customer_id__in=locked)
        sql, params = event_counts_select(events)
        columns = ("total", "since_joined", *LATEST_FIELDS)
        changed = " OR ".join(f"{table}.{c} IS DISTINCT FROM excluded.{c}" for c in columns)
        with connection.cursor() as cursor:
            # "WHERE 1=1" keeps SQLite from reading ON CONFLICT as join syntax.
            cursor.execute(
                f"INSERT INTO {table} (customer_id, type, {', '.join(columns)}) "
                f"SELECT * FROM ({sql}) AS src WHERE 1=1 "
                f"ON CONFLICT (customer_id, type) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in columns)
                + f" WHERE {changed}", params)
            written = cursor.rowcount
        gone, _ = stale.exclude(Exists(Event.objects.filter(
            customer_id=OuterRef("customer_id"), type=OuterRef("type")))).delete()
        return written + gone


# --- Events ----------------------------------------------------------------------------------

@dataclass
class _EventItem:
    index: int
    customer: str
    type: str
    occurred_at: datetime
    key: str
    data: dict


_EVENT_TYPES = set(Event.Type.values)


def _parse_event(index: int, raw: Any) -> _EventItem:
    if not isinstance(raw, dict):
        raise ItemError(_("item is not an object"))
    customer = _text(raw, "customer", required=True)
    kind = _text(raw, "type", required=True, max_length=32)
    if kind not in _EVENT_TYPES:
        raise ItemError(_("type: unknown event type %(type)r; known: %(known)s")
                        % {"type": kind, "known": ", ".join(sorted(_EVENT_TYPES))})
    key = _text(raw, "idempotency_key", required=True, max_length=200)
    occurred_at = parse_timestamp(raw.get("occurred_at"), "occurred_at", default_now=True)
    data = raw.get("data") or {}
    if not isinstance(data, dict):
        raise ItemError(_("data: must be an object"))
    if not _storable(data):
        raise ItemError(_("data: must be text without NUL characters or lone surrogates"))
    if kind in (Event.Type.GROUP_JOINED, Event.Type.GROUP_LEFT):
        _text(data, "group", required=True, prefix="data.")
        _text(data, "name", max_length=100, prefix="data.")
    elif kind == Event.Type.REFERRAL:
        _text(data, "referred", required=True, prefix="data.")
    elif kind == Event.Type.FRIEND_ADDED:
        for name, limit in (("owner", 150), ("channel", 64), ("name", 100), ("city", 100)):
            _text(data, name, max_length=limit, prefix="data.")
        _text(data, "phone", max_length=32, prefix="data.")
        gender = data.get("gender")
        if gender not in (None, "") and gender not in Customer.Gender.values:
            raise ItemError(_("data.gender: must be one of %(choices)s")
                            % {"choices": ", ".join(Customer.Gender.values)})
    return _EventItem(index, customer, kind, occurred_at, key, data)


def _create_customers_from_friend_added(items: list[_EventItem], actor,
                                        report: IngestReport) -> list[_EventItem]:
    """Create the customers that `friend_added` events introduce; returns items rejected."""
    first: dict[str, _EventItem] = {}
    failed: list[_EventItem] = []
    for item in sorted(items, key=lambda i: (i.occurred_at, i.index)):
        first.setdefault(item.customer, item)
    erased = _erased_at(first.keys())
    for ext, at in erased.items():
        if first[ext].occurred_at <= at:
            report.reject(first[ext].index, _("customer: %(id)r was erased on request; only "
                                              "adding the brand again after that brings "
                                              "them back") % {"id": ext})
            failed.append(first.pop(ext))
    if erased:      # added again after the erasure: a new customer, remembered no longer
        ErasedIdentity.objects.filter(external_id_hash__in=[
            identity_hash(e) for e in erased if e in first]).delete()
    owners = _users_by_username({str(i.data["owner"]) for i in first.values()
                                 if i.data.get("owner")})
    channels = channels_by_code({str(i.data["channel"]) for i in first.values()
                                 if i.data.get("channel")}, create_missing=True)
    is_admin = access.user_role(actor) == access.ADMIN
    rows = []
    now = timezone.now()
    for ext, item in first.items():
        owner_name = item.data.get("owner")
        owner_id = actor.pk
        if owner_name:
            owner_id = owners.get(str(owner_name))
            if owner_id is None:
                report.reject(item.index, _("data.owner: unknown staff user %(name)r")
                              % {"name": owner_name})
                failed.append(item)
                continue
            if not is_admin and owner_id != actor.pk:
                report.reject(item.index,
                              _("data.owner: operators can only add customers they own"))
                failed.append(item)
                continue
        attributes = item.data.get("attributes")
        rows.append((
            ext, str(item.data.get("name") or "")[:100], str(item.data.get("phone") or "")[:32],
            item.data.get("gender") or Customer.Gender.UNKNOWN,
            str(item.data.get("city") or "")[:64],
            channels.get(str(item.data.get("channel") or "")), owner_id, item.occurred_at,
            Customer.Status.ACTIVE, item.occurred_at, False,
            attributes if isinstance(attributes, dict) else {}, 0, Decimal("0"), now, now,
        ))
    insert_ignore_returning(
        Customer,
        ("external_id", "name", "phone", "gender", "city", "channel", "owner", "joined_at",
         "status", "status_changed_at", "opted_out", "attributes", "orders_count",
         "total_spent", "created_at", "updated_at"),
        rows)
    return failed


def _apply_status_events(items: list[_EventItem], ids: dict[str, int]) -> None:
    """The latest relationship event per customer decides its status, unless an even later
    change is already stored (events can arrive out of order)."""
    latest: dict[int, _EventItem] = {}
    for item in items:
        pk = ids[item.customer]
        if pk not in latest or item.occurred_at >= latest[pk].occurred_at:
            latest[pk] = item
    if not latest:
        return
    status_case = Case(*[When(pk=pk, then=Value(str(STATUS_EVENT_TYPES[i.type])))
                         for pk, i in latest.items()])
    at_case = Case(*[When(pk=pk, then=Value(i.occurred_at, output_field=DateTimeField()))
                     for pk, i in latest.items()], output_field=DateTimeField())
    Customer.objects.filter(pk__in=latest.keys()).filter(
        Q(status_changed_at__isnull=True) | Q(status_changed_at__lte=at_case)
    ).update(status=status_case, status_changed_at=at_case, updated_at=timezone.now())
    deleting = {pk: i.occurred_at for pk, i in latest.items()
                if i.type == Event.Type.FRIEND_DELETED}
    if deleting:     # the ones this batch really moved to deleted_us (not an older event)
        moved = Customer.objects.filter(pk__in=deleting, status=Customer.Status.DELETED_US)
        customers_deleted_us({pk: at for pk, at in moved.values_list("pk", "status_changed_at")
                              if at == deleting[pk]})


def _apply_group_events(items: list[_EventItem], ids: dict[str, int]) -> None:
    """Fold join/leave events per (group, customer) in time order into membership rows."""
    if not items:
        return
    names = {}
    for item in items:
        if item.data.get("name"):
            names[str(item.data["group"])] = str(item.data["name"])[:100]
    chat_ids = {str(i.data["group"]) for i in items}
    now = timezone.now()
    Group.objects.bulk_create(
        [Group(chat_id=c, name=names.get(c, ""), created_at=now, updated_at=now)
         for c in sorted(chat_ids)], ignore_conflicts=True)
    groups = dict(Group.objects.filter(chat_id__in=chat_ids).values_list("chat_id", "id"))

    by_pair: dict[tuple[int, int], list[_EventItem]] = defaultdict(list)
    for item in items:
        by_pair[(groups[str(item.data["group"])], ids[item.customer])].append(item)

    # The stays the database holds open for these pairs: a leave in the batch ends them, a
    # join while one is open is a repeat, not a second stay (the customers are locked).
    stored_open = {
        (m.group_id, m.customer_id): m for m in GroupMembership.objects.filter(
            left_at__isnull=True, group_id__in={p[0] for p in by_pair},
            customer_id__in={p[1] for p in by_pair}).only("pk", "group_id", "customer_id",
                                                           "joined_at")
        if (m.group_id, m.customer_id) in by_pair}

    closed, still_open = [], {}          # memberships fully inside this batch / left open
    close_stored: dict[int, datetime] = {}   # stored open membership id -> its left_at
    for pair, events in by_pair.items():
        stored = stored_open.get(pair)
        open_since, in_stored = None, False
        for event in sorted(events, key=lambda e: (e.occurred_at, e.index)):
            if stored is not None and not in_stored and event.occurred_at >= stored.joined_at:
                # From here on the stored stay is the open one (an earlier join of the batch
                # that is still open runs into it).
                open_since, in_stored = stored.joined_at, True
            if event.type == Event.Type.GROUP_JOINED:
                if open_since is None:
                    open_since = event.occurred_at
            elif open_since is None:
                continue                 # a leave with no stay to end
            elif in_stored:
                close_stored[stored.pk] = event.occurred_at
                stored, open_since, in_stored = None, None, False
            else:
                closed.append((pair, open_since, event.occurred_at))
                open_since = None
        if open_since is not None and not in_stored and stored is None:
            still_open[pair] = open_since

    if close_stored:
        GroupMembership.objects.filter(pk__in=close_stored.keys()).update(left_at=Case(
            *[When(pk=pk, then=Value(at, output_field=DateTimeField()))
              for pk, at in close_stored.items()], output_field=DateTimeField()))
    GroupMembership.objects.bulk_create(
        [GroupMembership(group_id=g, customer_id=c, joined_at=a, left_at=b)
         for (g, c), a, b in closed]
        + [GroupMembership(group_id=g, customer_id=c, joined_at=a)
           for (g, c), a in still_open.items()],
        ignore_conflicts=True)


def _apply_referrals(items: list[_EventItem], ids: dict[str, int]) -> None:
    referred = {str(i.data["referred"]): ids[i.customer] for i in
                sorted(items, key=lambda i: (i.occurred_at, i.index), reverse=True)}
    targets = dict(Customer.objects.filter(external_id__in=referred.keys(),
                                           referred_by__isnull=True)
                   .values_list("id", "external_id"))
    values = {pk: referred[ext] for pk, ext in targets.items() if referred[ext] != pk}
    _update_by_pk("referred_by_id", values, BigIntegerField(), referred_by__isnull=True)


@transaction.atomic
def events_ingest(*, items: Any, actor) -> IngestReport:
    """Store a batch of events once each and apply their effects (DESIGN §4 `events/`)."""
    started = time.monotonic()
    raw_items = check_batch(items)
    report = IngestReport()
    valid: list[_EventItem] = []
    seen_keys: set[str] = set()
    for index, raw in enumerate(raw_items):
        try:
            item = _parse_event(index, raw)
        except ItemError as exc:
            report.reject(index, str(exc))
            continue
        if item.key in seen_keys:
            report.duplicates += 1
            continue
        seen_keys.add(item.key)
        valid.append(item)

    ids = _customer_ids({i.customer for i in valid}, actor)
    newcomers = [i for i in valid if i.customer not in ids and i.type == Event.Type.FRIEND_ADDED]
    failed_ids: set[int] = set()
    if newcomers:
        failed = _create_customers_from_friend_added(newcomers, actor, report)
        failed_ids = {i.index for i in failed}
        ids.update(_customer_ids({i.customer for i in newcomers}, actor))
    storable = []
    for item in valid:
        if item.index in failed_ids:
            continue
        if item.customer not in ids:
            report.reject(item.index, _("customer: unknown customer %(id)r (send a friend_added "
                                        "event or create the customer first)")
                          % {"id": item.customer})
            continue
        storable.append(item)

    now = timezone.now()
    inserted = insert_ignore_returning(
        Event, ("customer", "type", "occurred_at", "idempotency_key", "data", "received_at"),
        [(ids[i.customer], i.type, i.occurred_at, i.key, i.data, now) for i in storable],
        returning=("idempotency_key",))
    new_keys = {row[0] for row in inserted}
    new = [i for i in storable if i.key in new_keys]
    report.accepted = len(new)
    report.duplicates += len(storable) - len(new)
    if new:
        touched = {ids[i.customer] for i in new}
        _lock_customers(touched)
        last_active: dict[int, datetime] = {}
        for item in new:
            if item.type in INBOUND_EVENT_TYPES:
                pk = ids[item.customer]
                if pk not in last_active or item.occurred_at > last_active[pk]:
                    last_active[pk] = item.occurred_at
        update_to_later(Customer, "last_active_at", last_active, also={"updated_at": now})
        _event_counts_add([(ids[i.customer], i.type, i.occurred_at) for i in new])
        _apply_status_events([i for i in new if i.type in STATUS_EVENT_TYPES], ids)
        opted = {ids[i.customer] for i in new if i.type == Event.Type.OPTED_OUT}
        if opted:
            Customer.objects.filter(pk__in=opted, opted_out=False).update(opted_out=True,
                                                                          updated_at=now)
        _apply_group_events([i for i in new if i.type in (Event.Type.GROUP_JOINED,
                                                          Event.Type.GROUP_LEFT)], ids)
        _apply_referrals([i for i in new if i.type == Event.Type.REFERRAL], ids)
        notify_customers_touched(touched)
    logger.info("crm.events_ingested", extra={
        "accepted": report.accepted, "duplicates": report.duplicates,
        "rejected": len(report.rejected), "ms": round((time.monotonic() - started) * 1000)})
    return report


# --- Orders ----------------------------------------------------------------------------------

@dataclass
class _OrderItem:
    index: int
    customer: str
    source: str
    external_id: str
    amount: Decimal
    status: str
    placed_at: datetime
    refunded_at: datetime | None
    lines: list[dict]


def _parse_order(index: int, raw: Any) -> _OrderItem:
    if not isinstance(raw, dict):
        raise ItemError(_("item is not an object"))
    customer = _text(raw, "customer", required=True)
    external_id = _text(raw, "external_id", required=True)
    source = _text(raw, "source", required=True, max_length=32)
    amount = _decimal(raw.get("amount"), "amount")
    status = raw.get("status") or Order.Status.PAID
    if status not in Order.Status.values:
        raise ItemError(_("status: must be one of %(choices)s")
                        % {"choices": ", ".join(Order.Status.values)})
    placed_at = parse_timestamp(raw.get("placed_at"), "placed_at", default_now=True)
    refunded_at = parse_timestamp(raw.get("refunded_at"), "refunded_at")
    lines_raw = raw.get("items") or []
    if not isinstance(lines_raw, list):
        raise ItemError(_("items: must be a list"))
    lines = []
    for n, line in enumerate(lines_raw):
        prefix = f"items[{n}]."
        if not isinstance(line, dict):
            raise ItemError(_("%(path)s: must be an object") % {"path": f"items[{n}]"})
        quantity = line.get("quantity", 1)
        if (isinstance(quantity, bool) or not isinstance(quantity, int)
                or not 1 <= quantity <= MAX_QUANTITY):
            raise ItemError(_("%(path)squantity: must be a whole number from 1 to %(max)d")
                            % {"path": prefix, "max": MAX_QUANTITY})
        lines.append({
            "sku": _text(line, "sku", max_length=64, prefix=prefix),
            "name": _text(line, "name", max_length=200, prefix=prefix),
            "category": _text(line, "category", max_length=64, prefix=prefix),
            "quantity": quantity,
            "price": _decimal(line.get("price", "0"), f"{prefix}price"),
        })
    return _OrderItem(index, customer, source, external_id, amount, status, placed_at,
                      refunded_at, lines)


@transaction.atomic
def orders_ingest(*, items: Any, actor) -> IngestReport:
    """Store orders once per (source, external_id); a repeated order with a new status is a
    status change (a refund), counted as accepted; the same status again is a duplicate."""
    raw_items = check_batch(items)
    report = IngestReport()
    parsed: list[_OrderItem] = []
    for index, raw in enumerate(raw_items):
        try:
            parsed.append(_parse_order(index, raw))
        except ItemError as exc:
            report.reject(index, str(exc))

    ids = _customer_ids({o.customer for o in parsed}, actor)
    keys = {(o.source, o.external_id) for o in parsed}
    stored = {
        (o.source, o.external_id): o for o in Order.objects.filter(
            source__in={k[0] for k in keys}, external_id__in={k[1] for k in keys})
        .only("id", "source", "external_id", "status", "customer_id", "refunded_at")
        if (o.source, o.external_id) in keys
    } if keys else {}

    to_insert: dict[tuple[str, str], _OrderItem] = {}
    changes: dict[int, tuple[str, datetime | None]] = {}   # stored order id -> new status
    state: dict[tuple[str, str], str] = {k: o.status for k, o in stored.items()}
    touched: set[int] = set()
    key_owner: dict[tuple[str, str], int] = {}  # the customer an order key belongs to
    for item in parsed:
        key = (item.source, item.external_id)
        customer_id = ids.get(item.customer)
        if customer_id is None:
            report.reject(item.index, _("customer: unknown customer %(id)r") % {"id": item.customer})
            continue
        if key_owner.setdefault(key, stored[key].customer_id if key in stored
                                else customer_id) != customer_id:
            report.reject(item.index, _("customer: order %(source)s:%(id)s belongs to another "
                                        "customer") % {"source": item.source,
                                                       "id": item.external_id})
            continue
        refunded_at = (item.refunded_at or timezone.now()) if item.status == "refunded" else None
        if key not in state:
            state[key] = item.status
            to_insert[key] = item
            item.refunded_at = refunded_at
            continue
        if state[key] == item.status:
            report.duplicates += 1
            continue
        state[key] = item.status
        report.accepted += 1
        touched.add(customer_id)
        if key in to_insert:
            to_insert[key].status = item.status
            to_insert[key].refunded_at = refunded_at
        else:
            changes[stored[key].pk] = (item.status, refunded_at)

    now = timezone.now()
    inserted = insert_ignore_returning(
        Order, ("customer", "source", "external_id", "amount", "status", "placed_at",
                "refunded_at", "created_at", "updated_at"),
        [(ids[o.customer], o.source, o.external_id, o.amount, o.status, o.placed_at,
          o.refunded_at, now, now) for o in to_insert.values()],
        returning=("id", "source", "external_id"))
    new_ids = {(src, ext): pk for pk, src, ext in inserted}
    report.accepted += len(new_ids)
    report.duplicates += len(to_insert) - len(new_ids)
    OrderItem.objects.bulk_create([
        OrderItem(order_id=new_ids[key], **line)
        for key, o in to_insert.items() if key in new_ids for line in o.lines
    ], batch_size=1000)
    touched |= {ids[o.customer] for key, o in to_insert.items() if key in new_ids}
    if changes:
        dt = DateTimeField()
        Order.objects.filter(pk__in=changes.keys()).update(
            status=Case(*[When(pk=pk, then=Value(s)) for pk, (s, _r) in changes.items()]),
            refunded_at=Case(*[When(pk=pk, then=Value(r, output_field=dt))
                               for pk, (_s, r) in changes.items()], output_field=dt),
            updated_at=now)
    if touched:
        customer_aggregates_refresh(customer_ids=touched)
        notify_customers_touched(touched)
    logger.info("crm.orders_ingested", extra={"accepted": report.accepted,
                                              "duplicates": report.duplicates,
                                              "rejected": len(report.rejected)})
    return report


# --- CSV import -----------------------------------------------------------------------------
#
# One implementation for both ways in: `customers_import` (the API, synchronous, one
# transaction) and the background job of the dashboard (`customer_import_start` /
# `customer_import_run`, a transaction per chunk of rows). Both parse rows with
# `_ImportParser` and write them with `_import_write`, set-based: a few statements per chunk,
# none per row.

IMPORT_COLUMNS = ("external_id", "name", "phone", "gender", "city", "channel", "owner",
                  "joined_at", "status", "opted_out")
IMPORT_MAX_BYTES = 32 * 1024 * 1024
IMPORT_MAX_ROWS = 100_000
IMPORT_CHUNK_ROWS = 1000       # rows per transaction of a background import
IMPORT_ERRORS_KEPT = 10_000    # rejected rows a background import keeps with their cells
_TRUE = {"1", "true", "yes", "y", "是", "t"}
_FALSE = {"0", "false", "no", "n", "否", "f", ""}


def _decode_csv(content: bytes, *, max_rows: int) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows of an import file; a file that cannot be imported at all (too
    large, not UTF-8, a header naming unknown columns or no external_id, too many rows) is an
    ApplicationError saying what is wrong."""
    if len(content) > IMPORT_MAX_BYTES:
        raise ApplicationError(
            _("The file is too large: at most %(max)d MB, got %(size).1f MB.")
            % {"max": IMPORT_MAX_BYTES // (1024 * 1024), "size": len(content) / (1024 * 1024)},
            extra={"max_bytes": IMPORT_MAX_BYTES, "bytes": len(content)})
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApplicationError(_("The file is not UTF-8 text (byte %(pos)d); save it as CSV "
                                 "UTF-8.") % {"pos": exc.start})
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not header:
            raise ApplicationError(_("The file is empty: the first row must name the columns."))
        unknown = [h for h in header
                   if h not in IMPORT_COLUMNS and not h.startswith("attributes.")]
        if unknown:
            raise ApplicationError(
                _("Unknown column(s) %(cols)s; known columns: %(known)s and attributes.<key>.")
                % {"cols": ", ".join(repr(u) for u in unknown),
                   "known": ", ".join(IMPORT_COLUMNS)})
        if "external_id" not in header:
            raise ApplicationError(_("The header row has no external_id column."))
        reader.fieldnames = header
        rows = list(reader)
    except csv.Error as exc:      # e.g. a cell longer than the csv module's field limit
        raise ApplicationError(_("The file is not valid CSV after line %(line)d: %(error)s")
                               % {"line": reader.line_num, "error": exc})
    if len(rows) > max_rows:
        raise ApplicationError(_("Too many rows: at most %(max)d per file, got %(n)d.")
                               % {"max": max_rows, "n": len(rows)})
    return header, rows


@dataclass
class _ImportChunk:
    """Rows of an import file after parsing (`rows`: the first row of each external id, by
    external id, ready to write; `rejected`: (row index, message)) and, once written, what
    became of them."""

    rows: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0
    created: int = 0
    updated: int = 0

    @property
    def accepted(self) -> int:
        return self.created + self.updated


class _ImportParser:
    """Parses the rows of one file for one actor: the owners and channels the file names are
    looked up once, and the external ids of the rows taken so far are remembered, so a row
    repeating one is a duplicate whichever chunk it falls in."""

    def __init__(self, rows: list[dict[str, str]], actor) -> None:
        self.actor = actor
        self.is_admin = access.user_role(actor) == access.ADMIN
        self.owners = _users_by_username(
            {r.get("owner", "").strip() for r in rows if r.get("owner")})
        self.channels = channels_by_code(
            {r.get("channel", "").strip() for r in rows if r.get("channel")},
            create_missing=False)
        self.seen: set[str] = set()

    def parse(self, rows: list[dict[str, str]], *, start: int = 0) -> _ImportChunk:
        """`rows` are the file's rows from index `start` on."""
        chunk = _ImportChunk()
        for index, row in enumerate(rows, start=start):
            try:
                values = _parse_import_row(row, self.owners, self.channels, self.actor,
                                           self.is_admin)
            except ItemError as exc:
                chunk.rejected.append((index, str(exc)))
                continue
            if values["external_id"] in self.seen:
                chunk.duplicates += 1
                continue
            self.seen.add(values["external_id"])
            chunk.rows[values["external_id"]] = (index, values)
        return chunk


def _import_write(chunk: _ImportChunk, *, actor) -> None:
    """Create the chunk's new external ids and update the known ones the actor may change
    (with the row's non-empty cells); a known one the actor may not change is rejected."""
    existing = {c.external_id: c
                for c in Customer.objects.filter(external_id__in=chunk.rows.keys())}
    visible = set(access.scope_customers(Customer.objects.filter(pk__in=[
        c.pk for c in existing.values()]), actor).values_list("pk", flat=True))
    now = timezone.now()
    to_update: list[Customer] = []
    update_fields: set[str] = set()
    rejoined: list[int] = []     # whose "since joining" event counts move with the new date
    new_rows = []
    erased = _erased_at([ext for ext in chunk.rows if ext not in existing])
    for ext, (index, values) in chunk.rows.items():
        customer = existing.get(ext)
        if customer is None and ext in erased:
            chunk.rejected.append((index, _("external_id %(id)r was erased on request; only "
                                            "adding the brand again brings them back")
                                   % {"id": ext}))
            continue
        if customer is None:
            new_rows.append(values)
            continue
        if customer.pk not in visible:
            chunk.rejected.append((index, _("external_id %(id)r belongs to another owner's "
                                            "customer") % {"id": ext}))
            continue
        if "joined_at" in values and values["joined_at"] != customer.joined_at:
            rejoined.append(customer.pk)
        if values.get("status", customer.status) != customer.status:
            # Like customer_update: a later event older than this change must not undo it.
            customer.status_changed_at = now
            update_fields.add("status_changed_at")
        for name, value in values.items():
            if name == "attributes":
                customer.attributes = {**(customer.attributes or {}), **value}
            elif name != "external_id":
                setattr(customer, name, value)
            update_fields.add(name)
        customer.updated_at = now
        to_update.append(customer)
    chunk.rejected.sort()
    update_fields.discard("external_id")
    if to_update and update_fields:
        Customer.objects.bulk_update(to_update, sorted(update_fields | {"updated_at"}),
                                     batch_size=500)
    if rejoined:
        event_counts_refresh(customer_ids=rejoined)
    created = insert_ignore_returning(
        Customer, ("external_id", "name", "phone", "gender", "city", "channel", "owner",
                   "joined_at", "status", "status_changed_at", "opted_out", "attributes",
                   "orders_count", "total_spent", "created_at", "updated_at"),
        [(v["external_id"], v.get("name", ""), v.get("phone", ""),
          v.get("gender", Customer.Gender.UNKNOWN), v.get("city", ""), v.get("channel_id"),
          v.get("owner_id", actor.pk), v.get("joined_at") or now,
          v.get("status", Customer.Status.ACTIVE), now if v.get("status") not in
          (None, Customer.Status.ACTIVE) else None, v.get("opted_out", False),
          v.get("attributes", {}), 0, Decimal("0"), now, now) for v in new_rows],
        returning=("id",))
    chunk.created, chunk.updated = len(created), len(to_update)
    chunk.duplicates += len(new_rows) - len(created)   # created by someone else meanwhile
    notify_customers_touched([row[0] for row in created] + [c.pk for c in to_update])


@transaction.atomic
def customers_import(*, content: bytes, actor, max_rows: int = IMPORT_MAX_ROWS) -> IngestReport:
    """Create or update customers from a CSV file (header row of field names), at once.

    New external ids are created, known ones (that the actor may change) get the non-empty
    cells of the row; a row repeating an external id of an earlier row is a duplicate.
    """
    _header, rows = _decode_csv(content, max_rows=max_rows)
    chunk = _ImportParser(rows, actor).parse(rows)
    _import_write(chunk, actor=actor)
    report = IngestReport(accepted=chunk.accepted, duplicates=chunk.duplicates,
                          extra={"created": chunk.created, "updated": chunk.updated})
    for index, message in chunk.rejected:
        report.reject(index, _("line %(line)d: %(msg)s") % {"line": index + 2, "msg": message})
    return report


@transaction.atomic
def customers_upsert(*, rows: list[dict[str, str]], actor) -> IngestReport:
    """Create or update customers from rows shaped like an import file's (field name -> text;
    empty cells leave a known customer's value alone): what another system that keeps the
    customers, such as WeCom's contact sync, writes through."""
    chunk = _ImportParser(rows, actor).parse(rows)
    _import_write(chunk, actor=actor)
    report = IngestReport(accepted=chunk.accepted, duplicates=chunk.duplicates,
                          extra={"created": chunk.created, "updated": chunk.updated})
    for index, message in chunk.rejected:
        report.reject(index, message)
    return report


def _row_cells(row: dict, columns: list[str]) -> list[str]:
    """A row's cells in the file's order, cells beyond the header last."""
    return [row.get(c) or "" for c in columns] + list(row.get(None) or [])


@transaction.atomic
def customer_import_start(*, actor, name: str, content: bytes) -> CustomerImport:
    """Check an uploaded file as `customers_import` does (size, encoding, header, rows) and
    queue it as a background import; the worker starts once this transaction commits."""
    columns, rows = _decode_csv(content, max_rows=IMPORT_MAX_ROWS)
    if not rows:
        raise ApplicationError(_("The file has a header row but no customers under it."))
    name = (name or "").strip()[:255]
    if not name or not _storable(name):
        name = "customers.csv"
    job = CustomerImport.objects.create(
        actor=actor, name=name, content=content, columns=columns, total_rows=len(rows),
        language=translation.get_language() or "")
    from crm.tasks import run_customer_import

    transaction.on_commit(lambda: run_customer_import.delay(job.pk))
    logger.info("crm.import_queued", extra={"import_id": job.pk, "rows": len(rows)})
    return job


def customer_import_run(*, import_id: int) -> CustomerImport | None:
    """Work through an import in chunks of IMPORT_CHUNK_ROWS, one transaction each: the
    chunk's customers, the counters and the cursor (`next_row`) commit together, so the page
    sees progress after every chunk and a chunk is never applied twice.

    Safe to run twice or in two workers at once: each chunk locks the job's row (SKIP LOCKED)
    and goes on only where this run left the cursor; a run that finds the row locked or the
    cursor moved leaves the job to the run that holds it. A job whose worker died resumes at
    its cursor (`customer_imports_resume`).
    """
    job = CustomerImport.objects.select_related("actor").filter(pk=import_id).first()
    if job is None or job.finished:
        return job
    try:
        with translation.override(job.language or None):
            return _import_chunks(job)
    except Exception as exc:
        CustomerImport.objects.filter(pk=import_id).update(
            status=CustomerImport.Status.FAILED, error=str(exc)[:2000] or repr(exc),
            finished_at=timezone.now(), updated_at=timezone.now())
        logger.exception("crm.import_failed", extra={"import_id": import_id})
        raise


def _import_chunks(job: CustomerImport) -> CustomerImport | None:
    actor = job.actor
    if not access.can_see_customers(actor):
        raise ApplicationError(_("The uploader may no longer import customers."))
    _header, rows = _decode_csv(bytes(job.content), max_rows=IMPORT_MAX_ROWS)
    parser = _ImportParser(rows, actor)
    cursor = job.next_row
    parser.parse(rows[:cursor])     # a resumed job: the external ids its done chunks took
    while True:
        with transaction.atomic():
            locked = (CustomerImport.objects.select_for_update(skip_locked=True)
                      .defer("content", "rejected_rows").filter(pk=job.pk).first())
            if locked is None or locked.finished or locked.next_row != cursor:
                return locked       # another run holds or has moved the job
            end = min(cursor + IMPORT_CHUNK_ROWS, len(rows))
            chunk = parser.parse(rows[cursor:end], start=cursor)
            _import_write(chunk, actor=actor)
            fields = ["next_row", "accepted", "created", "updated", "duplicates", "rejected",
                      "status", "updated_at"]
            kept = min(locked.rejected, IMPORT_ERRORS_KEPT)
            if chunk.rejected and kept < IMPORT_ERRORS_KEPT:
                stored = (CustomerImport.objects.filter(pk=job.pk)
                          .values_list("rejected_rows", flat=True).get())[:kept]
                locked.rejected_rows = stored + [
                    {"row": index + 2, "message": message,
                     "values": _row_cells(rows[index], job.columns)}
                    for index, message in chunk.rejected[:IMPORT_ERRORS_KEPT - kept]]
                fields.append("rejected_rows")
            locked.next_row = end
            locked.accepted += chunk.accepted
            locked.created += chunk.created
            locked.updated += chunk.updated
            locked.duplicates += chunk.duplicates
            locked.rejected += len(chunk.rejected)
            if locked.status == CustomerImport.Status.QUEUED:
                locked.status = CustomerImport.Status.RUNNING
                locked.started_at = timezone.now()
                fields.append("started_at")
            if end >= len(rows):
                locked.status = CustomerImport.Status.DONE
                locked.finished_at = timezone.now()
                fields.append("finished_at")
            locked.save(update_fields=fields)
        if locked.status == CustomerImport.Status.DONE:
            logger.info("crm.import_done", extra={
                "import_id": job.pk, "accepted": locked.accepted,
                "duplicates": locked.duplicates, "rejected": locked.rejected})
            return locked
        cursor = end


def customer_imports_resume(*, stale_after_seconds: int = 300) -> list[int]:
    """Import ids left queued or running without progress (a lost broker message, a dead
    worker), for the sweeper to enqueue again."""
    cutoff = timezone.now() - timedelta(seconds=stale_after_seconds)
    return list(CustomerImport.objects.filter(
        status__in=[CustomerImport.Status.QUEUED, CustomerImport.Status.RUNNING],
        updated_at__lt=cutoff).values_list("pk", flat=True))


def _parse_import_row(row: dict[str, str], owners, channels, actor, is_admin) -> dict[str, Any]:
    values: dict[str, Any] = {}
    cells = {k: (v or "").strip() for k, v in row.items() if k is not None}
    values["external_id"] = _text(cells, "external_id", required=True)
    for name, limit in (("name", 100), ("phone", 32), ("city", 64)):
        if cells.get(name):
            values[name] = _text(cells, name, max_length=limit)
    if cells.get("gender"):
        if cells["gender"] not in Customer.Gender.values:
            raise ItemError(_("gender: must be one of %(choices)s")
                            % {"choices": ", ".join(Customer.Gender.values)})
        values["gender"] = cells["gender"]
    if cells.get("status"):
        if cells["status"] not in Customer.Status.values:
            raise ItemError(_("status: must be one of %(choices)s")
                            % {"choices": ", ".join(Customer.Status.values)})
        values["status"] = cells["status"]
    if cells.get("channel"):
        if cells["channel"] not in channels:
            raise ItemError(_("channel: unknown channel %(code)r") % {"code": cells["channel"]})
        values["channel_id"] = channels[cells["channel"]]
    if cells.get("owner"):
        owner_id = owners.get(cells["owner"])
        if owner_id is None:
            raise ItemError(_("owner: unknown staff user %(name)r") % {"name": cells["owner"]})
        if not is_admin and owner_id != actor.pk:
            raise ItemError(_("owner: operators can only import customers they own"))
        values["owner_id"] = owner_id
    if cells.get("joined_at"):
        values["joined_at"] = parse_timestamp(cells["joined_at"], "joined_at")
    if "opted_out" in cells and cells["opted_out"] != "":
        flag = cells["opted_out"].lower()
        if flag not in _TRUE | _FALSE:
            raise ItemError(_("opted_out: must be true or false"))
        values["opted_out"] = flag in _TRUE
    attributes = {k.removeprefix("attributes."): v for k, v in cells.items()
                  if k.startswith("attributes.") and v != ""}
    if not _storable(attributes):
        raise ItemError(_("attributes: must be text without NUL characters or lone surrogates"))
    if attributes:
        values["attributes"] = attributes
    return values


# --- Groups ---------------------------------------------------------------------------------

def _check_group_owner(*, actor, group: Group | None, owner) -> None:
    if access.user_role(actor) == access.ADMIN:
        return
    if group is not None and group.owner_id != actor.pk:
        raise PermissionDenied(_("Only the group's owner or an admin may change it."))
    if owner is not None and owner.pk != actor.pk:
        raise ApplicationError(_("owner: operators can only own groups themselves."),
                               extra={"field": "owner"})


@transaction.atomic
def group_save(*, actor, group: Group | None, **fields: Any) -> Group:
    """Create (group=None) or change a group; operators only their own."""
    if group is None and "owner" not in fields:
        fields["owner"] = actor
    _check_group_owner(actor=actor, group=group, owner=fields.get("owner"))
    group = group or Group()
    for name, value in fields.items():
        setattr(group, name, value)
    group.full_clean()
    group.save()
    return group


NOTE_MAX_LENGTH = 2000


@transaction.atomic
def note_add(*, customer: Customer, author, text: Any) -> CustomerNote:
    """An operator's note on a customer (whoever may see the customer may write one)."""
    if not isinstance(text, str) or not text.strip():
        raise ApplicationError(_("text: write the note"), extra={"field": "text"})
    text = text.strip()
    if len(text) > NOTE_MAX_LENGTH:
        raise ApplicationError(_("text: at most %(n)d characters") % {"n": NOTE_MAX_LENGTH},
                               extra={"field": "text"})
    if not _storable(text):
        raise ApplicationError(_("text: must be text without NUL characters or lone "
                                 "surrogates"), extra={"field": "text"})
    return CustomerNote.objects.create(customer=customer, author=author, text=text)


@transaction.atomic
def channel_save(*, channel: Channel | None, **fields: Any) -> Channel:
    """Create (channel=None) or change an acquisition channel; the model's rules (a code of
    its own, a cost not below 0) are a 400 naming the field."""
    channel = channel or Channel()
    for name, value in fields.items():
        setattr(channel, name, value)
    channel.full_clean()
    channel.save()
    audit.record("channel.save", target=channel, summary=f"{channel.name} ({channel.code})",
                 data={"fields": sorted(fields)})
    return channel


@transaction.atomic
def channel_delete(*, channel: Channel) -> None:
    """Delete an acquisition channel; its customers stay, without a channel."""
    audit.record("channel.delete", target=channel, summary=f"{channel.name} ({channel.code})",
                 data={"code": channel.code})
    channel.delete()


@transaction.atomic
def group_delete(*, actor, group: Group) -> None:
    _check_group_owner(actor=actor, group=group, owner=None)
    group.delete()


# --- Customer list exports ------------------------------------------------------------------

EXPORT_STREAM_LIMIT = 5_000   # this many customers or fewer stream in the request
EXPORT_CHUNK = 2_000          # customers read (and written) per chunk


def _export_stage_columns() -> tuple[list[tuple[str, str]], dict[tuple[str, str], str]]:
    """The stage models (key, name) and every stage's name by (model, stage key), from the
    condition language's registered `stage` field (crm knows no stage model of its own)."""
    from core import conditions

    spec = conditions.fields.get("stage")
    if spec is None or spec.choices is None:
        return [], {}
    model_choices = spec.param_info.get("model", {}).get("choices")
    models_ = [(c["value"], c["label"]) for c in (model_choices() if model_choices else [])]
    names = {((c.get("when") or {}).get("model", ""), c["value"]): c["label"]
             for c in spec.choices()}
    return models_, names


def phone_mask(phone: str) -> str:
    """A phone number as an export shows it to someone without the full-phone permission:
    the first 3 and last 4 digits of a number of 11 digits or more (`138****5678`), only the
    last 2 of a shorter one. Other characters (`+`, spaces, dashes) stay where they are; text
    with no digit at all is masked whole. Empty stays empty."""
    phone = (phone or "").strip()
    digits = sum(ch.isdigit() for ch in phone)
    if digits == 0:
        return "*" * len(phone)
    head, tail = (3, 4) if digits >= 11 else (0, 2)
    out, seen = [], 0
    for ch in phone:
        if ch.isdigit():
            seen += 1
            out.append(ch if seen <= head or seen > digits - tail else "*")
        else:
            out.append(ch)
    return "".join(out)


def customer_export_header(models_: list[tuple[str, str]]) -> list[str]:
    return [_("Name"), _("External ID"), _("Phone"), _("City"), _("Channel"), _("Owner"),
            _("Status"), _("Tags"), *[name for _key, name in models_], _("Joined"),
            _("Last active"), _("Orders"), _("Spent (CNY)")]


def customer_export_rows(customers, models_: list[tuple[str, str]],
                         stage_names: dict[tuple[str, str], str], *,
                         full_phone: bool = False) -> list[list[str]]:
    """The list's columns as people read them: names, never keys (channel, owner, status,
    tags and each model's stage by name); phones masked unless `full_phone` (the exporting
    user's core.access.can_export_full_phone, decided once per export)."""
    from core.people import staff_name
    from crm import extensions

    show_phone = (lambda phone: phone) if full_phone else phone_mask
    rows = []
    for customer in customers:
        values = extensions.extension_values(customer)
        stages = values.get("stages") or {}
        rows.append([
            customer.name, customer.external_id, show_phone(customer.phone), customer.city,
            customer.channel.name if customer.channel_id else "",
            staff_name(customer.owner) if customer.owner_id else "",
            customer.get_status_display(), "; ".join(values.get("tags") or []),
            *[stage_names.get((key, stages[key]), stages[key]) if key in stages else ""
              for key, _name in models_],
            timezone.localtime(customer.joined_at).strftime("%Y-%m-%d %H:%M")
            if customer.joined_at else "",
            timezone.localtime(customer.last_active_at).strftime("%Y-%m-%d %H:%M")
            if customer.last_active_at else "",
            str(customer.orders_count), f"{customer.total_spent:.2f}",
        ])
    return rows


def _csv_cell(value: str) -> str:
    """A cell a spreadsheet will not run as a formula (a customer's name such as "=HYPERLINK(…)"
    comes from outside): such text gets a leading apostrophe (OWASP's CSV injection advice)."""
    return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(
        [[_csv_cell(str(cell)) for cell in row] for row in rows])
    return buffer.getvalue()


def _export_chunks(*, user, condition: Any, customer_ids: list[int] | None,
                   after: int = 0):
    """(last id, customers) per chunk of the set, by primary key, with tags and stages
    loaded (a fixed number of queries a chunk)."""
    from core import conditions
    from crm.selectors import customer_list

    customers = customer_list(user=user)
    if customer_ids is not None:
        customers = customers.filter(pk__in=customer_ids)
    if condition is not None:
        customers = customers.filter(conditions.compile_condition(condition))
    while True:
        chunk = list(customers.filter(pk__gt=after).order_by("pk")[:EXPORT_CHUNK])
        if not chunk:
            return
        after = chunk[-1].pk
        yield after, chunk


def customer_export_stream(*, user, condition: Any = None,
                           customer_ids: list[int] | None = None):
    """The CSV of a set (UTF-8 with a BOM, so spreadsheet programs read the Chinese right),
    as text pieces for a streaming response."""
    models_, names = _export_stage_columns()
    full_phone = access.can_export_full_phone(user)
    audit.record("customers.export", actor=user, summary=_("CSV export (streamed)"),
                 data={"condition": condition, "customer_ids": (customer_ids or [])[:1000],
                       "full_phone": full_phone})
    yield "\ufeff" + _csv_text([customer_export_header(models_)])
    for _last, chunk in _export_chunks(user=user, condition=condition,
                                       customer_ids=customer_ids):
        yield _csv_text(customer_export_rows(chunk, models_, names, full_phone=full_phone))


def customer_export_path(export) -> Any:
    from django.conf import settings

    return settings.DATA_DIR / "exports" / export.file_name


def customer_export_start(*, actor, customers, condition: Any = None,
                          customer_ids: list[int] | None = None, language: str = ""):
    """A background export of a large set (`customers`, the scoped queryset the condition or
    the ids describe); the task writes the file (customer_export_run)."""
    from crm.models import CustomerExport

    export = CustomerExport.objects.create(actor=actor, condition=condition,
                                           customer_ids=customer_ids, total=customers.count(),
                                           language=language or translation.get_language() or "")
    audit.record("customers.export", target=export, actor=actor,
                 summary=_("CSV export of %(n)d customers") % {"n": export.total},
                 data={"condition": condition, "customer_ids": (customer_ids or [])[:1000],
                       "full_phone": access.can_export_full_phone(actor)})
    from crm.tasks import run_customer_export

    transaction.on_commit(lambda: run_customer_export.delay(export.pk))
    return export


def customer_export_run(*, export_id: int):
    """Write the export chunk by chunk. Each chunk locks the job row, cuts the file back to
    the committed size (what a dead worker wrote after its last commit), appends, flushes and
    commits the new size and cursor with it: resumable, never a row twice. Phones are
    masked unless the user who asked for the export (its `actor`) may export them in full
    now, when the worker writes it."""
    import os

    from crm.models import CustomerExport

    export = CustomerExport.objects.select_related("actor").get(pk=export_id)
    full_phone = access.can_export_full_phone(export.actor)
    path = customer_export_path(export)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with translation.override(export.language or None):
            models_, names = _export_stage_columns()
            while True:
                with transaction.atomic():
                    export = CustomerExport.objects.select_for_update().get(pk=export_id)
                    if export.status in (CustomerExport.Status.DONE,
                                         CustomerExport.Status.FAILED):
                        return export
                    chunks = _export_chunks(user=export.actor, condition=export.condition,
                                            customer_ids=export.customer_ids,
                                            after=export.last_customer_id)
                    found = next(chunks, None)
                    with open(path, "ab") as handle:
                        handle.truncate(export.bytes_written)
                        if export.bytes_written == 0:
                            handle.write(("\ufeff" + _csv_text(
                                [customer_export_header(models_)])).encode())
                        if found is not None:
                            handle.write(_csv_text(customer_export_rows(
                                found[1], models_, names, full_phone=full_phone)).encode())
                        handle.flush()
                        os.fsync(handle.fileno())
                        export.bytes_written = handle.tell()
                    export.status = CustomerExport.Status.RUNNING
                    if found is not None:
                        export.last_customer_id = found[0]
                        export.processed += len(found[1])
                    else:
                        export.status = CustomerExport.Status.DONE
                        export.total = export.processed
                        export.finished_at = timezone.now()
                    export.save()
                if found is None:
                    return export
    except Exception as exc:
        CustomerExport.objects.filter(pk=export_id).update(status=CustomerExport.Status.FAILED,
                                                           error=str(exc)[:2000])
        raise


def customer_exports_resume(*, stale_after_seconds: int = 300) -> list[int]:
    """Exports left queued or running without progress, for the sweeper to enqueue again."""
    from crm.models import CustomerExport

    cutoff = timezone.now() - timedelta(seconds=stale_after_seconds)
    return list(CustomerExport.objects.filter(
        status__in=[CustomerExport.Status.QUEUED, CustomerExport.Status.RUNNING],
        updated_at__lt=cutoff).values_list("pk", flat=True))
