#!/usr/bin/env python
"""Benchmark (not a test): events per second through `POST /api/v1/events/` on gunicorn.

    .venv/bin/python bench/ingest.py [--batches 300] [--clients 3] [--customers 100000]

1. Makes sure the PostgreSQL database (default crm_bench_ingest, on the server of DATABASE_URL)
   exists, is migrated and holds `--customers` demo customers (`seed_demo --reset` otherwise).
2. Starts gunicorn (`config.wsgi`, 2 sync workers, 127.0.0.1 on a free port, DJANGO_DEBUG=0)
   and gets a token for the demo admin from `POST /api/v1/auth/token/`.
3. Prepares `--batches` JSON bodies of `--batch-size` events (before the clock starts) for
   random existing customers, with unique idempotency keys and a realistic mix: mostly
   message_in / message_out / link_clicked / moments_interaction, some group_joined, a few
   coupon_redeemed and survey_answered.
4. Sends a few warm-up batches, then the rest from `--clients` threads (stdlib http.client),
   and reports accepted events per second over the wall clock and p50 / p95 / max batch
   latency. Stops at `--max-seconds` if not done, then stops gunicorn.

Everything stays on the loopback; the events it adds stay in the database (keys
`bench:<run>:<n>`, so a second run adds new ones).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _common import (
    connect,
    database_url,
    ensure_database,
    machine,
    manage,
    server_env,
    start_gunicorn,
    stop,
)

MIX = (("message_in", 30), ("message_out", 22), ("link_clicked", 18),
       ("moments_interaction", 18), ("group_joined", 5), ("coupon_redeemed", 4),
       ("survey_answered", 3))
TEXTS_IN = ("在吗？", "这个还有货吗", "什么时候发货呀", "敏感肌可以用吗", "优惠券怎么用", "直播几点开始")
TEXTS_OUT = ("会员日活动预告，本周六全场满299减50", "护肤小课堂：换季如何保湿", "您的专属优惠券即将过期")
URLS = tuple(f"https://shop.example.com/item/SK-H00{i}" for i in range(1, 9))



def prepare_database(opts, env: dict[str, str]) -> tuple[list[str], list[str]]:
    """(external ids of active customers, group chat ids), seeding first when needed."""
    manage(["migrate", "--no-input", "-v0"], env)
    conn = connect(env["DATABASE_URL"])
    with conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM crm_customer")
        have = cursor.fetchone()[0]
    if have != opts.customers:
        print(f"seeding {opts.customers} customers (the database has {have}) …")
        seconds, _out = manage(["seed_demo", "--customers", str(opts.customers), "--seed", "1",
                                "--reset"], env)
        print(f"seeded in {seconds:.1f} s")
    with conn.cursor() as cursor:
        cursor.execute("SELECT external_id FROM crm_customer WHERE status = 'active' "
                       "ORDER BY id")
        customers = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT chat_id FROM crm_group ORDER BY id")
        groups = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT count(*) FROM crm_event")
        print(f"database: {have or opts.customers} customers, {cursor.fetchone()[0]} events")
    conn.close()
    return customers, groups


def make_bodies(opts, customers: list[str], groups: list[str], run: str) -> list[bytes]:
    rng = random.Random(opts.seed)
    kinds = [k for k, w in MIX for _ in range(w)]
    now = datetime.now(UTC)
    bodies, n = [], 0
    for _ in range(opts.batches):
        batch = []
        for _ in range(opts.batch_size):
            kind = kinds[int(rng.random() * len(kinds))]
            data: dict = {}
            if kind == "message_in":
                data = {"text": rng.choice(TEXTS_IN)}
            elif kind == "message_out":
                data = {"text": rng.choice(TEXTS_OUT)}
            elif kind == "link_clicked":
                data = {"url": rng.choice(URLS)}
            elif kind == "moments_interaction":
                data = {"action": rng.choice(("like", "comment")), "post": "春季新品"}
            elif kind == "group_joined":
                data = {"group": rng.choice(groups)}
            elif kind == "coupon_redeemed":
                data = {"coupon": "满199减20"}
            else:
                data = {"survey": "肤质问卷", "answer": rng.choice(("干性", "油性", "混合性"))}
            at = now - timedelta(seconds=int(rng.random() * 3 * 86400))
            batch.append({"customer": customers[int(rng.random() * len(customers))],
                          "type": kind, "occurred_at": at.isoformat(timespec="seconds"),
                          "idempotency_key": f"bench:{run}:{n}", "data": data})
            n += 1
        bodies.append(json.dumps(batch, ensure_ascii=False).encode())
    return bodies


def post(port: int, path: str, body: bytes, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", "Accept-Language": "en"}
    if token:
        headers["Authorization"] = f"Token {token}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="crm_bench_ingest")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=300, help="timed batches")
    parser.add_argument("--warmup", type=int, default=6, help="untimed batches first")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=3, help="client threads (2-4)")
    parser.add_argument("--gunicorn-workers", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--password", default="demo1234", help="the demo admin's password")
    parser.add_argument("--force", action="store_true")
    opts = parser.parse_args()
    if "bench" not in opts.database and not opts.force:
        raise SystemExit(f"refusing database {opts.database!r} (no 'bench' in its name); "
                         "--force to insist.")

    env = {k: v for k, v in os.environ.items() if k != "SQLITE_PATH"}
    env["DATABASE_URL"] = database_url(opts.database)
    version = ensure_database(env["DATABASE_URL"])
    customers, groups = prepare_database(opts, env)
    run = secrets.token_hex(4)
    bodies = make_bodies(opts, customers, groups, run)
    warm = make_bodies(argparse.Namespace(**{**vars(opts), "batches": opts.warmup,
                                             "seed": opts.seed + 1}),
                       customers, groups, run + "w")
    print(f"machine: {machine()}")
    print(f"server:  PostgreSQL {version}, gunicorn config.wsgi × {opts.gunicorn_workers} "
          f"sync workers; {opts.clients} client threads; batches of {opts.batch_size}")

    log = Path(tempfile.mkdtemp(prefix="bench-ingest-")) / "gunicorn.log"
    proc, port = start_gunicorn(server_env(env), workers=opts.gunicorn_workers,
                                ready_path="/healthz/", log=log)
    try:
        status, answer = post(port, "/api/v1/auth/token/", json.dumps(
            {"username": "admin", "password": opts.password}).encode())
        if status != 200:
            raise SystemExit(f"no token for admin: {status} {answer}")
        token = answer["token"]
        for body in warm:
            status, answer = post(port, "/api/v1/events/", body, token)
            if status != 200:
                raise SystemExit(f"warm-up batch failed: {status} {str(answer)[:300]}")

        latencies: list[float] = []
        totals = {"accepted": 0, "duplicates": 0, "rejected": 0, "errors": 0}
        lock = threading.Lock()
        queue = iter(range(len(bodies)))
        started = time.monotonic()
        deadline = started + opts.max_seconds

        def client() -> None:
            while time.monotonic() < deadline:
                with lock:
                    index = next(queue, None)
                if index is None:
                    return
                t = time.monotonic()
                try:
                    status, answer = post(port, "/api/v1/events/", bodies[index], token)
                except OSError:
                    status, answer = 0, {}
                elapsed = time.monotonic() - t
                with lock:
                    latencies.append(elapsed)
                    if status != 200:
                        totals["errors"] += 1
                        continue
                    totals["accepted"] += answer["accepted"]
                    totals["duplicates"] += answer["duplicates"]
                    totals["rejected"] += len(answer["rejected"])

        threads = [threading.Thread(target=client) for _ in range(opts.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
    finally:
        stop(proc)

    conn = connect(env["DATABASE_URL"])
    with conn.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM crm_event WHERE idempotency_key LIKE %s",
                       [f"bench:{run}:%"])
        stored = cursor.fetchone()[0]
    conn.close()
    latencies.sort()
    p50 = statistics.median(latencies)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    print(f"batches: {len(latencies)} of {len(bodies)} in {wall:.1f} s "
          f"({totals['errors']} failed); accepted {totals['accepted']}, duplicates "
          f"{totals['duplicates']}, rejected {totals['rejected']}; stored {stored}")
    print(f"latency per batch: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms")
    print(f"throughput: {totals['accepted'] / wall:,.0f} accepted events/s "
          f"({len(latencies) / wall:.1f} batches/s); {machine()}")


if __name__ == "__main__":
    main()
