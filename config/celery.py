"""The Celery app: `celery -A config worker` / `celery -A config beat`.

Beat takes its schedule from the database (django-celery-beat, settings.CELERY_BEAT_SCHEDULER),
seeded from config/beat.py; `beat_schedule` stays empty so nothing is scheduled twice."""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("crm")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    # Every task is idempotent by state, so acknowledging after the work is safe and a task
    # interrupted by a dying worker runs again.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue="default",
    task_queues=(Queue("default"), Queue("dispatch"), Queue("metrics")),
    task_routes={
        "campaigns.tasks.*": {"queue": "dispatch"},
        "metrics.tasks.*": {"queue": "metrics"},
    },
    task_time_limit=30 * 60,
    task_soft_time_limit=25 * 60,
    broker_connection_retry_on_startup=True,
    timezone=os.environ.get("TIME_ZONE", "Asia/Shanghai"),
    enable_utc=True,
    # Empty on purpose: the DatabaseScheduler would otherwise write these entries over the
    # rows at every start, undoing an admin's edit (core.services.periodic_tasks_sync seeds
    # them from config/beat.py without doing so).
    beat_schedule={},
)
app.autodiscover_tasks()

