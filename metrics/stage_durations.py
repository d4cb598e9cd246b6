"""Stage durations: the medians of `stages/` and the conversion of `flows/` for any range within
the spell days, from stored stage spells and their block cells (PostgreSQL; else, and while
today's part is late, live in metrics.selectors). docs/METRICS.md, "Stage durations and channels".
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from fractions import Fraction
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction

from core.db import raw_rows as _raw
from crm import hooks
from crm.models import TouchConsumer
from metrics import activity
from metrics.models import FactsTable, StageSpell, StageSpellDayCell
from metrics.periods import Period, Scope, day_start, local_today, stored_days

US_PER_DAY = 86_400_000_000
LOCK_NOT_AVAILABLE = "55P03"
# The block sizes of the block cells, aligned on metrics.activity's day numbers.
BLOCKS = activity.SIZES
# For building the spells' index after the nightly insert in memory (this transaction only).
INDEX_BUILD_MEMORY = "256MB"
# The touches (crm.hooks) that bring today's spells up to date between two refreshes.
CONSUMER = "metrics_today"


def spell_days() -> int:
    """How many days up to today the stage spells cover (METRICS_SPELL_DAYS, default 400):
    any range of `stages/` and `flows/` starting within them is answered from the spells."""
    return stored_days("METRICS_SPELL_DAYS")
COLUMNS = ("spell_id, model_id, customer_id, stage_key, channel_id, owner_id, started_at, "
           "previous_entry_at, ended_at, next_key, exit_matches, duration_us, bucket")



def _execute(sql: str, params: dict[str, Any]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


# A spell's row from its transition `s` (to_key, at), the next transition (next_at, next_key,
# next_from) and the customer `c`; the duration exact in microseconds, bucketed in whole days.
SPELL_VALUES = f"""
    s.id, s.model_id, s.customer_id, s.to_key, c.channel_id, c.owner_id, s.at,
    CASE WHEN s.previous_entry_at >= %(since)s THEN s.previous_entry_at END,
    s.next_at, COALESCE(s.next_key, ''), COALESCE(s.next_from = s.to_key, false),
    d.us, d.us / {US_PER_DAY}
