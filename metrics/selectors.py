"""Every metric the API answers, computed live in SQL (the reference the stored paths are tested
against), and the choice of the stored answer or the live one for each range. Formulas:
docs/METRICS.md; which days and ranges are stored: its "Snapshots"."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from itertools import accumulate, chain
from typing import Any

from django.db import connection
from django.db.models import Case, Count, Exists, F, OuterRef, Q, QuerySet, Sum, Value, When
from django.db.models.functions import TruncDate, TruncMonth
from django.utils import timezone

from core.db import raw_rows
from crm.models import Customer, Event, GroupMembership, Order
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
FRIEND_LOSS_DAYS, INBOUND = activity.FRIEND_LOSS_DAYS, activity.INBOUND
ACTIVITY_FIELDS = ("new_customers", "deleted_us", "removed", "paid_orders", "revenue", "refunds",
                   "refunded_amount", "buyers", "first_time_buyers", "active_customers",
                   "referrals")
MONEY_FIELDS = frozenset({"revenue", "refunded_amount"})
# Additive over days: a customer's first purchase happens once, a deletion is an event.
ADDITIVE_FIELDS = tuple(f for f in ACTIVITY_FIELDS if f not in ("buyers", "active_customers"))
# Stored per day besides the series' columns: referral events (for the overview's KPI).
SNAPSHOT_FIELDS = (*ACTIVITY_FIELDS, "referral_events")


def ratio(numerator, denominator) -> float | None:
    """numerator ÷ denominator, or None when there is no one to count."""
    return float(numerator) / float(denominator) if denominator else None


def money(value: Decimal | int | None) -> str:
    return str(Decimal(value or 0).quantize(CENT, rounding=ROUND_HALF_UP))


def _day(field: str) -> TruncDate:
    return TruncDate(field, tzinfo=system_tz())


def _month(field: str) -> TruncMonth:
    return TruncMonth(field, tzinfo=system_tz())


def _between(field: str, since: date | None, until: date | None) -> Q:
    """`field` within the local days [since, until) (None: unbounded)."""
    return Q(**{f"{field}__{op}": day_start(day)
                for op, day in (("gte", since), ("lt", until)) if day is not None})


def _blank_activity() -> dict[str, Any]:
    return {f: (Decimal("0") if f in MONEY_FIELDS else 0) for f in SNAPSHOT_FIELDS}


def _transitions(scope: Scope, model_ids=None) -> QuerySet:
    queryset = scope.apply(StageTransition.objects.order_by(), "customer__")
    return queryset if model_ids is None else queryset.filter(model_id__in=model_ids)


# --- Daily facts (stored by the snapshot, live for days not stored) ------------------------

def activity_by_day(*, scope: Scope, start: date, end: date
                    ) -> dict[tuple[date, int | None, int | None], dict[str, Any]]:
    """Per (day, channel id, owner id) of the customer: the `DailyActivity` columns for the
    days `start` … `end`. Six grouped statements, whatever the number of customers."""
    customers = scope.apply(Customer.objects.order_by())
    events = scope.apply(Event.objects.order_by(), "customer__")
    orders = scope.apply(Order.objects.order_by(), "customer__")
    paid = orders.filter(status=Order.Status.PAID)

    def daily(queryset: QuerySet, field: str, path: str = "customer__", **extra) -> QuerySet:
        """The rows with `field` in the days: their day and their customer's channel, owner."""
        return queryset.filter(_between(field, start, end + timedelta(days=1))).values(
            **extra, d=_day(field), ch=F(f"{path}channel_id"), ow=F(f"{path}owner_id"))

    # Active: distinct (customer, day) over inbound events and paid orders — a UNION, so a
    # customer who wrote and bought on the same day counts once.
    sql, params = daily(events.filter(type__in=INBOUND), "occurred_at", cid=F("customer_id")
                        ).union(daily(paid, "placed_at", cid=F("customer_id"))
                                ).query.sql_with_params()
    active = raw_rows(f"SELECT u.d, u.ch, u.ow, COUNT(*) FROM ({sql}) u "
                      f"GROUP BY u.d, u.ch, u.ow", params)
    kinds = [Event.Type.FRIEND_DELETED, Event.Type.FRIEND_REMOVED, Event.Type.REFERRAL]
    rows: dict[tuple, dict[str, Any]] = defaultdict(_blank_activity)
    for row in chain(
        daily(customers, "joined_at", "").annotate(
            new_customers=Count("pk"), referrals=Count("pk", filter=Q(referred_by__isnull=False))),
        daily(customers, "first_order_at", "").annotate(first_time_buyers=Count("pk")),
        daily(events.filter(type__in=kinds), "occurred_at").annotate(
            deleted_us=Count("customer_id", distinct=True,
                             filter=Q(type=Event.Type.FRIEND_DELETED)),
            removed=Count("customer_id", distinct=True, filter=Q(type=Event.Type.FRIEND_REMOVED)),
            referral_events=Count("pk", filter=Q(type=Event.Type.REFERRAL))),
        daily(paid, "placed_at").annotate(paid_orders=Count("pk"), revenue=Sum("amount"),
                                          buyers=Count("customer_id", distinct=True)),
        daily(orders.filter(status=Order.Status.REFUNDED), "refunded_at").annotate(
            refunds=Count("pk"), refunded_amount=Sum("amount")),
        ({"d": d, "ch": ch, "ow": ow, "active_customers": n} for d, ch, ow, n in active),
    ):
        key = (as_date(row.pop("d")), row.pop("ch"), row.pop("ow"))
        for name, value in row.items():
            rows[key][name] += value or 0
    return dict(rows)


