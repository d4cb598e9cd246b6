"""Writes that belong to no one app: the periodic jobs' schedules and the staff users' roles.

Periodic jobs are django-celery-beat's `PeriodicTask` rows, which beat reads at run time.
`config/beat.py` holds their defaults; `periodic_tasks_sync` seeds the rows from it. Each row it
seeded carries, in its `description`, the schedule and enabled flag it was given (`SEED_MARK` +
JSON). A row whose schedule (or enabled flag) still equals what was seeded follows the defaults
on the next sync; one that differs was changed by an admin (here or in the Django admin) and
keeps the change until "reset to default". Rows without the mark (added by hand, Celery's own
`celery.backend_cleanup`) are never touched.
"""

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery.schedules import crontab as celery_crontab
from celery.schedules import schedule as celery_schedule
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django_celery_beat import validators
from django_celery_beat.models import (
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
)

from core import access, audit
from core.exceptions import ApplicationError

logger = logging.getLogger(__name__)

SEED_MARK = "Seeded from config/beat.py: "
CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
CRON_LABELS = {
    "minute": gettext_lazy("Minute"),
    "hour": gettext_lazy("Hour"),
    "day_of_month": gettext_lazy("Day of month"),
    "month_of_year": gettext_lazy("Month"),
    "day_of_week": gettext_lazy("Day of week"),
}
_CRON_VALIDATORS = {
    "minute": validators.minute_validator,
    "hour": validators.hour_validator,
    "day_of_month": validators.day_of_month_validator,
    "month_of_year": validators.month_of_year_validator,
    "day_of_week": validators.day_of_week_validator,
}
MAX_INTERVAL_SECONDS = 31 * 24 * 3600
_PERIOD_SECONDS = {IntervalSchedule.DAYS: 86400, IntervalSchedule.HOURS: 3600,
                   IntervalSchedule.MINUTES: 60, IntervalSchedule.SECONDS: 1,
                   IntervalSchedule.MICROSECONDS: 1e-6}


# --- Periodic jobs -----------------------------------------------------------------------------

@dataclass(frozen=True)
class JobDefault:
    """One entry of config/beat.py, in the shape the rows are compared in."""

    name: str
    task: str
    schedule: dict          # {"interval": seconds} or {"crontab": {field: str, "timezone": str}}
    expires: int | None
    queue: str | None
    args: str
    kwargs: str


def _schedule_spec(value: Any) -> dict:
    if isinstance(value, celery_crontab):
        spec = {field: str(getattr(value, f"_orig_{field}")) for field in CRON_FIELDS}
        # Crontabs run in the app's time zone, as the file-based scheduler ran them.
        return {"crontab": {**spec, "timezone": settings.TIME_ZONE}}
    if isinstance(value, celery_schedule):
        value = value.run_every
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, int | float):
        return {"interval": int(value)}
    raise ValueError(f"config/beat.py: cannot store the schedule {value!r} in the database")


def job_defaults(schedule: dict | None = None) -> dict[str, JobDefault]:
    """config/beat.py's entries (or `schedule`, in the same shape), by name."""
    if schedule is None:
        from config.beat import BEAT_SCHEDULE  # the project's defaults, read when asked

        schedule = BEAT_SCHEDULE
    out = {}
    for name, entry in schedule.items():
        options = entry.get("options", {})
        expires = options.get("expires")
        out[name] = JobDefault(
            name=name, task=entry["task"], schedule=_schedule_spec(entry["schedule"]),
            expires=int(expires) if isinstance(expires, int | float) else None,
            queue=options.get("queue") or None,
            args=json.dumps(list(entry.get("args", ()))),
            kwargs=json.dumps(dict(entry.get("kwargs", {}))))
    return out


def periodic_task_schedule(task: PeriodicTask) -> dict | None:
    """The row's schedule in the comparable shape (None for solar or clocked ones)."""
    if task.interval_id:
        interval = task.interval
        return {"interval": int(interval.every * _PERIOD_SECONDS[interval.period])}
    if task.crontab_id:
        cron = task.crontab
        return {"crontab": {**{field: getattr(cron, field) for field in CRON_FIELDS},
                            "timezone": str(cron.timezone)}}
    return None


def periodic_task_seeded(task: PeriodicTask) -> dict | None:
    """What the last sync gave the row ({"schedule", "enabled"}), or None if it did not seed it."""
    description = task.description or ""
    if not description.startswith(SEED_MARK):
        return None
    try:
        seeded = json.loads(description[len(SEED_MARK):])
    except ValueError:
        return None
    return seeded if isinstance(seeded, dict) else None


def _seed_mark(default: JobDefault) -> str:
    return SEED_MARK + json.dumps({"schedule": default.schedule, "enabled": True},
                                  sort_keys=True, ensure_ascii=False)


def _expires(default: JobDefault, schedule: dict) -> int | None:
    """The default expiry, shortened below a shorter interval: a job's message must expire before
    the next one is sent, so that a backlog never runs it many times over."""
    if default.expires is None or "interval" not in schedule:
        return default.expires
    return min(default.expires, max(1, schedule["interval"] - 1))


