"""The segment pages: the list, the builder with its live count, saving and deleting; who may
do what; no page of them answers with a server error."""

import json

import pytest

from campaigns.models import Campaign
from tagging.models import Segment
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db

SHANGHAI = {"field": "city", "op": "eq", "value": "上海"}


@pytest.fixture
def shanghai(db):
    return Segment.objects.create(name="上海客户", condition=SHANGHAI)


@pytest.mark.parametrize("method, path", [
    ("get", "/segments/"), ("get", "/segments/new/"), ("post", "/segments/preview/"),
    ("get", "/segments/{pk}/"), ("get", "/segments/{pk}/count/"),
    ("post", "/segments/{pk}/delete/"),
])
def test_anonymous_readers_are_sent_to_sign_in(client, shanghai, method, path):
    response = getattr(client, method)(path.format(pk=shanghai.pk))
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_analysts_read_segments_and_counts_but_save_nothing(reader, analyst, shanghai):
    client = reader(analyst)
    CustomerFactory(city="上海", name="沪客")
    assert client.get("/segments/").status_code == 200
    page = client.get(f"/segments/{shanghai.pk}/").content.decode()
    assert "上海客户" in page and "Save changes" not in page
    preview = client.post("/segments/preview/", {"condition": json.dumps(SHANGHAI)})
    assert preview.status_code == 200
    assert 'data-preview-count>1<' in preview.content.decode()
    assert "沪客" not in preview.content.decode()          # figures only
    assert client.post(f"/segments/{shanghai.pk}/",
                       {"name": "x", "condition": json.dumps(SHANGHAI)}).status_code == 403
    assert client.post(f"/segments/{shanghai.pk}/delete/").status_code == 403
    assert Segment.objects.get(pk=shanghai.pk).name == "上海客户"


def test_an_operator_saves_a_segment_built_in_the_page(reader, operator):
    client = reader(operator)
    condition = {"all": [SHANGHAI, {"field": "orders_count", "op": "gte", "value": 1}]}
    response = client.post("/segments/new/", {"name": "上海老客", "description": "复购",
                                              "condition": json.dumps(condition)})
    segment = Segment.objects.get(name="上海老客")
    assert response.status_code == 302 and response["Location"] == f"/segments/{segment.pk}/"
    assert segment.condition == condition and segment.created_by == operator
    page = client.get(response["Location"]).content.decode()
    assert "Segment “上海老客” saved." in page
    assert f"/customers/?segment={segment.pk}" in page


@pytest.mark.parametrize("text, message", [
    ("", "The condition is empty: add at least one condition."),
    ("{\"all\": [", "The condition is not valid JSON"),
    (json.dumps({"all": [{"field": "city", "op": "older_than", "value": 1}]}),
     "all[0].op: unknown operator &#x27;older_than&#x27;"),
])
def test_a_refused_condition_is_shown_with_what_was_typed(reader, operator, text, message):
    response = reader(operator).post("/segments/new/", {"name": "坏条件", "condition": text})
    page = response.content.decode()
    assert response.status_code == 400
    assert message in page and "坏条件" in page
    assert not Segment.objects.filter(name="坏条件").exists()


def test_the_live_preview_counts_and_shows_only_the_operators_customers(
        reader, operator, other_operator):
    CustomerFactory(owner=operator, city="上海", name="我的沪客")
    CustomerFactory(owner=other_operator, city="上海", name="别人的沪客")
    CustomerFactory(owner=operator, city="杭州", name="杭州客")
    page = reader(operator).post("/segments/preview/",
                                 {"condition": json.dumps(SHANGHAI)}).content.decode()
    assert "data-preview-count>1<" in page
    assert "我的沪客" in page and "别人的沪客" not in page and "杭州客" not in page


def test_the_preview_names_a_bad_node(reader, operator):
    page = reader(operator).post("/segments/preview/", {"condition": json.dumps(
        {"any": [SHANGHAI, {"field": "nope", "op": "eq", "value": 1}]})}).content.decode()
    assert "any[1].field: unknown field &#x27;nope&#x27;" in page


def test_a_segment_a_campaign_sends_to_is_kept_with_the_reason(reader, admin_user, shanghai,
                                                               admin_api):
    Campaign.objects.create(name="双十二", segment=shanghai, template="hi")
    client = reader(admin_user)
    response = client.post(f"/segments/{shanghai.pk}/delete/", follow=True)
    assert "is the audience of “双十二”" in response.content.decode()
    api = admin_api.delete(f"/api/v1/segments/{shanghai.pk}/")
    assert api.status_code == 400 and "双十二" in api.json()["message"]
    assert Segment.objects.filter(pk=shanghai.pk).exists()


def test_deleting_a_segment(reader, operator, shanghai):
    response = reader(operator).post(f"/segments/{shanghai.pk}/delete/")
    assert response.status_code == 302 and not Segment.objects.filter(pk=shanghai.pk).exists()


def test_the_list_costs_a_fixed_number_of_queries(reader, admin_user,
                                                  django_assert_max_num_queries):
    for i in range(12):
        Segment.objects.create(name=f"人群{i}", condition=SHANGHAI, created_by=admin_user)
    client = reader(admin_user)
    client.get("/segments/")
    with django_assert_max_num_queries(8):
        page = client.get("/segments/").content.decode()
    assert "人群11" in page


def test_a_saved_segments_count_fragment(reader, operator, shanghai):
    CustomerFactory(owner=operator, city="上海")
    page = reader(operator).get(f"/segments/{shanghai.pk}/count/").content.decode()
    assert ">1</span>" in page
