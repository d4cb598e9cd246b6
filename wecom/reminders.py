"""Reminders where operators are: due to-dos, churn warnings and alerts sent to the staff member
as a WeCom application message (message/send), once per to-do, one message per person per
round, never in the staff's quiet hours."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import time as dtime

from django.conf import settings
from django.core.cache import caches
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext, override

from campaigns.models import OperatorTask
from campaigns.services import quiet_until
from wecom.client import RATE_LIMITED, WeComClient, WeComError, api_enabled, client
from wecom.models import Reminder

logger = logging.getLogger(__name__)

MAX_TASKS_PER_ROUND = 2000
MAX_LINES = 10
UNKNOWN_USERS = 81013      # message/send: none of the users is in WeCom


def reminders_enabled() -> bool:
    return api_enabled() and bool(settings.WECOM_AGENT_ID)


def staff_quiet_until(now):
    raw = (settings.WECOM_STAFF_QUIET_HOURS or "").strip()
    if not raw:
        return None
    try:
        window = tuple(dtime.fromisoformat(p.strip()) for p in raw.split("-"))
    except ValueError:
        logger.error("wecom.bad_quiet_hours", extra={"value": raw})
        return None
    return quiet_until(now, timezone.get_current_timezone(), window)


def _text(tasks: list[OperatorTask]) -> str:
    with override(settings.LANGUAGE_CODE):
        lines = [ngettext("You have %(n)d to-do due in the CRM:",
                          "You have %(n)d to-dos due in the CRM:", len(tasks)) % {"n": len(tasks)}]
        for task in tasks[:MAX_LINES]:
            lines.append(f"· {task.title}")
        if len(tasks) > MAX_LINES:
            lines.append(_("… and %(n)d more") % {"n": len(tasks) - MAX_LINES})
    return "\n".join(lines)


LOCK_KEY = "wecom:reminders:lock"


def reminders_send(*, api: WeComClient | None = None, now=None) -> dict[str, int]:
    """Send the due, open, not yet reminded to-dos, one message per staff member. One round
    at a time (a lock in the cache), so two workers never remind twice."""
    if not reminders_enabled():
        return {}
    now = now or timezone.now()
    if staff_quiet_until(now) is not None:
        return {"quiet": 1}
    lock = caches["wecom"]      # shared by every worker process
    if not lock.add(LOCK_KEY, 1, timeout=600):
        return {"busy": 1}
    try:
        return _send_round(api or client(), now)
    finally:
        lock.delete(LOCK_KEY)


def _send_round(api: WeComClient, now) -> dict[str, int]:
    due = list(OperatorTask.objects.filter(status=OperatorTask.Status.OPEN, due_at__lte=now)
               .exclude(Exists(Reminder.objects.filter(task=OuterRef("pk"))))
               .select_related("assignee").order_by("assignee_id", "due_at", "pk")
               [:MAX_TASKS_PER_ROUND])
    by_user: dict[str, list[OperatorTask]] = defaultdict(list)
    for task in due:
        by_user[task.assignee.get_username()].append(task)
    counts = {"people": 0, "tasks": 0, "unknown": 0}
    for username, tasks in by_user.items():
        delivered = True
        try:
            answer = api.post("message/send", {
                "touser": username, "msgtype": "text", "agentid": settings.WECOM_AGENT_ID,
                "text": {"content": _text(tasks)}})
            delivered = username not in str(answer.get("invaliduser") or "").split("|")
        except WeComError as exc:
            if exc.errcode in RATE_LIMITED:
                break
            if exc.errcode != UNKNOWN_USERS:
                logger.warning("wecom.reminder_failed", extra={"user": username,
                                                               "errcode": exc.errcode})
                continue
            delivered = False
        with transaction.atomic():
            Reminder.objects.bulk_create([Reminder(task=t, sent_at=now, delivered=delivered)
                                          for t in tasks], ignore_conflicts=True)
        counts["people" if delivered else "unknown"] += 1
        counts["tasks"] += len(tasks)
    return counts