"""
DURATION = ("CROSS JOIN LATERAL (SELECT (EXTRACT(EPOCH FROM (s.next_at - s.at)) * 1000000)"
            "::bigint AS us) d")

NIGHTLY_SQL = f"""
{{target}}
WITH w AS (
    -- The transitions of the spell days before today, each with the customer's next one in
    -- the model (all of them in those days too) and their previous entry into the same stage
    -- in them (an earlier one cannot make an entry of the ranges not the first).
    SELECT id, model_id, customer_id, from_key, to_key, at,
           LEAD(at) OVER seq AS next_at, LEAD(to_key) OVER seq AS next_key,
           LEAD(from_key) OVER seq AS next_from, LAG(at) OVER same AS previous_entry_at,
           ROW_NUMBER() OVER seq AS k
    FROM lifecycle_stagetransition
    WHERE at >= %(since)s AND at < %(t0)s{{customers}}
    WINDOW seq AS (PARTITION BY customer_id, model_id ORDER BY at, id),
           same AS (PARTITION BY customer_id, model_id, to_key ORDER BY at, id)
), s AS (
    SELECT id, model_id, customer_id, to_key, at, previous_entry_at, next_at, next_key,
           next_from
    FROM w
    UNION ALL
    -- The stays begun before the spell days and ended in them by a move out of the stage:
    -- the customer's last transition before, ended by their first one in those days.
    SELECT p.id, f.model_id, f.customer_id, p.to_key, p.at, NULL, f.at, f.to_key, f.from_key
    FROM w f CROSS JOIN LATERAL (
        SELECT b.id, b.to_key, b.at FROM lifecycle_stagetransition b
        WHERE b.customer_id = f.customer_id AND b.model_id = f.model_id AND b.at < %(since)s
        ORDER BY b.at DESC, b.id DESC LIMIT 1) p
    WHERE f.k = 1 AND f.from_key <> '' AND p.to_key = f.from_key
)
SELECT {SPELL_VALUES}
FROM s JOIN crm_customer c ON c.id = s.customer_id {DURATION}
ORDER BY s.id
"""
# Every customer's spells into the table (the full rebuild), or those of the customers to
# re-read (`spell_movers`) into a temporary table (the nightly update).
FULL_SPELLS_SQL = NIGHTLY_SQL.format(target=f"INSERT INTO metrics_stagespell ({COLUMNS})",
                                     customers="")
MOVERS_SPELLS_SQL = NIGHTLY_SQL.format(
    target=f"INSERT INTO spell_new ({COLUMNS})",
    customers=" AND customer_id IN (SELECT customer_id FROM spell_movers)")

TODAY_SQL = f"""
INSERT INTO {{target}} ({COLUMNS})
WITH movers AS ({{movers}}), s AS (
    -- each mover's history read by its index (LATERAL): a join of the movers is planned as
    -- a scan of every transition, seconds at a million customers
    SELECT s.* FROM movers m CROSS JOIN LATERAL (
        SELECT t.id, t.model_id, t.customer_id, t.to_key, t.at,
               LEAD(t.at) OVER seq AS next_at, LEAD(t.to_key) OVER seq AS next_key,
               LEAD(t.from_key) OVER seq AS next_from, LAG(t.at) OVER same AS previous_entry_at
        FROM lifecycle_stagetransition t
        WHERE t.customer_id = m.customer_id AND t.model_id = m.model_id
        WINDOW seq AS (ORDER BY t.at, t.id), same AS (PARTITION BY t.to_key ORDER BY t.at, t.id)
    ) s
)
SELECT {SPELL_VALUES}
FROM s JOIN crm_customer c ON c.id = s.customer_id {DURATION}
WHERE s.at >= %(t0)s OR s.next_at >= %(t0)s
"""
# Everyone who moved today (the first refresh of the day), or the (customer, model) pairs of
# the customers touched since the last one that moved today or have today's spells stored.
ALL_MOVERS = ("SELECT DISTINCT customer_id, model_id FROM lifecycle_stagetransition "
              "WHERE at >= %(t0)s")
TOUCHED_MOVERS_SQL = """
CREATE TEMPORARY TABLE today_movers ON COMMIT DROP AS
WITH touched AS (SELECT DISTINCT unnest(%(touched)s::bigint[]) AS customer_id)
SELECT s.customer_id, s.model_id
FROM touched t JOIN lifecycle_stagetransition s ON s.customer_id = t.customer_id
WHERE s.at >= %(t0)s
UNION
-- (a join, not `= ANY(…)`: a filter tests each of today's spells against the whole list)
SELECT x.customer_id, x.model_id
FROM touched t JOIN metrics_todaystagespell x ON x.customer_id = t.customer_id
"""

NIGHTLY_SOURCE = f"SELECT {COLUMNS}, 1 AS sign FROM metrics_stagespell"


def _change_source(table: str, replaced: str) -> str:
    """The spells of `table` counted now, minus the stored spells (`o`) they replace — those
    the `replaced` join matches — as a signed source of the cells."""
    stored = ", ".join(f"o.{column.strip()}" for column in COLUMNS.split(","))
    return f"""
    SELECT {COLUMNS}, 1 AS sign FROM {table}
    UNION ALL
    SELECT {stored}, -1 FROM metrics_stagespell o {replaced}
"""


# Today's spells counted now, minus the nightly rows they replace (only a spell begun before
# today can have one: the others are not looked up).
REPLACES = "JOIN {table} t ON t.spell_id = o.spell_id AND t.started_at < %(t0)s"
TODAY_SOURCE = _change_source("metrics_todaystagespell",
                              REPLACES.format(table="metrics_todaystagespell"))
# The touched movers' change since the last refresh: their spells now, less the nightly rows
# they replace, less (their spells as stored, less the nightly rows those replaced).
TOUCHED_SOURCE = f"""
    {_change_source("today_new", REPLACES.format(table="today_new"))}
    UNION ALL
    SELECT {COLUMNS}, -sign FROM ({_change_source(
        "today_old", REPLACES.format(table="today_old"))}) old
"""
# Today's cells summed per key into one row each (GROUP BY groups NULL keys together): the
# touched refreshes add their change as rows of their own, summed back now and then. Below
# COMPACT_MIN rows they are left as they are.
COMPACT_MIN = 5_000
CELL_KEYS = ("day, days, previous_on, kind, model_id, stage_key, next_key, grain, channel_id, "
             "owner_id")
SUMMED_SQL = f"""
INSERT INTO metrics_stagespelldaycell ({CELL_KEYS}, today, spells, histogram)
WITH e AS (
    SELECT {CELL_KEYS}, spells, NULL::text AS bucket, 0 AS n FROM today_rows
    UNION ALL
    SELECT {CELL_KEYS}, 0, h.key, h.value::int
    FROM today_rows r CROSS JOIN LATERAL jsonb_each_text(r.histogram) h
), b AS (
    SELECT {CELL_KEYS}, bucket, SUM(spells) AS spells, SUM(n) AS n
    FROM e GROUP BY {CELL_KEYS}, bucket
)
SELECT {CELL_KEYS}, true, SUM(spells),
       COALESCE(jsonb_object_agg(bucket, n) FILTER (WHERE bucket IS NOT NULL AND n <> 0),
                '{{}}'::jsonb)
FROM b GROUP BY {CELL_KEYS}
HAVING SUM(spells) <> 0 OR bool_or(bucket IS NOT NULL AND n <> 0)
"""


def _compact_today() -> int:
    """Sum today's cells into one row per key (none where they cancel out); returns the rows
    written."""
    _execute("CREATE TEMPORARY TABLE today_rows ON COMMIT DROP AS "
             "SELECT * FROM metrics_stagespelldaycell WHERE today", {})
    _execute("DELETE FROM metrics_stagespelldaycell WHERE today", {})
    cells = _execute(SUMMED_SQL, {})
    _execute("DROP TABLE today_rows", {})
    return cells


# What each spell counts for, per aligned block of the spell days (`BLOCKS` days, as the
# customer bitmaps' blocks): an exit on the day of its end, every entry
# (and its move on) on the day of its start, rolled up into each block holding the day; and on
# their own day the re-entries with the day of the previous entry into the stage, which a range
# subtracts when that day is in it (only the customer's first entry in a range counts).
# First per day and grain (a temporary table, so that the roll-up into blocks is planned on
# its real size), then into blocks.
DAY_GRAINS_SQL = """
CREATE TEMPORARY TABLE spell_day_grains ON COMMIT DROP AS
WITH src AS ({source}), classed AS (
    SELECT 'exit' AS kind, model_id, stage_key, '' AS next_key, channel_id, owner_id, bucket,
           (ended_at AT TIME ZONE %(tz)s)::date AS day, NULL::date AS previous_on, sign
    FROM src WHERE exit_matches AND ended_at >= %(since)s AND ended_at < %(until)s
    UNION ALL
    SELECT k.kind, model_id, stage_key, '', channel_id, owner_id, NULL,
           (started_at AT TIME ZONE %(tz)s)::date, k.previous_on, sign
    FROM src CROSS JOIN LATERAL (
        VALUES ('entered', NULL::date),
               ('reentry', (previous_entry_at AT TIME ZONE %(tz)s)::date)) k(kind, previous_on)
    WHERE started_at >= %(since)s AND started_at < %(until)s
      AND (k.kind = 'entered' OR previous_entry_at IS NOT NULL)
    UNION ALL
    SELECT k.kind, model_id, stage_key, next_key, channel_id, owner_id, bucket,
           (started_at AT TIME ZONE %(tz)s)::date, k.previous_on, sign
    FROM src CROSS JOIN LATERAL (
        VALUES ('next', NULL::date),
               ('renext', (previous_entry_at AT TIME ZONE %(tz)s)::date)) k(kind, previous_on)
    WHERE next_key <> '' AND started_at >= %(since)s AND started_at < %(until)s
      AND (k.kind = 'next' OR previous_entry_at IS NOT NULL)
), fine AS (
    SELECT kind, model_id, stage_key, next_key, day, previous_on, channel_id, owner_id, bucket,
           SUM(sign) AS n
    FROM classed GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
)
SELECT day, previous_on, kind, model_id, stage_key, next_key,
       CASE GROUPING(channel_id, owner_id) WHEN 3 THEN 0 WHEN 1 THEN 1 ELSE 2 END AS grain,
       channel_id, owner_id, bucket, SUM(n) AS n
FROM fine
GROUP BY GROUPING SETS (
    (day, previous_on, kind, model_id, stage_key, next_key, bucket),
    (day, previous_on, kind, model_id, stage_key, next_key, channel_id, bucket),
    (day, previous_on, kind, model_id, stage_key, next_key, owner_id, bucket))
"""
CELL_COLUMNS = ("day, days, previous_on, today, kind, model_id, stage_key, next_key, grain, "
                "channel_id, owner_id, spells, histogram")
DAY_CELLS_SQL = """
WITH blocks AS (
    -- Each day into the block of each size holding it (the re-entries: their own day only).
    SELECT %(epoch)s::date + (g.day - %(epoch)s::date) / b.days * b.days AS day, b.days,
           g.previous_on, g.kind, g.model_id, g.stage_key, g.next_key, g.grain, g.channel_id,
           g.owner_id, g.bucket, SUM(g.n) AS n
    FROM spell_day_grains g JOIN (VALUES {sizes}) b(days)
         ON b.days = 1 OR g.kind IN ('exit', 'entered', 'next')
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
)
SELECT day, days, previous_on, %(today)s AS today, kind, model_id, stage_key, next_key,
       grain, channel_id, owner_id, SUM(n) AS spells,
       COALESCE(jsonb_object_agg(bucket, n) FILTER (WHERE bucket IS NOT NULL AND n <> 0),
                '{}'::jsonb) AS histogram
FROM blocks
GROUP BY day, days, previous_on, kind, model_id, stage_key, next_key, grain, channel_id,
         owner_id
HAVING SUM(n) <> 0 OR bool_or(bucket IS NOT NULL AND n <> 0)
""".replace("{sizes}", ", ".join(f"({size})" for size in BLOCKS))


def _block_cells(source: str, params: dict[str, Any], *,
                 target: str = f"INSERT INTO metrics_stagespelldaycell ({CELL_COLUMNS})") -> int:
    """Store the block cells of the spells `source` selects (signed)."""
    _execute(DAY_GRAINS_SQL.format(source=source), params)
    _execute("ANALYZE spell_day_grains", {})
    cells = _execute(f"{target} {DAY_CELLS_SQL}", params)
    _execute("DROP TABLE spell_day_grains", {})
    return cells


# The grains of the block cells (a (channel, owner) scope has too many to store per block).
Grain = StageSpellDayCell.Grain
BLOCK_GRAINS = (Grain.ALL, Grain.CHANNEL, Grain.OWNER)


def _params(today: date, *, today_rows: bool) -> dict[str, Any]:
    return {"t0": day_start(today), "today": today_rows, "tz": settings.TIME_ZONE,
            "epoch": activity.EPOCH, "until": day_start(today + timedelta(days=1)),
            "since": _spell_window(today).since}


# How many nights the nightly update may catch up on (more: a full rebuild), and how many days
# after a rebuild the next one comes anyway.
UPDATE_DAYS = 7
REBUILD_DAYS = 30
# A transition committed after the last refresh read the highest id may have a lower one (its
# transaction began before): the update also re-reads the customers with a transition this long
# before the last refresh's day ended — a lifecycle run's transaction takes minutes, not a day.
LATE = timedelta(days=1)
# The share of the customers above which the update rebuilds instead (when more than
# REBUILD_MIN: below that, either takes moments).
REBUILD_SHARE = 0.25
REBUILD_MIN = 10_000
# The customers whose spells the nightly update re-reads: those with a stage transition recorded
# since the last refresh (by id; and by time, from `LATE` before the end of its day, for one
# committed late with a lower id), and those whose stored spells name another channel or owner
# than they have now, or who are gone.
MOVERS_SQL = """
CREATE TEMPORARY TABLE spell_movers ON COMMIT DROP AS
SELECT customer_id FROM lifecycle_stagetransition WHERE id > %(read_id)s OR at >= %(changed)s
UNION
SELECT s.customer_id FROM metrics_stagespell s LEFT JOIN crm_customer c ON c.id = s.customer_id
WHERE c.id IS NULL OR c.channel_id IS DISTINCT FROM s.channel_id
      OR c.owner_id IS DISTINCT FROM s.owner_id
"""
# The block cells' change: the movers' spells now, less as stored.
MOVERS_SOURCE = _change_source("spell_new",
                               "JOIN spell_movers m ON m.customer_id = o.customer_id")
# The change added into the stored block cells (the keys compared with their empty values for
# NULL), then the cells it zeroed removed.
CELL_KEY = ("x.day = d.day AND x.days = d.days AND x.kind = d.kind AND x.model_id = d.model_id "
            "AND x.stage_key = d.stage_key AND x.next_key = d.next_key AND x.grain = d.grain "
            "AND COALESCE(x.previous_on, '0001-01-01') = COALESCE(d.previous_on, '0001-01-01') "
            "AND COALESCE(x.channel_id, 0) = COALESCE(d.channel_id, 0) "
            "AND COALESCE(x.owner_id, 0) = COALESCE(d.owner_id, 0) AND NOT x.today")
MERGE_CELLS_SQL = [
    f"""UPDATE metrics_stagespelldaycell x SET spells = x.spells + d.spells, histogram = (
            SELECT COALESCE(jsonb_object_agg(k, n) FILTER (WHERE n <> 0), '{{}}'::jsonb)
            FROM (SELECT key AS k, SUM(value::int) AS n
                  FROM (SELECT * FROM jsonb_each_text(x.histogram)
                        UNION ALL SELECT * FROM jsonb_each_text(d.histogram)) e
                  GROUP BY key) h)
        FROM spell_delta d WHERE {CELL_KEY}""",
    f"""INSERT INTO metrics_stagespelldaycell ({CELL_COLUMNS})
        SELECT {CELL_COLUMNS} FROM spell_delta d
        WHERE NOT EXISTS (SELECT 1 FROM metrics_stagespelldaycell x WHERE {CELL_KEY})""",
    """DELETE FROM metrics_stagespelldaycell
       WHERE NOT today AND spells = 0 AND histogram = '{}'::jsonb""",
]


def _full_rebuild_needed(today: date, header: FactsTable) -> bool:
    """Whether the nightly refresh rebuilds every spell instead of updating them (when:
    docs/METRICS.md, "Stage durations and channels")."""
    as_of, rebuilt_on = header.spells_as_of, header.spells_rebuilt_on
    if (as_of is None or header.spells_read_id is None or rebuilt_on is None
            or header.spells_days != spell_days()
            or header.spells_time_zone != settings.TIME_ZONE
            or (today - rebuilt_on).days >= REBUILD_DAYS
            or not today - timedelta(days=UPDATE_DAYS + 1) <= as_of < today):
        return True
    return not StageSpell.objects.exists()


def refresh(today: date, header: FactsTable) -> dict[str, Any]:
    """Bring the spells and their cells up to today 00:00 (updated by the movers, or rebuilt),
    in a transaction holding the `FactsTable` row `header`, recording on it what the next
    night's update needs."""
    params = _params(today, today_rows=False)
    read_id = _raw("SELECT COALESCE(MAX(id), 0) FROM lifecycle_stagetransition", {})[0][0]
    if _full_rebuild_needed(today, header):
        result = _rebuild(params)
    else:
        result = _update(params, read_id=header.spells_read_id,
                         changed=day_start(header.spells_as_of + timedelta(days=1)) - LATE)
    header.spells_days = spell_days()
    header.spells_time_zone = settings.TIME_ZONE
    header.spells_today_on = None           # (today's spells were cleared)
    header.spells_read_id = read_id
    if result["rebuilt"]:
        header.spells_rebuilt_on = today
    return result


def _rebuild(params: dict[str, Any]) -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE metrics_stagespell, metrics_todaystagespell")
        cursor.execute("DELETE FROM metrics_stagespelldaycell")
    # Millions of rows: the indexes are built once after the insert, not row by row (the
    # TRUNCATE holds the table's lock until the commit anyway).
    indexes = StageSpell._meta.indexes
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('maintenance_work_mem', %s, true)",
                       [INDEX_BUILD_MEMORY])
    with connection.schema_editor(atomic=False) as editor:
        for index in indexes:
            editor.remove_index(StageSpell, index)
    spells = _execute(FULL_SPELLS_SQL, params)
    with connection.schema_editor(atomic=False) as editor:
        for index in indexes:
            editor.add_index(StageSpell, index)
    _execute("ANALYZE metrics_stagespell", {})
    cells = _block_cells(NIGHTLY_SOURCE, params)
    _execute("ANALYZE metrics_stagespelldaycell", {})
    return {"spells": spells, "spell_cells": cells, "rebuilt": True, "moved": None}


