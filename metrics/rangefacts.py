"""Precomputed range facts: the standard ranges — the last 7, 30 and 90 days up to today, each
with the range of equal length before it — answered as a stored sum plus today's changes.

The figures over distinct customers (active, retained, interacting, buyers, customers in the
private domain, …) cannot be added up from daily snapshots. Instead the nightly refresh stores,
per customer, what those figures need to know about the days before today (`CustomerFacts`:
the customer's state then, their last activity, their paid orders in each range before today)
and, per range and (channel, owner), each figure counted over them (`RangeFacts`). A request
then answers

    figure = Σ stored cells of the scope
             + Σ over the customers whose facts changed today (count now − count as stored)

where "changed today" is: an inbound event, a deletion, a paid order or a move into the value
lifecycle's churn since midnight, joined since midnight, or a status change since midnight. The
frequent refresh stores that correction per (channel, owner) every few minutes (the `today`
rows); a request computes it itself when the stored one is too old. Each customer is counted once in the stored
sum (under the channel and owner of the refresh) and moved to their current ones when they
change today; so the answer is the live figure over the facts before today as the refresh saw
them plus today's facts as they are now (docs/METRICS.md, "Precomputed range facts").

PostgreSQL only (the statements below are its SQL); elsewhere every figure is computed live.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from core import access
from core.db import raw_rows as _raw
from crm.models import INBOUND_EVENT_TYPES, Customer, Event, Order
from metrics.models import CohortMonthCell, FactsTable, RangeFacts
from metrics.periods import (
    Period,
    Scope,
    add_months,
    day_start,
    local_today,
    month_start,
    system_tz,
)

WINDOWS = (7, 30, 90)
INBOUND = sorted(INBOUND_EVENT_TYPES)
COUNT_FIGURES = (
    "joined", "deleted_within_7_days", "joined_group", "referred_customers", "customers",
    "interacting", "active", "active_previous", "retained", "never_bought_before",
    "first_time_buyers", "buyers", "repeat_buyers", "outside", "customers_previous",
    "buyers_previous", "outside_previous", "churned",
)
SUM_FIGURES = ("paid_orders", "revenue", "paid_orders_previous", "revenue_previous")
MONEY_FIGURES = frozenset({"revenue", "revenue_previous"})
FIGURES = COUNT_FIGURES + SUM_FIGURES
FRIEND_LOSS_DAYS = 7
# The overview's lifecycle: customers entering this stage of this model (by key).
CHURN_MODEL, CHURN_STAGE = "value", "churn"


def available() -> bool:
    return connection.vendor == "postgresql"


def spell_days() -> int:
    """How many days up to today the stage spells cover: any range of `stages/` and `flows/`
    starting within them is answered from the spells (METRICS_SPELL_DAYS, default 400 — the
    history the customer bitmaps and the channel cells keep too). The nightly refresh updates
    them by the customers who moved; a full rebuild (monthly, or after a change of this
    setting) costs time in proportion (docs/METRICS.md)."""
    return max(int(getattr(settings, "METRICS_SPELL_DAYS", 400)), max(WINDOWS))


def channel_days() -> int:
    """How many days up to today the channel join-day cells cover: any range of `channels/`
    starting within them is answered from the cells (METRICS_CHANNEL_DAYS, default 400 — the
    history the customer bitmaps keep too)."""
    return max(int(getattr(settings, "METRICS_CHANNEL_DAYS", 400)), max(WINDOWS))


@dataclass(frozen=True)
class Window:
    """The standard range of `days` days ending `today`, and the range before it."""

    today: date
    days: int

    @property
    def period(self) -> Period:
        return Period(self.today - timedelta(days=self.days - 1), self.today)

    def params(self) -> dict[str, Any]:
        period = self.period
        n = self.days
        return {f"since_{n}": period.since, f"until_{n}": period.until,
                f"prev_since_{n}": period.previous().since}


def horizon(today: date):
    """The earliest instant any window's preceding range reaches."""
    return day_start(today - timedelta(days=2 * max(WINDOWS) - 1))


