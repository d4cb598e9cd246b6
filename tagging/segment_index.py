"""The segment index: segment previews answered from numpy columns in memory, indexed by
customer id, instead of a pass over every customer in SQL.

A full build (nightly, or when it must) reads what the leaves of the condition language read —
the customers' columns, attributes, tags, paid orders, group memberships, event counts and each
app's parts (lifecycle's stages) — in one snapshot; between full builds an update reads again
only the customers that statement triggers noted as changed, and a reader lays it over the full
build. A leaf is evaluated as its SQL compiler means it (tests/core holds them to the same
customers); what it cannot answer goes to SQL whole. How it is kept, what it declines and what
it costs: docs/OPERATIONS.md, "The segment index".
"""

from __future__ import annotations

import contextlib
import functools
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
from core.db import copy_columns, heavy_statements, materialize_rows
from core.db import raw_rows as _rows
from crm import extensions as crm_extensions
from crm import hooks
from crm.conditions import ATTRIBUTE_KEY
from crm.models import EVENT_COUNT_LATEST as LATEST
from crm.models import Channel, Customer, Event, Group, Order, TouchConsumer
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


class NeedsFull(Exception):
    """An update cannot hold what changed (a code list outgrew its limit): build in full."""


CHANGED_TABLE = "segment_index_changed"


def _where(ids: np.ndarray | None, column: str) -> tuple[str, list]:
    """` WHERE`-able restriction to the customers `ids` (None: everyone): an update's are in a
    temporary table (`_changed_table`) — written once, not spelled out in each of the parts'
    twenty statements (an update re-reads up to a fifth of the customers: seconds of
    formatting and parsing the list alone)."""
    if ids is None:
        return "true", []
    return f"{column} IN (SELECT id FROM {CHANGED_TABLE})", []


def _changed_table(ids: np.ndarray) -> None:
    """The customers an update reads, as the temporary table `_where` names (dropped at
    commit)."""
    materialize_rows(CHANGED_TABLE, ("SELECT DISTINCT unnest(%s::bigint[])", [ids.tolist()]),
                     ["id"])


def _place(where: int | np.ndarray, row_ids: np.ndarray, values: np.ndarray,
           fill) -> np.ndarray:
    """Values by customer: indexed by id (`where` = the size of a full build) or aligned with
    the sorted ids `where` (an update; an absent customer gets `fill`)."""
    if isinstance(where, int):
        out = np.full(where, fill, dtype=values.dtype)
        out[row_ids] = values
    else:
        out = np.full(len(where), fill, dtype=values.dtype)
        out[np.searchsorted(where, row_ids)] = values
    return out


def _extend(known: list[str], found: list[str]) -> list[str]:
    """A code list with the values not in it yet appended (codes already given stay)."""
    seen = set(known)
    return known + [v for v in found if v not in seen and not seen.add(v)]


def _listed(part: dict | None, name: str) -> list[str]:
    """A stored code list (stored as [""] when empty)."""
    if part is None or name not in part:
        return []
    values = [str(v) for v in part[name]]
    return [] if values == [""] else values


# Each customer's entry where the customer does not exist (or has no row).
FILLS = {"owner": 0, "channel": 0, "gender": 0, "status": 0, "opted_out": False,
         "orders_count": 0, "cents": 0, "city": 0, "exists": False,
         **dict.fromkeys(DATETIMES, NULL_TIME)}
CUSTOMER_LISTS = ("cities", "cities_indexed", "genders", "statuses")


