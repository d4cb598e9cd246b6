"""Channels: metrics.attribution's acquired customers, purchases since joining and deletions
within 30 and 90 days for any range within the channel days up to today, summed from join-day
cells plus today's changes (PostgreSQL; elsewhere live). docs/METRICS.md, "Stage durations and
channels: precomputed stage spells and channel cells" and "Channel attribution"."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from core.db import raw_rows as _raw
from crm.models import Customer, Event, Order
from metrics import activity
from metrics.models import ChannelDayCell, FactsTable
from metrics.periods import Period, Scope, day_start, local_today, stored_days, system_tz

RETENTION_DAYS = (30, 90)
FIGURES = ("acquired", "buyers", "revenue", "deleted_30d", "deleted_90d")


def channel_days() -> int:
    """How many days up to today the channel join-day cells cover (METRICS_CHANNEL_DAYS)."""
    return stored_days("METRICS_CHANNEL_DAYS")


def _deleted(alias: str, days: int, before: str = "") -> str:
    """The customer `alias` deleted us within `days` days of joining: a friend_deleted event in
    [joined_at, joined_at + days] or the status deleted_us set then (metrics.attribution)."""
    return f"""(EXISTS (SELECT 1 FROM crm_event e WHERE e.customer_id = {alias}.id
                        AND e.type = %(friend_deleted)s AND e.occurred_at >= {alias}.joined_at
                        AND e.occurred_at <= {alias}.joined_at + %(days_{days})s{before})
               OR ({alias}.status = %(deleted_us)s
                   AND {alias}.status_changed_at >= {alias}.joined_at
                   AND {alias}.status_changed_at <= {alias}.joined_at + %(days_{days})s))"""


JOINERS_SQL = """
INSERT INTO metrics_joinerfacts (customer_id, channel_id, owner_id, joined_at, bought, revenue,
                                 deleted_30d, deleted_90d)
SELECT c.id, c.channel_id, c.owner_id, c.joined_at, o.customer_id IS NOT NULL,
       COALESCE(o.revenue, 0), {deleted_30}, {deleted_90}
FROM crm_customer c
LEFT JOIN (
    SELECT o.customer_id, SUM(o.amount) AS revenue
    FROM crm_order o JOIN crm_customer j ON j.id = o.customer_id
    WHERE j.joined_at >= %(since)s AND j.joined_at < %(t0)s AND o.status = %(paid)s
      AND o.placed_at >= j.joined_at AND o.placed_at < %(t0)s
    GROUP BY o.customer_id
) o ON o.customer_id = c.id
WHERE c.joined_at >= %(since)s AND c.joined_at < %(t0)s
"""

CELLS_SQL = """
INSERT INTO metrics_channeldaycell (joined_on, today, channel_id, owner_id, acquired, buyers,
                                    revenue, deleted_30d, deleted_90d)
SELECT (joined_at AT TIME ZONE %(tz)s)::date, false, channel_id, owner_id, COUNT(*),
       COUNT(*) FILTER (WHERE bought), SUM(revenue), COUNT(*) FILTER (WHERE deleted_30d),
       COUNT(*) FILTER (WHERE deleted_90d)
FROM metrics_joinerfacts
GROUP BY 1, 3, 4
"""
# The customers who joined outside the channel days (before them, or dated after today), per
# (channel, owner), in a cell dated the day before them: in no range, it completes the count of
# each channel's customers to date.
OUTSIDE_SQL = """
INSERT INTO metrics_channeldaycell (joined_on, today, channel_id, owner_id, acquired, buyers,
                                    revenue, deleted_30d, deleted_90d)
SELECT %(outside)s, false, channel_id, owner_id, COUNT(*), 0, 0, 0, 0
FROM crm_customer WHERE joined_at < %(since)s OR joined_at >= %(until)s
GROUP BY channel_id, owner_id
"""

DELTA_SQL = """
WITH changed AS (
    SELECT customer_id AS id FROM crm_order WHERE status = %(paid)s AND placed_at >= %(t0)s
    UNION SELECT customer_id FROM crm_order WHERE refunded_at >= %(t0)s
    UNION SELECT customer_id FROM crm_event
          WHERE type = %(friend_deleted)s AND occurred_at >= %(t0)s
    UNION SELECT id FROM crm_customer WHERE joined_at >= %(t0)s
    UNION SELECT id FROM crm_customer
          WHERE status = ANY(%(statuses)s) AND status_changed_at >= %(t0)s
)
SELECT x.d, x.ch, x.ow, SUM(x.acquired), SUM(x.buyers), SUM(x.revenue), SUM(x.d30),
       SUM(x.d90)