def _update(params: dict[str, Any], *, read_id: int, changed) -> dict[str, Any]:
    """The nightly update: the movers' spells re-read, their difference added into the block
    cells, the spells and blocks before the spell days dropped."""
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM metrics_todaystagespell")
        cursor.execute("DELETE FROM metrics_stagespelldaycell WHERE today")
    moved = _execute(MOVERS_SQL, {**params, "read_id": read_id, "changed": changed})
    customers = _raw("SELECT COUNT(*) FROM crm_customer", {})[0][0]
    if moved > max(REBUILD_SHARE * customers, REBUILD_MIN):
        # Most customers moved (a re-evaluation from scratch, an import of history): re-reading
        # them all and subtracting their old spells costs more than a rebuild.
        _execute("DROP TABLE spell_movers", {})
        return _rebuild(params)
    _execute("ALTER TABLE spell_movers ADD PRIMARY KEY (customer_id)", {})
    _execute("ANALYZE spell_movers", {})
    _execute("CREATE TEMPORARY TABLE spell_new (LIKE metrics_stagespell) ON COMMIT DROP", {})
    spells = _execute(MOVERS_SPELLS_SQL, params)
    _execute("ANALYZE spell_new", {})
    cells = _block_cells(MOVERS_SOURCE, params,
                         target="CREATE TEMPORARY TABLE spell_delta ON COMMIT DROP AS")
    for sql in MERGE_CELLS_SQL:
        _execute(sql, params)
    _execute("DELETE FROM metrics_stagespell o USING spell_movers m "
             "WHERE o.customer_id = m.customer_id", {})
    _execute(f"INSERT INTO metrics_stagespell ({COLUMNS}) SELECT {COLUMNS} FROM spell_new", {})
    # Out of the spell days: the stays begun before them and not ended in them, and the blocks
    # ending before them (never read: a range within the spell days reads whole blocks in it).
    _execute("DELETE FROM metrics_stagespell WHERE started_at < %(since)s "
             "AND (ended_at IS NULL OR ended_at < %(since)s)", params)
    _execute("DELETE FROM metrics_stagespelldaycell "
             "WHERE day + days <= (%(since)s AT TIME ZONE %(tz)s)::date", params)
    for table in ("spell_movers", "spell_new", "spell_delta"):
        _execute(f"DROP TABLE {table}", {})
    _execute("ANALYZE metrics_stagespell", {})
    return {"spells": spells, "spell_cells": cells, "rebuilt": False, "moved": moved}


