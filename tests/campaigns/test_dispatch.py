"""The outbox dispatcher (issue 5 §5): due rows are claimed, sent once through the channel's
backend and recorded; two dispatchers at once never send a row twice; transient errors are
retried with backoff up to the cap, permanent ones recorded; the sweeper returns rows whose
worker died; `dispatch_messages` does one pass by hand."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.utils import timezone

from campaigns import services
from campaigns.backends import SendResult
from campaigns.models import Message, OutreachPolicy
from crm.models import Customer
from tests.campaigns.conftest import NOW
from tests.threads import run_at_once

pytestmark = [pytest.mark.django_db]

TRANSIENT = SendResult(ok=False, transient=True, error="gateway busy (503)")
PERMANENT = SendResult(ok=False, transient=False, error="unknown recipient")
OK = SendResult(ok=True, provider_id="prov-42")


@pytest.mark.both_dbs
def test_due_messages_are_sent_once_and_recorded(queue, recorder):
    due = queue(due_at=NOW - timedelta(minutes=1))
    exactly_now = queue(due_at=NOW)
    later = queue(due_at=NOW + timedelta(minutes=1))

    result = services.messages_dispatch(now=NOW)

    assert (result.claimed, result.sent, result.failed, result.retried) == (2, 2, 0, 0)
    assert sorted(recorder.calls) == sorted([due.pk, exactly_now.pk])
    for message in (due, exactly_now):
        message.refresh_from_db()
        assert (message.status, message.attempts, message.sent_at, message.claimed_at,
                message.provider_id) == ("sent", 1, NOW, NOW, f"rec-{message.pk}")
    later.refresh_from_db()
    assert (later.status, later.attempts) == ("queued", 0)

    # Dispatching again sends nothing twice.
    assert services.messages_dispatch(now=NOW).claimed == 0
    assert len(recorder.calls) == 2


@pytest.mark.both_dbs
def test_the_console_backend_is_the_default(queue, caplog):
    message = queue(content="林小姐您好")
    with caplog.at_level("INFO", logger="campaigns.backends"):
        services.messages_dispatch(now=NOW)
    message.refresh_from_db()
    assert (message.status, message.provider_id) == ("sent", f"console-{message.pk}")
    assert any("林小姐您好" in r.getMessage() for r in caplog.records)


@pytest.mark.both_dbs
def test_batches_until_nothing_is_due(queue, recorder):
    for _ in range(7):
        queue()
    result = services.messages_dispatch(now=NOW, batch_size=3)
    assert (result.claimed, result.sent) == (7, 7)

    for _ in range(5):
        queue()
    limited = services.messages_dispatch(now=NOW, batch_size=2, max_batches=1)
    assert limited.claimed == 2
    assert Message.objects.filter(status="queued").count() == 3


@pytest.mark.both_dbs
def test_the_dedupe_key_keeps_a_message_from_being_queued_twice(queue):
    first = queue(dedupe_key="sop:1:2:3")
    with pytest.raises(IntegrityError), transaction.atomic():
        queue(first.customer, dedupe_key="sop:1:2:3")
    assert Message.objects.filter(dedupe_key="sop:1:2:3").count() == 1


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_two_dispatchers_at_once_send_every_message_exactly_once(owner, recorder):
    OutreachPolicy.objects.create()
    customers = Customer.objects.bulk_create([
        Customer(external_id=f"race-{i}", owner=owner) for i in range(60)])
    Message.objects.bulk_create([
        Message(customer=c, channel="console", category="service", content=f"hello {n}",
                due_at=NOW - timedelta(minutes=n), dedupe_key=f"race:{c.pk}:{n}")
        for c in customers for n in range(5)])
    recorder.delay = 0.002
    results = run_at_once(*[lambda: services.messages_dispatch(now=NOW, batch_size=10)] * 2)

    assert len(recorder.calls) == 300
    assert len(set(recorder.calls)) == 300                       # nobody sent twice
    assert set(recorder.calls) == set(Message.objects.values_list("pk", flat=True))
    assert results[0].claimed + results[1].claimed == 300
    assert results[0].claimed > 0 and results[1].claimed > 0     # both really worked
    assert set(Message.objects.values_list("status", "attempts")) == {("sent", 1)}


@pytest.mark.both_dbs
def test_transient_errors_are_retried_with_backoff_then_failed(queue, scripted):
    backend = scripted(TRANSIENT)
    message = queue(due_at=NOW)
    moment, waits = NOW, []

    for _attempt in range(4):
        result = services.messages_dispatch(now=moment)
        assert (result.retried, result.failed) == (1, 0)
        message.refresh_from_db()
        assert (message.status, message.last_error) == ("queued", "gateway busy (503)")
        waits.append(message.due_at - moment)
        # Not due again before the backoff has passed.
        assert services.messages_dispatch(now=message.due_at - timedelta(seconds=1)).claimed == 0
        moment = message.due_at

    final = services.messages_dispatch(now=moment)

    assert waits == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert (final.failed, final.retried) == (1, 0)
    message.refresh_from_db()
    assert (message.status, message.attempts, message.last_error, message.sent_at) == (
        "failed", 5, "gateway busy (503)", None)
    assert len(backend.calls) == 5
    assert services.messages_dispatch(now=moment + timedelta(days=1)).claimed == 0


@pytest.mark.both_dbs
def test_the_attempt_cap_is_the_policy(queue, scripted, outreach_policy):
    outreach_policy(max_attempts=2)
    scripted(TRANSIENT)
    message = queue(due_at=NOW)
    services.messages_dispatch(now=NOW)
    services.messages_dispatch(now=NOW + timedelta(minutes=1))
    message.refresh_from_db()
    assert (message.status, message.attempts) == ("failed", 2)


@pytest.mark.both_dbs
def test_a_retry_that_succeeds_clears_the_error(queue, scripted):
    scripted(TRANSIENT, TRANSIENT, OK)
    message = queue(due_at=NOW)
    services.messages_dispatch(now=NOW)
    services.messages_dispatch(now=NOW + timedelta(minutes=1))
    services.messages_dispatch(now=NOW + timedelta(minutes=3))
    message.refresh_from_db()
    assert (message.status, message.attempts, message.provider_id, message.last_error,
            message.sent_at) == ("sent", 3, "prov-42", "", NOW + timedelta(minutes=3))


@pytest.mark.both_dbs
def test_a_permanent_failure_is_recorded_at_once(queue, scripted):
    backend = scripted(PERMANENT)
    message = queue(due_at=NOW)

    result = services.messages_dispatch(now=NOW)

    assert (result.failed, result.retried, result.sent) == (1, 0, 0)
    message.refresh_from_db()
    assert (message.status, message.attempts, message.last_error) == (
        "failed", 1, "unknown recipient")
    assert len(backend.calls) == 1


@pytest.mark.both_dbs
def test_a_backend_that_raises_does_not_lose_the_rest_of_the_batch(queue, scripted):
    backend = scripted(OK, RuntimeError("boom"), OK)
    first, broken, third = (queue(due_at=NOW - timedelta(minutes=m)) for m in (3, 2, 1))

    result = services.messages_dispatch(now=NOW)

    assert (result.sent, result.retried) == (2, 1)
    for message in (first, third):
        message.refresh_from_db()
        assert message.status == "sent"
    broken.refresh_from_db()
    assert (broken.status, broken.last_error) == ("queued", "RuntimeError: boom")
    assert backend.calls == [first.pk, broken.pk, third.pk]
    # Nothing that was sent is in the queue again.
    services.messages_sweep(stale_after_seconds=0)
    services.messages_dispatch(now=NOW + timedelta(minutes=5))
    assert backend.calls == [first.pk, broken.pk, third.pk, broken.pk]


@pytest.mark.both_dbs
def test_the_sweeper_returns_rows_stuck_in_sending(queue, recorder):
    now = timezone.now()
    stuck = queue(status="sending", claimed_at=now - timedelta(minutes=10), attempts=1)
    in_flight = queue(status="sending", claimed_at=now - timedelta(seconds=30), attempts=1)

    assert services.messages_sweep() == 1

    stuck.refresh_from_db()
    in_flight.refresh_from_db()
    assert (stuck.status, stuck.claimed_at) == ("queued", None)
    assert in_flight.status == "sending"
    services.messages_dispatch(now=NOW)
    stuck.refresh_from_db()
    assert (stuck.status, stuck.attempts) == ("sent", 2)
    assert recorder.calls == [stuck.pk]


@pytest.mark.both_dbs
def test_the_dispatch_messages_command_prints_what_it_did(queue, settings, scripted):
    settings.OUTREACH_QUIET_HOURS = ""          # the command dispatches at the real now
    scripted(OK, OK, OK, PERMANENT)
    queue(status="sending", claimed_at=timezone.now() - timedelta(minutes=10), attempts=1)
    queue()
    queue()
    queue(customer=Customer.objects.create(external_id="cmd-out", owner=queue().customer.owner,
                                           opted_out=True))
    out = StringIO()

    call_command("dispatch_messages", stdout=out)

    text = out.getvalue()
    assert "Returned 1 stuck messages to the queue." in text
    assert "Claimed 5, sent 3, retrying 0, failed 1, held for quiet hours 0, skipped " \
           "{'opted_out': 1} in " in text
    assert Message.objects.filter(status="sent").count() == 3