def _customers_part(ids: np.ndarray | None = None, base: dict | None = None
                    ) -> dict[str, np.ndarray]:
    where, params = _where(ids, "c.id")
    found = [c for (c,) in _rows(f"SELECT DISTINCT city FROM crm_customer c WHERE {where}",
                                 params)]
    indexed = base is None or bool(base["cities_indexed"])
    cities = _extend(_listed(base, "cities"), found) if indexed else []
    if len(cities) > MAX_CODES:
        if ids is not None and indexed:
            raise NeedsFull("cities")
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
        f"ON ci.v = c.city WHERE {where}",
        [genders, statuses, cities, *params],
        ["int4", "int4", "int4", "int2", "int2", "bool", "int4", "int8", "int4",
         *["timestamptz"] * len(DATETIMES)])
    rows = columns[0]
    where_to = (int(rows.max()) + 1 if len(rows) else 1) if ids is None else ids
    names = ("owner", "channel", "gender", "status", "opted_out", "orders_count", "cents",
             "city", *DATETIMES)
    part = {name: _place(where_to, rows, column, FILLS[name])
            for name, column in zip(names, columns[1:], strict=True)}
    part["exists"] = _place(where_to, rows, np.ones(len(rows), dtype=bool), False)
    part["cities"] = np.array(cities or [""], dtype=str)
    part["cities_indexed"] = np.array(bool(cities) if ids is None else indexed)
    part["genders"], part["statuses"] = np.array(genders), np.array(statuses)
    return part


def _attributes_part(size: int, ids: np.ndarray | None = None, base: dict | None = None
                     ) -> dict[str, np.ndarray]:
    """Per key (of the keys a condition may name), one int32 code per customer: the index of
    its string value in `values:<key>`, OTHER_TYPE (a number, a boolean, a list, an object) or
    NO_VALUE (missing, JSON null). An update extends the full build's lists."""
    where, params = _where(ids, "c.id")
    pairs = _rows(
        "SELECT e.key, CASE WHEN jsonb_typeof(e.value) = 'string' THEN e.value #>> '{}' END "
        "FROM crm_customer c CROSS JOIN LATERAL jsonb_each(c.attributes) AS e "
        f"WHERE jsonb_typeof(c.attributes) = 'object' AND jsonb_typeof(e.value) <> 'null' "
        f"AND {where} GROUP BY 1, 2", params)
    excluded = set(_listed(base, "excluded"))
    values: dict[str, list[str]] = {key: _listed(base, f"values:{key}")
                                    for key in _listed(base, "keys")}
    for key, value in pairs:
        if not ATTRIBUTE_KEY.match(key) or "__" in key or key.isdigit() or key in excluded:
            continue        # a key no condition can name (crm.conditions validates keys)
        values[key] = _extend(values.get(key, []), [value] if value is not None else [])
    keys = sorted(k for k, v in values.items() if len(v) <= MAX_CODES)[:MAX_ATTRIBUTE_KEYS]
    if ids is not None and len(keys) < len(values):
        raise NeedsFull("attributes")
    # keys left out (too many values, or too many keys): their leaves are answered in SQL
    excluded |= set(values) - set(keys)
    part: dict[str, np.ndarray] = {"keys": np.array(keys or [""], dtype=str),
                                   "excluded": np.array(sorted(excluded) or [""], dtype=str)}
    if ids is not None:
        part["ids"] = ids
    if not keys:
        return part
    flat_keys = [k for k in keys for _v in values[k]]
    flat_values = [v for k in keys for v in values[k]]
    offsets = {}
    at = 0
    for key in keys:
        offsets[key] = at
        at += len(values[key])
    rows, key_codes, value_codes = copy_columns(
        "SELECT c.id::int4, ek.n::int4, COALESCE(ev.n, 0)::int4 "
        "FROM crm_customer c CROSS JOIN LATERAL jsonb_each(c.attributes) AS e "
        "JOIN unnest(%s::text[]) WITH ORDINALITY AS ek(k, n) ON ek.k = e.key "
        "LEFT JOIN unnest(%s::text[], %s::text[]) WITH ORDINALITY AS ev(k, v, n) "
        "ON jsonb_typeof(e.value) = 'string' AND ev.k = e.key AND ev.v = e.value #>> '{}' "
        f"WHERE jsonb_typeof(c.attributes) = 'object' AND jsonb_typeof(e.value) <> 'null' "
        f"AND {where}",
        [keys, flat_keys, flat_values, *params], ["int4", "int4", "int4"])
    for number, key in enumerate(keys, start=1):
        mine = key_codes == number
        codes = np.where(value_codes[mine] > 0, value_codes[mine] - 1 - offsets[key],
                         OTHER_TYPE).astype(np.int32)
        part[f"codes:{key}"] = _place(size if ids is None else ids, rows[mine], codes,
                                      NO_VALUE)
        part[f"values:{key}"] = np.array(values[key] or [""], dtype=str)
    return part


