"""Registries that let the apps below crm react to crm's facts without crm importing them.

`customers_touched` hooks are called once per committed ingest with the ids of the customers
whose facts changed, so tagging and lifecycle can re-evaluate just those customers. Hooks must
be cheap (enqueue a task); they run after the transaction commits.
"""

from collections.abc import Callable, Iterable

from django.db import transaction

from core.registry import Registry

CustomersTouchedHook = Callable[[list[int]], None]
customers_touched: Registry[CustomersTouchedHook] = Registry("customers_touched")


def notify_customers_touched(customer_ids: Iterable[int]) -> None:
    ids = sorted(set(customer_ids))
    if not ids or not len(customers_touched):
        return

    def run() -> None:
        for hook in customers_touched:
            hook(ids)

    transaction.on_commit(run)
