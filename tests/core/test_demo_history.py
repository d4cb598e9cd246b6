"""`demo_history` (what scripts/demo runs after seed_demo): a stage history spread over the
past months that follows the generated facts, SOP sends with receipts, a finished and a
scheduled campaign, to-dos for every operator, segments and seed 004's custom model — with the
facts themselves left exactly as seed_demo made them, and nothing doubled by a second run."""

from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db.models import Count, F, Max, Min
from django.utils import timezone

from campaigns.management.commands.demo_history import CUSTOM_MODEL, demo_history
from campaigns.models import Campaign, CampaignControl, Enrollment, Message, OperatorTask
from crm import demo
from crm.models import Customer, Event, GroupMembership, Order
from lifecycle.models import CustomerStage, StageModel, StageTransition
from tagging import services as tagging_services
from tagging.models import Segment, Tag, TagRule, TagRuleRun

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]


def facts():
    return {
        "events": Event.objects.count(),
        "orders": list(Order.objects.order_by("pk").values_list("pk", "status", "placed_at")),
        "memberships": list(GroupMembership.objects.order_by("pk").values_list(
            "pk", "joined_at", "left_at")),
        "customers": list(Customer.objects.order_by("pk").values_list(
            "pk", "status", "opted_out", "orders_count", "total_spent", "last_active_at",
            "last_order_at")),
    }


def counts():
    return {model.__name__: model.objects.count() for model in (
        StageTransition, CustomerStage, Enrollment, Message, OperatorTask, Campaign,
        CampaignControl, Segment, StageModel, Tag, TagRule)}


@pytest.fixture
def world(settings):
    settings.OUTREACH_QUIET_HOURS = ""
    demo.seed_demo(customers=300, seed=42, days=365)
    tagging_services.tag_rules_run_due(force=True)
    before = facts()
    report = demo_history()
    return before, report


def test_the_stage_history_is_spread_over_months_and_follows_the_facts(world):
    before, report = world
    assert report.moments >= 5
    # The facts are given back exactly as they were generated.
    assert facts() == before

    now = timezone.now()
    span = StageTransition.objects.aggregate(first=Min("at"), last=Max("at"))
    assert span["last"] - span["first"] > timedelta(days=60)
    today = StageTransition.objects.filter(at__gte=now - timedelta(days=1)).count()
    assert today < StageTransition.objects.count() / 4
    assert not StageTransition.objects.filter(at__gt=now).exists()
    # No one moves before joining; each current stage was entered at its last transition.
    assert not StageTransition.objects.filter(at__lt=F("customer__joined_at")).exists()
    for cs in CustomerStage.objects.select_related("customer")[:200]:
        assert cs.entered_at >= cs.customer.joined_at
        last = (StageTransition.objects.filter(customer=cs.customer_id, model=cs.model_id)
                .order_by("-at", "-id").first())
        assert last.to_stage_id == cs.stage_id and last.at == cs.entered_at
    # Win-backs and churn happened, in the value lifecycle at least.
    assert StageTransition.objects.filter(win_back=True, model__key="value").exists()
    assert StageTransition.objects.filter(model__key="value", to_key="churn").exists()
    # A first placement of a customer who joined during the replay follows their joining.
    recent = StageTransition.objects.filter(from_key="", customer__joined_at__gte=span["first"]
                                            ).select_related("customer")[:50]
    assert recent and all(t.at - t.customer.joined_at < timedelta(hours=1) for t in recent)


def test_outreach_has_a_past_and_a_future(world):
    now = timezone.now()
    statuses = dict(Message.objects.values_list("status").annotate(n=Count("id")))
    for status in ("sent", "delivered", "read", "replied"):
        assert statuses.get(status, 0) > 0, statuses
    assert not Message.objects.filter(read_at__lt=F("sent_at")).exists()
    assert Enrollment.objects.filter(entered_at__lt=now - timedelta(days=7)).exists()

    done = Campaign.objects.get(status="done")
    assert done.started_at < now - timedelta(days=7) and done.finished_at > done.started_at
    assert done.audience_size and Message.objects.filter(
        campaign=done, status__in=["sent", "delivered", "read", "replied"]).exists()
    assert CampaignControl.objects.filter(campaign=done).exists()    # the holdout
    scheduled = Campaign.objects.get(status="scheduled")
    assert scheduled.send_at > now

    operators = get_user_model().objects.filter(customers__isnull=False).distinct()
    assert operators.count() >= 4
    for operator in operators:
        assert OperatorTask.objects.filter(assignee=operator, status="open").exists(), operator
    assert OperatorTask.objects.filter(kind="churn_warning").exists()
    assert OperatorTask.objects.filter(status="done", closed_at__isnull=False).exists()


def test_custom_model_segments_and_tags(world):
    model = StageModel.objects.get(key=CUSTOM_MODEL["key"])
    assert [s.name for s in model.stages.order_by("position")] == [
        "新客户", "初步沟通", "意向客户", "成交", "无意向"]
    occupied = CustomerStage.objects.filter(model=model).values("stage").distinct().count()
    assert occupied >= 3
    assert Segment.objects.count() >= 5
    assert TagRuleRun.objects.filter(rule__tag__group__name="兴趣偏好").exists()
    assert all(Tag.objects.values_list("color", flat=True))


def test_a_second_run_doubles_nothing(world):
    before = counts()
    out = StringIO()
    call_command("demo_history", stdout=out)
    assert "no replay" in out.getvalue()
    assert counts() == before