def transitions_by_day(*, scope: Scope, start: date, end: date, model_ids=None
                       ) -> list[dict[str, Any]]:
    """Stage moves per (day, channel, owner, model, from, to), with the win-backs among them."""
    rows = (_transitions(scope, model_ids).filter(_between("at", start, end + timedelta(days=1)))
            .values("model_id", "from_key", "to_key", d=_day("at"),
                    ch=F("customer__channel_id"), ow=F("customer__owner_id"))
            .annotate(transitions=Count("pk"), win_backs=Count("pk", filter=Q(win_back=True))))
    return [{**row, "d": as_date(row["d"])} for row in rows]


def latest_transitions(*, scope: Scope, before: datetime, model_ids=None) -> QuerySet:
    """Each customer's last transition in each model before `before`: where they stood then.
    An anti-join (no later transition before `before`), ties on `at` broken by id."""
    later = StageTransition.objects.filter(
        customer=OuterRef("customer"), model=OuterRef("model"), at__lt=before,
    ).filter(Q(at__gt=OuterRef("at")) | Q(at=OuterRef("at"), pk__gt=OuterRef("pk")))
    return _transitions(scope, model_ids).filter(at__lt=before).filter(~Exists(later))


def stage_counts_at(*, scope: Scope, at: datetime, model_ids=None) -> list[dict[str, Any]]:
    """Customers per (model, stage, channel, owner) as they stood at `at`."""
    return list(latest_transitions(scope=scope, before=at, model_ids=model_ids)
                .values("model_id", stage_key=F("to_key"), ch=F("customer__channel_id"),
                        ow=F("customer__owner_id"))
                .annotate(customers=Count("pk")))


StageKey = tuple[int | None, int | None, int, str]      # (channel, owner, model, stage key)


def stage_counts_by_key(rows) -> dict[StageKey, int]:
    return {(r["ch"], r["ow"], r["model_id"], r["stage_key"]): r["customers"] for r in rows}


def stage_counts_next_day(*, counts: dict[StageKey, int], transitions: list[dict[str, Any]]
                          ) -> dict[StageKey, int]:
    """`stage_counts_at` the day's end, from the counts of the day before moved by the day's
    `transitions_by_day` rows (no statement of its own; METRICS.md, "Snapshots")."""
    result = dict(counts)
    for row in transitions:
        for field, sign in (("to_key", 1), ("from_key", -1)):
            if row[field]:
                key = (row["ch"], row["ow"], row["model_id"], row[field])
                result[key] = result.get(key, 0) + sign * row["transitions"]
    return {key: n for key, n in result.items() if n}


# --- Stored days joined with live ones -------------------------------------------------------

def _today_snapshot_is_fresh(taken_at: datetime) -> bool:
    """Whether today's snapshot (`metrics_today` replaces it every few minutes) is recent."""
    return (timezone.now() - taken_at).total_seconds() <= today_max_age()


def _days_to_compute_live(period: Period) -> tuple[list[date], list[date]]:
    """(stored days, days to compute live) of the period up to today: a past day is stored
    when its snapshot was taken after it ended, today when its snapshot is fresh."""
    today = local_today()
    days = list(Period(period.start, min(period.end, today)).each_day())
    if not days:
        return [], []
    taken = Snapshot.objects.filter(date__gte=days[0], date__lte=days[-1])
    stored = {day for day, at in taken.values_list("date", "taken_at")
              if (_today_snapshot_is_fresh(at) if day == today
                  else at >= day_start(day + timedelta(days=1)))}
    return sorted(stored), [day for day in days if day not in stored]


