"""Evaluation of the built-in stage models (DESIGN §2, issue 4): every boundary, precedence,
monotonic journeys, win-backs, deleting and re-adding, idempotent re-runs, the transition hook
and two evaluations at once.

Customers are created through crm's ingest services at times relative to a fixed `NOW`, and
each test asserts where customers end up and which transitions were recorded."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import Count
from django.test.utils import CaptureQueriesContext

from lifecycle import services
from lifecycle.models import CustomerStage, StageModel, StageTransition, TransitionSource
from tests.lifecycle.conftest import NOW, World, ago
from tests.threads import run_at_once

pytestmark = pytest.mark.django_db

LIFECYCLE_TABLES = (CustomerStage._meta.db_table, StageTransition._meta.db_table)


# --- Value lifecycle: silence ---------------------------------------------------------------

@pytest.mark.both_dbs
def test_dormant_and_churn_boundaries_on_last_activity(world):
    """Dormant at ≥ 30 days of silence, churn at ≥ 90 (the day itself included)."""
    customers = {}
    for name, days, seconds in [("29d", 29, 0), ("30d-1s", 30, -1), ("30d", 30, 0),
                                ("31d", 31, 0), ("89d", 89, 0), ("90d", 90, 0),
                                ("91d", 91, 0)]:
        customers[name] = world.add(f"act-{name}", joined_at=ago(300))
        world.event(customers[name], "message_in", ago(days, seconds=seconds))

    world.evaluate("value", NOW)

    assert world.stages_of(customers, "value") == {
        "29d": "intro", "30d-1s": "intro", "30d": "dormant", "31d": "dormant",
        "89d": "dormant", "90d": "churn", "91d": "churn"}


@pytest.mark.both_dbs
def test_without_any_activity_the_joining_date_counts_as_last_activity(world):
    customers = {name: world.add(f"quiet-{name}", joined_at=ago(days))
                 for name, days in [("29d", 29), ("30d", 30), ("31d", 31), ("89d", 89),
                                    ("90d", 90)]}
    # Our own messages are not the customer's activity.
    customers["out-only"] = world.add("quiet-out", joined_at=ago(40))
    world.events(customers["out-only"], "message_out", [ago(3), ago(1)])

    world.evaluate("value", NOW)

    assert all(c.last_active_at is None for c in customers.values())
    assert world.stages_of(customers, "value") == {
        "29d": "intro", "30d": "dormant", "31d": "dormant", "89d": "dormant", "90d": "churn",
        "out-only": "dormant"}


# --- Orders and joining ---------------------------------------------------------------------

@pytest.mark.both_dbs
def test_an_order_counts_only_from_the_moment_of_joining(world):
    joined = ago(10)
    before = world.add("buy-before", joined_at=joined)
    world.order(before, joined - timedelta(seconds=1))
    exactly = world.add("buy-at", joined_at=joined)
    world.order(exactly, joined)
    after = world.add("buy-after", joined_at=joined)
    world.order(after, joined + timedelta(seconds=1))
    customers = {"before": before, "at": exactly, "after": after}

    for key in ("journey", "value", "aipl"):
        world.evaluate(key, NOW)

    assert world.stages_of(customers, "journey") == {
        "before": "interest", "at": "purchase", "after": "purchase"}
    assert world.stages_of(customers, "value") == {
        "before": "intro", "at": "growth", "after": "growth"}
    # AIPL's purchase stage counts lifetime orders.
    assert world.stages_of(customers, "aipl") == {
        "before": "purchase", "at": "purchase", "after": "purchase"}


@pytest.mark.both_dbs
def test_a_refund_takes_value_back_but_never_the_monotonic_journey(world):
    customer = world.add("refunder", joined_at=ago(10))
    order = world.order(customer, ago(5))
    for key in ("journey", "value", "aipl"):
        world.evaluate(key, NOW)
    assert (world.stage(customer, "journey"), world.stage(customer, "value"),
            world.stage(customer, "aipl")) == ("purchase", "growth", "purchase")

    world.refund(customer, order, ago(1))
    later = NOW + timedelta(hours=1)
    results = {key: world.evaluate(key, later) for key in ("journey", "value", "aipl")}

    assert world.stage(customer, "journey") == "purchase"
    assert results["journey"].changed == 0
    assert world.moves(customer, "journey") == [("", "purchase")]
    assert world.stage(customer, "value") == "intro"
    assert world.moves(customer, "value") == [("", "growth"), ("growth", "intro")]
    back = world.transitions(customer, "value")[-1]
    assert (back.backward, back.win_back, back.source, back.at) == (True, False, "rule", later)
    assert world.stage(customer, "aipl") == "awareness"


@pytest.mark.both_dbs
def test_mature_needs_three_paid_orders_since_joining_within_180_days(world):
    def buyer(name, joined_days, order_days, refund_first=False):
        customer = world.add(f"m-{name}", joined_at=ago(joined_days))
        orders = [world.order(customer, ago(d)) for d in order_days]
        if refund_first:
            world.refund(customer, orders[0], ago(1))
        return customer

    customers = {
        "3 in window": buyer("3", 200, [179, 10, 5]),
        "3, one at 180d": buyer("180", 200, [180, 10, 5]),
        "one at 181d": buyer("181", 200, [181, 10, 5]),
        "2": buyer("2", 200, [10, 5]),
        "one before joining": buyer("pre", 20, [25, 10, 5]),
        "one refunded": buyer("ref", 200, [20, 10, 5], refund_first=True),
    }

    world.evaluate("value", NOW)

    assert world.stages_of(customers, "value") == {
        "3 in window": "mature", "3, one at 180d": "mature", "one at 181d": "growth",
        "2": "growth", "one before joining": "growth", "one refunded": "growth"}


@pytest.mark.both_dbs
def test_aipl_loyalty_at_lifetime_spend_of_2000_exactly(world):
    def spender(name, amounts, refund=None):
        customer = world.add(f"s-{name}", joined_at=ago(60))
        ids = [world.order(customer, ago(10 + n), amount) for n, amount in enumerate(amounts)]
        if refund is not None:
            world.refund(customer, ids[refund], ago(1))
        return customer

    customers = {
        "1999.99": spender("1999", ["1000.00", "999.99"]),
        "2000.00": spender("2000", ["1000.00", "1000.00"]),
        "2000 in one": spender("one", ["2000.00"]),
        "2100 - 600 refunded": spender("ref", ["1500.00", "600.00"], refund=1),
    }
    in_group = world.add("s-group", joined_at=ago(60))
    world.event(in_group, "group_joined", ago(5), group="wr-vip")
    left_group = world.add("s-left", joined_at=ago(60))
    world.event(left_group, "group_joined", ago(5), group="wr-vip")
    world.event(left_group, "group_left", ago(2), group="wr-vip")
    customers.update({"in a group": in_group, "left the group": left_group,
                      "nothing": world.add("s-none", joined_at=ago(60))})

    world.evaluate("aipl", NOW)

    assert world.stages_of(customers, "aipl") == {
        "1999.99": "purchase", "2000.00": "loyalty", "2000 in one": "loyalty",
        "2100 - 600 refunded": "purchase", "in a group": "interest",
        "left the group": "awareness", "nothing": "awareness"}


# --- Decision journey -----------------------------------------------------------------------

@pytest.mark.both_dbs
def test_journey_trust_by_a_group_or_three_inbound_interactions_since_joining(world):
    joined = ago(30)
    customers = {name: world.add(f"j-{name}", joined_at=joined) for name in (
        "msg+click+survey", "moments+coupon+msg", "2 in + 5 out", "1 before + 2 after",
        "group", "group left", "referral only", "nothing")}
    c = customers
    world.event(c["msg+click+survey"], "message_in", ago(20))
    world.event(c["msg+click+survey"], "link_clicked", ago(10))
    world.event(c["msg+click+survey"], "survey_answered", ago(5))
    world.event(c["moments+coupon+msg"], "moments_interaction", ago(20))
    world.event(c["moments+coupon+msg"], "coupon_redeemed", ago(10))
    world.event(c["moments+coupon+msg"], "message_in", ago(5))
    world.events(c["2 in + 5 out"], "message_in", [ago(20), ago(10)])
    world.events(c["2 in + 5 out"], "message_out", [ago(d) for d in (19, 15, 9, 4, 1)])
    world.event(c["1 before + 2 after"], "message_in", joined - timedelta(seconds=1))
    world.events(c["1 before + 2 after"], "message_in", [joined, ago(3)])
    world.event(c["group"], "group_joined", ago(3), group="wr-fans")
    world.event(c["group left"], "group_joined", ago(9), group="wr-fans")
    world.event(c["group left"], "group_left", ago(8), group="wr-fans")
    world.event(c["referral only"], "referral", ago(3), referred="friend-1")

    world.evaluate("journey", NOW)

    assert world.stages_of(customers, "journey") == {
        "msg+click+survey": "trust", "moments+coupon+msg": "trust", "2 in + 5 out": "interest",
        "1 before + 2 after": "interest", "group": "trust", "group left": "trust",
        "referral only": "interest", "nothing": "interest"}


@pytest.mark.both_dbs
def test_journey_advocacy_is_a_purchase_and_a_referral_since_joining(world):
    joined = ago(30)
    advocate = world.add("adv-yes", joined_at=joined)
    world.order(advocate, ago(10))
    world.event(advocate, "referral", ago(5), referred="friend-a")
    early = world.add("adv-early-referral", joined_at=joined)
    world.order(early, ago(10))
    world.event(early, "referral", joined - timedelta(seconds=1), referred="friend-b")
    buyer = world.add("adv-buyer", joined_at=joined)
    world.order(buyer, ago(10))
    # Trust, purchase and advocacy at once: the highest wins.
    everything = world.add("adv-all", joined_at=joined)
    world.event(everything, "group_joined", ago(20), group="wr-fans")
    world.events(everything, "message_in", [ago(19), ago(18), ago(17)])
    world.order(everything, ago(10))
    world.event(everything, "referral", ago(5), referred="friend-c")
    customers = {"advocate": advocate, "early referral": early, "buyer": buyer,
                 "everything": everything}

    world.evaluate("journey", NOW)

    assert world.stages_of(customers, "journey") == {
        "advocate": "advocacy", "early referral": "purchase", "buyer": "purchase",
        "everything": "advocacy"}
    assert world.moves(everything, "journey") == [("", "advocacy")]


@pytest.mark.both_dbs
def test_the_journey_moves_forward_only(world):
    customer = world.add("fwd", joined_at=ago(30))
    world.events(customer, "message_in", [ago(20), ago(19), ago(18)])
    world.evaluate("journey", NOW)
    order = world.order(customer, ago(1))
    world.evaluate("journey", NOW + timedelta(hours=1))
    world.refund(customer, order, NOW + timedelta(hours=2))
    result = world.evaluate("journey", NOW + timedelta(hours=3))

    assert result.changed == 0
    assert world.stage(customer, "journey") == "purchase"
    assert world.moves(customer, "journey") == [("", "trust"), ("trust", "purchase")]
    assert not any(t.backward for t in world.transitions(customer, "journey"))


# --- Precedence -----------------------------------------------------------------------------

@pytest.mark.both_dbs
def test_value_precedence_churn_dormant_mature_growth_intro(world):
    def buyer(name, order_days, joined_days=200):
        customer = world.add(f"p-{name}", joined_at=ago(joined_days))
        for days in order_days:
            world.order(customer, ago(days))
        return customer

    deleted = buyer("deleted", [5, 4, 3])          # mature by orders, but deleted us
    world.event(deleted, "friend_deleted", ago(1))
    customers = {
        "deleted us, 3 recent orders": deleted,
        "silent 100d, 3 orders in 180d": buyer("silent", [120, 110, 100]),
        "silent 40d, 3 orders in 180d": buyer("dormant", [60, 50, 40]),
        "3 recent orders": buyer("mature", [5, 4, 3]),
        "1 recent order": buyer("growth", [5]),
        "new": buyer("intro", [], joined_days=5),
    }

    result = world.evaluate("value", NOW)

    assert world.stages_of(customers, "value") == {
        "deleted us, 3 recent orders": "churn", "silent 100d, 3 orders in 180d": "churn",
        "silent 40d, 3 orders in 180d": "dormant", "3 recent orders": "mature",
        "1 recent order": "growth", "new": "intro"}
    assert result.changed == 6
    assert result.moves == {("", "churn"): 2, ("", "dormant"): 1, ("", "mature"): 1,
                            ("", "growth"): 1, ("", "intro"): 1}


# --- Win-back (回流), deleting and re-adding ---------------------------------------------------

@pytest.mark.both_dbs
def test_a_dormant_customer_who_comes_back_is_a_win_back(world):
    customer = world.add("wb-dormant", joined_at=ago(100))
    world.order(customer, ago(40))
    world.evaluate("value", NOW)
    assert world.stage(customer, "value") == "dormant"

    world.event(customer, "message_in", NOW + timedelta(days=1))
    later = NOW + timedelta(days=1, hours=1)
    result = world.evaluate("value", later)

    assert world.stage(customer, "value") == "growth"
    assert result.moves == {("dormant", "growth"): 1}
    back = world.transitions(customer, "value")[-1]
    assert (back.from_key, back.to_key, back.win_back, back.source) == (
        "dormant", "growth", True, "rule")


@pytest.mark.both_dbs
def test_silence_then_more_silence_then_return(world):
    """dormant → churn is not a win-back; churned-by-silence → intro is one."""
    customer = world.add("wb-silent", joined_at=ago(200))
    world.event(customer, "message_in", ago(40))
    world.evaluate("value", NOW)
    world.evaluate("value", NOW + timedelta(days=50))
    world.event(customer, "link_clicked", NOW + timedelta(days=51))
    world.evaluate("value", NOW + timedelta(days=51, hours=1))

    moves = [(t.from_key, t.to_key, t.win_back) for t in world.transitions(customer, "value")]
    assert moves == [("", "dormant", False), ("dormant", "churn", False),
                     ("churn", "intro", True)]


@pytest.mark.both_dbs
def test_a_customer_who_deleted_us_stays_churned_until_re_added(world):
    customer = world.add("wb-deleted", joined_at=ago(60))
    world.order(customer, ago(20))
    world.event(customer, "friend_deleted", ago(3))
    world.evaluate("value", NOW)
    assert world.stage(customer, "value") == "churn"

    # Activity while they have deleted us does not bring them back.
    world.event(customer, "message_in", NOW + timedelta(days=1))
    world.order(customer, NOW + timedelta(days=1))
    result = world.evaluate("value", NOW + timedelta(days=1, hours=1))
    assert result.changed == 0
    assert world.stage(customer, "value") == "churn"

    world.event(customer, "friend_added", NOW + timedelta(days=2))
    customer.refresh_from_db()
    assert customer.status == "active"
    result = world.evaluate("value", NOW + timedelta(days=2, hours=1))

    assert world.stage(customer, "value") == "growth"
    assert result.moves == {("churn", "growth"): 1}
    assert [(t.from_key, t.to_key, t.win_back) for t in world.transitions(customer, "value")] \
        == [("", "churn", False), ("churn", "growth", True)]


# --- Re-runs write nothing ------------------------------------------------------------------

def _writes(captured) -> list[str]:
    """Statements that wrote to the stage tables, other than PostgreSQL's one CTE statement
    (which always runs: it computes the changes and writes only those)."""
    out = []
    for query in captured.captured_queries:
        sql = query["sql"].lstrip().upper()
        if sql.startswith("WITH "):
            continue
        if sql.startswith(("INSERT", "UPDATE", "DELETE")) and any(
                table.upper() in sql for table in LIFECYCLE_TABLES):
            out.append(query["sql"])
    return out


@pytest.mark.both_dbs
def test_a_run_with_no_changes_writes_no_rows(world):
    for n in range(6):
        customer = world.add(f"idle-{n}", joined_at=ago(20 * n))
        if n % 2:
            world.order(customer, ago(n))
        if n % 3 == 0:
            world.event(customer, "group_joined", ago(1), group="wr-idle")
    first = services.stage_models_evaluate(now=NOW)
    assert sum(r.changed for r in first) == 18              # 6 customers x 3 models
    rows = {m: CustomerStage.objects.filter(model__key=m).count()
            for m in ("journey", "value", "aipl")}
    snapshot = set(CustomerStage.objects.values_list(
        "customer_id", "model_id", "stage_id", "entered_at", "source"))
    transitions = StageTransition.objects.count()

    with CaptureQueriesContext(connection) as captured:
        second = services.stage_models_evaluate(now=NOW + timedelta(minutes=1))

    assert [(r.model, r.changed, dict(r.moves)) for r in second] == [
        ("journey", 0, {}), ("value", 0, {}), ("aipl", 0, {})]
    assert rows == {"journey": 6, "value": 6, "aipl": 6}
    assert StageTransition.objects.count() == transitions == 18
    assert set(CustomerStage.objects.values_list(
        "customer_id", "model_id", "stage_id", "entered_at", "source")) == snapshot
    assert _writes(captured) == []


@pytest.mark.postgres_only
def test_the_models_evaluated_together_read_the_events_once_and_agree_with_one_by_one(
        world, builtin_models):
    """The periodic run evaluates the three models together: one pass over the event counts
    (and one over the orders) serves every stage of every model, and each customer ends where
    evaluating the models one at a time puts them."""
    customers = {}
    for n in range(12):
        customer = customers[n] = world.add(f"together-{n}", joined_at=ago(5 + 17 * n))
        if n % 2:
            world.order(customer, ago(n), amount="2100.00" if n % 5 == 0 else "80.00")
        if n % 3 == 0:
            world.events(customer, "message_in", [ago(1), ago(2), ago(3)])
        if n % 4 == 0:
            world.event(customer, "group_joined", ago(1), group=f"wr-together-{n}")

    with CaptureQueriesContext(connection) as captured:
        together = services.stage_models_evaluate(now=NOW)
    # (the built-in models count events "since joining": the per-type counts, not the events)
    reading_events = [q["sql"] for q in captured.captured_queries
                      if '"crm_event"' in q["sql"] or '"crm_eventcount"' in q["sql"]]
    reading_orders = [q["sql"] for q in captured.captured_queries if '"crm_order"' in q["sql"]]
    assert len(reading_events) == 1 and len(reading_orders) == 1
    placed = {key: world.stages_of(customers, key) for key in ("journey", "value", "aipl")}

    CustomerStage.objects.all().delete()
    StageTransition.objects.all().delete()
    for key in ("journey", "value", "aipl"):
        world.evaluate(key, NOW)
    assert {key: world.stages_of(customers, key) for key in placed} == placed
    assert [r.changed for r in together] == [12, 12, 12]


@pytest.mark.postgres_only
def test_a_manual_move_of_a_customer_being_placed_wins_over_the_placement(world,
                                                                           builtin_models):
    """A first placement is a plain INSERT. If an operator places a customer by hand between
    the run's read and its write, the INSERT meets their row: the run redoes that chunk
    without touching the row someone else wrote, and records no move for it."""
    from lifecycle.models import Stage

    moved_by_hand = world.add("by-hand", joined_at=ago(3))
    others = [world.add(f"placed-{n}", joined_at=ago(3)) for n in range(3)]
    model = StageModel.objects.get(key="value")
    stages = services._stages(model)
    mature = Stage.objects.get(model=model, key="mature")
    # The run has read "no stage yet" for every one of them…
    sql, params = services._changes_sql(model, stages, now=NOW, thresholds=model.thresholds,
                                        customer_ids=[c.pk for c in [moved_by_hand, *others]],
                                        pk_range=None, features=None)
    # …and the operator's move commits before the run writes.
    services.customer_stage_move(customer=moved_by_hand, model=model, stage=mature,
                                 reason="VIP from the store", actor=world.actor)

    moved = services._apply(model, stages, sql, params, now=NOW, source=TransitionSource.RULE)

    assert sorted(c for c, _f, _t in moved) == sorted(c.pk for c in others)
    assert world.stage(moved_by_hand, "value") == "mature"
    assert {world.stage(c, "value") for c in others} == {"intro"}
    assert list(StageTransition.objects.filter(customer=moved_by_hand)
                .values_list("source", flat=True)) == [TransitionSource.MANUAL]


# --- The transition hook --------------------------------------------------------------------

@pytest.mark.both_dbs
def test_the_hook_hears_who_entered_which_stage(world, entered):
    buyers = [world.add(f"hook-buyer-{n}", joined_at=ago(10)) for n in range(2)]
    for buyer in buyers:
        world.order(buyer, ago(2))
    newcomer = world.add("hook-new", joined_at=ago(2))

    world.evaluate("value", NOW)
    entries = {(e.model, e.stage): e for e in entered}

    assert set(entries) == {("value", "growth"), ("value", "intro")}
    assert sorted(entries[("value", "growth")].customer_ids) == sorted(b.pk for b in buyers)
    assert entries[("value", "intro")].customer_ids == [newcomer.pk]
    assert {(e.at, e.source) for e in entered} == {(NOW, TransitionSource.RULE)}

    # Nobody enters anything on a re-run; a later move is heard on its own.
    entered.clear()
    world.evaluate("value", NOW + timedelta(minutes=1))
    assert entered == []
    world.order(newcomer, NOW + timedelta(minutes=2))
    world.evaluate("value", NOW + timedelta(minutes=3))
    assert [(e.model, e.stage, e.customer_ids) for e in entered] == [
        ("value", "growth", [newcomer.pk])]


@pytest.mark.both_dbs
def test_chunks_give_the_same_answer_as_one_pass(world, entered):
    customers = [world.add(f"chunk-{n}", joined_at=ago(6 * n + 2)) for n in range(7)]
    for customer in customers[::3]:
        world.order(customer, ago(1))
    result = world.evaluate("value", NOW, chunk_size=2)

    assert result.changed == 7
    assert {c.external_id: world.stage(c, "value") for c in customers} == {
        "chunk-0": "growth", "chunk-1": "intro", "chunk-2": "intro", "chunk-3": "growth",
        "chunk-4": "intro", "chunk-5": "dormant", "chunk-6": "growth"}
    assert sorted(i for e in entered for i in e.customer_ids) == sorted(c.pk for c in customers)
    assert StageModel.objects.get(key="value").last_evaluated_at == NOW


# --- Two evaluations at once (PostgreSQL) ---------------------------------------------------

def _expected_value_stage(i: int) -> str:
    silent_days = 10 + i * 3
    if i % 4 == 0:
        return "growth"
    return "churn" if silent_days >= 90 else "dormant" if silent_days >= 30 else "intro"


def _concurrent_world(admin_user, n=40):
    world = World(admin_user)
    customers = []
    for i in range(n):
        customer = world.add(f"race-{i:02d}", joined_at=ago(10 + i * 3))
        if i % 4 == 0:
            world.order(customer, ago(1))
        customers.append(customer)
    return world, customers


# Concurrent writers need PostgreSQL's row locks; scripts/test leaves these out when it falls
# back to SQLite, and the SQLite pass runs only tests marked both_dbs.
postgres_only = pytest.mark.postgres_only


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_two_full_evaluations_at_once_record_each_move_once(admin_user, builtin_models):
    _world, customers = _concurrent_world(admin_user)
    model = StageModel.objects.get(key="value")

    results = run_at_once(*[lambda: services.stage_model_evaluate(model=model, now=NOW)] * 2)

    assert sum(r.changed for r in results if r is not None) == len(customers)
    per_customer = dict(StageTransition.objects.filter(model=model, from_key="")
                        .values_list("customer_id").annotate(n=Count("id")))
    assert per_customer == {c.pk: 1 for c in customers}
    assert StageTransition.objects.filter(model=model).count() == len(customers)
    assert CustomerStage.objects.filter(model=model).count() == len(customers)


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_full_run_spread_over_two_sessions_places_everyone_as_one_session_does(
        admin_user, builtin_models, settings, monkeypatch):
    """Above one chunk, a full run outside a transaction spreads its chunks over
    LIFECYCLE_EVALUATION_SESSIONS database sessions, each over its own range of customers: the
    stages, the moves reported and the history are those of a run in one session."""
    world, customers = _concurrent_world(admin_user)
    by_pk = {c.pk: c for c in customers}
    threads = set()
    span = services._evaluate_span_in_thread

    def spy(*args, **kwargs):
        threads.add(threading.get_ident())
        return span(*args, **kwargs)

    monkeypatch.setattr(services, "_evaluate_span_in_thread", spy)
    settings.LIFECYCLE_EVALUATION_SESSIONS = 2

    spread = services.stage_models_evaluate(now=NOW, chunk_size=7)

    assert len(threads) == 2
    placed = {key: world.stages_of(by_pk, key) for key in ("journey", "value", "aipl")}
    assert placed["value"] == {c.pk: _expected_value_stage(i) for i, c in enumerate(customers)}
    history = sorted(StageTransition.objects.values_list("customer_id", "model__key", "to_key"))
    assert len(history) == 3 * len(customers) == len(set(history))
    assert StageModel.objects.filter(last_evaluated_at=NOW).count() == 3

    CustomerStage.objects.all().delete()
    StageTransition.objects.all().delete()
    settings.LIFECYCLE_EVALUATION_SESSIONS = 1
    threads.clear()
    alone = services.stage_models_evaluate(now=NOW, chunk_size=7)

    assert not threads
    assert {key: world.stages_of(by_pk, key) for key in placed} == placed
    assert sorted(StageTransition.objects.values_list(
        "customer_id", "model__key", "to_key")) == history
    assert [(r.model, r.changed, r.moves) for r in spread] == [
        (r.model, r.changed, r.moves) for r in alone]
    # Nothing to change: both ways write nothing.
    settings.LIFECYCLE_EVALUATION_SESSIONS = 2
    assert [r.changed for r in services.stage_models_evaluate(now=NOW, chunk_size=7)] == [0] * 3


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_two_evaluations_of_overlapping_customers_at_once(admin_user, builtin_models):
    """The incremental path evaluates the customers an event touched while another evaluation
    may be running: every customer of both sets ends where the rules say, each move recorded
    once."""
    world, customers = _concurrent_world(admin_user)
    ids = [c.pk for c in customers]
    first, second = ids[:30], ids[10:]
    model = StageModel.objects.get(key="value")

    run_at_once(
        lambda: services.stage_model_evaluate(model=model, customer_ids=first, now=NOW),
        lambda: services.stage_model_evaluate(model=model, customer_ids=second, now=NOW))

    per_customer = dict(StageTransition.objects.filter(model=model, from_key="")
                        .values_list("customer_id").annotate(n=Count("id")))
    assert per_customer == {c.pk: 1 for c in customers}
    expected = {c.pk: _expected_value_stage(i) for i, c in enumerate(customers)}
    assert {c.pk: world.stage(c, "value") for c in customers} == expected




@pytest.mark.both_dbs
def test_the_nightly_sweep_removes_the_stages_of_a_customer_deleted_mid_evaluation(world):
    """Stage rows carry no database foreign key: a customer deleted while an evaluation wrote
    their row leaves it behind, and the nightly sweep takes it (and their history) away."""
    kept = world.add("kept", joined_at=ago(10))
    gone = world.add("gone", joined_at=ago(10))
    world.evaluate("value", NOW)
    assert CustomerStage.objects.filter(customer=gone).exists()
    with connection.cursor() as cursor:   # what the evaluation's late write amounts to
        cursor.execute("DELETE FROM crm_event WHERE customer_id = %s", [gone.pk])
        cursor.execute("DELETE FROM crm_customer WHERE id = %s", [gone.pk])

    assert services.orphans_sweep() == 2   # the stage row and its transition

    assert not CustomerStage.objects.filter(customer_id=gone.pk).exists()
    assert not StageTransition.objects.filter(customer_id=gone.pk).exists()
    assert CustomerStage.objects.filter(customer=kept).count() == 1
    assert services.orphans_sweep() == 0


def test_the_sweep_runs_nightly_from_beat():
    from config.beat import BEAT_SCHEDULE

    assert BEAT_SCHEDULE["lifecycle-sweep-orphans"]["task"] == "lifecycle.tasks.sweep_orphans"
