"""Send-time guards (issue 5 §7), each a recorded skip reason; the frequency cap; quiet hours
that hold a message until the window opens; and the harassment signal (§8) that pauses a step
whose customers delete us."""

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model

from campaigns import services
from campaigns.models import Campaign, Message, OperatorTask, SopStep
from core.exceptions import ApplicationError
from crm.models import Customer, Event
from lifecycle.hooks import StageEntry
from tagging.models import Tag, TagGroup
from tests.campaigns.conftest import NOW, local, place
from tests.factories import UserFactory

pytestmark = [pytest.mark.django_db]

LONDON = ZoneInfo("Europe/London")


def _status(message) -> tuple:
    message.refresh_from_db()
    return message.status, message.skip_reason


def _enter(customers, model_key="aipl", stage_key="awareness", at=NOW):
    for c in customers:
        place(c, model_key, stage_key, at)
    services.sops_on_stage_entered(StageEntry(model=model_key, stage=stage_key, at=at,
                                              source="rule",
                                              customer_ids=[c.pk for c in customers]))


# --- Who may be reached ---------------------------------------------------------------------

@pytest.mark.both_dbs
def test_each_guard_records_its_skip_reason(queue, owner, make_sop):
    def person(name, **fields):
        return Customer.objects.create(external_id=f"g-{name}", name=name, owner=owner,
                                       joined_at=NOW - timedelta(days=9), **fields)

    cancelled = Campaign.objects.create(name="old", condition={"all": []}, template="x",
                                        status="cancelled")
    paused_campaign = Campaign.objects.create(name="held", condition={"all": []},
                                              template="x", status="sending", paused=True)
    paused_sop = make_sop("aipl", "awareness", name="paused")
    paused_step = paused_sop.steps.get()
    SopStep.objects.filter(pk=paused_step.pk).update(paused=True)

    expected = {
        queue(person("ok")).pk: ("sent", ""),
        queue(person("optout", opted_out=True)).pk: ("skipped", "opted_out"),
        queue(person("gone", status="deleted_us")).pk: ("skipped", "deleted_us"),
        queue(person("removed", status="removed")).pk: ("skipped", "deleted_us"),
        queue(person("c1"), campaign=cancelled).pk: ("skipped", "cancelled"),
        # A paused campaign's message waits, queued, for a resume (or a cancel).
        queue(person("c2"), campaign=paused_campaign).pk: ("queued", ""),
        queue(person("s1"), sop_step=paused_step).pk: ("skipped", "paused"),
    }

    result = services.messages_dispatch(now=NOW)

    assert {m.pk: (m.status, m.skip_reason) for m in Message.objects.all()} == expected
    assert result.sent == 1
    assert result.skipped == {"opted_out": 1, "deleted_us": 2, "cancelled": 1, "paused": 1}
    # A skip is not a send: nothing went to a backend and no sent_at was stamped.
    assert not Message.objects.filter(status="skipped", sent_at__isnull=False).exists()


@pytest.mark.both_dbs
def test_the_extra_condition_of_a_step(make_sop, owner):
    sop = make_sop("aipl", "awareness", steps=[
        {"condition": {"field": "city", "op": "eq", "value": "杭州"}}, {}])
    hangzhou = Customer.objects.create(external_id="hz", owner=owner, city="杭州")
    beijing = Customer.objects.create(external_id="bj", owner=owner, city="北京")
    _enter([hangzhou, beijing])

    result = services.messages_dispatch(now=NOW + timedelta(minutes=1))

    by = {(m.customer_id, m.sop_step.order): (m.status, m.skip_reason)
          for m in Message.objects.filter(sop_step__sop=sop).select_related("sop_step")}
    assert by == {(hangzhou.pk, 1): ("sent", ""), (hangzhou.pk, 2): ("sent", ""),
                  (beijing.pk, 1): ("skipped", "condition"), (beijing.pk, 2): ("sent", "")}
    assert result.skipped == {"condition": 1}