# --- The figures as SQL over one customer's facts -----------------------------------------------

def _stored_inputs(n: int) -> dict[str, str]:
    """A customer's facts as the refresh stored them (alias f), nothing of today."""
    return {
        "J": "f.joined_at", "A": "f.active", "SC": "f.status_changed_at",
        "FO": "f.first_order_at", "REF": "f.referred",
        "LA": "f.last_active_at", "LI": "f.last_inbound_at",
        "D7": "f.deleted_7d", "GRP": "f.grouped",
        "AP": f"f.active_p{n}", "OP": f"f.orders_p{n}", "RP": f"f.revenue_p{n}",
        "OR": f"f.orders_{n}", "RR": f"f.revenue_{n}", "CH": f"f.churned_{n}",
        "ACT": "false", "INB": "false", "K": "0", "REV": "0", "D7T": "false", "GRPT": "false",
        "CHT": "false",
    }


def _current_inputs(n: int) -> dict[str, str]:
    """A customer's state now (alias cu), the stored facts of the days before today (f, absent
    for a customer the refresh did not see) and today's facts (t)."""
    joined_in_range = f"(cu.joined_at >= %(since_{n})s AND cu.joined_at < %(until_{n})s)"
    return {
        "J": "cu.joined_at", "A": "(cu.status = %(status_active)s)",
        "SC": "cu.status_changed_at", "FO": "cu.first_order_at",
        "REF": "(cu.referred_by_id IS NOT NULL)",
        "LA": "f.last_active_at", "LI": "f.last_inbound_at",
        "D7": "COALESCE(f.deleted_7d, false)", "GRP": "COALESCE(f.grouped, false)",
        "AP": f"COALESCE(f.active_p{n}, false)", "OP": f"COALESCE(f.orders_p{n}, 0)",
        "RP": f"COALESCE(f.revenue_p{n}, 0)", "OR": f"COALESCE(f.orders_{n}, 0)",
        "RR": f"COALESCE(f.revenue_{n}, 0)", "CH": f"COALESCE(f.churned_{n}, false)",
        "CHT": "COALESCE(t.churn, false)",
        "ACT": "COALESCE(t.act, false)", "INB": "COALESCE(t.inb, false)",
        "K": "COALESCE(t.k, 0)", "REV": "COALESCE(t.rev, 0)",
        # Deleted us today within 7 days of joining / joined a group today after joining:
        # looked up only for the few customers who did either today.
        "D7T": f"""(CASE WHEN COALESCE(t.del, false) AND {joined_in_range} THEN EXISTS (
                        SELECT 1 FROM crm_event e WHERE e.customer_id = cu.id
                        AND e.type = %(friend_deleted)s
                        AND e.occurred_at >= GREATEST(cu.joined_at, %(t0)s)
                        AND e.occurred_at < cu.joined_at + interval '{FRIEND_LOSS_DAYS} days')
                    ELSE false END)""",
        "GRPT": f"""(CASE WHEN COALESCE(t.grp, false) AND {joined_in_range} THEN EXISTS (
                        SELECT 1 FROM crm_groupmembership m WHERE m.customer_id = cu.id
                        AND m.joined_at >= GREATEST(cu.joined_at, %(t0)s)
                        AND m.joined_at < %(until_{n})s)
                     ELSE false END)""",
    }