FROM (
    SELECT (cu.joined_at AT TIME ZONE %(tz)s)::date AS d, cu.channel_id AS ch,
           cu.owner_id AS ow, 1 AS acquired, CASE WHEN o.n > 0 THEN 1 ELSE 0 END AS buyers,
           COALESCE(o.revenue, 0) AS revenue,
           CASE WHEN {deleted_30} THEN 1 ELSE 0 END AS d30,
           CASE WHEN {deleted_90} THEN 1 ELSE 0 END AS d90
    FROM changed JOIN crm_customer cu ON cu.id = changed.id
    CROSS JOIN LATERAL (SELECT COUNT(*) AS n, SUM(amount) AS revenue FROM crm_order o
                        WHERE o.customer_id = cu.id AND o.status = %(paid)s
                          AND o.placed_at >= cu.joined_at) o
    WHERE cu.joined_at >= %(since)s AND cu.joined_at < %(until)s
    UNION ALL
    SELECT (f.joined_at AT TIME ZONE %(tz)s)::date, f.channel_id, f.owner_id, -1,
           -f.bought::int, -f.revenue, -f.deleted_30d::int, -f.deleted_90d::int
    FROM changed JOIN metrics_joinerfacts f ON f.customer_id = changed.id
) x
GROUP BY 1, 2, 3
"""


def _params(today: date) -> dict[str, Any]:
    window = Period(today - timedelta(days=channel_days() - 1), today)
    return {"t0": day_start(today), "since": window.since, "until": window.until,
            "outside": window.start - timedelta(days=1),
            "tz": settings.TIME_ZONE, "paid": Order.Status.PAID,
            "friend_deleted": Event.Type.FRIEND_DELETED,
            "deleted_us": Customer.Status.DELETED_US,
            "statuses": [value for value, _label in Customer.Status.choices],
            **{f"days_{n}": timedelta(days=n) for n in RETENTION_DAYS}}


def refresh(today: date) -> dict[str, int]:
    """Rewrite the joiners' facts and the join-day cells as of today 00:00. Call in a
    transaction holding the `FactsTable` row."""
    params = _params(today)
    before = " AND e.occurred_at < %(t0)s"
    with connection.cursor() as cursor:
        # TRUNCATE the per-customer rows; DELETE the cells (few; their foreign keys are
        # deferred, and a TRUNCATE fails after inserts in the same transaction).
        cursor.execute("TRUNCATE metrics_joinerfacts")
        cursor.execute("DELETE FROM metrics_channeldaycell")
        cursor.execute(JOINERS_SQL.format(deleted_30=_deleted("c", 30, before),
                                          deleted_90=_deleted("c", 90, before)), params)
        joiners = cursor.rowcount
        cursor.execute("ANALYZE metrics_joinerfacts")
        cursor.execute(CELLS_SQL, params)
        cells = cursor.rowcount
        cursor.execute(OUTSIDE_SQL, params)
    return {"joiners": joiners, "channel_cells": cells}


def today_delta(today: date) -> dict[tuple[date, int | None, int | None], dict[str, Any]]:
    """Per (join day, channel id, owner id): each figure counted now minus as stored, over the
    customers whose facts changed today (one statement over today's changes)."""
    sql = DELTA_SQL.format(deleted_30=_deleted("cu", 30), deleted_90=_deleted("cu", 90))
    return {(day, channel_id, owner_id): dict(zip(FIGURES, values, strict=True))
            for day, channel_id, owner_id, *values in _raw(sql, _params(today)) if any(values)}


def refresh_today(today: date) -> dict[str, int]:
    """Replace today's changes (the cells marked `today`). Call in a transaction holding the
    `FactsTable` row, with the nightly cells of `today` stored."""
    delta = today_delta(today)
    ChannelDayCell.objects.filter(today=True).delete()
    ChannelDayCell.objects.bulk_create([
        ChannelDayCell(joined_on=day, today=True, channel_id=ch, owner_id=ow, **values)
        for (day, ch, ow), values in delta.items()], batch_size=2000)
    return {"channel_cells": len(delta)}


# --- Answers --------------------------------------------------------------------------------

def stored_range(period: Period) -> Period | None:
    """`period` when the join-day cells answer it (any range within the channel days up to
    today, the cells stored up to yesterday); else None (computed live)."""
    today = local_today()
    if period.start < today - timedelta(days=channel_days() - 1) or period.end > today:
        return None
    table = FactsTable.objects.first()
    if (not activity.available() or table is None
            or table.channels_as_of != today - timedelta(days=1)):
        return None
    return period


def _cell_rows(*, scope: Scope, delta: dict | None, first: date | None = None,
               last: date | None = None) -> list[tuple[date, int | None, dict[str, Any]]]:
    """(join day, channel id, figures) of the scope's join-day cells from `first` to `last`
    (None: every cell, the outside one too) with today's changes: the stored ones, or `delta`
    (`today_delta`, counted by the caller while they are not fresh)."""
    cells = ChannelDayCell.objects.order_by()
    if first is not None:
        cells = cells.filter(joined_on__gte=first, joined_on__lte=last)
    rows = [(row["joined_on"], row["channel_id"], {n: row[f"s_{n}"] or 0 for n in FIGURES})
            for row in scope.apply(cells if delta is None else cells.filter(today=False))
            .values("joined_on", "channel_id").annotate(**{f"s_{n}": Sum(n) for n in FIGURES})]
    return rows + [(day, ch, values) for (day, ch, ow), values in (delta or {}).items()
                   if (first is None or first <= day <= last) and scope.holds(ch, ow)]


def acquisition_counts(*, scope: Scope, period: Period, now: datetime,
                       boundary) -> tuple[dict, dict, dict]:
    """metrics.attribution's per-channel figures — ({channel id: acquired, eligible_N,
    retained_N}, {channel id: buyers, revenue}, {channel id: customers to date}) — of a
    `stored_range` from the cells of its join days plus today's changes, the customers to date
    from every cell (as of the night for a customer moved to another channel since, as the
    cells are); `boundary(day, days)` counts {channel id: (eligible, retained)} live for the
    join day in which the N-day windows end at `now`."""
    table = FactsTable.objects.first()
    delta = (None if table is not None and table.today_is_fresh()
             else today_delta(local_today()))
    to_date: dict[int, int] = defaultdict(int)
    for _day, channel_id, values in _cell_rows(scope=Scope(), delta=delta):
        if channel_id is not None:
            to_date[channel_id] += values["acquired"]
    rows = _cell_rows(scope=scope, delta=delta, first=period.start, last=period.end)
    counts: dict[int | None, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    orders: dict[int | None, dict[str, Any]] = defaultdict(
        lambda: {"buyers": 0, "revenue": Decimal("0")})
    for day, channel_id, values in rows:
        counts[channel_id]["acquired"] += values["acquired"]
        orders[channel_id]["buyers"] += values["buyers"]
        orders[channel_id]["revenue"] += Decimal(values["revenue"])
        for days in RETENTION_DAYS:
            # Every customer of the day is past their window: from the cells.
            if day_start(day + timedelta(days=1)) <= now - timedelta(days=days):
                counts[channel_id][f"eligible_{days}"] += values["acquired"]
                counts[channel_id][f"retained_{days}"] += (values["acquired"]
                                                           - values[f"deleted_{days}d"])
    for days in RETENTION_DAYS:
        day = timezone.localdate(now - timedelta(days=days), timezone=system_tz())
        for channel_id, (eligible, retained) in (boundary(day, days).items()
                                                 if period.start <= day <= period.end else ()):
            counts[channel_id][f"eligible_{days}"] += eligible
            counts[channel_id][f"retained_{days}"] += retained
    return ({ch: dict(v) for ch, v in counts.items()},
            {ch: v for ch, v in orders.items() if v["buyers"] or v["revenue"]}, dict(to_date))
