"""Tag rules: runs on demand, `add` and `sync` modes, the built-in value layers with their
priorities and boundaries, idempotent re-runs that write nothing, the incremental path from
ingest, the management command, and rules racing operators who tag by hand (PostgreSQL)."""

import re
import threading
import time
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from crm import hooks
from crm.models import Customer, CustomerTouch
from crm.services import event_counts_refresh
from tagging import services
from tagging.models import CustomerTag, Tag, TagChange, TagGroup, TagRule, TagRuleRun, TagSource
from tagging.tasks import tag_touched_customers
from tests.factories import CustomerFactory, UserFactory
from tests.tagging.conftest import held, history

LAYERS = {"high_value": "高价值客户", "at_risk": "潜在流失客户", "new": "新客户",
          "active": "活跃客户"}
SHANGHAI = {"field": "city", "op": "eq", "value": "上海"}


def days_ago(days: float):
    return timezone.now() - timedelta(days=days)


def run(client, rule):
    response = client.post(f"/api/v1/tag-rules/{rule.pk}/run/")
    assert response.status_code == 200, response.json()
    return response.json()


@pytest.fixture
def follow_up(db):
    group = TagGroup.objects.create(name="运营")
    return {"group": group, "跟进": Tag.objects.create(group=group, name="跟进"),
            "复购": Tag.objects.create(group=group, name="复购"),
            "热聊": Tag.objects.create(group=group, name="热聊")}


def layer_of(customer) -> set[str]:
    return set(CustomerTag.objects.filter(customer=customer, tag__group__key="value_layer")
               .values_list("tag__name", flat=True))