def _figures(n: int, v: dict[str, str]) -> dict[str, str]:
    """Each figure of window `n` for one customer: a boolean (counted) or a number (summed),
    the formulas of docs/METRICS.md over the inputs `v`."""
    since, until, prev = f"%(since_{n})s", f"%(until_{n})s", f"%(prev_since_{n})s"
    dom = f"({v['J']} < {until} AND ({v['A']} OR COALESCE({v['SC']} >= {since}, false)))"
    dom_prev = f"({v['J']} < {since} AND ({v['A']} OR COALESCE({v['SC']} >= {prev}, false)))"
    joined = f"({v['J']} >= {since} AND {v['J']} < {until})"
    active = f"(COALESCE({v['LA']} >= {since}, false) OR {v['ACT']})"
    orders = f"({v['OR']} + {v['K']})"
    return {
        "joined": joined,
        "deleted_within_7_days": f"({joined} AND ({v['D7']} OR {v['D7T']}))",
        "joined_group": f"({joined} AND ({v['GRP']} OR {v['GRPT']}))",
        "referred_customers": f"({joined} AND {v['REF']})",
        "customers": dom,
        "interacting": f"({dom} AND (COALESCE({v['LI']} >= {since}, false) OR {v['INB']}))",
        "active": active,
        "active_previous": f"({v['AP']})",
        "retained": f"({active} AND {v['AP']})",
        "never_bought_before": f"({dom} AND ({v['FO']} IS NULL OR {v['FO']} >= {since}))",
        "first_time_buyers": f"({dom} AND COALESCE({v['FO']} >= {since} AND {v['FO']} < {until},"
                             f" false))",
        "buyers": f"({orders} >= 1)",
        "repeat_buyers": f"({orders} >= 2)",
        "outside": f"({orders} >= 1 AND NOT {dom})",
        "customers_previous": dom_prev,
        "buyers_previous": f"({v['OP']} >= 1)",
        "outside_previous": f"({v['OP']} >= 1 AND NOT {dom_prev})",
        "paid_orders": orders,
        "revenue": f"({v['RR']} + {v['REV']})",
        "paid_orders_previous": f"({v['OP']})",
        "revenue_previous": f"({v['RP']})",
        "churned": f"({v['CH']} OR {v['CHT']})",
    }


def _sum(figure: str, expression: str, condition: str = "true") -> str:
    if figure in COUNT_FIGURES:
        return f"SUM(CASE WHEN {condition} AND {expression} THEN 1 ELSE 0 END)"
    return f"SUM(CASE WHEN {condition} THEN {expression} ELSE 0 END)"



# --- The nightly refresh ------------------------------------------------------------------------

CUSTOMER_FACTS_SQL = """
INSERT INTO metrics_customerfacts (
    customer_id, channel_id, owner_id, joined_at, active, status_changed_at, first_order_at,
    referred, last_active_at, last_inbound_at, deleted_7d, grouped, {window_columns},
    {churn_columns})
SELECT c.id, c.channel_id, c.owner_id, c.joined_at, c.status = %(status_active)s,
       c.status_changed_at, c.first_order_at, c.referred_by_id IS NOT NULL,
       a.last_active, a.last_inbound, d.customer_id IS NOT NULL, g.customer_id IS NOT NULL,
       {window_values}, {churn_values}
FROM crm_customer c
LEFT JOIN (
    SELECT u.customer_id, MAX(u.at) AS last_active,
           MAX(u.at) FILTER (WHERE u.amount IS NULL) AS last_inbound, {window_aggregates}
    FROM (SELECT customer_id, occurred_at AS at, NULL::numeric AS amount FROM crm_event
          WHERE type = ANY(%(inbound)s) AND occurred_at >= %(horizon)s AND occurred_at < %(t0)s
          UNION ALL
          SELECT customer_id, placed_at, amount FROM crm_order
          WHERE status = %(paid)s AND placed_at >= %(horizon)s AND placed_at < %(t0)s) u
    GROUP BY u.customer_id
) a ON a.customer_id = c.id
LEFT JOIN (
    SELECT DISTINCT e.customer_id FROM crm_event e JOIN crm_customer j ON j.id = e.customer_id
    WHERE e.type = %(friend_deleted)s AND e.occurred_at < %(t0)s
      AND e.occurred_at >= j.joined_at
      AND e.occurred_at < j.joined_at + interval '{loss_days} days'
) d ON d.customer_id = c.id
LEFT JOIN (
    SELECT DISTINCT m.customer_id FROM crm_groupmembership m
    JOIN crm_customer j ON j.id = m.customer_id
    WHERE j.joined_at >= %(grouped_since)s AND m.joined_at >= j.joined_at
      AND m.joined_at < %(t0)s
) g ON g.customer_id = c.id
LEFT JOIN (
    SELECT s.customer_id, {churn_aggregates} FROM lifecycle_stagetransition s
    WHERE s.model_id = (SELECT id FROM lifecycle_stagemodel WHERE key = %(churn_model)s)
      AND s.to_key = %(churn_stage)s AND s.at >= %(grouped_since)s AND s.at < %(t0)s
    GROUP BY s.customer_id
) ch ON ch.customer_id = c.id
"""