@pytest.mark.both_dbs
def test_a_condition_that_no_longer_compiles_does_not_block_the_outbox(make_sop, owner, queue):
    group = TagGroup.objects.create(name="会员")
    vip = Tag.objects.create(group=group, name="VIP")
    step_sop = make_sop("aipl", "awareness", name="vip step", steps=[
        {"condition": {"field": "tag", "op": "any", "value": ["VIP"]}}])
    goal_sop = make_sop("aipl", "awareness", name="vip goal",
                        goal={"field": "tag", "op": "any", "value": ["VIP"]})
    person = Customer.objects.create(external_id="broken-1", owner=owner)
    _enter([person])
    unrelated = queue()
    vip.delete()                    # the tag the conditions name is gone

    result = services.messages_dispatch(now=NOW + timedelta(minutes=1))

    assert _status(unrelated) == ("sent", "")
    assert Message.objects.get(sop_step__sop=step_sop).skip_reason == "condition"
    assert Message.objects.get(sop_step__sop=goal_sop).status == "sent"  # goal not reached
    assert result.claimed == 3 and not Message.objects.filter(status="sending").exists()


# --- Frequency cap --------------------------------------------------------------------------

@pytest.mark.both_dbs
def test_one_promotional_message_per_three_days(queue, owner):
    def customer_with_promo(name, days_ago):
        c = Customer.objects.create(external_id=f"fc-{name}", owner=owner)
        queue(c, category="promotional", status="sent", due_at=NOW - timedelta(days=days_ago),
              sent_at=NOW - timedelta(days=days_ago))
        return c

    recent = customer_with_promo("recent", 2)
    older = customer_with_promo("older", 3.1)
    capped = queue(recent, category="promotional")
    allowed = queue(older, category="promotional")
    service = queue(recent, category="service")          # service messages are exempt
    content = queue(recent, category="content")          # only promotion is capped

    result = services.messages_dispatch(now=NOW)

    assert _status(capped) == ("skipped", "frequency_cap")
    assert _status(allowed) == ("sent", "")
    assert _status(service) == ("sent", "")
    assert _status(content) == ("sent", "")
    assert result.skipped == {"frequency_cap": 1}


@pytest.mark.both_dbs
def test_four_promotional_messages_per_calendar_month_and_channel(queue, owner):
    now = local(2026, 3, 20, 12)
    full = Customer.objects.create(external_id="fc-full", owner=owner)
    for day in (1, 5, 9, 13):
        queue(full, channel="wecom", category="promotional", status="sent",
              due_at=local(2026, 3, day, 12), sent_at=local(2026, 3, day, 12))
    # The month is the calendar month in the system time zone: the last evening of February
    # does not count, the first minutes of March do.
    boundary = Customer.objects.create(external_id="fc-boundary", owner=owner)
    for sent in (local(2026, 2, 28, 23, 30), local(2026, 3, 5, 12), local(2026, 3, 9, 12),
                 local(2026, 3, 13, 12)):
        queue(boundary, channel="wecom", category="promotional", status="sent", due_at=sent,
              sent_at=sent)
    over = Customer.objects.create(external_id="fc-over", owner=owner)
    for sent in (local(2026, 3, 1, 0, 30), local(2026, 3, 5, 12), local(2026, 3, 9, 12),
                 local(2026, 3, 13, 12)):
        queue(over, channel="wecom", category="promotional", status="sent", due_at=sent,
              sent_at=sent)

    fifth = queue(full, channel="wecom", category="promotional", due_at=now)
    other_channel = queue(full, channel="sms", category="promotional", due_at=now)
    fourth = queue(boundary, channel="wecom", category="promotional", due_at=now)
    also_fifth = queue(over, channel="wecom", category="promotional", due_at=now)

    services.messages_dispatch(now=now)

    assert _status(fifth) == ("skipped", "frequency_cap")
    assert _status(other_channel) == ("sent", "")
    assert _status(fourth) == ("sent", "")
    assert _status(also_fifth) == ("skipped", "frequency_cap")


@pytest.mark.both_dbs
def test_a_second_promotion_in_the_same_batch_is_capped_and_the_first_due_goes(queue, owner):
    c = Customer.objects.create(external_id="fc-batch", owner=owner)
    first = queue(c, category="promotional", due_at=NOW - timedelta(hours=2))
    second = queue(c, category="promotional", due_at=NOW - timedelta(hours=1))

    result = services.messages_dispatch(now=NOW)

    assert result.sent == 1
    assert _status(first) == ("sent", "")
    assert _status(second) == ("skipped", "frequency_cap")


