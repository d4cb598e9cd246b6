"""Outbox throughput and mass enrolment (issue 5's benchmark; run by hand, not a test).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/crm_bench_dispatch \\
        .venv/bin/python bench/dispatch.py [--messages 20000] [--enrol 100000]

1. Dispatch: N due messages on the `wecom` channel, backed by the webhook backend pointed at a
   local sink (a separate process answering 200 as fast as it can); 2 Celery worker processes
   on Redis drain the outbox. Reports messages/s from the first claim to the last send.
2. Enrolment: K customers enter a stage at once (the lifecycle hook, as a real evaluation calls
   it); reports the time to enrol them and queue every step's message.

The database is created (and emptied) by the script; everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._common import database_url, ensure_database, start_sink  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--enrol", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL") or database_url("crm_bench_dispatch")
    version = ensure_database(url)
    port = 18765
    broker = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9")
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": broker, "CELERY_BROKER_URL": broker,
           "DJANGO_SETTINGS_MODULE": "config.settings", "DJANGO_SECRET_KEY": "bench",
           "DJANGO_DEBUG": "0", "OUTREACH_CHANNEL_BACKENDS": "wecom=webhook",
           "OUTREACH_WEBHOOK_URL": f"http://127.0.0.1:{port}/hook", "OUTREACH_QUIET_HOURS": "",
           "LOG_LEVEL": "WARNING"}
    os.environ.update(env)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env,
                   check=True)

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from campaigns.models import Enrollment, Message, Sop
    from campaigns.services import sop_enroll
    from crm.models import Customer

    print(f"PostgreSQL {version}; Python {sys.version.split()[0]}; {os.cpu_count()} cores")
    need = max(args.messages, args.enrol)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE campaigns_message, campaigns_enrollment, crm_customer "
                       "RESTART IDENTITY CASCADE")
    owner, _created = get_user_model().objects.get_or_create(username="bench-owner")
    now = timezone.now()
    batch = 20_000
    for start in range(0, need, batch):
        Customer.objects.bulk_create([
            Customer(external_id=f"bench-{i}", name=f"客户{i}", phone=f"139{i:08d}",
                     owner=owner, joined_at=now) for i in range(start, min(need, start + batch))])
    ids = list(Customer.objects.order_by("pk").values_list("pk", flat=True))

    # 1. Dispatch throughput
    Message.objects.bulk_create([
        Message(customer_id=c, channel="wecom", category="service", content=f"您好 {c}",
                due_at=now, dedupe_key=f"bench:{c}") for c in ids[:args.messages]],
        batch_size=5000)
    sink = start_sink(port)
    subprocess.run([sys.executable, "-m", "celery", "-A", "config", "purge", "-f",
                    "--queues=dispatch"], cwd=ROOT, env=env, capture_output=True, timeout=60)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--queues=dispatch",
         f"--concurrency={args.workers}", "--loglevel=WARNING", "--without-heartbeat",
         "--without-mingle", "--without-gossip"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(4)                                   # let the worker come up
    from campaigns.tasks import dispatch_messages

    started = time.monotonic()
    for _ in range(args.workers):                   # one dispatcher per process
        dispatch_messages.delay()
    deadline = started + 600
    while time.monotonic() < deadline:
        if not Message.objects.filter(status__in=["queued", "sending"]).exists():
            break
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    sent = Message.objects.filter(status="sent").count()
    worker.terminate()
    worker.wait(timeout=30)
    sink.terminate()
    print(f"dispatch: {sent} of {args.messages} sent in {elapsed:.1f} s = "
          f"{sent / elapsed:,.0f} messages/s ({args.workers} worker processes, webhook to a "
          f"local sink; includes worker start-up polling granularity of 0.2 s)")

    # 2. Mass enrolment
    sop = Sop.objects.select_related("model", "stage").get(model__key="value",
                                                           stage__key="intro", built_in=True)
    started = time.monotonic()
    from django.db import transaction

    with transaction.atomic():
        enrolled = sop_enroll(sop=sop, customer_ids=ids[:args.enrol], entered_at=timezone.now())
    elapsed = time.monotonic() - started
    queued = Message.objects.filter(enrollment__isnull=False).count()
    print(f"enrolment: {enrolled} customers entering {sop.stage.key} at once enrolled and "
          f"{queued} step messages rendered and queued in {elapsed:.1f} s "
          f"({Enrollment.objects.count()} enrolments)")


if __name__ == "__main__":
    main()
