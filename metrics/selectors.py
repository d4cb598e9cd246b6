"""Every metric the API answers, computed set-based (docs/METRICS.md has each formula).

Daily facts (`activity_by_day`, `transitions_by_day`, `stage_counts_at`) are the functions the
nightly snapshot stores and the ones that answer days not stored (today, or a day never
snapshotted) live, so a stored day and a live one cannot disagree. Range figures over distinct
customers come from the precomputed facts where they hold the range (metrics.activity,
metrics.stage_durations), else from the facts of the range (docs/METRICS.md, "Snapshots").
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.db import connection
from django.db.models import Case, Count, Exists, F, OuterRef, Q, QuerySet, Sum, Value, When
from django.db.models.functions import TruncDate, TruncMonth
from django.utils import timezone

from core.db import raw_rows
from crm.models import INBOUND_EVENT_TYPES, Customer, Event, GroupMembership, Order
from lifecycle.models import CustomerStage, Stage, StageModel, StageTransition
from metrics import activity, kpis, stage_durations
from metrics.decomposition import Factors, decompose
from metrics.models import (
    CohortCell,
    CohortTable,
    DailyActivity,
    DailyStageCount,
    DailyTransitionCount,
    Snapshot,
)
from metrics.periods import (
    Period,
    Scope,
    add_months,
    as_date,
    day_start,
    in_domain,
    local_today,
    month_start,
    months_between,
    system_tz,
    today_max_age,
)

logger = logging.getLogger(__name__)
CENT = Decimal("0.01")
FRIEND_LOSS_DAYS = 7
INBOUND = sorted(INBOUND_EVENT_TYPES)
ACTIVITY_FIELDS = ("new_customers", "deleted_us", "removed", "paid_orders", "revenue", "refunds",
                   "refunded_amount", "buyers", "first_time_buyers", "active_customers",
                   "referrals")
MONEY_FIELDS = frozenset({"revenue", "refunded_amount"})
# Additive over days: a customer's first purchase happens once, a deletion is an event.
ADDITIVE_FIELDS = tuple(f for f in ACTIVITY_FIELDS if f not in ("buyers", "active_customers"))


def ratio(numerator, denominator) -> float | None:
    """numerator ÷ denominator, or None when there is no one to count."""
    if not denominator:
        return None
    return float(numerator) / float(denominator)


def money(value: Decimal | int | None) -> str:
    return str(Decimal(value or 0).quantize(CENT, rounding=ROUND_HALF_UP))


def _day(field: str) -> TruncDate:
    return TruncDate(field, tzinfo=system_tz())


def _raw(sql: str, params) -> list[tuple]:
    return raw_rows(sql, list(params))


# Stored per day besides the series' columns: referral events (for the overview's KPI).
SNAPSHOT_FIELDS = (*ACTIVITY_FIELDS, "referral_events")


def _blank_activity() -> dict[str, Any]:
    return {f: (Decimal("0") if f in MONEY_FIELDS else 0) for f in SNAPSHOT_FIELDS}


# --- Daily facts (stored by the snapshot, live for days not stored) ------------------------

def activity_by_day(*, scope: Scope, start: date, end: date
                    ) -> dict[tuple[date, int | None, int | None], dict[str, Any]]:
    """Per (day, channel id, owner id) of the customer: the `DailyActivity` columns for the
    days `start` … `end`. Six grouped statements, whatever the number of customers."""
    since, until = day_start(start), day_start(end + timedelta(days=1))
    rows: dict[tuple, dict[str, Any]] = defaultdict(_blank_activity)
    customers = scope.apply(Customer.objects.order_by())
    events = scope.apply(Event.objects.order_by(), "customer__")
    orders = scope.apply(Order.objects.order_by(), "customer__")
    group = {"ch": F("customer__channel_id"), "ow": F("customer__owner_id")}

    def collect(queryset: QuerySet) -> None:
        for row in queryset:
            key = (as_date(row.pop("d")), row.pop("ch"), row.pop("ow"))
            for name, value in row.items():
                rows[key][name] += value or 0

    collect(customers.filter(joined_at__gte=since, joined_at__lt=until)
            .values(d=_day("joined_at"), ch=F("channel_id"), ow=F("owner_id"))
            .annotate(new_customers=Count("pk"),
                      referrals=Count("pk", filter=Q(referred_by__isnull=False))))
    collect(customers.filter(first_order_at__gte=since, first_order_at__lt=until)
            .values(d=_day("first_order_at"), ch=F("channel_id"), ow=F("owner_id"))
            .annotate(first_time_buyers=Count("pk")))
    collect(events.filter(occurred_at__gte=since, occurred_at__lt=until,
                          type__in=[Event.Type.FRIEND_DELETED, Event.Type.FRIEND_REMOVED,
                                    Event.Type.REFERRAL])
            .values(d=_day("occurred_at"), **group)
            .annotate(deleted_us=Count("customer_id", distinct=True,
                                       filter=Q(type=Event.Type.FRIEND_DELETED)),
                      removed=Count("customer_id", distinct=True,
                                    filter=Q(type=Event.Type.FRIEND_REMOVED)),
                      referral_events=Count("pk", filter=Q(type=Event.Type.REFERRAL))))
    collect(orders.filter(status=Order.Status.PAID, placed_at__gte=since, placed_at__lt=until)
            .values(d=_day("placed_at"), **group)
            .annotate(paid_orders=Count("pk"), revenue=Sum("amount"),
                      buyers=Count("customer_id", distinct=True)))
    collect(orders.filter(status=Order.Status.REFUNDED, refunded_at__gte=since,
                          refunded_at__lt=until)
            .values(d=_day("refunded_at"), **group)
            .annotate(refunds=Count("pk"), refunded_amount=Sum("amount")))

    # Active: distinct (customer, day) over inbound events and paid orders — a UNION, so a
    # customer who wrote and bought on the same day counts once.
    inbound = (events.filter(type__in=INBOUND, occurred_at__gte=since, occurred_at__lt=until)
               .values(cid=F("customer_id"), **group, d=_day("occurred_at")))
    bought = (orders.filter(status=Order.Status.PAID, placed_at__gte=since, placed_at__lt=until)
              .values(cid=F("customer_id"), **group, d=_day("placed_at")))
    sql, params = inbound.union(bought).query.sql_with_params()
    for day, ch, ow, n in _raw(f"SELECT u.d, u.ch, u.ow, COUNT(*) FROM ({sql}) u "
                               f"GROUP BY u.d, u.ch, u.ow", params):
        rows[(as_date(day), ch, ow)]["active_customers"] += n
    return dict(rows)


def transitions_by_day(*, scope: Scope, start: date, end: date, model_ids=None
                       ) -> list[dict[str, Any]]:
    """Stage moves per (day, channel, owner, model, from, to), with the win-backs among them."""
    since, until = day_start(start), day_start(end + timedelta(days=1))
    queryset = scope.apply(StageTransition.objects.order_by(), "customer__").filter(
        at__gte=since, at__lt=until)
    if model_ids is not None:
        queryset = queryset.filter(model_id__in=model_ids)
    rows = (queryset.values("model_id", "from_key", "to_key", d=_day("at"),
                            ch=F("customer__channel_id"), ow=F("customer__owner_id"))
            .annotate(transitions=Count("pk"), win_backs=Count("pk", filter=Q(win_back=True))))
    return [{**row, "d": as_date(row["d"])} for row in rows]


def latest_transitions(*, scope: Scope, before: datetime, model_ids=None) -> QuerySet:
    """Each customer's last transition in each model before `before`: where they stood then.
    An anti-join (no later transition before `before`), ties on `at` broken by id."""
    later = StageTransition.objects.filter(
        customer=OuterRef("customer"), model=OuterRef("model"), at__lt=before,
    ).filter(Q(at__gt=OuterRef("at")) | Q(at=OuterRef("at"), pk__gt=OuterRef("pk")))
    queryset = scope.apply(StageTransition.objects.order_by(), "customer__").filter(
        at__lt=before)
    if model_ids is not None:
        queryset = queryset.filter(model_id__in=model_ids)
    return queryset.filter(~Exists(later))


def stage_counts_at(*, scope: Scope, at: datetime, model_ids=None) -> list[dict[str, Any]]:
    """Customers per (model, stage, channel, owner) as they stood at `at`, rebuilt from the
    transitions (each customer's latest one before `at`)."""
    return list(latest_transitions(scope=scope, before=at, model_ids=model_ids)
                .values("model_id", stage_key=F("to_key"), ch=F("customer__channel_id"),
                        ow=F("customer__owner_id"))
                .annotate(customers=Count("pk")))


StageKey = tuple[int | None, int | None, int, str]      # (channel, owner, model, stage key)


def stage_counts_by_key(rows) -> dict[StageKey, int]:
    return {(r["ch"], r["ow"], r["model_id"], r["stage_key"]): r["customers"] for r in rows}


def stage_counts_next_day(*, counts: dict[StageKey, int], transitions: list[dict[str, Any]]
                          ) -> dict[StageKey, int]:
    """The counts at the end of a day from those at the end of the day before, moved by the
    day's `transitions` (`transitions_by_day`'s rows): each took its customers out of
    `from_key` and into `to_key` (as `stage_counts_on` rebuilds a past day) — no statement of
    its own, where rebuilding each mover's last transition before and after the day read their
    histories (seconds with tens of thousands of movers). Equal to `stage_counts_at` for the
    day's end."""
    result = dict(counts)
    for row in transitions:
        for field, sign in (("to_key", 1), ("from_key", -1)):
            if row[field]:
                key = (row["ch"], row["ow"], row["model_id"], row[field])
                result[key] = result.get(key, 0) + sign * row["transitions"]
    return {key: n for key, n in result.items() if n}


# --- Stored days joined with live ones -------------------------------------------------------

def _today_snapshot_is_fresh(taken_at: datetime) -> bool:
    """Today's snapshot, which the frequent refresh (`metrics_today`) replaces every few
    minutes, stands in for a live computation while it is recent."""
    return (timezone.now() - taken_at).total_seconds() <= today_max_age()


def _days_to_compute_live(period: Period) -> tuple[list[date], list[date]]:
    """(stored days, days to compute live) of the period up to today. A past day counts as
    stored when its snapshot was taken after it ended; today when its snapshot is fresh."""
    today = local_today()
    last = min(period.end, today)
    if last < period.start:
        return [], []
    stored = set()
    for day, taken_at in Snapshot.objects.filter(date__gte=period.start,
                                                 date__lte=last).values_list("date", "taken_at"):
        if (_today_snapshot_is_fresh(taken_at) if day == today
                else taken_at >= day_start(day + timedelta(days=1))):
            stored.add(day)
    days = list(Period(period.start, last).each_day())
    return sorted(stored), [d for d in days if d not in stored]


def _runs(days: list[date]) -> list[tuple[date, date]]:
    """Consecutive days as (first, last) runs, so live days are computed run by run."""
    runs: list[tuple[date, date]] = []
    for day in days:
        if runs and runs[-1][1] == day - timedelta(days=1):
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def activity_series(*, scope: Scope, period: Period) -> list[dict[str, Any]]:
    """The `DailyActivity` columns for each day of the period up to today: stored days from
    the snapshots, the others (today, days never snapshotted) computed live."""
    stored, live = _days_to_compute_live(period)
    by_day: dict[date, dict[str, Any]] = {d: _blank_activity() for d in [*stored, *live]}
    if stored:
        stored_rows = (scope.apply(DailyActivity.objects.order_by())
                       .filter(date__gte=stored[0], date__lte=stored[-1], date__in=stored)
                       .values("date").annotate(**{f"s_{f}": Sum(f) for f in ACTIVITY_FIELDS}))
        for row in stored_rows:
            for name in ACTIVITY_FIELDS:
                by_day[row["date"]][name] += row[f"s_{name}"] or 0
    for first, last in _runs(live):
        for (day, _ch, _ow), values in activity_by_day(scope=scope, start=first,
                                                       end=last).items():
            for name, value in values.items():
                if name in by_day[day]:
                    by_day[day][name] += value
    # Today is "live" (not over yet) whether read from its fresh snapshot or computed now.
    live_days = {*live, local_today()}
    return [{"date": d.isoformat(), "live": d in live_days, **{
        name: money(by_day[d][name]) if name in MONEY_FIELDS else by_day[d][name]
        for name in ACTIVITY_FIELDS}} for d in sorted(by_day)]


def series_totals(series: list[dict[str, Any]]) -> dict[str, Any]:
    """The additive columns of a series summed over its days."""
    totals: dict[str, Any] = {}
    for name in ADDITIVE_FIELDS:
        if name in MONEY_FIELDS:
            totals[name] = money(sum((Decimal(day[name]) for day in series), Decimal("0")))
        else:
            totals[name] = sum(day[name] for day in series)
    return totals


def transition_totals(*, scope: Scope, model: StageModel, period: Period
                      ) -> dict[tuple[str, str], dict[str, int]]:
    """(from key, to key) → transitions and win-backs in the period, stored days from the
    snapshots and the rest live."""
    stored, live = _days_to_compute_live(period)
    totals: dict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: {"transitions": 0, "win_backs": 0})
    if stored:
        rows = (scope.apply(DailyTransitionCount.objects.order_by())
                .filter(model=model, date__gte=stored[0], date__lte=stored[-1], date__in=stored)
                .values("from_key", "to_key")
                .annotate(n=Sum("transitions"), w=Sum("win_backs")))
        for row in rows:
            totals[(row["from_key"], row["to_key"])]["transitions"] += row["n"]
            totals[(row["from_key"], row["to_key"])]["win_backs"] += row["w"]
    for first, last in _runs(live):
        for row in transitions_by_day(scope=scope, start=first, end=last,
                                      model_ids=[model.pk]):
            totals[(row["from_key"], row["to_key"])]["transitions"] += row["transitions"]
            totals[(row["from_key"], row["to_key"])]["win_backs"] += row["win_backs"]
    return dict(totals)


