"""Enrolment in stage-matched SOPs (issue 5 §1): a real lifecycle evaluation makes customers
enter stages, the transition hook enrols them and queues one message per step at the right
moment; re-entry enrols again, one entry never twice; leaving the stage, opting out, deleting
us and reaching the goal end the SOP; holdouts get nothing; the existing customers of a first
evaluation are not greeted."""

from datetime import timedelta

import pytest

from campaigns import services
from campaigns.models import Enrollment, Message, OperatorTask
from lifecycle.hooks import StageEntry
from tests.campaigns.conftest import NOW, local, place

pytestmark = [pytest.mark.django_db]

JOINED = NOW - timedelta(minutes=5)


def _plan(customer) -> list[tuple]:
    """(model, stage, step order, due_at, status, skip reason) of the customer's messages."""
    return [(m.sop_step.sop.model.key, m.sop_step.sop.stage.key, m.sop_step.order, m.due_at,
             m.status, m.skip_reason)
            for m in Message.objects.filter(customer=customer)
            .select_related("sop_step__sop__model", "sop_step__sop__stage")
            .order_by("due_at", "id")]


def _enrolments(customer) -> list[tuple]:
    return [(e.sop.model.key, e.sop.stage.key, e.entered_at, e.status, e.exit_reason)
            for e in Enrollment.objects.filter(customer=customer)
            .select_related("sop__model", "sop__stage").order_by("entered_at", "sop__model__key")]


# --- Entering a stage -----------------------------------------------------------------------

@pytest.mark.both_dbs
def test_a_new_customer_is_enrolled_in_the_intro_and_interest_sops(world, default_sops):
    customer = world.add("wx-lin", joined_at=JOINED, name="林小姐")

    world.evaluate(NOW, [customer])

    assert world.stage(customer, "value") == "intro"
    assert world.stage(customer, "journey") == "interest"
    assert _enrolments(customer) == [("journey", "interest", NOW, "active", ""),
                                     ("value", "intro", NOW, "active", "")]
    # Delays in minutes after entry; "day N at HH:MM" in the system time zone (Asia/Shanghai).
    assert _plan(customer) == [
        ("value", "intro", 1, NOW + timedelta(minutes=5), "queued", ""),
        ("journey", "interest", 1, NOW + timedelta(minutes=10), "queued", ""),
        ("value", "intro", 2, local(2026, 3, 3, 10, 0), "queued", ""),
        ("journey", "interest", 2, local(2026, 3, 4, 20, 0), "queued", ""),
        ("value", "intro", 3, local(2026, 3, 5, 20, 0), "queued", ""),
    ]
    welcome = Message.objects.get(customer=customer, sop_step__sop__stage__key="intro",
                                  sop_step__order=1)
    assert welcome.content == ""            # written when it is sent, about the customer then
    services.messages_dispatch(now=NOW + timedelta(minutes=6), max_batches=1)
    welcome.refresh_from_db()
    assert welcome.status == "sent"
    assert welcome.content.startswith("林小姐您好，我是Wang，欢迎来到我们的私域")
    assert (welcome.channel, welcome.category) == ("wecom", "service")
    assert not Message.objects.filter(customer=customer, category="promotional").exists()


@pytest.mark.both_dbs
def test_day_n_at_a_time_follows_the_system_time_zone(settings, make_sop, customer):
    settings.TIME_ZONE = "America/New_York"
    sop = make_sop("aipl", "awareness", steps=[
        {"day": 0, "at_time": "18:00"}, {"day": 2, "at_time": "09:30"},
        {"delay_minutes": 90}])
    person = customer()
    entered = local(2026, 3, 2, 12, 0)   # noon in New York (EST, UTC-5)

    services.sops_on_stage_entered(StageEntry(model="aipl", stage="awareness", at=entered,
                                              source="rule", customer_ids=[person.pk]))

    due = sorted(Message.objects.filter(sop_step__sop=sop).values_list("due_at", flat=True))
    assert [d.isoformat() for d in due] == ["2026-03-02T18:30:00+00:00",   # 13:30 EST
                                            "2026-03-02T23:00:00+00:00",   # 18:00 EST
                                            "2026-03-04T14:30:00+00:00"]   # 09:30 EST