@pytest.mark.both_dbs
def test_the_caps_are_editable(queue, owner, outreach_policy):
    outreach_policy(promo_min_days_between=1, promo_max_per_month=2)
    now = local(2026, 3, 10, 12)
    c = Customer.objects.create(external_id="fc-edit", owner=owner)
    queue(c, category="promotional", status="sent", due_at=now - timedelta(days=2),
          sent_at=now - timedelta(days=2))
    allowed = queue(c, category="promotional", due_at=now)

    services.messages_dispatch(now=now)
    assert _status(allowed) == ("sent", "")              # 2 days after the last: enough

    capped = queue(c, category="promotional", due_at=now + timedelta(days=2))
    services.messages_dispatch(now=now + timedelta(days=2))
    assert _status(capped) == ("skipped", "frequency_cap")       # 2 this month already


# --- Quiet hours ----------------------------------------------------------------------------

@pytest.mark.both_dbs
def test_quiet_hours_hold_a_message_until_the_window_opens(queue, settings):
    settings.OUTREACH_QUIET_HOURS = "22:00-08:00"
    late = queue(due_at=local(2026, 3, 2, 23, 0))

    held = services.messages_dispatch(now=local(2026, 3, 2, 23, 0))

    assert (held.claimed, held.held, held.sent, dict(held.skipped)) == (1, 1, 0, {})
    late.refresh_from_db()
    assert (late.status, late.skip_reason, late.attempts) == ("queued", "", 0)
    assert late.due_at == local(2026, 3, 3, 8, 0)
    assert late.sent_at is None

    assert services.messages_dispatch(now=local(2026, 3, 3, 7, 59)).claimed == 0
    released = services.messages_dispatch(now=local(2026, 3, 3, 8, 1))

    assert released.sent == 1
    late.refresh_from_db()
    assert (late.status, late.attempts, late.sent_at) == ("sent", 1, local(2026, 3, 3, 8, 1))


@pytest.mark.both_dbs
def test_quiet_hours_after_midnight_and_in_a_daytime_window(queue, settings):
    early = queue(due_at=local(2026, 3, 3, 3, 0))
    services.messages_dispatch(now=local(2026, 3, 3, 3, 0))
    early.refresh_from_db()
    assert (early.status, early.due_at) == ("queued", local(2026, 3, 3, 8, 0))

    settings.OUTREACH_QUIET_HOURS = "12:00-14:00"
    lunch = queue(due_at=local(2026, 3, 3, 12, 30))
    services.messages_dispatch(now=local(2026, 3, 3, 12, 30))
    lunch.refresh_from_db()
    assert (lunch.status, lunch.due_at) == ("queued", local(2026, 3, 3, 14, 0))


@pytest.mark.both_dbs
def test_no_quiet_hours_when_the_setting_is_empty(queue, settings):
    settings.OUTREACH_QUIET_HOURS = ""
    late = queue(due_at=local(2026, 3, 2, 23, 0))
    assert services.messages_dispatch(now=local(2026, 3, 2, 23, 0)).sent == 1
    assert _status(late) == ("sent", "")


@pytest.mark.both_dbs
def test_a_malformed_quiet_hours_setting_is_reported(queue, settings):
    settings.OUTREACH_QUIET_HOURS = "22-8"
    queue()
    with pytest.raises(ApplicationError, match="OUTREACH_QUIET_HOURS: use HH:MM-HH:MM"):
        services.messages_dispatch(now=NOW)