# --- Relationship KPIs (seed 002) ------------------------------------------------------------

def _activity_counts(*, scope: Scope, period: Period) -> dict[str, int]:
    """One pass over the inbound events and paid orders of the period and the one before it,
    grouped by customer: active in the period, active in the previous one, in both, and — of
    the customers in the private domain during the period — with an inbound event in it."""
    previous = period.previous()
    current = Q(occurred_at__gte=period.since)
    inbound = (Event.objects.order_by()
               .filter(type__in=INBOUND, occurred_at__gte=previous.since,
                       occurred_at__lt=period.until)
               .values(cid=F("customer_id"),
                       cur=Case(When(current, then=1), default=0),
                       prev=Case(When(current, then=0), default=1),
                       inb=Case(When(current, then=1), default=0)))
    current = Q(placed_at__gte=period.since)
    bought = (Order.objects.order_by()
              .filter(status=Order.Status.PAID, placed_at__gte=previous.since,
                      placed_at__lt=period.until)
              .values(cid=F("customer_id"),
                      cur=Case(When(current, then=1), default=0),
                      prev=Case(When(current, then=0), default=1),
                      inb=Value(0)))
    activity_sql, activity_params = inbound.union(bought, all=True).query.sql_with_params()
    customers = scope.apply(Customer.objects.order_by()).values(
        cust=F("pk"), dom=Case(When(in_domain(period), then=1), default=0))
    if customers.query.is_empty():
        return {"active": 0, "active_previous": 0, "retained": 0, "interacting": 0}
    customers_sql, customers_params = customers.query.sql_with_params()
    sql = (
        f"SELECT COALESCE(SUM(g.c), 0), COALESCE(SUM(g.p), 0), COALESCE(SUM(g.c * g.p), 0), "
        f"COALESCE(SUM(g.i * cu.dom), 0) "
        f"FROM (SELECT u.cid, MAX(u.cur) AS c, MAX(u.prev) AS p, MAX(u.inb) AS i "
        f"FROM ({activity_sql}) u GROUP BY u.cid) g "
        f"JOIN ({customers_sql}) cu ON cu.cust = g.cid"
    )
    (active, active_previous, retained, interacting), = _raw(
        sql, [*activity_params, *customers_params])
    return {"active": active, "active_previous": active_previous, "retained": retained,
            "interacting": interacting}


