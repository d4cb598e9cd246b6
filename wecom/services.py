"""WeCom callbacks: verify and store them (fast, in the request), then turn the stored ones into
crm facts through crm's ingest service (in a task)."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException
from django.conf import settings
from django.db import transaction
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from campaigns.templates import compile_template, context_for, render
from core.db import insert_ignore_returning
from crm.models import Customer, Group, GroupMembership
from crm.services import events_ingest, note_add
from tagging.models import TagSource
from tagging.services import customers_tags_change
from wecom.accounts import staff_users_ensure, system_user
from wecom.client import WeComError, api_enabled, client
from wecom.crypto import WeComCryptoError, WXBizMsgCrypt
from wecom.models import Callback, ContactWay
from wecom.sync import contact_refresh, group_apply, tags_pull

logger = logging.getLogger(__name__)

MAX_SKEW_SECONDS = 300          # a callback's timestamp may be this far off our clock
NONCE_WINDOW = timedelta(hours=2)   # WeCom does not repeat a nonce within 2 hours
MAX_BODY_BYTES = 64 * 1024
WELCOME_CODE_SECONDS = 20      # WeCom accepts a welcome message this long after the event
CONTACT_ADDED = ("add_external_contact", "add_half_external_contact")


class CallbackRefused(Exception):
    """The callback is not authentic, not fresh or a replay: 403, nothing stored."""


class CallbackMalformed(Exception):
    """The request is not a WeCom callback at all (missing parameters, not XML): 400."""


class ProcessingFailed(Exception):
    """A callback that cannot have its effect; recorded on the row."""


def callbacks_enabled() -> bool:
    return bool(settings.WECOM_CORP_ID and settings.WECOM_TOKEN
                and settings.WECOM_ENCODING_AES_KEY)


def _crypto() -> WXBizMsgCrypt:
    return WXBizMsgCrypt(token=settings.WECOM_TOKEN,
                         encoding_aes_key=settings.WECOM_ENCODING_AES_KEY,
                         receive_id=settings.WECOM_CORP_ID)


def _parse_xml(text: str | bytes) -> dict:
    """The top-level elements of a WeCom XML document as text, or as the list of their items'
    texts for a list such as MemChangeList (DTDs and entities refused)."""
    try:
        root = ElementTree.fromstring(text, forbid_dtd=True)
    except (ElementTree.ParseError, DefusedXmlException, ValueError) as exc:
        raise CallbackMalformed(_("The body is not acceptable XML.")) from exc
    return {child.tag: [(item.text or "").strip() for item in child] if len(child)
            else (child.text or "").strip() for child in root}


# --- Receiving (in the request) ------------------------------------------------------------

def callback_verify_url(*, signature: str, timestamp: str, nonce: str, echostr: str) -> str:
    """GET URL verification: the plaintext of `echostr`, to answer unchanged."""
    try:
        return _crypto().verify_url(signature, timestamp, nonce, echostr)
    except WeComCryptoError as exc:
        logger.warning("wecom.callback_refused", extra={"reason": str(exc), "method": "GET"})
        raise CallbackRefused(_("The callback could not be verified.")) from exc


def _check_fresh(timestamp: str) -> None:
    try:
        sent = int(timestamp)
    except ValueError as exc:
        raise CallbackRefused(_("The callback's timestamp is not a number.")) from exc
    if abs(time.time() - sent) > MAX_SKEW_SECONDS:
        raise CallbackRefused(_("The callback's timestamp is too far from the current time."))


@dataclass
class Received:
    callback_id: int
    created: bool


def callback_receive(*, signature: str, timestamp: str, nonce: str, body: bytes) -> Received:
    """Check and store one POSTed callback; the task that processes it runs after commit.

    A retry (same nonce, timestamp and signature) is the row already stored; another callback
    with a nonce seen within the window is a replay and refused."""
    if len(body) > MAX_BODY_BYTES:
        raise CallbackMalformed(_("The body is too large."))
    envelope = _parse_xml(body)
    encrypt = envelope.get("Encrypt", "")
    if not encrypt:
        raise CallbackMalformed(_("The body has no Encrypt element."))
    try:
        xml = _crypto().decrypt_message(signature, timestamp, nonce, encrypt)
    except WeComCryptoError as exc:
        logger.warning("wecom.callback_refused", extra={"reason": str(exc), "method": "POST"})
        raise CallbackRefused(_("The callback could not be verified.")) from exc
    _check_fresh(timestamp)
    try:
        fields = _parse_xml(xml)
    except CallbackMalformed:
        fields = {}      # authentic but unreadable: stored, and processing records the failure

    now = timezone.now()
    with transaction.atomic():
        if (Callback.objects.filter(nonce=nonce, received_at__gte=now - NONCE_WINDOW)
                .exclude(timestamp=timestamp, msg_signature=signature).exists()):
            logger.warning("wecom.callback_refused", extra={"reason": "nonce replayed"})
            raise CallbackRefused(_("The callback's nonce was seen before."))
        inserted = insert_ignore_returning(
            Callback,
            ("received_at", "msg_signature", "timestamp", "nonce", "xml", "event", "change_type",
             "external_user_id", "user_id", "status", "error"),
            [(now, signature, timestamp, nonce, xml, fields.get("Event", "")[:64],
              fields.get("ChangeType", "")[:64], fields.get("ExternalUserID", "")[:128],
              fields.get("UserID", "")[:64], Callback.Status.RECEIVED, "")])
        if inserted:
            callback_id = inserted[0][0]
            from wecom.tasks import process_callback

            transaction.on_commit(lambda: process_callback.delay(callback_id))
            created = True
        else:
            callback_id = Callback.objects.get(nonce=nonce, timestamp=timestamp,
                                               msg_signature=signature).pk
            created = False
    logger.info("wecom.callback_received", extra={"callback_id": callback_id, "new": created})
    return Received(callback_id, created)


# --- Processing (in a task) ----------------------------------------------------------------

def _occurred_at(fields: dict) -> str | None:
    try:
        return datetime.fromtimestamp(int(fields["CreateTime"]), tz=UTC).isoformat()
    except (KeyError, ValueError, OverflowError, OSError):
        return None     # crm takes the time of ingest


def _idempotency_key(fields: dict) -> str:
    """The same WeCom change is one event, whichever delivery of it arrives."""
    parts = [str(fields.get(k, "")) for k in ("ChangeType", "UserID", "ExternalUserID",
                                              "CreateTime")]
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]
    return f"wecom:{str(fields.get('ChangeType', ''))[:40]}:{digest}"


def _ingest(fields: dict, kind: str, data: dict) -> str:
    external = fields.get("ExternalUserID", "")
    if not external:
        raise ProcessingFailed(_("The event has no ExternalUserID."))
    report = events_ingest(items=[{
        "customer": external, "type": kind, "idempotency_key": _idempotency_key(fields),
        "occurred_at": _occurred_at(fields), "data": data,
    }], actor=system_user())
    if report.rejected:
        raise ProcessingFailed(report.rejected[0]["message"])
    return "" if report.accepted else "duplicate event: already recorded"


def _welcome(fields: dict, way: ContactWay | None) -> str:
    """The channel's welcome message, sent with the event's WelcomeCode while it is valid."""
    code = fields.get("WelcomeCode", "")
    if way is None or not way.welcome_message.strip() or not code:
        return ""
    if not api_enabled():
        return _("welcome message not sent: the WeCom API is not configured")
    try:
        age = time.time() - int(fields.get("CreateTime") or 0)
    except ValueError:
        age = 0
    if age > WELCOME_CODE_SECONDS:
        return _("welcome message not sent: its code expired before the event was processed")
    customer = (Customer.objects.select_related("owner", "channel")
                .get(external_id=fields["ExternalUserID"]))
    try:
        with translation.override(settings.LANGUAGE_CODE):
            text = render(compile_template(way.welcome_message), context_for(
                customer, tags=list(customer.customer_tags.values_list("tag__name", flat=True)),
                stages={}, categories=[]))
        client().post("externalcontact/send_welcome_msg",
                      {"welcome_code": code, "text": {"content": text}})
    except WeComError as exc:
        return _("welcome message not sent: %(error)s") % {"error": exc}
    except Exception as exc:        # a template that cannot render for this customer
        logger.warning("wecom.welcome_failed", extra={"error": str(exc)})
        return _("welcome message not sent: %(error)s") % {"error": exc}
    return _("welcome message sent")


def _contact_added(fields: dict) -> str:
    staff = fields.get("UserID", "")
    if not staff:
        raise ProcessingFailed(_("The event has no UserID."))
    staff_users_ensure([staff])
    data = {"owner": staff, "source": "wecom"}
    state = fields.get("State", "")[:64]
    if state:
        data["channel"] = state        # crm creates an unknown channel code
    notes = [_ingest(fields, "friend_added", data)]
    if api_enabled():
        try:        # the profile (name, gender, WeCom's tags) for the customer and the welcome
            contact_refresh(external_user_id=fields["ExternalUserID"])
        except WeComError as exc:
            notes.append(_("profile not read: %(error)s") % {"error": exc})
    way = (ContactWay.objects.filter(channel__code=state).prefetch_related("tags").first()
           if state else None)
    if way is not None and way.tags.all():
        customers_tags_change(
            customers=Customer.objects.filter(external_id=fields["ExternalUserID"]),
            add=list(way.tags.all()), remove=[], actor=system_user(),
            source=TagSource.MANUAL, audited=False)
    notes.append(_welcome(fields, way))
    return "; ".join(n for n in notes if n)


def _customer_note(fields: dict, text: str) -> str:
    customer = Customer.objects.filter(external_id=fields.get("ExternalUserID", "")).first()
    if customer is None:
        return _("not a customer here")
    note_add(customer=customer, author=system_user(), text=text)
    return ""


TRANSFER_FAILURES = {
    "customer_refused": gettext_lazy("the customer refused the transfer"),
    "customer_limit_exceed": gettext_lazy("the receiving staff member has too many customers"),
}


def _handle_contact_change(fields: dict) -> str:
    change = fields.get("ChangeType", "")
    staff = fields.get("UserID", "")
    if change in CONTACT_ADDED:
        return _contact_added(fields)
    if change == "del_follow_user":
        return _ingest(fields, "friend_deleted", {"staff": staff, "source": "wecom"})
    if change == "del_external_contact":
        return _ingest(fields, "friend_removed",
                       {"staff": staff, "source": "wecom", "reason": fields.get("Source", "")})
    if change == "edit_external_contact":
        if not api_enabled():
            return _("profile not refreshed: the WeCom API is not configured")
        try:
            return contact_refresh(external_user_id=fields.get("ExternalUserID", ""))
        except WeComError as exc:
            raise ProcessingFailed(str(exc)) from exc
    if change == "transfer_fail":
        reason = fields.get("FailReason", "")
        return _customer_note(fields, _("WeCom: transferring this customer to %(staff)s failed "
                                        "(%(reason)s).") % {
            "staff": staff, "reason": TRANSFER_FAILURES.get(reason, reason)})
    return _("not handled: %(change)s") % {"change": change}


def _members_left(chat_id: str, external_ids, at: str | None) -> list[dict]:
    """group_left items for the customers among `external_ids` (all, when None) still in the
    group; keyed by the stay they end, like the group sync's."""
    stays = GroupMembership.objects.filter(group__chat_id=chat_id, left_at__isnull=True)
    if external_ids is not None:
        stays = stays.filter(customer__external_id__in=external_ids)
    return [{"customer": ext, "type": "group_left",
             "idempotency_key": f"wecom:left:{chat_id}:{ext}:{int(joined.timestamp())}",
             "occurred_at": at, "data": {"group": chat_id, "source": "wecom"}}
            for ext, joined in stays.values_list("customer__external_id", "joined_at")]