def _set_schedule(task: PeriodicTask, schedule: dict) -> None:
    task.solar = task.clocked = None
    if "interval" in schedule:
        seconds = schedule["interval"]
        task.crontab = None
        task.interval = (IntervalSchedule.objects.filter(
            every=seconds, period=IntervalSchedule.SECONDS).order_by("pk").first()
            or IntervalSchedule.objects.create(every=seconds, period=IntervalSchedule.SECONDS))
    else:
        spec = schedule["crontab"]
        task.interval = None
        task.crontab = (CrontabSchedule.objects.filter(**spec).order_by("pk").first()
                        or CrontabSchedule.objects.create(**spec))


def _lock_schedule() -> None:
    """One sync at a time (two beats starting together): row lock on beat's change marker."""
    PeriodicTasks.objects.select_for_update().get_or_create(
        ident=1, defaults={"last_update": timezone.now()})


@dataclass
class SyncReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    customised: int = 0
    removed: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@transaction.atomic
def periodic_tasks_sync(*, schedule: dict | None = None) -> SyncReport:
    """Create or update beat's rows from config/beat.py (or `schedule`): task, queue and expiry
    always follow the file; schedule and enabled flag follow it unless an admin changed them.
    Rows seeded earlier whose entry left the file are deleted. Safe to run any number of times
    and from two processes at once."""
    defaults = job_defaults(schedule)
    report = SyncReport()
    _lock_schedule()
    rows = {row.name: row for row in PeriodicTask.objects.select_related("interval", "crontab")
            .filter(name__in=list(defaults))}
    for name, default in defaults.items():
        row = rows.get(name)
        if row is None:
            row = PeriodicTask(name=name, enabled=True)
            _apply_default(row, default, schedule=default.schedule)
            row.save()
            report.created += 1
            continue
        seeded = periodic_task_seeded(row)
        current = periodic_task_schedule(row)
        follows_schedule = seeded is None or current == seeded.get("schedule")
        follows_enabled = seeded is None or row.enabled == seeded.get("enabled")
        target = default.schedule if follows_schedule else current
        before = _row_state(row)
        if follows_enabled:
            row.enabled = True
        if target != current:
            _set_schedule(row, target)
        _apply_default(row, default, schedule=target)
        if not (follows_schedule and follows_enabled):
            report.customised += 1
        if _row_state(row) != before:
            row.save()
            report.updated += 1
        else:
            report.unchanged += 1
    gone = PeriodicTask.objects.filter(description__startswith=SEED_MARK).exclude(
        name__in=list(defaults))
    for row in gone:
        row.delete()
        report.removed += 1
    logger.info("core.periodic_tasks_synced", extra={"report": report.as_dict()})
    return report


def _apply_default(row: PeriodicTask, default: JobDefault, *, schedule: dict) -> None:
    if row.pk is None:
        _set_schedule(row, schedule)
    row.task = default.task
    row.queue = default.queue
    row.exchange = row.routing_key = None
    row.args, row.kwargs = default.args, default.kwargs
    row.expires = None
    row.expire_seconds = _expires(default, schedule)
    row.one_off = False
    row.description = _seed_mark(default)


def _row_state(row: PeriodicTask) -> tuple:
    return (row.task, row.queue, row.args, row.kwargs, row.enabled, row.expire_seconds,
            row.expires, row.description, row.interval_id, row.crontab_id, row.solar_id,
            row.clocked_id, row.one_off)


def _check_interval(every: Any) -> int:
    if not isinstance(every, int) or isinstance(every, bool):
        raise ApplicationError(_("Every: enter a whole number of seconds."),
                               {"field": "every"})
    if every < 1:
        raise ApplicationError(_("Every: must be at least 1 second."), {"field": "every"})
    if every > MAX_INTERVAL_SECONDS:
        raise ApplicationError(_("Every: at most %(max)d seconds (31 days); use a crontab for "
                                 "rarer jobs.") % {"max": MAX_INTERVAL_SECONDS},
                               {"field": "every"})
    return every


def _check_crontab(fields: dict, *, tz: str) -> dict:
    spec = {}
    for field in CRON_FIELDS:
        value = str(fields.get(field, "")).strip()
        label = CRON_LABELS[field]
        if not value:
            raise ApplicationError(_("%(field)s: required (use * for every value).")
                                   % {"field": label}, {"field": field})
        try:
            _CRON_VALIDATORS[field](value)
        except ValidationError as exc:
            raise ApplicationError(_("%(field)s: %(value)r is not a valid crontab value (%(error)s).")
                                   % {"field": label, "value": value,
                                      "error": "; ".join(exc.messages)},
                                   {"field": field}) from exc
        spec[field] = value
    try:
        celery_crontab(**spec)
    except (ValueError, TypeError) as exc:
        raise ApplicationError(_("Crontab: %(error)s") % {"error": exc},
                               {"field": "minute"}) from exc
    return {"crontab": {**spec, "timezone": tz}}