def _common_params(today: date) -> dict[str, Any]:
    return {"t0": day_start(today), "status_active": Customer.Status.ACTIVE,
            "paid": Order.Status.PAID, "inbound": INBOUND,
            "friend_deleted": Event.Type.FRIEND_DELETED, "tz": settings.TIME_ZONE,
            "churn_model": CHURN_MODEL, "churn_stage": CHURN_STAGE}


def refresh(today: date) -> dict[str, int]:
    """Rewrite the customer facts, the range facts and the cohort month-to-date cells for
    `today`: everything before today 00:00 (system time zone). Call in a transaction holding
    the `FactsTable` row."""
    params = _common_params(today)
    params["horizon"] = horizon(today)
    params["grouped_since"] = Window(today, max(WINDOWS)).period.since
    columns, values, aggregates = [], [], []
    for n in WINDOWS:
        params.update(Window(today, n).params())
        columns += [f"active_p{n}", f"orders_p{n}", f"revenue_p{n}", f"orders_{n}",
                    f"revenue_{n}"]
        previous = f"u.at >= %(prev_since_{n})s AND u.at < %(since_{n})s"
        current = f"u.at >= %(since_{n})s"
        aggregates += [
            f"BOOL_OR({previous}) AS active_p{n}",
            f"COUNT(*) FILTER (WHERE u.amount IS NOT NULL AND {previous}) AS orders_p{n}",
            f"SUM(u.amount) FILTER (WHERE {previous}) AS revenue_p{n}",
            f"COUNT(*) FILTER (WHERE u.amount IS NOT NULL AND {current}) AS orders_{n}",
            f"SUM(u.amount) FILTER (WHERE {current}) AS revenue_{n}",
        ]
        values += [f"COALESCE(a.active_p{n}, false)", f"COALESCE(a.orders_p{n}, 0)",
                   f"COALESCE(a.revenue_p{n}, 0)", f"COALESCE(a.orders_{n}, 0)",
                   f"COALESCE(a.revenue_{n}, 0)"]
    with connection.cursor() as cursor:
        # TRUNCATE (transactional): no dead million rows; fast-path readers wait for the commit.
        cursor.execute("TRUNCATE metrics_customerfacts")
        cursor.execute(CUSTOMER_FACTS_SQL.format(
            window_columns=", ".join(columns), window_values=", ".join(values),
            window_aggregates=", ".join(aggregates), loss_days=FRIEND_LOSS_DAYS,
            churn_columns=", ".join(f"churned_{n}" for n in WINDOWS),
            churn_values=", ".join(f"COALESCE(ch.churned_{n}, false)" for n in WINDOWS),
            churn_aggregates=", ".join(f"BOOL_OR(s.at >= %(since_{n})s) AS churned_{n}"
                                       for n in WINDOWS)), params)
        customers = cursor.rowcount
        cursor.execute("ANALYZE metrics_customerfacts")

    # Per window and (channel, owner): each figure over the stored facts.
    selects = []
    for n in WINDOWS:
        figures = _figures(n, _stored_inputs(n))
        selects += [f"{_sum(name, figures[name])} AS w{n}_{name}" for name in FIGURES]
    rows = _raw(f"SELECT f.channel_id, f.owner_id, {', '.join(selects)} "
                f"FROM metrics_customerfacts f GROUP BY f.channel_id, f.owner_id", params)
    RangeFacts.objects.all().delete()           # today's changes too: relative to the old facts
    cells = []
    for row in rows:
        channel_id, owner_id, values_ = row[0], row[1], row[2:]
        for i, n in enumerate(WINDOWS):
            chunk = values_[i * len(FIGURES):(i + 1) * len(FIGURES)]
            cells.append(RangeFacts(days=n, channel_id=channel_id, owner_id=owner_id,
                                    **dict(zip(FIGURES, chunk, strict=True))))
    RangeFacts.objects.bulk_create(cells, batch_size=2000)

    # The current month so far, per join month: customers active in it before today.
    month = month_start(today)
    CohortMonthCell.objects.all().delete()
    month_cells = [
        CohortMonthCell(month=month, cohort=cohort, channel_id=channel_id, owner_id=owner_id,
                        active=n)
        for cohort, channel_id, owner_id, n in _raw(
            "SELECT date_trunc('month', f.joined_at AT TIME ZONE %(tz)s)::date, f.channel_id, "
            "f.owner_id, COUNT(*) FROM metrics_customerfacts f "
            "WHERE f.last_active_at >= %(month_since)s "
            "GROUP BY 1, 2, 3", {**params, "month_since": day_start(month)})
    ] if month < today else []
    CohortMonthCell.objects.bulk_create(month_cells, batch_size=2000)
    return {"customers": customers, "range_cells": len(cells), "cohort_cells": len(month_cells)}


