"""Celery entry points of metrics (queue `metrics`); each calls one service."""

from celery import shared_task

from metrics import services


@shared_task(acks_late=True)
def snapshot_metrics_nightly() -> dict:
    """Beat, shortly after midnight (system time zone): snapshot yesterday, refresh the cohort
    table and the range facts. Safe to run twice: each replaces what it writes, under a lock."""
    done = services.metrics_nightly()
    return {"date": done.snapshot.date.isoformat(), "rows": done.snapshot.rows,
            "cohort_cells": done.cohorts.cells, "range_facts_customers": done.range_facts.customers}
