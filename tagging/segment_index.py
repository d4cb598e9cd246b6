"""The segment index: segment previews answered from columns in memory instead of a pass over
every customer.

A preview is asked for again and again while an operator builds a condition, and each is a new
combination of leaves. Evaluated in SQL, every one is a pass over a million customers probing a
hashed set of several hundred thousand ids per leaf: 0.5–3 s at 1M customers on two cores
(docs/PERFORMANCE.md §4). Here the data those leaves read is stored, every few minutes, as
numpy arrays indexed by customer id (`build`, beat task `tagging.tasks.build_segment_index`):

- `customers`: per customer id, whether the row exists, its owner, channel, gender, status,
  opt-out, paid orders, spend in cents, city (as a code into the build's list of cities) and
  the five date-times of the language (microseconds since 2000-01-01 UTC; NULL as the smallest
  int64);
- `attributes`: per attribute key, its string value as a code into the key's values, "another
  JSON type" or "no value" (missing or JSON null);
- `tags`: every customer tag as (tag, customer, expiry — 'infinity' for none), sorted by tag;
- `orders`: the paid orders (customer, placed at, cents) and their items' categories;
- `groups`: the group memberships (customer, group, joined at, current or left);
- `events:<type>`: the per-customer event counts of a type (`crm.EventCount`: total, since
  joining, the five latest times).

A preview then evaluates the tree as boolean arrays (`evaluate`): `all` / `any` / `not` are
`&` / `|` / complement, each leaf a comparison of a column with the same meaning as its SQL
compiler — the tests hold the two to the same customers, leaf by leaf (tests/core). Windows
("within 30 days", tag expiry) are measured from the moment of the request; the data is as of
the build (`as_of` in the answer). Apps add parts of their own (`crm.extensions.segment_index_parts`): lifecycle's `stages`, each
customer's stage per model. A leaf the index cannot answer — names, phones
and external ids, `contains`, attributes compared as numbers or ordered, an event
count above 5 within a window — sends the whole preview to SQL, as does an index older than
`SEGMENT_INDEX_MAX_AGE_MINUTES`, SQLite, or a request for an exact (`exact`) answer.

The build reads one consistent snapshot (REPEATABLE READ) through binary COPY; two builds at
once are one build (an advisory lock), and the two newest builds are kept so that a process
loading parts of the previous one is not cut off. A process keeps the parts of one build it has
used (`_loaded`) and loads a part the first time a condition reads it; when a newer build
appears it loads the parts in use in the background and switches once they are in (`current`).
"""

from __future__ import annotations

import io
import logging
import math
import threading
import time
import zlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.utils import timezone

from core import access, conditions
from core.db import copy_columns, heavy_statements
from core.db import raw_rows as _rows
from crm import extensions as crm_extensions
from crm.conditions import ATTRIBUTE_KEY
from crm.models import EVENT_COUNT_LATEST as LATEST
from crm.models import Channel, Customer, Event, Group, Order
from tagging.models import SegmentIndex, SegmentIndexPart

logger = logging.getLogger(__name__)

LOCK_KEY = 0x5E6_1D0            # pg advisory lock: one build at a time
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
NULL_TIME = np.iinfo(np.int64).min          # '-infinity': NULL date-times
MAX_CODES = 50_000              # distinct values a text column may have to be indexed
MAX_ATTRIBUTE_KEYS = 200
NO_VALUE, OTHER_TYPE = -2, -1   # attribute codes besides the index of a string value
KEEP_BUILDS = 2
DATETIMES = ("joined_at", "last_active_at", "first_order_at", "last_order_at",
             "status_changed_at")


def available() -> bool:
    return connection.vendor == "postgresql" and interval_minutes() > 0


def interval_minutes() -> int:
    return int(getattr(settings, "SEGMENT_INDEX_MINUTES", 10))


def max_age() -> timedelta:
    return timedelta(minutes=int(getattr(settings, "SEGMENT_INDEX_MAX_AGE_MINUTES", 30)))


def micros(moment: datetime) -> int:
    """A date-time as the index stores it: microseconds since 2000-01-01 UTC."""
    return (moment - PG_EPOCH) // timedelta(microseconds=1)


# --- Build ----------------------------------------------------------------------------------

def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return zlib.compress(buffer.getvalue(), 1)


def _unpack(data: bytes | memoryview) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(zlib.decompress(data)), allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def _dense(size: int, ids: np.ndarray, values: np.ndarray, fill) -> np.ndarray:
    out = np.full(size, fill, dtype=values.dtype)
    out[ids] = values
    return out


