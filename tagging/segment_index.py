"""The segment index: segment previews answered from numpy columns in memory, indexed by
customer id, instead of a pass over every customer in SQL. What it holds, its full builds and
updates, what it declines to SQL: docs/OPERATIONS.md, "The segment index"."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import operator
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
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
CONSUMER = "segment_index"      # its touches (crm.hooks), written by the database's triggers
CHANGED_TABLE = "segment_index_changed"


def available() -> bool:
    return connection.vendor == "postgresql" and _minutes("SEGMENT_INDEX_MINUTES", 10) > timedelta()


def _minutes(setting: str, default: int) -> timedelta:
    return timedelta(minutes=int(getattr(settings, setting, default)))


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


def _extend(known: list[str], found: list[str]) -> list[str]:
    """A code list with the values not in it yet appended (codes already given stay)."""
    seen = set(known)
    return known + [v for v in found if v not in seen and not seen.add(v)]


def _listed(lists: dict, name: str) -> list[str]:
    """A stored code list (stored as [""] when empty)."""
    values = [str(v) for v in lists[name]] if name in lists else []
    return [] if values == [""] else values


CUSTOMER_COLUMNS = ("owner", "channel", "gender", "status", "opted_out", "orders_count",
                    "cents", "city", *DATETIMES)
# Each customer's entry where the customer does not exist (or has no row).
FILLS = {**dict.fromkeys(CUSTOMER_COLUMNS, 0), **dict.fromkeys(DATETIMES, NULL_TIME),
         "opted_out": False, "exists": False}


@dataclass
class _Reading:
    """The parts read inside the build's snapshot: everyone's, indexed by customer id (`size`,
    set by the customers part), or an update's, aligned with the sorted `ids` and coded with
    the full build's code `lists` (`<part>/<list>`, extended)."""

    ids: np.ndarray | None = None
    lists: dict[str, np.ndarray] = field(default_factory=dict)
    size: int = 0

    def parts(self) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        yield "customers", self.customers()
        yield "attributes", self.attributes()
        yield "tags", self.tags()
        yield "orders", self.orders()
        yield "groups", self.groups()
        kinds = list(Event.Type.values)
        if self.ids is None:        # a type at a time, to hold one in memory
            for kind in kinds:
                yield f"events:{kind}", self.events([kind])[kind]
        else:                       # every type in one statement
            yield from ((f"events:{kind}", part) for kind, part in self.events(kinds).items())
        for part in crm_extensions.segment_index_parts:       # e.g. lifecycle's stages
            yield part.name, part.read(self.size, self.ids)

    def where(self, column: str) -> str:
        """Restricts a statement to an update's customers (named once, in a temporary table)."""
        return "true" if self.ids is None else f"{column} IN (SELECT id FROM {CHANGED_TABLE})"

    def place(self, row_ids: np.ndarray, values: np.ndarray, fill) -> np.ndarray:
        """Values by customer (an absent one gets `fill`)."""
        full = self.ids is None
        out = np.full(self.size if full else len(self.ids), fill, dtype=values.dtype)
        out[row_ids if full else np.searchsorted(self.ids, row_ids)] = values
        return out

    def code_list(self, name: str, found: list[str]) -> list[str] | None:
        """The full build's code list extended with `found`; None when not indexed (over
        MAX_CODES values: those leaves are answered in SQL)."""
        if not bool(self.lists.get(f"{name}_indexed", True)):
            return None
        codes = _extend(_listed(self.lists, name), found)
        if len(codes) > MAX_CODES and self.ids is not None:
            raise NeedsFull(name)
        return codes if len(codes) <= MAX_CODES else None

    def customers(self) -> dict[str, np.ndarray]:
        where = self.where("c.id")
        found = [c for (c,) in _rows(f"SELECT DISTINCT city FROM crm_customer c WHERE {where}")]
        cities = self.code_list("customers/cities", found)
        genders, statuses = list(Customer.Gender.values), list(Customer.Status.values)
        times = ", ".join(f"COALESCE(c.{name}, '-infinity')" for name in DATETIMES)
        rows, *columns = copy_columns(
            "SELECT c.id::int4, c.owner_id::int4, COALESCE(c.channel_id, 0)::int4, "
            "COALESCE(array_position(%s::text[], c.gender::text), 0)::int2, "
            "COALESCE(array_position(%s::text[], c.status::text), 0)::int2, "
            "c.opted_out, c.orders_count::int4, (c.total_spent * 100)::int8, "
            f"COALESCE(ci.n, 0)::int4, {times} "
            "FROM crm_customer c LEFT JOIN unnest(%s::text[]) WITH ORDINALITY AS ci(v, n) "
            f"ON ci.v = c.city WHERE {where}",
            [genders, statuses, cities or []],
            ["int4", "int4", "int4", "int2", "int2", "bool", "int4", "int8", "int4",
             *["timestamptz"] * len(DATETIMES)])
        if self.ids is None:
            self.size = int(rows.max()) + 1 if len(rows) else 1
        part = {name: self.place(rows, column, FILLS[name])
                for name, column in zip(CUSTOMER_COLUMNS, columns, strict=True)}
        return {**part, "exists": self.place(rows, np.ones(len(rows), dtype=bool), False),
                "cities": np.array(cities or [""], dtype=str),
                "cities_indexed": np.array(cities is not None),
                "genders": np.array(genders), "statuses": np.array(statuses)}

    def attributes(self) -> dict[str, np.ndarray]:
        """Per key a condition may name, one int32 code per customer: the index of its string
        value in `values:<key>`, OTHER_TYPE (not a string) or NO_VALUE (missing, JSON null)."""
        lateral = "FROM crm_customer c CROSS JOIN LATERAL jsonb_each(c.attributes) AS e"
        filters = ("WHERE jsonb_typeof(c.attributes) = 'object' "
                   f"AND jsonb_typeof(e.value) <> 'null' AND {self.where('c.id')}")
        pairs = _rows("SELECT e.key, CASE WHEN jsonb_typeof(e.value) = 'string' THEN "
                      f"e.value #>> '{{}}' END {lateral} {filters} GROUP BY 1, 2")
        excluded = set(_listed(self.lists, "attributes/excluded"))
        values = {key: _listed(self.lists, f"attributes/values:{key}")
                  for key in _listed(self.lists, "attributes/keys")}
        for key, value in pairs:
            # only the keys a condition can name (crm.conditions validates keys)
            if ATTRIBUTE_KEY.match(key) and "__" not in key and not key.isdigit() \
                    and key not in excluded:
                values[key] = _extend(values.get(key, []), [value] if value is not None else [])
        keys = sorted(k for k, v in values.items() if len(v) <= MAX_CODES)[:MAX_ATTRIBUTE_KEYS]
        if self.ids is not None and len(keys) < len(values):
            raise NeedsFull("attributes")
        excluded |= set(values) - set(keys)     # too many values or keys: answered in SQL
        part = {"keys": np.array(keys or [""], dtype=str),
                "excluded": np.array(sorted(excluded) or [""], dtype=str)}
        if not keys:
            return part
        starts = np.cumsum([0] + [len(values[k]) for k in keys])    # each key's first value
        rows, key_codes, value_codes = copy_columns(
            f"SELECT c.id::int4, ek.n::int4, COALESCE(ev.n, 0)::int4 {lateral} "
            "JOIN unnest(%s::text[]) WITH ORDINALITY AS ek(k, n) ON ek.k = e.key "
            "LEFT JOIN unnest(%s::text[], %s::text[]) WITH ORDINALITY AS ev(k, v, n) "
            "ON jsonb_typeof(e.value) = 'string' AND ev.k = e.key AND ev.v = e.value #>> '{}' "
            f"{filters}",
            [keys, [k for k in keys for _v in values[k]], [v for k in keys for v in values[k]]],
            ["int4", "int4", "int4"])
        for number, key in enumerate(keys, start=1):
            mine = key_codes == number
            codes = np.where(value_codes[mine] > 0, value_codes[mine] - 1 - starts[number - 1],
                             OTHER_TYPE).astype(np.int32)
            part[f"codes:{key}"] = self.place(rows[mine], codes, NO_VALUE)
            part[f"values:{key}"] = np.array(values[key] or [""], dtype=str)
        return part

    def tags(self) -> dict[str, np.ndarray]:
        tag, customer, expires = copy_columns(
            "SELECT tag_id::int4, customer_id::int4, COALESCE(expires_at, 'infinity') "
            f"FROM tagging_customertag WHERE {self.where('customer_id')}", [],
            ["int4", "int4", "timestamptz"])
        order = np.lexsort((customer, tag))
        return {"tag": tag[order], "customer": customer[order], "expires": expires[order]}

    def orders(self) -> dict[str, np.ndarray]:
        """The paid orders (customer, placed at, amount in cents) and, per order, the
        categories of its items as (row of the order, category code) pairs."""
        paid = f"o.status = %s AND {self.where('o.customer_id')}"
        items = "FROM crm_orderitem i JOIN crm_order o ON o.id = i.order_id"
        order_ids, customer, placed, cents = copy_columns(
            "SELECT o.id::int8, o.customer_id::int4, o.placed_at, (o.amount * 100)::int8 "
            f"FROM crm_order o WHERE {paid} ORDER BY o.id",
            [Order.Status.PAID], ["int8", "int4", "timestamptz", "int8"])
        found = [c for (c,) in _rows(f"SELECT DISTINCT i.category {items} WHERE {paid}",
                                     [Order.Status.PAID])]
        categories = self.code_list("orders/categories", found)
        item_orders, codes = copy_columns(
            f"SELECT DISTINCT i.order_id::int8, ci.n::int4 {items} "
            "JOIN unnest(%s::text[]) WITH ORDINALITY AS ci(v, n) ON ci.v = i.category "
            f"WHERE {paid}", [categories or [], Order.Status.PAID], ["int8", "int4"])
        return {"customer": customer, "placed": placed, "cents": cents,
                "categories_indexed": np.array(categories is not None),
                "item_rows": np.searchsorted(order_ids, item_orders).astype(np.int32),
                "item_codes": codes, "categories": np.array(categories or [""], dtype=str)}

    def groups(self) -> dict[str, np.ndarray]:
        customer, group, joined, current = copy_columns(
            "SELECT customer_id::int4, group_id::int4, joined_at, left_at IS NULL "
            f"FROM crm_groupmembership WHERE {self.where('customer_id')}", [],
            ["int4", "int4", "timestamptz", "bool"])
        return {"customer": customer, "group": group, "joined": joined, "current": current}

    def events(self, kinds: list[str]) -> dict[str, dict[str, np.ndarray]]:
        """The per-type event counts of these types, each type's part, from one statement."""
        latest = [f"latest_{i}" for i in range(1, LATEST + 1)]
        times = ", ".join(f"COALESCE({name}, '-infinity')" for name in latest)
        code, *columns = copy_columns(
            "SELECT COALESCE(array_position(%s::text[], type::text), 0)::int2, "
            f"customer_id::int4, total::int4, since_joined::int4, {times} FROM crm_eventcount "
            f"WHERE type = ANY(%s::text[]) AND {self.where('customer_id')}",
            [kinds, kinds], ["int2", "int4", "int4", "int4", *["timestamptz"] * LATEST])
        parts = {}
        for number, kind in enumerate(kinds, start=1):
            rows = code == number if len(kinds) > 1 else slice(None)
            parts[kind] = {name: column[rows] for name, column in zip(
                ["customer", "total", "since_joined", *latest], columns, strict=True)}
        return parts


