"""End to end with a real Celery worker on the configured broker (Redis in CI): an event comes
in through the API, the worker's lifecycle evaluation makes the customer enter a stage, the
transition hook enrols them in the stage's SOP and kicks the dispatcher, and the worker sends
the SOP's first message."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from campaigns.models import Message, Sop, SopStep
from campaigns.tasks import dispatch_messages
from config.celery import app
from crm.models import Customer
from lifecycle.models import Stage
from lifecycle.tasks import evaluate_touched_customers

ROOT = Path(__file__).resolve().parents[2]


def _worker_env() -> dict[str, str]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings",
           # Send whenever the test runs: no quiet hours in the worker.
           "OUTREACH_QUIET_HOURS": "", "OUTREACH_CHANNEL_BACKENDS": ""}
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        env["DATABASE_URL"] = (f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:"
                               f"{db['PORT'] or 5432}/{db['NAME']}")
    else:
        env["SQLITE_PATH"] = db["NAME"]
    return env


def _wait_for(check, worker, log_path: Path, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        assert worker.poll() is None, log_path.read_text()
        time.sleep(0.3)
    raise AssertionError(f"timed out; worker log:\n{log_path.read_text()}")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_an_event_makes_a_customer_enter_a_stage_and_the_worker_sends_the_first_message(
        tmp_path, admin_user, api_client_for, builtin_models):
    interest = Stage.objects.get(model__key="journey", key="interest")
    sop = Sop.objects.create(name="e2e welcome", model=interest.model, stage=interest)
    SopStep.objects.create(sop=sop, order=1, delay_minutes=0, channel="console",
                           category="service", template="{{ name }}，欢迎加入（e2e）")
    app.control.purge()

    response = api_client_for(admin_user).post("/api/v1/events/", {
        "customer": "e2e-lin", "type": "friend_added", "idempotency_key": "e2e-add-1",
        "data": {"name": "林小姐"}}, format="json")
    assert response.status_code in (200, 201), response.json()
    assert response.json()["accepted"] == 1
    customer = Customer.objects.get(external_id="e2e-lin")
    evaluate_touched_customers.delay()

    log_path = tmp_path / "worker.log"
    log = log_path.open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo",
         "--queues=default,dispatch", "--loglevel=INFO", "--without-heartbeat",
         "--without-mingle", "--without-gossip"],
        cwd=ROOT, env=_worker_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        # The worker evaluates the touched customer, enrols them, and — kicked by the
        # enrolment — dispatches the due first step.
        message = _wait_for(lambda: Message.objects.filter(
            customer=customer, sop_step__sop=sop, status="sent").first(), worker, log_path)
        assert message.content == "林小姐，欢迎加入（e2e）"
        assert (message.attempts, message.provider_id) == (1, f"console-{message.pk}")
        assert message.enrollment.status == "completed"     # its only step is out

        # A message queued later goes out through an explicitly enqueued dispatch.
        extra = Message.objects.create(customer=customer, channel="console",
                                       category="service", content="第二条（e2e）",
                                       due_at=message.due_at, dedupe_key="e2e-extra")
        dispatch_messages.delay()
        _wait_for(lambda: Message.objects.filter(pk=extra.pk, status="sent").exists(), worker,
                  log_path)
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        log.close()
    text = log_path.read_text()
    assert "林小姐，欢迎加入（e2e）" in text          # the console backend's line, in the worker
    assert Message.objects.filter(customer=customer, sop_step__sop=sop).count() == 1