def _customers_part() -> dict[str, np.ndarray]:
    cities = [c for (c,) in _rows("SELECT DISTINCT city FROM crm_customer")]
    if len(cities) > MAX_CODES:
        cities = []                     # too many to index: city leaves are answered in SQL
    genders, statuses = list(Customer.Gender.values), list(Customer.Status.values)
    times = ", ".join(f"COALESCE(c.{name}, '-infinity')" for name in DATETIMES)
    columns = copy_columns(
        "SELECT c.id::int4, c.owner_id::int4, COALESCE(c.channel_id, 0)::int4, "
        "COALESCE(array_position(%s::text[], c.gender::text), 0)::int2, "
        "COALESCE(array_position(%s::text[], c.status::text), 0)::int2, "
        "c.opted_out, c.orders_count::int4, (c.total_spent * 100)::int8, "
        f"COALESCE(ci.n, 0)::int4, {times} "
        "FROM crm_customer c LEFT JOIN unnest(%s::text[]) WITH ORDINALITY AS ci(v, n) "
        "ON ci.v = c.city",
        [genders, statuses, cities],
        ["int4", "int4", "int4", "int2", "int2", "bool", "int4", "int8", "int4",
         *["timestamptz"] * len(DATETIMES)])
    ids = columns[0]
    size = int(ids.max()) + 1 if len(ids) else 1
    names = ("owner", "channel", "gender", "status", "opted_out", "orders_count", "cents",
             "city", *DATETIMES)
    fills = {"owner": 0, "channel": 0, "gender": 0, "status": 0, "opted_out": False,
             "orders_count": 0, "cents": 0, "city": 0}
    part = {name: _dense(size, ids, column, fills.get(name, NULL_TIME))
            for name, column in zip(names, columns[1:], strict=True)}
    part["exists"] = _dense(size, ids, np.ones(len(ids), dtype=bool), False)
    part["cities"] = np.array(cities or [""], dtype=str)
    part["cities_indexed"] = np.array(bool(cities))
    part["genders"], part["statuses"] = np.array(genders), np.array(statuses)
    return part


def _attributes_part(size: int) -> dict[str, np.ndarray]:
    """Per key (of the keys a condition may name), one int32 code per customer: the index of
    its string value in `values:<key>`, OTHER_TYPE (a number, a boolean, a list, an object) or
    NO_VALUE (missing, JSON null)."""
    pairs = _rows(
        "SELECT e.key, CASE WHEN jsonb_typeof(e.value) = 'string' THEN e.value #>> '{}' END "
        "FROM crm_customer c CROSS JOIN LATERAL jsonb_each(c.attributes) AS e "
        "WHERE jsonb_typeof(c.attributes) = 'object' AND jsonb_typeof(e.value) <> 'null' "
        "GROUP BY 1, 2")
    values: dict[str, list[str]] = {}
    for key, value in pairs:
        if not ATTRIBUTE_KEY.match(key) or "__" in key or key.isdigit():
            continue        # a key no condition can name (crm.conditions validates keys)
        values.setdefault(key, [])
        if value is not None:
            values[key].append(value)
    keys = sorted(k for k, v in values.items() if len(v) <= MAX_CODES)[:MAX_ATTRIBUTE_KEYS]
    # keys left out (too many values, or too many keys): their leaves are answered in SQL
    excluded = sorted(set(values) - set(keys))
    part: dict[str, np.ndarray] = {"keys": np.array(keys or [""], dtype=str),
                                   "excluded": np.array(excluded or [""], dtype=str)}
    if not keys:
        return part
    flat_keys = [k for k in keys for _v in values[k]]
    flat_values = [v for k in keys for v in values[k]]
    offsets = {}
    at = 0
    for key in keys:
        offsets[key] = at
        at += len(values[key])
    ids, key_codes, value_codes = copy_columns(
        "SELECT c.id::int4, ek.n::int4, COALESCE(ev.n, 0)::int4 "
        "FROM crm_customer c CROSS JOIN LATERAL jsonb_each(c.attributes) AS e "
        "JOIN unnest(%s::text[]) WITH ORDINALITY AS ek(k, n) ON ek.k = e.key "
        "LEFT JOIN unnest(%s::text[], %s::text[]) WITH ORDINALITY AS ev(k, v, n) "
        "ON jsonb_typeof(e.value) = 'string' AND ev.k = e.key AND ev.v = e.value #>> '{}' "
        "WHERE jsonb_typeof(c.attributes) = 'object' AND jsonb_typeof(e.value) <> 'null'",
        [keys, flat_keys, flat_values], ["int4", "int4", "int4"])
    for number, key in enumerate(keys, start=1):
        rows = key_codes == number
        codes = np.where(value_codes[rows] > 0, value_codes[rows] - 1 - offsets[key],
                         OTHER_TYPE).astype(np.int32)
        part[f"codes:{key}"] = _dense(size, ids[rows], codes, NO_VALUE)
        part[f"values:{key}"] = np.array(values[key] or [""], dtype=str)
    return part


