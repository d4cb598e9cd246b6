#!/usr/bin/env python
"""Benchmark (not a test) of the segment index: a full build, then updates while customers
change at a steady rate, and what a process pays to lay an update over what it holds.

    DATABASE_URL=postgres://…/crm_bench_metrics .venv/bin/python bench/segment_index.py \
        [--per-minute 2000] [--minutes 10] [--interval 2]

On the database DATABASE_URL names (meant for 1M customers made by `seed_demo`, with stages
and the value-layer tags; it refuses a database whose name lacks "bench" unless --force):

1. A full build (`build_segment_index --full`), timed.
2. For --minutes simulated minutes: --per-minute customers (random, 80 % of them among the
   10 % most active, as a day of traffic is) are touched as ingest touches them — their
   `last_active_at` and one event count in one statement each, a tag added to a tenth of
   them — and every --interval minutes an update is built, timed (wall clock and this
   process's CPU; the database's share is the rest of the wall clock on two cores).
3. A process that holds the previous update's parts lays the last update over them, and one
   that starts from the full build does; both timed, and both answer 5 conditions equal to a
   fresh full build's.
The background cost is then the update time divided by the interval.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from _common import django_setup

django_setup()

import numpy as np  # noqa: E402
from _common import machine  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from core import conditions  # noqa: E402
from tagging import segment_index  # noqa: E402

TREES = [
    {"field": "city", "op": "eq", "value": "上海"},
    {"field": "stage", "model": "value", "op": "in", "value": ["dormant", "churn"]},
    {"field": "event", "op": "count_gte", "value": 3, "type": ["message_in"],
     "within_days": 30},
    {"field": "last_active_at", "op": "within_days", "value": 7},
    {"all": [{"field": "orders_count", "op": "gte", "value": 2},
             {"field": "gender", "op": "eq", "value": "female"}]},
]


def sql(statement: str, params=None) -> list:
    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])
        return cursor.fetchall() if cursor.description else []


def touch(ids: list[int], tag_id: int | None) -> None:
    sql("UPDATE crm_customer SET last_active_at = now() WHERE id = ANY(%s)", [ids])
    sql("UPDATE crm_eventcount SET total = total + 1, latest_1 = now() "
        "WHERE customer_id = ANY(%s) AND type = 'message_in'", [ids])
    if tag_id is not None:
        sql("INSERT INTO tagging_customertag (customer_id, tag_id, source, added_at) "
            "SELECT unnest(%s::bigint[]), %s, 'manual', now() ON CONFLICT DO NOTHING",
            [ids[: len(ids) // 10], tag_id])


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def answers(snapshot, now) -> list[int]:
    return [int(segment_index.evaluate(conditions.validate(tree), snapshot, now=now).sum())
            for tree in TREES]


def load_all(snapshot, names) -> None:
    for name in names:
        snapshot.part(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-minute", type=int, default=2000)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--interval", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--force", action="store_true")
    opts = parser.parse_args()
    name = connection.settings_dict["NAME"]
    if "bench" not in name and not opts.force:
        sys.exit(f"refusing to write to {name!r} (no 'bench' in its name; --force)")
    print(machine())
    rng = random.Random(opts.seed)
    (low, high), = sql("SELECT min(id), max(id) FROM crm_customer")
    active = [row[0] for row in sql(
        "SELECT id FROM crm_customer ORDER BY last_active_at DESC NULLS LAST LIMIT %s",
        [max(1, (high - low) // 10)])]
    tag = sql("SELECT t.id FROM tagging_tag t JOIN tagging_taggroup g ON g.id = t.group_id "
              "WHERE NOT g.exclusive ORDER BY t.id LIMIT 1")
    tag_id = tag[0][0] if tag else None

    full, wall, cpu = timed(lambda: segment_index.build(full=True))
    print(f"full build: {wall:.1f} s wall, {cpu:.1f} s CPU here, {full.customers:,} customers, "
          f"{full.size_bytes / 1e6:.0f} MB")
    names = list(full.parts.exclude(name="lists").values_list("name", flat=True))
    rows = []
    previous = segment_index.Snapshot(full)
    load_all(previous, names)
    held = previous
    for minute in range(1, opts.minutes + 1):
        ids = sorted({rng.choice(active) if rng.random() < 0.8 else rng.randint(low, high)
                      for _ in range(opts.per_minute)})
        touch(ids, tag_id)
        if minute % opts.interval:
            continue
        update, wall, cpu = timed(segment_index.build)
        rows.append((minute, update.changed, wall, cpu, update.size_bytes))
        print(f"minute {minute:3}: update of {update.changed:,} customers in {wall:.2f} s wall "
              f"({cpu:.2f} s CPU here), {update.size_bytes / 1e6:.1f} MB")
        snapshot = segment_index.Snapshot(update, held)
        _, lay_wall, lay_cpu = timed(lambda s=snapshot: load_all(s, names))
        snapshot.previous = None
        held = snapshot
        print(f"            laid over the previous update's parts: {lay_wall:.2f} s")
    fresh = segment_index.Snapshot(held_index := segment_index.SegmentIndex.objects.get(
        pk=held.index_id))
    _, over_full, _ = timed(lambda: load_all(fresh, names))
    print(f"a new process laying the last update over the full build: {over_full:.2f} s")
    check = segment_index.build(full=True)
    truth = segment_index.Snapshot(check)
    now = timezone.now()                    # one moment for all three (windows move)
    found = [answers(snapshot, now) for snapshot in (held, fresh, truth)]
    print(f"answers equal to a fresh full build: {found[0] == found[1] == found[2]} "
          f"({found})")
    if rows:
        mean = np.mean([r[2] for r in rows])
        print(f"updates: mean {mean:.2f} s every {opts.interval} min = "
              f"{100 * mean / (opts.interval * 60):.1f} % of one core-equivalent of wall "
              f"clock; the last re-read {rows[-1][1]:,} customers")
    del held_index


if __name__ == "__main__":
    main()
