"""Manual stage moves (issue 4 §5) through `POST /api/v1/customers/{id}/stage/`: a reason is
required, the customer stays put for the model's lock period or until unlocked, operators only
move their own customers, and in a monotonic model only an admin moves a customer back."""

from datetime import timedelta

import pytest
from django.utils import timezone

from lifecycle.models import CustomerStage, StageModel, StageTransition
from tests.lifecycle.conftest import World, ago

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]


def url(customer) -> str:
    return f"/api/v1/customers/{customer.pk}/stage/"


@pytest.fixture
def now():
    return timezone.now()


@pytest.fixture
def buyer(world, operator, now):
    """An operator's customer with one recent order: value growth, journey purchase."""
    customer = world.add("buyer", joined_at=ago(10, now=now), owner=operator.username)
    world.order(customer, ago(2, now=now))
    for key in ("journey", "value"):
        world.evaluate(key, now)
    assert (World.stage(customer, "journey"), World.stage(customer, "value")) == (
        "purchase", "growth")
    return customer


def test_a_manual_move_holds_against_evaluation_until_the_lock_expires(
        world, buyer, operator, english_client, now, entered):
    client = english_client(operator)
    before = timezone.now()

    response = client.post(url(buyer), {"model": "value", "stage": "mature", "reason": "VIP"},
                           format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert {k: body[k] for k in ("customer", "model", "from_stage", "to_stage", "source",
                                 "reason", "actor", "backward")} == {
        "customer": buyer.pk, "model": "value", "from_stage": "growth", "to_stage": "mature",
        "source": "manual", "reason": "VIP", "actor": operator.username, "backward": False}
    assert [(e.model, e.stage, e.source, e.customer_ids) for e in entered] == [
        ("value", "mature", "manual", [buyer.pk])]
    row = CustomerStage.objects.get(customer=buyer, model__key="value")
    assert row.stage.key == "mature"
    assert before + timedelta(days=7) <= row.locked_until <= timezone.now() + timedelta(days=7)
    shown = client.get(url(buyer)).json()["stages"]
    assert [(s["model"], s["stage"], s["source"]) for s in shown] == [
        ("journey", "purchase", "rule"), ("value", "mature", "manual")]
    assert next(s for s in shown if s["model"] == "value")["locked_until"] is not None

    for later in (timedelta(days=1), timedelta(days=6, hours=23)):
        result = world.evaluate("value", now + later)
        assert result.changed == 0
        assert World.stage(buyer, "value") == "mature"

    result = world.evaluate("value", now + timedelta(days=8))

    assert result.moves == {("mature", "growth"): 1}
    assert World.stage(buyer, "value") == "growth"
    assert CustomerStage.objects.get(customer=buyer, model__key="value").locked_until is None
    assert World.moves(buyer, "value") == [("", "growth"), ("growth", "mature"),
                                           ("mature", "growth")]
    assert [t.source for t in World.transitions(buyer, "value")] == ["rule", "manual", "rule"]


def test_the_lock_period_is_a_setting_of_the_model(world, buyer, operator, english_client, now):
    StageModel.objects.filter(key="value").update(lock_days=2)
    response = english_client(operator).post(
        url(buyer), {"model": "value", "stage": "mature", "reason": "VIP"}, format="json")
    assert response.status_code == 201

    world.evaluate("value", now + timedelta(days=1))
    assert World.stage(buyer, "value") == "mature"
    world.evaluate("value", now + timedelta(days=3))
    assert World.stage(buyer, "value") == "growth"


def test_unlocking_lets_evaluation_move_the_customer_again(
        world, buyer, operator, english_client, now):
    client = english_client(operator)
    assert client.post(url(buyer), {"model": "value", "stage": "mature", "reason": "VIP"},
                       format="json").status_code == 201
    world.evaluate("value", now + timedelta(minutes=1))
    assert World.stage(buyer, "value") == "mature"

    response = client.post(url(buyer), {"model": "value", "unlock": True}, format="json")

    assert (response.status_code, response.json()) == (200, {"unlocked": True})
    assert World.stage(buyer, "value") == "mature"       # unlocking alone moves no one
    world.evaluate("value", now + timedelta(minutes=2))
    assert World.stage(buyer, "value") == "growth"
    again = client.post(url(buyer), {"model": "value", "unlock": True}, format="json")
    assert (again.status_code, again.json()) == (200, {"unlocked": False})


@pytest.mark.parametrize("body", [
    {"model": "value", "stage": "mature"},
    {"model": "value", "stage": "mature", "reason": "   "},
    {"model": "value", "stage": "mature", "reason": None},
])
def test_a_manual_move_needs_a_reason(buyer, operator, english_client, body):
    response = english_client(operator).post(url(buyer), body, format="json")

    assert response.status_code == 400
    assert response.json()["message"].startswith("reason:")
    assert World.stage(buyer, "value") == "growth"
    assert StageTransition.objects.filter(customer=buyer, source="manual").count() == 0


@pytest.mark.parametrize(("body", "message"), [
    ({"model": "nope", "stage": "mature", "reason": "x"}, "model: unknown stage model 'nope'"),
    ({"stage": "mature", "reason": "x"}, "model: unknown stage model None"),
    ({"model": "value", "stage": "vip", "reason": "x"}, "stage: model value has no stage 'vip'"),
    ({"model": "value", "reason": "x"}, "stage: model value has no stage None"),
])
def test_an_unknown_model_or_stage_is_named(buyer, operator, english_client, body, message):
    response = english_client(operator).post(url(buyer), body, format="json")

    assert (response.status_code, response.json()["message"]) == (400, message)


def test_moving_a_customer_to_the_stage_they_are_in_is_refused(buyer, operator, english_client):
    response = english_client(operator).post(
        url(buyer), {"model": "value", "stage": "growth", "reason": "again"}, format="json")

    assert response.status_code == 400
    assert "already in" in response.json()["message"]
    assert World.moves(buyer, "value") == [("", "growth")]


def test_an_operator_cannot_move_another_operators_customer(
        buyer, other_operator, analyst, english_client):
    response = english_client(other_operator).post(
        url(buyer), {"model": "value", "stage": "mature", "reason": "mine now"}, format="json")

    assert response.status_code == 404
    assert english_client(other_operator).get(url(buyer)).status_code == 404
    assert english_client(analyst).post(
        url(buyer), {"model": "value", "stage": "mature", "reason": "x"},
        format="json").status_code == 403
    assert World.stage(buyer, "value") == "growth"
    assert World.moves(buyer, "value") == [("", "growth")]


def test_only_an_admin_moves_a_customer_back_in_a_monotonic_model(
        world, buyer, operator, admin_user, english_client, now):
    back = {"model": "journey", "stage": "interest", "reason": "bought by mistake"}

    refused = english_client(operator).post(url(buyer), back, format="json")

    assert refused.status_code == 400
    message = refused.json()["message"]
    assert message.startswith("stage:")
    assert "only an admin may move a customer back" in message
    assert World.stage(buyer, "journey") == "purchase"

    allowed = english_client(admin_user).post(url(buyer), back, format="json")

    assert allowed.status_code == 201
    assert {k: allowed.json()[k] for k in ("from_stage", "to_stage", "backward", "source",
                                           "actor")} == {
        "from_stage": "purchase", "to_stage": "interest", "backward": True, "source": "manual",
        "actor": admin_user.username}
    recorded = World.transitions(buyer, "journey")[-1]
    assert (recorded.backward, recorded.source, recorded.actor, recorded.reason) == (
        True, "manual", admin_user, "bought by mistake")
    # Evaluation respects the admin's move during the lock, then the rules apply again.
    world.evaluate("journey", now + timedelta(days=1))
    assert World.stage(buyer, "journey") == "interest"
    world.evaluate("journey", now + timedelta(days=8))
    assert World.stage(buyer, "journey") == "purchase"


def test_an_operator_may_move_back_in_a_model_that_is_not_monotonic(
        buyer, operator, english_client):
    response = english_client(operator).post(
        url(buyer), {"model": "value", "stage": "intro", "reason": "test order"}, format="json")

    assert response.status_code == 201
    assert (response.json()["from_stage"], response.json()["backward"]) == ("growth", True)
    assert World.stage(buyer, "value") == "intro"
