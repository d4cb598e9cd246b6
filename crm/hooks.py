"""The touches: how apps below crm learn whose facts changed.

On PostgreSQL, statement triggers on every table the condition language reads (migrations crm
0019–0020, tagging 0007, lifecycle 0007) write one `CustomerTouch` per changed customer and
statement, with the transaction's id, whatever wrote the rows; on SQLite crm's services write
them (`notify_customers_touched`). A consumer (`tagging`, `lifecycle`) registers a handler in
`touch_consumers` from its `AppConfig.ready()`; a periodic task calls
`touched_customers_process(consumer)`: it takes the consumer's lock (a second worker skips
instead of doing the same work), reads the customers touched since the consumer's position,
hands them to the handler and moves the position, in one transaction — a failing handler
leaves the position where it was. The segment index reads its touches itself, inside its
build's snapshot (`touch_claimers`).

Why a snapshot and not a cursor on ids (PgQ's technique): a transaction that took id 100 may
commit after one that took id 101, and a cursor moved past 101 would never read 100. The
position is the snapshot of the consumer's last run; a run reads the touches of the
transactions its own snapshot sees and that one did not — every committed transaction once,
whatever the order in which they commit, and a long transaction delays no other's touches. On
SQLite one writer at a time commits ids in order, and the position is the last id read. Rows
every consumer has read are pruned (`touches_prune`). No signals, no upward imports, nothing
lost when a broker message is.
"""

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from core.registry import Registry
from crm.models import Customer, CustomerTouch, TouchConsumer

# Called with the customers touched, or with None for everyone: when more than FULL_SHARE of
# the customers were touched at once (an import, a bulk job), one pass over everyone costs
# less than reading them by id, `limit` at a time. A handler that returns `Settled` has handled
# what its own writes change too (PostgreSQL): its own touches are then read with the others
# instead of bringing the customers it wrote back on its next run.
TouchHandler = Callable[[list[int] | None], Any]


class Settled(int):
    """A handler's answer (its count of changes) meaning that it re-read the customers its own
    writes touched until they changed nothing more (`own_touches_since`)."""


FULL_SHARE = 0.2
touch_consumers: Registry[TouchHandler] = Registry("touch_consumers")
# The origins of the touches a consumer need not read (a touch's origin is the app whose table
# was written: '' for crm's tables, "tagging" for the customers' tags, "lifecycle" for their
# stages): those of the tables none of its conditions read now. Asked at every run; a consumer
# that registers none skips only touches of its own name.
TouchSkips = Callable[[], Iterable[str]]
touch_skips: Registry[TouchSkips] = Registry("touch_skips")
# Consumers that read their own touches with `touches_since` (the segment index, inside its
# build's snapshot) and keep their position themselves; `touches_prune` keeps them.
touch_claimers: Registry[str] = Registry("touch_claimers")

# Called in the ingest transaction with {customer id: when} for the customers who just deleted
# (or blocked) us: campaigns turns each into a to-do for the owner.
DeletedUsHook = Callable[[dict[int, datetime]], Any]
deleted_us_hooks: Registry[DeletedUsHook] = Registry("deleted_us")


def customers_deleted_us(deleted: dict[int, datetime]) -> None:
    if deleted:
        for hook in deleted_us_hooks:
            hook(deleted)


def notify_customers_touched(customer_ids: Iterable[int]) -> None:
    """Touch the customers (SQLite, in one statement; PostgreSQL's triggers touch whatever is
    written, so nothing is done there)."""
    ids = sorted(set(customer_ids))
    if not ids or connection.vendor == "postgresql":
        return
    table = connection.ops.quote_name(CustomerTouch._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} (customer_id, origin, at) "
                       f"SELECT i.value, '', %s FROM json_each(%s) AS i",
                       [connection.ops.adapt_datetimefield_value(timezone.now()),
                        json.dumps(ids)])


def _unseen_own(snapshot: str, own: str | None) -> str:
    """The snapshot with the reading transaction's own id listed as still running: what it
    writes after reading (a rule's tags, which other rules read) is then new to the next run."""
    xmin, xmax, running = snapshot.split(":")
    if own is None or int(own) >= int(xmax):
        return snapshot
    ids = sorted({int(own), *(int(x) for x in running.split(",") if x)})
    return f"{min(int(xmin), ids[0])}:{xmax}:{','.join(map(str, ids))}"