@pytest.mark.both_dbs
def test_one_entry_never_enrols_twice(world, default_sops):
    customer = world.add("wx-twice", joined_at=JOINED)
    world.evaluate(NOW, [customer])
    before = (_enrolments(customer), _plan(customer))

    # The same evaluation again moves nobody …
    world.evaluate(NOW + timedelta(minutes=1), [customer])
    # … and the hook heard twice for the same entry changes nothing.
    entry = StageEntry(model="value", stage="intro", at=NOW, source="rule",
                       customer_ids=[customer.pk], first_placement=frozenset({customer.pk}))
    services.sops_on_stage_entered(entry)
    services.sops_on_stage_entered(entry)

    assert (_enrolments(customer), _plan(customer)) == before
    assert Enrollment.objects.filter(customer=customer).count() == 2
    assert Message.objects.filter(customer=customer).count() == 5


@pytest.mark.both_dbs
@pytest.mark.parametrize("by_id", [True, False], ids=["by-customer", "all-running-read"])
def test_leaving_the_stage_exits_and_re_entering_later_enrols_again(world, default_sops,
                                                                   monkeypatch, by_id):
    """(both ways of finding the enrolments to end: by the entering customers' ids, as for the
    touch handler's few; or every running one of the model read, as for a full run's many)"""
    monkeypatch.setattr(services, "EXIT_BY_ID", 5_000 if by_id else 0)
    customer = world.add("wx-again", joined_at=JOINED)
    world.evaluate(NOW, [customer])
    order = world.order(customer, NOW + timedelta(hours=1))

    world.evaluate(NOW + timedelta(hours=2), [customer])          # a paid order: growth

    assert world.stage(customer, "value") == "growth"
    first = Enrollment.objects.get(customer=customer, sop__stage__key="intro")
    assert (first.status, first.exit_reason) == ("exited", "left_stage")
    assert first.ended_at is not None
    intro_first = Message.objects.filter(enrollment=first)
    assert sorted(intro_first.values_list("status", "skip_reason")) == [
        ("skipped", "left_stage")] * 3

    world.order(customer, NOW + timedelta(hours=3), status="refunded", external_id=order)
    back = NOW + timedelta(hours=4)
    world.evaluate(back, [customer])                                 # refunded: intro again

    assert world.stage(customer, "value") == "intro"
    value = [e for e in _enrolments(customer) if e[0] == "value"]
    assert value == [("value", "intro", NOW, "exited", "left_stage"),
                     ("value", "growth", NOW + timedelta(hours=2), "exited", "left_stage"),
                     ("value", "intro", back, "active", "")]
    again = Message.objects.filter(enrollment__entered_at=back, enrollment__sop__stage__key="intro")
    assert sorted((m.sop_step.order, m.status, m.due_at) for m in again) == [
        (1, "queued", back + timedelta(minutes=5)),
        (2, "queued", local(2026, 3, 3, 10, 0)),
        (3, "queued", local(2026, 3, 5, 20, 0))]


@pytest.mark.both_dbs
def test_a_customer_who_moved_without_the_hook_is_skipped_at_send_time(world, default_sops):
    """The stage is checked again when a message is due (e.g. a hook-less move or a race)."""
    customer = world.add("wx-moved", joined_at=JOINED)
    world.evaluate(NOW, [customer])
    place(customer, "value", "growth")

    services.messages_dispatch(now=NOW + timedelta(minutes=11))

    welcome = Message.objects.get(customer=customer, sop_step__sop__stage__key="intro",
                                  sop_step__order=1)
    assert (welcome.status, welcome.skip_reason) == ("skipped", "left_stage")
    assert _enrolments(customer)[1] == ("value", "intro", NOW, "exited", "left_stage")
    assert set(Message.objects.filter(enrollment__sop__stage__key="intro")
               .values_list("status", "skip_reason")) == {("skipped", "left_stage")}
    # The journey SOP is untouched: its first message went out.
    interest = Message.objects.get(customer=customer, sop_step__sop__stage__key="interest",
                                   sop_step__order=1)
    assert interest.status == "sent"


# --- Exits ----------------------------------------------------------------------------------