def _runs(days: list[date]) -> list[tuple[date, date]]:
    """Consecutive days as (first, last) runs, so live days are computed run by run."""
    runs: list[tuple[date, date]] = []
    for day in days:
        if runs and runs[-1][1] == day - timedelta(days=1):
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def _on_days(queryset: QuerySet, days: list[date]) -> QuerySet:
    # The bounds let the date index narrow the scan.
    return queryset.filter(date__gte=days[0], date__lte=days[-1], date__in=days)


def activity_series(*, scope: Scope, period: Period) -> list[dict[str, Any]]:
    """The `DailyActivity` columns for each day of the period up to today, stored or live."""
    stored, live = _days_to_compute_live(period)
    by_day = {day: _blank_activity() for day in [*stored, *live]}
    if stored:
        for row in (_on_days(scope.apply(DailyActivity.objects.order_by()), stored)
                    .values("date").annotate(**{f"s_{f}": Sum(f) for f in ACTIVITY_FIELDS})):
            for name in ACTIVITY_FIELDS:
                by_day[row["date"]][name] += row[f"s_{name}"] or 0
    for first, last in _runs(live):
        for (day, _ch, _ow), values in activity_by_day(scope=scope, start=first,
                                                       end=last).items():
            for name, value in values.items():
                by_day[day][name] += value
    # Today is "live" (not over yet) whether read from its fresh snapshot or computed now.
    live_days = {*live, local_today()}
    return [{"date": day.isoformat(), "live": day in live_days, **{
        name: money(by_day[day][name]) if name in MONEY_FIELDS else by_day[day][name]
        for name in ACTIVITY_FIELDS}} for day in sorted(by_day)]


def series_totals(series: list[dict[str, Any]]) -> dict[str, Any]:
    """The additive columns of a series summed over its days."""
    return {name: money(sum(Decimal(day[name]) for day in series)) if name in MONEY_FIELDS
            else sum(day[name] for day in series) for name in ADDITIVE_FIELDS}


def transition_totals(*, scope: Scope, model: StageModel, period: Period
                      ) -> dict[tuple[str, str], dict[str, int]]:
    """(from key, to key) → transitions and win-backs in the period, stored or live by day."""
    stored, live = _days_to_compute_live(period)
    moves = (_on_days(scope.apply(DailyTransitionCount.objects.order_by()), stored)
             .filter(model=model).values_list("from_key", "to_key")
             .annotate(Sum("transitions"), Sum("win_backs")) if stored else [])
    live_moves = ((r["from_key"], r["to_key"], r["transitions"], r["win_backs"])
                  for first, last in _runs(live) for r in transitions_by_day(
                      scope=scope, start=first, end=last, model_ids=[model.pk]))
    totals: dict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: {"transitions": 0, "win_backs": 0})
    for from_key, to_key, transitions, win_backs in chain(moves, live_moves):
        totals[(from_key, to_key)]["transitions"] += transitions
        totals[(from_key, to_key)]["win_backs"] += win_backs
    return dict(totals)


# --- Relationship KPIs (seed 002) ------------------------------------------------------------

RELATIONSHIP_STAGES = {
    # Seed 002's four relationship stages, with the KPIs it names for each and their counts.
    "acquaintance": ("joined", "deleted_within_7_days", "friend_loss_rate", "joined_group",
                     "group_join_rate"),
    "interaction": ("customers", "interacting", "interaction_rate", "active", "active_previous",
                    "retained", "retention_rate"),
    "purchase": ("never_bought_before", "first_time_buyers", "conversion_rate", "buyers",
                 "repeat_buyers", "repurchase_rate"),
    "alliance": ("referred_customers", "referrers", "referral_events", "fission_multiplier"),
}
RELATIONSHIP_KPIS = tuple(kpi for kpi in kpis.KPIS if kpi.section != "lifecycle")


