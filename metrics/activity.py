"""Activity over distinct customers for any range within the stored history — the overview's
relationship KPIs, the revenue factors, churn entries, the cohorts' current month — counted
(numpy) from per-day and per-block customer bitmaps and per-customer day columns. PostgreSQL
only; elsewhere, and before the history, computed live. docs/METRICS.md, "Activity: customer
bitmaps"."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection
from django.db.models import Count, Q
from django.utils import timezone
from pyroaring import BitMap

from core.db import raw_rows as _raw
from crm.models import INBOUND_EVENT_TYPES, Customer, Event, Order
from metrics.models import BitmapTable, CustomerBitmap, CustomerColumn
from metrics.periods import (
    Period,
    Scope,
    add_months,
    day_start,
    local_today,
    system_tz,
    today_max_age,
)

Kind = CustomerBitmap.Kind
EPOCH = date(2000, 1, 1)
SIZES = (256, 64, 16, 4, 1)
NEVER = 32767               # a day after every range (int16): not gone, never bought, …
LONG_AGO = -32768           # a day before every range
EXISTS, DELETED_7D, REFERRED = 1, 2, 4
COLUMNS = ("joined", "gone", "first_order", "grouped", "flags")
PATCH = "today"             # the columns of the customers changed today (frequent refresh)
PATCH_BUYERS = "today_buyers"   # the buyers whose past orders changed (frequent refresh)
INBOUND = sorted(INBOUND_EVENT_TYPES)
FRIEND_LOSS_DAYS = 7
CHURN_MODEL, CHURN_STAGE = "value", "churn"
KINDS = tuple(Kind.values)
BUILD_CHUNK_DAYS = 8        # days read per statement when building missing days
# A change committed just after a read may carry a time just before it: look back this far.
READ_MARGIN = timedelta(minutes=2)
# An order changed in a transaction begun before a day was read may carry an `updated_at` just
# before the reading and still be missing from it: look back this far.
CHANGE_MARGIN = timedelta(hours=1)
PIECES_KEPT = 400


def available() -> bool:
    return connection.vendor == "postgresql"


def history_days() -> int:
    """How many days before today the bitmaps keep (METRICS_BITMAP_DAYS)."""
    return int(getattr(settings, "METRICS_BITMAP_DAYS", 400))


def day_number(day: date) -> int:
    return (day - EPOCH).days


def day_of(number: int) -> date:
    return EPOCH + timedelta(days=number)


def pieces(first: date, last: date) -> list[tuple[date, int]]:
    """The days `first` … `last` as the fewest aligned blocks: (start, days) pairs."""
    a, b = day_number(first), day_number(last)
    result = []
    while a <= b:
        size = next(s for s in SIZES if a % s == 0 and a + s - 1 <= b)
        result.append((day_of(a), size))
        a += size
    return result


# --- Encoding -------------------------------------------------------------------------------

def _pack(raw: bytes) -> bytes:
    """Stored data is zlib-compressed: fewer bytes to send (bytea travels as hex text)."""
    return zlib.compress(raw, 6) if raw else b""


def _unpack(data: bytes | memoryview | None) -> bytes:
    return zlib.decompress(bytes(data)) if data else b""


def _ids(data: bytes | memoryview | None) -> np.ndarray:
    """Customer ids sent by PostgreSQL as concatenated `int4send` values."""
    return np.frombuffer(bytes(data or b""), dtype=">i4").astype(np.int64)


def _mark(bits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """bits[ids] = True for the ids within the array (a customer created since the columns
    were read falls outside and is masked out anyway)."""
    bits[ids[ids < len(bits)]] = True
    return bits


def _add(orders: np.ndarray, cents: np.ndarray, buyers: np.ndarray) -> None:
    """Add the buyers' (rows of id, n, cents) orders and cents per id, ids past the arrays (a
    customer created since the columns were read) left out."""
    ids = buyers["id"].astype(np.int64, copy=False)
    inside = ids < len(orders)
    if not inside.all():
        buyers, ids = buyers[inside], ids[inside]
    np.add.at(orders, ids, buyers["n"])
    np.add.at(cents, ids, buyers["cents"])


# A day's buyers as PostgreSQL sends them (`DAYS_SQL`): id, paid orders, revenue in cents.
PAID_DTYPE = np.dtype([("id", ">i4"), ("n", ">i4"), ("cents", ">i8")])
BUYERS = np.dtype([("id", np.int64), ("n", np.int64), ("cents", np.int64)])


def decode_paid(data: bytes | memoryview | None) -> np.ndarray:
    """Buyers as stored: their count, the gaps between the ascending ids and the orders
    (uint32), then the cents (int64), column by column so that they compress."""
    raw = _unpack(data) or bytes(4)
    count = int.from_bytes(raw[:4], "little")
    gaps, orders = np.frombuffer(raw, "<u4", 2 * count, 4).reshape(2, count)
    buyers = np.empty(count, BUYERS)
    np.cumsum(gaps, out=buyers["id"])
    buyers["n"] = orders
    buyers["cents"] = np.frombuffer(raw, "<i8", count, 4 + 8 * count)
    return buyers


def encode_paid(buyers: np.ndarray) -> bytes:
    ids = buyers["id"].astype(np.int64)
    return _pack(np.array([len(ids)], "<u4").tobytes()
                 + np.concatenate([np.diff(ids, prepend=0), buyers["n"]]).astype("<u4").tobytes()
                 + buyers["cents"].astype("<i8").tobytes())


def merge_paid(parts: list[np.ndarray]) -> np.ndarray:
    """The buyers of several pieces, their orders and cents summed."""
    size = max((int(part["id"].max()) + 1 for part in parts if len(part)), default=0)
    orders, cents = np.zeros(size, np.int64), np.zeros(size, np.int64)
    for part in parts:
        _add(orders, cents, part)
    buyers = np.zeros(np.count_nonzero(orders), BUYERS)    # a buyer has at least one order
    buyers["id"] = np.flatnonzero(orders)
    buyers["n"], buyers["cents"] = orders[buyers["id"]], cents[buyers["id"]]
    return buyers


# --- Reading the days from the events and orders -------------------------------------------

DAYS_SQL = {
    Kind.INBOUND: """
        SELECT x.d, string_agg(int4send(x.customer_id::int), ''::bytea) FROM (
            SELECT DISTINCT (occurred_at AT TIME ZONE %(tz)s)::date AS d, customer_id
            FROM crm_event WHERE type = ANY(%(inbound)s)
            AND occurred_at >= %(since)s AND occurred_at < %(until)s) x
        GROUP BY x.d""",
    Kind.CHURN: """
        SELECT x.d, string_agg(int4send(x.customer_id::int), ''::bytea) FROM (
            SELECT DISTINCT (at AT TIME ZONE %(tz)s)::date AS d, customer_id
            FROM lifecycle_stagetransition
            WHERE model_id = (SELECT id FROM lifecycle_stagemodel WHERE key = %(churn_model)s)
            AND to_key = %(churn_stage)s AND from_key <> ''
            AND at >= %(since)s AND at < %(until)s) x
        GROUP BY x.d""",
    Kind.PAID: """
        SELECT x.d, string_agg(int4send(x.customer_id::int) || int4send(x.n::int)
                               || int8send(x.cents), ''::bytea ORDER BY x.customer_id) FROM (
            SELECT (placed_at AT TIME ZONE %(tz)s)::date AS d, customer_id, COUNT(*) AS n,
                   (SUM(amount) * 100)::bigint AS cents
            FROM crm_order WHERE status = %(paid)s
            AND placed_at >= %(since)s AND placed_at < %(until)s
            GROUP BY 1, 2) x
        GROUP BY x.d""",
}


def _params(**extra) -> dict[str, Any]:
    return {"tz": settings.TIME_ZONE, "inbound": INBOUND, "paid": Order.Status.PAID,
            "churn_model": CHURN_MODEL, "churn_stage": CHURN_STAGE,
            "friend_deleted": Event.Type.FRIEND_DELETED,
            "group_joined": Event.Type.GROUP_JOINED, "active": Customer.Status.ACTIVE,
            "refunded": Order.Status.REFUNDED, "epoch": EPOCH, **extra}


def read_live(kind: str, since: datetime, until: datetime) -> list[tuple[date, Any]]:
    """(day, the customer ids or for `paid` the buyers) of each day of [since, until)."""
    rows = _raw(DAYS_SQL[kind], _params(since=since, until=until))
    return [(day, np.frombuffer(data, PAID_DTYPE) if kind == Kind.PAID else _ids(data))
            for day, data in rows]


def read_days(kind: str, first: date, last: date) -> dict[date, bytes]:
    """The days `first` … `last` of one kind, encoded as stored (days without anyone absent)."""
    return {day: (encode_paid(piece) if kind == Kind.PAID
                  else BitMap(piece.astype(np.uint32)).serialize() if len(piece) else b"")
            for day, piece in read_live(kind, day_start(first),
                                        day_start(last + timedelta(days=1)))}


# --- The customer columns --------------------------------------------------------------------

def _day_sql(expression: str, missing: str) -> str:
    """The day number of a timestamp (system time zone), clamped to int16; `missing` if NULL."""
    return (f"COALESCE(GREATEST(LEAST(({expression} AT TIME ZONE %(tz)s)::date - %(epoch)s::date,"
            f" {NEVER - 1}), {LONG_AGO + 1}), {missing})")


COLUMNS_SQL = f"""
SELECT string_agg(int4send(c.id::int)
       || int2send({_day_sql("c.joined_at", str(NEVER))}::smallint)
       || int2send((CASE WHEN c.status = %(active)s THEN {NEVER}
                         ELSE {_day_sql("c.status_changed_at", str(LONG_AGO))} END)::smallint)
       || int2send({_day_sql("c.first_order_at", str(NEVER))}::smallint)
       || int2send({_day_sql("g.first_at", str(NEVER))}::smallint)
       || int2send(({EXISTS}
                    + CASE WHEN d.customer_id IS NOT NULL THEN {DELETED_7D} ELSE 0 END
                    + CASE WHEN c.referred_by_id IS NOT NULL THEN {REFERRED} ELSE 0 END
                   )::smallint), ''::bytea)