@transaction.atomic
def periodic_task_update(*, task: PeriodicTask, enabled: bool, every: int | None = None,
                         crontab: dict | None = None) -> PeriodicTask:
    """An admin's change of one job: its schedule (seconds for an interval job, the five crontab
    fields for a crontab job; the kind stays) and whether it runs. Kept by later syncs."""
    task = PeriodicTask.objects.select_for_update(of=("self",)).select_related(
        "interval", "crontab").get(pk=task.pk)
    current = periodic_task_schedule(task)
    if current is None:
        raise ApplicationError(_("This job has a schedule this page cannot edit; use the "
                                 "Django admin."))
    if "interval" in current:
        schedule = {"interval": _check_interval(every)}
    else:
        schedule = _check_crontab(crontab or {}, tz=current["crontab"]["timezone"])
    if schedule != current:
        _set_schedule(task, schedule)
    default = job_defaults().get(task.name)
    if default is not None and periodic_task_seeded(task) is not None:
        task.expire_seconds = _expires(default, schedule)
    task.enabled = bool(enabled)
    task.save()
    logger.info("core.periodic_task_changed", extra={"task": task.name, "enabled": task.enabled})
    audit.record("settings.schedule", target=task, summary=task.name,
                 data={"enabled": task.enabled, "schedule": schedule})
    return task


@transaction.atomic
def periodic_task_reset(*, task: PeriodicTask, schedule: dict | None = None) -> PeriodicTask:
    """Back to config/beat.py's schedule, enabled; later syncs follow the file again."""
    default = job_defaults(schedule).get(task.name)
    if default is None:
        raise ApplicationError(_("%(name)s has no default in config/beat.py: it was added by "
                                 "hand.") % {"name": task.name})
    task = PeriodicTask.objects.select_for_update().get(pk=task.pk)
    _set_schedule(task, default.schedule)
    task.enabled = True
    _apply_default(task, default, schedule=default.schedule)
    task.save()
    audit.record("settings.schedule", target=task, summary=task.name,
                 data={"reset": True})
    return task


# --- Staff users and their roles ---------------------------------------------------------------

def _set_role(user, role: str) -> None:
    keep = [group for group in user.groups.all() if group.name not in access.ROLES]
    groups = keep + ([Group.objects.get_or_create(name=role)[0]] if role else [])
    user.groups.set(groups)
    user._crm_role = False      # access.user_role's per-request cache


def _check_role(role: str) -> str:
    if role and role not in access.ROLES:
        raise ApplicationError(_("Role: choose admin, operator or analyst."), {"field": "role"})
    return role


@transaction.atomic
def staff_user_create(*, username: str, password: str, role: str, first_name: str = "",
                      last_name: str = ""):
    """A new dashboard user with a role. Username and password rules are Django's (the form
    checks them with the configured password validators)."""
    _check_role(role)
    user = get_user_model().objects.create_user(
        username=username, password=password, first_name=first_name, last_name=last_name)
    _set_role(user, role)
    logger.info("core.staff_user_created", extra={"user": user.pk, "role": role})
    audit.record("settings.user", target=user, summary=user.get_username(),
                 data={"role": role, "created": True})
    return user


def _set_full_phone(user, allowed: bool) -> None:
    """Give the user (not their role) the permission to export full phone numbers, or take it
    back; what their role's group gives stays."""
    app_label, codename = access.FULL_PHONE_PERMISSION.split(".")
    permission = Permission.objects.get(content_type__app_label=app_label, codename=codename)
    if allowed:
        user.user_permissions.add(permission)
    else:
        user.user_permissions.remove(permission)
    for cache in ("_perm_cache", "_user_perm_cache", "_group_perm_cache"):  # ModelBackend's
        user.__dict__.pop(cache, None)


@transaction.atomic
def staff_user_update(*, actor, user, role: str, is_active: bool,
                      full_phone: bool | None = None):
    """Change a user's role, whether they may sign in and (unless `full_phone` is None)
    whether they themselves may export full phone numbers. An admin cannot take away their own
    admin role or account (someone must be left to give it back); a superuser is an admin
    whatever their groups say, which the Django admin changes."""
    _check_role(role)
    if user.pk == actor.pk:
        if role != access.ADMIN:
            raise ApplicationError(_("You cannot remove your own admin role: ask another admin "
                                     "to do it."), {"field": "role"})
        if not is_active:
            raise ApplicationError(_("You cannot deactivate your own account: ask another "
                                     "admin to do it."), {"field": "is_active"})
    if user.is_superuser and role != access.ADMIN:
        raise ApplicationError(_("%(username)s is a superuser and stays an admin whatever the "
                                 "role; take that away in the Django admin first.")
                               % {"username": user.get_username()}, {"field": "role"})
    if user.is_active != bool(is_active):
        user.is_active = bool(is_active)
        user.save(update_fields=["is_active"])
    _set_role(user, role)
    data = {"role": role, "active": user.is_active}
    if full_phone is not None:
        _set_full_phone(user, bool(full_phone))
        data["full_phone"] = bool(full_phone)
    logger.info("core.staff_user_changed", extra={"user": user.pk, "actor": actor.pk, **data})
    audit.record("settings.user", target=user, actor=actor, summary=user.get_username(),
                 data=data)
    return user