def _activity_counts(*, scope: Scope, period: Period) -> dict[str, int]:
    """Customers active in the period, in the one before, in both, and interacting (in the
    domain with an inbound event): one pass over both periods' activity, grouped by customer."""
    def flags(queryset: QuerySet, field: str, inbound: bool) -> QuerySet:
        current = Q(**{f"{field}__gte": period.since})
        return queryset.filter(**{f"{field}__gte": period.previous().since,
                                  f"{field}__lt": period.until}).values(
            cid=F("customer_id"), cur=Case(When(current, then=1), default=0),
            prev=Case(When(current, then=0), default=1),
            inb=Case(When(current, then=1), default=0) if inbound else Value(0))

    inbound = flags(Event.objects.order_by().filter(type__in=INBOUND), "occurred_at", True)
    bought = flags(Order.objects.order_by().filter(status=Order.Status.PAID), "placed_at", False)
    activity_sql, activity_params = inbound.union(bought, all=True).query.sql_with_params()
    customers = scope.apply(Customer.objects.order_by()).values(
        cust=F("pk"), dom=Case(When(in_domain(period), then=1), default=0))
    names = ("active", "active_previous", "retained", "interacting")
    if customers.query.is_empty():
        return dict.fromkeys(names, 0)
    customers_sql, customers_params = customers.query.sql_with_params()
    row, = raw_rows(
        f"SELECT COALESCE(SUM(g.c), 0), COALESCE(SUM(g.p), 0), COALESCE(SUM(g.c * g.p), 0), "
        f"COALESCE(SUM(g.i * cu.dom), 0) "
        f"FROM (SELECT u.cid, MAX(u.cur) AS c, MAX(u.prev) AS p, MAX(u.inb) AS i "
        f"FROM ({activity_sql}) u GROUP BY u.cid) g "
        f"JOIN ({customers_sql}) cu ON cu.cust = g.cid", [*activity_params, *customers_params])
    return dict(zip(names, row, strict=True))


def _referrals(*, scope: Scope, period: Period) -> dict[str, int]:
    """Distinct referrers of the customers who joined in the period, and its referral events
    (stored days from the snapshots unless one predates their counting, the others now)."""
    referrers = scope.apply(Customer.objects.order_by()).filter(
        joined_at__gte=period.since, joined_at__lt=period.until,
        referred_by__isnull=False).aggregate(n=Count("referred_by", distinct=True))["n"]
    stored, live = _days_to_compute_live(period)
    events = 0
    if stored:
        days = _on_days(scope.apply(DailyActivity.objects.order_by()), stored).aggregate(
            n=Sum("referral_events"), unknown=Count("pk", filter=Q(referral_events__isnull=True)))
        if days["unknown"]:
            live = sorted([*stored, *live])
        else:
            events += days["n"] or 0
    referrals = scope.apply(Event.objects.order_by(), "customer__").filter(
        type=Event.Type.REFERRAL)
    for first, last in _runs(live):
        events += referrals.filter(_between("occurred_at", first,
                                            last + timedelta(days=1))).count()
    return {"referrers": referrers, "referral_events": events}


def _kpis(figures: dict[str, Any]) -> dict[str, Any]:
    """The counts of each relationship stage and each KPI's rate of them (metrics.kpis)."""
    rates = {kpi.key for kpi in RELATIONSHIP_KPIS}
    counts = {name: figures[name] for names in RELATIONSHIP_STAGES.values() for name in names
              if name not in rates}
    return {**counts, **{kpi.key: ratio(counts[kpi.numerator], counts[kpi.denominator])
                         for kpi in RELATIONSHIP_KPIS}}


def relationship_kpis(*, scope: Scope, period: Period, stored: dict | None = None
                      ) -> dict[str, Any]:
    """The seed-002 KPIs of each relationship stage for the period: from the customer bitmaps
    for a range they hold (`stored`, when the caller read them already), else live."""
    f = stored if stored is not None else activity.relationship_figures(scope=scope,
                                                                        period=period)
    if f is not None:
        return _kpis({**f, **_referrals(scope=scope, period=period)})
    since, until = period.since, period.until
    customers = scope.apply(Customer.objects.order_by())
    deleted_soon = Exists(Event.objects.filter(
        customer=OuterRef("pk"), type=Event.Type.FRIEND_DELETED,
        occurred_at__gte=OuterRef("joined_at"),
        occurred_at__lt=OuterRef("joined_at") + timedelta(days=FRIEND_LOSS_DAYS)))
    in_group = Exists(GroupMembership.objects.filter(
        customer=OuterRef("pk"), joined_at__gte=OuterRef("joined_at"), joined_at__lt=until))
    joined = customers.filter(joined_at__gte=since, joined_at__lt=until).aggregate(
        joined=Count("pk"), deleted_within_7_days=Count("pk", filter=Q(deleted_soon)),
        joined_group=Count("pk", filter=Q(in_group)),
        referred_customers=Count("pk", filter=Q(referred_by__isnull=False)))
    domain = customers.filter(in_domain(period)).aggregate(
        customers=Count("pk"),
        never_bought_before=Count("pk", filter=Q(first_order_at__isnull=True)
                                  | Q(first_order_at__gte=since)),
        first_time_buyers=Count("pk", filter=Q(first_order_at__gte=since,
                                               first_order_at__lt=until)))
    buyers = (scope.apply(Order.objects.order_by(), "customer__")
              .filter(status=Order.Status.PAID, placed_at__gte=since, placed_at__lt=until)
              .values("customer_id").annotate(n=Count("pk"))
              .aggregate(buyers=Count("customer_id"),
                         repeat_buyers=Count("customer_id", filter=Q(n__gte=2))))
    return _kpis({**joined, **domain, **_activity_counts(scope=scope, period=period), **buyers,
                  **_referrals(scope=scope, period=period)})


