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
    """Delete the touches every installed consumer has read."""
    from crm.hooks import touches_prune

    return touches_prune()


@shared_task(acks_late=True)
def run_customer_import(import_id: int) -> None:
    """A CSV import from the dashboard, chunk by chunk (crm.services.customer_import_run)."""
    services.customer_import_run(import_id=import_id)


@shared_task(acks_late=True)
def resume_customer_imports() -> int:
    """Sweeper: enqueue again the imports that stopped making progress."""
    ids = services.customer_imports_resume()
    for import_id in ids:
        run_customer_import.delay(import_id)
    return len(ids)


@shared_task(acks_late=True)
def run_customer_export(export_id: int) -> None:
    """A large export of the customer list (crm.services.customer_export_run)."""
    services.customer_export_run(export_id=export_id)


@shared_task(acks_late=True)
def resume_customer_exports() -> int:
    """Sweeper: enqueue again the exports that stopped making progress."""
    ids = services.customer_exports_resume()
    for export_id in ids:
        run_customer_export.delay(export_id)
    return len(ids)