FROM crm_customer c
{{joins}}
"""
# Every customer: the first group joined since joining and the deletions within 7 days of
# joining, aggregated once.
ALL_JOINS = f"""
LEFT JOIN (
    SELECT m.customer_id, MIN(m.joined_at) AS first_at FROM crm_groupmembership m
    JOIN crm_customer j ON j.id = m.customer_id
    WHERE m.joined_at >= j.joined_at
    GROUP BY m.customer_id
) g ON g.customer_id = c.id
LEFT JOIN (
    SELECT DISTINCT e.customer_id FROM crm_event e JOIN crm_customer j ON j.id = e.customer_id
    WHERE e.type = %(friend_deleted)s AND e.occurred_at >= j.joined_at
      AND e.occurred_at < j.joined_at + interval '{FRIEND_LOSS_DAYS} days'
) d ON d.customer_id = c.id
"""
# A few customers (`%(ids)s`): the same, looked up per customer in the indexes.
SOME_JOINS = f"""
LEFT JOIN LATERAL (
    SELECT MIN(m.joined_at) AS first_at FROM crm_groupmembership m
    WHERE m.customer_id = c.id AND m.joined_at >= c.joined_at
) g ON true
LEFT JOIN LATERAL (
    SELECT e.customer_id FROM crm_event e
    WHERE e.customer_id = c.id AND e.type = %(friend_deleted)s AND e.occurred_at >= c.joined_at
      AND e.occurred_at < c.joined_at + interval '{FRIEND_LOSS_DAYS} days' LIMIT 1
) d ON true
WHERE c.id = ANY(%(ids)s)
"""
COLUMN_DTYPE = np.dtype([("id", ">i4"), ("joined", ">i2"), ("gone", ">i2"),
                         ("first_order", ">i2"), ("grouped", ">i2"), ("flags", ">i2")])

# The customers whose columns may have changed since %(at)s: new customers, a status change,
# a (new) first order, an order refunded or recorded late (the first order may move), a
# deletion (within 7 days of joining) — and, kind 1, a group joined (which matters only to
# those without a group since joining).
CHANGED_SQL = """
SELECT k, string_agg(int4send(id::int), ''::bytea) FROM (
    SELECT id, 0 AS k FROM crm_customer WHERE id > %(max_id)s
    UNION SELECT id, 0 FROM crm_customer WHERE joined_at >= %(at)s
    UNION SELECT id, 0 FROM crm_customer WHERE status = ANY(%(statuses)s)
                                         AND status_changed_at >= %(at)s
    UNION SELECT id, 0 FROM crm_customer WHERE first_order_at >= %(at)s
    UNION SELECT customer_id, 0 FROM crm_order WHERE updated_at >= %(at)s
                                               AND (status = %(refunded)s OR placed_at < %(at)s)
    UNION SELECT customer_id, 0 FROM crm_event WHERE type = %(friend_deleted)s
                                               AND occurred_at >= %(at)s
    UNION SELECT customer_id, 1 FROM crm_event WHERE type = %(group_joined)s
                                               AND occurred_at >= %(at)s
) x GROUP BY k
"""


def _read_columns(ids: np.ndarray | None = None) -> np.ndarray:
    """Rows (id and the columns) of every customer, or of the customers `ids`."""
    if ids is not None and not len(ids):
        return np.zeros(0, dtype=COLUMN_DTYPE)
    sql, params = ((COLUMNS_SQL.format(joins=ALL_JOINS), _params()) if ids is None else
                   (COLUMNS_SQL.format(joins=SOME_JOINS), _params(ids=[int(i) for i in ids])))
    (data,), = _raw(sql, params)
    return np.frombuffer(bytes(data or b""), dtype=COLUMN_DTYPE)


@dataclass
class Columns:
    """The customers' columns as int16 arrays of `size` entries (indexed by id)."""

    joined: np.ndarray
    gone: np.ndarray
    first_order: np.ndarray
    grouped: np.ndarray
    flags: np.ndarray

    @property
    def size(self) -> int:
        return len(self.flags)


