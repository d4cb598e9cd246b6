"""Channel QR codes (渠道活码): a channel's 「联系我」 code in WeCom, whose `state` is the channel's
code, with the tags given and the welcome message sent to everyone who adds staff through it
(both applied when the add_external_contact callback arrives, in wecom.services)."""

from __future__ import annotations

import logging

import requests
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils.translation import gettext as _

from campaigns.templates import check_template
from core import audit
from core.exceptions import ApplicationError
from crm.models import Channel
from crm.services import channel_save
from wecom.client import WeComClient, WeComError, api_enabled, client
from wecom.models import ContactWay

logger = logging.getLogger(__name__)

STATE_MAX_LENGTH = 30       # WeCom's limit on a contact way's `state`
REMARK_MAX_LENGTH = 30
QR_MAX_BYTES = 2 * 1024 * 1024
WELCOME_MAX_BYTES = 4000


def _check(*, channel: Channel, staff: list[str], welcome_message: str) -> list[str]:
    if len(channel.code) > STATE_MAX_LENGTH:
        raise ApplicationError(
            _("channel: WeCom takes a code of at most %(n)d characters as the QR code's state; "
              "%(code)r is longer.") % {"n": STATE_MAX_LENGTH, "code": channel.code},
            {"field": "channel"})
    staff = list(dict.fromkeys(s.strip() for s in staff if s and s.strip()))
    if not staff:
        raise ApplicationError(_("staff: choose at least one staff member."), {"field": "staff"})
    known = set(get_user_model().objects.filter(username__in=staff, is_active=True)
                .values_list("username", flat=True))
    unknown = [s for s in staff if s not in known]
    if unknown:
        raise ApplicationError(_("staff: unknown staff %(names)s") % {"names": ", ".join(unknown)},
                               {"field": "staff"})
    if welcome_message.strip():
        check_template(welcome_message, path="welcome_message")
        if len(welcome_message.encode()) > WELCOME_MAX_BYTES:
            raise ApplicationError(_("welcome_message: WeCom takes at most %(n)d bytes.")
                                   % {"n": WELCOME_MAX_BYTES}, {"field": "welcome_message"})
    return staff


def _fetch_qr(url: str) -> bytes:
    """The QR image WeCom hosts, kept here so it shows and downloads without WeCom."""
    try:
        response = requests.get(url, timeout=10)
        response.raise_for_status()
    except requests.RequestException as exc:
        logger.warning("wecom.qr_fetch_failed", extra={"error": str(exc)})
        return b""
    content = response.content
    return content if len(content) <= QR_MAX_BYTES else b""


@transaction.atomic
def contact_way_save(*, way: ContactWay | None, channel: Channel | None, staff: list[str],
                     skip_verify: bool = True, tags=(), welcome_message: str = "",
                     new_channel: tuple[str, str] | None = None, cost=None,
                     api: WeComClient | None = None) -> ContactWay:
    """Create or change a channel's QR code in WeCom and here: for `channel`, or for a new
    QR-code channel `new_channel` (code, name); `cost` (when given) becomes the channel's.
    WeCom refusing is a 400 with its message, and nothing changes here."""
    if not api_enabled():
        raise ApplicationError(_("WeCom is not configured: set WECOM_CORP_ID and WECOM_SECRET."))
    if channel is None:
        code, name = new_channel
        channel = channel_save(channel=None, code=code, name=name, kind=Channel.Kind.QR_CODE,
                               cost=cost or 0)
    elif cost is not None and cost != channel.cost:
        channel = channel_save(channel=channel, cost=cost)
    staff = _check(channel=channel, staff=staff, welcome_message=welcome_message)
    if way is None and ContactWay.objects.filter(channel=channel).exists():
        raise ApplicationError(_("channel: this channel has a QR code already; edit it."),
                               {"field": "channel"})
    api = api or client()
    body = {"type": 1 if len(staff) == 1 else 2, "scene": 2, "style": 1,
            "remark": channel.name[:REMARK_MAX_LENGTH], "skip_verify": bool(skip_verify),
            "state": channel.code, "user": staff}
    try:
        if way is not None and way.config_id:
            api.post("externalcontact/update_contact_way",
                     {"config_id": way.config_id, **{k: v for k, v in body.items()
                                                     if k not in ("type", "scene")}})
        else:
            answer = api.post("externalcontact/add_contact_way", body)
    except WeComError as exc:
        raise ApplicationError(_("WeCom refused the QR code: %(error)s")
                               % {"error": exc.errmsg or exc}) from exc
    created = way is None
    way = way or ContactWay(channel=channel)
    if not way.config_id:
        way.config_id = str(answer.get("config_id") or "")
        way.qr_code_url = str(answer.get("qr_code") or "")
        way.qr_code = _fetch_qr(way.qr_code_url) if way.qr_code_url else b""
    way.channel, way.staff, way.skip_verify = channel, staff, bool(skip_verify)
    way.welcome_message, way.error = welcome_message.strip(), ""
    way.save()
    way.tags.set(list(tags))
    logger.info("wecom.contact_way_saved", extra={"channel": channel.code,
                                                  "config_id": way.config_id})
    audit.record("contact_way.save", target=way, summary=channel.name,
                 data={"channel": channel.code, "staff": staff, "created": created,
                       "config_id": way.config_id})
    return way


@transaction.atomic
def contact_way_delete(*, way: ContactWay, api: WeComClient | None = None) -> None:
    """Delete the QR code in WeCom and here (the channel and its customers stay)."""
    if way.config_id and api_enabled():
        try:
            (api or client()).post("externalcontact/del_contact_way",
                                   {"config_id": way.config_id})
        except WeComError as exc:
            if exc.errcode not in (41044, 40058):       # already gone in WeCom
                raise ApplicationError(_("WeCom refused to delete the QR code: %(error)s")
                                       % {"error": exc.errmsg or exc}) from exc
    audit.record("contact_way.delete", target=way, summary=way.channel.name,
                 data={"channel": way.channel.code, "config_id": way.config_id})
    way.delete()


def qr_refresh(*, way: ContactWay) -> ContactWay:
    """Fetch the QR image again (it was not reachable when the code was made)."""
    if way.qr_code_url:
        way.qr_code = _fetch_qr(way.qr_code_url)
        way.save(update_fields=["qr_code", "updated_at"])
    return way
