"""What happens to an SOP over time: enrolments complete, a paused step is resumed with a fresh
block rate, a corrected template reaches the messages not sent yet."""

from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns import services
from campaigns.models import Enrollment, Message, Sop, SopStep
from crm.models import Event
from lifecycle.models import CustomerStage, Stage, StageModel
from tests.campaigns.conftest import next_local_noon
from tests.factories import CustomerFactory

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]


@pytest.fixture
def sop(admin_user):
    stage = Stage.objects.get(model__key="value", key="growth")
    return services.sop_save(sop=None, actor=admin_user, name="测试 SOP",
                             model=StageModel.objects.get(key="value"), stage=stage, steps=[
                                 {"order": 1, "delay_minutes": 0, "channel": "wecom",
                                  "category": "content", "template": "{{ name }}，第一条"},
                                 {"order": 2, "delay_minutes": 60, "channel": "wecom",
                                  "category": "content", "template": "{{ name }}，第二条"}])


def _enrol(sop, n=1):
    customers = [CustomerFactory(name=f"客户{i}") for i in range(n)]
    now = next_local_noon()
    for c in customers:
        CustomerStage.objects.create(customer=c, model=sop.model, stage=sop.stage,
                                     entered_at=now, source="rule")
    services.sop_enroll(sop=sop, customer_ids=[c.pk for c in customers], entered_at=now)
    return customers, now


def test_an_enrolment_completes_when_its_last_message_is_out(sop, recorder):
    (customer,), now = _enrol(sop)
    services.messages_dispatch(now=now + timedelta(minutes=1))
    assert Enrollment.objects.get(customer=customer).status == "active"   # step 2 still due
    services.messages_dispatch(now=now + timedelta(minutes=61))
    enrolment = Enrollment.objects.get(customer=customer)
    assert enrolment.status == "completed" and enrolment.ended_at is not None


def test_editing_a_template_corrects_the_messages_not_sent_yet(sop, admin_user, recorder):
    (customer,), now = _enrol(sop)
    services.messages_dispatch(now=now + timedelta(minutes=1))          # step 1 goes out
    steps = [{"order": 1, "delay_minutes": 0, "channel": "wecom", "category": "content",
              "template": "{{ name }}，第一条"},
             {"order": 2, "delay_minutes": 60, "channel": "wecom", "category": "content",
              "template": "{{ name }}，第二条（已更正）"}]
    services.sop_save(sop=sop, actor=admin_user, steps=steps)
    services.messages_dispatch(now=now + timedelta(minutes=61))
    contents = dict(Message.objects.filter(customer=customer)
                    .values_list("sop_step__order", "content"))
    assert contents == {1: "客户0，第一条", 2: "客户0，第二条（已更正）"}


def test_a_resumed_step_counts_its_block_rate_afresh(sop, admin_user, outreach_policy):
    outreach_policy(block_min_sends=10)
    step = sop.steps.get(order=1)
    customers = [CustomerFactory() for _ in range(20)]
    sent_at = timezone.now() - timedelta(days=3)
    Message.objects.bulk_create([
        Message(customer=c, channel="wecom", category="content", content="x", sop_step=step,
                status="sent", sent_at=sent_at, due_at=sent_at, dedupe_key=f"old:{c.pk}")
        for c in customers])
    Event.objects.bulk_create([
        Event(customer=c, type="friend_deleted", occurred_at=sent_at + timedelta(hours=1),
              idempotency_key=f"del:{c.pk}") for c in customers[:5]])
    assert services.harassment_check() == [("step", step.pk)]
    step.refresh_from_db()
    assert step.paused and "5 of 20" in step.paused_reason

    steps = [{"order": s.order, "delay_minutes": s.delay_minutes, "channel": s.channel,
              "category": s.category, "template": s.template, "paused": False}
             for s in sop.steps.order_by("order")]
    services.sop_save(sop=sop, actor=admin_user, steps=steps)
    step.refresh_from_db()
    assert not step.paused and step.paused_reason == "" and step.counted_since is not None
    assert services.harassment_check() == []        # the old sends no longer count
    assert services.block_stats(step_ids=[step.pk], campaign_ids=[]) == {}


def test_an_admin_pauses_a_step_by_hand(sop, admin_user):
    steps = [{"order": s.order, "delay_minutes": s.delay_minutes, "channel": s.channel,
              "category": s.category, "template": s.template, "paused": s.order == 2}
             for s in sop.steps.order_by("order")]
    services.sop_save(sop=sop, actor=admin_user, steps=steps)
    paused = SopStep.objects.get(sop=sop, order=2)
    assert paused.paused and admin_user.username in paused.paused_reason
    assert Sop.objects.get(pk=sop.pk).steps.filter(paused=False).count() == 1
