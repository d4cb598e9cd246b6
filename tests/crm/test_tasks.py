"""Celery tasks, eagerly and once through a real worker on the configured broker."""

import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from config.celery import app
from crm import services
from crm.models import Customer
from crm.tasks import refresh_customer_aggregates

ROOT = Path(__file__).resolve().parents[2]


def _customer_with_an_order(external_id: str) -> Customer:
    user = get_user_model().objects.create_superuser(f"admin-{external_id}", password="x")
    services.events_ingest(actor=user, items={
        "customer": external_id, "type": "friend_added", "idempotency_key": f"add-{external_id}",
        "occurred_at": "2026-01-01T09:00:00+08:00"})
    services.orders_ingest(actor=user, items={
        "customer": external_id, "external_id": f"o-{external_id}", "source": "store",
        "amount": "88.00", "placed_at": "2026-01-02T09:00:00+08:00"})
    customer = Customer.objects.get(external_id=external_id)
    # Corrupt the aggregates, as a bug or a manual SQL edit might.
    Customer.objects.filter(pk=customer.pk).update(orders_count=9, total_spent=Decimal("1"),
                                                   last_active_at=None)
    return customer


@pytest.mark.django_db
def test_refresh_task_repairs_aggregates_when_run_eagerly():
    customer = _customer_with_an_order("eager-1")
    refresh_customer_aggregates.apply(args=[[customer.pk]]).get()
    customer.refresh_from_db()
    assert customer.orders_count == 1
    assert customer.total_spent == Decimal("88.00")
    assert customer.last_active_at == customer.last_order_at


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_real_worker_runs_the_task_from_the_broker(tmp_path):
    customer = _customer_with_an_order("worker-1")
    app.control.purge()
    refresh_customer_aggregates.delay([customer.pk])

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        env["DATABASE_URL"] = (f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:"
                               f"{db['PORT'] or 5432}/{db['NAME']}")
    else:
        env["SQLITE_PATH"] = db["NAME"]
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo",
         "--queues=default", "--loglevel=INFO", "--without-heartbeat", "--without-mingle",
         "--without-gossip"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            customer.refresh_from_db()
            if customer.orders_count == 1:
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            time.sleep(0.5)
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        log.close()
    assert customer.orders_count == 1, (tmp_path / "worker.log").read_text()
    assert customer.total_spent == Decimal("88.00")
    assert customer.last_active_at is not None
    assert customer.last_active_at <= timezone.now()
