#!/usr/bin/env python
"""Benchmark (not a test): the WeCom callback endpoint under load, and a contact sync of 100k
contacts from the project's fake WeCom server.

    .venv/bin/python bench/wecom.py [--rate 200] [--seconds 30] [--contacts 100000]

1. Makes sure the PostgreSQL database (default crm_bench_wecom, on the server of DATABASE_URL)
   exists and is migrated; Celery's broker is a Redis database of its own (REDIS_URL's server,
   database 14, flushed before and after), so the callbacks' tasks queue without a worker.
2. Callbacks: starts gunicorn (`config.wsgi`, `--gunicorn-workers` sync workers, DJANGO_DEBUG=0)
   with the WeCom settings of Tencent's sample corp, signs and encrypts `--rate` × `--seconds`
   add_external_contact callbacks (before the clock starts), sends them at `--rate` per second
   from a pool of client threads (each request leaves at its scheduled moment), and reports the
   answer time p50 / p95 / max and the rate reached. Target: p95 ≤ 50 ms at 200/s.
3. Sync: starts the fake WeCom server in this process with `--contacts` generated contacts
   (`--staff` staff), runs `manage.py wecom_sync --contacts` against it and reports the wall
   time and contacts per second. Target: 100k contacts in ≤ 2 minutes.

Both parts leave their rows in the database (customers, callbacks); `--reset` truncates the
customers and callbacks first so a rerun measures the same work.
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

from _common import (
    ROOT,
    connect,
    database_url,
    ensure_database,
    machine,
    manage,
    server_env,
    start_gunicorn,
    stop,
)

sys.path.insert(0, str(ROOT))
from wecom.crypto import WXBizMsgCrypt
from wecom.fake import FakeWeCom

TOKEN = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo"
AES_KEY = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"
CORP_ID = "ww1436e0e65a779aee"
SECRET = "bench-secret"



def broker_url() -> str:
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    return urlunsplit(urlsplit(base)._replace(path="/14"))


def flush_broker(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def wecom_env(env: dict[str, str], api_base: str = "") -> dict[str, str]:
    return {**server_env(env), "WECOM_CORP_ID": CORP_ID, "WECOM_SECRET": SECRET,
            "WECOM_TOKEN": TOKEN, "WECOM_ENCODING_AES_KEY": AES_KEY, "WECOM_API_BASE": api_base}


def signed_callbacks(n: int, run: str) -> list[tuple[str, bytes]]:
    """(path with query, body) of `n` add_external_contact callbacks, each its own nonce."""
    crypt = WXBizMsgCrypt(token=TOKEN, encoding_aes_key=AES_KEY, receive_id=CORP_ID)
    timestamp = str(int(time.time()))
    requests = []
    for i in range(n):
        xml = (f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><FromUserName><![CDATA[sys]]>"
               f"</FromUserName><CreateTime>{timestamp}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
               "<Event><![CDATA[change_external_contact]]></Event><ChangeType><![CDATA["
               f"add_external_contact]]></ChangeType><UserID><![CDATA[staff{i % 20}]]></UserID>"
               f"<ExternalUserID><![CDATA[wmBench{run}{i:06d}]]></ExternalUserID><State><![CDATA["
               f"bench-qr]]></State><WelcomeCode><![CDATA[code{i}]]></WelcomeCode></xml>")
        nonce = f"{run}{i}"
        encrypt, signature = crypt.encrypt_message(xml, timestamp, nonce)
        body = (f"<xml><ToUserName><![CDATA[{CORP_ID}]]></ToUserName><Encrypt><![CDATA["
                f"{encrypt}]]></Encrypt><AgentID><![CDATA[1000002]]></AgentID></xml>").encode()
        query = urlencode({"msg_signature": signature, "timestamp": timestamp, "nonce": nonce})
        requests.append((f"/wecom/callback/?{query}", body))
    return requests


def bench_callbacks(opts, env: dict[str, str]) -> None:
    log = Path(tempfile.mkdtemp(prefix="bench-wecom-")) / "gunicorn.log"
    proc, port = start_gunicorn(wecom_env(env), workers=opts.gunicorn_workers,
                                ready_path="/healthz/", log=log, timeout=60)
    local = threading.local()

    def send(path: str, body: bytes, at: float) -> tuple[float, int]:
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        started = time.monotonic()
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "text/xml"})
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            local.conn = None
            status = 0
        return time.monotonic() - started, status

    try:
        warm = signed_callbacks(20, secrets.token_hex(3))
        for path, body in warm:
            send(path, body, 0)
        total = opts.rate * opts.seconds
        requests = signed_callbacks(total, secrets.token_hex(3))
        start = time.monotonic() + 0.5
        with ThreadPoolExecutor(max_workers=opts.clients) as pool:
            futures = [pool.submit(send, path, body, start + i / opts.rate)
                       for i, (path, body) in enumerate(requests)]
            results = [f.result() for f in futures]
        wall = time.monotonic() - start
    finally:
        stop(proc)
    times = sorted(r[0] * 1000 for r in results)
    failed = sum(1 for r in results if r[1] != 200)
    p95 = times[int(0.95 * (len(times) - 1))]
    print(f"callbacks: {total} at {opts.rate}/s target -> {total / wall:.0f}/s reached over "
          f"{wall:.1f} s; answer p50 {statistics.median(times):.1f} ms, p95 {p95:.1f} ms, "
          f"max {times[-1]:.1f} ms; {failed} not 200 "
          f"(gunicorn × {opts.gunicorn_workers}, {opts.clients} client threads)")


def bench_sync(opts, env: dict[str, str]) -> None:
    fake = FakeWeCom(corp_id=CORP_ID, secret=SECRET, token=TOKEN, encoding_aes_key=AES_KEY)
    started = time.monotonic()
    fake.generate(contacts=opts.contacts, staff=opts.staff, groups=0, tags=6, seed=7)
    pairs = sum(len(c["follow"]) for c in fake.contacts.values())
    print(f"fake WeCom: {opts.contacts} contacts ({pairs} contact-staff pairs), {opts.staff} "
          f"staff, generated in {time.monotonic() - started:.1f} s")
    base = fake.start()
    try:
        run_env = wecom_env(env, base)
        manage(["wecom_sync", "--tags"], run_env)
        seconds, out = manage(["wecom_sync", "--contacts"], run_env)
    finally:
        fake.stop()
    pages = sum(1 for c in fake.calls if c[0] == "externalcontact/batch/get_by_user")
    print(out.strip())
    print(f"contact sync: {opts.contacts} contacts in {seconds:.1f} s "
          f"({opts.contacts / seconds:.0f}/s, {pages} pages of 100)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="crm_bench_wecom")
    parser.add_argument("--rate", type=int, default=200, help="callbacks per second")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=16, help="client threads")
    parser.add_argument("--gunicorn-workers", type=int, default=4)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--staff", type=int, default=20)
    parser.add_argument("--only", choices=["callbacks", "sync"])
    parser.add_argument("--reset", action="store_true")
    opts = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if k != "SQLITE_PATH"}
    env["DATABASE_URL"] = database_url(opts.database)
    env["CELERY_BROKER_URL"] = broker_url()
    version = ensure_database(env["DATABASE_URL"])
    manage(["migrate", "--no-input", "-v0"], env)
    if opts.reset:
        conn = connect(env["DATABASE_URL"])
        with conn.cursor() as cursor:
            cursor.execute("TRUNCATE crm_customer, wecom_callback, wecom_syncrun CASCADE")
        conn.close()
    flush_broker(env["CELERY_BROKER_URL"])
    print(f"machine: {machine()}")
    print(f"server:  PostgreSQL {version}; broker {env['CELERY_BROKER_URL']}")
    try:
        if opts.only in (None, "callbacks"):
            bench_callbacks(opts, env)
        if opts.only in (None, "sync"):
            bench_sync(opts, env)
    finally:
        flush_broker(env["CELERY_BROKER_URL"])


if __name__ == "__main__":
    main()
