#!/usr/bin/env python
"""Soak under load (issue 18; run by hand, not a test): the whole system on PostgreSQL with a
million customers, events posted at a steady rate while beat runs every scheduled job.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 1000] [--database crm_bench_soak]

1. The database (default crm_bench_soak, on the server of DATABASE_URL; made anew with
   `--reseed`) is migrated and, when it holds fewer than `--customers` customers, seeded with
   `seed_demo` and brought to what a running installation has: stages placed, tags, the
   segment index, today's metrics, beat's schedule (1M: ≈6 min). A run changes the data (who
   is active, stages, queued messages), so the figures of record come from `--reseed` runs.
   A soak SOP is made (once) on journey `trust`: one service message on WeCom, due at once.
2. Starts what production runs (docker-compose.yml): gunicorn (`config.wsgi`), one Celery
   worker on every queue (`--concurrency 4`) and Celery beat with the database schedule —
   every job of config/beat.py, as seeded. The WeCom channel is the webhook backend pointed at
   a local sink that records the id of every message it receives; quiet hours are off.
3. Posts `--rate` events a second to `POST /api/v1/events/` for `--minutes`, in batches of
   `--batch-size` on a fixed clock (a pool of client threads, so a slow answer does not delay
   the next batch unless every client is busy). In each batch:
   - movers (`--movers`, default 10 %): `group_joined` for customers in journey `interest` who
     were never in a group; the touch queue's evaluation moves each to `trust` and the soak
     SOP queues their message. These give the delays;
   - repeats (`--repeats`, default 1 %): an event posted earlier, same idempotency key;
   - the rest: inbound and outbound events, `--recent-share` (95 %) of them from customers
     active in the last 30 days and the others from any active customer — traffic comes from
     the customers who are active; a customer silent for months who speaks is a win-back, a
     stage move and a new SOP, which real traffic has a few of, not hundreds a second.
4. Every 5 s it samples the broker's queues, the change (touch) queue, the outbox (due and in
   sending) and what was stored, into samples.csv in the run's directory.
5. After the posting, waits (`--settle`, at most) for every mover's stage change and for an
   empty outbox, then reports: delay from posting an event to the stage change and to the SOP
   message being queued (p50 / p95 / max; target p95 ≤ 60 s); events/s accepted; dispatcher
   throughput; the queues' depth over time; and the counts: every event stored once (repeats
   answered as duplicates), every due message sent once (the sink saw each sent message exactly
   once and nothing else), nothing left queued or sending.

Refuses a database whose name lacks "bench" unless --force: the run adds events, stage changes
and messages to it (keys `soak:<run>:<n>`).
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    PYTHON,
    ROOT,
    connect,
    database_url,
    ensure_database,
    free_port,
    machine,
    manage,
    server_env,
    start_gunicorn,
    start_sink,
    stop,
    vacuum_stale_tables,
)

NOISE = (("message_in", 30), ("message_out", 22), ("link_clicked", 18),
         ("moments_interaction", 18), ("coupon_redeemed", 4), ("survey_answered", 3))
SOP_NAME = "soak · 即时问候"
WEBHOOK_CHANNELS = ("wecom", "sms", "email")
QUEUES = ("default", "dispatch", "metrics")


def percentiles(cursor, sql: str, params: dict) -> tuple[int, float, float, float, float]:
    """(n, p50, p95, max, min) of the one column `d` that `sql` selects."""
    cursor.execute(f"SELECT count(d), percentile_cont(0.5) WITHIN GROUP (ORDER BY d), "
                   f"percentile_cont(0.95) WITHIN GROUP (ORDER BY d), max(d), min(d) "
                   f"FROM ({sql}) x", params)
    n, p50, p95, most, least = cursor.fetchone()
    return n, p50 or 0.0, p95 or 0.0, most or 0.0, least or 0.0


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _proc_stats() -> dict[int, tuple[int, str, int]]:
    """{pid: (parent pid, command name, CPU ticks used: user + system)} of every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        # utime + stime, and cutime + cstime: the children it reaped (PostgreSQL's backends
        # end with their connection; their time moves to the postmaster).
        found[int(entry.name)] = (int(fields[1]), name, sum(int(x) for x in fields[11:15]))
    return found


