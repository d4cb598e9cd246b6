"""The nightly metrics task once through a real worker on the `metrics` queue."""

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection

from config.celery import app
from metrics.models import CohortTable, Snapshot
from metrics.periods import local_today
from metrics.tasks import snapshot_metrics_nightly
from tests.metrics.handbuilt import build

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_real_worker_snapshots_yesterday_from_the_metrics_queue(tmp_path):
    build()
    app.control.purge()
    snapshot_metrics_nightly.delay()

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        env["DATABASE_URL"] = (f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:"
                               f"{db['PORT'] or 5432}/{db['NAME']}")
    else:
        env["SQLITE_PATH"] = db["NAME"]
    log_path = tmp_path / "worker.log"
    log = log_path.open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo",
         "--queues=metrics", "--loglevel=INFO", "--without-heartbeat", "--without-mingle",
         "--without-gossip"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    yesterday = local_today() - timedelta(days=1)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if CohortTable.objects.filter(through__isnull=False).exists():
                break
            assert worker.poll() is None, log_path.read_text()
            time.sleep(0.5)
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        log.close()
    assert Snapshot.objects.filter(date=yesterday).exists(), log_path.read_text()
    assert CohortTable.objects.get().through is not None