@pytest.mark.both_dbs
def test_the_customers_own_time_zone_is_honoured(queue, owner, settings):
    settings.OUTREACH_QUIET_HOURS = "22:00-08:00"
    shanghai = Customer.objects.create(external_id="tz-sh", owner=owner)
    london = Customer.objects.create(external_id="tz-ldn", owner=owner,
                                     attributes={"timezone": "Europe/London"})
    unknown = Customer.objects.create(external_id="tz-bad", owner=owner,
                                      attributes={"timezone": "Mars/Olympus"})

    # 23:00 in Shanghai is 15:00 in London.
    evening = local(2026, 3, 2, 23, 0)
    at_sh, at_ldn, at_bad = (queue(c, due_at=evening) for c in (shanghai, london, unknown))
    services.messages_dispatch(now=evening)
    assert _status(at_ldn) == ("sent", "")
    assert _status(at_sh) == ("queued", "")
    assert _status(at_bad) == ("queued", "")          # an unknown zone: the system's

    # Noon in Shanghai is 04:00 in London: held until 08:00 London time.
    noon = local(2026, 3, 3, 12, 0)
    morning = queue(london, due_at=noon)
    services.messages_dispatch(now=noon)
    morning.refresh_from_db()
    assert morning.status == "queued"
    assert morning.due_at == local(2026, 3, 3, 8, 0, tz=LONDON)


@pytest.mark.both_dbs
def test_a_night_batch_is_held_in_a_statement_per_morning_not_per_message(
        queue, owner, bulk_customers, settings, django_assert_max_num_queries):
    """At night every due message is held: one UPDATE per time zone's opening of the window
    (at 1M customers the evening's SOP steps are thousands a minute)."""
    settings.OUTREACH_QUIET_HOURS = "22:00-08:00"
    night = local(2026, 3, 3, 2, 0)                  # 18:00 in London: not quiet there
    tokyo = bulk_customers(40, "tz-tyo", attributes={"timezone": "Asia/Tokyo"})
    home = bulk_customers(60, "tz-home")
    messages = [queue(c, due_at=night) for c in tokyo + home]

    with django_assert_max_num_queries(20):
        done = services.messages_dispatch(now=night)

    assert (done.claimed, done.held, done.sent) == (100, 100, 0)
    due = {m.customer.external_id[:6]: set() for m in messages}
    for m in Message.objects.filter(pk__in=[m.pk for m in messages]).select_related("customer"):
        assert (m.status, m.attempts) == ("queued", 0)
        due[m.customer.external_id[:6]].add(m.due_at)
    assert due == {"tz-tyo": {local(2026, 3, 3, 8, 0, tz=ZoneInfo("Asia/Tokyo"))},
                   "tz-hom": {local(2026, 3, 3, 8, 0)}}


# --- The harassment signal ------------------------------------------------------------------

SENT_AT = NOW - timedelta(days=3)


def _step_with_blocks(make_sop, bulk_customers, *, sends, blocks, after_hours=10.0,
                      prefix="h"):
    sop = make_sop("aipl", "awareness", name=f"harass {prefix}")
    step = sop.steps.get()
    customers = bulk_customers(sends, prefix)
    Message.objects.bulk_create([
        Message(customer=c, channel="wecom", category="content", content="hi", sop_step=step,
                dedupe_key=f"h:{prefix}:{c.pk}", due_at=SENT_AT, status="sent",
                sent_at=SENT_AT, attempts=1) for c in customers])
    Event.objects.bulk_create([
        Event(customer=c, type="friend_deleted", occurred_at=SENT_AT + timedelta(
            hours=after_hours), idempotency_key=f"del-{prefix}-{c.pk}")
        for c in customers[:blocks]])
    return step


@pytest.mark.both_dbs
def test_a_step_with_too_many_blocks_pauses_and_alerts_admins(make_sop, bulk_customers,
                                                               admin_user, operator, queue):
    second_admin = UserFactory(username="admin-2", roles=["admin"])
    UserFactory(username="admin-gone", roles=["admin"], is_active=False)
    step = _step_with_blocks(make_sop, bulk_customers, sends=200, blocks=5)

    assert services.harassment_check() == [("step", step.pk)]

    step.refresh_from_db()
    assert step.paused
    assert step.paused_reason == "5 of 200 customers (2.5%) deleted us within 48 h of this step"
    alerts = OperatorTask.objects.filter(kind="alert")
    assert sorted(a.assignee.username for a in alerts) == sorted([admin_user.username,
                                                                  second_admin.username])
    assert {a.title for a in alerts} == {"SOP step paused: harass h #1"}
    assert {a.body for a in alerts} == {step.paused_reason}
    assert not OperatorTask.objects.filter(assignee=operator).exists()

    # Checked again: nothing new.
    assert services.harassment_check() == []
    assert OperatorTask.objects.filter(kind="alert").count() == 2
    # The paused step sends nothing more.
    later = queue(sop_step=step)
    services.messages_dispatch(now=NOW)
    assert _status(later) == ("skipped", "paused")
    assert get_user_model().objects.filter(operator_tasks__kind="alert").distinct().count() == 2