def _referral_events(*, scope: Scope, period: Period) -> int:
    """Referral events in the period: stored days from the snapshots (unless a day was stored
    before they were counted), the other days counted now."""
    stored, live = _days_to_compute_live(period)
    total = 0
    if stored:
        days = (scope.apply(DailyActivity.objects.order_by())
                .filter(date__gte=stored[0], date__lte=stored[-1], date__in=stored)
                .aggregate(n=Sum("referral_events"),
                           unknown=Count("pk", filter=Q(referral_events__isnull=True))))
        if days["unknown"]:
            stored, live = [], list(Period(period.start, min(period.end,
                                                             local_today())).each_day())
        else:
            total += days["n"] or 0
    events = scope.apply(Event.objects.order_by(), "customer__").filter(type=Event.Type.REFERRAL)
    for first, last in _runs(live):
        total += events.filter(occurred_at__gte=day_start(first),
                               occurred_at__lt=day_start(last + timedelta(days=1))).count()
    return total


def _referrals(*, scope: Scope, period: Period) -> dict[str, int]:
    """Distinct referrers of the customers who joined in the period, and the referral events
    of the period."""
    referrers = scope.apply(Customer.objects.order_by()).filter(
        joined_at__gte=period.since, joined_at__lt=period.until,
        referred_by__isnull=False).aggregate(n=Count("referred_by", distinct=True))["n"]
    return {"referrers": referrers,
            "referral_events": _referral_events(scope=scope, period=period)}


