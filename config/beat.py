"""The beat schedule, in one place. Each entry expires before its next run would start, so a
backlog after an outage never runs the same job many times over."""

from celery.schedules import crontab

BEAT_SCHEDULE = {
    "core-analyze-database": {
        "task": "core.tasks.analyze_database",
        "schedule": crontab(minute=7),
        "options": {"expires": 3000},
    },
    "crm-repair-customer-aggregates": {
        "task": "crm.tasks.refresh_customer_aggregates",
        "schedule": crontab(minute=17, hour=3),
        "options": {"expires": 6 * 3600},
    },
    "crm-prune-touches": {
        "task": "crm.tasks.prune_touches",
        "schedule": crontab(minute=41),
        "options": {"expires": 3000},
    },
    "tagging-run-due-rules": {
        "task": "tagging.tasks.run_due_tag_rules",
        "schedule": 300.0,
        "options": {"expires": 280},
    },
    "tagging-touched-customers": {
        "task": "tagging.tasks.tag_touched_customers",
        "schedule": 30.0,
        "options": {"expires": 25},
    },
    "tagging-expire-tags": {
        "task": "tagging.tasks.expire_tags",
        "schedule": 600.0,
        "options": {"expires": 580},
    },
    "tagging-resume-bulk-jobs": {
        "task": "tagging.tasks.resume_bulk_tag_jobs",
        "schedule": 300.0,
        "options": {"expires": 280},
    },
    "tagging-segment-index": {
        "task": "tagging.tasks.build_segment_index",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "tagging-sweep-orphans": {
        "task": "tagging.tasks.sweep_orphans",
        "schedule": crontab(minute=52, hour=3),
        "options": {"expires": 6 * 3600},
    },
    "lifecycle-evaluate-due-models": {
        "task": "lifecycle.tasks.evaluate_due_models",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "lifecycle-sweep-orphans": {
        "task": "lifecycle.tasks.sweep_orphans",
        "schedule": crontab(minute=47, hour=3),
        "options": {"expires": 6 * 3600},
    },
    "lifecycle-touched-customers": {
        "task": "lifecycle.tasks.evaluate_touched_customers",
        "schedule": 30.0,
        "options": {"expires": 25},
    },
    "campaigns-dispatch": {
        "task": "campaigns.tasks.dispatch_messages",
        "schedule": 15.0,
        "options": {"expires": 14},
    },
    "campaigns-sweep": {
        "task": "campaigns.tasks.sweep_messages",
        "schedule": 120.0,
        "options": {"expires": 110},
    },
    "campaigns-start-due": {
        "task": "campaigns.tasks.start_due_campaigns",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "campaigns-harassment": {
        "task": "campaigns.tasks.check_harassment",
        "schedule": crontab(minute="*/15"),
        "options": {"expires": 800},
    },
    "metrics-snapshot-nightly": {
        # Crontabs run in the app's time zone (config/celery.py: TIME_ZONE), so this is
        # 00:10 local time: yesterday is complete.
        "task": "metrics.tasks.snapshot_metrics_nightly",
        "schedule": crontab(minute=10, hour=0),
        "options": {"expires": 6 * 3600},
    },
    "metrics-today": {
        # Today so far, stored for the dashboards (METRICS_TODAY_MAX_AGE_SECONDS, default
        # 600, says how old it may be before a request computes today itself), and the
        # dashboard's default answers cached afresh — more often than they expire (300 s).
        "task": "metrics.tasks.metrics_today",
        "schedule": crontab(minute="*/4"),
        "options": {"expires": 200},
    },
}
