"""Celery entry points of metrics (queue `metrics`); each calls one service (when they run:
docs/METRICS.md, "Snapshots")."""

from celery import shared_task

from metrics import reports, services


@shared_task(acks_late=True)
def snapshot_metrics_nightly() -> dict:
    """Beat, shortly after midnight (system time zone): snapshot yesterday, refresh the cohort
    table, the stage spells and channel cells, and the customer bitmaps. Safe to run twice: each replaces what it writes, under a lock."""
    done = services.metrics_nightly()
    return {"date": done.snapshot.date.isoformat(), "rows": done.snapshot.rows,
            "cohort_cells": done.cohorts.cells, "spells": done.facts.spells}


@shared_task(acks_late=True)
def metrics_today() -> dict:
    """Beat, every 4 minutes: store today so far (today's snapshot and today's part of the
    stored facts), so that the dashboards read it instead of computing it, then
    warm the cache with the dashboard's default answers. Safe to run twice: each part replaces
    what it writes, under a lock."""
    done = services.metrics_today()
    warmed = reports.warm()
    return {"date": done.date.isoformat(), "rows": done.snapshot.rows,
            "changed_customers": done.changed_customers, "ms": done.duration_ms, "warmed": warmed}