def refresh_today(today: date, header: FactsTable) -> dict[str, int]:
    """Bring today's spells and today's change to the cells up to date — everyone who moved
    today the first time of the day, then the customers touched since — in a transaction
    holding the `FactsTable` row `header` (the nightly spells of `today` stored)."""
    params = _params(today, today_rows=True)
    consumer, _created = TouchConsumer.objects.select_for_update().get_or_create(
        consumer=CONSUMER)
    if header.spells_today_on != today or not consumer.position:
        consumer.position = hooks.position_now()
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM metrics_todaystagespell")
            cursor.execute("DELETE FROM metrics_stagespelldaycell WHERE today")
        spells = _execute(TODAY_SQL.format(target="metrics_todaystagespell", movers=ALL_MOVERS),
                          params)
        # (its size now: joined with the stored spells, a stale estimate plans a scan of them all)
        _execute("ANALYZE metrics_todaystagespell", {})
        cells = _block_cells(TODAY_SOURCE, params)
        header.spells_today_cells = cells
        result = {"spells": spells, "spell_cells": cells, "movers": None}
    else:
        touched, consumer.position = hooks.touches_since(CONSUMER, consumer.position)
        result = _refresh_touched(params, touched, header)
    consumer.save(update_fields=["position", "updated_at"])
    header.spells_today_on = today
    return result