def _tags_part() -> dict[str, np.ndarray]:
    tag, customer, expires = copy_columns(
        "SELECT tag_id::int4, customer_id::int4, COALESCE(expires_at, 'infinity') "
        "FROM tagging_customertag", [], ["int4", "int4", "timestamptz"])
    order = np.lexsort((customer, tag))
    return {"tag": tag[order], "customer": customer[order], "expires": expires[order]}


def _orders_part() -> dict[str, np.ndarray]:
    """The paid orders (customer, placed at, amount in cents) and, per order, the categories
    of its items as (row of the order, category code) pairs."""
    order_ids, customer, placed, cents = copy_columns(
        "SELECT id::int8, customer_id::int4, placed_at, (amount * 100)::int8 FROM crm_order "
        "WHERE status = %s ORDER BY id", [Order.Status.PAID],
        ["int8", "int4", "timestamptz", "int8"])
    categories = [c for (c,) in _rows(
        "SELECT DISTINCT i.category FROM crm_orderitem i JOIN crm_order o ON o.id = i.order_id "
        "WHERE o.status = %s", [Order.Status.PAID])]
    part = {"customer": customer, "placed": placed, "cents": cents,
            "categories_indexed": np.array(len(categories) <= MAX_CODES)}
    if len(categories) > MAX_CODES:
        categories = []             # category leaves are answered in SQL
    item_orders, codes = copy_columns(
        "SELECT DISTINCT i.order_id::int8, ci.n::int4 FROM crm_orderitem i "
        "JOIN crm_order o ON o.id = i.order_id "
        "JOIN unnest(%s::text[]) WITH ORDINALITY AS ci(v, n) ON ci.v = i.category "
        "WHERE o.status = %s", [categories, Order.Status.PAID], ["int8", "int4"])
    part["item_rows"] = np.searchsorted(order_ids, item_orders).astype(np.int32)
    part["item_codes"] = codes
    part["categories"] = np.array(categories or [""], dtype=str)
    return part


def _groups_part() -> dict[str, np.ndarray]:
    customer, group, joined, current = copy_columns(
        "SELECT customer_id::int4, group_id::int4, joined_at, left_at IS NULL "
        "FROM crm_groupmembership", [], ["int4", "int4", "timestamptz", "bool"])
    return {"customer": customer, "group": group, "joined": joined, "current": current}


def _events_part(kind: str) -> dict[str, np.ndarray]:
    latest = ", ".join(f"COALESCE(latest_{i}, '-infinity')" for i in range(1, LATEST + 1))
    columns = copy_columns(
        f"SELECT customer_id::int4, total::int4, since_joined::int4, {latest} "
        "FROM crm_eventcount WHERE type = %s", [kind],
        ["int4", "int4", "int4", *["timestamptz"] * LATEST])
    part = {"customer": columns[0], "total": columns[1], "since_joined": columns[2]}
    for i in range(1, LATEST + 1):
        part[f"latest_{i}"] = columns[2 + i]
    return part


