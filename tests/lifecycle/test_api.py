"""The lifecycle API and where stages show (issue 4 §3, §6, §7; DESIGN §4): custom models with
nested stages (seed 004), stage deletion, simulation, the incremental path, the customers'
`stages` field and `stage` filter, the `stage` condition, the timeline, the management command
and `stage-models/`."""

import copy
import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from lifecycle import services, tasks
from lifecycle.models import CustomerStage, Stage, StageModel, StageTransition
from tagging.models import Tag, TagGroup
from tests.lifecycle.conftest import World, ago

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]


@pytest.fixture
def now():
    return timezone.now()


def counts(key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for stage_key in CustomerStage.objects.filter(model__key=key).values_list("stage__key",
                                                                             flat=True):
        out[stage_key] = out.get(stage_key, 0) + 1
    return out


# --- stage-models/ --------------------------------------------------------------------------

def test_the_three_built_in_models_are_listed_with_stages_and_thresholds(
        builtin_models, operator, english_client):
    response = english_client(operator).get("/api/v1/stage-models/")

    assert response.status_code == 200
    models = {m["key"]: m for m in response.json()["results"]}
    assert list(models) == ["journey", "value", "aipl"]
    assert {k: [s["key"] for s in m["stages"]] for k, m in models.items()} == {
        "journey": ["interest", "trust", "purchase", "advocacy"],
        "value": ["intro", "growth", "mature", "dormant", "churn"],
        "aipl": ["awareness", "interest", "purchase", "loyalty"]}
    assert models["value"]["thresholds"] == {"mature_orders": 3, "mature_window_days": 180,
                                             "dormant_days": 30, "churn_days": 90}
    assert models["journey"]["thresholds"] == {"trust_interactions": 3, "advocacy_referrals": 1}
    assert models["aipl"]["thresholds"] == {"loyalty_spend": 2000}
    assert [(k, m["monotonic"], m["built_in"], m["lock_days"]) for k, m in models.items()] == [
        ("journey", True, True, 7), ("value", False, True, 7), ("aipl", False, True, 7)]
    churn = models["value"]["stages"][-1]
    assert churn["name"] == "流失期"
    assert churn["win_back_from"] is True
    assert churn["condition"]["any"][1]["any"][0] == {
        "field": "last_active_at", "op": "older_than_days", "value": {"threshold": "churn_days"}}


def test_only_admins_change_models_and_built_ins_cannot_be_deleted(
        builtin_models, operator, admin_user, english_client):
    refused = english_client(operator).patch("/api/v1/stage-models/value/",
                                             {"lock_days": 1}, format="json")
    assert refused.status_code == 403

    deleted = english_client(admin_user).delete("/api/v1/stage-models/value/")
    assert deleted.status_code == 400
    assert "Built-in models cannot be deleted" in deleted.json()["message"]
    assert StageModel.objects.filter(key="value").exists()


# --- A custom model (seed 004) --------------------------------------------------------------

MESSAGED = {"field": "event", "type": "message_in", "op": "count_gte", "value": 1,
            "since_joined": True}
SALES = {
    "key": "sales", "name": "销售漏斗", "description": "Seed 004", "lock_days": 3,
    "thresholds": {"intent_clicks": 2},
    "stages": [
        {"key": "new", "name": "新客户", "precedence": 100, "condition": None},
        {"key": "contacted", "name": "初步沟通", "precedence": 40, "condition": MESSAGED},
        {"key": "intent", "name": "意向客户", "precedence": 30, "condition": {"any": [
            {"field": "tag", "op": "any", "value": ["有意向"]},
            {"field": "event", "type": "link_clicked", "op": "count_gte",
             "value": {"threshold": "intent_clicks"}, "since_joined": True}]}},
        {"key": "deal", "name": "成交", "precedence": 20,
         "condition": {"field": "order", "op": "count_gte", "value": 1, "since_joined": True}},
        {"key": "lost", "name": "无意向", "precedence": 10,
         "condition": {"field": "tag", "op": "any", "value": ["无意向"]}},
    ],
}


@pytest.fixture
def intent_tags(db):
    group = TagGroup.objects.create(name="销售意向", exclusive=True)
    return {name: Tag.objects.create(group=group, name=name) for name in ("有意向", "无意向")}


@pytest.fixture
def sales_customers(world, intent_tags, admin_user, english_client, now):
    def tag(customer, name):
        response = english_client(admin_user).post(
            f"/api/v1/customers/{customer.pk}/tags/", {"add": [name]}, format="json")
        assert response.status_code == 200, response.json()

    c = {name: world.add(f"sales-{name}", joined_at=ago(20, now=now)) for name in (
        "quiet", "talker", "clicker", "one-click", "tagged", "buyer", "lost buyer")}
    world.event(c["talker"], "message_in", ago(3, now=now))
    world.events(c["clicker"], "link_clicked", [ago(3, now=now), ago(2, now=now)])
    world.event(c["one-click"], "link_clicked", ago(3, now=now))
    tag(c["tagged"], "有意向")
    world.order(c["buyer"], ago(1, now=now))
    world.order(c["lost buyer"], ago(1, now=now))
    tag(c["lost buyer"], "无意向")
    return c


def test_a_custom_model_with_nested_stages_puts_customers_right(
        sales_customers, admin_user, english_client):
    client = english_client(admin_user)

    created = client.post("/api/v1/stage-models/", SALES, format="json")

    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["key"], body["built_in"], body["monotonic"], body["lock_days"]) == (
        "sales", False, False, 3)
    assert [(s["key"], s["name"], s["position"]) for s in body["stages"]] == [
        ("new", "新客户", 0), ("contacted", "初步沟通", 1), ("intent", "意向客户", 2),
        ("deal", "成交", 3), ("lost", "无意向", 4)]

    evaluated = client.post("/api/v1/stage-models/sales/evaluate/")

    assert evaluated.status_code == 200
    assert (evaluated.json()["model"], evaluated.json()["changed"]) == ("sales", 7)
    assert World.stages_of(sales_customers, "sales") == {
        "quiet": "new", "talker": "contacted", "clicker": "intent", "one-click": "new",
        "tagged": "intent", "buyer": "deal", "lost buyer": "lost"}

    # Changing a threshold changes every rule that refers to it.
    patched = client.patch("/api/v1/stage-models/sales/", {"thresholds": {"intent_clicks": 1}},
                           format="json")
    assert patched.status_code == 200, patched.json()
    evaluated = client.post("/api/v1/stage-models/sales/evaluate/")
    assert evaluated.json()["changed"] == 1
    assert evaluated.json()["moves"] == [{"from": "new", "to": "intent", "count": 1}]
    assert World.stage(sales_customers["one-click"], "sales") == "intent"