def cpu_by_part(parts: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process tree, and by PostgreSQL's processes."""
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (parent, _name, _ticks) in stats.items():
        children.setdefault(parent, []).append(pid)

    named = set(parts.values())

    def tree(pid: int) -> int:
        total, stack = 0, [pid]
        while stack:
            current = stack.pop()
            total += stats.get(current, (0, "", 0))[2]
            # A named part's children are its own (this script started the servers).
            stack.extend(c for c in children.get(current, []) if c not in named)
        return total

    tick = os.sysconf("SC_CLK_TCK")
    used = {name: tree(pid) / tick for name, pid in parts.items()}
    used["postgresql"] = sum(t for _p, name, t in stats.values() if name.startswith("postgres")) / tick
    return used


def prepare(opts, env: dict[str, str]) -> None:
    if opts.reseed:
        # A new database: `seed_demo --reset` empties crm's tables, but the rows other apps
        # keep about customers (stages, tags, enrolments, metrics) would stay behind.
        admin = connect(env["DATABASE_URL"], "postgres")
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{opts.database}" WITH (FORCE)')
            cursor.execute(f'CREATE DATABASE "{opts.database}"')
        admin.close()
    manage(["migrate", "--no-input", "-v0"], env)
    conn = connect(env["DATABASE_URL"])
    with conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM crm_customer")
        have = cursor.fetchone()[0]
    conn.close()
    if have < opts.customers:
        print(f"seeding {opts.customers:,} customers (the database has {have:,}) …", flush=True)
        seconds, _out = manage(["seed_demo", "--customers", str(opts.customers), "--seed", "1",
                                "--reset"], env)
        print(f"seeded in {seconds:.0f} s", flush=True)
    conn = connect(env["DATABASE_URL"])
    with conn.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM lifecycle_customerstage)")
        placed = cursor.fetchone()[0]
    if not placed:
        # What a running installation has before the soak starts: everyone placed in every
        # stage model, tags from the rules, the segment index, today's metric snapshot and
        # beat's schedule — so the run measures the steady state, not first-time builds.
        for command in (["evaluate_lifecycle"], ["evaluate_tag_rules"],
                        ["build_segment_index"], ["snapshot_metrics"], ["seed_periodic_tasks"]):
            seconds, _out = manage(command, env)
            print(f"{command[0]}: {seconds:.0f} s", flush=True)

    def execute(sql, params):
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    stale = vacuum_stale_tables(execute)
    if stale:
        print(f"vacuumed (autovacuum would have by now): {', '.join(stale)}", flush=True)
    conn.close()
    # The soak SOP, through the ORM in a child process (this one stays free of Django).
    code = textwrap.dedent(f"""
        import django; django.setup()
        from campaigns.models import Sop, SopStep
        from lifecycle.models import Stage
        trust = Stage.objects.select_related("model").get(model__key="journey", key="trust")
        sop, _ = Sop.objects.get_or_create(name={SOP_NAME!r}, defaults=dict(
            model=trust.model, stage=trust, description="bench/soak.py", active=True))
        Sop.objects.filter(pk=sop.pk).update(active=True)
        step, _ = SopStep.objects.get_or_create(sop=sop, order=1, defaults=dict(
            delay_minutes=0, channel="wecom", category="service",
            template="{{{{ name }}}}您好，欢迎加入我们的社群～"))
        SopStep.objects.filter(pk=step.pk).update(paused=False)
        print(step.pk)
    """)
    done = subprocess.run([PYTHON, "-c", code], cwd=ROOT, text=True,
                          env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
                          capture_output=True)
    if done.returncode:
        sys.stderr.write(done.stderr)
        raise SystemExit("could not make the soak SOP")
    opts.step_id = int(done.stdout.split()[-1])


