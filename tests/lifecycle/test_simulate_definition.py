"""Simulating a proposed model definition (issue 16 §4: the editor's "Simulate"): stages with
their conditions and thresholds, through the same service and endpoint as threshold-only
simulation, nothing written."""

import pytest
from django.utils import timezone

from lifecycle.models import CustomerStage, Stage, StageModel, StageTransition
from tests.lifecycle.conftest import World, ago

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]


@pytest.fixture
def placed(world):
    now = timezone.now()
    quiet = world.add("sim-quiet", joined_at=ago(20, now=now))
    buyer = world.add("sim-buyer", joined_at=ago(20, now=now))
    world.order(buyer, ago(1, now=now))
    World.evaluate("value", now)
    return {"quiet": quiet, "buyer": buyer}


def stages_of(key: str) -> list[dict]:
    return [{"key": s.key, "name": s.name, "precedence": s.precedence, "color": s.color,
             "condition": s.condition} for s in Stage.objects.filter(model__key=key)
            .order_by("position")]


def test_a_proposed_list_of_stages_is_simulated_without_writing(placed, admin_user,
                                                                english_client):
    stages = stages_of("value")
    stages.insert(2, {"key": "vip", "name": "大客户", "precedence": 5, "color": "#ff0000",
                      "condition": {"field": "orders_count", "op": "gte",
                                    "value": {"threshold": "vip_orders"}}})
    stages[0]["name"] = "新人"
    thresholds = {**StageModel.objects.get(key="value").thresholds, "vip_orders": 1}
    before = CustomerStage.objects.count(), StageTransition.objects.count()

    response = english_client(admin_user).post("/api/v1/stage-models/value/simulate/", {
        "thresholds": thresholds, "stages": stages}, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert [(s["stage"], s["name"], s["now"], s["proposed"]) for s in body["stages"]] == [
        ("intro", "新人", 1, 1), ("growth", "成长期", 1, 0), ("vip", "大客户", 0, 1),
        ("mature", "成熟期", 0, 0), ("dormant", "休眠期", 0, 0), ("churn", "流失期", 0, 0)]
    assert body["moves"] == [{"from": "growth", "to": "vip", "count": 1}]
    assert (CustomerStage.objects.count(), StageTransition.objects.count()) == before
    assert not Stage.objects.filter(key="vip").exists()
    assert Stage.objects.get(model__key="value", key="intro").name == "引入期"


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop(1), "stages: growth would be dropped"),
    (lambda s: s[1].update(condition={"field": "orders_count", "op": "older_than", "value": 1}),
     "stages[1].condition.op: unknown operator 'older_than'"),
    (lambda s: s[1].update(condition=None), "stages: at most one stage may have no condition"),
])
def test_a_proposal_the_model_could_not_save_is_a_400(placed, admin_user, english_client,
                                                     change, message):
    stages = stages_of("value")
    change(stages)
    response = english_client(admin_user).post("/api/v1/stage-models/value/simulate/",
                                                {"stages": stages}, format="json")
    assert response.status_code == 400
    assert response.json()["message"].startswith(message)


def test_only_admins_simulate_a_definition(placed, operator, english_client):
    response = english_client(operator).post("/api/v1/stage-models/value/simulate/",
                                             {"stages": stages_of("value")}, format="json")
    assert response.status_code == 403