# --- Revenue (seed 004) ----------------------------------------------------------------------

def _factors(stored: activity.RevenueFigures | None, *, scope: Scope, period: Period
             ) -> Factors:
    """Traffic, buyers, paid orders and revenue of the period: the customer bitmaps' figures
    (`stored`) when they hold it, else live (traffic: METRICS.md, "Revenue")."""
    if stored is not None:
        return Factors(traffic=stored.traffic, buyers=stored.buyers,
                       paid_orders=stored.paid_orders, revenue=stored.revenue)
    orders = scope.apply(Order.objects.order_by(), "customer__").filter(
        status=Order.Status.PAID, placed_at__gte=period.since, placed_at__lt=period.until,
    ).aggregate(paid_orders=Count("pk"), revenue=Sum("amount"),
                buyers=Count("customer_id", distinct=True),
                outside=Count("customer_id", distinct=True,
                              filter=~in_domain(period, "customer__")))
    domain = scope.apply(Customer.objects.order_by()).filter(in_domain(period)).count()
    return Factors(traffic=domain + orders["outside"], buyers=orders["buyers"],
                   paid_orders=orders["paid_orders"], revenue=orders["revenue"] or Decimal("0"))


def _factor_dict(factors: Factors, period: Period) -> dict[str, Any]:
    aov = factors.average_order_value
    return {**period.as_dict(), "revenue": money(factors.revenue), "traffic": factors.traffic,
            "conversion_rate": float(factors.conversion_rate),
            "average_order_value": money(Decimal(aov.numerator) / Decimal(aov.denominator)),
            "purchase_frequency": float(factors.purchase_frequency), "buyers": factors.buyers,
            "paid_orders": factors.paid_orders}


def revenue_report(*, scope: Scope, period: Period, compare: Period) -> dict[str, Any]:
    """Revenue's four factors for the period and the comparison period (the customer bitmaps
    read once for both), and the change split into them."""
    stored = activity.revenue_figures(scope=scope, periods=[period, compare])
    current, previous = (_factors(found, scope=scope, period=p)
                         for found, p in zip(stored, (period, compare), strict=True))
    method, parts = decompose(current=current, previous=previous)
    return {**_factor_dict(current, period), "previous": _factor_dict(previous, compare),
            "change": money(current.revenue - previous.revenue), "method": method,
            "decomposition": {name: money(value) for name, value in parts.items()}}


# --- Stages: counts, funnel rates, churn and win-back ---------------------------------------

def model_stages(model: StageModel) -> list[Stage]:
    return list(model.stages.order_by("position"))


def current_stage_counts(*, scope: Scope, model: StageModel) -> dict[str, int]:
    return dict(scope.apply(CustomerStage.objects.order_by(), "customer__").filter(model=model)
                .values_list("stage__key").annotate(Count("pk")))