def _refresh_touched(params: dict[str, Any], touched: list[int], header: FactsTable
                     ) -> dict[str, int]:
    """Re-read the touched customers' spells of today and add their change to today's cells
    as rows of its own, summed back to one row per cell once twice as many."""
    if not touched:
        return {"spells": 0, "spell_cells": 0, "movers": 0}
    movers = _execute(TOUCHED_MOVERS_SQL, {**params, "touched": touched})
    if not movers:
        _execute("DROP TABLE today_movers", {})
        return {"spells": 0, "spell_cells": 0, "movers": 0}
    _execute("ANALYZE today_movers", {})
    _execute("CREATE TEMPORARY TABLE today_new (LIKE metrics_todaystagespell) ON COMMIT DROP",
             {})
    spells = _execute(TODAY_SQL.format(
        target="today_new", movers="SELECT customer_id, model_id FROM today_movers"), params)
    _execute("CREATE TEMPORARY TABLE today_old ON COMMIT DROP AS SELECT t.* "
             "FROM metrics_todaystagespell t JOIN today_movers m "
             "ON m.customer_id = t.customer_id AND m.model_id = t.model_id", {})
    _execute("ANALYZE today_new", {})
    _execute("ANALYZE today_old", {})
    cells = _block_cells(TOUCHED_SOURCE, params)
    _execute("DELETE FROM metrics_todaystagespell t USING today_movers m "
             "WHERE m.customer_id = t.customer_id AND m.model_id = t.model_id", {})
    _execute(f"INSERT INTO metrics_todaystagespell ({COLUMNS}) SELECT {COLUMNS} FROM today_new",
             {})
    # Its size now, for the planner: the reports join it against the stored spells (NOT EXISTS),
    # and with the few rows of the day's first refresh in its statistics that anti-join is
    # planned as a loop over both — 9 s by evening at 1M, and growing as the square of the day.
    _execute("ANALYZE metrics_todaystagespell", {})
    rows = _raw("SELECT COUNT(*) FROM metrics_stagespelldaycell WHERE today", {})[0][0]
    if rows > 2 * max(header.spells_today_cells, COMPACT_MIN):
        header.spells_today_cells = _compact_today()
    for table in ("today_movers", "today_new", "today_old"):
        _execute(f"DROP TABLE {table}", {})
    return {"spells": spells, "spell_cells": cells, "movers": movers}