def _signature() -> str:
    """What decides the parts' shape: the stage models and event types (and the parts)."""
    from lifecycle.models import StageModel

    models = ",".join(str(pk) for pk in StageModel.objects.order_by("pk")
                      .values_list("pk", flat=True))
    parts = ",".join(part.name for part in crm_extensions.segment_index_parts)
    return f"models={models};events={','.join(Event.Type.values)};parts={parts}"[:500]


def _full_due(base: SegmentIndex | None, built_at: datetime, changed: int) -> bool:
    """None yet, the last from before today (the nightly one), the shape changed, or more than
    SEGMENT_INDEX_FULL_SHARE of the customers changed since."""
    return (base is None or base.signature != _signature()
            or timezone.localdate(base.built_at) != timezone.localdate(built_at)
            or changed > settings.SEGMENT_INDEX_FULL_SHARE * max(base.customers, 1))


def build(*, full: bool = False) -> SegmentIndex | None:
    """Store a new build — an update of the customers changed since the last full build, or a
    full one when due or asked for; None off PostgreSQL or while another build runs."""
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
        if outermost:       # every part from one snapshot of the database
            _rows("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        if not _rows("SELECT pg_try_advisory_xact_lock(%s)", [LOCK_KEY])[0][0]:
            return None
        heavy_statements()
        built_at = _rows("SELECT transaction_timestamp()")[0][0]
        # No position yet (a new database, or one emptied): the touches cannot say what the
        # last build missed. Else the touches this snapshot sees and the last build's did not.
        consumer, _ = TouchConsumer.objects.get_or_create(consumer=CONSUMER)
        full = full or not consumer.position
        ids, consumer.position = (([], hooks.position_now()) if full
                                  else hooks.touches_since(CONSUMER, consumer.position))
        consumer.save(update_fields=["position", "updated_at"])
        changed = np.array(ids, dtype=np.int64)
        newest = SegmentIndex.objects.order_by("-built_at", "-pk").first()
        base = (newest.base or newest) if newest is not None else None
        if base is not None and newest.base_id is not None:    # updates are cumulative
            with contextlib.suppress(Missing):
                changed = np.union1d(changed, _stored(newest.pk, "changed")["ids"])
        if full or _full_due(base, built_at, len(changed)):
            base, (parts, count) = None, _full_parts()
        else:
            parts = _update_parts(base, changed)
            (count,), = _rows("SELECT count(*) FROM crm_customer")
        index = SegmentIndex.objects.create(
            built_at=built_at, customers=count, base=base,
            changed=len(changed) if base is not None else 0,
            signature=base.signature if base is not None else _signature(),
            size_bytes=sum(len(data) for data in parts.values()))
        SegmentIndexPart.objects.bulk_create(
            [SegmentIndexPart(index=index, name=name, data=data) for name, data in parts.items()])
        keep = SegmentIndex.objects.order_by("-built_at", "-pk").values_list(
            "pk", "base_id")[:KEEP_BUILDS]
        SegmentIndex.objects.exclude(
            pk__in=[pk for row in keep for pk in row if pk is not None]).delete()
        index.seconds = round(time.perf_counter() - started, 3)
        index.save(update_fields=["seconds"])
    logger.info("tagging.segment_index_built", extra={
        "index": index.pk, "full": index.base_id is None, "changed": index.changed,
        "customers": index.customers, "bytes": index.size_bytes, "seconds": index.seconds})
    return index


def _full_parts() -> tuple[dict[str, bytes], int]:
    """Every part, packed as soon as it is read; the code lists also on their own (an update
    reads them without the big parts); and the count of customers."""
    packed, lists = {}, {}
    for name, part in _Reading().parts():
        if name == "customers":
            count = int(part["exists"].sum())
        lists |= {f"{name}/{key}": value for key, value in part.items()
                  if key in CODE_LISTS or key.startswith("values:")}
        packed[name] = _pack(part)
        del part            # one part's raw arrays at a time in memory
    packed["lists"] = _pack(lists)
    return packed, count


def _update_parts(base: SegmentIndex, changed: np.ndarray) -> dict[str, bytes]:
    """The parts of the customers `changed`, coded with the full build's lists (extended)."""
    try:
        lists = _stored(base.pk, "lists")
    except Missing:
        raise NeedsFull("lists")
    materialize_rows(CHANGED_TABLE, ("SELECT DISTINCT unnest(%s::bigint[])",
                                     [changed.tolist()]), ["id"])   # dropped at commit
    reading = _Reading(changed, lists, len(changed))
    return {"changed": _pack({"ids": changed}),
            **{name: _pack({**part, "ids": changed}) for name, part in reading.parts()}}


def build_due(now: datetime | None = None) -> SegmentIndex | None:
    """`build()` when the newest build is SEGMENT_INDEX_MINUTES old or more (beat asks every
    minute, so the interval can change without touching the schedule)."""
    if not available():
        return None
    now = now or timezone.now()
    newest = SegmentIndex.objects.order_by("-built_at").values_list("built_at", flat=True).first()
    if newest is not None and newest > now - _minutes("SEGMENT_INDEX_MINUTES", 10):
        return None
    return build()


# --- Loading --------------------------------------------------------------------------------

class Missing(Exception):
    """A part of the build is gone (replaced by a newer build, or emptied by a crash): SQL."""


class Snapshot:
    """The parts of one build this process has loaded; an update's parts laid over its full
    build's, or over those of `previous`, an earlier update of it (updates are cumulative)."""

    def __init__(self, index: SegmentIndex, previous: Snapshot | None = None) -> None:
        self.index_id, self.base_id, self.built_at = index.pk, index.base_id, index.built_at
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


def current(now: datetime | None = None) -> Snapshot | None:
    """The build previews read: the newest, if recent enough. A newer build's parts in use load
    in a background thread while the previous build keeps answering."""
    if not available():
        return None
    oldest = (now or timezone.now()) - _minutes("SEGMENT_INDEX_MAX_AGE_MINUTES", 30)
    index = SegmentIndex.objects.order_by("-built_at", "-pk").first()
    if index is None or index.built_at < oldest:
        return None
    with _loaded_lock:
        snapshot = _loaded["snapshot"]
        if snapshot is not None and snapshot.index_id == index.pk:
            return snapshot
        in_use = list(snapshot.loaded_parts) if snapshot is not None else []
        if not in_use or snapshot.built_at < oldest:
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
    """When a web process starts (config/wsgi.py): load the parts most previews read in a
    thread, so that its first preview does not wait for them."""
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
        _loaded["snapshot"] = _loaded["loading"] = None


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


def merge(name: str, under: dict[str, np.ndarray], update: dict[str, np.ndarray]
          ) -> dict[str, np.ndarray]:
    """An update's part laid over the full build's (or an earlier update's): the changed
    customers' entries and rows replaced; the code lists the update's (they extend the full
    build's, so the codes in place stay right)."""
    ids = update["ids"]
    columns = [key for key in update if key not in LISTS and not key.startswith("values:")]
    out = {key: value for key, value in update.items() if key not in columns and key != "ids"}
    if "customer" not in under:     # one entry per customer id; an update has every column
        size = int(ids[-1]) + 1 if len(ids) else 0
        for column in columns:      # (a key or a model gone since is left out with it)
            old, new = under.get(column, update[column][:0]), update[column]
            fill = FILLS.get(column, NO_VALUE if name == "attributes" else 0)
            out[column] = np.full(max(size, len(old)), fill, dtype=new.dtype)
            out[column][:len(old)] = old
            out[column][ids] = new
        return out
    keep = ~np.isin(under["customer"], ids)     # rows: the changed customers' replaced
    out |= {column: np.concatenate([under[column][keep], update[column]]) for column in columns}
    if name == "orders":        # item pairs point at order rows, which moved
        position = np.cumsum(keep) - 1
        kept = keep[under["item_rows"]]
        out["item_rows"] = np.concatenate([
            position[under["item_rows"][kept]],
            update["item_rows"] + int(keep.sum())]).astype(np.int32)
        out["item_codes"] = np.concatenate([under["item_codes"][kept], update["item_codes"]])
    if name == "tags":          # sorted by tag (a leaf finds its rows by bisection)
        order = np.lexsort((out["customer"], out["tag"]))
        out = {column: values[order] if column in columns else values
               for column, values in out.items()}
    return out


# --- Evaluation -----------------------------------------------------------------------------

class Unsupported(Exception):
    """A leaf the index cannot answer exactly as SQL does."""


def _clamp(value: int) -> int:
    return max(-(2 ** 62), min(2 ** 62, value))


def _operands(op: str, value: Any) -> list:
    return value if op in ("in", "not_in") else [value]


def _unless(op: str, found: np.ndarray) -> np.ndarray:
    """`found`, or its complement for a negative operator."""
    return ~found if op in ("ne", "not_in") else found


COMPARISONS = {"eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "gte": operator.ge,
               "lt": operator.lt, "lte": operator.le}


def _compare(column: np.ndarray, op: str, value: Any) -> np.ndarray:
    if op in ("in", "not_in"):
        return _unless(op, np.isin(column, np.array(value, dtype=np.int64)))
    if op == "between":
        return (column >= value[0]) & (column <= value[1])
    if op not in COMPARISONS:
        raise Unsupported(op)
    return COMPARISONS[op](column, value)


def _codes(names: np.ndarray, values: list[str]) -> list[int]:
    """The codes (1-based positions in `names`) of the values; an absent one matches no one."""
    index = {str(name): position for position, name in enumerate(names, start=1)}
    return [index[v] for v in values if v in index]


def _coded(column: np.ndarray, names: np.ndarray, op: str, value: Any) -> np.ndarray:
    wanted = _codes(names, [str(v) for v in _operands(op, value)])
    return _unless(op, np.isin(column, np.array(wanted or [-1], dtype=column.dtype)))


def _cents(column: np.ndarray, op: str, value: Any) -> np.ndarray:
    """Spend (stored in cents) against a decimal amount, exactly."""
    if op in ("in", "not_in"):
        found = functools.reduce(operator.or_, (_cents(column, "eq", v) for v in value),
                                 np.zeros(len(column), dtype=bool))
        return _unless(op, found)
    if op == "between":
        return _cents(column, "gte", value[0]) & _cents(column, "lte", value[1])
    scaled = Fraction(value) * 100         # exact, whatever the number of digits
    if op in ("eq", "ne"):
        return _unless(op, column == _clamp(int(scaled)) if scaled.denominator == 1
                       else np.zeros(len(column), dtype=bool))
    bound = {"gte": math.ceil, "lt": math.ceil, "gt": math.floor, "lte": math.floor}[op]
    return _compare(column, op, _clamp(bound(scaled)))


class Evaluator:
    """Evaluates a validated tree over one snapshot at `now`, each leaf as its SQL compiler
    means it, into a boolean array by customer id (the build's largest id + 1 long)."""

    def __init__(self, snapshot: Snapshot, now: datetime) -> None:
        self.snapshot, self.now, self.now_us = snapshot, now, micros(now)
        self.size = len(snapshot.customers["exists"])

    def node(self, node: dict, path: str = "") -> np.ndarray:
        for key, start, combine in (("all", np.ones, np.logical_and),
                                    ("any", np.zeros, np.logical_or)):
            if key in node:
                out = start(self.size, dtype=bool)
                for index, child in enumerate(node[key]):
                    combine(out, self.node(child, f"{path}.{key}[{index}]"), out=out)
                return out
        if "not" in node:
            return ~self.node(node["not"], f"{path}.not")
        return self.leaf(conditions.to_leaf(node, path))

    def leaf(self, leaf: conditions.Leaf) -> np.ndarray:
        if leaf.op == "count_lte":          # at most n: not at least n + 1
            return ~self.leaf(replace(leaf, op="count_gte", value=leaf.value + 1))
        if leaf.op in ("count_gte", "sum_gte") and leaf.value <= 0:
            return np.ones(self.size, dtype=bool)
        handler = _HANDLERS.get(leaf.field) or next(
            (part.handlers[leaf.field] for part in crm_extensions.segment_index_parts
             if leaf.field in part.handlers), None) or (
            Evaluator.attribute if leaf.field.startswith("attributes.") else None)
        found = handler(self, leaf) if handler is not None else None
        if found is None:           # a contributed handler may decline (None)
            raise Unsupported(leaf.field)
        return found

    def since(self, days: int) -> int:
        return micros(self.now - timedelta(days=days))

    def known(self, customer_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | slice]:
        """Customer ids within the build's range, and the rows they are at (tags and event
        counts have no foreign keys: a row may outlive its customer)."""
        if not len(customer_ids) or customer_ids.max() < self.size:
            return customer_ids, slice(None)
        rows = customer_ids < self.size
        return customer_ids[rows], rows

    def moment(self, leaf: conditions.Leaf) -> np.ndarray:
        column = self.snapshot.customers[leaf.field]
        present = column != NULL_TIME
        op, value = leaf.op, leaf.value
        if op == "is_null":
            return ~present if value else present
        if op == "within_days":
            return present & (column >= self.since(value))
        if op == "older_than_days":
            return present & (column <= self.since(value))
        bound = [micros(v) for v in value] if op == "between" else micros(value)
        return present & _compare(column, op, bound)

    def number(self, leaf: conditions.Leaf) -> np.ndarray:
        customers = self.snapshot.customers
        if leaf.field == "total_spent":
            return _cents(customers["cents"], leaf.op, leaf.value)
        if leaf.field == "opted_out":
            return _unless(leaf.op, customers["opted_out"] == leaf.value)
        value = ([_clamp(v) for v in leaf.value] if isinstance(leaf.value, list)
                 else _clamp(leaf.value))
        return _compare(customers["orders_count"].astype(np.int64), leaf.op, value)

    def choice(self, leaf: conditions.Leaf) -> np.ndarray:
        """gender, status and city: codes into the build's lists."""
        customers = self.snapshot.customers
        column = customers[leaf.field]
        names = customers[{"gender": "genders", "status": "statuses", "city": "cities"}[
            leaf.field]]
        if leaf.field == "city" and (not bool(customers["cities_indexed"])
                                     or leaf.op == "contains"):
            raise Unsupported(leaf.field)
        if leaf.op == "is_null":      # a blank city is "no city"; the column is never NULL
            found = _coded(column, names, "eq", "")
            return found if leaf.value else ~found
        return _coded(column, names, leaf.op, leaf.value)

    def named(self, leaf: conditions.Leaf) -> np.ndarray:
        """channel (by its code) and owner (by username)."""
        column = self.snapshot.customers[leaf.field]
        model, by = ((Channel, "code") if leaf.field == "channel"
                     else (get_user_model(), "username"))
        if leaf.op == "contains":
            raise Unsupported(leaf.field)
        if leaf.op == "is_null":      # no channel (0), or one with a blank code
            found = (column == 0) | _isin_ids(column, model, by, [""])
            return found if leaf.value else ~found
        return _unless(leaf.op, _isin_ids(column, model, by, _operands(leaf.op, leaf.value)))

    def attribute(self, leaf: conditions.Leaf) -> np.ndarray:
        """Only eq / ne / in / not_in with strings, and `is_null`: SQL compares a number as a
        number, and orders text by code point."""
        op, value = leaf.op, leaf.value
        if op not in ("eq", "ne", "in", "not_in", "is_null") or (
                op != "is_null" and not all(isinstance(v, str) for v in _operands(op, value))):
            raise Unsupported(leaf.field)
        part = self.snapshot.part("attributes")
        if f"codes:{leaf.key}" in part:
            codes, names = part[f"codes:{leaf.key}"], part[f"values:{leaf.key}"]
        elif leaf.key in {str(k) for k in part["excluded"]}:
            raise Unsupported(leaf.field)
        else:                   # nobody had the key
            codes, names = np.full(self.size, NO_VALUE, dtype=np.int32), np.array([""])
        if op == "is_null":
            return (codes == NO_VALUE) if value else (codes != NO_VALUE)
        wanted = [code - 1 for code in _codes(names, _operands(op, value))]
        return _unless(op, np.isin(codes, np.array(wanted or [-99], dtype=np.int32)))

    def tag(self, leaf: conditions.Leaf) -> np.ndarray:
        part = self.snapshot.part("tags")

        def holds(tag_ids: list[int]) -> np.ndarray:
            out = np.zeros(self.size, dtype=bool)
            for tag_id in tag_ids:
                start, end = np.searchsorted(part["tag"], [tag_id, tag_id + 1])
                live = part["expires"][start:end] > self.now_us
                customers, _at = self.known(part["customer"][start:end][live])
                out[customers] = True
            return out

        if leaf.op == "all":
            return functools.reduce(operator.and_, (holds([tag_id]) for tag_id in leaf.value),
                                    np.ones(self.size, dtype=bool))
        return holds(leaf.value) if leaf.op == "any" else ~holds(leaf.value)

    def event(self, leaf: conditions.Leaf) -> np.ndarray:
        """A whole history or "since joining" sums the per-type counts; a window counts, per
        type, how many of the LATEST latest times fall in it (exact up to LATEST)."""
        # a type listed twice counts once, as `type IN (…)` does
        kinds = list(dict.fromkeys(leaf.params.get("type") or Event.Type.values))
        window, joined = leaf.params.get("within_days"), leaf.params.get("since_joined")
        if window is not None and leaf.value > LATEST:
            raise Unsupported(leaf.field)
        counts = np.zeros(self.size, dtype=np.int64)
        for kind in kinds:
            part = self.snapshot.part(f"events:{kind}")
            customers, rows = self.known(part["customer"])
            if window is None:
                per_row = part["since_joined" if joined else "total"][rows].astype(np.int64)
            else:       # in the window, and (since joining) not before joining
                start = self.since(window)
                if joined:
                    start = np.maximum(start, self.snapshot.customers["joined_at"][customers])
                per_row = sum((part[f"latest_{i}"][rows] >= start).astype(np.int64)
                              for i in range(1, LATEST + 1))
            counts += np.bincount(customers, weights=per_row, minlength=self.size)[
                :self.size].astype(np.int64)
        return counts >= leaf.value

    def order(self, leaf: conditions.Leaf) -> np.ndarray:
        """Paid orders, within a window or since joining, optionally with an item of a
        category; counted, or their amounts summed (exactly, in cents)."""
        part = self.snapshot.part("orders")
        rows = part["customer"] < self.size      # ids beyond the build's customers left out
        customers = np.where(rows, part["customer"], 0)
        if leaf.params.get("within_days") is not None:
            rows &= part["placed"] >= self.since(leaf.params["within_days"])
        if leaf.params.get("since_joined"):
            rows &= part["placed"] >= self.snapshot.customers["joined_at"][customers]
        if leaf.params.get("category"):
            if not bool(part["categories_indexed"]):
                raise Unsupported(leaf.field)
            wanted = np.array(_codes(part["categories"], leaf.params["category"]) or [-1],
                              dtype=np.int32)
            with_category = np.zeros(len(rows), dtype=bool)
            with_category[part["item_rows"][np.isin(part["item_codes"], wanted)]] = True
            rows &= with_category
        if leaf.op == "sum_gte":
            totals = np.bincount(customers[rows], weights=part["cents"][rows],
                                 minlength=self.size)
            return totals[:self.size] >= _clamp(math.ceil(Fraction(leaf.value) * 100))
        counts = np.bincount(customers[rows], minlength=self.size)[:self.size]
        return counts >= _clamp(int(leaf.value))

    def group(self, leaf: conditions.Leaf) -> np.ndarray:
        """Memberships now (or `ever`), optionally begun since joining; `in` any of the groups
        (none named: any group), or `count_gte` distinct groups."""
        part = self.snapshot.part("groups")
        rows = part["customer"] < self.size
        if not leaf.params.get("ever"):
            rows &= part["current"]
        customers = np.where(rows, part["customer"], 0)
        if leaf.params.get("since_joined"):
            rows &= part["joined"] >= self.snapshot.customers["joined_at"][customers]
        if leaf.op == "count_gte":
            pairs = np.sort(customers[rows].astype(np.int64) << 32 | part["group"][rows])
            if len(pairs):      # distinct (customer, group): sorted, then unlike the one before
                pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]
            counts = np.bincount((pairs >> 32).astype(np.int64), minlength=self.size)
            return counts[:self.size] >= _clamp(int(leaf.value))
        if leaf.value:
            rows &= _isin_ids(part["group"], Group, "chat_id", leaf.value)
        found = np.zeros(self.size, dtype=bool)
        found[customers[rows]] = True
        return _unless(leaf.op, found)


