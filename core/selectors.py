"""Reads for the settings pages that belong to no one app: the periodic jobs and the staff."""

from dataclasses import dataclass

from celery import current_app
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Exists, OuterRef, Q
from django.utils.translation import gettext_lazy as _
from django_celery_beat.models import PeriodicTask

from core import access
from core.people import staff_name
from core.services import (
    JobDefault,
    job_defaults,
    periodic_task_schedule,
    periodic_task_seeded,
)

# Rows the project did not seed but beat keeps by itself.
_OTHER_JOB_TEXTS = {
    "celery.backend_cleanup": (
        _("Celery result clean-up"),
        _("Celery's own: deletes expired task results (this project keeps none).")),
}
ROLE_LABELS = {access.ADMIN: _("Admin"), access.OPERATOR: _("Operator"),
               access.ANALYST: _("Analyst")}


@dataclass
class JobRow:
    task: PeriodicTask
    title: str
    description: str
    schedule: dict | None
    default: JobDefault | None
    queue: str
    seeded: bool

    @property
    def kind(self) -> str:
        if self.schedule is None:
            return "other"
        return "interval" if "interval" in self.schedule else "crontab"

    @property
    def customised(self) -> bool:
        """Differs from config/beat.py's default (what "reset to default" would undo)."""
        return self.default is not None and (
            self.schedule != self.default.schedule or not self.task.enabled)

    @property
    def default_text(self) -> str:
        return schedule_text(self.default.schedule) if self.default else ""


def schedule_text(schedule: dict | None) -> str:
    if schedule is None:
        return ""
    if "interval" in schedule:
        return _("every %(seconds)s s") % {"seconds": schedule["interval"]}
    cron = schedule["crontab"]
    return "{minute} {hour} {day_of_month} {month_of_year} {day_of_week}".format(**cron)


def _texts(name: str, task_name: str) -> tuple[str, str]:
    from config.beat import JOB_TEXTS  # next to the defaults they describe

    if name in JOB_TEXTS:
        return JOB_TEXTS[name]
    if name in _OTHER_JOB_TEXTS:
        return _OTHER_JOB_TEXTS[name]
    task = current_app.tasks.get(task_name)
    doc = (getattr(task, "__doc__", None) or "").strip().split("\n\n")[0]
    return name, " ".join(doc.split())


def _queue(row: PeriodicTask) -> str:
    if row.queue:
        return row.queue
    route = current_app.amqp.router.route({}, row.task)
    queue = route.get("queue")
    return getattr(queue, "name", queue) or current_app.conf.task_default_queue


def periodic_task_rows(*, schedule: dict | None = None) -> list[JobRow]:
    """Every job beat runs, seeded ones in config/beat.py's order first; one query."""
    defaults = job_defaults(schedule)
    order = {name: index for index, name in enumerate(defaults)}
    rows = []
    for task in PeriodicTask.objects.select_related("interval", "crontab").order_by("name"):
        title, description = _texts(task.name, task.task)
        rows.append(JobRow(task=task, title=title, description=description,
                           schedule=periodic_task_schedule(task),
                           default=defaults.get(task.name), queue=_queue(task),
                           seeded=periodic_task_seeded(task) is not None))
    rows.sort(key=lambda row: (order.get(row.task.name, len(order)), row.task.name))
    return rows


@dataclass
class StaffRow:
    user: object
    name: str
    role: str | None
    full_phone_own: bool = False       # given to the user on Settings › Users
    full_phone_by_role: bool = False   # through a group (the admin role's) or as a superuser

    @property
    def role_label(self) -> str:
        return ROLE_LABELS.get(self.role, _("No role"))


def _role_of(user) -> str | None:
    if user.is_superuser:
        return access.ADMIN
    names = {group.name for group in user.groups.all()}
    return next((role for role in access.ROLES if role in names), None)


def staff_users() -> list[StaffRow]:
    """Every user with their role: active before inactive, then admins, operators, analysts
    and those without a role; two queries."""
    User = get_user_model()
    app_label, codename = access.FULL_PHONE_PERMISSION.split(".")
    full_phone = Q(permission__content_type__app_label=app_label, permission__codename=codename)
    users = User.objects.prefetch_related("groups").annotate(
        full_phone_own=Exists(User.user_permissions.through.objects.filter(
            full_phone, user=OuterRef("pk"))),
        full_phone_group=Exists(Group.permissions.through.objects.filter(
            full_phone, group__user=OuterRef("pk"))))
    rows = [StaffRow(user=user, name=staff_name(user), role=_role_of(user),
                     full_phone_own=user.full_phone_own,
                     full_phone_by_role=user.is_superuser or user.full_phone_group)
            for user in users]
    rank = {role: index for index, role in enumerate(access.ROLES)}
    rows.sort(key=lambda row: (not row.user.is_active, rank.get(row.role, len(rank)),
                               row.user.get_username()))
    return rows
