"""Channel backends: how a message leaves the system. Pluggable by settings
(`OUTREACH_BACKENDS`, channel → dotted path); the console backend is the embedded default.

A backend answers a `SendResult` per message and never raises for a delivery problem: a
transient failure (timeout, 5xx, 429) is retried by the dispatcher with backoff, a permanent one
(4xx, no address) is recorded on the message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.core.mail import send_mail
from django.utils.module_loading import import_string

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendResult:
    ok: bool
    provider_id: str = ""
    transient: bool = False
    error: str = ""
    # ok and submitted: handed over, a person still confirms it (the message waits as
    # `submitted` until the channel reports); not ok with a skip reason: skipped, not failed.
    submitted: bool = False
    skip_reason: str = ""


class ChannelBackend:
    # Messages one customer may be handed per day through this backend (a platform's mass-send
    # quota); the dispatcher's frequency guard skips past it. None: no such limit.
    daily_quota: int | None = None

    def send(self, message) -> SendResult:  # pragma: no cover - interface
        raise NotImplementedError

    def send_many(self, messages: list) -> list[SendResult]:
        """One result per message, in order. A backend whose platform takes many recipients
        per call (WeCom's mass sends) overrides this; by default, one send at a time, a bug in
        one not losing what the others sent."""
        results = []
        for message in messages:
            try:
                results.append(self.send(message))
            except Exception as exc:
                logger.exception("campaigns.backend_error", extra={"message_id": message.pk})
                results.append(SendResult(ok=False, transient=True,
                                          error=f"{type(exc).__name__}: {exc}"[:500]))
        return results


class ConsoleBackend(ChannelBackend):
    """Logs the message; what the embedded set-up and development use."""

    def send(self, message) -> SendResult:
        logger.info("campaigns.console_send %s → %s: %s", message.channel,
                    message.customer.name or message.customer.external_id, message.content,
                    extra={
            "message_id": message.pk, "customer": message.customer_id, "channel": message.channel,
            "content": message.content})
        return SendResult(ok=True, provider_id=f"console-{message.pk}")


class EmailBackend(ChannelBackend):
    """Django mail to `attributes.email`."""

    def send(self, message) -> SendResult:
        address = (message.customer.attributes or {}).get("email")
        if not address:
            return SendResult(ok=False, error="no e-mail address (attributes.email)")
        subject, _, body = message.content.partition("\n")
        try:
            send_mail(subject[:150], body or subject, None, [address])
        except OSError as exc:
            return SendResult(ok=False, transient=True, error=str(exc)[:500])
        return SendResult(ok=True, provider_id=f"email-{message.pk}")


def _post_json(url: str, payload: dict, *, secret: str, timeout: float,
               idempotency_key: str) -> SendResult:
    body = json.dumps(payload, ensure_ascii=False, default=str).encode()
    headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
    if secret:
        signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers["X-Signature-SHA256"] = signature
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read(65536)
    except urllib.error.HTTPError as exc:
        transient = exc.code >= 500 or exc.code == 429
        return SendResult(ok=False, transient=transient, error=f"HTTP {exc.code}")
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        return SendResult(ok=False, transient=True, error=str(exc)[:500])
    try:
        provider_id = str(json.loads(raw or b"{}").get("id") or "")
    except (ValueError, AttributeError):
        provider_id = ""
    return SendResult(ok=True, provider_id=provider_id or idempotency_key)


class WebhookBackend(ChannelBackend):
    """HTTP POST of the message as JSON, signed with HMAC-SHA256 of the body
    (`X-Signature-SHA256`), with the dedupe key as `Idempotency-Key` so the receiver can drop a
    repeat after a worker crash."""

    def __init__(self) -> None:
        self.url = settings.OUTREACH_WEBHOOK_URL
        self.secret = settings.OUTREACH_WEBHOOK_SECRET
        self.timeout = settings.OUTREACH_WEBHOOK_TIMEOUT

    def send(self, message) -> SendResult:
        if not self.url:
            return SendResult(ok=False, error="OUTREACH_WEBHOOK_URL is not set")
        customer = message.customer
        return _post_json(self.url, {
            "id": message.pk, "dedupe_key": message.dedupe_key, "channel": message.channel,
            "category": message.category, "content": message.content,
            "customer": {"external_id": customer.external_id, "name": customer.name,
                         "phone": customer.phone},
        }, secret=self.secret, timeout=self.timeout, idempotency_key=message.dedupe_key)


class SmsBackend(WebhookBackend):
    """SMS through an HTTP gateway (`OUTREACH_SMS_URL`): `{"phone", "text"}`, signed like the
    webhook."""

    def __init__(self) -> None:
        super().__init__()
        self.url = settings.OUTREACH_SMS_URL

    def send(self, message) -> SendResult:
        if not message.customer.phone:
            return SendResult(ok=False, error="no phone number")
        if not self.url:
            return SendResult(ok=False, error="OUTREACH_SMS_URL is not set")
        return _post_json(self.url, {"phone": message.customer.phone, "text": message.content,
                                     "reference": message.dedupe_key},
                          secret=self.secret, timeout=self.timeout,
                          idempotency_key=message.dedupe_key)


@lru_cache(maxsize=16)
def _load(path: str) -> ChannelBackend:
    return import_string(path)()


def backend_for(channel: str) -> ChannelBackend:
    return _load(settings.OUTREACH_BACKENDS.get(channel, "campaigns.backends.ConsoleBackend"))


def reset_backends() -> None:
    """Forget loaded backends (settings changed, e.g. in tests)."""
    _load.cache_clear()