def changed_rows(*, at: datetime, max_id: int, grouped: np.ndarray | None) -> np.ndarray:
    """The columns, read now, of the customers that may have changed since `at` (and every id
    above `max_id`); a group joined counts only for those without one since joining in
    `grouped` (None: not wanted)."""
    found = dict(_raw(CHANGED_SQL, _params(
        max_id=max_id, at=at, statuses=[value for value, _label in Customer.Status.choices])))
    ids = _ids(found.get(0))
    if grouped is not None:
        joined_group = _ids(found.get(1))
        inside = joined_group < len(grouped)
        ids = np.union1d(ids, np.concatenate([
            joined_group[~inside], joined_group[inside][grouped[joined_group[inside]] == NEVER]]))
    return _read_columns(ids)


_columns: dict[tuple, bytes] = {}   # (name, row version) -> the column, inflated


def load_columns(*, names: tuple[str, ...], table: BitmapTable) -> Columns:
    """The stored columns `names` (the others empty), with today's changed customers as the
    frequent refresh read them and those changed since read now, past the largest id now."""
    wanted = {*names, "flags"}
    # Kept inflated by row version (xmin, ctid: an update writes a new one); today's changed
    # customers (PATCH) are read each time.
    versions = dict(_raw("SELECT name, xmin::text || ctid::text FROM metrics_customercolumn "
                         "WHERE name = ANY(%s)", [sorted(wanted)]))
    known = {name: _columns[(name, version)] for name, version in versions.items()
             if (name, version) in _columns}
    stored = {name: _unpack(data) for name, data in CustomerColumn.objects.filter(
        name__in=[*(wanted - set(known)), PATCH]).values_list("name", "data")}
    for key in [key for key in _columns if versions.get(key[0], key[1]) != key[1]]:
        del _columns[key]
    for name in wanted - set(known):
        if name in stored and name in versions:
            _columns[(name, versions[name])] = stored[name]
    stored.update(known)
    flags = np.frombuffer(stored.get("flags", b""), dtype="<i2")
    at = min(table.read_at, day_start(local_today()))
    layers = []
    if PATCH in stored and table.patch_at is not None and table.patch_at > table.read_at:
        layers.append(np.frombuffer(stored[PATCH], dtype=COLUMN_DTYPE))
        at = table.patch_at - READ_MARGIN
    grouped = None
    if "grouped" in names:
        grouped = np.frombuffer(stored.get("grouped", b""), dtype="<i2").copy()
        if layers:          # with the patch applied: the stored state before now
            inside = layers[0]["id"] < len(grouped)
            grouped[layers[0]["id"][inside].astype(np.int64)] = layers[0]["grouped"][inside]
    layers.append(changed_rows(at=at, max_id=len(flags) - 1, grouped=grouped))
    (universe,), = _raw("SELECT COALESCE(MAX(id), 0) + 1 FROM crm_customer")
    size = max([int(universe), len(flags)]
               + [int(rows["id"].max()) + 1 for rows in layers if len(rows)])
    arrays = {name: np.zeros(0, np.int16) for name in COLUMNS}
    for name in wanted:
        column = arrays[name] = np.zeros(size, np.int16)
        values = np.frombuffer(stored.get(name, b""), dtype="<i2")
        column[:len(values)] = values
        for rows in layers:
            column[rows["id"].astype(np.int64)] = rows[name]
    return Columns(**arrays)