@pytest.mark.both_dbs
@pytest.mark.parametrize("sends, blocks, after_hours", [
    (200, 4, 10.0),      # exactly 2 %: not over the threshold
    (199, 10, 10.0),     # too few sends to judge
    (200, 10, 48.5),     # deleted us, but more than 48 h after the message
    (200, 10, -1.0),     # deleted us before the message was sent
])
def test_no_pause_below_the_threshold_or_outside_the_window(make_sop, bulk_customers,
                                                            admin_user, sends, blocks,
                                                            after_hours):
    step = _step_with_blocks(make_sop, bulk_customers, sends=sends, blocks=blocks,
                             after_hours=after_hours)

    assert services.harassment_check() == []

    step.refresh_from_db()
    assert not step.paused
    assert not OperatorTask.objects.exists()
    expected_blocks = blocks if 0 <= after_hours < 48 else 0
    assert services.block_stats(step_ids=[step.pk]) == {
        ("step", step.pk): {"sends": sends, "blocks": expected_blocks}}


@pytest.mark.both_dbs
def test_block_rate_per_campaign(queue, owner):
    campaign = Campaign.objects.create(name="blast", condition={"all": []}, template="x",
                                       status="done")
    customers = [Customer.objects.create(external_id=f"bc-{i}", owner=owner) for i in range(4)]
    for c in customers:
        queue(c, campaign=campaign, status="sent", sent_at=SENT_AT, due_at=SENT_AT)
    Event.objects.create(customer=customers[0], type="friend_deleted",
                         occurred_at=SENT_AT + timedelta(hours=47), idempotency_key="bc-del")

    assert services.block_stats(campaign_ids=[campaign.pk]) == {
        ("campaign", campaign.pk): {"sends": 4, "blocks": 1}}


@pytest.mark.both_dbs
def test_a_campaign_with_too_many_blocks_pauses_its_rest_until_an_admin_resumes_it(
        bulk_customers, admin_user, operator, owner):
    campaign = Campaign.objects.create(name="双十一", condition={"all": []}, template="x",
                                       status="sending", started_at=SENT_AT)
    customers = bulk_customers(220, "cp")
    sent, waiting = customers[:200], customers[200:]
    Message.objects.bulk_create(
        [Message(customer=c, channel="wecom", category="content", content="hi",
                 campaign=campaign, dedupe_key=f"cp:{c.pk}", due_at=SENT_AT, status="sent",
                 sent_at=SENT_AT, attempts=1) for c in sent]
        + [Message(customer=c, channel="wecom", category="content", content="hi",
                   campaign=campaign, dedupe_key=f"cp:{c.pk}", due_at=NOW - timedelta(hours=1))
           for c in waiting])
    Event.objects.bulk_create([
        Event(customer=c, type="friend_deleted", occurred_at=SENT_AT + timedelta(hours=5),
              idempotency_key=f"del-cp-{c.pk}") for c in sent[:6]])

    assert services.harassment_check() == [("campaign", campaign.pk)]
    campaign.refresh_from_db()
    assert campaign.paused
    assert campaign.paused_reason == ("6 of 200 customers (3.0%) deleted us within 48 h of "
                                      "this campaign")
    assert {a.title for a in OperatorTask.objects.filter(kind="alert")} == {
        "Campaign paused: 双十一"}
    # Paused, its rest waits: queued, not skipped, not sent.
    services.messages_dispatch(now=NOW)
    assert set(Message.objects.filter(customer__in=waiting).values_list("status", flat=True)) \
        == {"queued"}

    with pytest.raises(ApplicationError, match="Only an admin may resume"):
        services.campaign_resume(campaign=campaign, actor=operator)
    services.campaign_resume(campaign=campaign, actor=admin_user)
    result = services.messages_dispatch(now=NOW)
    assert result.sent == 20
    # The block rate starts afresh: the old sends no longer pause it.
    assert services.harassment_check() == []