def _tags_part(ids: np.ndarray | None = None, base: dict | None = None
               ) -> dict[str, np.ndarray]:
    where, params = _where(ids, "customer_id")
    tag, customer, expires = copy_columns(
        "SELECT tag_id::int4, customer_id::int4, COALESCE(expires_at, 'infinity') "
        f"FROM tagging_customertag WHERE {where}", params, ["int4", "int4", "timestamptz"])
    order = np.lexsort((customer, tag))
    return {"tag": tag[order], "customer": customer[order], "expires": expires[order]}


def _orders_part(ids: np.ndarray | None = None, base: dict | None = None
                 ) -> dict[str, np.ndarray]:
    """The paid orders (customer, placed at, amount in cents) and, per order, the categories
    of its items as (row of the order, category code) pairs."""
    where, params = _where(ids, "o.customer_id")
    order_ids, customer, placed, cents = copy_columns(
        "SELECT o.id::int8, o.customer_id::int4, o.placed_at, (o.amount * 100)::int8 "
        f"FROM crm_order o WHERE o.status = %s AND {where} ORDER BY o.id",
        [Order.Status.PAID, *params], ["int8", "int4", "timestamptz", "int8"])
    found = [c for (c,) in _rows(
        "SELECT DISTINCT i.category FROM crm_orderitem i JOIN crm_order o ON o.id = i.order_id "
        f"WHERE o.status = %s AND {where}", [Order.Status.PAID, *params])]
    indexed = base is None or bool(base["categories_indexed"])
    categories = _extend(_listed(base, "categories"), found) if indexed else []
    if len(categories) > MAX_CODES:
        if ids is not None and indexed:
            raise NeedsFull("categories")
        indexed, categories = False, []         # category leaves are answered in SQL
    part = {"customer": customer, "placed": placed, "cents": cents,
            "categories_indexed": np.array(indexed)}
    item_orders, codes = copy_columns(
        "SELECT DISTINCT i.order_id::int8, ci.n::int4 FROM crm_orderitem i "
        "JOIN crm_order o ON o.id = i.order_id "
        "JOIN unnest(%s::text[]) WITH ORDINALITY AS ci(v, n) ON ci.v = i.category "
        f"WHERE o.status = %s AND {where}", [categories, Order.Status.PAID, *params],
        ["int8", "int4"])
    part["item_rows"] = np.searchsorted(order_ids, item_orders).astype(np.int32)
    part["item_codes"] = codes
    part["categories"] = np.array(categories or [""], dtype=str)
    return part


def _groups_part(ids: np.ndarray | None = None, base: dict | None = None
                 ) -> dict[str, np.ndarray]:
    where, params = _where(ids, "customer_id")
    customer, group, joined, current = copy_columns(
        "SELECT customer_id::int4, group_id::int4, joined_at, left_at IS NULL "
        f"FROM crm_groupmembership WHERE {where}", params,
        ["int4", "int4", "timestamptz", "bool"])
    return {"customer": customer, "group": group, "joined": joined, "current": current}


def _events_parts(kinds: list[str], ids: np.ndarray | None = None
                  ) -> dict[str, dict[str, np.ndarray]]:
    """The per-type event counts of these types, each type's part: from one statement (an
    update reads every type at once; a full build a type at a time, to hold one in memory)."""
    where, params = _where(ids, "customer_id")
    latest = ", ".join(f"COALESCE(latest_{i}, '-infinity')" for i in range(1, LATEST + 1))
    code, *columns = copy_columns(
        "SELECT COALESCE(array_position(%s::text[], type::text), 0)::int2, customer_id::int4, "
        f"total::int4, since_joined::int4, {latest} FROM crm_eventcount "
        f"WHERE type = ANY(%s::text[]) AND {where}", [kinds, kinds, *params],
        ["int2", "int4", "int4", "int4", *["timestamptz"] * LATEST])
    parts = {}
    for number, kind in enumerate(kinds, start=1):
        rows = code == number if len(kinds) > 1 else slice(None)
        part = {"customer": columns[0][rows], "total": columns[1][rows],
                "since_joined": columns[2][rows]}
        for i in range(1, LATEST + 1):
            part[f"latest_{i}"] = columns[2 + i][rows]
        parts[kind] = part
    return parts