def build() -> SegmentIndex | None:
    """Store a new build (PostgreSQL; None elsewhere, or when another build is running)."""
    if not available():
        return None
    started = time.perf_counter()
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost:
            # every part from one snapshot of the database
            _rows("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        if not _rows("SELECT pg_try_advisory_xact_lock(%s)", [LOCK_KEY])[0][0]:
            return None
        heavy_statements()
        built_at = _rows("SELECT transaction_timestamp()")[0][0]
        # each part packed as soon as it is read: the raw arrays of one part at a time in memory
        customers = _customers_part()
        size, count = len(customers["exists"]), int(customers["exists"].sum())
        readers = {"attributes": lambda: _attributes_part(size), "tags": _tags_part,
                   "orders": _orders_part, "groups": _groups_part,
                   **{f"events:{kind}": (lambda kind=kind: _events_part(kind))
                      for kind in Event.Type.values}}
        for part in crm_extensions.segment_index_parts:       # e.g. lifecycle's stages
            readers[part.name] = lambda part=part: part.read(size)
        packed = {"customers": _pack(customers)}
        del customers
        for name, read in readers.items():
            packed[name] = _pack(read())
        index = SegmentIndex.objects.create(
            built_at=built_at, customers=count,
            size_bytes=sum(len(data) for data in packed.values()))
        SegmentIndexPart.objects.bulk_create(
            [SegmentIndexPart(index=index, name=name, data=data) for name, data in packed.items()])
        keep = SegmentIndex.objects.order_by("-built_at", "-pk").values_list("pk", flat=True)[
            :KEEP_BUILDS]
        SegmentIndex.objects.exclude(pk__in=list(keep)).delete()
        index.seconds = round(time.perf_counter() - started, 3)
        index.save(update_fields=["seconds"])
    logger.info("tagging.segment_index_built", extra={
        "index": index.pk, "customers": index.customers, "bytes": index.size_bytes,
        "seconds": index.seconds})
    return index


def build_due(now: datetime | None = None) -> SegmentIndex | None:
    """`build()` when the newest build is SEGMENT_INDEX_MINUTES old or more (the beat task
    asks every minute, so the interval can change without touching the schedule)."""
    if not available():
        return None
    now = now or timezone.now()
    newest = SegmentIndex.objects.order_by("-built_at").values_list("built_at", flat=True).first()
    if newest is not None and newest > now - timedelta(minutes=interval_minutes()):
        return None
    return build()


# --- Loading --------------------------------------------------------------------------------

class Missing(Exception):
    """A part of the build is gone (a newer build replaced it, or a crash emptied the
    unlogged tables): the preview is computed in SQL."""


class Snapshot:
    """The parts of one build this process has loaded."""

    def __init__(self, index: SegmentIndex) -> None:
        self.index_id = index.pk
        self.built_at = index.built_at
        self._parts: dict[str, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def part(self, name: str) -> dict[str, np.ndarray]:
        found = self._parts.get(name)
        if found is None:
            with self._lock:
                found = self._parts.get(name)
                if found is None:
                    data = (SegmentIndexPart.objects.filter(index_id=self.index_id, name=name)
                            .values_list("data", flat=True).first())
                    if data is None:
                        raise Missing(name)
                    found = self._parts[name] = _unpack(data)
        return found

    @property
    def loaded_parts(self) -> list[str]:
        return list(self._parts)

    @property
    def customers(self) -> dict[str, np.ndarray]:
        return self.part("customers")


_loaded: dict[str, Any] = {"snapshot": None, "loading": None}
_loaded_lock = threading.Lock()


def current(now: datetime | None = None, *, swap_in_background: bool = True) -> Snapshot | None:
    """The build previews read: the newest if it is recent enough
    (`SEGMENT_INDEX_MAX_AGE_MINUTES`), else None.

    When a newer build appears, the process loads the parts it had in use from the new build in
    a background thread and keeps answering from the previous one (still recent enough, still
    stored: the two newest builds are kept) until they are in — so no preview waits for a
    load after a rebuild, only the first previews of a new process."""
    if not available():
        return None
    now = now or timezone.now()
    index = SegmentIndex.objects.order_by("-built_at", "-pk").first()
    if index is None or index.built_at < now - max_age():
        return None
    with _loaded_lock:
        snapshot = _loaded["snapshot"]
        if snapshot is not None and snapshot.index_id == index.pk:
            return snapshot
        in_use = list(snapshot.loaded_parts) if snapshot is not None else []
        if (not swap_in_background or snapshot is None or not in_use
                or snapshot.built_at < now - max_age()):
            snapshot = _loaded["snapshot"] = Snapshot(index)
            return snapshot
        if _loaded["loading"] != index.pk:
            _loaded["loading"] = index.pk
            threading.Thread(target=_swap, args=(Snapshot(index), in_use), daemon=True,
                             name="segment-index-load").start()
        return snapshot


def _swap(snapshot: Snapshot, names: list[str]) -> None:
    """The background thread: load, swap, and close this thread's own connection."""
    try:
        load_and_swap(snapshot, names)
    except Exception:
        logger.exception("tagging.segment_index_load_failed")
    finally:
        connection.close()
        with _loaded_lock:
            if _loaded["loading"] == snapshot.index_id:
                _loaded["loading"] = None


def load_and_swap(snapshot: Snapshot, names: list[str]) -> bool:
    """Load `names` of a new build, then make it the one previews read (unless a newer one
    already is). False when the build was replaced meanwhile."""
    try:
        for name in names:
            snapshot.part(name)
    except Missing:
        return False
    with _loaded_lock:
        old = _loaded["snapshot"]
        if old is None or old.built_at <= snapshot.built_at:
            _loaded["snapshot"] = snapshot
    return True


def forget() -> None:
    """Drop what this process has loaded (tests; a process after a restore)."""
    with _loaded_lock:
        _loaded["snapshot"] = None
        _loaded["loading"] = None


# --- Evaluation -----------------------------------------------------------------------------

class Unsupported(Exception):
    """A leaf the index cannot answer exactly as SQL does."""


def _clamp(value: int) -> int:
    return max(-(2 ** 62), min(2 ** 62, value))


def _compare(column: np.ndarray, op: str, value: Any) -> np.ndarray:
    if op in ("eq", "ne"):
        found = column == value
        return ~found if op == "ne" else found
    if op in ("in", "not_in"):
        found = np.isin(column, np.array(value, dtype=np.int64))
        return ~found if op == "not_in" else found
    if op == "gt":
        return column > value
    if op == "gte":
        return column >= value
    if op == "lt":
        return column < value
    if op == "lte":
        return column <= value
    if op == "between":
        return (column >= value[0]) & (column <= value[1])
    raise Unsupported(op)


def _codes(names: np.ndarray, values: list[str]) -> list[int]:
    """The codes (1-based positions in `names`) of the values present; absent ones match no
    one."""
    index = {str(name): position for position, name in enumerate(names, start=1)}
    return [index[v] for v in values if v in index]


def _coded(column: np.ndarray, names: np.ndarray, op: str, value: Any) -> np.ndarray:
    values = value if op in ("in", "not_in") else [value]
    found = np.isin(column, np.array(_codes(names, [str(v) for v in values]) or [-1],
                                     dtype=column.dtype))
    return ~found if op in ("ne", "not_in") else found


def _cents(column: np.ndarray, op: str, value: Any) -> np.ndarray:
    """Spend (stored in cents) against a decimal amount, exactly."""
    if op in ("in", "not_in"):
        found = np.zeros(len(column), dtype=bool)
        for amount in value:
            found |= _cents(column, "eq", amount)
        return ~found if op == "not_in" else found
    if op == "between":
        return _cents(column, "gte", value[0]) & _cents(column, "lte", value[1])
    scaled = Fraction(value) * 100         # exact, whatever the number of digits
    if op in ("eq", "ne"):
        found = (column == _clamp(int(scaled)) if scaled.denominator == 1
                 else np.zeros(len(column), dtype=bool))
        return ~found if op == "ne" else found
    bound = {"gte": math.ceil, "lt": math.ceil, "gt": math.floor, "lte": math.floor}[op]
    return _compare(column, op, _clamp(bound(scaled)))


class Evaluator:
    """Evaluates a validated tree over one snapshot, at `now`; every array is indexed by
    customer id and as long as the build's largest id + 1."""

    def __init__(self, snapshot: Snapshot, now: datetime) -> None:
        self.snapshot = snapshot
        self.now = now
        self.now_us = micros(now)
        self.size = len(snapshot.customers["exists"])

    def node(self, node: dict, path: str = "") -> np.ndarray:
        if "all" in node:
            out = np.ones(self.size, dtype=bool)
            for index, child in enumerate(node["all"]):
                out &= self.node(child, f"{path}.all[{index}]")
            return out
        if "any" in node:
            out = np.zeros(self.size, dtype=bool)
            for index, child in enumerate(node["any"]):
                out |= self.node(child, f"{path}.any[{index}]")
            return out
        if "not" in node:
            return ~self.node(node["not"], f"{path}.not")
        leaf = conditions.to_leaf(node, path)
        handler = _HANDLERS.get(leaf.field) or _contributed(leaf.field) or (
            _attribute if leaf.field.startswith("attributes.") else None)
        found = handler(self, leaf) if handler is not None else None
        if found is None:           # a contributed handler may decline (None)
            raise Unsupported(leaf.field)
        return found

    def since(self, days: int) -> int:
        return micros(self.now - timedelta(days=days))

    def ids(self, customer_ids: np.ndarray) -> np.ndarray:
        out = np.zeros(self.size, dtype=bool)
        out[customer_ids] = True
        return out

    def known(self, customer_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Customer ids within the build's range, and the mask of those rows (None: all).
        Tags and event counts have no foreign keys: a row may outlive its customer."""
        if not len(customer_ids) or customer_ids.max() < self.size:
            return customer_ids, None
        rows = customer_ids < self.size
        return customer_ids[rows], rows


def _contributed(field: str):
    """A handler another app's index part brings for `field` (crm.extensions)."""
    for part in crm_extensions.segment_index_parts:
        if field in part.handlers:
            return part.handlers[field]
    return None


def _datetime(ev: Evaluator, leaf: conditions.Leaf) -> np.ndarray:
    column = ev.snapshot.customers[leaf.field]
    present = column != NULL_TIME
    op, value = leaf.op, leaf.value
    if op == "is_null":
        return ~present if value else present
    if op == "within_days":
        return present & (column >= ev.since(value))
    if op == "older_than_days":
        return present & (column <= ev.since(value))
    bound = [micros(v) for v in value] if op == "between" else micros(value)
    return present & _compare(column, op, bound)


def _number(ev: Evaluator, leaf: conditions.Leaf) -> np.ndarray:
    customers = ev.snapshot.customers
    if leaf.field == "total_spent":
        return _cents(customers["cents"], leaf.op, leaf.value)
    value = ([_clamp(v) for v in leaf.value] if isinstance(leaf.value, list)
             else _clamp(leaf.value))
    return _compare(customers["orders_count"].astype(np.int64), leaf.op, value)


def _choice(ev: Evaluator, leaf: conditions.Leaf) -> np.ndarray:
    customers = ev.snapshot.customers
    names = customers["genders" if leaf.field == "gender" else "statuses"]
    return _coded(customers[leaf.field], names, leaf.op, leaf.value)


def _opted_out(ev: Evaluator, leaf: conditions.Leaf) -> np.ndarray:
    found = ev.snapshot.customers["opted_out"] == leaf.value
    return ~found if leaf.op == "ne" else found


def _city(ev: Evaluator, leaf: conditions.Leaf) -> np.ndarray:
    customers = ev.snapshot.customers
    if not bool(customers["cities_indexed"]) or leaf.op == "contains":
        raise Unsupported(leaf.field)
    if leaf.op == "is_null":      # a blank city is "no city"; the column is never NULL
        found = _coded(customers["city"], customers["cities"], "eq", "")
        return found if leaf.value else ~found
    return _coded(customers["city"], customers["cities"], leaf.op, leaf.value)


def _isin_ids(column: np.ndarray, model, field: str, values: list) -> np.ndarray:
    """Whose `column` (an id of `model`) is one of the rows whose `field` is in `values` (read
    now: a handful of channels or staff)."""
    ids = list(model.objects.filter(**{f"{field}__in": values}).values_list("pk", flat=True))
    return np.isin(column, np.array(ids or [-1], dtype=column.dtype))


def _channel(ev: Evaluator, leaf: conditions.Leaf) -> np.ndarray:
    column = ev.snapshot.customers["channel"]
    if leaf.op == "contains":
        raise Unsupported(leaf.field)
    if leaf.op == "is_null":      # no channel (0), or one with a blank code
        found = (column == 0) | _isin_ids(column, Channel, "code", [""])
        return found if leaf.value else ~found
    values = leaf.value if leaf.op in ("in", "not_in") else [leaf.value]
    found = _isin_ids(column, Channel, "code", values)
    return ~found if leaf.op in ("ne", "not_in") else found


def _owner(ev: Evaluator, leaf: conditions.Leaf) -> np.ndarray:
    values = leaf.value if leaf.op in ("in", "not_in") else [leaf.value]
    found = _isin_ids(ev.snapshot.customers["owner"], get_user_model(), "username", values)
    return ~found if leaf.op in ("ne", "not_in") else found


def _attribute(ev: Evaluator, leaf: conditions.Leaf) -> np.ndarray:
    """Only what compares JSON strings (eq / ne / in / not_in with strings) and `is_null`; a
    number compares as a number in SQL (also against text that reads as one), and ordering
    compares text by code point: those stay in SQL."""
    op, value = leaf.op, leaf.value
    operands = value if op in ("in", "not_in") else [value]
    if op not in ("eq", "ne", "in", "not_in", "is_null") or (
            op != "is_null" and not all(isinstance(v, str) for v in operands)):
        raise Unsupported(leaf.field)
    key = leaf.key
    part = ev.snapshot.part("attributes")
    if f"codes:{key}" not in part:
        if key in {str(k) for k in part["excluded"]}:
            raise Unsupported(leaf.field)
        codes = np.full(ev.size, NO_VALUE, dtype=np.int32)   # nobody had the key
        names = np.array([""])
    else:
        codes, names = part[f"codes:{key}"], part[f"values:{key}"]
    if op == "is_null":
        return (codes == NO_VALUE) if value else (codes != NO_VALUE)
    wanted = [code - 1 for code in _codes(names, operands)]
    found = np.isin(codes, np.array(wanted or [-99], dtype=np.int32))
    return ~found if op in ("ne", "not_in") else found


def _tag(ev: Evaluator, leaf: conditions.Leaf) -> np.ndarray:
    part = ev.snapshot.part("tags")

    def holds(tag_ids: list[int]) -> np.ndarray:
        out = np.zeros(ev.size, dtype=bool)
        for tag_id in tag_ids:
            start, end = np.searchsorted(part["tag"], [tag_id, tag_id + 1])
            live = part["expires"][start:end] > ev.now_us
            customers, _mask = ev.known(part["customer"][start:end][live])
            out[customers] = True
        return out

    if leaf.op == "any":
        return holds(leaf.value)
    if leaf.op == "none":
        return ~holds(leaf.value)
    out = np.ones(ev.size, dtype=bool)
    for tag_id in leaf.value:
        out &= holds([tag_id])
    return out


def _event(ev: Evaluator, leaf: conditions.Leaf) -> np.ndarray:
    """As crm.conditions: a whole history or "since joining" sums the per-type counts; a window
    counts, per type, how many of the 5 latest times fall in it (exact up to 5)."""
    # a type listed twice counts once, as `type IN (…)` does
    kinds = list(dict.fromkeys(leaf.params.get("type") or Event.Type.values))
    k = leaf.value if leaf.op == "count_gte" else leaf.value + 1
    if k <= 0:
        return np.ones(ev.size, dtype=bool)
    window = leaf.params.get("within_days")
    joined = leaf.params.get("since_joined")
    if window is not None and k > LATEST:
        raise Unsupported(leaf.field)
    counts = np.zeros(ev.size, dtype=np.int64)
    bound = ev.since(window) if window is not None else None
    joined_at = ev.snapshot.customers["joined_at"] if joined else None
    for kind in kinds:
        part = ev.snapshot.part(f"events:{kind}")
        customers, rows = ev.known(part["customer"])
        part = {name: column[rows] for name, column in part.items()} if rows is not None \
            else part
        if bound is None:
            per_row = part["since_joined" if joined else "total"].astype(np.int64)
        else:
            per_row = np.zeros(len(customers), dtype=np.int64)
            starts = joined_at[customers] if joined else None
            for i in range(1, LATEST + 1):
                latest = part[f"latest_{i}"]
                inside = latest >= bound
                if joined:
                    inside &= latest >= starts
                per_row += inside
        counts += np.bincount(customers, weights=per_row, minlength=ev.size)[:ev.size].astype(
            np.int64)
    found = counts >= k
    return found if leaf.op == "count_gte" else ~found


def _order(ev: Evaluator, leaf: conditions.Leaf) -> np.ndarray:
    """As crm.conditions: paid orders, within a window or since joining, optionally with an
    item of a category; counted, or their amounts summed (exactly, in cents)."""
    value = leaf.value
    if leaf.op == "count_lte":
        found = _order(ev, replace(leaf, op="count_gte", value=value + 1))
        return ~found
    if value <= 0:
        return np.ones(ev.size, dtype=bool)
    part = ev.snapshot.part("orders")
    rows = part["customer"] < ev.size      # ids beyond the build's customers left out
    customers = np.where(rows, part["customer"], 0)
    if leaf.params.get("within_days") is not None:
        rows &= part["placed"] >= ev.since(leaf.params["within_days"])
    if leaf.params.get("since_joined"):
        rows &= part["placed"] >= ev.snapshot.customers["joined_at"][customers]
    if leaf.params.get("category"):
        if not bool(part["categories_indexed"]):
            raise Unsupported(leaf.field)
        wanted = np.array(_codes(part["categories"], leaf.params["category"]) or [-1],
                          dtype=np.int32)
        with_category = np.zeros(len(rows), dtype=bool)
        with_category[part["item_rows"][np.isin(part["item_codes"], wanted)]] = True
        rows &= with_category
    if leaf.op == "sum_gte":
        totals = np.bincount(customers[rows], weights=part["cents"][rows], minlength=ev.size)
        return totals[:ev.size] >= _clamp(math.ceil(Fraction(value) * 100))
    counts = np.bincount(customers[rows], minlength=ev.size)[:ev.size]
    return counts >= _clamp(int(value))


def _group(ev: Evaluator, leaf: conditions.Leaf) -> np.ndarray:
    """As crm.conditions: memberships now (or `ever`), optionally begun since joining; `in`
    any of the groups (none named: any group), or `count_gte` distinct groups."""
    if leaf.op == "count_gte" and leaf.value <= 0:
        return np.ones(ev.size, dtype=bool)
    part = ev.snapshot.part("groups")
    rows = part["customer"] < ev.size
    if not leaf.params.get("ever"):
        rows &= part["current"]
    customers = np.where(rows, part["customer"], 0)
    if leaf.params.get("since_joined"):
        rows &= part["joined"] >= ev.snapshot.customers["joined_at"][customers]
    if leaf.op == "count_gte":
        pairs = np.sort(customers[rows].astype(np.int64) << 32 | part["group"][rows])
        if len(pairs):      # distinct (customer, group): sorted, then unlike the one before
            pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]
        counts = np.bincount((pairs >> 32).astype(np.int64), minlength=ev.size)[:ev.size]
        return counts >= _clamp(int(leaf.value))
    if leaf.value:
        rows &= _isin_ids(part["group"], Group, "chat_id", leaf.value)
    found = ev.ids(customers[rows])
    return ~found if leaf.op == "not_in" else found


_HANDLERS = {
    **{name: _datetime for name in DATETIMES},
    "orders_count": _number, "total_spent": _number,
    "gender": _choice, "status": _choice, "opted_out": _opted_out,
    "city": _city, "channel": _channel, "owner": _owner,
    "tag": _tag, "event": _event, "order": _order, "group": _group,
}


# --- Previews -------------------------------------------------------------------------------

@dataclass
class Answer:
    count: int
    newest: list[int]           # ids of the newest matching customers, newest first
    as_of: datetime


def evaluate(tree: Any, snapshot: Snapshot, *, now: datetime | None = None) -> np.ndarray | None:
    """The customers the tree selects, as a boolean array by id (None: not answerable here).
    The tree must be valid (`conditions.validate`)."""
    try:
        evaluator = Evaluator(snapshot, now or timezone.now())
        return evaluator.node(tree) & snapshot.customers["exists"]
    except (Unsupported, Missing):
        return None


def _visible(snapshot: Snapshot, user) -> np.ndarray:
    """The customers of the build `user` may count (analysts: every customer)."""
    visible = snapshot.customers["exists"].copy()
    role = access.user_role(user)
    if role == access.OPERATOR:
        visible &= snapshot.customers["owner"] == user.pk
    elif role not in (access.ADMIN, access.ANALYST):
        visible[:] = False
    return visible


def summarize(part: str, summary, *, user, now: datetime | None = None):
    """`summary(arrays of the part, customers the user may see)` over the current build, and
    the build's time; None when there is no recent build or the part is missing. How an app
    that contributed a part counts with it (lifecycle: customers per stage) without a pass
    over every customer in SQL."""
    snapshot = current(now)
    if snapshot is None:
        return None
    try:
        return summary(snapshot.part(part), _visible(snapshot, user)), snapshot.built_at
    except Missing:
        return None


def preview(tree: Any, *, user, sample_size: int, now: datetime | None = None) -> Answer | None:
    """Count and newest ids for a segment preview from the index, within what `user` may see
    (analysts: every customer); None when the index cannot answer it."""
    snapshot = current(now)
    if snapshot is None:
        return None
    try:
        found = evaluate(tree, snapshot, now=now)
        if found is None:
            return None
        role = access.user_role(user)
        if role == access.OPERATOR:
            found &= snapshot.customers["owner"] == user.pk
        elif role not in (access.ADMIN, access.ANALYST):
            found[:] = False
    except Missing:
        return None
    ids = np.flatnonzero(found)
    return Answer(count=len(ids), newest=[int(i) for i in ids[::-1][:sample_size]],
                  as_of=snapshot.built_at)