def refresh_today(table: BitmapTable, today: date) -> int:
    """Store today's changes: the columns of the customers changed since the columns were read,
    the buyers with an earlier order changed since the pieces were read, and today's pieces so
    far. Call holding the `BitmapTable` row; the number of customers."""
    stored = {name: _unpack(data) for name, data in CustomerColumn.objects.filter(
        name__in=["flags", "grouped"]).values_list("name", "data")}
    rows = changed_rows(at=min(table.read_at, day_start(today)),
                        max_id=len(stored.get("flags", b"")) // 2 - 1,
                        grouped=np.frombuffer(stored.get("grouped", b""), dtype="<i2"))
    buyers = _changed_buyer_ids(table.read_at - CHANGE_MARGIN, table.first_day, day_start(today))
    for name, data in ((PATCH, rows.tobytes()), (PATCH_BUYERS, buyers.astype(">i4").tobytes())):
        CustomerColumn.objects.update_or_create(name=name, defaults={"data": _pack(data)})
    _build_days([today])
    return len(rows)


# --- The nightly refresh ----------------------------------------------------------------------

@dataclass
class RefreshResult:
    first_day: date | None = None
    last_day: date | None = None
    days_built: int = 0
    days_repaired: int = 0
    repaired: list = field(default_factory=list, repr=False)
    blocks_built: int = 0
    customers: int = 0
    duration_ms: int = 0