# --- Following the changes ------------------------------------------------------------------

CONSUMER = "segment_index"      # its touches (crm.hooks), written by the database's triggers


def _signature() -> str:
    """What decides the parts' shape: the stage models and event types (and the parts)."""
    from lifecycle.models import StageModel

    models = ",".join(str(pk) for pk in StageModel.objects.order_by("pk")
                      .values_list("pk", flat=True))
    parts = ",".join(part.name for part in crm_extensions.segment_index_parts)
    return f"models={models};events={','.join(Event.Type.values)};parts={parts}"[:500]


def _full_due(base: SegmentIndex | None, built_at: datetime, changed: int) -> bool:
    """A full build is due: none yet, the last is from before today (the nightly one), the
    shape changed, or more than SEGMENT_INDEX_FULL_SHARE (0.2) of the customers changed
    since."""
    if base is None or base.signature != _signature():
        return True
    local = timezone.localdate(built_at)
    if timezone.localdate(base.built_at) != local:
        return True
    share = settings.SEGMENT_INDEX_FULL_SHARE
    return changed > share * max(base.customers, 1)


def _readers(size: int, ids: np.ndarray | None, base: dict[str, Any]) -> dict[str, Any]:
    """Part name → a function giving the part (everyone's, or the customers `ids`)."""
    readers = {"attributes": lambda: _attributes_part(size, ids, base.get("attributes")),
               "tags": lambda: _tags_part(ids), "orders": lambda: _orders_part(
                   ids, base.get("orders")),
               "groups": lambda: _groups_part(ids)}
    kinds = list(Event.Type.values)
    if ids is None:
        readers.update({f"events:{kind}": (lambda kind=kind: _events_parts([kind])[kind])
                        for kind in kinds})
    else:
        every = functools.cache(lambda: _events_parts(kinds, ids))
        readers.update({f"events:{kind}": (lambda kind=kind: every()[kind]) for kind in kinds})
    for part in crm_extensions.segment_index_parts:       # e.g. lifecycle's stages
        readers[part.name] = lambda part=part: part.read(size, ids)
    return readers


def build(*, full: bool = False) -> SegmentIndex | None:
    """Store a new build (PostgreSQL; None elsewhere, or when another build is running): an
    update — the customers changed since the last full build read again — or, when one is
    due (`_full_due`) or asked for, a full build."""
    if not available():
        return None
    outermost = not connection.in_atomic_block
    try:
        return _build(full=full, outermost=outermost)
    except NeedsFull:
        return _build(full=True, outermost=outermost)