@pytest.mark.parametrize(("index", "condition", "message"), [
    (2, {"all": [{"field": "event", "op": "older_than", "value": 1}]},
     "stages[2].condition.all[0].op: unknown operator 'older_than'"),
    (2, {"field": "event", "type": "link_clicked", "op": "count_gte",
         "value": {"threshold": "clicks"}},
     "stages[2].condition.value: unknown threshold 'clicks'; the model has: intent_clicks"),
    (3, {"field": "order", "op": "count_gte", "value": 1, "since": True},
     "stages[3].condition.since: unexpected key for field 'order'"),
    (4, {"any": [MESSAGED, {"field": "tag", "op": "any", "value": []}]},
     "stages[4].condition.any[1].value: must be a non-empty list"),
])
def test_a_bad_stage_condition_is_a_400_naming_its_path(
        intent_tags, admin_user, english_client, index, condition, message):
    spec = copy.deepcopy(SALES)
    spec["stages"][index]["condition"] = condition

    response = english_client(admin_user).post("/api/v1/stage-models/", spec, format="json")

    assert response.status_code == 400
    assert response.json()["message"] == message
    assert not StageModel.objects.filter(key="sales").exists()
    assert not Stage.objects.filter(model__key="sales").exists()


def test_a_model_takes_at_most_one_fallback_stage(intent_tags, admin_user, english_client):
    spec = copy.deepcopy(SALES)
    spec["stages"][1]["condition"] = None

    response = english_client(admin_user).post("/api/v1/stage-models/", spec, format="json")

    assert response.status_code == 400
    assert response.json()["message"].startswith("stages: at most one stage")