def candidates(conn, need: int, rng: random.Random):
    """(movers as (id, external id), the external ids of every active customer and of those
    active in the last 30 days, group chat ids)."""
    with conn.cursor() as cursor:
        cursor.execute("""
            SELECT c.id, c.external_id FROM crm_customer c
            JOIN lifecycle_customerstage cs ON cs.customer_id = c.id
            JOIN lifecycle_stagemodel m ON m.id = cs.model_id AND m.key = 'journey'
            JOIN lifecycle_stage s ON s.id = cs.stage_id AND s.key = 'interest'
            WHERE c.status = 'active' AND NOT c.opted_out
              AND NOT EXISTS (SELECT 1 FROM crm_groupmembership g WHERE g.customer_id = c.id)
        """)
        movers = cursor.fetchall()
        cursor.execute("SELECT external_id, last_active_at >= now() - interval '30 days' "
                       "FROM crm_customer WHERE status = 'active' "
                       "AND external_id NOT LIKE 'erased:%%'")
        rows = cursor.fetchall()
        cursor.execute("SELECT chat_id FROM crm_group ORDER BY id")
        groups = [row[0] for row in cursor.fetchall()]
    if len(movers) < need:
        raise SystemExit(f"only {len(movers):,} customers can move interest → trust; "
                         f"{need:,} needed (lower --movers or --minutes, or re-seed)")
    rng.shuffle(movers)
    chosen = {external_id for _id, external_id in movers[:need]}
    # Noise never touches a mover: a mover's first event of the run is the one measured.
    everyone = [e for e, _recent in rows if e not in chosen]
    recent = [e for e, is_recent in rows if is_recent and e not in chosen]
    return movers[:need], everyone, recent, groups


