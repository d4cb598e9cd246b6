"""The Celery app: `celery -A config worker` / `celery -A config beat`."""

import os

from celery import Celery
from kombu import Queue

from config.beat import BEAT_SCHEDULE

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
    beat_schedule=BEAT_SCHEDULE,
)
app.autodiscover_tasks()

