#!/usr/bin/env python
"""Benchmark (not a test): what beat's scheduled jobs cost, apart from the nightly ones, while
customers change at a steady rate — the share of one core they use on average.

    DATABASE_URL=postgres://…/crm_bench .venv/bin/python bench/background.py \
        [--minutes 30] [--per-minute 2000]

On the database DATABASE_URL names (meant for 1M customers made by `seed_demo`; it refuses a
database whose name lacks "bench" unless --force):

1. Brings it to the steady state a running installation is in (not timed): the nightly
   metrics job when yesterday is not stored, a full segment index build, every tag rule and
   stage model run in full, the touches read.
2. Starts a generator in a process of its own: every 10 s it ingests `message_in` events
   (`crm.services.events_ingest`) for a sixth of --per-minute customers, 80 % of them among
   the 10 % most recently active, as a day of traffic is. Its work (and its database
   connection's) is the web's, not beat's, and is not counted.
3. For --minutes, runs every job of config/beat.py whose schedule is an interval or a crontab
   without a fixed hour (every few seconds, minutes, hourly) when it is due, one after the
   other in this process, as one worker would (Celery eager: what a job queues runs inline).
   `--every JOB=SECONDS` runs an interval job at another interval (what it trades).
4. Reports per job the runs and seconds, and the CPU used: this process (all its threads),
   its database connection (the backend's /proc counters) and PostgreSQL's own background
   processes (writer, checkpointer, WAL writer), over the wall clock: the share of a core.

On a server with `autovacuum = off` (this machine's CI configuration) it also does, every
minute and counted with the jobs, what autovacuum would (`_common.autovacuum_round`): without
it the tables the jobs fill through the run (enrolments, messages, today's spells) keep the
statistics of their first rows and the planner's choices drift from a real server's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from _common import django_setup

django_setup(CELERY_TASK_ALWAYS_EAGER="1")

from _common import autovacuum_round, machine, sql  # noqa: E402
from celery.schedules import crontab  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def ticks(pid: int) -> int:
    """CPU ticks (user + system) a process used so far; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def postgres_helpers() -> list[int]:
    """PostgreSQL's own background processes (not a client's backend)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if command.startswith("postgres: ") and any(
                    name in command for name in ("writer", "checkpointer", "walwriter",
                                                 "stats", "logical replication")):
                found.append(int(entry.name))
    return found


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


AUTOVACUUM = "(autovacuum, emulated)"


class _Autovacuum:
    """A job of its own: what autovacuum does each minute on a server where it is on."""

    def run(self) -> list[str]:
        return autovacuum_round(sql)


# --- The generator (a process of its own) ----------------------------------------------------

def generate(per_minute: int, seconds: float, report: Path) -> None:
    from crm import services
    from crm.models import Customer

    admin = get_user_model().objects.filter(is_superuser=True).first()
    recent = list(Customer.objects.order_by("-last_active_at").values_list(
        "external_id", flat=True)[:100_000])
    everyone = list(Customer.objects.values_list("external_id", flat=True))
    rng = random.Random(7)
    started, batches, customers = time.monotonic(), 0, 0
    cpu0 = time.process_time()
    while time.monotonic() - started < seconds:
        due = started + 10 * batches
        time.sleep(max(0.0, due - time.monotonic()))
        size = per_minute // 6
        picked = {rng.choice(recent) if rng.random() < 0.8 else rng.choice(everyone)
                  for _ in range(size)}
        stamp = f"{time.time_ns()}"
        services.events_ingest(actor=admin, items=[
            {"customer": ext, "type": "message_in", "idempotency_key": f"bg:{stamp}:{ext}"}
            for ext in picked])
        batches += 1
        customers += len(picked)
    report.write_text(json.dumps({"batches": batches, "customers": customers,
                                  "cpu": time.process_time() - cpu0,
                                  "backend_ticks": ticks(backend_pid())}))


# --- Beat's jobs ------------------------------------------------------------------------------

def scheduled_jobs() -> dict[str, tuple[object, object]]:
    """name → (task, schedule) of every job that is not a daily one."""
    from config.beat import BEAT_SCHEDULE
    from config.celery import app

    app.loader.import_default_modules()
    jobs = {}
    for name, entry in BEAT_SCHEDULE.items():
        schedule = entry["schedule"]
        if isinstance(schedule, crontab) and schedule.hour != set(range(24)):
            continue                            # a nightly job
        jobs[name] = (app.tasks[entry["task"]], schedule)
    return jobs


def steady_state() -> None:
    from crm.hooks import touched_customers_process, touches_prune
    from lifecycle import services as lifecycle
    from metrics import services as metrics
    from tagging import segment_index
    from tagging import services as tagging

    lap = time.monotonic()
    metrics.metrics_today()                 # runs the nightly job first when it is due
    segment_index.build(full=True)
    tagging.tag_rules_run_due(force=True)
    lifecycle.stage_models_evaluate()
    for consumer in ("tagging", "lifecycle"):
        touched_customers_process(consumer)
    touches_prune()
    print(f"steady state reached in {time.monotonic() - lap:.0f} s (not counted)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--per-minute", type=int, default=2000)
    parser.add_argument("--skip-steady-state", action="store_true")
    parser.add_argument("--every", action="append", default=[], metavar="JOB=SECONDS",
                        help="run an interval job every SECONDS instead of its schedule's "
                             "(what an interval trades against the load), e.g. "
                             "--every tagging-touched-customers=30")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    seconds = opts.minutes * 60
    if opts.generate:
        generate(opts.per_minute, seconds, opts.generate)
        return
    name = connection.settings_dict["NAME"]
    if connection.vendor != "postgresql" or ("bench" not in name and not opts.force):
        sys.exit(f"refusing {name!r}: give a PostgreSQL database whose name has 'bench'")
    print(machine())
    if not opts.skip_steady_state:
        steady_state()
    jobs = scheduled_jobs()
    for spec in opts.every:
        job, _sep, every = spec.partition("=")
        if job not in jobs or isinstance(jobs[job][1], crontab) or not every.isdigit():
            sys.exit(f"--every {spec!r}: give JOB=SECONDS for an interval job of config/beat.py")
        jobs[job] = (jobs[job][0], float(every))
        print(f"{job}: every {every} s (not its schedule's)")
    print(f"{len(jobs)} jobs: {', '.join(jobs)}")
    if sql("SHOW autovacuum")[0][0] == "off":
        jobs[AUTOVACUUM] = (_Autovacuum(), 60.0)
        print(f"the server's autovacuum is off: {AUTOVACUUM!r} every 60 s, counted")

    report = Path(f"/tmp/bench-background-{os.getpid()}.json")
    generator = subprocess.Popen([sys.executable, __file__, "--generate", str(report),
                                  "--minutes", str(opts.minutes),
                                  "--per-minute", str(opts.per_minute)])
    helpers = postgres_helpers()
    helpers0 = sum(ticks(pid) for pid in helpers)
    own_cpu0 = time.process_time()
    backends: dict[int, list[int]] = {}         # pid → [first, last] tick readings

    def read_backend() -> None:
        pid = backend_pid()
        now = ticks(pid)
        backends.setdefault(pid, [now, now])[1] = now

    read_backend()
    started = time.monotonic()
    next_run = {name: started for name in jobs}
    last_run = {name: timezone.now() - timedelta(days=1) for name in jobs}
    runs = {name: 0 for name in jobs}
    spent = {name: 0.0 for name in jobs}
    failures: dict[str, str] = {}
    while time.monotonic() - started < seconds:
        for job, (task, schedule) in jobs.items():
            if isinstance(schedule, crontab):
                due, _next = schedule.is_due(last_run[job])
                if not due or time.monotonic() - started < 1:
                    continue
            elif time.monotonic() < next_run[job]:
                continue
            lap = time.monotonic()
            try:
                task.run()
            except Exception as exc:                # reported, not fatal
                failures[job] = repr(exc)[:200]
            spent[job] += time.monotonic() - lap
            runs[job] += 1
            last_run[job] = timezone.now()
            if not isinstance(schedule, crontab):
                next_run[job] = lap + float(schedule)
            read_backend()
        time.sleep(0.2)
    wall = time.monotonic() - started
    own = time.process_time() - own_cpu0
    read_backend()
    backend = sum(last - first for first, last in backends.values()) / TICKS
    helper = (sum(ticks(pid) for pid in helpers) - helpers0) / TICKS
    generator.wait()
    made = json.loads(report.read_text())
    report.unlink()

    print(f"\nwall clock {wall / 60:.1f} min; generator: {made['customers']:,} customers "
          f"touched in {made['batches']} batches ({made['customers'] / (wall / 60):,.0f} a "
          f"minute), its own CPU {made['cpu']:.1f} s (not counted)")
    print(f"{'job':34} {'runs':>5} {'seconds':>9} {'per run':>8}")
    for job in sorted(jobs, key=lambda j: -spent[j]):
        print(f"{job:34} {runs[job]:5d} {spent[job]:9.1f} {spent[job] / max(runs[job], 1):8.2f}")
    for job, error in failures.items():
        print(f"FAILED {job}: {error}")
    total = own + backend + helper
    print(f"\nCPU: this process {own:.1f} s, its database connection{'s' * (len(backends) > 1)} "
          f"{backend:.1f} s, PostgreSQL's background processes {helper:.1f} s")
    print(f"beat's jobs used {total:.1f} s of CPU in {wall:.0f} s: "
          f"{100 * total / wall:.1f} % of one core (target ≤ 10 %)")


if __name__ == "__main__":
    main()