def _handle_chat_change(fields: dict) -> str:
    chat_id, change = fields.get("ChatId", ""), fields.get("ChangeType", "")
    if not chat_id:
        raise ProcessingFailed(_("The event has no ChatId."))
    at = _occurred_at(fields)
    detail = fields.get("UpdateDetail", "")
    items: list[dict] = []
    members = fields.get("MemChangeList") or []
    if isinstance(members, str):
        members = [members] if members else []
    if change == "update" and detail == "add_member":
        known = Customer.objects.filter(external_id__in=members).values_list("external_id",
                                                                          flat=True)
        items = [{"customer": ext, "type": "group_joined",
                  "idempotency_key": f"wecom:joined:{chat_id}:{ext}:{fields.get('CreateTime')}",
                  "occurred_at": at, "data": {"group": chat_id, "source": "wecom"}}
                 for ext in known]
    elif change == "update" and detail == "del_member":
        items = _members_left(chat_id, members, at)
    elif change == "dismiss":
        items = _members_left(chat_id, None, at)
    elif change in ("create", "update"):
        if not api_enabled():
            return _("group not read: the WeCom API is not configured")
        try:
            group_apply(client().post("externalcontact/groupchat/get",
                                      {"chat_id": chat_id, "need_name": 1})["group_chat"])
        except WeComError as exc:
            raise ProcessingFailed(str(exc)) from exc
        return ""
    else:
        return _("not handled: %(change)s") % {"change": change}
    if not items:
        return _("no customer of ours among the members")
    if change == "update" and detail == "add_member" and not Group.objects.filter(
            chat_id=chat_id).exists() and api_enabled():
        try:        # a group we never saw: its name and owner from WeCom first
            group_apply(client().post("externalcontact/groupchat/get",
                                      {"chat_id": chat_id, "need_name": 1})["group_chat"])
        except WeComError as exc:
            logger.warning("wecom.group_read_failed", extra={"chat": chat_id, "error": str(exc)})
    report = events_ingest(items=items, actor=system_user())
    return _("%(n)d member changes recorded") % {"n": report.accepted}