# --- Today's changes, per (channel, owner) ----------------------------------------------------

def today_max_age() -> int:
    """Seconds for which the stored part of today (refreshed every few minutes) stands in for a
    live computation."""
    return int(getattr(settings, "METRICS_TODAY_MAX_AGE_SECONDS", 600))


def stored_for_today() -> bool:
    """Whether the facts cover every day before today (the nightly refresh ran today)."""
    return available() and FactsTable.objects.filter(
        as_of=local_today() - timedelta(days=1)).exists()


def today_is_fresh(table: FactsTable | None) -> bool:
    """Whether today's changes stored by the frequent refresh are recent enough to use."""
    if table is None or table.today_at is None:
        return False
    now = timezone.now()
    return (table.as_of == local_today() - timedelta(days=1)
            and timezone.localdate(table.today_at, timezone=system_tz()) == local_today()
            and (now - table.today_at).total_seconds() <= today_max_age())


def current_window(period: Period) -> Window | None:
    """The standard window `period` is, when its facts are stored for today; else None."""
    today = local_today()
    if period.end != today or period.days not in WINDOWS or not stored_for_today():
        return None
    return Window(today, period.days)


DELTA_SQL = """
WITH t AS (
    -- Today's events and orders per customer (and those dated later this month, which only
    -- the month's cohort activity counts).
    SELECT x.customer_id,
           COALESCE(BOOL_OR(x.kind IN ('in', 'grp')) FILTER (WHERE x.today), false) AS inb,
           COALESCE(BOOL_OR(x.kind IN ('in', 'grp', 'paid')) FILTER (WHERE x.today), false)
               AS act,
           COUNT(*) FILTER (WHERE x.kind = 'paid' AND x.today) AS k,
           COALESCE(SUM(x.amount) FILTER (WHERE x.today), 0) AS rev,
           COALESCE(BOOL_OR(x.kind = 'del') FILTER (WHERE x.today), false) AS del,
           COALESCE(BOOL_OR(x.kind = 'grp') FILTER (WHERE x.today), false) AS grp,
           COALESCE(BOOL_OR(x.kind = 'churn') FILTER (WHERE x.today), false) AS churn,
           COALESCE(BOOL_OR(x.kind IN ('in', 'grp', 'paid')), false) AS act_month
    FROM (SELECT customer_id,
                 CASE WHEN type = %(friend_deleted)s THEN 'del'
                      WHEN type = %(group_joined)s THEN 'grp' ELSE 'in' END AS kind,
                 NULL::numeric AS amount, occurred_at < %(until)s AS today
          FROM crm_event WHERE type = ANY(%(today_types)s)
          AND occurred_at >= %(t0)s AND occurred_at < %(month_until)s
          UNION ALL
          SELECT customer_id, 'paid', amount, placed_at < %(until)s FROM crm_order
          WHERE status = %(paid)s AND placed_at >= %(t0)s AND placed_at < %(month_until)s
          UNION ALL
          SELECT customer_id, 'churn', NULL, true FROM lifecycle_stagetransition
          WHERE model_id = (SELECT id FROM lifecycle_stagemodel WHERE key = %(churn_model)s)
          AND to_key = %(churn_stage)s AND at >= %(t0)s AND at < %(until)s) x
    GROUP BY x.customer_id
), changed AS (
    SELECT customer_id AS id FROM t
    UNION SELECT id FROM crm_customer WHERE joined_at >= %(t0)s
    UNION SELECT id FROM crm_customer
          WHERE status = ANY(%(statuses)s) AND status_changed_at >= %(t0)s
)
SELECT x.ch, x.ow, x.cohort, {sums}
FROM (
    SELECT cu.channel_id AS ch, cu.owner_id AS ow,
           date_trunc('month', cu.joined_at AT TIME ZONE %(tz)s)::date AS cohort, {now_values}
    FROM changed
    JOIN crm_customer cu ON cu.id = changed.id
    LEFT JOIN metrics_customerfacts f ON f.customer_id = changed.id
    LEFT JOIN t ON t.customer_id = changed.id
    UNION ALL
    SELECT f.channel_id, f.owner_id,
           date_trunc('month', f.joined_at AT TIME ZONE %(tz)s)::date, {old_values}
    FROM changed JOIN metrics_customerfacts f ON f.customer_id = changed.id
) x
GROUP BY x.ch, x.ow, x.cohort
"""