def _kpis(joined: dict, figures: dict, active: dict, buyers: dict, referrals: dict
          ) -> dict[str, Any]:
    """The counts of each relationship stage and each KPI's rate of them, as the registry
    (metrics.kpis) defines it."""
    counts = {
        **{name: joined[name] for name in ("joined", "deleted_within_7_days", "joined_group",
                                            "referred_customers")},
        **{name: figures[name] for name in ("customers", "never_bought_before",
                                             "first_time_buyers")},
        **{name: active[name] for name in ("interacting", "active", "active_previous",
                                            "retained")},
        **{name: buyers[name] for name in ("buyers", "repeat_buyers")},
        **{name: referrals[name] for name in ("referrers", "referral_events")},
    }
    return {**counts, **{kpi.key: ratio(counts[kpi.numerator], counts[kpi.denominator])
                         for kpi in kpis.KPIS if kpi.section != "lifecycle"}}


def relationship_kpis(*, scope: Scope, period: Period, stored: dict | None = None
                      ) -> dict[str, Any]:
    """The seed-002 KPIs of each relationship stage for the period (formulas: METRICS.md):
    from the customer bitmaps for a range within their history (`stored`, when the caller
    read them already), else live."""
    f = stored if stored is not None else activity.relationship_figures(scope=scope,
                                                                        period=period)
    if f is not None:
        return _kpis(f, f, f, f, _referrals(scope=scope, period=period))
    since, until = period.since, period.until
    customers = scope.apply(Customer.objects.order_by())
    deleted_soon = Exists(Event.objects.filter(
        customer=OuterRef("pk"), type=Event.Type.FRIEND_DELETED,
        occurred_at__gte=OuterRef("joined_at"),
        occurred_at__lt=OuterRef("joined_at") + timedelta(days=FRIEND_LOSS_DAYS)))
    in_group = Exists(GroupMembership.objects.filter(
        customer=OuterRef("pk"), joined_at__gte=OuterRef("joined_at"), joined_at__lt=until))
    joined = customers.filter(joined_at__gte=since, joined_at__lt=until).aggregate(
        joined=Count("pk"),
        deleted_within_7_days=Count("pk", filter=Q(deleted_soon)),
        joined_group=Count("pk", filter=Q(in_group)),
        referred_customers=Count("pk", filter=Q(referred_by__isnull=False)),
    )
    domain = customers.filter(in_domain(period))
    figures = domain.aggregate(
        customers=Count("pk"),
        never_bought_before=Count("pk", filter=Q(first_order_at__isnull=True)
                                  | Q(first_order_at__gte=since)),
        first_time_buyers=Count("pk", filter=Q(first_order_at__gte=since,
                                               first_order_at__lt=until)),
    )
    active = _activity_counts(scope=scope, period=period)
    paid = scope.apply(Order.objects.order_by(), "customer__").filter(
        status=Order.Status.PAID, placed_at__gte=since, placed_at__lt=until)
    buyers = (paid.values("customer_id").annotate(n=Count("pk"))
              .aggregate(buyers=Count("customer_id"),
                         repeat_buyers=Count("customer_id", filter=Q(n__gte=2))))
    return _kpis(joined, figures, active, buyers, _referrals(scope=scope, period=period))


# --- Revenue (seed 004) ----------------------------------------------------------------------

def revenue_factors(*, scope: Scope, period: Period) -> Factors:
    """Traffic, buyers, paid orders and revenue of the period. Traffic is the customers in the
    private domain during the period, plus any buyer of the period who was not (so that
    conversion = buyers ÷ traffic never exceeds 1 and the identity holds). A range within the
    stored history is answered from the customer bitmaps (metrics.activity), the same figures."""
    stored, = activity.revenue_figures(scope=scope, periods=[period])
    if stored is not None:
        return _stored_factors(stored)
    paid = scope.apply(Order.objects.order_by(), "customer__").filter(
        status=Order.Status.PAID, placed_at__gte=period.since, placed_at__lt=period.until)
    orders = paid.aggregate(
        paid_orders=Count("pk"), revenue=Sum("amount"),
        buyers=Count("customer_id", distinct=True),
        outside=Count("customer_id", distinct=True, filter=~in_domain(period, "customer__")),
    )
    domain = scope.apply(Customer.objects.order_by()).filter(in_domain(period)).count()
    return Factors(traffic=domain + orders["outside"], buyers=orders["buyers"],
                   paid_orders=orders["paid_orders"], revenue=orders["revenue"] or Decimal("0"))


def _stored_factors(stored: activity.RevenueFigures) -> Factors:
    return Factors(traffic=stored.traffic, buyers=stored.buyers,
                   paid_orders=stored.paid_orders, revenue=stored.revenue)