def _since(position: str) -> tuple[str, dict[str, Any]]:
    """SQL (alias t) for the touches a consumer at `position` has not read.

    On PostgreSQL a position is the snapshot of the last run, with that run's own transaction
    listed as running, and then that transaction's id and the last of its own touches the run
    read: its own writes are visible to it before it commits. On SQLite, the last id read."""
    if connection.vendor != "postgresql":
        return "t.id > %(at)s", {"at": int(position or 0)}
    if not position:
        return "TRUE", {}
    snapshot, own, last = (position.split(" ") + [None, None])[:3]
    return ("t.txid >= pg_snapshot_xmin(%(at)s::pg_snapshot)::text::bigint "
            "AND NOT pg_visible_in_snapshot(t.txid::text::xid8, %(at)s::pg_snapshot) "
            "AND NOT (t.txid IS NOT DISTINCT FROM %(own)s AND t.id <= %(last)s)",
            {"at": snapshot, "own": int(own) if own else None, "last": int(last or 0)})


def _snapshot(cursor) -> tuple[str, str | None]:
    """The current snapshot and the transaction's own id, if it has one (PostgreSQL)."""
    cursor.execute("SELECT pg_current_snapshot()::text, pg_current_xact_id_if_assigned()::text")
    return cursor.fetchone()


def _position(cursor, snapshot: str, own: str | None) -> str:
    """The position after reading every touch `snapshot` sees, and the transaction's own so
    far (PostgreSQL)."""
    if own is None:
        return snapshot
    table = connection.ops.quote_name(CustomerTouch._meta.db_table)
    cursor.execute(f"SELECT coalesce(max(id), 0) FROM {table} WHERE txid = %s", [int(own)])
    return f"{_unseen_own(snapshot, own)} {own} {cursor.fetchone()[0]}"


def own_touches_since(last: int = 0) -> tuple[list[int], int]:
    """The customers the current transaction's own writes touched after its touch `last` (0:
    all), and its last touch now (PostgreSQL)."""
    table = connection.ops.quote_name(CustomerTouch._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT array_agg(DISTINCT customer_id), max(id) FROM {table} "
            f"WHERE txid = pg_current_xact_id_if_assigned()::text::bigint AND id > %s", [last])
        ids, newest = cursor.fetchone()
    return sorted(ids or []), newest or last


def _own_read(position: str) -> str:
    """`position` with every touch of the current transaction so far read too (PostgreSQL)."""
    table = connection.ops.quote_name(CustomerTouch._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT x.own::text, (SELECT coalesce(max(id), 0) FROM {table} "
                       f"WHERE txid = x.own::text::bigint) "
                       f"FROM (SELECT pg_current_xact_id_if_assigned() AS own) x")
        own, last = cursor.fetchone()
    if own is None:
        return position
    return f"{_unseen_own(position.split(' ')[0], own)} {own} {last}"


def position_now() -> str:
    """The position of a consumer that has read every touch the current transaction sees."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            return _position(cursor, *_snapshot(cursor))
        table = connection.ops.quote_name(CustomerTouch._meta.db_table)
        cursor.execute(f"SELECT coalesce(max(id), 0) FROM {table}")
        return str(cursor.fetchone()[0])


def _read_by(consumer: str) -> tuple[str, dict[str, str]]:
    """The condition (on touches `t`) and its parameters: the touches `consumer` reads."""
    skips = touch_skips.get(consumer)
    origins = sorted(set(skips())) if skips is not None else [consumer]
    if not origins:
        return "TRUE", {}
    names = {f"skip{index}": origin for index, origin in enumerate(origins)}
    return f"t.origin NOT IN ({', '.join(f'%({name})s' for name in names)})", names


def touches_since(consumer: str, position: str) -> tuple[list[int], str]:
    """The customers touched since `position` that the current transaction sees (but not by
    the tables `touch_skips` spares `consumer`), and the position to store once they are
    handled."""
    table = connection.ops.quote_name(CustomerTouch._meta.db_table)
    since, params = _since(position)
    read, read_params = _read_by(consumer)
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            cursor.execute(f"SELECT t.customer_id, t.id FROM {table} t "
                           f"WHERE {read} AND {since}", {**params, **read_params})
            rows = cursor.fetchall()
            return (sorted({customer for customer, _id in rows}),
                    str(max((touch for _customer, touch in rows), default=params["at"])))
        snapshot, own = _snapshot(cursor)
        cursor.execute(
            f"SELECT array_agg(DISTINCT t.customer_id) FROM {table} t "
            f"WHERE {read} AND (t.txid = %(me)s OR "
            f"pg_visible_in_snapshot(t.txid::text::xid8, %(now)s::pg_snapshot)) AND {since}",
            {**params, **read_params, "now": snapshot, "me": int(own) if own else None})
        ids = sorted(cursor.fetchone()[0] or [])
        # Its own touches so far are read now, or were before, or are its own writes.
        return ids, _position(cursor, snapshot, own)


def touched_customers_process(consumer: str, *, limit: int = 50_000) -> int | None:
    """Hand the customers touched since the consumer's last run to its handler, `limit` at a
    time (or everyone at once: `TouchHandler`); returns how many, or None when another worker
    is processing this consumer's touches right now."""
    handler = touch_consumers.get(consumer)
    if handler is None:
        raise LookupError(f"no touch consumer named {consumer!r} is registered")
    TouchConsumer.objects.get_or_create(consumer=consumer)
    with transaction.atomic():
        lock = (TouchConsumer.objects.select_for_update(skip_locked=True)
                .filter(consumer=consumer).first())
        if lock is None:
            return None
        ids, lock.position = touches_since(consumer, lock.position)
        if len(ids) > limit and len(ids) > FULL_SHARE * Customer.objects.count():
            answers = [handler(None)]
        else:
            answers = [handler(ids[start:start + limit]) for start in range(0, len(ids), limit)]
        if (connection.vendor == "postgresql" and answers
                and all(isinstance(answer, Settled) for answer in answers)):
            lock.position = _own_read(lock.position)
        lock.save(update_fields=["position", "updated_at"])
    return len(ids)


def touches_waiting() -> dict[str, int]:
    """Per consumer, how many customers it has touches of not read yet (committed or not)."""
    table = connection.ops.quote_name(CustomerTouch._meta.db_table)
    waiting = {}
    for consumer, position in TouchConsumer.objects.values_list("consumer", "position"):
        since, params = _since(position)
        read, read_params = _read_by(consumer)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(DISTINCT t.customer_id) FROM {table} t "
                           f"WHERE {read} AND {since}", {**params, **read_params})
            waiting[consumer] = cursor.fetchone()[0]
    return waiting