def _handle_tag_change(fields: dict) -> str:
    if not api_enabled():
        return _("tags not read: the WeCom API is not configured")
    try:
        counts = tags_pull(api=client())
    except WeComError as exc:
        raise ProcessingFailed(str(exc)) from exc
    return _("tags: %(created)d created, %(renamed)d renamed, %(deleted)d deleted") % counts


HANDLERS = {
    "change_external_contact": _handle_contact_change,
    "change_external_chat": _handle_chat_change,
    "change_external_tag": _handle_tag_change,
}


def _handle(callback: Callback) -> str:
    try:
        fields = _parse_xml(callback.xml)
    except CallbackMalformed as exc:
        raise ProcessingFailed(str(exc)) from exc
    handler = HANDLERS.get(str(fields.get("Event", "")))
    if handler is None:
        return _("not handled: %(event)s") % {"event": fields.get("Event", "") or "?"}
    return handler(fields)


def callback_process(*, callback_id: int) -> Callback | None:
    """Apply a stored callback once: a row already processed, failed or being processed by
    another worker is left alone. Returns the row, or None when there was nothing to do."""
    with transaction.atomic():
        callback = (Callback.objects.select_for_update(skip_locked=True)
                    .filter(pk=callback_id, status=Callback.Status.RECEIVED).first())
        if callback is None:
            return None
        try:
            with transaction.atomic():
                note = _handle(callback)
        except ProcessingFailed as exc:
            callback.status, callback.error = Callback.Status.FAILED, str(exc)
        else:
            callback.status, callback.error = Callback.Status.PROCESSED, note
        callback.processed_at = timezone.now()
        callback.save(update_fields=["status", "error", "processed_at"])
    logger.info("wecom.callback_processed", extra={
        "callback_id": callback.pk, "status": callback.status, "note": callback.error})
    return callback


def callbacks_resume(*, stale_after_seconds: int = 120) -> list[int]:
    """Process again the callbacks still `received` a while after they came in: their task was
    lost (a broker restart, a worker killed before it acknowledged). Processing is idempotent
    by the row's status, so a callback whose task merely runs late is applied once."""
    cutoff = timezone.now() - timedelta(seconds=stale_after_seconds)
    ids = list(Callback.objects.filter(status=Callback.Status.RECEIVED, received_at__lt=cutoff)
               .order_by("pk").values_list("pk", flat=True)[:1000])
    for callback_id in ids:
        callback_process(callback_id=callback_id)
    return ids