def queue_depths(redis_client) -> dict[str, int]:
    depths = {}
    for queue in QUEUES:
        # kombu's Redis transport keeps a list per queue (and per priority step).
        depths[queue] = sum(redis_client.llen(key) for key in
                            redis_client.scan_iter(match=f"{queue}*") if
                            redis_client.type(key) == b"list")
    return depths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="crm_bench_soak")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=int, default=1000, help="events a second")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--movers", type=float, default=0.10)
    parser.add_argument("--repeats", type=float, default=0.01)
    parser.add_argument("--recent-share", type=float, default=0.95,
                        help="share of the other events from customers active in 30 days")
    parser.add_argument("--reseed", action="store_true",
                        help="drop the database and seed it afresh first (a run's events "
                             "change who is active: the next run on the same data is not the "
                             "same test)")
    parser.add_argument("--settle", type=float, default=300, help="seconds to wait at most")
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="Celery worker processes")
    parser.add_argument("--redis-db", type=int, default=14)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--password", default="demo1234", help="the demo admin's password")
    parser.add_argument("--force", action="store_true")
    opts = parser.parse_args()
    if "bench" not in opts.database and not opts.force:
        raise SystemExit(f"refusing database {opts.database!r} (no 'bench' in its name); "
                         "--force to insist.")
    import redis

    seconds = opts.minutes * 60
    interval = opts.batch_size / opts.rate
    batches = int(seconds / interval)
    movers_per_batch = round(opts.batch_size * opts.movers)
    repeats_per_batch = round(opts.batch_size * opts.repeats)
    rng = random.Random(opts.seed)
    out = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    sink_file = out / "sink.txt"
    sink_port = free_port()
    broker = f"redis://127.0.0.1:6379/{opts.redis_db}"
    env = {k: v for k, v in os.environ.items() if k != "SQLITE_PATH"}
    env.update({
        "DATABASE_URL": database_url(opts.database), "REDIS_URL": broker,
        "CELERY_BROKER_URL": broker, "LOG_LEVEL": "WARNING", "OUTREACH_QUIET_HOURS": "",
        "OUTREACH_CHANNEL_BACKENDS": ",".join(f"{c}=webhook" for c in WEBHOOK_CHANNELS),
        "OUTREACH_WEBHOOK_URL": f"http://127.0.0.1:{sink_port}/hook"})
    env = server_env(env)
    version = ensure_database(env["DATABASE_URL"])
    prepare(opts, env)
    conn = connect(env["DATABASE_URL"])
    movers, everyone, recent, groups = candidates(conn, batches * movers_per_batch, rng)
    print(f"machine: {machine()}")
    print(f"server:  PostgreSQL {version}, database {opts.database}; gunicorn × "
          f"{opts.gunicorn_workers}, Celery worker --concurrency {opts.concurrency} on "
          f"{', '.join(QUEUES)}, beat (database schedule); broker {broker}")
    print(f"load:    {opts.rate:,} events/s for {opts.minutes:g} min in batches of "
          f"{opts.batch_size} ({batches:,} batches; {movers_per_batch} movers and "
          f"{repeats_per_batch} repeats each); the rest from {len(recent):,} customers active in 30 days "
          f"({opts.recent_share:.0%}) or any of {len(everyone):,}; output {out}")

    with conn.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) FROM crm_event")
        event0 = cursor.fetchone()[0]
        cursor.execute("SELECT coalesce(max(id), 0) FROM campaigns_message")
        message0 = cursor.fetchone()[0]
        cursor.execute("SELECT coalesce(max(id), 0) FROM lifecycle_stagetransition")
        transition0 = cursor.fetchone()[0]
        cursor.execute("SELECT id FROM lifecycle_stagemodel WHERE key = 'journey'")
        journey = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM campaigns_message WHERE status = 'queued' "
                       "AND due_at <= now()")
        backlog = cursor.fetchone()[0]
    print(f"outbox before the run: {backlog:,} queued messages already due")

    launched = time.time()                  # what the worker sends from here on is the run's
    broker_client = redis.Redis.from_url(broker)
    broker_client.flushdb()                 # the soak's own broker database: no stale tasks
    sink = start_sink(sink_port, sink_file)
    procs = [sink]
    gunicorn, port = start_gunicorn(env, workers=opts.gunicorn_workers, ready_path="/healthz/",
                                    log=out / "gunicorn.log")
    procs.append(gunicorn)
    celery = [PYTHON, "-m", "celery", "-A", "config"]
    worker = subprocess.Popen(
        [*celery, "worker", f"--queues={','.join(QUEUES)}", f"--concurrency={opts.concurrency}",
         "--loglevel=WARNING", "--without-mingle", "--without-gossip"], cwd=ROOT, env=env,
        stdout=(out / "worker.log").open("wb"), stderr=subprocess.STDOUT)
    beat = subprocess.Popen([*celery, "beat", "--loglevel=INFO"], cwd=ROOT, env=env,
                            stdout=(out / "beat.log").open("wb"), stderr=subprocess.STDOUT)
    procs += [worker, beat]

    def request(method: str, path: str, body: bytes, token: str | None = None):
        headers = {"Content-Type": "application/json", "Accept-Language": "en"}
        if token:
            headers["Authorization"] = f"Token {token}"
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            c.request(method, path, body=body, headers=headers)
            response = c.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            c.close()

    try:
        status, answer = request("POST", "/api/v1/auth/token/", json.dumps(
            {"username": "admin", "password": opts.password}).encode())
        if status != 200:
            raise SystemExit(f"no token for admin: {status} {answer}")
        token = answer["token"]
        time.sleep(5)                       # the worker and beat come up

        run = secrets.token_hex(4)
        kinds = [k for k, w in NOISE for _ in range(w)]
        posted_keys: list[tuple[str, str, str, dict]] = []
        mover_times: list[tuple[int, float]] = []
        stats = {"accepted": 0, "duplicates": 0, "rejected": 0, "failed": 0, "repeats": 0,
                 "late": 0}
        latencies: list[float] = []
        failures: dict[int, str] = {}
        lock = threading.Lock()
        n = 0

        def batch_body(index: int) -> tuple[bytes, list[int], int]:
            nonlocal n
            items, mover_ids, repeats = [], [], 0
            for customer_id, external_id in movers[index * movers_per_batch:
                                                   (index + 1) * movers_per_batch]:
                key = f"soak:{run}:{n}"
                n += 1
                items.append({"customer": external_id, "type": "group_joined",
                              "idempotency_key": key, "data": {"group": rng.choice(groups)}})
                mover_ids.append(customer_id)
            if posted_keys:
                for _ in range(repeats_per_batch):
                    key, customer, kind, data = rng.choice(posted_keys)
                    items.append({"customer": customer, "type": kind, "idempotency_key": key,
                                  "data": data})
                    repeats += 1
            while len(items) < opts.batch_size:
                key = f"soak:{run}:{n}"
                n += 1
                kind = rng.choice(kinds)
                customer = rng.choice(recent if rng.random() < opts.recent_share else everyone)
                data = {"text": "在吗？"} if kind.startswith("message") else {}
                items.append({"customer": customer, "type": kind, "idempotency_key": key,
                              "data": data})
                if len(posted_keys) < 200_000:
                    posted_keys.append((key, customer, kind, data))
            return json.dumps(items, ensure_ascii=False).encode(), mover_ids, repeats

        def send(body: bytes, mover_ids: list[int], repeats: int) -> None:
            sent = time.time()
            try:
                status, answer = request("POST", "/api/v1/events/", body, token)
            except OSError:
                status, answer = 0, {}
            elapsed = time.time() - sent
            with lock:
                latencies.append(elapsed)
                stats["repeats"] += repeats
                if status != 200:
                    stats["failed"] += 1
                    failures.setdefault(status, str(answer)[:200])
                    return
                stats["accepted"] += answer["accepted"]
                stats["duplicates"] += answer["duplicates"]
                stats["rejected"] += len(answer["rejected"])
                mover_times.extend((c, sent) for c in mover_ids)

        samples: list[dict] = []
        stop_sampling = threading.Event()
        sample_conn = connect(env["DATABASE_URL"])
        parts = {"gunicorn (ingest)": gunicorn.pid, "celery worker": worker.pid,
                 "celery beat": beat.pid, "webhook sink": sink.pid, "this script": os.getpid()}
        started = time.time()
        cpu0 = cpu_times()
        by_part0 = cpu_by_part(parts)

        def sample() -> None:
            while not stop_sampling.is_set():
                row = {"t": round(time.time() - started, 1)}
                row.update(queue_depths(broker_client))
                with sample_conn.cursor() as cursor:
                    cursor.execute("SELECT count(*) FILTER (WHERE due_at <= now()), "
                                   "count(*) FROM campaigns_message WHERE status = 'queued'")
                    row["outbox_due"], row["outbox_queued"] = cursor.fetchone()
                    cursor.execute("SELECT count(*) FROM campaigns_message "
                                   "WHERE status = 'sending'")
                    row["sending"] = cursor.fetchone()[0]
                    # customers each consumer has touches of not yet read (crm.hooks; at most:
                    # it may skip some tables' touches, crm.hooks.touch_skips)
                    cursor.execute(
                        "SELECT c.consumer, (SELECT count(DISTINCT t.customer_id) "
                        "FROM crm_customertouch t WHERE t.origin <> c.consumer AND "
                        "(c.position = '' OR (t.txid >= pg_snapshot_xmin(split_part("
                        "c.position, ' ', 1)::pg_snapshot)::text::bigint AND NOT "
                        "pg_visible_in_snapshot(t.txid::text::xid8, split_part(c.position, "
                        "' ', 1)::pg_snapshot)))) FROM crm_touchconsumer c")
                    for consumer, count in cursor.fetchall():
                        row[f"touches_{consumer}"] = count
                    cursor.execute("SELECT count(*) FROM crm_event WHERE id > %s", [event0])
                    row["events"] = cursor.fetchone()[0]
                    cursor.execute("SELECT count(*) FROM lifecycle_stagetransition "
                                   "WHERE id > %s", [transition0])
                    row["transitions"] = cursor.fetchone()[0]
                    cursor.execute("SELECT count(*) FROM campaigns_message "
                                   "WHERE status = 'sent' AND sent_at >= to_timestamp(%s)",
                                   [started])
                    row["sent"] = cursor.fetchone()[0]
                row["load1"] = os.getloadavg()[0]
                samples.append(row)
                stop_sampling.wait(5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        print(f"posting from {time.strftime('%H:%M:%S')} …", flush=True)
        with ThreadPoolExecutor(max_workers=opts.clients) as pool:
            pending = []
            for index in range(batches):
                due = started + index * interval
                wait = due - time.time()
                if wait > 0:
                    time.sleep(wait)
                elif wait < -interval:
                    stats["late"] += 1
                body, mover_ids, repeats = batch_body(index)
                pending.append(pool.submit(send, body, mover_ids, repeats))
                if index and index % int(60 / interval) == 0:
                    last = samples[-1] if samples else {}
                    print(f"  {index * interval / 60:4.1f} min: accepted {stats['accepted']:,}, "
                          f"touches {last.get('touches_lifecycle', 0):,}, queues "
                          f"{[last.get(q, 0) for q in QUEUES]}, outbox due "
                          f"{last.get('outbox_due', 0):,}, sent {last.get('sent', 0):,}, "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)
            for future in pending:
                future.result()
        posted_s = time.time() - started
        print(f"posted in {posted_s:.0f} s; settling (at most {opts.settle:.0f} s) …", flush=True)

        # Settle: every mover moved, nothing due left in the outbox or on its way.
        mover_ids = [c for c, _t in mover_times]
        deadline = time.time() + opts.settle
        with conn.cursor() as cursor:
            while True:
                settled_at = time.time()
                cursor.execute("SELECT count(DISTINCT customer_id) FROM lifecycle_stagetransition "
                               "WHERE id > %s AND model_id = %s AND to_key = 'trust' "
                               "AND customer_id = ANY(%s)", [transition0, journey, mover_ids])
                moved = cursor.fetchone()[0]
                cursor.execute("SELECT count(*) FROM campaigns_message WHERE (status = 'queued' "
                               "AND due_at <= now()) OR status = 'sending'")
                open_messages = cursor.fetchone()[0]
                if (moved == len(mover_ids) and open_messages == 0) or settled_at > deadline:
                    break
                time.sleep(5)
        settled_s = time.time() - started
        time.sleep(6)                        # the last sample
        stop_sampling.set()
        sampler.join()
        cpu1 = cpu_times()
        by_part1 = cpu_by_part(parts)
    finally:
        for proc in reversed(procs):
            stop(proc)

    # ---- the figures ------------------------------------------------------------------------
    with conn.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE soak_movers (customer_id bigint, posted float8)")
        cursor.execute("INSERT INTO soak_movers SELECT * FROM unnest(%s::bigint[], "
                       "%s::float8[])", [[c for c, _ in mover_times], [t for _, t in mover_times]])
        stage_delay = percentiles(cursor, """
            SELECT extract(epoch FROM t.at) - m.posted AS d FROM soak_movers m
            JOIN LATERAL (SELECT min(at) AS at FROM lifecycle_stagetransition t
                          WHERE t.customer_id = m.customer_id AND t.model_id = %(journey)s
                            AND t.to_key = 'trust' AND t.id > %(t0)s) t ON t.at IS NOT NULL
        """, {"journey": journey, "t0": transition0})
        message_delay = percentiles(cursor, """
            SELECT extract(epoch FROM msg.created_at) - m.posted AS d FROM soak_movers m
            JOIN campaigns_message msg ON msg.customer_id = m.customer_id
             AND msg.sop_step_id = %(step)s AND msg.id > %(m0)s
        """, {"step": opts.step_id, "m0": message0})
        cursor.execute("SELECT count(*), count(DISTINCT idempotency_key) FROM crm_event "
                       "WHERE idempotency_key LIKE %s", [f"soak:{run}:%"])
        stored, distinct_keys = cursor.fetchone()
        # Due by the end of the settling: sent (or skipped) by then. What fell due since waits
        # for the next dispatch and is no failure.
        cursor.execute("SELECT count(*) FROM campaigns_message WHERE status IN ('queued', "
                       "'sending') AND due_at <= to_timestamp(%s) - interval '20 seconds'",
                       [settled_at])
        left_open = cursor.fetchone()[0]
        cursor.execute("SELECT status, count(*) FROM campaigns_message WHERE id > %s "
                       "GROUP BY status ORDER BY status", [message0])
        made = dict(cursor.fetchall())
        cursor.execute("SELECT id FROM campaigns_message WHERE status = 'sent' AND "
                       "sent_at >= to_timestamp(%s) AND channel = ANY(%s)",
                       [launched, list(WEBHOOK_CHANNELS)])
        sent_ids = {row[0] for row in cursor.fetchall()}
        cursor.execute("SELECT count(*) FROM campaigns_message WHERE status = 'sent' AND "
                       "sent_at >= to_timestamp(%s)", [launched])
        sent_all = cursor.fetchone()[0]
        cursor.execute("SELECT min(sent_at), max(sent_at) FROM campaigns_message "
                       "WHERE status = 'sent' AND sent_at >= to_timestamp(%s)", [launched])
        first_sent, last_sent = cursor.fetchone()
    conn.close()
    sink_lines = [line.strip() for line in sink_file.read_text().splitlines() if line.strip()]
    sink_ids = [int(x) for x in sink_lines if x.isdigit()]
    twice = len(sink_ids) - len(set(sink_ids))
    unknown = len(set(sink_ids) - sent_ids)
    unseen = len(sent_ids - set(sink_ids))

    with (out / "samples.csv").open("w", newline="") as f:
        keys = sorted({k for row in samples for k in row}, key=lambda k: (k != "t", k))
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(samples)

    busy, total = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    latencies.sort()
    p95_post = latencies[int(0.95 * (len(latencies) - 1))] if latencies else 0.0
    print()
    print(f"machine: {machine()}")
    print(f"posting: {batches:,} batches in {posted_s:.0f} s; accepted {stats['accepted']:,} "
          f"({stats['accepted'] / posted_s:,.0f}/s), duplicates {stats['duplicates']:,} of "
          f"{stats['repeats']:,} repeats, rejected {stats['rejected']}, failed batches "
          f"{stats['failed']}, batches sent late {stats['late']}; batch answer p95 "
          f"{p95_post * 1000:.0f} ms, max {latencies[-1] * 1000 if latencies else 0:.0f} ms")
    for status, answer in failures.items():
        print(f"  failed batch: HTTP {status or 'no answer'} {answer}")
    print(f"stored:  {stored:,} events with this run's keys, {distinct_keys:,} distinct "
          f"(every event once: {'yes' if stored == distinct_keys == stats['accepted'] else 'NO'})")
    for name, (count, p50, p95, most, least) in (("stage change", stage_delay),
                                                   ("SOP message queued", message_delay)):
        print(f"delay event → {name}: n={count:,} of {len(mover_times):,} movers; p50 "
              f"{p50:.1f} s, p95 {p95:.1f} s, max {most:.1f} s (min {least:.1f} s)"
              f"{'  ✓ p95 ≤ 60 s' if count and p95 <= 60 else ''}")
    span = (last_sent - first_sent).total_seconds() if first_sent and last_sent else 0
    print(f"outbox:  {sent_all:,} messages sent during the run ({sent_all / settled_s:,.1f}/s "
          f"over {settled_s:.0f} s; {sent_all / span if span else 0:,.1f}/s between the first "
          f"and the last send); messages made in the run by status {made}; due by the end of "
          f"the settling (20 s before) and not sent: {left_open}")
    print(f"sink:    {len(sink_ids):,} deliveries, {len(set(sink_ids)):,} distinct; received "
          f"twice {twice}, not sent by us {unknown}, sent but never received {unseen} "
          f"(every due message sent once: "
          f"{'yes' if twice == unknown == unseen == left_open == 0 else 'NO'})")
    if samples:
        windows = [(b["sent"] - a["sent"]) / (b["t"] - a["t"])
                   for a, b in zip(samples, samples[6:], strict=False) if b["t"] > a["t"]]
        print(f"dispatch: peak {max(windows, default=0):,.0f} sends/s over 30 s (the outbox's "
              f"pace when messages wait; otherwise it sends what falls due)")
        half = samples[len(samples) // 2:]
        for column in (*QUEUES, "touches_lifecycle", "touches_tagging", "outbox_due", "sending"):
            values = [row.get(column, 0) for row in samples]
            late = [row.get(column, 0) for row in half]
            print(f"depth {column:>18}: max {max(values):,}, mean {sum(values) / len(values):,.0f}"
                  f", second half max {max(late):,}, at the end {values[-1]:,}")
    print(f"cpu:     machine busy {100 * busy / total:.0f} % of {os.cpu_count()} cores over the "
          f"run; samples in {out / 'samples.csv'}")
    print("cpu by part (cores on average over the run): " + ", ".join(
        f"{name} {(by_part1[name] - by_part0[name]) / settled_s:.2f}" for name in by_part1))


if __name__ == "__main__":
    main()