def touch_skips() -> set[str]:
    """The touches today's spells need not read (crm.hooks.touch_skips): all but the stages'
    (a move, or a customer deleted). A customer who moved today and then passes to another
    channel or owner counts under the old ones until their next move or the next night, as
    those who did not move today do."""
    return {"", "tagging"}


# --- Answers --------------------------------------------------------------------------------

def _spell_window(today: date) -> Period:
    """The days the spells and the block cells cover (`spell_days`, up to today)."""
    return Period(today - timedelta(days=spell_days() - 1), today)


def first_stored_day(today: date) -> date:
    """The first day of the spell days up to today: the earliest start a stored range may
    have."""
    return _spell_window(today).start


def stored_range(period: Period, scope: Scope) -> Period | None:
    """`period` when the stored spells answer it for the scope: a range within the spell days
    up to today, with the spells stored for today and today's part fresh. None when the reports
    are computed live."""
    today = local_today()
    if period.start < first_stored_day(today) or period.end > today:
        return None
    table = FactsTable.objects.first()
    if (not activity.available() or table is None or table.spells_as_of != today - timedelta(days=1)
            or not table.today_is_fresh()):
        return None
    return period


def scope_cell(scope: Scope) -> tuple[int, int | None, int | None] | None:
    """(grain, channel id, owner id) of the cells that answer for the scope (`Scope.cell`);
    None when the scope holds nobody."""
    cell = scope.cell()
    if cell is None:
        return None
    channel, owner = cell
    grain = (Grain.CHANNEL if channel is not None else 0) | (
        Grain.OWNER if owner is not None else 0)
    return int(grain), channel, owner


