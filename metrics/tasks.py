"""Celery entry points of metrics (queue `metrics`); each calls one service."""

from celery import shared_task

from metrics import services


@shared_task(acks_late=True)
def snapshot_metrics_nightly() -> dict:
    """Beat, shortly after midnight (system time zone): snapshot yesterday and refresh the
    cohort table. Safe to run twice: each replaces what it writes, under a lock."""
    snapshot, cohorts = services.metrics_nightly()
    return {"date": snapshot.date.isoformat(), "rows": snapshot.rows,
            "cohort_cells": cohorts.cells}