def test_deleting_a_stage_moves_its_customers_and_records_it(
        sales_customers, admin_user, operator, english_client, now, entered):
    client = english_client(admin_user)
    assert client.post("/api/v1/stage-models/", SALES, format="json").status_code == 201
    World.evaluate("sales", now)
    in_intent = {sales_customers["clicker"].pk, sales_customers["tagged"].pk}
    path = "/api/v1/stage-models/sales/stages/intent/delete/"

    assert english_client(operator).post(path, {"move_to": "contacted"},
                                         format="json").status_code == 403
    unknown = client.post(path, {"move_to": "nowhere"}, format="json")
    assert unknown.status_code == 400
    assert unknown.json()["message"].startswith("move_to:")
    itself = client.post(path, {"move_to": "intent"}, format="json")
    assert itself.status_code == 400
    assert itself.json()["message"].startswith("move_to:")

    entered.clear()

    response = client.post(path, {"move_to": "contacted"}, format="json")

    assert (response.status_code, response.json()) == (200, {"moved": 2})
    assert [(e.model, e.stage, e.source, sorted(e.customer_ids)) for e in entered] == [
        ("sales", "contacted", "system", sorted(in_intent))]
    assert [s["key"] for s in client.get("/api/v1/stage-models/sales/").json()["stages"]] == [
        "new", "contacted", "deal", "lost"]
    moved = StageTransition.objects.filter(model__key="sales", source="system")
    assert {t.customer_id for t in moved} == in_intent
    assert {(t.from_key, t.to_key, t.actor, t.from_stage) for t in moved} == {
        ("intent", "contacted", admin_user, None)}
    assert all("意向客户" in t.reason for t in moved)
    assert {c.external_id: World.stage(c, "sales") for c in sales_customers.values()
            if c.pk in in_intent} == {"sales-clicker": "contacted", "sales-tagged": "contacted"}
    # The model keeps evaluating with the stages it has left.
    World.evaluate("sales", now + timedelta(minutes=1))
    assert World.stages_of(sales_customers, "sales") == {
        "quiet": "new", "talker": "contacted", "clicker": "new", "one-click": "new",
        "tagged": "new", "buyer": "deal", "lost buyer": "lost"}


# --- Simulation -----------------------------------------------------------------------------

@pytest.fixture
def value_world(world, operator, english_client, now):
    """Seven customers evaluated now in the value model; one of them locked by hand."""
    def quiet_for(name, days, order=False):
        customer = world.add(f"sim-{name}", joined_at=ago(300, now=now))
        if order:
            world.order(customer, ago(days, now=now))
        else:
            world.event(customer, "message_in", ago(days, now=now))
        return customer

    customers = {
        "5d": quiet_for("5d", 5), "15d": quiet_for("15d", 15),
        "20d buyer": quiet_for("20d", 20, order=True), "40d": quiet_for("40d", 40),
        "100d": quiet_for("100d", 100), "locked 15d": quiet_for("locked", 15),
    }
    World.evaluate("value", now)
    admin = world.actor
    moved = english_client(admin).post(
        f"/api/v1/customers/{customers['locked 15d'].pk}/stage/",
        {"model": "value", "stage": "mature", "reason": "key account"}, format="json")
    assert moved.status_code == 201
    return customers