@pytest.mark.both_dbs
def test_opting_out_stops_the_sop(world, default_sops):
    customer = world.add("wx-optout", joined_at=JOINED)
    world.evaluate(NOW, [customer])
    world.event(customer, "opted_out", NOW + timedelta(minutes=1))

    result = services.messages_dispatch(now=NOW + timedelta(minutes=11))

    assert result.sent == 0
    assert result.skipped == {"opted_out": 2}
    assert [(p[2], p[4], p[5]) for p in _plan(customer)] == [
        (1, "skipped", "opted_out"), (1, "skipped", "opted_out"),
        (2, "skipped", "opted_out"), (2, "skipped", "opted_out"),
        (3, "skipped", "opted_out")]
    assert {(e[3], e[4]) for e in _enrolments(customer)} == {("exited", "opted_out")}


@pytest.mark.both_dbs
def test_deleting_us_stops_the_sop(world, default_sops):
    customer = world.add("wx-gone", joined_at=JOINED)
    world.evaluate(NOW, [customer])
    world.event(customer, "friend_deleted", NOW + timedelta(minutes=2))

    result = services.messages_dispatch(now=NOW + timedelta(minutes=11))

    assert result.sent == 0
    assert result.skipped == {"deleted_us": 2}
    assert {(p[4], p[5]) for p in _plan(customer)} == {("skipped", "deleted_us")}
    assert {(e[3], e[4]) for e in _enrolments(customer)} == {("exited", "deleted_us")}


@pytest.mark.both_dbs
def test_reaching_the_goal_ends_the_sop_early(world, make_sop):
    sop = make_sop("aipl", "awareness", goal={"field": "orders_count", "op": "gte", "value": 1},
                   steps=[{"delay_minutes": 0}, {"delay_minutes": 60}, {"day": 2,
                                                                        "at_time": "10:00"}])
    customer = world.add("wx-goal", joined_at=JOINED)
    world.evaluate(NOW, [customer], keys=["aipl"])

    first = services.messages_dispatch(now=NOW + timedelta(minutes=1))
    assert first.sent == 1
    world.order(customer, NOW + timedelta(minutes=30))
    later = services.messages_dispatch(now=NOW + timedelta(hours=2))

    assert later.sent == 0
    assert later.skipped == {"goal_reached": 1}
    # The step of day 2 is not due yet, and is skipped already: the SOP has ended.
    assert list(Message.objects.filter(sop_step__sop=sop).order_by("due_at")
                .values_list("status", "skip_reason")) == [
        ("sent", ""), ("skipped", "goal_reached"), ("skipped", "goal_reached")]
    enrolment = Enrollment.objects.get(sop=sop, customer=customer)
    assert (enrolment.status, enrolment.exit_reason) == ("goal", "goal")
    assert enrolment.ended_at == NOW + timedelta(hours=2)
    assert services.messages_dispatch(now=NOW + timedelta(days=3)).claimed == 0


# --- Who is enrolled ------------------------------------------------------------------------

def _enrol_bulk(make_sop, bulk_customers, percent, prefix):
    sop = make_sop("aipl", "awareness", holdout_percent=percent, name=f"holdout {prefix}")
    ids = [c.pk for c in bulk_customers(200, prefix)]
    services.sops_on_stage_entered(StageEntry(model="aipl", stage="awareness", at=NOW,
                                              source="rule", customer_ids=ids))
    return sop, ids


@pytest.mark.both_dbs
def test_a_holdout_keeps_about_half_out_and_sends_them_nothing(make_sop, bulk_customers):
    sop, ids = _enrol_bulk(make_sop, bulk_customers, 50, "hold")

    held = set(Enrollment.objects.filter(sop=sop, status="holdout")
               .values_list("customer_id", flat=True))
    active = set(Enrollment.objects.filter(sop=sop, status="active")
                 .values_list("customer_id", flat=True))
    assert held | active == set(ids) and not held & active
    assert 70 <= len(held) <= 130
    assert set(Message.objects.filter(sop_step__sop=sop)
               .values_list("customer_id", flat=True)) == active
    assert Message.objects.filter(sop_step__sop=sop).count() == len(active)

    # Deterministic: the same entry puts the same customers in the control group.
    Message.objects.filter(sop_step__sop=sop).delete()
    Enrollment.objects.filter(sop=sop).delete()
    services.sops_on_stage_entered(StageEntry(model="aipl", stage="awareness", at=NOW,
                                              source="rule", customer_ids=ids))
    assert set(Enrollment.objects.filter(sop=sop, status="holdout")
               .values_list("customer_id", flat=True)) == held


