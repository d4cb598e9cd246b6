"""Fault tests of the set-based runs: the PostgreSQL connection of a lifecycle evaluation and of
a tag-rule run is killed (`pg_terminate_backend`) while the run is writing. The run must roll
back whole — no stage, transition or tag half-written — and the next run must complete, with
every customer placed (or tagged) once and no transition recorded twice.

The run is held at its write by a lock another connection takes on the table it writes, so the
kill lands mid-run every time, not by timing luck."""

import importlib
import threading
import time

import psycopg2
import pytest
from django.apps import apps
from django.db import connection, connections

from lifecycle.models import CustomerStage, StageModel, StageTransition
from lifecycle.services import stage_models_evaluate
from tagging.models import CustomerTag, Tag, TagChange, TagGroup, TagRule
from tagging.services import tag_rule_run
from tests.factories import CustomerFactory, UserFactory

pytestmark = [pytest.mark.fault, pytest.mark.postgres_only,
              pytest.mark.django_db(transaction=True)]
CUSTOMERS = 300


def _raw():
    settings = connection.settings_dict
    conn = psycopg2.connect(dbname=settings["NAME"], host=settings["HOST"] or "127.0.0.1",
                            port=settings["PORT"] or 5432, user=settings["USER"],
                            password=settings["PASSWORD"] or None)
    conn.autocommit = True
    return conn


def _run_killed(run, table: str) -> BaseException | None:
    """Run `run()` in a thread of its own (its own connection), hold it at a write to `table`,
    kill its connection, and return what it raised."""
    locker = _raw()
    outcome: dict = {}

    def target():
        try:
            run()
        except BaseException as exc:      # the killed connection's error, kept for the test
            outcome["error"] = exc
        finally:
            connections.close_all()

    watcher = _raw()      # outside the locker's transaction: it sees the wait as it starts
    with locker.cursor() as cursor, watcher.cursor() as watch:
        cursor.execute("BEGIN")
        cursor.execute(f'LOCK TABLE "{table}" IN EXCLUSIVE MODE')
        thread = threading.Thread(target=target)
        thread.start()
        pid = None
        deadline = time.monotonic() + 30
        while pid is None and time.monotonic() < deadline:
            watch.execute("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                          "AND datname = current_database()")
            row = watch.fetchone()
            pid = row[0] if row else None
            time.sleep(0.05)
        if pid is not None:
            watch.execute("SELECT pg_terminate_backend(%s)", [pid])
        cursor.execute("ROLLBACK")
    thread.join(timeout=60)
    locker.close()
    watcher.close()
    assert pid is not None, "the run never reached its write"
    return outcome.get("error")


def test_a_lifecycle_run_whose_connection_dies_rolls_back_and_the_next_completes():
    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(apps, None)
    owner = UserFactory(roles=["operator"])
    for _ in range(CUSTOMERS):
        CustomerFactory(owner=owner)
    error = _run_killed(lambda: stage_models_evaluate(keys=["value"]),
                        StageTransition._meta.db_table)
    assert error is not None                                  # the run saw its connection go
    assert not StageTransition.objects.exists()
    assert not CustomerStage.objects.exists()                 # nothing half-written
    stage_models_evaluate(keys=["value"])
    value = StageModel.objects.get(key="value")
    assert CustomerStage.objects.filter(model=value).count() == CUSTOMERS
    assert StageTransition.objects.filter(model=value).count() == CUSTOMERS
    stage_models_evaluate(keys=["value"])                     # and again: nothing new
    assert StageTransition.objects.filter(model=value).count() == CUSTOMERS


def test_a_tag_rule_run_whose_connection_dies_rolls_back_and_the_next_completes():
    owner = UserFactory(roles=["operator"])
    for _ in range(CUSTOMERS):
        CustomerFactory(owner=owner, city="杭州")
    tag = Tag.objects.create(group=TagGroup.objects.create(name="地区"), name="杭州")
    rule = TagRule.objects.create(name="杭州客户", tag=tag, condition={
        "field": "city", "op": "eq", "value": "杭州"})
    error = _run_killed(lambda: tag_rule_run(rule=TagRule.objects.get(pk=rule.pk)),
                        CustomerTag._meta.db_table)
    assert error is not None
    assert not CustomerTag.objects.exists() and not TagChange.objects.exists()
    tag_rule_run(rule=rule)
    assert CustomerTag.objects.filter(tag=tag).count() == CUSTOMERS
    assert TagChange.objects.filter(tag=tag).count() == CUSTOMERS
    tag_rule_run(rule=rule)
    assert TagChange.objects.filter(tag=tag).count() == CUSTOMERS
