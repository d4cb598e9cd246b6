"""Mass sends through WeCom: the results of 1-to-1 mass sends mapped onto the outbox, group
sends (to customer groups) and moments (朋友圈) made from the dashboard, and the polling that
learns when staff confirmed them."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from campaigns.models import Message
from campaigns.services import messages_submitted_resolve
from core import access
from core.exceptions import ApplicationError
from crm.models import Group
from wecom.client import RATE_LIMITED, WeComClient, WeComError, api_enabled, client
from wecom.models import MassSend, TagLink

logger = logging.getLogger(__name__)

RESULTS_PER_PAGE = 1000
POLL_BATCH = 200
TEXT_MAX_BYTES = 4000
SEND_SKIPS = {2: Message.SkipReason.NOT_A_FRIEND, 3: Message.SkipReason.PLATFORM_QUOTA}
OUTCOMES = {0: "unsent", 1: "sent", 2: "not_a_friend", 3: "quota"}


def _when(seconds) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(seconds), tz=UTC) if seconds else None
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _all(api: WeComClient, path: str, body: dict, items: str) -> list[dict]:
    rows: list[dict] = []
    for page, _cursor in api.pages(path, body, items=items):
        rows.extend(page)
    return rows


def _apply_results(mass: MassSend, send_list: list[dict]) -> dict[str, int]:
    """The per-recipient outcomes onto the outbox's messages (1-to-1 sends) and the counts."""
    counts: dict[str, int] = {}
    for row in send_list:
        outcome = OUTCOMES.get(int(row.get("status") or 0), "unsent")
        counts[outcome] = counts.get(outcome, 0) + 1
    if mass.kind != MassSend.Kind.SINGLE:
        return counts
    by_customer = dict(Message.objects.filter(provider_id=mass.msgid,
                                              status=Message.Status.SUBMITTED)
                       .values_list("customer__external_id", "pk"))
    sent, skipped, failed = {}, {}, {}
    for row in send_list:
        pk = by_customer.get(str(row.get("external_userid") or ""))
        if pk is None:
            continue
        status = int(row.get("status") or 0)
        if status == 1:
            sent[pk] = _when(row.get("send_time")) or timezone.now()
        elif status in SEND_SKIPS:
            skipped[pk] = SEND_SKIPS[status]
        else:
            failed[pk] = "the staff member did not send it to this customer"
    messages_submitted_resolve(sent=sent, skipped=skipped, failed=failed)
    return counts


def _expire(mass: MassSend) -> None:
    mass.status = MassSend.Status.EXPIRED
    if mass.kind == MassSend.Kind.SINGLE:
        ids = list(Message.objects.filter(provider_id=mass.msgid, status=Message.Status.SUBMITTED)
                   .values_list("pk", flat=True))
        messages_submitted_resolve(failed={pk: (
            f"not confirmed by the staff member within {settings.WECOM_CONFIRM_DAYS} days")
            for pk in ids})


def mass_send_poll(*, mass: MassSend, api: WeComClient | None = None) -> MassSend:
    """Ask WeCom whether the staff member confirmed the send, and with what results."""
    api = api or client()
    now = timezone.now()
    with transaction.atomic():
        mass = MassSend.objects.select_for_update().get(pk=mass.pk)
        if mass.status != MassSend.Status.WAITING:
            return mass
        if mass.kind == MassSend.Kind.MOMENT:
            answer = api.get("externalcontact/get_moment_task_result", jobid=mass.msgid)
            result = answer.get("result") or {}
            if int(answer.get("status") or 0) == 3:
                if int(result.get("errcode") or 0):
                    mass.status = MassSend.Status.FAILED
                    mass.error = str(result.get("errmsg") or result.get("errcode"))
                else:
                    mass.status, mass.confirmed_at = MassSend.Status.SENT, now
                    mass.results = {"moment_id": str(result.get("moment_id") or "")}
        else:
            tasks = _all(api, "externalcontact/get_groupmsg_task",
                         {"msgid": mass.msgid, "limit": RESULTS_PER_PAGE}, "task_list")
            done = [t for t in tasks if int(t.get("status") or 0) == 2
                    and (not mass.sender or t.get("userid") == mass.sender)]
            if done:
                send_list = _all(api, "externalcontact/get_groupmsg_send_result",
                                 {"msgid": mass.msgid, "userid": done[0].get("userid"),
                                  "limit": RESULTS_PER_PAGE}, "send_list")
                mass.results = _apply_results(mass, send_list)
                mass.status = MassSend.Status.SENT
                mass.confirmed_at = _when(done[0].get("send_time")) or now
        if (mass.status == MassSend.Status.WAITING
                and mass.created_at < now - timedelta(days=settings.WECOM_CONFIRM_DAYS)):
            _expire(mass)
        mass.polled_at, mass.error = now, mass.error if mass.status == "failed" else ""
        mass.save()
    return mass


