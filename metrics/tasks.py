"""Celery entry points of metrics (queue `metrics`), each calling its service; when beat runs
them: docs/METRICS.md, "Snapshots"."""

from celery import shared_task

from metrics import reports, services


@shared_task(acks_late=True)
def snapshot_metrics_nightly() -> dict:
    """Beat, after midnight: the nightly job (services.metrics_nightly)."""
    done = services.metrics_nightly()
    return {"date": done.snapshot.date.isoformat(), "rows": done.snapshot.rows,
            "cohort_cells": done.cohorts.cells, "spells": done.facts.spells}


@shared_task(acks_late=True)
def metrics_today() -> dict:
    """Beat, every 4 minutes: store today so far, then warm the dashboard's cache."""
    done = services.metrics_today()
    warmed = reports.warm()
    return {"date": done.date.isoformat(), "rows": done.snapshot.rows,
            "changed_customers": done.changed_customers, "ms": done.duration_ms, "warmed": warmed}
