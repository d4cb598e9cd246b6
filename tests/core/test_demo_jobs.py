"""The embedded default's demo with every job running at once: the beat jobs, a campaign being
sent and ingest arriving together, each in its own connection, as the worker's processes and
the web server run them. On SQLite one write lock serves them all, so a job must never hold it
for long — which needs the planner statistics `analyze_database` keeps (scripts/demo runs it,
beat hourly)."""


import pytest
from django.db import connection
from django.db.models import Count

from campaigns import services as campaign_services
from campaigns.models import Campaign, Message
from core.db import planner_statistics_refresh
from crm import demo
from crm import services as crm_services
from crm.hooks import touched_customers_process, touches_waiting
from lifecycle import services as lifecycle_services
from metrics import services as metrics_services
from metrics.periods import Scope, day_start, local_today
from metrics.selectors import latest_transitions
from tagging import services as tagging_services
from tests.factories import UserFactory
from tests.threads import run_at_once

pytestmark = pytest.mark.both_dbs


@pytest.fixture
def demo_world(transactional_db, settings):
    settings.OUTREACH_QUIET_HOURS = ""
    demo.seed_demo(customers=1500, seed=42, days=120)
    tagging_services.tag_rules_run_due()
    lifecycle_services.stage_models_evaluate()
    planner_statistics_refresh()            # what scripts/demo does after loading
    return UserFactory(username="demo-boss", is_superuser=True, is_staff=True)


def test_the_planner_uses_the_per_customer_index_for_where_customers_stood(demo_world):
    """Without statistics SQLite answered this anti-join through the (model, at) index, once
    per transition: 14 s of metrics_today holding the write lock at 5,000 customers. The hourly
    job keeps them on SQLite and leaves PostgreSQL (autovacuum) alone."""
    ran = planner_statistics_refresh(scheduled=True)
    if connection.vendor != "sqlite":
        assert ran is None
        return
    assert ran == "ANALYZE (SQLite)"
    query = latest_transitions(scope=Scope(), before=day_start(local_today()))
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        plan = " | ".join(str(row[-1]) for row in cursor.fetchall())
    subquery = plan.split("CORRELATED SCALAR SUBQUERY", 1)[1]
    assert "lifecycle_tr_customer" in subquery, plan


def test_every_demo_job_runs_alongside_the_others(demo_world):
    campaign = campaign_services.campaign_save(
        campaign=None, actor=demo_world, name="周末活动", channel="console",
        category="content", condition={"field": "status", "op": "eq", "value": "active"},
        template="{{ name }}，周末见")
    campaign_services.campaign_start(campaign=campaign)
    queued = Message.objects.filter(campaign=campaign, status="queued").count()
    assert queued > 500

    some = list(demo.Customer.objects.order_by("pk").values_list("external_id", flat=True)[:300])
    jobs = {
        "metrics_today": lambda: metrics_services.metrics_today(),
        "dispatch": lambda: campaign_services.messages_dispatch(),
        "ingest": lambda: crm_services.events_ingest(actor=demo_world, items=[
            {"customer": ext, "type": "message_in", "idempotency_key": f"together-{ext}"}
            for ext in some]),
        "tagging_touched": lambda: touched_customers_process("tagging"),
        "lifecycle_touched": lambda: touched_customers_process("lifecycle"),
        "tag_rules": lambda: tagging_services.tag_rules_run_due(),
        "stage_models": lambda: lifecycle_services.stage_models_evaluate(due_only=True),
        "harassment": lambda: campaign_services.harassment_check(),
    }
    results = dict(zip(jobs, run_at_once(*jobs.values(), timeout=120), strict=True))

    assert set(results) == set(jobs)
    assert results["ingest"].accepted == 300
    # Each message went out, or was held back by a guard with its reason (opted out, …).
    outcome = dict(Message.objects.filter(campaign=campaign).values_list("status")
                   .annotate(n=Count("id")))
    assert set(outcome) <= {"sent", "skipped"} and sum(outcome.values()) == queued, outcome
    assert outcome["sent"] > 0.9 * queued
    # The touched customers are handed to the rules and models by the next run.
    touched_customers_process("tagging")
    touched_customers_process("lifecycle")
    assert touches_waiting()["lifecycle"] == 0     # (the tags the rules wrote included)
    assert Campaign.objects.get(pk=campaign.pk).audience_size == queued