def _build_days(days: list[date]) -> int:
    """Read and store (replace) the pieces of the given days, a few days per statement."""
    runs: list[list[date]] = []
    for day in sorted(days):
        if runs and runs[-1][-1] == day - timedelta(days=1) and len(runs[-1]) < BUILD_CHUNK_DAYS:
            runs[-1].append(day)
        else:
            runs.append([day])
    for run in runs:
        as_of = timezone.now()
        for kind in KINDS:
            found = read_days(kind, run[0], run[-1])
            CustomerBitmap.objects.filter(kind=kind, days=1, start__in=run).delete()
            CustomerBitmap.objects.bulk_create([
                CustomerBitmap(kind=kind, start=day, days=1, data=found.get(day, b""),
                               as_of=as_of) for day in run])
    return len(days)


def _build_blocks(size: int, starts: list[date]) -> None:
    """Store (replace) the blocks of `size` days from `starts`, each from the four below it."""
    child = size // 4
    children = {start: [start + timedelta(days=i * child) for i in range(4)] for start in starts}
    wanted = sorted({c for group in children.values() for c in group})
    for kind in KINDS:
        found = {start: (data, as_of) for start, data, as_of in CustomerBitmap.objects.filter(
            kind=kind, days=child, start__in=wanted).values_list("start", "data", "as_of")}
        blocks = []
        for start, group in children.items():
            rows = [found[c] for c in group if c in found]
            if len(rows) != 4:
                raise RuntimeError(f"bitmap block {kind} {start} +{size}: children missing")
            if kind == Kind.PAID:
                data = encode_paid(merge_paid([decode_paid(d) for d, _a in rows]))
            else:
                data = BitMap.union(BitMap(), *(BitMap.deserialize(bytes(d))
                                                for d, _a in rows if d)).serialize()
            blocks.append(CustomerBitmap(kind=kind, start=start, days=size, data=data,
                                         as_of=min(a for _d, a in rows)))
        CustomerBitmap.objects.filter(kind=kind, days=size, start__in=starts).delete()
        CustomerBitmap.objects.bulk_create(blocks, batch_size=50)


def refresh(today: date, *, since: datetime | None = None,
            rebuild: tuple[date, date] | None = None) -> RefreshResult:
    """Bring the bitmaps up to the day before `today`: drop the pieces leaving the history,
    build the days not stored (and those of `rebuild`, first and last day), rebuild those with
    an order recorded or changed since the last refresh began reading (`since`), the blocks
    over them, and every customer's columns. Call holding the `BitmapTable` row."""
    started = time.monotonic()
    last = today - timedelta(days=1)
    first = today - timedelta(days=history_days())
    result = RefreshResult(first_day=first, last_day=last)
    # Blocks wholly in [first, last] only.
    CustomerBitmap.objects.filter(Q(start__lt=first) | Q(start__gt=last)).delete()
    for start, days in CustomerBitmap.objects.filter(days__gt=1).values_list("start", "days"):
        if start + timedelta(days=days - 1) > last:
            CustomerBitmap.objects.filter(start=start, days=days).delete()
    complete = set(CustomerBitmap.objects.filter(days=1).values("start").annotate(
        n=Count("kind")).filter(n=len(KINDS)).values_list("start", flat=True))
    missing = [d for d in (first + timedelta(days=i) for i in range((last - first).days + 1))
               if d not in complete or (rebuild is not None and rebuild[0] <= d <= rebuild[1])]
    if since:
        changed_days = _raw("""
            SELECT DISTINCT (placed_at AT TIME ZONE %(tz)s)::date FROM crm_order
            WHERE updated_at >= %(since)s AND placed_at >= %(first)s AND placed_at < %(until)s""",
                            _params(since=since - CHANGE_MARGIN, first=day_start(first),
                                    until=day_start(today)))
        built = set(missing)
        result.repaired = [d for (d,) in changed_days if d not in built]
    result.days_built = _build_days(missing)
    result.days_repaired = _build_days(result.repaired)
    changed = {day_number(d) for d in [*missing, *result.repaired]}
    # Blocks, bottom up: each one whose days changed (or that is not stored yet).
    existing = set(CustomerBitmap.objects.filter(kind=Kind.PAID, days__gt=1)
                   .values_list("start", "days"))
    for size in reversed(SIZES[:-1]):
        begin = day_number(first) + (-day_number(first)) % size
        starts = [a for a in range(begin, day_number(last) - size + 2, size)
                  if any(a <= d < a + size for d in changed) or (day_of(a), size) not in existing]
        changed.update(starts)      # so the blocks above them are rebuilt too
        if starts:
            _build_blocks(size, [day_of(a) for a in starts])
            result.blocks_built += len(starts)
    rows = _read_columns()
    columns = np.zeros((len(COLUMNS), int(rows["id"].max()) + 1 if len(rows) else 0), "<i2")
    for i, name in enumerate(COLUMNS):
        columns[i, rows["id"].astype(np.int64)] = rows[name]
        CustomerColumn.objects.update_or_create(name=name,
                                                defaults={"data": _pack(columns[i].tobytes())})
    result.customers = columns.shape[1]
    result.duration_ms = round((time.monotonic() - started) * 1000)
    return result