def _isin_ids(column: np.ndarray, model, by: str, values: list) -> np.ndarray:
    """Whose `column` (ids of `model`) names a row whose `by` is in `values` (read now)."""
    ids = list(model.objects.filter(**{f"{by}__in": values}).values_list("pk", flat=True))
    return np.isin(column, np.array(ids or [-1], dtype=column.dtype))


_HANDLERS = {
    **dict.fromkeys(DATETIMES, Evaluator.moment),
    **dict.fromkeys(("orders_count", "total_spent", "opted_out"), Evaluator.number),
    **dict.fromkeys(("gender", "status", "city"), Evaluator.choice),
    "channel": Evaluator.named, "owner": Evaluator.named, "tag": Evaluator.tag,
    "event": Evaluator.event, "order": Evaluator.order, "group": Evaluator.group,
}


# --- Previews -------------------------------------------------------------------------------

@dataclass
class Answer:
    count: int
    newest: list[int]           # ids of the newest matching customers, newest first
    as_of: datetime


def evaluate(tree: Any, snapshot: Snapshot, *, now: datetime | None = None) -> np.ndarray | None:
    """The customers the (validated) tree selects, as a boolean array by id; None when the
    index cannot answer it."""
    try:
        evaluator = Evaluator(snapshot, now or timezone.now())
        return evaluator.node(tree) & snapshot.customers["exists"]
    except (Unsupported, Missing):
        return None