@pytest.mark.both_dbs
def test_no_holdout_enrols_everyone(make_sop, bulk_customers):
    sop, ids = _enrol_bulk(make_sop, bulk_customers, 0, "all")
    assert Enrollment.objects.filter(sop=sop, status="active").count() == 200
    assert Message.objects.filter(sop_step__sop=sop).count() == 200


@pytest.mark.both_dbs
def test_the_first_evaluation_greets_only_customers_who_just_joined(world, default_sops):
    old = [world.add(f"wx-old-{i}", joined_at=NOW - timedelta(days=days))
           for i, days in enumerate([2, 45, 400])]
    new = world.add("wx-new", joined_at=NOW - timedelta(hours=1))

    world.evaluate(NOW)

    assert [world.stage(c, "value") for c in old] == ["intro", "dormant", "churn"]
    assert world.stage(new, "value") == "intro"
    assert not Enrollment.objects.filter(customer__in=old).exists()
    assert not Message.objects.filter(customer__in=old).exists()
    # An existing customer placed in dormant by a first evaluation is no churn warning either.
    assert not OperatorTask.objects.exists()
    assert [(e[0], e[1]) for e in _enrolments(new)] == [("journey", "interest"),
                                                         ("value", "intro")]
    assert Message.objects.filter(customer=new).count() == 5


@pytest.mark.both_dbs
def test_a_move_after_the_first_placement_enrols_existing_customers_too(world, default_sops):
    """The 24-hour rule is for first placements only: an old customer who moves later (here
    from intro to growth after an order) is reached by the new stage's SOP."""
    veteran = world.add("wx-veteran", joined_at=NOW - timedelta(days=10))
    world.evaluate(NOW)
    assert not Enrollment.objects.filter(customer=veteran).exists()

    world.order(veteran, NOW + timedelta(hours=1))
    world.evaluate(NOW + timedelta(hours=2), [veteran])

    assert [(e[0], e[1], e[3]) for e in _enrolments(veteran)] == [
        ("journey", "purchase", "active"), ("value", "growth", "active")]


@pytest.mark.both_dbs
def test_entering_dormant_makes_a_churn_warning_for_the_owner(world, default_sops, owner):
    customer = world.add("wx-quiet", joined_at=JOINED, name="Quiet Lin")
    world.evaluate(NOW, [customer])
    later = NOW + timedelta(days=31)

    world.evaluate(later, [customer])

    assert world.stage(customer, "value") == "dormant"
    task = OperatorTask.objects.get(kind="churn_warning")
    assert (task.assignee, task.customer, task.status, task.due_at) == (owner, customer,
                                                                         "open", later)
    assert task.title == "Quiet Lin is going quiet (休眠期): reach out one to one"
    # And the dormant SOP starts: a care message the day after at 19:00.
    care = Message.objects.get(customer=customer, sop_step__sop__stage__key="dormant",
                               sop_step__order=1)
    assert care.due_at == local(2026, 4, 3, 19, 0)
    # The same entry heard again makes no second to-do.
    services.churn_warnings(StageEntry(model="value", stage="dormant", at=later, source="rule",
                                       customer_ids=[customer.pk]), [customer.pk])
    assert OperatorTask.objects.count() == 1


@pytest.mark.both_dbs
def test_a_customer_deleting_us_makes_a_to_do_for_the_owner(world, owner):
    customer = world.add("wx-gone", joined_at=JOINED, name="Gone Lin")
    world.event(customer, "friend_deleted", NOW)

    task = OperatorTask.objects.get(kind="churn_warning")
    assert (task.assignee, task.customer, task.status, task.due_at) == (owner, customer,
                                                                         "open", NOW)
    assert task.title == "Gone Lin deleted you: find out why"
    # The same event again, or an older deletion arriving late, makes no second to-do.
    world.event(customer, "friend_deleted", NOW - timedelta(days=2))
    assert OperatorTask.objects.count() == 1
    # Adding us back and deleting us again is a new deletion.
    world.event(customer, "friend_added", NOW + timedelta(days=1))
    world.event(customer, "friend_deleted", NOW + timedelta(days=3))
    assert OperatorTask.objects.filter(customer=customer).count() == 2