@dataclass
class Figure:
    """Spells counted for one (kind, stage, next stage) and their durations' histogram."""

    spells: int = 0
    histogram: dict[int, int] | None = None

    def add(self, spells: int, histogram: dict[str, int]) -> None:
        self.spells += spells
        if self.histogram is None:
            self.histogram = defaultdict(int)
        for bucket, n in histogram.items():
            self.histogram[int(bucket)] += n

    def middle(self) -> list[tuple[int, int]]:
        """(bucket, rank within the bucket, 1-based) of the median's one or two middle values:
        ranks (n + 1) // 2 and (n + 2) // 2, as the live query picks them."""
        n = self.spells
        wanted = sorted({(n + 1) // 2, (n + 2) // 2})
        found, seen = [], 0
        for bucket in sorted(b for b, k in (self.histogram or {}).items() if k):
            count = self.histogram[bucket]
            for rank in wanted:
                if seen < rank <= seen + count:
                    found.append((bucket, rank - seen))
            seen += count
        return found


Key = tuple[str, str, str]          # (kind, stage key, next stage key or '')


def _figures(*, scope: Scope, period: Period, model_id: int, kinds: list[str]
             ) -> dict[Key, Figure]:
    """The scope's cells of the range summed: the block cells of its days (less the
    re-entries after an entry in it), or for a (channel, owner) scope its own spells."""
    where = scope_cell(scope)
    if where is None:
        return {}
    grain, channel, owner = where
    if grain not in BLOCK_GRAINS:
        return _scope_figures(period=period, model_id=model_id, kinds=kinds, channel=channel,
                              owner=owner)
    return _block_figures(period=period, model_id=model_id, kinds=kinds, grain=grain,
                          channel=channel, owner=owner)


# A range's figures from the block cells, summed in the database: the cells of the blocks the
# range is made of (every entry), less the re-entries in it whose previous entry into the stage
# is in it too (not the customer's first entry in the range).
BLOCK_FIGURES_SQL = """
WITH b(day, days) AS (VALUES {blocks}), c AS (
    SELECT x.kind, x.stage_key, x.next_key, x.spells, x.histogram, 1 AS sign
    FROM metrics_stagespelldaycell x JOIN b ON x.day = b.day AND x.days = b.days
    WHERE x.model_id = %(model)s AND x.grain = %(grain)s AND x.kind = ANY(%(kinds)s){scope}
    UNION ALL
    SELECT CASE x.kind WHEN 'reentry' THEN 'entered' ELSE 'next' END, x.stage_key,
           x.next_key, x.spells, x.histogram, -1
    FROM metrics_stagespelldaycell x
    WHERE x.model_id = %(model)s AND x.grain = %(grain)s AND x.days = 1
      AND x.day >= %(start)s AND x.day <= %(end)s AND x.previous_on >= %(start)s
      AND x.kind = ANY(%(re_kinds)s){scope}
)
SELECT kind, stage_key, next_key, NULL::int, SUM(sign * spells) FROM c GROUP BY 1, 2, 3
UNION ALL
SELECT kind, stage_key, next_key, h.key::int, SUM(sign * h.value::int)
FROM c CROSS JOIN LATERAL jsonb_each_text(c.histogram) h GROUP BY 1, 2, 3, 4
"""
Kind = StageSpellDayCell.Kind
REENTRY_KINDS = {Kind.ENTERED: Kind.REENTRY, Kind.NEXT: Kind.RENEXT}


def _block_figures(*, period: Period, model_id: int, kinds: list[str], grain: int,
                   channel: int | None, owner: int | None) -> dict[Key, Figure]:
    """The figures of a range at a grain with block cells: one statement over the few blocks
    the range is made of and its re-entries."""
    params: dict[str, Any] = {"model": model_id, "grain": grain, "kinds": kinds,
                              "re_kinds": [REENTRY_KINDS[k] for k in kinds if k in REENTRY_KINDS],
                              "start": period.start, "end": period.end,
                              "channel": channel, "owner": owner}
    blocks = []
    for i, (day, days) in enumerate(activity.pieces(period.start, period.end)):
        params.update({f"d{i}": day, f"n{i}": days})
        blocks.append(f"(%(d{i})s::date, %(n{i})s::int)")
    scope = ""
    if grain & Grain.CHANNEL:
        scope += " AND x.channel_id = %(channel)s"
    if grain & Grain.OWNER:
        scope += " AND x.owner_id = %(owner)s"
    figures: dict[Key, Figure] = defaultdict(Figure)
    for kind, stage, next_key, bucket, n in _raw(
            BLOCK_FIGURES_SQL.format(blocks=", ".join(blocks), scope=scope), params):
        if bucket is None:
            figures[(kind, stage, next_key)].spells += n
        elif n:
            figures[(kind, stage, next_key)].add(0, {bucket: n})
    return {key: f for key, f in figures.items() if f.spells}


# A (channel, owner) scope's figures for a range (no cells of its own), counted from its
# spells (the nightly rows less those today's rows stand in for, then today's): the same
# classing as the cells' — an exit on its end, a first entry (and its move on) on its start when
# the previous entry into the stage is before the range.
SCOPE_FIGURES_SQL = """
WITH s AS (
    SELECT stage_key, next_key, exit_matches, started_at, ended_at, previous_entry_at, bucket
    FROM metrics_stagespell s
    WHERE s.model_id = %(model)s AND s.channel_id = %(channel)s AND s.owner_id = %(owner)s
      AND NOT EXISTS (SELECT 1 FROM metrics_todaystagespell x WHERE x.spell_id = s.spell_id)
    UNION ALL
    SELECT stage_key, next_key, exit_matches, started_at, ended_at, previous_entry_at, bucket
    FROM metrics_todaystagespell s
    WHERE s.model_id = %(model)s AND s.channel_id = %(channel)s AND s.owner_id = %(owner)s
), entered AS (
    SELECT * FROM s WHERE started_at >= %(since)s AND started_at < %(until)s
                      AND (previous_entry_at IS NULL OR previous_entry_at < %(since)s)
)
SELECT 'exit', stage_key, '', bucket, COUNT(*) FROM s
WHERE exit_matches AND ended_at >= %(since)s AND ended_at < %(until)s GROUP BY 2, 4
UNION ALL
SELECT 'entered', stage_key, '', NULL, COUNT(*) FROM entered GROUP BY 2
UNION ALL
SELECT 'next', stage_key, next_key, bucket, COUNT(*) FROM entered WHERE next_key <> ''
GROUP BY 2, 3, 4
"""


def _scope_figures(*, period: Period, model_id: int, kinds: list[str], channel: int,
                   owner: int) -> dict[Key, Figure]:
    """A (channel, owner) scope's figures: its spells in the spell days are few (an index
    range), so they are counted directly instead of storing block cells per (channel, owner)."""
    figures: dict[Key, Figure] = defaultdict(Figure)
    rows = _raw(SCOPE_FIGURES_SQL, {"model": model_id, "channel": channel, "owner": owner,
                                    "since": period.since, "until": period.until})
    for kind, stage, next_key, bucket, n in rows:
        if kind in kinds:
            figures[(kind, stage, next_key)].add(n, {} if bucket is None else {bucket: n})
    return {key: f for key, f in figures.items() if f.spells}


EXACT_SQL = {
    "exit": """
        SELECT w.stage, w.next_key, w.bucket, s.duration_us
        FROM (VALUES {values}) w(stage, next_key, bucket)
        JOIN {table} s ON s.model_id = %(model)s AND s.stage_key = w.stage
             AND s.bucket = w.bucket AND s.ended_at >= %(since)s AND s.ended_at < %(until)s
        WHERE s.exit_matches{scope}{current}""",
    "next": """
        SELECT w.stage, w.next_key, w.bucket, s.duration_us
        FROM (VALUES {values}) w(stage, next_key, bucket)
        JOIN {table} s ON s.model_id = %(model)s AND s.stage_key = w.stage
             AND s.next_key = w.next_key AND s.bucket = w.bucket
             AND s.started_at >= %(since)s AND s.started_at < %(until)s
        WHERE (s.previous_entry_at IS NULL OR s.previous_entry_at < %(since)s){scope}{current}""",
}
# The nightly rows, less those today's rows stand in for; then today's rows.
REPLACED = (" AND NOT EXISTS (SELECT 1 FROM metrics_todaystagespell x "
            "WHERE x.spell_id = s.spell_id)")


class Inconsistent(Exception):
    """The stored spells do not match their cells (a refresh in between), or are being rebuilt:
    compute live."""


# How long a request waits for the spells' tables: a rebuild holds them (TRUNCATE, index
# builds) for minutes, and a request meanwhile answers live instead of waiting.
LOCK_WAIT = "500ms"


def _not_waiting(answer):
    """Run `answer` with a short lock timeout (in a savepoint, restored after); a timeout raises
    `Inconsistent`."""
    @functools.wraps(answer)
    def wrapper(**kwargs):
        try:
            with transaction.atomic():
                previous = _raw("SELECT current_setting('lock_timeout'), "
                                "set_config('lock_timeout', %s, true)", [LOCK_WAIT])[0][0]
                result = answer(**kwargs)
                _raw("SELECT set_config('lock_timeout', %s, true)", [previous])
                return result
        except OperationalError as error:
            if getattr(error.__cause__, "pgcode", None) == LOCK_NOT_AVAILABLE:
                raise Inconsistent("the stage spells are being rebuilt") from error
            raise
    return wrapper


def _medians(*, scope: Scope, period: Period, model_id: int, kind: str,
             figures: dict[Key, Figure]) -> dict[Key, float]:
    """The exact median days of each figure of `kind`: the middle bucket(s) from the summed
    histogram, then those buckets' exact durations, in one statement."""
    wanted: dict[tuple[str, str, int], list[tuple[Key, int]]] = defaultdict(list)
    for key, figure in figures.items():
        if key[0] == kind:
            for bucket, rank in figure.middle():
                wanted[(key[1], key[2], bucket)].append((key, rank))
    if not wanted:
        return {}
    _grain, channel, owner = scope_cell(scope)
    params: dict[str, Any] = {"model": model_id, "since": period.since,
                              "until": period.until}
    values = []
    for i, (stage, next_key, bucket) in enumerate(wanted):
        params.update({f"s{i}": stage, f"n{i}": next_key, f"b{i}": bucket})
        values.append(f"(%(s{i})s, %(n{i})s, %(b{i})s::int)")
    scope_sql = ""
    if channel is not None:
        scope_sql += " AND s.channel_id = %(channel)s"
        params["channel"] = channel
    if owner is not None:
        scope_sql += " AND s.owner_id = %(owner)s"
        params["owner"] = owner
    durations: dict[tuple[str, str, int], list[int]] = defaultdict(list)
    template = EXACT_SQL[kind]
    sql = (template.format(values=", ".join(values), scope=scope_sql, table="metrics_stagespell",
                           current=REPLACED)
           + " UNION ALL "
           + template.format(values=", ".join(values), scope=scope_sql,
                             table="metrics_todaystagespell", current=""))
    for stage, next_key, bucket, us in _raw(sql, params):
        durations[(stage, next_key, bucket)].append(us)
    middle: dict[Key, list[int]] = defaultdict(list)
    for where, ranks in wanted.items():
        found = sorted(durations.get(where, []))
        for key, rank in ranks:
            if rank > len(found) or len(found) != figures[key].histogram[where[2]]:
                raise Inconsistent(where)
            middle[key].append(found[rank - 1])
    # The live query averages the middle values in days (numeric) and rounds to 3 decimals:
    # the same from the exact microseconds.
    return {key: round(float(Fraction(sum(values), len(values) * US_PER_DAY)), 3)
            for key, values in middle.items()}


@_not_waiting
def median_days_in_stage(*, scope: Scope, model_id: int, period: Period
                         ) -> dict[str, dict[str, Any]]:
    """As metrics.selectors.median_days_in_stage, from the stored spells (a `stored_range`)."""
    figures = _figures(scope=scope, period=period, model_id=model_id, kinds=["exit"])
    medians = _medians(scope=scope, period=period, model_id=model_id, kind="exit",
                       figures=figures)
    return {key[1]: {"exits": figure.spells, "median_days": medians[key]}
            for key, figure in figures.items()}


@_not_waiting
def stage_conversions(*, scope: Scope, model_id: int, period: Period
                      ) -> dict[str, dict[str, Any]]:
    """As metrics.selectors.stage_conversions, from the stored spells (a `stored_range`)."""
    figures = _figures(scope=scope, period=period, model_id=model_id,
                       kinds=["entered", "next"])
    medians = _medians(scope=scope, period=period, model_id=model_id, kind="next",
                       figures=figures)
    result: dict[str, dict[str, Any]] = defaultdict(lambda: {"entered": 0, "next": {}})
    for key, figure in figures.items():
        kind, stage, next_key = key
        if kind == "entered":
            result[stage]["entered"] = figure.spells
        else:
            result[stage]["next"][next_key] = {"customers": figure.spells,
                                               "median_days": medians[key]}
    return dict(result)
