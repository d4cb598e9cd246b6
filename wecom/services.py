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
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from core import access
from core.db import insert_ignore_returning
from core.services import staff_user_create
from crm.services import events_ingest
from wecom.crypto import WeComCryptoError, WXBizMsgCrypt
from wecom.models import Callback

logger = logging.getLogger(__name__)

MAX_SKEW_SECONDS = 300          # a callback's timestamp may be this far off our clock
NONCE_WINDOW = timedelta(hours=2)   # WeCom does not repeat a nonce within 2 hours
MAX_BODY_BYTES = 64 * 1024
SYSTEM_USERNAME = "@wecom"      # a WeCom UserID starts with a letter or digit: never this
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


def _parse_xml(text: str | bytes) -> dict[str, str]:
    """The top-level elements of a WeCom XML document as text (DTDs and entities refused)."""
    try:
        root = ElementTree.fromstring(text, forbid_dtd=True)
    except (ElementTree.ParseError, DefusedXmlException, ValueError) as exc:
        raise CallbackMalformed(_("The body is not acceptable XML.")) from exc
    return {child.tag: (child.text or "").strip() for child in root}


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

def _system_user():
    """The actor of WeCom's ingests: an admin that cannot sign in."""
    User = get_user_model()
    user = User.objects.filter(username=SYSTEM_USERNAME).first()
    if user is None:
        try:
            with transaction.atomic():
                user = User.objects.create_user(username=SYSTEM_USERNAME, password=None,
                                                first_name="WeCom", is_superuser=True)
        except IntegrityError:          # created a moment ago by a concurrent task
            user = User.objects.get(username=SYSTEM_USERNAME)
    return user


def _staff_user(user_id: str):
    """The staff account for a WeCom UserID, created (operator, no password) when missing."""
    User = get_user_model()
    if not User.objects.filter(username=user_id).exists():
        try:
            with transaction.atomic():
                staff_user_create(username=user_id, password=None, role=access.OPERATOR)
        except IntegrityError:
            pass
    return user_id


def _occurred_at(fields: dict[str, str]) -> str | None:
    try:
        return datetime.fromtimestamp(int(fields["CreateTime"]), tz=UTC).isoformat()
    except (KeyError, ValueError, OverflowError, OSError):
        return None     # crm takes the time of ingest


def _idempotency_key(fields: dict[str, str]) -> str:
    """The same WeCom change is one event, whichever delivery of it arrives."""
    parts = [fields.get(k, "") for k in ("ChangeType", "UserID", "ExternalUserID", "CreateTime")]
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]
    return f"wecom:{fields.get('ChangeType', '')[:40]}:{digest}"


def _ingest(fields: dict[str, str], kind: str, data: dict) -> str:
    external = fields.get("ExternalUserID", "")
    if not external:
        raise ProcessingFailed(_("The event has no ExternalUserID."))
    report = events_ingest(items=[{
        "customer": external, "type": kind, "idempotency_key": _idempotency_key(fields),
        "occurred_at": _occurred_at(fields), "data": data,
    }], actor=_system_user())
    if report.rejected:
        raise ProcessingFailed(report.rejected[0]["message"])
    return "" if report.accepted else "duplicate event: already recorded"


def _handle_contact_change(fields: dict[str, str]) -> str:
    change = fields.get("ChangeType", "")
    staff = fields.get("UserID", "")
    if change in CONTACT_ADDED:
        if not staff:
            raise ProcessingFailed(_("The event has no UserID."))
        data = {"owner": _staff_user(staff), "source": "wecom"}
        if fields.get("State"):
            data["channel"] = fields["State"]      # crm creates an unknown channel code
        return _ingest(fields, "friend_added", data)
    if change == "del_follow_user":
        return _ingest(fields, "friend_deleted", {"staff": staff, "source": "wecom"})
    if change == "del_external_contact":
        return _ingest(fields, "friend_removed",
                       {"staff": staff, "source": "wecom", "reason": fields.get("Source", "")})
    return "not handled yet"


def _handle(callback: Callback) -> str:
    try:
        fields = _parse_xml(callback.xml)
    except CallbackMalformed as exc:
        raise ProcessingFailed(str(exc)) from exc
    if fields.get("Event") == "change_external_contact":
        return _handle_contact_change(fields)
    return "not handled yet"


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
