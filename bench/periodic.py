#!/usr/bin/env python
"""Benchmark (not a test): the periodic runs of the stage models and the tag rules, in full
(the day's first) and between full runs (only the customers a condition may have changed for
with time alone: docs/DOMAIN.md §8).

    DATABASE_URL=postgres://…/crm_bench_metrics .venv/bin/python bench/periodic.py

On the database DATABASE_URL names (1M customers from `seed_demo`; it refuses a database whose
name lacks "bench" unless --force). The clock is set, in this process only, to --at (default
12:00 today, local time); the stage models and the active tag rules are run as beat runs them:
once at the clock (a full run: the day's first), once --later minutes after (default 16 for
the models, 61 for the rules: each past its interval), each timed, with the customers read.
Writes stages, transitions and tags as the periodic runs do.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timedelta

from _common import django_setup

django_setup()

from _common import machine  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from core import conditions  # noqa: E402
from lifecycle import services as lifecycle  # noqa: E402
from lifecycle.models import StageModel  # noqa: E402
from tagging import services as tagging  # noqa: E402
from tagging.models import TagRule  # noqa: E402


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--at", default="12:00")
    parser.add_argument("--models-later", type=int, default=16)
    parser.add_argument("--rules-later", type=int, default=61)
    parser.add_argument("--force", action="store_true")
    opts = parser.parse_args()
    if "bench" not in connection.settings_dict["NAME"] and not opts.force:
        sys.exit("refusing a database whose name lacks 'bench' (--force)")
    print(machine())
    hour, minute = (int(x) for x in opts.at.split(":"))
    at = timezone.make_aware(datetime.combine(timezone.localdate(), datetime.min.time())
                             .replace(hour=hour, minute=minute))
    StageModel.objects.update(last_full_evaluated_at=None)
    TagRule.objects.update(last_full_run_at=None)

    results, seconds = timed(lambda: lifecycle.stage_models_evaluate(due_only=True, now=at))
    print(f"stage models, the day's first periodic run (full): {seconds:.1f} s, "
          f"{sum(r.changed for r in results):,} moved")
    later = at + timedelta(minutes=opts.models_later)
    models = list(StageModel.objects.filter(active=True))
    crossers, found = timed(lambda: lifecycle._crossers(models, later))
    results, seconds = timed(lambda: lifecycle.stage_models_evaluate(due_only=True, now=later))
    print(f"stage models, {opts.models_later} min later (between full runs): {seconds:.2f} s "
          f"of which finding who crossed a boundary {found:.2f} s: {len(crossers):,} customers "
          f"read, {sum(r.changed for r in results):,} moved")

    runs, seconds = timed(lambda: tagging.tag_rules_run_due(now=at))
    print(f"tag rules ({len(runs)}), the day's first scheduled run (full): {seconds:.1f} s, "
          f"{sum(r.added + r.removed for r in runs):,} tags changed")
    later = at + timedelta(minutes=opts.rules_later)
    rules = list(TagRule.objects.filter(active=True))
    crossers, found = timed(lambda: conditions.crossing_customers(
        [r.condition for r in rules], since=at, until=later))
    runs, seconds = timed(lambda: tagging.tag_rules_run_due(now=later))
    print(f"tag rules, {opts.rules_later} min later (between full runs): {seconds:.2f} s of "
          f"which finding who crossed a boundary {found:.2f} s: {len(crossers):,} customers "
          f"read, {sum(r.added + r.removed for r in runs):,} tags changed")


if __name__ == "__main__":
    main()