def stage_counts_on(*, scope: Scope, model: StageModel, day: date | None
                    ) -> tuple[dict[str, int], str]:
    """Customers per stage key now (day None or today: today's fresh snapshot, else the
    current stages) or at the end of a past day (its snapshot, else rebuilt), and the source."""
    today = local_today()
    if day is None or day >= today:
        taken = Snapshot.objects.filter(date=today).values_list("taken_at", flat=True).first()
        if taken is None or not _today_snapshot_is_fresh(taken):
            return current_stage_counts(scope=scope, model=model), "current"
        day, source = today, "today"
    elif Snapshot.objects.filter(date=day).exists():
        source = "snapshot"
    else:
        # The current stages less the moves since the day ended: one pass over the transitions
        # after it (index on model, at), not each customer's history (METRICS.md, "Snapshots").
        counts = defaultdict(int, current_stage_counts(scope=scope, model=model))
        for from_key, to_key, n in (_transitions(scope).filter(
                model=model, at__gte=day_start(day + timedelta(days=1)))
                .values_list("from_key", "to_key").annotate(Count("pk"))):
            counts[to_key] -= n
            if from_key:
                counts[from_key] += n
        return {key: n for key, n in counts.items() if n}, "rebuilt"
    return dict(scope.apply(DailyStageCount.objects.order_by()).filter(model=model, date=day)
                .values_list("stage_key").annotate(Sum("customers"))), source


def funnel_rows(stages: list[Stage], counts: dict[str, int]) -> list[dict[str, Any]]:
    """Stages in order with their count, the customers at the stage or beyond (`reach`) and
    rate_to_next = reach(next) ÷ reach(this)."""
    reach = list(accumulate(counts.get(stage.key, 0) for stage in reversed(stages)))[::-1]
    return [{"stage": stage.key, "name": stage.name, "count": counts.get(stage.key, 0),
             "reach": reach[i],
             "rate_to_next": ratio(reach[i + 1], reach[i]) if i + 1 < len(stages) else None}
            for i, stage in enumerate(stages)]


def churn_and_win_back(*, scope: Scope, model: StageModel, stages: list[Stage], period: Period,
                       churned: int | None = None) -> dict[str, Any]:
    """Churn and win-back rates of the period (None where the model has no such stage);
    `churned`: the customers entering churn, when the caller read them (the bitmaps)."""
    churn_key = "churn" if any(stage.key == "churn" for stage in stages) else None
    win_back_keys = [stage.key for stage in stages if stage.win_back_from]
    result: dict[str, Any] = {"churn": None, "win_back": None}
    if churn_key is None and not win_back_keys:
        return result
    # Where each customer stood at the start: the counts at the end of the day before.
    counts, _source = stage_counts_on(scope=scope, model=model,
                                      day=period.start - timedelta(days=1))
    if churn_key is not None:
        if churned is None and (model.key, churn_key) == (activity.CHURN_MODEL,
                                                          activity.CHURN_STAGE):
            churned = activity.churned(scope=scope, period=period)
        if churned is None:
            # Distinct customers moving in (index on model, to_key, at); a first placement
            # (from_key blank) is not a move.
            churned = _transitions(scope).filter(
                model=model, to_key=churn_key, at__gte=period.since, at__lt=period.until,
            ).exclude(from_key="").aggregate(n=Count("customer_id", distinct=True))["n"]
        not_churned = sum(n for key, n in counts.items() if key != churn_key)
        result["churn"] = {"stage": churn_key, "entered": churned,
                           "not_in_stage_at_start": not_churned,
                           "rate": ratio(churned, not_churned)}
    if win_back_keys:
        win_backs = sum(v["win_backs"] for v in transition_totals(
            scope=scope, model=model, period=period).values())
        in_stages = sum(counts.get(key, 0) for key in win_back_keys)
        result["win_back"] = {"from_stages": win_back_keys, "win_backs": win_backs,
                              "in_stages_at_start": in_stages, "rate": ratio(win_backs, in_stages)}
    return result


# --- Medians over transitions (portable SQL: ROW_NUMBER/COUNT windows) ----------------------

TRANSITIONS = StageTransition._meta.db_table
# The customers with a transition in the model and the period (params: model, since, until).
MOVERS = f"SELECT customer_id FROM {TRANSITIONS} WHERE model_id = %s AND at >= %s AND at < %s"
MEDIAN_ROWS = "rn IN ((n + 1) / 2, (n + 2) / 2)"


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


