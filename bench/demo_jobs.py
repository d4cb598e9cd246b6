#!/usr/bin/env python
"""Benchmark (not a test): the embedded default's demo (SQLite) with its jobs running at once.

    .venv/bin/python bench/demo_jobs.py [--customers 5000] [--no-analyze]

1. Builds the demo as `scripts/demo` does, in a temporary DATA_DIR: migrate, seed_demo (seed
   42), the tag rules and stage models, then `analyze_database` (unless `--no-analyze`, to see
   what the jobs cost without SQLite's planner statistics).
2. Times `metrics_today` alone and the longest transaction it holds — on SQLite every
   transaction takes the one write lock at BEGIN, so that is how long every other writer
   (dispatch, ingest, the web) waits.
3. Starts a campaign to every active customer, then runs the beat jobs, the dispatcher and an
   ingest of 300 events together, one thread (connection) each, as the worker's processes and
   the web server do; reports each one's seconds and any error ("database is locked").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--no-analyze", action="store_true")
    opts = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="crm-demo-bench-")
    for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"):
        os.environ.pop(name, None)
    os.environ.update(DATA_DIR=data_dir, DJANGO_SETTINGS_MODULE="config.settings",
                      OUTREACH_QUIET_HOURS="", LOG_LEVEL="WARNING")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, transaction

    from campaigns import services as campaigns
    from campaigns.models import Message
    from core.db import planner_statistics_refresh
    from crm import demo
    from crm import services as crm
    from crm.hooks import touched_customers_process
    from lifecycle import services as lifecycle
    from metrics import services as metrics
    from tagging import services as tagging

    began = time.monotonic()
    call_command("migrate", verbosity=0)
    demo.seed_demo(customers=opts.customers, seed=42)
    tagging.tag_rules_run_due()
    lifecycle.stage_models_evaluate()
    if not opts.no_analyze:
        planner_statistics_refresh()
    print(f"demo of {opts.customers:,} customers built in {time.monotonic() - began:.1f} s "
          f"({'with' if not opts.no_analyze else 'WITHOUT'} planner statistics), {data_dir}")

    spans: list[float] = []
    opened: list[float] = []
    enter, leave = transaction.Atomic.__enter__, transaction.Atomic.__exit__

    def timed_enter(self):
        if not connection.in_atomic_block:
            opened.append(time.monotonic())
        return enter(self)

    def timed_exit(self, *exc):
        result = leave(self, *exc)
        if not connection.in_atomic_block and opened:
            spans.append(time.monotonic() - opened.pop())
        return result

    transaction.Atomic.__enter__, transaction.Atomic.__exit__ = timed_enter, timed_exit
    lap = time.monotonic()
    metrics.metrics_today()
    print(f"metrics_today alone: {time.monotonic() - lap:.2f} s; longest write transaction "
          f"{max(spans):.2f} s")
    transaction.Atomic.__enter__, transaction.Atomic.__exit__ = enter, leave

    admin = get_user_model().objects.filter(is_superuser=True).first()
    campaign = campaigns.campaign_save(
        campaign=None, actor=admin, name="bench", channel="console", category="content",
        condition={"field": "status", "op": "eq", "value": "active"}, template="{{ name }}")
    campaigns.campaign_start(campaign=campaign)
    some = list(demo.Customer.objects.order_by("pk").values_list("external_id", flat=True)[:300])
    jobs = {
        "metrics_today": metrics.metrics_today,
        "dispatch_messages": campaigns.messages_dispatch,
        "events_ingest (300)": lambda: crm.events_ingest(actor=admin, items=[
            {"customer": ext, "type": "message_in", "idempotency_key": f"bench-{ext}"}
            for ext in some]),
        "tag_touched_customers": lambda: touched_customers_process("tagging"),
        "evaluate_touched_customers": lambda: touched_customers_process("lifecycle"),
        "run_due_tag_rules": tagging.tag_rules_run_due,
        "evaluate_due_models": lambda: lifecycle.stage_models_evaluate(due_only=True),
        "check_harassment": campaigns.harassment_check,
    }
    seconds, errors = {}, {}
    barrier = threading.Barrier(len(jobs))

    def run(name, job):
        try:
            barrier.wait()
            lap = time.monotonic()
            job()
            seconds[name] = time.monotonic() - lap
        except Exception as exc:
            errors[name] = repr(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("all together (seconds, from a common start):")
    for name in jobs:
        print(f"  {name:28} {seconds[name]:6.2f}" if name in seconds
              else f"  {name:28} FAILED {errors[name]}")
    sent = Message.objects.filter(campaign=campaign, status="sent").count()
    print(f"campaign messages sent: {sent:,}; errors: {len(errors)}")


if __name__ == "__main__":
    main()
