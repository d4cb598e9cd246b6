"""Fault tests of the outbox: real Celery workers, a real HTTP sink, processes killed.

- A worker killed with SIGKILL in the middle of a dispatch batch, then a new one: every due
  message ends `sent` once (the row), and the sink sees every message (deduplicating by the
  `Idempotency-Key` the webhook sends, as a receiver should).
- The broker (a private Redis) restarted during dispatch: nothing is lost.
- Two beat schedulers at once: every message still goes out exactly once.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from campaigns.models import Message
from campaigns.services import messages_sweep
from tests.factories import CustomerFactory, UserFactory

pytestmark = [pytest.mark.fault, pytest.mark.postgres_only,
              pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]


class Sink:
    """A webhook receiver on 127.0.0.1 that records each request's Idempotency-Key."""

    def __init__(self, delay: float = 0.0) -> None:
        self.keys: Counter = Counter()
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if delay:
                    time.sleep(delay)
                with sink.lock:
                    sink.keys[self.headers.get("Idempotency-Key")] += 1
                body = b'{"id": "sink-ok"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def received(self) -> int:
        with self.lock:
            return len(self.keys)

    def close(self) -> None:
        self.server.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(broker: str, sink: Sink) -> dict:
    db = connection.settings_dict
    return {
        **os.environ, "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": (f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:"
                         f"{db['PORT'] or 5432}/{db['NAME']}"),
        "REDIS_URL": broker, "CELERY_BROKER_URL": broker,
        "OUTREACH_CHANNEL_BACKENDS": "wecom=webhook", "OUTREACH_WEBHOOK_URL": sink.url,
        "OUTREACH_WEBHOOK_TIMEOUT": "5", "OUTREACH_QUIET_HOURS": "",
    }


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    handle = log.open("a")
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "config", *args], cwd=ROOT,
                            env=env, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _worker(env: dict, log: Path, concurrency: int = 1) -> subprocess.Popen:
    return _start(["worker", "--queues=dispatch,default", f"--concurrency={concurrency}",
                   "--loglevel=INFO", "--without-heartbeat", "--without-mingle",
                   "--without-gossip"], env, log)


def _kill(process: subprocess.Popen, sig=signal.SIGKILL) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        process.wait(timeout=30)


def _enqueue_dispatch(env: dict) -> None:
    subprocess.run([sys.executable, "-c",
                    "import django; django.setup(); "
                    "from campaigns.tasks import dispatch_messages; dispatch_messages.delay()"],
                   cwd=ROOT, env=env, check=True, timeout=60)


def _due_messages(n: int) -> list[int]:
    owner = UserFactory(roles=["operator"])
    customers = [CustomerFactory(owner=owner, external_id=f"fault-{i}") for i in range(n)]
    now = timezone.now()
    Message.objects.bulk_create([
        Message(customer=c, channel="wecom", category="service", content=f"你好 {c.pk}",
                due_at=now, dedupe_key=f"fault:{c.pk}") for c in customers])
    return list(Message.objects.values_list("dedupe_key", flat=True))


def _wait(predicate, timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tails = "\n".join(p.read_text()[-3000:] for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def _settled() -> bool:
    return not Message.objects.filter(status__in=["queued", "sending"]).exists()


def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(tmp_path):
    sink = Sink(delay=0.02)
    keys = _due_messages(300)
    env = _env("redis://127.0.0.1:6379/11", sink)
    log = tmp_path / "worker.log"
    subprocess.run([sys.executable, "-m", "celery", "-A", "config", "purge", "-f",
                    "--queues=dispatch,default"], cwd=ROOT, env=env, timeout=60,
                   capture_output=True)
    worker = _worker(env, log)
    try:
        _enqueue_dispatch(env)
        _wait(lambda: sink.received() >= 40, 60, "the first sends", [log])
        _kill(worker)                           # SIGKILL mid-batch: rows stay `sending`
        in_flight = Message.objects.filter(status="sending").count()
        assert in_flight > 0
        assert messages_sweep(stale_after_seconds=0) == in_flight
        worker = _worker(env, log)
        _enqueue_dispatch(env)
        _wait(_settled, 120, "every message to be settled", [log])
    finally:
        _kill(worker)
        sink.close()
    statuses = Counter(Message.objects.values_list("status", flat=True))
    assert statuses == {"sent": 300}
    assert set(sink.keys) == set(keys)          # every message reached the receiver
    # Only a message in flight at the kill can arrive twice, and the receiver can drop the
    # repeat by its Idempotency-Key.
    assert sum(n - 1 for n in sink.keys.values()) <= in_flight


def test_restarting_the_broker_during_dispatch_loses_nothing(tmp_path):
    redis = shutil.which("redis-server")
    assert redis, "redis-server is needed (Debian's redis-server package)"
    port = _free_port()
    start_redis = [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no"]
    broker = subprocess.Popen(start_redis, stdout=subprocess.DEVNULL)
    sink = Sink(delay=0.01)
    keys = _due_messages(200)
    env = _env(f"redis://127.0.0.1:{port}/0", sink)
    log = tmp_path / "worker.log"
    time.sleep(0.5)
    worker = _worker(env, log)
    try:
        _enqueue_dispatch(env)
        _wait(lambda: sink.received() >= 20, 60, "the first sends", [log])
        broker.kill()                           # the broker goes away mid-dispatch…
        broker.wait(timeout=10)
        time.sleep(2)
        broker = subprocess.Popen(start_redis, stdout=subprocess.DEVNULL)   # …and comes back
        time.sleep(1)
        # Whatever the broker lost, the rows are in the database; beat's next tick (here by
        # hand) and the sweeper pick them up.
        messages_sweep(stale_after_seconds=30)
        _enqueue_dispatch(env)

        def settled_or_retry():
            if _settled():
                return True
            messages_sweep(stale_after_seconds=30)
            return False

        _wait(settled_or_retry, 120, "every message to be settled", [log])
    finally:
        _kill(worker)
        broker.kill()
        sink.close()
    assert Counter(Message.objects.values_list("status", flat=True)) == {"sent": 200}
    assert set(sink.keys) == set(keys)


def test_two_beat_schedulers_at_once_send_each_message_once(tmp_path):
    sink = Sink(delay=0.005)
    keys = _due_messages(150)
    env = _env("redis://127.0.0.1:6379/10", sink)
    subprocess.run([sys.executable, "-m", "celery", "-A", "config", "purge", "-f",
                    "--queues=dispatch,default"], cwd=ROOT, env=env, timeout=60,
                   capture_output=True)
    logs = [tmp_path / "worker.log", tmp_path / "beat1.log", tmp_path / "beat2.log"]
    worker = _worker(env, logs[0], concurrency=2)
    beats = [_start(["beat", "--loglevel=INFO", f"--schedule={tmp_path}/beat{i}"], env, log)
             for i, log in enumerate(logs[1:], start=1)]
    try:
        _wait(_settled, 120, "every message to be settled", logs)
    finally:
        for process in [*beats, worker]:
            _kill(process, signal.SIGTERM)
        sink.close()
    assert Counter(Message.objects.values_list("status", flat=True)) == {"sent": 150}
    assert set(sink.keys) == set(keys)
    assert max(sink.keys.values()) == 1         # two schedulers, still one send each