def _build(*, full: bool, outermost: bool) -> SegmentIndex | None:
    started = time.perf_counter()
    with transaction.atomic():
        if outermost:
            # every part from one snapshot of the database
            _rows("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        if not _rows("SELECT pg_try_advisory_xact_lock(%s)", [LOCK_KEY])[0][0]:
            return None
        heavy_statements()
        built_at = _rows("SELECT transaction_timestamp()")[0][0]
        # No position yet (a new database, or one emptied): the touches cannot say what the
        # last build missed.
        consumer, _ = TouchConsumer.objects.get_or_create(consumer=CONSUMER)
        full = full or not consumer.position
        # The customers changed since the last build: the touches this build's snapshot sees
        # and the last did not (those committed later are the next build's).
        if full:
            changed, position = np.array([], dtype=np.int64), hooks.position_now()
        else:
            ids, position = hooks.touches_since(CONSUMER, consumer.position)
            changed = np.array(ids, dtype=np.int64)
        consumer.position = position
        consumer.save(update_fields=["position", "updated_at"])
        newest = SegmentIndex.objects.order_by("-built_at", "-pk").first()
        base = (newest.base or newest) if newest is not None else None
        if base is not None and newest.base_id is not None:
            previous = (SegmentIndexPart.objects.filter(index=newest, name="changed")
                        .values_list("data", flat=True).first())
            changed = np.union1d(changed, _unpack(previous)["ids"] if previous else [])
        if full or _full_due(base, built_at, len(changed)):
            index = _store(built_at, _full_parts(), base=None)
        else:
            index = _store(built_at, _update_parts(base, changed), base=base)
        keep = list(SegmentIndex.objects.order_by("-built_at", "-pk")
                    .values_list("pk", "base_id")[:KEEP_BUILDS])
        SegmentIndex.objects.exclude(
            pk__in=[pk for row in keep for pk in row if pk is not None]).delete()
        index.seconds = round(time.perf_counter() - started, 3)
        index.save(update_fields=["seconds"])
    logger.info("tagging.segment_index_built", extra={
        "index": index.pk, "full": index.base_id is None, "changed": index.changed,
        "customers": index.customers, "bytes": index.size_bytes, "seconds": index.seconds})
    return index


CODED = ("customers", "attributes", "orders")       # the parts with code lists


def _full_parts() -> dict[str, Any]:
    # each part packed as soon as it is read: the raw arrays of one part at a time in memory
    customers = _customers_part()
    size = len(customers["exists"])
    lists = {"customers": _lists(customers)}
    packed: dict[str, Any] = {"customers": _pack(customers),
                              "count": int(customers["exists"].sum())}
    del customers
    for name, read in _readers(size, None, {}).items():
        part = read()
        if name in CODED:
            lists[name] = _lists(part)
        packed[name] = _pack(part)
    # The code lists on their own, so that an update reads them without the big parts.
    packed["lists"] = _pack({f"{name}/{key}": value for name, part in lists.items()
                             for key, value in part.items()})
    return packed


def _lists(part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A part's code lists (what an update extends)."""
    return {key: value for key, value in part.items()
            if key in CODE_LISTS or key.startswith("values:")}


def _update_parts(base: SegmentIndex, changed: np.ndarray) -> dict[str, Any]:
    """The parts of the customers `changed`, coded with the full build's lists (extended)."""
    stored = (SegmentIndexPart.objects.filter(index=base, name="lists")
              .values_list("data", flat=True).first())
    if stored is None:
        raise NeedsFull("lists")
    lists: dict[str, dict[str, np.ndarray]] = {}
    for key, value in _unpack(stored).items():
        name, list_name = key.split("/", 1)
        lists.setdefault(name, {})[list_name] = value
    _changed_table(changed)
    customers = _customers_part(changed, lists.get("customers"))
    packed: dict[str, Any] = {"changed": _pack({"ids": changed}),
                              "customers": _pack({**customers, "ids": changed}),
                              "count": None, "changed_count": len(changed)}
    for name, read in _readers(len(changed), changed, lists).items():
        packed[name] = _pack({**read(), "ids": changed})
    return packed


def _store(built_at: datetime, packed: dict[str, Any], *, base: SegmentIndex | None
           ) -> SegmentIndex:
    count, changed = packed.pop("count"), packed.pop("changed_count", 0)
    if count is None:       # an update: the customers the full build had, give or take
        (count,), = _rows("SELECT count(*) FROM crm_customer")
    index = SegmentIndex.objects.create(
        built_at=built_at, customers=count, base=base, changed=changed,
        signature=base.signature if base is not None else _signature(),
        size_bytes=sum(len(data) for data in packed.values()))
    SegmentIndexPart.objects.bulk_create(
        [SegmentIndexPart(index=index, name=name, data=data) for name, data in packed.items()])
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
    """The parts of one build this process has loaded; an update's parts laid over its full
    build's (or over the parts of an earlier update of the same full build, `previous`, which
    its changed customers include: updates are cumulative)."""

    def __init__(self, index: SegmentIndex, previous: Snapshot | None = None) -> None:
        self.index_id = index.pk
        self.base_id = index.base_id
        self.built_at = index.built_at
        self.previous = previous
        self._parts: dict[str, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def part(self, name: str) -> dict[str, np.ndarray]:
        found = self._parts.get(name)
        if found is None:
            with self._lock:
                found = self._parts.get(name)
                if found is None:
                    found = self._parts[name] = self._load(name)
        return found

    def _load(self, name: str) -> dict[str, np.ndarray]:
        own = _stored(self.index_id, name)
        if self.base_id is None:
            return own
        previous = self.previous
        under = (previous._parts.get(name) if previous is not None
                 and self.base_id in (previous.index_id, previous.base_id) else None)
        return merge(name, under if under is not None else _stored(self.base_id, name), own)

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
            threading.Thread(target=_swap, args=(Snapshot(index, snapshot), in_use), daemon=True,
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
    finally:
        snapshot.previous = None        # laid over: the older build's arrays can go
    with _loaded_lock:
        old = _loaded["snapshot"]
        if old is None or old.built_at <= snapshot.built_at:
            _loaded["snapshot"] = snapshot
    return True


WARM_PARTS = ("customers", "tags", "stages")


def warm_in_background() -> None:
    """When a web process starts: load the parts most previews read in a thread, so that its
    first preview does not wait for them (config/wsgi.py)."""
    if not available() or not getattr(settings, "SEGMENT_INDEX_WARM", True):
        return

    def run() -> None:
        try:
            snapshot = current()
            for name in WARM_PARTS if snapshot is not None else ():
                with contextlib.suppress(Missing):
                    snapshot.part(name)
        except Exception:
            logger.exception("tagging.segment_index_warm_failed")
        finally:
            connection.close()

    threading.Thread(target=run, daemon=True, name="segment-index-warm").start()


def forget() -> None:
    """Drop what this process has loaded (tests; a process after a restore)."""
    with _loaded_lock:
        _loaded["snapshot"] = None
        _loaded["loading"] = None


def _stored(index_id: int, name: str) -> dict[str, np.ndarray]:
    data = (SegmentIndexPart.objects.filter(index_id=index_id, name=name)
            .values_list("data", flat=True).first())
    if data is None:
        raise Missing(name)
    return _unpack(data)


# Arrays of a part that are lists (of codes, flags), not one entry per customer or row.
CODE_LISTS = {"cities", "cities_indexed", "keys", "excluded", "categories",
              "categories_indexed"}       # what an update extends (and `values:<key>`)
LISTS = CODE_LISTS | {"genders", "statuses", "item_rows", "item_codes", "ids"}


def _is_list(name: str) -> bool:
    return name in LISTS or name.startswith("values:")


def merge(name: str, under: dict[str, np.ndarray], update: dict[str, np.ndarray]
          ) -> dict[str, np.ndarray]:
    """A part of an update laid over the same part of the full build (or of an earlier update
    of it): the changed customers' entries and rows replaced by theirs, the code lists taken
    from the update (they extend the full build's, so the codes in place stay right)."""
    ids = update["ids"]
    out = {key: value for key, value in update.items() if _is_list(key) and key != "ids"}
    if "customer" not in under:                 # one entry per customer id
        fill = (lambda column: FILLS[column]) if name == "customers" else (
            (lambda column: NO_VALUE) if name == "attributes" else (lambda column: 0))
        size = int(ids[-1]) + 1 if len(ids) else 0
        for column, new in update.items():      # an update has every column (a key or a
            if _is_list(column):                # model gone since is left out with it)
                continue
            old = under.get(column)
            merged = np.full(max(size, len(old) if old is not None else 0), fill(column),
                             dtype=new.dtype)
            if old is not None:
                merged[:len(old)] = old
            merged[ids] = new
            out[column] = merged
        return out
    keep = ~np.isin(under["customer"], ids)     # rows: the changed customers' replaced
    for column, values in update.items():
        if not _is_list(column):
            out[column] = np.concatenate([under[column][keep], values])
    if name == "orders":        # item pairs point at order rows, which moved
        position = np.cumsum(keep) - 1
        kept = keep[under["item_rows"]]
        out["item_rows"] = np.concatenate([
            position[under["item_rows"][kept]],
            update["item_rows"] + int(keep.sum())]).astype(np.int32)
        out["item_codes"] = np.concatenate([under["item_codes"][kept], update["item_codes"]])
    if name == "tags":          # sorted by tag (a leaf finds its rows by bisection)
        order = np.lexsort((out["customer"], out["tag"]))
        out = {column: (values[order] if not _is_list(column) else values)
               for column, values in out.items()}
    return out


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