def storage_bytes() -> int:
    (n,), = _raw("SELECT COALESCE(pg_total_relation_size('metrics_customerbitmap'), 0)"
                 " + COALESCE(pg_total_relation_size('metrics_customercolumn'), 0)", {})
    return int(n)


# --- Answers ----------------------------------------------------------------------------------

def header() -> BitmapTable | None:
    return BitmapTable.objects.first()


def stored_period(period: Period, table: BitmapTable | None = None) -> bool:
    """Whether the bitmaps hold every day of `period` before today."""
    if not available():
        return False
    table = table if table is not None else header()
    return (table is not None and table.read_at is not None
            and table.last_day == local_today() - timedelta(days=1)
            and table.first_day is not None and period.start >= table.first_day)


# Pieces decoded by this process, by row id: a piece is rewritten as a new row, so an entry
# never goes stale, only unused (the oldest are dropped).
_pieces: dict[int, Any] = {}


def _decoded(queryset) -> list[tuple[str, Any]] | None:
    """(kind, decoded data) of the pieces: those decoded before from this process's memory, the
    others read and decoded; None when one was rewritten between the two reads (compute live)."""
    heads = list(queryset.values_list("pk", "kind"))
    missing = [pk for pk, _kind in heads if pk not in _pieces]
    for pk, kind, data in CustomerBitmap.objects.filter(pk__in=missing).values_list(
            "pk", "kind", "data"):
        _pieces[pk] = (decode_paid(data) if kind == Kind.PAID
                       else BitMap.deserialize(bytes(data)) if data else BitMap())
    while len(_pieces) > PIECES_KEPT:
        _pieces.pop(next(iter(_pieces)))
    if any(pk not in _pieces for pk, _kind in heads):
        return None
    return [(kind, _pieces[pk]) for pk, kind in heads]


CHANGED_BUYERS_SQL = """
SELECT string_agg(DISTINCT int4send(x.customer_id::int), ''::bytea) FROM (
    SELECT customer_id FROM crm_order
    WHERE updated_at >= %(since)s AND placed_at >= %(first)s AND placed_at < %(t0)s) x
"""
CHANGED_ORDERS_SQL = """
SELECT string_agg(int4send(o.customer_id::int) || int2send(o.d::smallint)
                  || int4send(o.n::int) || int8send(o.cents), ''::bytea)
FROM (SELECT customer_id, (placed_at AT TIME ZONE %(tz)s)::date - %(epoch)s::date AS d,
             COUNT(*) AS n, (SUM(amount) * 100)::bigint AS cents
      FROM crm_order WHERE customer_id = ANY(%(ids)s) AND status = %(paid)s
      AND placed_at >= %(first)s AND placed_at < %(t0)s GROUP BY 1, 2) o
"""
CHANGED_DTYPE = np.dtype([("id", ">i4"), ("day", ">i2"), ("n", ">i4"), ("cents", ">i8")])


def _changed_buyer_ids(since: datetime, first: date, until: datetime) -> np.ndarray:
    """The buyers with an order placed in [first, until) recorded or changed since `since`."""
    (data,), = _raw(CHANGED_BUYERS_SQL, _params(since=since, first=day_start(first), t0=until))
    return _ids(data)


@dataclass
class ChangedBuyers:
    """The customers with an order recorded or changed since the pieces were read (`ids`) and
    their paid orders per day now (`rows`: id, day number, orders, cents); with today's pieces
    stored and recent, the time from which today is read live (`today_since`)."""

    ids: np.ndarray
    rows: np.ndarray
    today_since: datetime | None = None


def _patch_is_fresh(table: BitmapTable) -> bool:
    """Whether the frequent refresh's part is newer than the nightly read, today's and recent."""
    if table.patch_at is None or table.patch_at <= table.read_at:
        return False
    return ((timezone.now() - table.patch_at).total_seconds() <= today_max_age()
            and timezone.localdate(table.patch_at, timezone=system_tz()) == local_today())