def median_days_in_stage(*, scope: Scope, model: StageModel, period: Period
                         ) -> dict[str, dict[str, Any]]:
    """Stage key → exits in the period and the median days between entering the stage and
    that exit (the transition before the exit is the entry); stored where the spells hold it."""
    if stage_durations.stored_range(period, scope) is not None:
        try:
            return stage_durations.median_days_in_stage(scope=scope, model_id=model.pk,
                                                        period=period)
        except stage_durations.Inconsistent:
            logger.warning("metrics.stage_durations_inconsistent", extra={"model": model.key})
    scope_sql, scope_params = _scope_sql(scope)
    since, until = _at(period.since), _at(period.until)
    sql = f"""
        WITH t AS (
            SELECT from_key, at, LAG(at) OVER w AS prev_at, LAG(to_key) OVER w AS prev_key
            FROM {TRANSITIONS}
            WHERE model_id = %s AND at < %s{scope_sql} AND customer_id IN ({MOVERS})
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
    return {stage: {"exits": n, "median_days": round(float(days), 3)}
            for stage, n, days in raw_rows(sql, [model.pk, until, *scope_params, model.pk,
                                                 since, until, since])}


def stage_conversions(*, scope: Scope, model: StageModel, period: Period
                      ) -> dict[str, dict[str, Any]]:
    """Of the customers entering each stage in the period (first entry), how many moved next to
    each other stage (at any time since), in median days; stored where the spells hold it."""
    if stage_durations.stored_range(period, scope) is not None:
        try:
            return stage_durations.stage_conversions(scope=scope, model_id=model.pk,
                                                     period=period)
        except stage_durations.Inconsistent:
            logger.warning("metrics.stage_durations_inconsistent", extra={"model": model.key})
    scope_sql, scope_params = _scope_sql(scope)
    since, until = _at(period.since), _at(period.until)
    sql = f"""
        WITH t AS (
            SELECT id, customer_id, to_key, at,
                   LEAD(to_key) OVER w AS next_key, LEAD(at) OVER w AS next_at
            FROM {TRANSITIONS}
            WHERE model_id = %s AND at >= %s{scope_sql} AND customer_id IN ({MOVERS})
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
    result: dict[str, dict[str, Any]] = defaultdict(lambda: {"entered": 0, "next": {}})
    params = [model.pk, since, *scope_params, model.pk, since, until, until]
    for stage, next_key, n, days in raw_rows(sql, params):
        if next_key is None:
            result[stage]["entered"] = n
        else:
            result[stage]["next"][next_key] = {"customers": n,
                                               "median_days": round(float(days), 3)}
    return dict(result)


def flows_report(*, scope: Scope, model: StageModel, period: Period) -> dict[str, Any]:
    stages = model_stages(model)
    names, order = {s.key: s.name for s in stages}, {s.key: s.position for s in stages}
    totals = transition_totals(scope=scope, model=model, period=period)
    conversions = stage_conversions(scope=scope, model=model, period=period)
    flows = [{"from": frm or None, "to": to, "count": v["transitions"], "win_backs": v["win_backs"]}
             for (frm, to), v in sorted(totals.items(), key=lambda i: (-i[1]["transitions"], i[0]))]
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
    medians = median_days_in_stage(scope=scope, model=model, period=period)
    entered: dict[str, int] = defaultdict(int)
    exited: dict[str, int] = defaultdict(int)
    for (frm, to), v in transition_totals(scope=scope, model=model, period=period).items():
        entered[to] += v["transitions"]
        if frm:
            exited[frm] += v["transitions"]
    rows = [{**row, "entered": entered.get(row["stage"], 0), "exited": exited.get(row["stage"], 0),
             "median_days_in_stage": medians.get(row["stage"], {}).get("median_days")}
            for row in funnel_rows(stages, counts)]
    return {"model": model.key, **period.as_dict(), "counts_at": period.end.isoformat()
            if source not in ("current", "today") else None, "counts_source": source,
            "stages": rows,
            **churn_and_win_back(scope=scope, model=model, stages=stages, period=period)}


# --- Cohort retention ------------------------------------------------------------------------

def cohort_cells(*, scope: Scope, joined_since: date | None = None,
                 joined_until: date | None = None, active_since: date | None = None,
                 active_until: date | None = None) -> tuple[dict, dict]:
    """Sizes {(cohort, ch, ow): n} of the cohorts joined in [joined_since, joined_until) and
    their active customers {(cohort, offset, ch, ow): n} in [active_since, active_until)
    (months as first days, None unbounded): one grouped UNION over events and orders."""
    joined = _between("customer__joined_at", joined_since, joined_until)
    customers = scope.apply(Customer.objects.order_by()).filter(
        _between("joined_at", joined_since, joined_until))
    events = scope.apply(Event.objects.order_by(), "customer__").filter(
        joined, _between("occurred_at", active_since, active_until), type__in=INBOUND)
    orders = scope.apply(Order.objects.order_by(), "customer__").filter(
        joined, _between("placed_at", active_since, active_until), status=Order.Status.PAID)
    sizes = {(as_date(row["cm"]), row["ch"], row["ow"]): row["n"] for row in customers.values(
        cm=_month("joined_at"), ch=F("channel_id"), ow=F("owner_id")).annotate(n=Count("pk"))}
    group = {"ch": F("customer__channel_id"), "ow": F("customer__owner_id"),
             "cm": _month("customer__joined_at")}
    inbound = events.values(cid=F("customer_id"), **group, am=_month("occurred_at"))
    bought = orders.values(cid=F("customer_id"), **group, am=_month("placed_at"))
    sql, params = inbound.union(bought).query.sql_with_params()
    active: dict[tuple, int] = defaultdict(int)
    for cm, am, ch, ow, n in raw_rows(f"SELECT u.cm, u.am, u.ch, u.ow, COUNT(*) FROM ({sql}) u "
                                      f"GROUP BY u.cm, u.am, u.ch, u.ow", params):
        offset = months_between(as_date(cm), as_date(am))
        if offset >= 0:
            active[(as_date(cm), offset, ch, ow)] += n
    return sizes, dict(active)


def _months(first: date, last: date) -> list[date]:
    return [add_months(first, n) for n in range(months_between(first, last) + 1)]


def cohort_retention(*, scope: Scope, period: Period) -> dict[str, Any]:
    """Per join month touching the period: its size and its active customers in every month
    since, up to the current one; the cohort table's months stored, later ones live."""
    first, current = month_start(period.start), month_start(local_today())
    last = min(month_start(period.end), current)
    through = (CohortTable.objects.filter(through__isnull=False)
               .values_list("through", flat=True).first())
    sizes: dict[date, int] = defaultdict(int)
    active: dict[tuple[date, int], int] = defaultdict(int)
    if through is not None and first <= through:
        for cohort, offset, size, n in (
                scope.apply(CohortCell.objects.order_by())
                .filter(cohort__gte=first, cohort__lte=min(last, through))
                .values_list("cohort", "month_offset")
                .annotate(Sum("customers"), Sum("active"))):
            if offset == 0:
                sizes[cohort] += size
            active[(cohort, offset)] += n
    live_from = add_months(through, 1) if through is not None else None
    month_active = (activity.cohort_month_active(scope=scope, month=current,
                                                cohorts=_months(first, last))
                    if live_from == current and first <= current else None)
    if month_active is not None:
        # Only the current month is live: its cohort counted now, the month's activity from
        # the customer bitmaps.
        if last == current:
            sizes[current] += scope.apply(Customer.objects.order_by()).filter(
                _between("joined_at", current, add_months(current, 1))).count()
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
    # Each cohort's last cell is the current month: so far, not complete (`partial`).
    cohorts = [{"cohort": month.strftime("%Y-%m"), "customers": sizes.get(month, 0),
                "retention": [{"month": offset, "active": active.get((month, offset), 0),
                               "rate": ratio(active.get((month, offset), 0),
                                             sizes.get(month, 0)),
                               "partial": offset == months_between(month, current)}
                              for offset in range(months_between(month, current) + 1)]}
               for month in _months(first, last)]
    return {**period.as_dict(), "stored_through": through.strftime("%Y-%m") if through else None,
            "cohorts": cohorts}


# --- Reports the API answers -----------------------------------------------------------------

LIFECYCLE_MODEL = activity.CHURN_MODEL     # the value lifecycle


def overview_report(*, scope: Scope, period: Period) -> dict[str, Any]:
    # The customer bitmaps, read once for the KPIs and churn (None: computed live).
    stored = activity.relationship_figures(scope=scope, period=period)
    figures = relationship_kpis(scope=scope, period=period, stored=stored)
    series = activity_series(scope=scope, period=period)
    model = StageModel.objects.filter(key=LIFECYCLE_MODEL).first()
    lifecycle = None if model is None else {"model": model.key, **churn_and_win_back(
        scope=scope, model=model, stages=model_stages(model), period=period,
        churned=stored["churned"] if stored is not None else None)}
    return {**period.as_dict(), "previous": period.previous().as_dict(),
            "relationship": {stage: {name: figures[name] for name in names}
                             for stage, names in RELATIONSHIP_STAGES.items()},
            "lifecycle": lifecycle, "totals": series_totals(series), "series": series}


def funnel_report(*, scope: Scope, model: StageModel, day: date | None) -> dict[str, Any]:
    counts, source = stage_counts_on(scope=scope, model=model, day=day)
    return {"model": model.key, "date": day.isoformat() if day else None, "source": source,
            "stages": funnel_rows(model_stages(model), counts)}