# --- Running a rule -------------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.both_dbs
def test_create_a_rule_and_run_it_on_demand(admin_api, operator, follow_up):
    CustomerFactory(external_id="sh-1", city="上海", owner=operator)
    CustomerFactory(external_id="sh-2", city="上海", owner=operator)
    CustomerFactory(external_id="bj", city="北京", owner=operator)
    created = admin_api.post("/api/v1/tag-rules/", {
        "name": "上海跟进", "tag": "跟进", "condition": SHANGHAI, "mode": "add"}, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["tag"] == follow_up["跟进"].pk
    rule = TagRule.objects.get(pk=created.json()["id"])

    result = run(admin_api, rule)

    assert set(result) == {"matched", "added", "removed", "duration_ms"}
    assert (result["matched"], result["added"], result["removed"]) == (2, 2, 0)
    assert isinstance(result["duration_ms"], int) and result["duration_ms"] >= 0
    tagged = CustomerTag.objects.filter(tag=follow_up["跟进"])
    assert set(tagged.values_list("customer__external_id", flat=True)) == {"sh-1", "sh-2"}
    assert set(tagged.values_list("source", "rule")) == {("rule", rule.pk)}
    runs = admin_api.get(f"/api/v1/tag-rules/{rule.pk}/runs/").json()["results"]
    assert [(r["trigger"], r["matched"], r["added"]) for r in runs] == [("manual", 2, 2)]
    rule.refresh_from_db()
    assert rule.last_run_at is not None
    customer = Customer.objects.get(external_id="sh-1")
    timeline = admin_api.get(f"/api/v1/customers/{customer.pk}/timeline/").json()["results"]
    entry = next(e for e in timeline if e["kind"] == "tag")
    assert (entry["type"], entry["data"]["source"], entry["data"]["rule"]) == (
        "added", "rule", "上海跟进")


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_only_admins_run_or_write_rules(op_api, follow_up):
    rule = TagRule.objects.create(name="r", tag=follow_up["跟进"], condition=SHANGHAI)
    assert op_api.post(f"/api/v1/tag-rules/{rule.pk}/run/").status_code == 403
    assert op_api.post("/api/v1/tag-rules/", {"name": "x", "tag": "跟进",
                                              "condition": SHANGHAI}, format="json"
                       ).status_code == 403
    assert op_api.get("/api/v1/tag-rules/").status_code == 200
    assert not CustomerTag.objects.exists()


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_add_mode_keeps_the_tag_when_the_customer_stops_matching(admin_api, follow_up):
    customer = CustomerFactory(city="上海")
    rule = TagRule.objects.create(name="r", tag=follow_up["跟进"], condition=SHANGHAI,
                                  mode="add")
    run(admin_api, rule)
    Customer.objects.filter(pk=customer.pk).update(city="北京")

    result = run(admin_api, rule)

    assert (result["matched"], result["added"], result["removed"]) == (0, 0, 0)
    assert held(customer) == {"跟进"}


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_sync_mode_removes_whom_it_tagged_but_never_manual_or_other_rules_tags(
        admin_api, operator, follow_up):
    tag = follow_up["跟进"]
    leaves = CustomerFactory(external_id="leaves", city="上海", owner=operator)
    stays = CustomerFactory(external_id="stays", city="上海", owner=operator)
    by_hand = CustomerFactory(external_id="by-hand", city="北京", owner=operator)
    other_rule_customer = CustomerFactory(external_id="vip", city="北京", owner=operator)
    sync = TagRule.objects.create(name="上海", tag=tag, condition=SHANGHAI, mode="sync")
    other = TagRule.objects.create(name="VIP", tag=tag, mode="add", condition={
        "field": "external_id", "op": "eq", "value": "vip"})
    services.customers_tags_change(customers=Customer.objects.filter(pk=by_hand.pk), add=[tag],
                                   remove=[], actor=operator)
    assert run(admin_api, sync)["added"] == 2
    assert run(admin_api, other)["added"] == 1
    Customer.objects.filter(pk=leaves.pk).update(city="北京")

    result = run(admin_api, sync)

    assert (result["matched"], result["added"], result["removed"]) == (1, 0, 1)
    assert [held(c) for c in (leaves, stays, by_hand, other_rule_customer)] == [
        set(), {"跟进"}, {"跟进"}, {"跟进"}]
    assert history(leaves) == [("added", "跟进"), ("removed", "跟进")]
    removal = TagChange.objects.get(customer=leaves, action="removed")
    assert (removal.source, removal.rule) == ("rule", sync)


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_a_manual_add_of_a_rule_tag_makes_it_manual_and_sync_keeps_it(
        admin_api, op_api, operator, follow_up):
    customer = CustomerFactory(city="上海", owner=operator)
    sync = TagRule.objects.create(name="上海", tag=follow_up["跟进"], condition=SHANGHAI,
                                  mode="sync")
    run(admin_api, sync)
    response = op_api.post(f"/api/v1/customers/{customer.pk}/tags/", {"add": ["跟进"]},
                           format="json")
    assert [(t["name"], t["source"], t["rule"]) for t in response.json()["tags"]] == [
        ("跟进", "manual", None)]
    Customer.objects.filter(pk=customer.pk).update(city="北京")

    assert run(admin_api, sync)["removed"] == 0
    assert held(customer) == {"跟进"}


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_a_rule_whose_condition_became_invalid_does_not_run(admin_api, follow_up):
    rule = TagRule.objects.create(name="r", tag=follow_up["跟进"],
                                  condition={"field": "tag", "op": "any", "value": ["gone"]})
    response = admin_api.post(f"/api/v1/tag-rules/{rule.pk}/run/")
    assert response.status_code == 400
    assert response.json()["message"] == "value: unknown tag 'gone'"


# --- Value layers ---------------------------------------------------------------------------

def _layer_customers():
    """Customers at the boundaries of the four built-in layers, and the layer each must get."""
    spec = {
        # external id: (joined days ago, last active days ago, total spent) -> layer
        "spend-2000": ((100, 25, "2000.00"), "高价值客户"),      # silent too: high value wins
        "spend-1999.99": ((100, 2, "1999.99"), "活跃客户"),
        "joined-13": ((13, None, "0"), "新客户"),
        "joined-15": ((15, None, "0"), None),
        "silent-22": ((100, 22, "0"), "潜在流失客户"),
        "silent-20": ((100, 20, "0"), "活跃客户"),
        "silent-35": ((100, 35, "300.00"), "潜在流失客户"),
        "new-and-active": ((3, 1, "0"), "新客户"),
        "new-and-rich": ((3, 1, "5000.00"), "高价值客户"),
        "never-active": ((100, None, "0"), None),
    }
    owner = UserFactory(username="layer-owner", roles=["operator"])
    customers = {}
    for ext, ((joined, active, spent), _layer) in spec.items():
        customers[ext] = CustomerFactory(
            external_id=ext, owner=owner, joined_at=days_ago(joined),
            last_active_at=days_ago(active) if active is not None else None,
            total_spent=Decimal(spent), orders_count=1 if spent != "0" else 0)
    return customers, {ext: layer for ext, (_args, layer) in spec.items()}


def _layers(customers) -> dict[str, str | None]:
    out = {}
    for ext, customer in customers.items():
        names = layer_of(customer)
        assert len(names) <= 1, (ext, names)
        out[ext] = next(iter(names), None)
    return out


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_the_value_layers_are_built_in():
    group = TagGroup.objects.get(key="value_layer")
    assert group.exclusive
    rules = {r.tag.key: r for r in TagRule.objects.filter(tag__group=group)}
    assert {k: (r.tag.name, r.mode, r.active) for k, r in rules.items()} == {
        key: (name, "sync", True) for key, name in LAYERS.items()}
    assert sorted(rules, key=lambda k: rules[k].priority) == ["high_value", "at_risk", "new",
                                                              "active"]


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_value_layers_give_each_customer_the_right_single_layer():
    customers, expected = _layer_customers()

    runs = {run.rule.tag.key: run for run in services.tag_rules_run_due(force=True)}

    assert _layers(customers) == expected
    assert {k: (r.matched, r.added, r.removed) for k, r in runs.items()} == {
        "high_value": (2, 2, 0), "at_risk": (2, 2, 0), "new": (2, 2, 0), "active": (2, 2, 0)}


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_layers_follow_the_customer_over_time():
    customers, _expected = _layer_customers()
    services.tag_rules_run_due(force=True)
    moving = customers["silent-20"]
    Customer.objects.filter(pk=moving.pk).update(last_active_at=days_ago(25))
    back = customers["silent-35"]
    Customer.objects.filter(pk=back.pk).update(last_active_at=days_ago(0.5))

    services.tag_rules_run_due(force=True)

    assert layer_of(moving) == {"潜在流失客户"}
    assert history(moving) == [("added", "活跃客户"), ("replaced", "活跃客户"),
                               ("added", "潜在流失客户")]
    assert layer_of(back) == {"活跃客户"}
    assert history(back) == [("added", "潜在流失客户"), ("removed", "潜在流失客户"),
                             ("added", "活跃客户")]


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_a_manual_layer_is_respected_by_the_rules(op_api, operator):
    rich = CustomerFactory(owner=operator, joined_at=days_ago(100), last_active_at=days_ago(1),
                           total_spent=Decimal("9000"))
    was_new = CustomerFactory(owner=operator, joined_at=days_ago(2))
    services.tag_rules_run_due(force=True)
    assert (layer_of(rich), layer_of(was_new)) == ({"高价值客户"}, {"新客户"})

    op_api.post(f"/api/v1/customers/{rich.pk}/tags/", {"add": ["活跃客户"]}, format="json")
    op_api.post(f"/api/v1/customers/{was_new.pk}/tags/", {"add": ["潜在流失客户"]},
                format="json")
    runs = services.tag_rules_run_due(force=True)

    assert (layer_of(rich), layer_of(was_new)) == ({"活跃客户"}, {"潜在流失客户"})
    assert sum(r.added + r.removed for r in runs) == 0
    assert CustomerTag.objects.get(customer=rich).source == TagSource.MANUAL


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_editing_a_layer_threshold_moves_customers(admin_api):
    customers, _expected = _layer_customers()
    services.tag_rules_run_due(force=True)
    high = TagRule.objects.get(tag__key="high_value")
    response = admin_api.patch(f"/api/v1/tag-rules/{high.pk}/", {
        "condition": {"field": "total_spent", "op": "gte", "value": 1999.99}}, format="json")
    assert response.status_code == 200, response.json()

    services.tag_rules_run_due(force=True)

    assert layer_of(customers["spend-1999.99"]) == {"高价值客户"}
    assert layer_of(customers["silent-35"]) == {"潜在流失客户"}


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_a_lower_priority_rule_tags_customers_the_higher_rule_knows_nothing_about(admin_api):
    """Priority means "not matched by a higher rule": a customer lacking the attribute a higher
    rule tests is not matched by it, and gets the lower rule's tag."""
    group = TagGroup.objects.create(name="客群", exclusive=True)
    vip = Tag.objects.create(group=group, name="贵宾")
    local = Tag.objects.create(group=group, name="本地")
    TagRule.objects.create(name="贵宾", tag=vip, priority=1, mode="sync",
                           condition={"field": "attributes.vip", "op": "eq", "value": "yes"})
    local_rule = TagRule.objects.create(name="本地", tag=local, priority=2, mode="sync",
                                        condition=SHANGHAI)
    flagged = CustomerFactory(city="上海", attributes={"vip": "yes"})
    plain = CustomerFactory(city="上海", attributes={"vip": "no"})
    no_key = CustomerFactory(city="上海", attributes={})

    services.tag_rules_run_due(force=True)

    def in_group(customer):
        return held(customer) & {"贵宾", "本地"}

    assert (in_group(flagged), in_group(plain), in_group(no_key)) == ({"贵宾"}, {"本地"},
                                                                      {"本地"})
    assert TagRuleRun.objects.filter(rule=local_rule).latest("id").matched == 2


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_full_run_spread_over_two_sessions_tags_as_one_session_does(settings, monkeypatch):
    """A full run outside a transaction spreads the rules over TAG_RULE_SESSIONS database
    sessions; an exclusive group's rules, and a rule reading another's tag, stay in one session
    in their order — the tags, the history and the runs' figures are those of one session."""
    TagRule.objects.all().delete()      # (a transactional test: the built-in rules may be gone)
    tier = TagGroup.objects.create(name="客群", exclusive=True)
    ops = TagGroup.objects.create(name="运营")
    vip, local = Tag.objects.create(group=tier, name="贵宾"), Tag.objects.create(group=tier,
                                                                                name="本地")
    TagRule.objects.create(name="贵宾", tag=vip, priority=1, mode="sync",
                           condition={"field": "attributes.vip", "op": "eq", "value": "yes"})
    TagRule.objects.create(name="本地", tag=local, priority=2, mode="sync", condition=SHANGHAI)
    TagRule.objects.create(name="贵宾关怀", tag=Tag.objects.create(group=ops, name="贵宾关怀"),
                           mode="sync", condition={"all": [
                               SHANGHAI, {"field": "tag", "op": "any", "value": ["贵宾"]}]})
    TagRule.objects.create(name="北京", tag=Tag.objects.create(group=ops, name="北京"),
                           mode="add", condition={"field": "city", "op": "eq", "value": "北京"})
    for n, (city, vip_flag) in enumerate([("上海", "yes"), ("上海", "no"), ("北京", "yes"),
                                          ("北京", "no"), ("广州", "yes")]):
        CustomerFactory(external_id=f"c{n}", city=city, attributes={"vip": vip_flag})
    rules = list(TagRule.objects.filter(active=True).select_related("tag__group")
                 .order_by("priority", "pk"))
    lanes = [[rule.name for rule in lane] for lane in services._lanes(rules)]
    assert sorted(lanes, key=len) == [["北京"], [r.name for r in rules if r.name != "北京"]]
    threads = set()
    lane_run = services._run_lane_in_thread

    def spy(*args, **kwargs):
        threads.add(threading.get_ident())
        return lane_run(*args, **kwargs)

    monkeypatch.setattr(services, "_run_lane_in_thread", spy)

    def outcome(runs):
        return ({(c.external_id, frozenset(held(c))) for c in Customer.objects.all()},
                sorted(TagChange.objects.values_list("customer_id", "tag_name", "action")),
                [(r.rule.name, r.matched, r.added, r.removed) for r in runs])

    settings.TAG_RULE_SESSIONS = 2
    spread = outcome(services.tag_rules_run_due(force=True))
    assert len(threads) == 2
    assert spread[0] == {("c0", frozenset({"贵宾", "贵宾关怀"})), ("c1", frozenset({"本地"})),
                         ("c2", frozenset({"贵宾", "北京"})), ("c3", frozenset({"北京"})),
                         ("c4", frozenset({"贵宾"}))}

    CustomerTag.objects.all().delete()
    TagChange.objects.all().delete()
    settings.TAG_RULE_SESSIONS = 1
    threads.clear()
    alone = outcome(services.tag_rules_run_due(force=True))
    assert not threads
    assert alone == spread


# --- Idempotent re-run ----------------------------------------------------------------------

WRITE = re.compile(r'\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+"?tagging_(customertag|tagchange)\b',
                   re.IGNORECASE)


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_a_second_run_that_changes_nothing_writes_nothing(follow_up,
                                                         django_assert_max_num_queries):
    customers, _expected = _layer_customers()
    CustomerFactory(city="上海")
    Customer.objects.filter(pk=customers["silent-20"].pk).update(city="上海")
    TagRule.objects.create(name="上海", tag=follow_up["跟进"], condition=SHANGHAI, mode="sync")
    first = services.tag_rules_run_due(force=True)
    assert sum(r.added for r in first) == 11     # 9 layers, 2 in 上海
    rows = (CustomerTag.objects.count(), TagChange.objects.count())

    # ≈15 statements a rule on PostgreSQL: lock, load, work_mem, the matched-ids temporary table
    # (drop, create, key, analyze), the pre-checks; none of them writes a tag or history row.
    with CaptureQueriesContext(connection) as queries, django_assert_max_num_queries(80):
        second = services.tag_rules_run_due(force=True)

    assert [(r.added, r.removed) for r in second] == [(0, 0)] * 5
    assert (CustomerTag.objects.count(), TagChange.objects.count()) == rows
    writes = [q["sql"] for q in queries if WRITE.search(q["sql"])]
    assert writes == []


# --- The incremental path -------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.both_dbs
def test_ingested_orders_and_events_tag_the_customers_they_touch(op_api, operator, follow_up):
    TagRule.objects.create(name="复购", tag=follow_up["复购"], mode="sync",
                           condition={"field": "order", "op": "count_gte", "value": 2,
                                      "within_days": 30})
    TagRule.objects.create(name="热聊", tag=follow_up["热聊"], mode="sync",
                           condition={"field": "event", "type": "message_in", "op": "count_gte",
                                      "value": 3, "within_days": 7})
    buyer = CustomerFactory(external_id="buyer", owner=operator, joined_at=days_ago(200))
    talker = CustomerFactory(external_id="talker", owner=operator, joined_at=days_ago(200))
    bystander = CustomerFactory(external_id="bystander", owner=operator, joined_at=days_ago(200))
    tag_touched_customers()        # nothing queued yet
    now = timezone.now()

    orders = op_api.post("/api/v1/orders/", [
        {"customer": "buyer", "external_id": f"o-{n}", "source": "youzan", "amount": "1500.00",
         "placed_at": (now - timedelta(days=n + 1)).isoformat()} for n in range(2)],
        format="json")
    assert orders.json()["accepted"] == 2, orders.json()
    events = op_api.post("/api/v1/events/", [
        {"customer": "talker", "type": "message_in", "idempotency_key": f"talk-{n}",
         "occurred_at": (now - timedelta(hours=n + 1)).isoformat()} for n in range(3)],
        format="json")
    assert events.json()["accepted"] == 3, events.json()
    assert held(buyer) == held(talker) == set()      # ingest alone does not tag

    processed = tag_touched_customers()

    assert processed == 2
    assert held(buyer) == {"复购", "高价值客户"}
    assert held(talker) == {"热聊", "活跃客户"}
    assert held(bystander) == set()
    incremental = TagRuleRun.objects.filter(trigger="incremental")
    assert set(incremental.values_list("rule__name", "scope_size", "added")) == {
        ("复购", 2, 1), ("热聊", 2, 1), ("价值分层：高价值客户", 2, 1),
        ("价值分层：活跃客户", 2, 1)}
    # The tags the rules wrote touch the two customers again (the database's triggers, crm
    # 0019), but no rule reads tags: the run settled them itself (hooks.Settled).
    assert hooks.touches_waiting()["tagging"] == 0          # all read
    assert tag_touched_customers() == 0
    assert TagRuleRun.objects.filter(trigger="incremental").count() == 4


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_a_rule_reading_a_tag_another_rule_gives_follows_in_the_same_run(op_api, operator,
                                                                         follow_up):
    """A rule that reads a tag another rule gives (and runs before it) tags the customer in the
    same handler run on PostgreSQL — the run re-reads the customers its tags touched — and a
    run after that has nothing left to read. (On SQLite tags leave no touches: the periodic
    run, a full one there, brings it.)"""
    TagRule.objects.create(name="跟进热聊", tag=follow_up["跟进"], mode="sync", priority=1,
                           condition={"field": "tag", "op": "any", "value": ["热聊"]})
    TagRule.objects.create(name="热聊", tag=follow_up["热聊"], mode="sync", priority=2,
                           condition={"field": "event", "type": "message_in", "op": "count_gte",
                                      "value": 1, "within_days": 7})
    talker = CustomerFactory(external_id="talker", owner=operator, joined_at=days_ago(200))
    tag_touched_customers()
    tag_touched_customers()
    events = op_api.post("/api/v1/events/", [
        {"customer": "talker", "type": "message_in", "idempotency_key": "chain-1"}],
        format="json")
    assert events.json()["accepted"] == 1, events.json()

    assert tag_touched_customers() == 1
    if connection.vendor != "postgresql":
        assert "跟进" not in held(talker)
        services.tag_rules_run_due(force=True)
    assert {"热聊", "跟进"} <= held(talker)
    assert hooks.touches_waiting()["tagging"] == 0
    assert tag_touched_customers() == 0


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_a_bulk_of_touches_is_read_in_one_pass_over_everyone(op_api, operator, follow_up):
    """More than crm.hooks.FULL_SHARE of the customers touched at once (an import): the rules
    run over everyone, once, instead of by id — with the same tags."""
    TagRule.objects.create(name="热聊", tag=follow_up["热聊"], mode="sync",
                           condition={"field": "event", "type": "message_in", "op": "count_gte",
                                      "value": 1, "within_days": 7})
    people = [CustomerFactory(external_id=f"p{n}", owner=operator) for n in range(4)]
    tag_touched_customers()
    tag_touched_customers()         # (what the first wrote: the value layers' tags)
    events = op_api.post("/api/v1/events/", [
        {"customer": f"p{n}", "type": "message_in", "idempotency_key": f"bulk-{n}"}
        for n in range(3)], format="json")
    assert events.json()["accepted"] == 3, events.json()

    assert hooks.touched_customers_process("tagging", limit=2) == 3
    assert ["热聊" in held(p) for p in people] == [True, True, True, False]
    run = TagRuleRun.objects.filter(trigger="incremental").latest("pk")
    assert run.scope_size is None                   # everyone, in one pass


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_the_incremental_path_also_untags_in_sync_mode(op_api, operator, follow_up):
    TagRule.objects.create(name="未退款", tag=follow_up["复购"], mode="sync",
                           condition={"field": "order", "op": "sum_gte", "value": 1000})
    buyer = CustomerFactory(external_id="buyer", owner=operator, joined_at=days_ago(200))
    tag_touched_customers()
    op_api.post("/api/v1/orders/", {"customer": "buyer", "external_id": "o-1",
                                    "source": "youzan", "amount": "1200.00"}, format="json")
    tag_touched_customers()
    assert "复购" in held(buyer)

    refund = op_api.post("/api/v1/orders/", {"customer": "buyer", "external_id": "o-1",
                                             "source": "youzan", "amount": "1200.00",
                                             "status": "refunded"}, format="json")
    assert refund.status_code == 200, refund.json()
    tag_touched_customers()

    assert "复购" not in held(buyer)


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_the_incremental_path_untags_when_the_condition_becomes_unknown(operator, follow_up):
    """A customer losing the attribute a sync rule tests no longer matches it: the handler's
    one-statement check (services._rules_changing) sees that, unknown counting as no match."""
    from crm.services import customer_update

    TagRule.objects.create(name="贵宾", tag=follow_up["跟进"], mode="sync",
                           condition={"field": "attributes.vip", "op": "eq", "value": "yes"})
    vip = CustomerFactory(owner=operator, attributes={"vip": "yes"})
    services.tag_rules_run_due(force=True)
    tag_touched_customers()
    assert "跟进" in held(vip)

    customer_update(actor=operator, customer=vip, attributes={})
    tag_touched_customers()

    assert "跟进" not in held(vip)
    assert TagRuleRun.objects.filter(trigger="incremental", rule__name="贵宾",
                                     removed=1).exists()


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_touched_customers_whose_rules_change_nothing_cost_one_check(
        op_api, operator, follow_up, django_assert_max_num_queries):
    """Every few seconds the handler reads the customers touched meanwhile; when none of the
    rules changes anything for them, it finds that in one statement instead of running each
    rule (≈15 statements a rule) — and leaves no run record."""
    for n in range(6):
        TagRule.objects.create(name=f"城市{n}", tag=follow_up["跟进"], mode="sync",
                               condition={"field": "city", "op": "eq", "value": f"城{n}"})
    CustomerFactory(external_id="quiet", owner=operator, joined_at=days_ago(200))
    services.tag_rules_run_due(force=True)
    while tag_touched_customers():
        pass
    runs = TagRuleRun.objects.count()
    events = op_api.post("/api/v1/events/", [{"customer": "quiet", "type": "message_read",
                                              "idempotency_key": "pv-1"}], format="json")
    assert events.json()["accepted"] == 1, events.json()

    with django_assert_max_num_queries(25):       # 10 rules: ≈150 statements before
        assert tag_touched_customers() == 1

    assert TagRuleRun.objects.count() == runs


@pytest.mark.django_db
@pytest.mark.postgres_only
def test_the_handler_writes_every_changing_rule_at_once_as_each_rule_would_alone(
        operator, follow_up):
    """The touch handler runs the rules that change something for its customers together
    (services._rules_run_together): an exclusive group's tag replaced by the group's other, a
    sync rule's tag taken away, a tag a sync rule takes away and another rule gives given
    again — each with its history under the rule that wrote it and a run record per rule — in
    a few statements, not a dozen a rule."""
    customers, _expected = _layer_customers()
    TagRule.objects.create(name="上海", tag=follow_up["跟进"], mode="sync", priority=1,
                           condition=SHANGHAI)
    TagRule.objects.create(name="贵宾", tag=follow_up["跟进"], mode="add", priority=2,
                           condition={"field": "attributes.vip", "op": "eq", "value": "yes"})
    both = CustomerFactory(external_id="both", owner=operator, city="上海",
                           attributes={"vip": "yes"}, joined_at=days_ago(200))
    city = CustomerFactory(external_id="city", owner=operator, city="上海",
                           joined_at=days_ago(200))
    services.tag_rules_run_due(force=True)
    while tag_touched_customers():
        pass
    assert CustomerTag.objects.get(customer=both, tag=follow_up["跟进"]).rule.name == "上海"
    TagChange.objects.all().delete()
    runs = TagRuleRun.objects.count()

    Customer.objects.filter(pk=customers["silent-20"].pk).update(last_active_at=days_ago(25))
    Customer.objects.filter(pk=customers["silent-35"].pk).update(last_active_at=days_ago(0.5))
    Customer.objects.filter(pk__in=[both.pk, city.pk]).update(city="北京")
    with CaptureQueriesContext(connection) as queries:
        assert tag_touched_customers() == 4

    # (two passes: 贵宾 gives again what 上海 took away; 96 statements with each rule alone)
    assert len(queries) <= 65, len(queries)
    assert layer_of(customers["silent-20"]) == {"潜在流失客户"}
    assert layer_of(customers["silent-35"]) == {"活跃客户"}
    assert held(city) == set()
    assert CustomerTag.objects.get(customer=both, tag=follow_up["跟进"]).rule.name == "贵宾"
    changes = {(c.customer.external_id, c.action, c.tag_name, c.rule.name)
               for c in TagChange.objects.select_related("customer", "rule")}
    assert changes == {
        ("silent-20", "replaced", "活跃客户", "价值分层：潜在流失客户"),
        ("silent-20", "added", "潜在流失客户", "价值分层：潜在流失客户"),
        ("silent-35", "replaced", "潜在流失客户", "价值分层：活跃客户"),
        ("silent-35", "added", "活跃客户", "价值分层：活跃客户"),
        ("city", "removed", "跟进", "上海"),
        ("both", "removed", "跟进", "上海"),
        ("both", "added", "跟进", "贵宾"),
    }
    made = {(r.rule.name, r.trigger, r.matched, r.added, r.removed, r.scope_size)
            for r in TagRuleRun.objects.select_related("rule").order_by("pk")[runs:]}
    assert made == {("价值分层：潜在流失客户", "incremental", 1, 1, 0, 4),
                    ("价值分层：活跃客户", "incremental", 1, 1, 0, 4),
                    ("上海", "incremental", 0, 0, 2, 4), ("贵宾", "incremental", 1, 1, 0, 4)}
    assert tag_touched_customers() == 0


# --- Management command ---------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.both_dbs
def test_evaluate_tag_rules_prints_counts(follow_up):
    CustomerFactory(city="上海", joined_at=days_ago(2))
    rule = TagRule.objects.create(name="上海跟进", tag=follow_up["跟进"], condition=SHANGHAI)
    out = StringIO()

    call_command("evaluate_tag_rules", stdout=out)

    lines = out.getvalue().splitlines()
    assert "上海跟进: matched 1, added 1, removed 0 in " in "\n".join(lines)
    assert any(line.startswith("价值分层：新客户: matched 1, added 1, removed 0 in ")
               for line in lines)
    assert any(line.startswith("价值分层：高价值客户: matched 0, added 0, removed 0")
               for line in lines)
    assert lines[-1].startswith("Done in ")
    assert len(lines) == 6

    out = StringIO()
    call_command("evaluate_tag_rules", "--rule", str(rule.pk), stdout=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("上海跟进: matched 1, added 0, removed 0 in ")

    with pytest.raises(CommandError, match="No tag rule with id 999999"):
        call_command("evaluate_tag_rules", "--rule", "999999", stdout=StringIO())


# --- Rules racing manual tagging (PostgreSQL: real concurrent transactions) -----------------

def _waiting(pid: int) -> bool:
    """Whether the backend `pid` is waiting for a lock."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", [pid])
        return cursor.fetchone()[0] > 0


def _until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class _Race:
    """Run `first` in one thread and `second` in another: `first` pauses right after its first
    write to the tagging tables that matches `pause_after`, `second` runs meanwhile, and `first`
    resumes once `second` has finished or waits for a lock `first` holds. This replays one
    interleaving of two real transactions every time."""

    def __init__(self, first, second, pause_after=WRITE):
        self.first, self.second, self.pause_after = first, second, pause_after
        self.paused = threading.Event()
        self.done = threading.Event()
        self.pid: int | None = None
        self.errors: list[BaseException] = []

    def _hook(self, execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if self.pause_after.search(sql) and not self.paused.is_set():
            self.paused.set()
            _until(lambda: self.done.is_set() or (self.pid and _waiting(self.pid)))
        return result

    def _first(self):
        try:
            with connection.execute_wrapper(self._hook):
                self.first()
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.paused.set()
            connection.close()

    def _second(self):
        try:
            self.paused.wait(10)
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                self.pid = cursor.fetchone()[0]
            self.second()
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.done.set()
            connection.close()

    def run(self):
        threads = [threading.Thread(target=self._first), threading.Thread(target=self._second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not self.errors, self.errors


@pytest.fixture
def racing(transactional_db):
    assert connection.vendor == "postgresql", "these tests need real concurrent transactions"
    operator = UserFactory(username="racer", roles=["operator"])
    group = TagGroup.objects.create(name="跟进组")
    tag = Tag.objects.create(group=group, name="跟进")
    rule = TagRule.objects.create(name="上海", tag=tag, condition=SHANGHAI, mode="sync")
    return operator, tag, rule


def _manual_add(customers, tag, operator):
    def add():
        services.customers_tags_change(customers=customers, add=[tag], remove=[], actor=operator)
    return add


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_manual_add_racing_a_sync_rule_removal_is_kept(racing):
    """The operator tags a customer who holds the tag from a rule that no longer matches him,
    while that rule runs: whichever commits first, he keeps the tag."""
    operator, tag, rule = racing
    customer = CustomerFactory(city="上海", owner=operator)
    services.tag_rule_run(rule=rule)
    Customer.objects.filter(pk=customer.pk).update(city="北京")

    _Race(_manual_add(Customer.objects.filter(pk=customer.pk), tag, operator),
          lambda: services.tag_rule_run(rule=rule)).run()

    assert held(customer) == {"跟进"}
    assert CustomerTag.objects.get(customer=customer).source == TagSource.MANUAL


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_sync_rule_never_removes_a_tag_made_manual_while_it_runs(racing):
    operator, tag, rule = racing
    customer = CustomerFactory(city="上海", owner=operator)
    services.tag_rule_run(rule=rule)
    Customer.objects.filter(pk=customer.pk).update(city="北京")

    # The operator's transaction has just turned the rule's row into a manual one when the rule
    # deletes its stale rows: the DELETE waits for that row, and must not remove it afterwards.
    _Race(_manual_add(Customer.objects.filter(pk=customer.pk), tag, operator),
          lambda: services.tag_rule_run(rule=rule),
          pause_after=re.compile(r'UPDATE\s+"?tagging_customertag', re.IGNORECASE)).run()

    assert held(customer) == {"跟进"}
    assert not TagChange.objects.filter(customer=customer, source="rule",
                                        action="removed").exists()


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_setting_an_exclusive_tag_while_a_rule_sets_another_keeps_the_manual_one(racing):
    operator, _tag, _rule = racing
    group = TagGroup.objects.create(name="等级", exclusive=True)
    silver = Tag.objects.create(group=group, name="银卡")
    gold = Tag.objects.create(group=group, name="金卡")
    rule = TagRule.objects.create(name="银卡", tag=silver, condition=SHANGHAI, mode="sync")
    customer = CustomerFactory(city="上海", owner=operator)

    # The rule has inserted 银卡 (not yet committed) when the operator sets 金卡.
    _Race(lambda: services.tag_rule_run(rule=rule),
          _manual_add(Customer.objects.filter(pk=customer.pk), gold, operator),
          pause_after=re.compile(r'INSERT\s+INTO\s+"?tagging_customertag', re.IGNORECASE)).run()

    assert held(customer) == {"金卡"}
    assert CustomerTag.objects.get(customer=customer).source == TagSource.MANUAL


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_sync_run_deleting_the_rule_tag_an_operator_is_claiming_leaves_it_manual(racing):
    """The interleaving the loop below once caught (CI, a loaded machine), replayed: the
    operator's change finds no tag, a rule run gives it and commits, the operator's INSERT
    therefore skips the customer, a sync run deletes the rule's tag — and the operator's claim
    waits for that DELETE and finds nothing to claim. The operator must still end up holding
    the tag, as a manual one."""
    operator, tag, rule = racing
    customer = CustomerFactory(city="上海", owner=operator)
    claimed, rule_added, checked, deleted = (threading.Event() for _n in range(4))
    pid: list[int] = []
    errors: list[BaseException] = []

    def by_hand():
        statements = []

        def hook(execute, sql, params, many, context):
            result = execute(sql, params, many, context)
            statements.append(sql)
            if len(statements) == 1 and not claimed.is_set():
                # Right after the first claim (it found nothing): let the rule tag them.
                assert re.match(r"\s*UPDATE", sql), sql
                claimed.set()
                assert rule_added.wait(10)
            elif claimed.is_set() and not checked.is_set():
                checked.set()                     # the INSERT's pre-check saw the rule's tag
                assert deleted.wait(10)           # the sync run has deleted it, uncommitted
            return result

        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pid.append(cursor.fetchone()[0])
            with connection.execute_wrapper(hook):
                services.customers_tags_change(customers=Customer.objects.filter(pk=customer.pk),
                                               add=[tag], remove=[], actor=operator)
        except BaseException as exc:
            errors.append(exc)
        finally:
            claimed.set()
            checked.set()
            connection.close()

    def rules():
        def hold_the_delete(execute, sql, params, many, context):
            result = execute(sql, params, many, context)
            if re.search(r"DELETE\s+FROM\s+\"?tagging_customertag", sql):
                deleted.set()
                # Commit only once the operator's claim waits for the deleted row.
                _until(lambda: _waiting(pid[0]))
            return result

        try:
            assert claimed.wait(10)
            services.tag_rule_run(rule=rule)                     # 上海: gives the tag
            rule_added.set()
            assert checked.wait(10)
            Customer.objects.filter(pk=customer.pk).update(city="北京")
            with connection.execute_wrapper(hold_the_delete):
                services.tag_rule_run(rule=rule)                 # 北京: takes it away
        except BaseException as exc:
            errors.append(exc)
        finally:
            rule_added.set()
            deleted.set()
            connection.close()

    threads = [threading.Thread(target=by_hand), threading.Thread(target=rules)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors

    assert held(customer) == {"跟进"}
    assert CustomerTag.objects.get(customer=customer).source == TagSource.MANUAL
    services.tag_rule_run(rule=rule)
    assert held(customer) == {"跟进"}


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_rule_runs_concurrent_with_manual_tagging_lose_no_manual_tag(racing):
    """Operators tag thirty customers one by one while the sync rule runs again and again."""
    operator, tag, rule = racing
    customers = [CustomerFactory(city="上海", owner=operator) for _n in range(30)]
    services.tag_rule_run(rule=rule)
    Customer.objects.update(city="北京")
    errors: list[BaseException] = []
    stop = threading.Event()

    def rules():
        try:
            while not stop.is_set():
                services.tag_rule_run(rule=rule)
                Customer.objects.update(city="上海")
                services.tag_rule_run(rule=rule)
                Customer.objects.update(city="北京")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    def by_hand():
        try:
            for customer in customers:
                services.customers_tags_change(
                    customers=Customer.objects.filter(pk=customer.pk), add=[tag], remove=[],
                    actor=operator)
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()
            connection.close()

    threads = [threading.Thread(target=rules), threading.Thread(target=by_hand)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    services.tag_rule_run(rule=rule)

    lost = [c.pk for c in customers if held(c) != {"跟进"}]
    assert lost == []
    assert set(CustomerTag.objects.filter(tag=tag).values_list("source", flat=True)) == {
        "manual"}


# --- A batch of rules -----------------------------------------------------------------------

def _chatty_world():
    """Customers with 0–5 inbound messages in the last week and 0–2 paid orders."""
    from tests.factories import EventFactory, OrderFactory

    customers = {}
    for n in range(8):
        customer = customers[n] = CustomerFactory(external_id=f"chatty-{n}",
                                                  joined_at=days_ago(60))
        for k in range(n % 6):
            EventFactory(customer=customer, type="message_in", occurred_at=days_ago(k + 0.5))
        for k in range(n % 3):
            OrderFactory(customer=customer, status="paid", placed_at=days_ago(k + 1))
    # (events stored straight into the table: their per-type counts as ingestion keeps them)
    event_counts_refresh(customer_ids=[c.pk for c in customers.values()])
    return customers


CHATTY = {"field": "event", "type": "message_in", "op": "count_gte", "value": 3,
          "within_days": 7}
BUYER = {"field": "order", "op": "count_gte", "value": 2}


@pytest.mark.django_db
@pytest.mark.postgres_only
def test_a_batch_of_rules_reads_the_events_once_and_tags_as_each_rule_alone(follow_up):
    customers = _chatty_world()
    TagRule.objects.create(name="热聊", tag=follow_up["热聊"], condition=CHATTY, mode="sync")
    TagRule.objects.create(name="复购", tag=follow_up["复购"], condition=BUYER, mode="sync")
    TagRule.objects.create(name="跟进", tag=follow_up["跟进"], mode="sync",
                           condition={"all": [CHATTY, {"not": BUYER}]})

    with CaptureQueriesContext(connection) as queries:
        runs = services.tag_rules_run_due(force=True)

    reading_events = [q["sql"] for q in queries if '"crm_event"' in q["sql"]]
    assert len(reading_events) == 1, reading_events
    held_by = {name: {c.external_id for c in customers.values()
                      if CustomerTag.objects.filter(customer=c, tag=follow_up[name]).exists()}
               for name in ("热聊", "复购", "跟进")}
    # message counts 0,1,2,3,4,5,0,1 and order counts 0,1,2,0,1,2,0,1
    assert held_by == {"热聊": {"chatty-3", "chatty-4", "chatty-5"},
                       "复购": {"chatty-2", "chatty-5"},
                       "跟进": {"chatty-3", "chatty-4"}}
    assert sorted(r.matched for r in runs if r.rule.tag.group == follow_up["group"]) == [2, 2, 3]
    # and the same as each rule run alone
    CustomerTag.objects.filter(tag__group=follow_up["group"]).delete()
    for rule in TagRule.objects.filter(tag__group=follow_up["group"]):
        services.tag_rule_run(rule=rule)
    assert {name: {c.external_id for c in customers.values()
                   if CustomerTag.objects.filter(customer=c, tag=follow_up[name]).exists()}
            for name in held_by} == held_by


@pytest.mark.django_db
@pytest.mark.postgres_only
def test_a_rule_edited_after_its_batch_began_runs_on_its_new_condition(follow_up):
    customers = _chatty_world()
    rule = TagRule.objects.create(name="热聊", tag=follow_up["热聊"], condition=CHATTY,
                                  mode="sync")
    now = timezone.now()
    with services._batch_features([rule], now=now, customer_ids=None) as features:
        rule.condition = {"field": "event", "type": "message_in", "op": "count_gte", "value": 1,
                          "within_days": 2}          # a count the batch's table lacks
        rule.save()
        run = services.tag_rule_run(rule=rule, now=now, features=features)
    # messages 0.5, 1.5, 2.5 … days ago: everyone with at least one has one in the last 2 days
    assert run.added == 6
    assert {c.external_id for c in customers.values()
            if CustomerTag.objects.filter(customer=c, tag=follow_up["热聊"]).exists()} == {
        "chatty-1", "chatty-2", "chatty-3", "chatty-4", "chatty-5", "chatty-7"}


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_the_nightly_sweep_removes_tags_of_a_customer_deleted_mid_run(follow_up):
    """Customer tags carry no database foreign key: a rule run that wrote a tag for a customer
    deleted meanwhile leaves it behind, and the nightly sweep takes it (and its history)."""
    kept, gone = CustomerFactory(city="上海"), CustomerFactory(city="上海")
    services.tag_rule_run(rule=TagRule.objects.create(name="上海", tag=follow_up["跟进"],
                                                      condition=SHANGHAI))
    assert CustomerTag.objects.filter(customer=gone).exists()
    with connection.cursor() as cursor:   # what the run's late write amounts to
        cursor.execute("DELETE FROM crm_customer WHERE id = %s", [gone.pk])

    assert services.orphans_sweep() == 2   # the tag and its history row

    assert not CustomerTag.objects.filter(customer_id=gone.pk).exists()
    assert not TagChange.objects.filter(customer_id=gone.pk).exists()
    assert CustomerTag.objects.filter(customer=kept).count() == 1
    assert services.orphans_sweep() == 0


def test_the_tag_sweep_runs_nightly_from_beat():
    from config.beat import BEAT_SCHEDULE

    assert BEAT_SCHEDULE["tagging-sweep-orphans"]["task"] == "tagging.tasks.sweep_orphans"


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_a_tag_written_by_someone_else_meanwhile_is_skipped_not_an_error(follow_up, operator):
    """Rules INSERT without ON CONFLICT (the SELECT leaves out who holds the tag). A writer that
    tagged one of the customers between that read and the write makes the statement redo with
    conflicts skipped: the others get the tag, the one already tagged keeps the writer's row."""
    first, second = CustomerFactory(city="上海"), CustomerFactory(city="上海")
    services.customers_tags_change(customers=Customer.objects.filter(pk=first.pk),
                                   add=[follow_up["跟进"]], remove=[], actor=operator)
    rule = TagRule.objects.create(name="上海", tag=follow_up["跟进"], condition=SHANGHAI)
    # what the run read before the operator's change: neither customer holds the tag
    added = services._insert_lacking(Customer.objects.filter(pk__in=[first.pk, second.pk]),
                                     follow_up["跟进"], source=TagSource.RULE, actor=None,
                                     rule=rule, expires_at=None, now=timezone.now())
    assert added == 1
    assert CustomerTag.objects.get(customer=first).source == TagSource.MANUAL
    assert CustomerTag.objects.get(customer=second).source == TagSource.RULE
    assert TagChange.objects.filter(customer=second, rule=rule).count() == 1


@pytest.mark.django_db
@pytest.mark.postgres_only
def test_a_scheduled_run_reads_in_full_once_a_day_and_else_who_crossed_a_boundary():
    """Between the day's full run and the next, a scheduled run reads only the customers a
    condition may have changed for by time alone — silence reaching 30 days, a tag expiring;
    what is written about a customer reaches the rules through the touches (crm 0019)."""
    now = timezone.make_aware(timezone.datetime(2026, 3, 2, 12, 0))
    group = TagGroup.objects.create(name="活跃度")
    silent_tag = Tag.objects.create(group=group, name="沉默")
    trial = Tag.objects.create(group=group, name="试用")
    TagRule.objects.create(name="沉默", tag=silent_tag, mode="sync", condition={
        "any": [{"field": "last_active_at", "op": "older_than_days", "value": 30},
                {"field": "tag", "op": "any", "value": [trial.pk]}]})
    drifting = CustomerFactory(last_active_at=now - timedelta(days=30, minutes=-10))
    quiet = CustomerFactory(last_active_at=now - timedelta(days=1))
    trying = CustomerFactory(last_active_at=now - timedelta(days=1))
    CustomerTag.objects.create(customer=trying, tag=trial, added_at=now,
                               expires_at=now + timedelta(minutes=5))
    def silent(customer) -> bool:
        return "沉默" in held(customer)

    services.tag_rules_run_due(now=now)                             # the day's first: full
    assert (silent(drifting), silent(quiet), silent(trying)) == (False, False, True)
    rule = TagRule.objects.get(name="沉默")
    assert rule.last_full_run_at == rule.last_run_at == now
    Customer.objects.filter(pk=quiet.pk).update(last_active_at=now - timedelta(days=90))
    CustomerTouch.objects.all().delete()        # the touch path's job, not the schedule's

    later = now + timedelta(minutes=61)
    services.tag_rules_run_due(now=later)
    rule.refresh_from_db()
    assert (rule.last_run_at, rule.last_full_run_at) == (later, now)
    assert silent(drifting)                 # 30 days silent since 12:10
    assert not silent(trying)               # its trial tag expired at 12:05 (a sync rule)
    assert not silent(quiet)                # not read

    services.tag_rules_run_due(now=now + timedelta(days=1))        # full again
    assert silent(quiet)