def _factor_dict(factors: Factors, period: Period) -> dict[str, Any]:
    return {
        **period.as_dict(),
        "revenue": money(factors.revenue),
        "traffic": factors.traffic,
        "conversion_rate": float(factors.conversion_rate),
        "average_order_value": money(Decimal(factors.average_order_value.numerator)
                                     / Decimal(factors.average_order_value.denominator)),
        "purchase_frequency": float(factors.purchase_frequency),
        "buyers": factors.buyers,
        "paid_orders": factors.paid_orders,
    }


def revenue_report(*, scope: Scope, period: Period, compare: Period) -> dict[str, Any]:
    """Revenue = traffic × conversion rate × average order value × purchase frequency for the
    period and the comparison period, and the change split into the four factors: from the
    customer bitmaps where they hold a range (one read for both), else live."""
    stored = activity.revenue_figures(scope=scope, periods=[period, compare])
    current, previous = (
        _stored_factors(found) if found is not None else revenue_factors(scope=scope, period=p)
        for found, p in zip(stored, (period, compare), strict=True))
    method, parts = decompose(current=current, previous=previous)
    return {
        **_factor_dict(current, period),
        "previous": _factor_dict(previous, compare),
        "change": money(current.revenue - previous.revenue),
        "method": method,
        "decomposition": {name: money(value) for name, value in parts.items()},
    }


# --- Stages: counts, funnel rates, churn and win-back ---------------------------------------

def model_stages(model: StageModel) -> list[Stage]:
    return list(model.stages.order_by("position"))


def current_stage_counts(*, scope: Scope, model: StageModel) -> dict[str, int]:
    rows = (scope.apply(CustomerStage.objects.order_by(), "customer__").filter(model=model)
            .values(key=F("stage__key")).annotate(n=Count("pk")))
    return {row["key"]: row["n"] for row in rows}


def stage_counts_on(*, scope: Scope, model: StageModel, day: date | None
                    ) -> tuple[dict[str, int], str]:
    """Customers per stage key: now (day None or today), or at the end of a past day — from
    its snapshot when stored, else rebuilt from the current stages and the transitions since.
    Also says which."""
    today = local_today()
    if day is None or day >= today:
        # Now: from today's snapshot while the frequent refresh keeps it fresh (the same
        # counts, rebuilt from the transitions a few minutes ago), else the current stages.
        taken = Snapshot.objects.filter(date=today).values_list("taken_at", flat=True).first()
        if taken is not None and _today_snapshot_is_fresh(taken):
            rows = (scope.apply(DailyStageCount.objects.order_by())
                    .filter(model=model, date=today)
                    .values("stage_key").annotate(n=Sum("customers")))
            return {row["stage_key"]: row["n"] for row in rows}, "today"
        return current_stage_counts(scope=scope, model=model), "current"
    if Snapshot.objects.filter(date=day).exists():
        rows = (scope.apply(DailyStageCount.objects.order_by()).filter(model=model, date=day)
                .values("stage_key").annotate(n=Sum("customers")))
        return {row["stage_key"]: row["n"] for row in rows}, "snapshot"
    # Not stored: the current stages less the moves since the day ended (each move took its
    # customer out of `from_key` and into `to_key`) — one pass over the transitions after the
    # day (index on model, at), where rebuilding each customer's last transition before it
    # would read the whole history.
    counts: dict[str, int] = defaultdict(int, current_stage_counts(scope=scope, model=model))
    moves = (scope.apply(StageTransition.objects.order_by(), "customer__")
             .filter(model=model, at__gte=day_start(day + timedelta(days=1)))
             .values("from_key", "to_key").annotate(n=Count("pk")))
    for row in moves:
        counts[row["to_key"]] -= row["n"]
        if row["from_key"]:
            counts[row["from_key"]] += row["n"]
    return {key: n for key, n in counts.items() if n}, "rebuilt"


def funnel_rows(stages: list[Stage], counts: dict[str, int]) -> list[dict[str, Any]]:
    """Stages in order with their count, the customers at the stage or beyond (`reach`) and
    rate_to_next = reach(next) ÷ reach(this)."""
    reach = []
    running = 0
    for stage in reversed(stages):
        running += counts.get(stage.key, 0)
        reach.append(running)
    reach.reverse()
    return [{
        "stage": stage.key, "name": stage.name, "count": counts.get(stage.key, 0),
        "reach": reach[i],
        "rate_to_next": ratio(reach[i + 1], reach[i]) if i + 1 < len(stages) else None,
    } for i, stage in enumerate(stages)]