def test_simulation_answers_what_evaluation_then_does_and_writes_nothing(
        value_world, admin_user, english_client):
    client = english_client(admin_user)
    before = set(CustomerStage.objects.values_list("customer_id", "model_id", "stage_id",
                                                   "entered_at", "locked_until"))
    transitions = StageTransition.objects.count()

    with CaptureQueriesContext(connection) as captured:
        response = client.post("/api/v1/stage-models/value/simulate/",
                               {"thresholds": {"dormant_days": 10}}, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["thresholds"]["dormant_days"] == 10
    assert body["thresholds"]["churn_days"] == 90
    assert {s["stage"]: (s["now"], s["proposed"]) for s in body["stages"]} == {
        "intro": (2, 1), "growth": (1, 0), "mature": (1, 1), "dormant": (1, 3), "churn": (1, 1)}
    assert sorted((m["from"], m["to"], m["count"]) for m in body["moves"]) == [
        ("growth", "dormant", 1), ("intro", "dormant", 1)]
    # Nothing written.
    writes = [q["sql"] for q in captured.captured_queries
              if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE", "WITH"))]
    assert writes == []
    assert set(CustomerStage.objects.values_list("customer_id", "model_id", "stage_id",
                                                 "entered_at", "locked_until")) == before
    assert StageTransition.objects.count() == transitions
    assert StageModel.objects.get(key="value").thresholds["dormant_days"] == 30

    # Adopt the proposal: the real evaluation does what the simulation said.
    thresholds = {**StageModel.objects.get(key="value").thresholds, "dormant_days": 10}
    assert client.patch("/api/v1/stage-models/value/", {"thresholds": thresholds},
                        format="json").status_code == 200
    result = World.evaluate("value", timezone.now())

    assert sorted((f, t, n) for (f, t), n in result.moves.items()) == sorted(
        (m["from"], m["to"], m["count"]) for m in body["moves"])
    assert counts("value") == {s["stage"]: s["proposed"] for s in body["stages"]
                               if s["proposed"]}
    assert World.stage(value_world["locked 15d"], "value") == "mature"


@pytest.mark.parametrize(("body", "message"), [
    ({"thresholds": {"silent_days": 10}},
     "thresholds: unknown silent_days; the model has churn_days, dormant_days, mature_orders, "
     "mature_window_days"),
    ({"thresholds": {"dormant_days": "10"}}, "thresholds.dormant_days: must be a number"),
    ({"thresholds": [10]}, "thresholds: an object of proposed values"),
    ({}, "thresholds: an object of proposed values"),
])
def test_simulating_bad_thresholds_is_a_400(builtin_models, admin_user, english_client, body,
                                            message):
    response = english_client(admin_user).post("/api/v1/stage-models/value/simulate/", body,
                                               format="json")

    assert response.status_code == 400
    assert response.json()["message"].startswith(message)


# --- The incremental path -------------------------------------------------------------------

def test_touched_customers_are_evaluated_without_a_full_run(
        world, admin_user, english_client, now):
    customer = world.add("inc-buyer", joined_at=ago(10, now=now))
    untouched = world.add("inc-other", joined_at=ago(10, now=now))
    tasks.evaluate_touched_customers()          # both were touched by joining
    assert (World.stage(customer, "value"), World.stage(untouched, "value")) == (
        "intro", "intro")
    full_run_at = StageModel.objects.get(key="value").last_evaluated_at
    # A change that no event announces: only a full run would see it.
    type(untouched).objects.filter(pk=untouched.pk).update(joined_at=ago(40, now=now))

    response = english_client(admin_user).post("/api/v1/orders/", {
        "customer": customer.external_id, "external_id": "inc-1", "source": "youzan",
        "amount": "59.00", "placed_at": timezone.now().isoformat()}, format="json")
    assert response.status_code == 200, response.json()
    # On PostgreSQL the database's triggers queue the silent change too (crm 0019).
    pg = connection.vendor == "postgresql"
    assert tasks.evaluate_touched_customers() == (2 if pg else 1)

    assert World.stage(customer, "value") == "growth"
    assert World.stage(customer, "journey") == "purchase"
    assert World.stage(customer, "aipl") == "purchase"
    assert StageModel.objects.get(key="value").last_evaluated_at == full_run_at
    assert tasks.evaluate_touched_customers() == 0
    if not pg:
        assert World.stage(untouched, "value") == "intro"
    # Either way, what a full run then finds to do: nothing on PostgreSQL.
    changed = sum(r.changed for r in services.stage_models_evaluate(keys=["value"]))
    assert (changed == 0) is pg


# --- Where stages show ----------------------------------------------------------------------

@pytest.fixture
def shown(world, operator, other_operator, now):
    """An operator's dormant and growth customers and another operator's dormant one, evaluated
    in all three models."""
    dormant = world.add("show-dormant", joined_at=ago(60, now=now), owner=operator.username)
    world.event(dormant, "message_in", ago(45, now=now))
    grower = world.add("show-growth", joined_at=ago(20, now=now), owner=operator.username)
    world.event(grower, "group_joined", ago(5, now=now), group="wr-show")
    world.order(grower, ago(3, now=now))
    foreign = world.add("show-foreign", joined_at=ago(60, now=now),
                        owner=other_operator.username)
    for key in ("journey", "value", "aipl"):
        World.evaluate(key, now)
    return {"dormant": dormant, "growth": grower, "foreign": foreign}


def test_customers_show_their_stages_and_filter_by_stage(shown, operator, english_client):
    client = english_client(operator)

    detail = client.get(f"/api/v1/customers/{shown['growth'].pk}/")

    assert detail.status_code == 200
    assert detail.json()["stages"] == {"journey": "purchase", "value": "growth",
                                       "aipl": "purchase"}

    def ids(query):
        response = client.get(f"/api/v1/customers/?{query}")
        assert response.status_code == 200, response.json()
        return {c["external_id"] for c in response.json()["results"]}

    assert ids("stage=value:dormant") == {"show-dormant"}     # not the other operator's
    assert ids("stage=value:dormant,growth") == {"show-dormant", "show-growth"}
    assert ids("stage=value:dormant,growth&stage=aipl:purchase") == {"show-growth"}
    assert ids("stage=journey:interest") == {"show-dormant"}
    assert ids("stage=value:churn") == set()
    listed = {c["external_id"]: c["stages"] for c in
              client.get("/api/v1/customers/").json()["results"]}
    assert listed["show-dormant"] == {"journey": "interest", "value": "dormant",
                                      "aipl": "awareness"}
    bad = client.get("/api/v1/customers/?stage=dormant")
    assert bad.status_code == 400
    assert bad.json()["message"].startswith("stage: use model_key:stage_key")


def test_the_stage_condition_in_a_segment_preview(shown, operator, admin_user, english_client):
    def preview(user, condition):
        return english_client(user).post("/api/v1/segments/preview/", {"condition": condition},
                                         format="json")

    dormant = {"field": "stage", "model": "value", "op": "in", "value": ["dormant"]}
    mine = preview(operator, dormant)
    assert mine.status_code == 200, mine.json()
    assert (mine.json()["count"], [c["external_id"] for c in mine.json()["sample"]]) == (
        1, ["show-dormant"])
    assert preview(admin_user, dormant).json()["count"] == 2
    not_dormant = preview(admin_user, {**dormant, "op": "not_in"})
    assert {c["external_id"] for c in not_dormant.json()["sample"]} == {"show-growth"}
    both = preview(admin_user, {"all": [
        {"field": "stage", "model": "journey", "op": "eq", "value": "purchase"},
        {"field": "stage", "model": "aipl", "op": "in", "value": ["purchase", "loyalty"]}]})
    assert [c["external_id"] for c in both.json()["sample"]] == ["show-growth"]

    unknown_stage = preview(admin_user, {**dormant, "value": ["asleep"]})
    assert unknown_stage.status_code == 400
    assert unknown_stage.json()["message"] == (
        "condition: value[0]: model 'value' has no stage 'asleep'; it has churn, dormant, "
        "growth, intro, mature")
    unknown_model = preview(admin_user, {**dormant, "model": "rfm"})
    assert unknown_model.status_code == 400
    assert "unknown stage model 'rfm'" in unknown_model.json()["message"]


def test_transitions_show_in_the_timeline_and_the_model_history(
        shown, world, operator, admin_user, english_client, now):
    client = english_client(operator)
    customer = shown["growth"]
    assert client.post(f"/api/v1/customers/{customer.pk}/stage/",
                       {"model": "value", "stage": "mature", "reason": "VIP"},
                       format="json").status_code == 201

    timeline = client.get(f"/api/v1/customers/{customer.pk}/timeline/")

    assert timeline.status_code == 200
    stages = [e for e in timeline.json()["results"] if e["kind"] == "stage"]
    assert len(stages) == 4                       # three by rule, one by hand
    newest = stages[0]
    assert newest["type"] == "manual"
    assert {k: newest["data"][k] for k in ("model", "from", "to", "source", "reason", "by")} \
        == {"model": "value", "from": "growth", "to": "mature", "source": "manual",
            "reason": "VIP", "by": operator.username}
    assert "成长期" in newest["title"] and "成熟期" in newest["title"]
    assert {(e["data"]["model"], e["data"]["from"], e["data"]["to"]) for e in stages[1:]} == {
        ("journey", None, "purchase"), ("value", None, "growth"), ("aipl", None, "purchase")}

    history = client.get("/api/v1/stage-models/value/transitions/")
    assert history.status_code == 200
    rows = history.json()["results"]
    moves = [(r["customer"], r["from_stage"], r["to_stage"], r["source"]) for r in rows]
    assert moves[0] == (customer.pk, "growth", "mature", "manual")          # newest first
    assert set(moves[1:]) == {(customer.pk, "", "growth", "rule"),
                              (shown["dormant"].pk, "", "dormant", "rule")}
    assert rows[0]["actor"] == operator.username
    everyone = english_client(admin_user).get("/api/v1/stage-models/value/transitions/")
    assert everyone.json()["count"] == 4


def test_the_management_command_evaluates_and_prints_counts(world, now):
    for n in range(3):
        customer = world.add(f"cmd-{n}", joined_at=ago(5, now=now))
        if n:
            world.order(customer, ago(1, now=now))
    out = io.StringIO()

    call_command("evaluate_lifecycle", "--model", "value", stdout=out)

    text = out.getvalue()
    assert "value: 3 customers moved" in text
    assert "∅ → growth: 2" in text
    assert "∅ → intro: 1" in text
    assert "journey" not in text
    assert counts("value") == {"growth": 2, "intro": 1}
    assert not CustomerStage.objects.filter(model__key="journey").exists()

    again = io.StringIO()
    call_command("evaluate_lifecycle", "--model", "value", stdout=again)
    assert "value: 0 customers moved" in again.getvalue()


# --- Models being built, retired or paused ----------------------------------------------------

def test_a_model_without_stages_yet_evaluates_to_nothing(world, admin_user, english_client, now):
    """Admins create a model first and add stages later; meanwhile it must not break the
    evaluation of every model (the beat task evaluates all of them in one loop)."""
    world.add("draft-1", joined_at=ago(3, now=now))
    client = english_client(admin_user)
    created = client.post("/api/v1/stage-models/", {"key": "a-draft", "name": "Draft",
                                                    "stages": []}, format="json")
    assert created.status_code == 201, created.json()

    evaluated = client.post("/api/v1/stage-models/a-draft/evaluate/")
    simulated = client.post("/api/v1/stage-models/a-draft/simulate/", {"thresholds": {}},
                            format="json")
    everything = services.stage_models_evaluate(now=now)

    assert (evaluated.status_code, evaluated.json()["changed"]) == (200, 0)
    assert (simulated.status_code, simulated.json()["stages"], simulated.json()["moves"]) == (
        200, [], [])
    assert [(r.model, r.changed) for r in everything] == [
        ("a-draft", 0), ("journey", 1), ("value", 1), ("aipl", 1)]


def test_two_stages_at_one_position_are_a_400(builtin_models, admin_user, english_client):
    spec = copy.deepcopy(SALES)
    spec["thresholds"] = {"intent_clicks": 2}
    spec["stages"] = [{**s, "position": n} for n, s in enumerate(spec["stages"][:4])]
    spec["stages"][3]["position"] = 1
    spec["stages"][2]["condition"] = MESSAGED

    response = english_client(admin_user).post("/api/v1/stage-models/", spec, format="json")

    assert response.status_code == 400
    assert response.json()["message"].startswith("stages[3].position:")
    assert not StageModel.objects.filter(key="sales").exists()


def test_deleting_a_custom_model_with_customers_in_it(
        sales_customers, admin_user, english_client, now):
    client = english_client(admin_user)
    assert client.post("/api/v1/stage-models/", SALES, format="json").status_code == 201
    World.evaluate("sales", now)
    World.evaluate("value", now)

    response = client.delete("/api/v1/stage-models/sales/")

    assert response.status_code == 204
    assert not StageModel.objects.filter(key="sales").exists()
    assert not CustomerStage.objects.filter(model__key="sales").exists()
    assert not StageTransition.objects.filter(to_key="deal").exists()
    assert CustomerStage.objects.filter(model__key="value").count() == len(sales_customers)
    detail = client.get(f"/api/v1/customers/{sales_customers['buyer'].pk}/").json()
    assert detail["stages"] == {"value": "growth"}


def test_evaluating_an_inactive_model_says_so(builtin_models, admin_user, english_client):
    client = english_client(admin_user)
    assert client.patch("/api/v1/stage-models/value/", {"active": False},
                        format="json").status_code == 200

    response = client.post("/api/v1/stage-models/value/evaluate/")

    assert response.status_code == 400
    assert "inactive" in response.json()["message"]
