"""Celery entry points of core; each calls one function."""

from celery import shared_task

from core.db import planner_statistics_refresh


@shared_task(acks_late=True)
def analyze_database() -> str | None:
    """Beat, hourly: the embedded SQLite default's planner statistics (a no-op on PostgreSQL,
    whose autovacuum keeps them)."""
    return planner_statistics_refresh(scheduled=True)
