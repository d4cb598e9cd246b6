"""The customer page's tag and stage panels: what an operator does by hand in the browser."""

import pytest
from django.test import Client

from lifecycle.models import CustomerStage, StageTransition
from tagging.models import CustomerTag, Tag, TagGroup
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser_for():
    def make(user) -> Client:
        client = Client(HTTP_ACCEPT_LANGUAGE="en")
        client.force_login(user)
        return client

    return make


@pytest.fixture
def interest_tag():
    group = TagGroup.objects.create(name="兴趣")
    return Tag.objects.create(group=group, name="护肤", color="#2563eb")


def test_the_customer_page_shows_tags_and_stages_panels(operator, browser_for, interest_tag):
    customer = CustomerFactory(owner=operator)
    page = browser_for(operator).get(f"/customers/{customer.pk}/").content.decode()
    assert 'id="tags"' in page and 'id="stages"' in page
    assert "护肤" in page                      # offered in the picker
    assert "价值生命周期" in page and "引入期" in page   # built-in model and its stages


def test_an_operator_adds_and_removes_a_tag_from_the_page(operator, browser_for, interest_tag):
    customer = CustomerFactory(owner=operator)
    client = browser_for(operator)
    response = client.post(f"/customers/{customer.pk}/tags/", {"add": interest_tag.pk})
    assert response.status_code == 302
    assert response["Location"].endswith(f"/customers/{customer.pk}/#tags")
    held = CustomerTag.objects.get(customer=customer, tag=interest_tag)
    assert (held.source, held.added_by) == ("manual", operator)
    page = client.get(f"/customers/{customer.pk}/").content.decode()
    assert "Tag added." in page

    client.post(f"/customers/{customer.pk}/tags/", {"remove": interest_tag.pk})
    assert not CustomerTag.objects.filter(customer=customer).exists()


def test_tagging_another_operators_customer_is_a_404(operator, other_operator, browser_for,
                                                     interest_tag):
    theirs = CustomerFactory(owner=other_operator)
    response = browser_for(operator).post(f"/customers/{theirs.pk}/tags/",
                                          {"add": interest_tag.pk})
    assert response.status_code == 404
    assert not CustomerTag.objects.exists()


def test_an_operator_moves_a_stage_with_a_reason_and_it_is_locked(operator, browser_for):
    customer = CustomerFactory(owner=operator)
    client = browser_for(operator)
    response = client.post(f"/customers/{customer.pk}/stage/",
                           {"target": "value:mature", "reason": "回访确认复购"})
    assert response.status_code == 302
    stage = CustomerStage.objects.get(customer=customer, model__key="value")
    assert stage.stage.key == "mature" and stage.locked_until is not None
    move = StageTransition.objects.get(customer=customer)
    assert (move.source, move.reason, move.actor) == ("manual", "回访确认复购", operator)
    page = client.get(f"/customers/{customer.pk}/").content.decode()
    assert "Moved to" in page and "locked until" in page

    client.post(f"/customers/{customer.pk}/stage/", {"unlock": "value"})
    stage.refresh_from_db()
    assert stage.locked_until is None


def test_a_move_without_a_reason_is_refused_with_a_message(operator, browser_for):
    customer = CustomerFactory(owner=operator)
    client = browser_for(operator)
    client.post(f"/customers/{customer.pk}/stage/", {"target": "value:mature", "reason": " "})
    assert not CustomerStage.objects.filter(customer=customer).exists()
    page = client.get(f"/customers/{customer.pk}/").content.decode()
    assert "reason: say why the customer is moved" in page


def test_analysts_cannot_post_to_the_panels(analyst, browser_for, interest_tag):
    customer = CustomerFactory()
    client = browser_for(analyst)
    assert client.post(f"/customers/{customer.pk}/tags/",
                       {"add": interest_tag.pk}).status_code == 403
    assert client.post(f"/customers/{customer.pk}/stage/",
                       {"target": "value:mature", "reason": "x"}).status_code == 403