def _value(figure: str, expression: str, sign: str = "") -> str:
    if figure in COUNT_FIGURES:
        return f"CASE WHEN {expression} THEN {sign}1 ELSE 0 END"
    return f"{sign}({expression})"


@dataclass
class TodayDelta:
    """Today's changes: per (days, channel id, owner id) each figure's change, and per (join
    month, channel id, owner id) the change in customers active this month."""

    ranges: dict[tuple[int, int | None, int | None], dict[str, Any]]
    cohorts: dict[tuple[date, int | None, int | None], int]


def today_delta(today: date) -> TodayDelta:
    """For the customers whose facts changed today: each figure counted now (their current
    state, their stored facts of the days before today and today's events and orders, under
    their current channel and owner) minus counted as stored (under the stored ones). One
    statement over today's events and orders and those customers only."""
    names, now_values, old_values = [], [], []
    for n in WINDOWS:
        now, before = _figures(n, _current_inputs(n)), _figures(n, _stored_inputs(n))
        for figure in FIGURES:
            names.append((n, figure))
            now_values.append(_value(figure, now[figure]))
            old_values.append(_value(figure, before[figure], "-"))
    month_active_now = ("(COALESCE(f.last_active_at >= %(month_since)s, false) "
                        "OR COALESCE(t.act_month, false))")
    month_active_old = "COALESCE(f.last_active_at >= %(month_since)s, false)"
    now_values.append(f"CASE WHEN {month_active_now} THEN 1 ELSE 0 END")
    old_values.append(f"CASE WHEN {month_active_old} THEN -1 ELSE 0 END")
    columns = [f"v{i}" for i in range(len(now_values))]
    sql = DELTA_SQL.format(
        sums=", ".join(f"SUM(x.{c})" for c in columns),
        now_values=", ".join(f"{v} AS {c}" for v, c in zip(now_values, columns, strict=True)),
        old_values=", ".join(old_values))
    params = {**_common_params(today), "until": day_start(today + timedelta(days=1)),
              "group_joined": Event.Type.GROUP_JOINED,
              "today_types": [*INBOUND, Event.Type.FRIEND_DELETED],
              "statuses": [value for value, _label in Customer.Status.choices],
              "month_since": day_start(month_start(today)),
              "month_until": day_start(add_months(month_start(today), 1))}
    for n in WINDOWS:
        params.update(Window(today, n).params())
    ranges: dict = {}
    cohorts: dict = {}
    for row in _raw(sql, params):
        channel_id, owner_id, cohort, values = row[0], row[1], row[2], row[3:]
        for (n, figure), value in zip(names, values, strict=False):
            cell = ranges.setdefault((n, channel_id, owner_id), dict.fromkeys(FIGURES, 0))
            cell[figure] += value or 0
        if values[-1]:
            key = (cohort, channel_id, owner_id)
            cohorts[key] = cohorts.get(key, 0) + values[-1]
    return TodayDelta(ranges=ranges, cohorts=cohorts)


