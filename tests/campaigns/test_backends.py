"""Channel backends (issue 5 §6) against real endpoints: the webhook and SMS backends POST signed
JSON to a local HTTP server (a thread on 127.0.0.1, random port) that answers 200, 4xx, 5xx or
too late; e-mail goes through Django mail."""

import hashlib
import hmac
import json
import socket
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import mail

from campaigns import backends, services
from crm.models import Customer
from tests.campaigns.conftest import NOW

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]

SECRET = "s3cret-for-tests"
WEBHOOK = "campaigns.backends.WebhookBackend"


class Sink:
    """What the local server received, and how it answers the next requests."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status = 200
        self.answer: dict = {"id": "wh-123"}
        self.sleep = 0.0
        self.url = ""


@pytest.fixture
def sink():
    state = Sink()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.requests.append({"path": self.path, "body": body,
                                   "headers": {k.lower(): v for k, v in self.headers.items()}})
            if state.sleep:
                time.sleep(state.sleep)
            payload = json.dumps(state.answer).encode()
            try:
                self.send_response(state.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:     # the client gave up (timeout)
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/outreach"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def webhook(sink, outreach_settings, use_backend):
    outreach_settings.OUTREACH_WEBHOOK_URL = sink.url
    outreach_settings.OUTREACH_WEBHOOK_SECRET = SECRET
    outreach_settings.OUTREACH_WEBHOOK_TIMEOUT = 0.5
    use_backend(WEBHOOK, "wecom", "webhook")
    return sink


@pytest.fixture
def wecom_message(queue, owner):
    customer = Customer.objects.create(external_id="wm-lin", name="林小姐", phone="13800000001",
                                       owner=owner)
    return queue(customer, channel="wecom", category="content", content="新品上架啦")


def _signed(request) -> bool:
    expected = hmac.new(SECRET.encode(), request["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(request["headers"].get("x-signature-sha256", ""), expected)


def test_a_200_answer_is_a_send_with_the_providers_id(webhook, wecom_message):
    result = services.messages_dispatch(now=NOW)

    assert result.sent == 1
    wecom_message.refresh_from_db()
    assert (wecom_message.status, wecom_message.provider_id, wecom_message.attempts) == (
        "sent", "wh-123", 1)
    [request] = webhook.requests
    assert request["path"] == "/outreach"
    assert _signed(request)
    assert request["headers"]["idempotency-key"] == wecom_message.dedupe_key
    assert request["headers"]["content-type"] == "application/json"
    assert json.loads(request["body"]) == {
        "id": wecom_message.pk, "dedupe_key": wecom_message.dedupe_key, "channel": "wecom",
        "category": "content", "content": "新品上架啦",
        "customer": {"external_id": "wm-lin", "name": "林小姐", "phone": "13800000001"}}


def test_a_tampered_body_does_not_verify(webhook, wecom_message):
    services.messages_dispatch(now=NOW)
    [request] = webhook.requests
    tampered = {**request, "body": request["body"].replace("新品".encode(), "旧品".encode())}
    assert _signed(request) and not _signed(tampered)


def test_without_an_id_in_the_answer_the_dedupe_key_is_the_provider_id(webhook, wecom_message):
    webhook.answer = {"ok": True}
    services.messages_dispatch(now=NOW)
    wecom_message.refresh_from_db()
    assert (wecom_message.status, wecom_message.provider_id) == ("sent",
                                                                 wecom_message.dedupe_key)


def test_a_500_is_retried_then_failed_after_max_attempts(webhook, wecom_message,
                                                         outreach_policy):
    outreach_policy(max_attempts=3)
    webhook.status = 500
    moment = NOW
    for expected in ("queued", "queued", "failed"):
        services.messages_dispatch(now=moment)
        wecom_message.refresh_from_db()
        assert (wecom_message.status, wecom_message.last_error) == (expected, "HTTP 500")
        moment = wecom_message.due_at

    assert wecom_message.attempts == 3
    assert len(webhook.requests) == 3
    # Every attempt carries the same idempotency key, so the receiver can drop repeats.
    assert {r["headers"]["idempotency-key"] for r in webhook.requests} == {
        wecom_message.dedupe_key}
    assert all(_signed(r) for r in webhook.requests)
    assert services.messages_dispatch(now=moment + timedelta(hours=2)).claimed == 0


@pytest.mark.parametrize("status, final, attempts", [(400, "failed", 1), (404, "failed", 1),
                                                     (429, "queued", 1), (503, "queued", 1)])
def test_client_errors_are_permanent_and_rate_limits_transient(webhook, wecom_message, status,
                                                                final, attempts):
    webhook.status = status
    services.messages_dispatch(now=NOW)
    wecom_message.refresh_from_db()
    assert (wecom_message.status, wecom_message.attempts, wecom_message.last_error) == (
        final, attempts, f"HTTP {status}")


def test_a_server_slower_than_the_timeout_is_retried_then_failed(webhook, wecom_message,
                                                                 outreach_policy):
    outreach_policy(max_attempts=2)
    webhook.sleep = 1.0
    started = time.monotonic()

    first = services.messages_dispatch(now=NOW)
    wecom_message.refresh_from_db()
    assert first.retried == 1
    assert wecom_message.status == "queued"
    assert "timed out" in wecom_message.last_error

    services.messages_dispatch(now=wecom_message.due_at)
    wecom_message.refresh_from_db()
    assert (wecom_message.status, wecom_message.attempts) == ("failed", 2)
    assert "timed out" in wecom_message.last_error
    assert len(webhook.requests) == 2
    assert time.monotonic() - started < 2.0 + 1.0     # the timeout (0.5 s) was honoured


def test_a_closed_port_is_transient(outreach_settings, use_backend, wecom_message):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outreach_settings.OUTREACH_WEBHOOK_URL = f"http://127.0.0.1:{port}/nobody"
    outreach_settings.OUTREACH_WEBHOOK_TIMEOUT = 0.5
    use_backend(WEBHOOK, "wecom")
    services.messages_dispatch(now=NOW)
    wecom_message.refresh_from_db()
    assert (wecom_message.status, wecom_message.attempts) == ("queued", 1)
    assert "refused" in wecom_message.last_error.lower()


def test_an_unset_webhook_url_is_a_permanent_failure(outreach_settings, use_backend,
                                                     wecom_message):
    outreach_settings.OUTREACH_WEBHOOK_URL = ""
    use_backend(WEBHOOK, "wecom")
    services.messages_dispatch(now=NOW)
    wecom_message.refresh_from_db()
    assert (wecom_message.status, wecom_message.last_error) == (
        "failed", "OUTREACH_WEBHOOK_URL is not set")


def test_sms_through_the_http_gateway(webhook, outreach_settings, use_backend, queue, owner):
    outreach_settings.OUTREACH_SMS_URL = webhook.url
    use_backend("campaigns.backends.SmsBackend", "sms")
    with_phone = Customer.objects.create(external_id="sms-1", phone="13900000002", owner=owner)
    without = Customer.objects.create(external_id="sms-2", owner=owner)
    sent = queue(with_phone, channel="sms", content="【品牌】您好")
    no_phone = queue(without, channel="sms", content="【品牌】您好")

    services.messages_dispatch(now=NOW)

    sent.refresh_from_db()
    no_phone.refresh_from_db()
    assert (sent.status, sent.provider_id) == ("sent", "wh-123")
    assert (no_phone.status, no_phone.last_error) == ("failed", "no phone number")
    [request] = webhook.requests
    assert json.loads(request["body"]) == {"phone": "13900000002", "text": "【品牌】您好",
                                           "reference": sent.dedupe_key}
    assert _signed(request)


def test_email_goes_to_the_customers_address(use_backend, queue, owner):
    use_backend("campaigns.backends.EmailBackend", "email")
    reachable = Customer.objects.create(external_id="mail-1", owner=owner,
                                        attributes={"email": "lin@example.com"})
    unreachable = Customer.objects.create(external_id="mail-2", owner=owner)
    sent = queue(reachable, channel="email", content="我们想听听您的意见\n您好，欢迎回信。")
    failed = queue(unreachable, channel="email", content="主题\n正文")

    services.messages_dispatch(now=NOW)

    sent.refresh_from_db()
    failed.refresh_from_db()
    assert sent.status == "sent"
    assert (failed.status, failed.last_error) == ("failed",
                                                  "no e-mail address (attributes.email)")
    [email] = mail.outbox
    assert (email.subject, email.body, email.to) == ("我们想听听您的意见", "您好，欢迎回信。",
                                                     ["lin@example.com"])


def test_backends_are_chosen_by_settings(outreach_settings, use_backend):
    assert isinstance(backends.backend_for("wecom"), backends.ConsoleBackend)
    use_backend(WEBHOOK, "wecom")
    assert isinstance(backends.backend_for("wecom"), backends.WebhookBackend)
    assert isinstance(backends.backend_for("sms"), backends.ConsoleBackend)