def churn_and_win_back(*, scope: Scope, model: StageModel, stages: list[Stage], period: Period,
                       churned: int | None = None) -> dict[str, Any]:
    """Churn: customers moving into the `churn` stage in the period (a first placement there
    is not a move) ÷ customers placed in the model and not in churn at its start. Win-back: win-back transitions in the period ÷
    customers in a win-back stage (dormant, churn) at its start. None where the model has no
    such stage. `churned`: the customers entering churn, when the caller read them already
    (the customer bitmaps)."""
    keys = {s.key for s in stages}
    churn_key = "churn" if "churn" in keys else None
    win_back_keys = [s.key for s in stages if s.win_back_from]
    result: dict[str, Any] = {"churn": None, "win_back": None}
    if churn_key is None and not win_back_keys:
        return result
    # Where each customer stood at the start: the counts at the end of the day before, from
    # that day's snapshot when stored (else rebuilt from the transitions).
    counts, _source = stage_counts_on(scope=scope, model=model,
                                      day=period.start - timedelta(days=1))
    at_start = {"not_churned": sum(n for key, n in counts.items() if key != churn_key),
                "in_win_back_stages": sum(counts.get(key, 0) for key in win_back_keys)}
    # Entered churn: distinct customers, from the transitions into it (index on model, to_key,
    # at); win-backs add up day by day, from the snapshots and today.
    if churned is None and (model.key, churn_key) == (activity.CHURN_MODEL,
                                                      activity.CHURN_STAGE):
        churned = activity.churned(scope=scope, period=period)
    if churned is None:
        churned = 0
        if churn_key is not None:
            # A move, not a first placement (from_key blank): METRICS.md, "Stages, churn and
            # win-back".
            churned = scope.apply(StageTransition.objects.order_by(), "customer__").filter(
                model=model, to_key=churn_key, at__gte=period.since, at__lt=period.until,
            ).exclude(from_key="").aggregate(n=Count("customer_id", distinct=True))["n"]
    win_backs = 0
    if win_back_keys:
        win_backs = sum(v["win_backs"] for v in transition_totals(
            scope=scope, model=model, period=period).values())
    moves = {"churned": churned, "win_backs": win_backs}
    if churn_key is not None:
        result["churn"] = {"stage": churn_key, "entered": moves["churned"],
                           "not_in_stage_at_start": at_start["not_churned"],
                           "rate": ratio(moves["churned"], at_start["not_churned"])}
    if win_back_keys:
        result["win_back"] = {"from_stages": win_back_keys, "win_backs": moves["win_backs"],
                              "in_stages_at_start": at_start["in_win_back_stages"],
                              "rate": ratio(moves["win_backs"], at_start["in_win_back_stages"])}
    return result


# --- Medians over transitions (portable SQL: ROW_NUMBER/COUNT windows) ----------------------

def _days_between(later: str, earlier: str) -> str:
    if connection.vendor == "postgresql":
        return f"(EXTRACT(EPOCH FROM ({later} - {earlier})) / 86400.0)"
    return f"(julianday({later}) - julianday({earlier}))"


def _scope_sql(scope: Scope) -> tuple[str, list]:
    """` AND customer_id IN (…)` restricting raw SQL to the scope ('' when unrestricted)."""
    if not scope.restricted:
        return "", []
    customers = scope.apply(Customer.objects.order_by()).values("pk")
    if customers.query.is_empty():
        return " AND 1 = 0", []
    sql, params = customers.query.sql_with_params()
    return f" AND customer_id IN ({sql})", list(params)


def _at(value: datetime):
    return connection.ops.adapt_datetimefield_value(value)


MEDIAN_ROWS = "rn IN ((n + 1) / 2, (n + 2) / 2)"


def median_days_in_stage(*, scope: Scope, model: StageModel, period: Period
                         ) -> dict[str, dict[str, Any]]:
    """Stage key → exits in the period and the median days between entering the stage and
    that exit (the transition before the exit is the entry). A range within the spell days up
    to today, with its spells stored for today, is answered from them
    (metrics.stage_durations), the same figures."""
    if stage_durations.stored_range(period, scope) is not None:
        try:
            return stage_durations.median_days_in_stage(scope=scope, model_id=model.pk,
                                                        period=period)
        except stage_durations.Inconsistent:
            logger.warning("metrics.stage_durations_inconsistent", extra={"model": model.key})
    table = StageTransition._meta.db_table
    scope_sql, scope_params = _scope_sql(scope)
    since, until = _at(period.since), _at(period.until)
    sql = f"""
        WITH t AS (
            SELECT from_key, at,
                   LAG(at) OVER w AS prev_at, LAG(to_key) OVER w AS prev_key
            FROM {table}
            WHERE model_id = %s AND at < %s{scope_sql} AND customer_id IN (
                SELECT customer_id FROM {table} WHERE model_id = %s AND at >= %s AND at < %s)
            WINDOW w AS (PARTITION BY customer_id ORDER BY at, id)
        ), d AS (
            SELECT from_key AS stage, {_days_between("at", "prev_at")} AS days FROM t
            WHERE at >= %s AND prev_at IS NOT NULL AND prev_key = from_key
        ), r AS (
            SELECT stage, days, ROW_NUMBER() OVER (PARTITION BY stage ORDER BY days) AS rn,
                   COUNT(*) OVER (PARTITION BY stage) AS n
            FROM d
        )
        SELECT stage, MAX(n), AVG(days) FROM r WHERE {MEDIAN_ROWS} GROUP BY stage
    """
    params = [model.pk, until, *scope_params, model.pk, since, until, since]
    return {stage: {"exits": n, "median_days": round(float(days), 3)}
            for stage, n, days in _raw(sql, params)}


def stage_conversions(*, scope: Scope, model: StageModel, period: Period
                      ) -> dict[str, dict[str, Any]]:
    """Of the customers entering each stage in the period (their first entry in it), how many
    moved next to each other stage (at any time since) and the median days it took. A range
    within the spell days up to today, with its spells stored for today, is answered from them
    (metrics.stage_durations)."""
    if stage_durations.stored_range(period, scope) is not None:
        try:
            return stage_durations.stage_conversions(scope=scope, model_id=model.pk,
                                                     period=period)
        except stage_durations.Inconsistent:
            logger.warning("metrics.stage_durations_inconsistent", extra={"model": model.key})
    table = StageTransition._meta.db_table
    scope_sql, scope_params = _scope_sql(scope)
    since, until = _at(period.since), _at(period.until)
    sql = f"""
        WITH t AS (
            SELECT id, customer_id, to_key, at,
                   LEAD(to_key) OVER w AS next_key, LEAD(at) OVER w AS next_at
            FROM {table}
            WHERE model_id = %s AND at >= %s{scope_sql} AND customer_id IN (
                SELECT customer_id FROM {table} WHERE model_id = %s AND at >= %s AND at < %s)
            WINDOW w AS (PARTITION BY customer_id ORDER BY at, id)
        ), e AS (
            SELECT to_key AS stage, next_key, {_days_between("next_at", "at")} AS days,
                   ROW_NUMBER() OVER (PARTITION BY customer_id, to_key ORDER BY at, id) AS k
            FROM t WHERE at < %s
        ), f AS (
            SELECT stage, next_key, days FROM e WHERE k = 1
        ), g AS (
            SELECT stage, next_key, days,
                   ROW_NUMBER() OVER (PARTITION BY stage, next_key ORDER BY days) AS rn,
                   COUNT(*) OVER (PARTITION BY stage, next_key) AS n
            FROM f WHERE next_key IS NOT NULL
        )
        SELECT stage, NULL, COUNT(*), NULL FROM f GROUP BY stage
        UNION ALL
        SELECT stage, next_key, MAX(n), AVG(days) FROM g WHERE {MEDIAN_ROWS}
        GROUP BY stage, next_key
    """
    params = [model.pk, since, *scope_params, model.pk, since, until, until]
    result: dict[str, dict[str, Any]] = defaultdict(lambda: {"entered": 0, "next": {}})
    for stage, next_key, n, days in _raw(sql, params):
        if next_key is None:
            result[stage]["entered"] = n
        else:
            result[stage]["next"][next_key] = {"customers": n,
                                               "median_days": round(float(days), 3)}
    return dict(result)


