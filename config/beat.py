"""The beat schedule, in one place. Each entry expires before its next run would start, so a
backlog after an outage never runs the same job many times over.

These are the defaults: beat runs the rows of django-celery-beat's PeriodicTask table, seeded from
BEAT_SCHEDULE by `core.services.periodic_tasks_sync` (`manage.py seed_periodic_tasks`, and at
every beat start) and editable by admins at /settings/schedules/. JOB_TEXTS names each job for
that page."""

from celery.schedules import crontab
from django.utils.translation import gettext_lazy as _

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
    "wecom-resume-callbacks": {
        "task": "wecom.tasks.resume_callbacks",
        "schedule": 120.0,
        "options": {"expires": 110},
    },
    "wecom-resume-syncs": {
        "task": "wecom.tasks.resume_syncs",
        "schedule": 300.0,
        "options": {"expires": 290},
    },
    "wecom-push-tags": {
        "task": "wecom.tasks.sync_tags",
        "schedule": 300.0,
        "options": {"expires": 290},
    },
    "wecom-poll-mass-sends": {
        "task": "wecom.tasks.poll_mass_sends",
        "schedule": 300.0,
        "options": {"expires": 290},
    },
    "wecom-reminders": {
        "task": "wecom.tasks.send_reminders",
        "schedule": 300.0,
        "options": {"expires": 290},
    },
    "wecom-sync-nightly": {
        "task": "wecom.tasks.sync_all",
        "schedule": crontab(hour=3, minute=30),
        "options": {"expires": 3 * 3600},
    },
    "crm-resume-imports": {
        "task": "crm.tasks.resume_customer_imports",
        "schedule": 300.0,
        "options": {"expires": 280},
    },
    "crm-resume-exports": {
        "task": "crm.tasks.resume_customer_exports",
        "schedule": 300.0,
        "options": {"expires": 280},
    },
    "lifecycle-resume-bulk-jobs": {
        "task": "lifecycle.tasks.resume_bulk_stage_jobs",
        "schedule": 300.0,
        "options": {"expires": 280},
    },
    "tagging-run-due-rules": {
        "task": "tagging.tasks.run_due_tag_rules",
        "schedule": 300.0,
        "options": {"expires": 280},
    },
    "tagging-touched-customers": {
        "task": "tagging.tasks.tag_touched_customers",
        "schedule": 10.0,
        "options": {"expires": 9},
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
        "schedule": 10.0,
        "options": {"expires": 9},
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


# What the settings page shows for each job: a name and one line on what it does.
JOB_TEXTS = {
    "core-analyze-database": (
        _("Planner statistics"),
        _("Refreshes the embedded SQLite database's query statistics (nothing to do on "
          "PostgreSQL).")),
    "crm-repair-customer-aggregates": (
        _("Repair customer figures"),
        _("Recomputes every customer's order count, spend and last activity from the orders "
          "and events.")),
    "crm-prune-touches": (
        _("Prune the change queue"),
        _("Deletes the customer changes every consumer has read.")),
    "wecom-resume-callbacks": (
        _("Resume WeCom callbacks"),
        _("Processes the WeCom callbacks whose task was lost (idempotent: each is applied "
          "once).")),
    "wecom-resume-syncs": (
        _("Resume WeCom syncs"),
        _("Continues WeCom sync runs that stopped making progress, from their cursor.")),
    "wecom-push-tags": (
        _("Sync tags with WeCom"),
        _("Reads WeCom's corp tags, sends tags created, renamed or deleted here, and the "
          "customers' tag changes (mark_tag). Nothing when WeCom is not configured.")),
    "wecom-poll-mass-sends": (
        _("WeCom mass send results"),
        _("Asks WeCom which mass sends staff confirmed and marks their messages sent or "
          "skipped with WeCom's reason. Nothing when WeCom is not configured.")),
    "wecom-reminders": (
        _("Reminders in WeCom"),
        _("Sends each staff member their due to-dos, churn warnings and alerts as a WeCom "
          "application message, once each, outside the staff's quiet hours. Nothing without "
          "WECOM_AGENT_ID.")),
    "wecom-sync-nightly": (
        _("Full WeCom sync"),
        _("Reads every follow user's contacts, the customer groups and the corp tags from "
          "WeCom, the safety net for callbacks that never came. Nothing when WeCom is not "
          "configured.")),
    "crm-resume-imports": (
        _("Resume customer imports"),
        _("Restarts CSV imports that stopped making progress.")),
    "crm-resume-exports": (
        _("Resume customer exports"),
        _("Restarts large CSV exports of the customer list that stopped making progress.")),
    "lifecycle-resume-bulk-jobs": (
        _("Resume bulk stage moves"),
        _("Restarts bulk stage moves from the customer list that stopped making progress.")),
    "tagging-run-due-rules": (
        _("Run due tag rules"),
        _("Runs every tag rule whose own interval has passed.")),
    "tagging-touched-customers": (
        _("Tag recently changed customers"),
        _("Re-evaluates the tag rules for customers whose events or orders just arrived.")),
    "tagging-expire-tags": (
        _("Expire tags"),
        _("Removes tags whose validity has run out.")),
    "tagging-resume-bulk-jobs": (
        _("Resume bulk tag jobs"),
        _("Restarts bulk tagging jobs that stopped making progress.")),
    "tagging-segment-index": (
        _("Segment index"),
        _("Rebuilds the index behind fast segment counts once it is old enough.")),
    "tagging-sweep-orphans": (
        _("Tag clean-up"),
        _("Removes tags written for customers deleted while a rule ran.")),
    "lifecycle-evaluate-due-models": (
        _("Evaluate stage models"),
        _("Moves customers between stages for every model whose interval has passed.")),
    "lifecycle-sweep-orphans": (
        _("Stage clean-up"),
        _("Removes stage rows left by customers deleted while an evaluation ran.")),
    "lifecycle-touched-customers": (
        _("Stages of recently changed customers"),
        _("Re-evaluates the stages of customers whose events or orders just arrived.")),
    "campaigns-dispatch": (
        _("Send due messages"),
        _("Sends every queued message that is due, through its channel.")),
    "campaigns-sweep": (
        _("Outbox sweeper"),
        _("Puts messages stuck in sending after a worker died back in the queue.")),
    "campaigns-start-due": (
        _("Start scheduled campaigns"),
        _("Starts campaigns whose send time has come and closes finished ones.")),
    "campaigns-harassment": (
        _("Block-rate guard"),
        _("Pauses SOP steps and campaigns whose block rate passes the policy's threshold and "
          "alerts the admins.")),
    "metrics-snapshot-nightly": (
        _("Nightly metric snapshot"),
        _("Stores yesterday's figures and refreshes the cohort table.")),
    "metrics-today": (
        _("Today's figures"),
        _("Stores today's figures so far and warms the dashboard's cache.")),
}
