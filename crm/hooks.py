"""The queue of touched customers: how apps below crm learn whose facts changed.

Ingest writes one `CustomerTouch` row per touched customer in its own transaction (so a touch
exists exactly when the facts it points at do). A consumer (`tagging`, `lifecycle`, …) calls
`touched_customers_process(consumer, handler)` from a periodic task: it locks the consumer's
cursor (a second worker skips instead of doing the same work), hands the distinct customer ids
touched since the cursor to `handler`, and advances the cursor in the same transaction. Rows
every consumer has passed are pruned. No signals, no upward imports, nothing lost when a broker
message is.
"""

from collections.abc import Callable, Iterable

from django.db import transaction
from django.db.models import Min
from django.utils import timezone

from crm.models import CustomerTouch, TouchCursor


def notify_customers_touched(customer_ids: Iterable[int]) -> None:
    ids = sorted(set(customer_ids))
    if ids:
        now = timezone.now()
        CustomerTouch.objects.bulk_create([CustomerTouch(customer_id=i, at=now) for i in ids],
                                          batch_size=1000)


def touched_customers_process(consumer: str, handler: Callable[[list[int]], None], *,
                              limit: int = 50_000) -> int | None:
    """Hand the customers touched since the consumer's cursor to `handler`; returns how many,
    or None when another worker holds this consumer's cursor right now."""
    TouchCursor.objects.get_or_create(consumer=consumer)
    with transaction.atomic():
        cursor = (TouchCursor.objects.select_for_update(skip_locked=True)
                  .filter(consumer=consumer).first())
        if cursor is None:
            return None
        rows = list(CustomerTouch.objects.filter(id__gt=cursor.position).order_by("id")
                    .values_list("id", "customer_id")[:limit])
        if not rows:
            return 0
        ids = sorted({customer_id for _id, customer_id in rows})
        handler(ids)
        cursor.position = rows[-1][0]
        cursor.save(update_fields=["position", "updated_at"])
    return len(ids)


def touches_prune() -> int:
    """Delete touches every consumer has read."""
    low = TouchCursor.objects.aggregate(low=Min("position"))["low"]
    if low is None:
        return 0
    deleted, _ = CustomerTouch.objects.filter(id__lte=low).delete()
    return deleted