def flows_report(*, scope: Scope, model: StageModel, period: Period) -> dict[str, Any]:
    stages = model_stages(model)
    names = {s.key: s.name for s in stages}
    totals = transition_totals(scope=scope, model=model, period=period)
    conversions = stage_conversions(scope=scope, model=model, period=period)
    flows = [{"from": frm or None, "to": to, "count": v["transitions"], "win_backs": v["win_backs"]}
             for (frm, to), v in sorted(totals.items(), key=lambda i: (-i[1]["transitions"], i[0]))]
    order = {s.key: s.position for s in stages}
    rows = []
    for stage in stages:
        conv = conversions.get(stage.key, {"entered": 0, "next": {}})
        moved = sum(v["customers"] for v in conv["next"].values())
        rows.append({
            "stage": stage.key, "name": stage.name, "entered": conv["entered"],
            "still_in_stage": conv["entered"] - moved,
            "next": [{"stage": key, "name": names.get(key, key), "customers": v["customers"],
                      "share": ratio(v["customers"], conv["entered"]),
                      "median_days": v["median_days"]}
                     for key, v in sorted(conv["next"].items(),
                                          key=lambda i: (order.get(i[0], 999), i[0]))],
        })
    return {"model": model.key, **period.as_dict(), "flows": flows, "stages": rows}


def stages_report(*, scope: Scope, model: StageModel, period: Period) -> dict[str, Any]:
    stages = model_stages(model)
    counts, source = stage_counts_on(scope=scope, model=model, day=period.end)
    totals = transition_totals(scope=scope, model=model, period=period)
    medians = median_days_in_stage(scope=scope, model=model, period=period)
    entered: dict[str, int] = defaultdict(int)
    exited: dict[str, int] = defaultdict(int)
    for (frm, to), v in totals.items():
        entered[to] += v["transitions"]
        if frm:
            exited[frm] += v["transitions"]
    rows = funnel_rows(stages, counts)
    for row in rows:
        row["entered"] = entered.get(row["stage"], 0)
        row["exited"] = exited.get(row["stage"], 0)
        row["median_days_in_stage"] = medians.get(row["stage"], {}).get("median_days")
    return {"model": model.key, **period.as_dict(), "counts_at": period.end.isoformat()
            if source not in ("current", "today") else None, "counts_source": source,
            "stages": rows,
            **churn_and_win_back(scope=scope, model=model, stages=stages, period=period)}


# --- Cohort retention ------------------------------------------------------------------------

def _month(field: str) -> TruncMonth:
    return TruncMonth(field, tzinfo=system_tz())


def cohort_cells(*, scope: Scope, joined_since: date | None = None,
                 joined_until: date | None = None, active_since: date | None = None,
                 active_until: date | None = None) -> tuple[dict, dict]:
    """Cohort sizes {(cohort, ch, ow): n} of the customers who joined in [joined_since,
    joined_until) and active counts {(cohort, offset, ch, ow): n} for activity in
    [active_since, active_until) (months as first days; None = unbounded). Active = an inbound
    event or a paid order in the month; one UNION over events and orders, grouped — no
    per-customer work."""
    customers = scope.apply(Customer.objects.order_by())
    events = scope.apply(Event.objects.order_by(), "customer__").filter(type__in=INBOUND)
    orders = scope.apply(Order.objects.order_by(), "customer__").filter(
        status=Order.Status.PAID)
    if joined_since is not None:
        customers = customers.filter(joined_at__gte=day_start(joined_since))
        events = events.filter(customer__joined_at__gte=day_start(joined_since))
        orders = orders.filter(customer__joined_at__gte=day_start(joined_since))
    if joined_until is not None:
        customers = customers.filter(joined_at__lt=day_start(joined_until))
        events = events.filter(customer__joined_at__lt=day_start(joined_until))
        orders = orders.filter(customer__joined_at__lt=day_start(joined_until))
    if active_since is not None:
        events = events.filter(occurred_at__gte=day_start(active_since))
        orders = orders.filter(placed_at__gte=day_start(active_since))
    if active_until is not None:
        events = events.filter(occurred_at__lt=day_start(active_until))
        orders = orders.filter(placed_at__lt=day_start(active_until))
    sizes = {}
    for row in (customers.values(cm=_month("joined_at"), ch=F("channel_id"), ow=F("owner_id"))
                .annotate(n=Count("pk"))):
        sizes[(as_date(row["cm"]), row["ch"], row["ow"])] = row["n"]
    group = {"ch": F("customer__channel_id"), "ow": F("customer__owner_id"),
             "cm": _month("customer__joined_at")}
    inbound = events.values(cid=F("customer_id"), **group, am=_month("occurred_at"))
    bought = orders.values(cid=F("customer_id"), **group, am=_month("placed_at"))
    sql, params = inbound.union(bought).query.sql_with_params()
    active = {}
    for cm, am, ch, ow, n in _raw(f"SELECT u.cm, u.am, u.ch, u.ow, COUNT(*) FROM ({sql}) u "
                                  f"GROUP BY u.cm, u.am, u.ch, u.ow", params):
        offset = months_between(as_date(cm), as_date(am))
        if offset >= 0:
            key = (as_date(cm), offset, ch, ow)
            active[key] = active.get(key, 0) + n
    return sizes, active


