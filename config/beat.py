"""The beat schedule, in one place. Each entry expires before its next run would start, so a
backlog after an outage never runs the same job many times over."""

from celery.schedules import crontab

BEAT_SCHEDULE = {
    "crm-repair-customer-aggregates": {
        "task": "crm.tasks.refresh_customer_aggregates",
        "schedule": crontab(minute=17, hour=3),
        "options": {"expires": 6 * 3600},
    },
}