def mass_sends_poll(*, api: WeComClient | None = None, limit: int = POLL_BATCH) -> dict[str, int]:
    """The open mass sends, least recently checked first; a failure for one is recorded on it,
    WeCom busy ends the round (the next one goes on)."""
    if not api_enabled():
        return {}
    api = api or client()
    counts: dict[str, int] = {}
    for mass in MassSend.objects.filter(status=MassSend.Status.WAITING).order_by(
            "polled_at", "pk")[:limit]:
        try:
            mass = mass_send_poll(mass=mass, api=api)
        except WeComError as exc:
            if exc.errcode in RATE_LIMITED:
                break
            MassSend.objects.filter(pk=mass.pk).update(error=str(exc)[:1000],
                                                       polled_at=timezone.now())
            counts["error"] = counts.get("error", 0) + 1
            continue
        counts[mass.status] = counts.get(mass.status, 0) + 1
    return counts


def _check_text(content: str) -> str:
    content = (content or "").strip()
    if not content:
        raise ApplicationError(_("content: write the text."), {"field": "content"})
    if len(content.encode()) > TEXT_MAX_BYTES:
        raise ApplicationError(_("content: WeCom takes at most %(n)d bytes.")
                               % {"n": TEXT_MAX_BYTES}, {"field": "content"})
    return content


def _sender_for(actor, sender: str) -> str:
    if access.user_role(actor) != access.ADMIN:
        return actor.get_username()          # operators send as themselves
    if not get_user_model().objects.filter(username=sender, is_active=True).exists():
        raise ApplicationError(_("sender: unknown staff %(name)r") % {"name": sender},
                               {"field": "sender"})
    return sender


@transaction.atomic
def group_send_create(*, actor, sender: str, chat_ids: list[str], content: str,
                      api: WeComClient | None = None) -> MassSend:
    """A mass send to customer groups owned by `sender` (an operator: their own groups)."""
    content = _check_text(content)
    sender = _sender_for(actor, sender)
    groups = list(Group.objects.filter(chat_id__in=chat_ids, owner__username=sender)
                  .values_list("chat_id", flat=True))
    if not groups:
        raise ApplicationError(_("groups: choose at least one group owned by the sender."),
                               {"field": "groups"})
    try:
        answer = (api or client()).post("externalcontact/add_msg_template", {
            "chat_type": "group", "sender": sender, "chat_id_list": groups,
            "text": {"content": content}})
    except WeComError as exc:
        raise ApplicationError(_("WeCom refused the send: %(error)s")
                               % {"error": exc.errmsg or exc}) from exc
    return MassSend.objects.create(kind=MassSend.Kind.GROUP, msgid=str(answer["msgid"]),
                                   sender=sender, content=content, recipients=len(groups),
                                   targets=groups, created_by=actor)


@transaction.atomic
def moment_create(*, actor, senders: list[str], tags, content: str,
                  api: WeComClient | None = None) -> MassSend:
    """A moment (朋友圈) posted by the senders, visible to their customers holding any of the
    tags (all their customers when none); tags must be linked to WeCom's corp tags."""
    content = _check_text(content)
    senders = sorted({_sender_for(actor, s) for s in senders or [actor.get_username()]})
    tag_ids = list(TagLink.objects.filter(tag__in=list(tags)).values_list("wecom_id", flat=True))
    if len(tag_ids) != len(list(tags)):
        raise ApplicationError(_("tags: only tags synced with WeCom can choose who sees a "
                                 "moment; run the tag sync first."), {"field": "tags"})
    visible = {"sender_list": {"user_list": senders}}
    if tag_ids:
        visible["external_contact_list"] = {"tag_list": tag_ids}
    try:
        answer = (api or client()).post("externalcontact/add_moment_task", {
            "text": {"content": content}, "visible_range": visible})
    except WeComError as exc:
        raise ApplicationError(_("WeCom refused the moment: %(error)s")
                               % {"error": exc.errmsg or exc}) from exc
    return MassSend.objects.create(kind=MassSend.Kind.MOMENT, msgid=str(answer["jobid"]),
                                   sender=",".join(senders)[:64], content=content,
                                   recipients=len(senders), targets=tag_ids, created_by=actor)


def remind(*, mass: MassSend, api: WeComClient | None = None) -> None:
    """Remind the staff member in WeCom to confirm the send."""
    try:
        (api or client()).post("externalcontact/remind_groupmsg_send", {"msgid": mass.msgid})
    except WeComError as exc:
        raise ApplicationError(_("WeCom refused the reminder: %(error)s")
                               % {"error": exc.errmsg or exc}) from exc