def _months(first: date, last: date) -> list[date]:
    months = []
    while first <= last:
        months.append(first)
        first = add_months(first, 1)
    return months


def cohort_retention(*, scope: Scope, period: Period) -> dict[str, Any]:
    """Cohorts = join months touching the period; for each, its size and, for every month
    since joining up to the current one, the active customers and their share. Months up to
    the stored table's last complete month come from it, later ones are computed live."""
    first, last = month_start(period.start), month_start(period.end)
    current = month_start(local_today())
    last = min(last, current)
    table = CohortTable.objects.filter(through__isnull=False).first()
    through = table.through if table else None
    sizes: dict[date, int] = defaultdict(int)
    active: dict[tuple[date, int], int] = defaultdict(int)
    if through is not None and first <= through:
        stored = (scope.apply(CohortCell.objects.order_by())
                  .filter(cohort__gte=first, cohort__lte=min(last, through))
                  .values("cohort", "month_offset")
                  .annotate(size=Sum("customers"), n=Sum("active")))
        for row in stored:
            if row["month_offset"] == 0:
                sizes[row["cohort"]] += row["size"]
            active[(row["cohort"], row["month_offset"])] += row["n"]
    live_from = add_months(through, 1) if through is not None else None
    month_active = (activity.cohort_month_active(scope=scope, month=current,
                                                cohorts=_months(first, last))
                    if live_from == current and first <= current else None)
    if month_active is not None:
        # Only the current month is live: its cohort counted now, the month's activity from
        # the customer bitmaps.
        if last == current:
            sizes[current] += scope.apply(Customer.objects.order_by()).filter(
                joined_at__gte=day_start(current),
                joined_at__lt=day_start(add_months(current, 1))).count()
        for cm, n in month_active.items():
            active[(cm, months_between(cm, current))] += n
    elif live_from is None or live_from <= current:
        live_sizes, live_active = cohort_cells(
            scope=scope, joined_since=first, joined_until=add_months(last, 1),
            active_since=live_from)
        for (cm, _ch, _ow), n in live_sizes.items():
            if live_from is None or cm >= live_from:
                sizes[cm] += n
        for (cm, offset, _ch, _ow), n in live_active.items():
            active[(cm, offset)] += n
    cohorts = []
    month = first
    while month <= last:
        size = sizes.get(month, 0)
        cohorts.append({
            "cohort": month.strftime("%Y-%m"), "customers": size,
            # The last cell is the current month: so far, not complete (`partial`).
            "retention": [{"month": offset, "active": active.get((month, offset), 0),
                           "rate": ratio(active.get((month, offset), 0), size),
                           "partial": offset == months_between(month, current)}
                          for offset in range(months_between(month, current) + 1)],
        })
        month = add_months(month, 1)
    return {**period.as_dict(), "stored_through": through.strftime("%Y-%m") if through else None,
            "cohorts": cohorts}


# --- Reports the API answers -----------------------------------------------------------------

RELATIONSHIP_STAGES = {
    # Seed 002's four relationship stages and the KPIs it names for each.
    "acquaintance": ("joined", "deleted_within_7_days", "friend_loss_rate", "joined_group",
                     "group_join_rate"),
    "interaction": ("customers", "interacting", "interaction_rate", "active", "active_previous",
                    "retained", "retention_rate"),
    "purchase": ("never_bought_before", "first_time_buyers", "conversion_rate", "buyers",
                 "repeat_buyers", "repurchase_rate"),
    "alliance": ("referred_customers", "referrers", "referral_events", "fission_multiplier"),
}
LIFECYCLE_MODEL = "value"


def overview_report(*, scope: Scope, period: Period) -> dict[str, Any]:
    # The customer bitmaps, read once for the KPIs and churn (None: computed live).
    stored = activity.relationship_figures(scope=scope, period=period)
    figures = relationship_kpis(scope=scope, period=period, stored=stored)
    series = activity_series(scope=scope, period=period)
    model = StageModel.objects.filter(key=LIFECYCLE_MODEL).first()
    lifecycle = None
    if model is not None:
        lifecycle = {"model": model.key, **churn_and_win_back(
            scope=scope, model=model, stages=model_stages(model), period=period,
            churned=stored["churned"] if stored is not None else None)}
    return {
        **period.as_dict(),
        "previous": period.previous().as_dict(),
        "relationship": {stage: {name: figures[name] for name in names}
                         for stage, names in RELATIONSHIP_STAGES.items()},
        "lifecycle": lifecycle,
        "totals": series_totals(series),
        "series": series,
    }


def funnel_report(*, scope: Scope, model: StageModel, day: date | None) -> dict[str, Any]:
    counts, source = stage_counts_on(scope=scope, model=model, day=day)
    return {"model": model.key, "date": day.isoformat() if day else None, "source": source,
            "stages": funnel_rows(model_stages(model), counts)}
