"""Celery entry points of crm; each calls one service."""

from celery import shared_task

from crm import services


@shared_task(acks_late=True)
def refresh_customer_aggregates(customer_ids: list[int] | None = None) -> int:
    """Recompute customer aggregates and event counts from the facts (nightly repair, or for
    given ids)."""
    return services.customer_facts_repair(customer_ids=customer_ids)[0]


@shared_task(acks_late=True)
def prune_touches() -> int:
    """Drop touches waiting for a consumer that is no longer installed."""
    from crm.hooks import touches_prune

    return touches_prune()