def _visible(snapshot: Snapshot, user) -> np.ndarray:
    """The customers of the build `user` may count (operators their own, analysts all)."""
    role = access.user_role(user)
    if role == access.OPERATOR:
        return snapshot.customers["exists"] & (snapshot.customers["owner"] == user.pk)
    return snapshot.customers["exists"] & (role in (access.ADMIN, access.ANALYST))


def summarize(part: str, summary, *, user, now: datetime | None = None):
    """`summary(arrays of the part, customers the user may see)` over the current build, and
    the build's time (lifecycle: customers per stage); None without a recent build or part."""
    snapshot = current(now)
    if snapshot is None:
        return None
    try:
        return summary(snapshot.part(part), _visible(snapshot, user)), snapshot.built_at
    except Missing:
        return None


def preview(tree: Any, *, user, sample_size: int, now: datetime | None = None) -> Answer | None:
    """Count and newest ids for a segment preview from the index, within what `user` may see;
    None when the index cannot answer it."""
    snapshot = current(now)
    found = evaluate(tree, snapshot, now=now) if snapshot is not None else None
    if found is None:
        return None
    ids = np.flatnonzero(found & _visible(snapshot, user))
    return Answer(count=len(ids), newest=[int(i) for i in ids[::-1][:sample_size]],
                  as_of=snapshot.built_at)
