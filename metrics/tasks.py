"""Celery entry points of metrics (queue `metrics`); each calls one service."""

from celery import shared_task

from metrics import reports, services


@shared_task(acks_late=True)
def snapshot_metrics_nightly() -> dict:
    """Beat, shortly after midnight (system time zone): snapshot yesterday, refresh the cohort
    table and the range facts. Safe to run twice: each replaces what it writes, under a lock."""
    done = services.metrics_nightly()
    return {"date": done.snapshot.date.isoformat(), "rows": done.snapshot.rows,
            "cohort_cells": done.cohorts.cells, "range_facts_customers": done.range_facts.customers}


@shared_task(acks_late=True)
def metrics_today() -> dict:
    """Beat, every 4 minutes: store today so far (today's snapshot and today's changes to the
    precomputed range facts), so that the dashboards read it instead of computing it, then
    warm the cache with the dashboard's default answers. Safe to run twice: each part replaces
    what it writes, under a lock."""
    done = services.metrics_today()
    warmed = reports.warm()
    return {"date": done.date.isoformat(), "rows": done.snapshot.rows,
            "range_cells": done.range_cells, "ms": done.duration_ms, "warmed": warmed}
