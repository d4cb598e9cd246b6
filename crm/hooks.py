"""The queue of touched customers: how apps below crm learn whose facts changed.

A consumer (`tagging`, `lifecycle`, …) registers a handler in `touch_consumers` from its
`AppConfig.ready()`. Ingest writes one `CustomerTouch` row per touched customer *and consumer* in
its own transaction, so a touch exists exactly when the facts it points at do. A periodic task
calls `touched_customers_process(consumer)`: it takes the consumer's lock (a second worker skips
instead of doing the same work), claims and deletes a batch of that consumer's rows in one
statement, hands the distinct customer ids to the handler and commits; a failing handler rolls
the claim back.

Why claim-and-delete and not a cursor: touch ids come from a sequence, so a transaction that
took id 100 may commit after one that took id 101. A cursor moved past 101 would never read 100.
A claim reads only committed rows and leaves every other row where it is, whatever the order in
which transactions commit. No signals, no upward imports, nothing lost when a broker message is.
"""

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from core.registry import Registry
from crm.models import CustomerTouch, TouchConsumer

TouchHandler = Callable[[list[int]], Any]
touch_consumers: Registry[TouchHandler] = Registry("touch_consumers")
# Consumers that claim their own touches (the segment index, inside its build's snapshot) and
# hear only of those the database's triggers write (PostgreSQL; migration crm 0019): kept by
# `touches_prune`, not written by `notify_customers_touched`.
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
    """One touch row per customer and consumer, in one statement: the pairs are made in SQL
    from two arrays (ORM objects cost 60 ms a 1,000-event batch; this, a few)."""
    ids = sorted(set(customer_ids))
    consumers = [name for name, _handler in touch_consumers.items()]
    if not ids or not consumers:
        return
    table = connection.ops.quote_name(CustomerTouch._meta.db_table)
    if connection.vendor == "postgresql":
        pairs = "unnest(%s::text[]) AS c (value), unnest(%s::bigint[]) AS i (value)"
        arrays = [consumers, ids]
    else:
        pairs = "json_each(%s) AS c, json_each(%s) AS i"
        arrays = [json.dumps(consumers), json.dumps(ids)]
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} (consumer, customer_id, at) "
                       f"SELECT c.value, i.value, %s FROM {pairs}",
                       [connection.ops.adapt_datetimefield_value(timezone.now()), *arrays])


def _claim(consumer: str, limit: int) -> list[int]:
    """Delete up to `limit` of the consumer's oldest committed touches; their customer ids.

    One statement, so a row committed while it runs is either claimed whole or left for the
    next run — never deleted unread."""
    table = connection.ops.quote_name(CustomerTouch._meta.db_table)
    lock = " FOR UPDATE SKIP LOCKED" if connection.features.has_select_for_update_skip_locked \
        else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE consumer = %s "
            f"ORDER BY id LIMIT %s{lock}) RETURNING customer_id", [consumer, limit])
        return sorted({row[0] for row in cursor.fetchall()})


def touched_customers_process(consumer: str, *, limit: int = 50_000) -> int | None:
    """Hand the customers touched since the consumer's last run to its handler; returns how
    many, or None when another worker is processing this consumer's touches right now."""
    handler = touch_consumers.get(consumer)
    if handler is None:
        raise LookupError(f"no touch consumer named {consumer!r} is registered")
    TouchConsumer.objects.get_or_create(consumer=consumer)
    with transaction.atomic():
        lock = (TouchConsumer.objects.select_for_update(skip_locked=True)
                .filter(consumer=consumer).first())
        if lock is None:
            return None
        ids = _claim(consumer, limit)
        if ids:
            handler(ids)
        lock.save(update_fields=["updated_at"])
    return len(ids)


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
    """Delete the touches waiting for a consumer that is no longer installed (its app was
    removed): nobody will claim them. A live consumer's rows are never dropped unread."""
    consumers = [name for name, _handler in [*touch_consumers.items(), *touch_claimers.items()]]
    TouchConsumer.objects.exclude(consumer__in=consumers).delete()
    deleted, _ = CustomerTouch.objects.exclude(consumer__in=consumers).delete()
    return deleted