def _changed_buyers(table: BitmapTable, first: date, last: date) -> ChangedBuyers:
    """The buyers to count again for ranges within `first` … `last`: those the frequent
    refresh found and those with an order recorded or changed since, with their paid orders of
    the days before today (and of today, when a range reaches it and today's piece is used)."""
    ids, since = np.zeros(0, np.int64), table.read_at - CHANGE_MARGIN
    stored = None
    if table.patch_at is not None and table.patch_at > table.read_at:
        stored = (CustomerColumn.objects.filter(name=PATCH_BUYERS)
                  .values_list("data", flat=True).first())
    if stored is not None:
        ids, since = _ids(_unpack(stored)), table.patch_at - READ_MARGIN
    today = local_today()
    today_since = (table.patch_at - READ_MARGIN
                   if last >= today and _patch_is_fresh(table) else None)
    until = day_start(today + timedelta(days=1) if today_since else today)
    ids = np.union1d(ids, _changed_buyer_ids(since, first, until))
    rows = np.zeros(0, dtype=CHANGED_DTYPE)
    if len(ids):
        (data,), = _raw(CHANGED_ORDERS_SQL, _params(ids=[int(i) for i in ids],
                                                    first=day_start(first), t0=until))
        rows = np.frombuffer(bytes(data or b""), dtype=CHANGED_DTYPE)
    return ChangedBuyers(ids, rows, today_since)


@dataclass
class RangeSets:
    """One range's customers: inbound and churn (bool arrays), paid orders and revenue in
    cents per customer (int arrays)."""

    inbound: np.ndarray | None = None
    churn: np.ndarray | None = None
    orders: np.ndarray | None = None
    cents: np.ndarray | None = None


def _range_sets(period: Period, kinds: tuple[str, ...], size: int,
                changed: ChangedBuyers | None = None) -> RangeSets | None:
    """The range's stored pieces (days before today, and today as the frequent refresh read it
    when recent, `changed.today_since`), the buyers whose orders changed since the pieces were
    read (`changed`) counted again, and the rest of today read live; None when a piece the
    header says is stored is missing (being rewritten: compute live)."""
    today = local_today()
    last = min(period.end, today - timedelta(days=1))
    wanted = pieces(period.start, last) if last >= period.start else []
    today_since = changed.today_since if changed is not None else None
    with_today = today_since is not None and period.start <= today <= period.end
    if with_today:
        wanted.append((today, 1))
    rows = []
    if wanted:
        exact = Q()
        for start, days in wanted:
            exact |= Q(start=start, days=days)
        rows = _decoded(CustomerBitmap.objects.filter(exact, kind__in=kinds))
        if rows is None or len(rows) != len(wanted) * len(kinds):
            return None
    # Today (unless stored) and any later day of the range (events dated ahead) read live;
    # with today stored, what happened since it was read.
    first_live = today + timedelta(days=1) if with_today else max(period.start, today)
    live = ([(day_start(first_live), day_start(period.end + timedelta(days=1)))]
            if period.end >= first_live else [])
    through = today if with_today else last
    sets = RangeSets()
    for kind in kinds:
        datas = [data for of, data in rows if of == kind]
        if kind == Kind.PAID:
            sets.orders, sets.cents = np.zeros(size, np.int64), np.zeros(size, np.int64)
            for part in datas:
                _add(sets.orders, sets.cents, part)
            # Customers with an order recorded or changed (refunded) since the pieces were
            # read: their orders and revenue of the stored days counted again now.
            if wanted and changed is not None and len(changed.ids):
                redo = changed.ids[changed.ids < size]
                sets.orders[redo] = sets.cents[redo] = 0
                now = changed.rows
                now = now[(now["day"] >= day_number(period.start))
                          & (now["day"] <= day_number(through))]
                _add(sets.orders, sets.cents, now)
            for span in live:
                for _day, part in read_live(kind, *span):
                    _add(sets.orders, sets.cents, part)
        else:
            bitmap = BitMap.union(BitMap(), *datas)
            bits = _mark(np.zeros(size, bool), np.frombuffer(bitmap.to_array(), np.uint32))
            since_read = [(today_since, day_start(today + timedelta(days=1)))] if with_today else []
            for span in [*live, *since_read]:
                for _day, ids in read_live(kind, *span):
                    _mark(bits, ids)
            setattr(sets, kind, bits)
    return sets


def _masked(scope: Scope, columns: Columns) -> np.ndarray:
    """The customers in scope (current channel and owner) existing now."""
    mask = (columns.flags & EXISTS) != 0
    if scope.restricted:
        customers = scope.apply(Customer.objects.order_by()).values("pk")
        ids = np.zeros(0, np.int64)
        if not customers.query.is_empty():
            sql, params = customers.query.sql_with_params()
            (data,), = _raw(f"SELECT string_agg(int4send(s.pk::int), ''::bytea) FROM ({sql}) s",
                            list(params))
            ids = _ids(data)
        mask &= _mark(np.zeros(columns.size, bool), ids)
    return mask