def refresh_today(today: date) -> dict[str, int]:
    """Store today's changes per (channel, owner) (the rows marked `today`), replacing the
    previous ones. Call in a transaction holding the `FactsTable` row, with the facts of the
    days before today stored."""
    delta = today_delta(today)
    RangeFacts.objects.filter(today=True).delete()
    RangeFacts.objects.bulk_create([
        RangeFacts(days=n, channel_id=ch, owner_id=ow, today=True, **values)
        for (n, ch, ow), values in delta.ranges.items() if any(values.values())],
        batch_size=2000)
    month = month_start(today)
    CohortMonthCell.objects.filter(today=True).delete()
    CohortMonthCell.objects.bulk_create([
        CohortMonthCell(month=month, cohort=cohort, channel_id=ch, owner_id=ow, active=n,
                        today=True)
        for (cohort, ch, ow), n in delta.cohorts.items()], batch_size=2000)
    return {"range_cells": len(delta.ranges), "cohort_cells": len(delta.cohorts)}


# --- Answers --------------------------------------------------------------------------------

def in_scope(scope: Scope, channel_id: int | None, owner_id: int | None) -> bool:
    """Whether a (channel, owner) cell belongs to the scope (the rule of `Scope.apply`)."""
    if scope.user is not None:
        role = access.user_role(scope.user)
        if role == access.OPERATOR:
            if owner_id != scope.user.pk:
                return False
        elif role not in (access.ADMIN, access.ANALYST):
            return False
    if scope.channel is not None and channel_id != scope.channel.pk:
        return False
    return scope.owner is None or owner_id == scope.owner.pk


def range_figures(*, scope: Scope, window: Window) -> dict[str, Any]:
    """Every figure of the window for the scope: the stored cells plus today's changes — those
    the frequent refresh stored when recent enough, else computed now."""
    n = window.days
    fresh = today_is_fresh(FactsTable.objects.first())
    cells = RangeFacts.objects.filter(days=n)
    if not fresh:
        cells = cells.filter(today=False)
    totals = scope.apply(cells).aggregate(**{name: Sum(name) for name in FIGURES})
    result = {name: totals[name] or 0 for name in FIGURES}
    if not fresh:
        for (days, ch, ow), values in today_delta(window.today).ranges.items():
            if days == n and in_scope(scope, ch, ow):
                for name in FIGURES:
                    result[name] += values[name]
    for name in FIGURES:
        result[name] = Decimal(result[name]) if name in MONEY_FIGURES else int(result[name])
    return result


def cohort_month_active(*, scope: Scope, today: date, cohorts: list[date]) -> dict[date, int]:
    """Customers active in the current month per join month (of `cohorts`): the stored month so
    far plus today's newly active customers. Only when the facts are stored for today."""
    fresh = today_is_fresh(FactsTable.objects.first())
    cells = CohortMonthCell.objects.filter(month=month_start(today), cohort__in=cohorts)
    if not fresh:
        cells = cells.filter(today=False)
    result = {row["cohort"]: row["n"]
              for row in scope.apply(cells).values("cohort").annotate(n=Sum("active"))}
    if not fresh:
        wanted = set(cohorts)
        for (cohort, ch, ow), n in today_delta(today).cohorts.items():
            if cohort in wanted and in_scope(scope, ch, ow):
                result[cohort] = result.get(cohort, 0) + n
    return result