def read_in_full_today(last_full: datetime | None, last_run: datetime | None,
                       now: datetime) -> bool:
    """Whether a periodic job that follows the customers (a tag rule, a stage model) read
    every customer earlier today (local day) and has run since: then it may read only the
    customers a condition can change for with time alone, the touches bringing the others
    (docs/DOMAIN.md §8). Never on SQLite, where no triggers write touches for every writer."""
    return (connection.vendor == "postgresql" and last_full is not None
            and last_run is not None
            and timezone.localdate(last_full) == timezone.localdate(now))


def touches_prune() -> int:
    """Forget the consumers no longer installed (their app was removed), then delete the
    touches every remaining consumer has read; returns how many touches went."""
    consumers = [name for name, _handler in [*touch_consumers.items(), *touch_claimers.items()]]
    TouchConsumer.objects.exclude(consumer__in=consumers).delete()
    positions = dict(TouchConsumer.objects.values_list("consumer", "position"))
    if set(consumers) - set(positions) or not all(positions.values()):
        return 0                    # a consumer that has not read yet reads from the start
    positions = list(positions.values())
    if not positions:
        deleted, _ = CustomerTouch.objects.all().delete()
        return deleted
    if connection.vendor != "postgresql":
        deleted, _ = CustomerTouch.objects.filter(id__lte=min(map(int, positions))).delete()
        return deleted
    # Read by every consumer: visible in each one's snapshot (so a long transaction elsewhere
    # holds back only its own touches).
    snapshots = [position.split(" ")[0] for position in positions]
    table = connection.ops.quote_name(CustomerTouch._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {table} t WHERE t.txid < (SELECT min(pg_snapshot_xmax(p::pg_snapshot)"
            f"::text::bigint) FROM unnest(%(at)s::text[]) p) AND NOT EXISTS (SELECT FROM "
            f"unnest(%(at)s::text[]) p WHERE NOT pg_visible_in_snapshot(t.txid::text::xid8, "
            f"p::pg_snapshot))", {"at": snapshots})
        deleted = cursor.rowcount
        if not connection.in_atomic_block:
            # A queue table: without its dead rows vacuumed, planning the consumers' reads
            # probes them at the txid index's ends (25 ms a read after a day of touches).
            cursor.execute(f"VACUUM (ANALYZE) {table}")
    return deleted