def _domain(columns: Columns, period: Period) -> np.ndarray:
    """In the private domain during the period: joined by its end, not gone before its start."""
    return ((columns.joined <= day_number(period.end))
            & (columns.gone >= day_number(period.start)))


def relationship_figures(*, scope: Scope, period: Period) -> dict[str, int] | None:
    """The overview's counts over distinct customers for `period` (and its preceding range),
    and the customers entering the value lifecycle's churn in it (`churned`), or None when
    the bitmaps do not hold them."""
    table = header()
    previous = period.previous()
    if not stored_period(previous, table):
        return None
    columns = load_columns(names=COLUMNS, table=table)
    kinds = (Kind.INBOUND, Kind.PAID)
    changed = _changed_buyers(table, previous.start, period.end)
    now = _range_sets(period, (*kinds, Kind.CHURN), columns.size, changed)
    before = _range_sets(previous, kinds, columns.size, changed)
    if now is None or before is None:
        return None
    mask = _masked(scope, columns)
    s, e = day_number(period.start), day_number(period.end)
    joined = mask & (columns.joined >= s) & (columns.joined <= e)
    domain = mask & _domain(columns, period)
    active = mask & (now.inbound | (now.orders > 0))
    active_before = mask & (before.inbound | (before.orders > 0))
    new_buyers = domain & (columns.first_order >= s)
    figures = {
        "joined": joined,
        "deleted_within_7_days": joined & ((columns.flags & DELETED_7D) != 0),
        "joined_group": joined & (columns.grouped <= e),
        "referred_customers": joined & ((columns.flags & REFERRED) != 0),
        "customers": domain,
        "never_bought_before": new_buyers,
        "first_time_buyers": new_buyers & (columns.first_order <= e),
        "interacting": domain & now.inbound,
        "active": active,
        "active_previous": active_before,
        "retained": active & active_before,
        "buyers": mask & (now.orders > 0),
        "repeat_buyers": mask & (now.orders >= 2),
        "churned": mask & now.churn,
    }
    return {name: int(np.count_nonzero(bits)) for name, bits in figures.items()}


@dataclass
class RevenueFigures:
    traffic: int
    buyers: int
    paid_orders: int
    revenue: Decimal


def revenue_figures(*, scope: Scope, periods: list[Period]) -> list[RevenueFigures | None]:
    """Traffic, buyers, paid orders and revenue of each period (the columns and the scope read
    once), None for a period the bitmaps do not hold."""
    table = header()
    held = [period for period in periods if stored_period(period, table)]
    if not held:
        return [None] * len(periods)
    columns = load_columns(names=("joined", "gone"), table=table)
    mask = _masked(scope, columns)
    changed = _changed_buyers(table, min(p.start for p in held), max(p.end for p in held))
    result: list[RevenueFigures | None] = []
    for period in periods:
        sets = _range_sets(period, (Kind.PAID,), columns.size, changed) if period in held else None
        if sets is None:
            result.append(None)
            continue
        buyers = mask & (sets.orders > 0)
        domain = _domain(columns, period)
        outside = int(np.count_nonzero(buyers & ~domain))
        result.append(RevenueFigures(
            traffic=int(np.count_nonzero(mask & domain)) + outside,
            buyers=int(np.count_nonzero(buyers)),
            paid_orders=int(sets.orders[mask].sum()),
            revenue=Decimal(int(sets.cents[mask].sum())) / 100))
    return result


def churned(*, scope: Scope, period: Period) -> int | None:
    """Distinct customers who entered the value lifecycle's churn stage in `period`, or None
    when the bitmaps do not hold them."""
    table = header()
    if not stored_period(period, table):
        return None
    columns = load_columns(names=(), table=table)
    sets = _range_sets(period, (Kind.CHURN,), columns.size)
    return None if sets is None else int(np.count_nonzero(_masked(scope, columns) & sets.churn))


def cohort_month_active(*, scope: Scope, month: date, cohorts: list[date]
                        ) -> dict[date, int] | None:
    """Customers active (an inbound event or a paid order) in `month` so far, per join month
    of `cohorts`; None when the bitmaps do not hold the month's days before today."""
    table = header()
    period = Period(month, add_months(month, 1) - timedelta(days=1))
    if not cohorts or not stored_period(period, table):
        return None
    columns = load_columns(names=("joined",), table=table)
    sets = _range_sets(period, (Kind.INBOUND, Kind.PAID), columns.size,
                       _changed_buyers(table, period.start, period.end))
    if sets is None:
        return None
    active = _masked(scope, columns) & (sets.inbound | (sets.orders > 0))
    return {cohort: int(np.count_nonzero(
        active & (columns.joined >= day_number(cohort))
        & (columns.joined < day_number(add_months(cohort, 1)))))
        for cohort in cohorts}
