"""What the WeCom pages read: the connection's state, recent callbacks and sync runs, channel QR
codes and mass sends (each scoped to what the user may see)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, Q, Sum
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from core import access
from core.people import staff_name
from crm.models import Customer
from wecom.client import api_enabled, connection_state
from wecom.models import Callback, ContactWay, MassSend, SyncRun


def wecom_enabled() -> bool:
    from wecom.services import callbacks_enabled

    return api_enabled() or callbacks_enabled()


def connection() -> dict[str, Any]:
    """The settings page's figures: what is configured, the token, the last call and error,
    the callbacks of the last day and the latest run of each sync."""
    from wecom.reminders import reminders_enabled
    from wecom.services import callbacks_enabled

    state = connection_state()
    error = state.get("last_error")
    if error:
        error = {**error, "at": parse_datetime(error.get("at") or "")}
    since = timezone.now() - timedelta(days=1)
    callbacks = Callback.objects.filter(received_at__gte=since).aggregate(
        total=Count("id"), failed=Count("id", filter=Q(status=Callback.Status.FAILED)),
        waiting=Count("id", filter=Q(status=Callback.Status.RECEIVED)))
    latest_runs = {}
    for kind in SyncRun.Kind.values:
        latest_runs[kind] = SyncRun.objects.filter(kind=kind).first()
    return {
        "api": api_enabled(), "callbacks_on": callbacks_enabled(),
        "reminders": reminders_enabled(), "corp_id": settings.WECOM_CORP_ID,
        "api_base": settings.WECOM_API_BASE, "agent_id": settings.WECOM_AGENT_ID,
        "token_at": parse_datetime(state.get("token_at") or ""),
        "last_call_at": parse_datetime(state.get("last_call_at") or ""),
        "last_error": error,
        "last_callback": Callback.objects.order_by("-received_at").first(),
        "callbacks": callbacks,
        "failed_callbacks": list(Callback.objects.filter(status=Callback.Status.FAILED)
                                 .order_by("-received_at")[:5]),
        "latest_runs": latest_runs,
    }


def sync_runs(limit: int = 15) -> list[SyncRun]:
    return list(SyncRun.objects.all()[:limit])


def contact_ways() -> list[dict[str, Any]]:
    """Every channel QR code with its channel's customers and cost per customer (for ROI)."""
    ways = list(ContactWay.objects.select_related("channel").prefetch_related("tags__group")
                .order_by("channel__name"))
    counts = dict(Customer.objects.filter(channel__in=[w.channel_id for w in ways])
                  .values_list("channel").annotate(n=Count("id")))
    people = {u.username: staff_name(u) for u in get_user_model().objects.filter(
        username__in={s for w in ways for s in w.staff})}
    rows = []
    for way in ways:
        customers = counts.get(way.channel_id, 0)
        cost = way.channel.cost or 0
        rows.append({"way": way, "customers": customers,
                     "staff": [people.get(s, s) for s in way.staff],
                     "tags": [{"label": t.name, "color": t.color, "title": t.group.name}
                              for t in way.tags.all()],
                     "cost_per_customer": (cost / customers) if customers and cost else None})
    return rows


def mass_sends_for(user):
    """Mass sends the user may see: an operator's own (as sender), every one for admins."""
    sends = MassSend.objects.select_related("created_by")
    if not access.is_admin(user):
        sends = sends.filter(Q(sender=user.get_username()) | Q(created_by=user))
    return sends


def waiting_summary(user) -> dict[str, int]:
    """The user's mass sends awaiting their confirmation in the WeCom client."""
    waiting = MassSend.objects.filter(status=MassSend.Status.WAITING,
                                      sender=user.get_username())
    return waiting.aggregate(sends=Count("id"), recipients=Sum("recipients"))
