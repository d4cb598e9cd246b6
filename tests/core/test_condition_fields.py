"""The field description the segment builder draws from: filled by the condition registry, in
the reader's language, with the names people read (stages, tags, channels, staff)."""

import importlib

import pytest
from django.apps import apps as django_apps
from django.db.models import Q

from core import conditions
from core.conditions import ConditionField, register_field
from tagging.models import Tag, TagGroup
from tests.factories import ChannelFactory, UserFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/conditions/fields/"


@pytest.fixture
def stage_models(db):
    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(django_apps, None)


def _fields(client, language="en"):
    response = client.get(URL, HTTP_ACCEPT_LANGUAGE=language)
    assert response.status_code == 200, response.content
    return response.json(), {f["name"]: f for f in response.json()["fields"]}


def test_every_registered_field_is_described_with_its_operators(op_api, stage_models):
    body, fields = _fields(op_api)
    assert set(fields) == {name for name, _spec in conditions.fields.items()}
    for field in body["fields"]:
        assert field["label"] and field["ops"], field["name"]
        assert all(op in body["operators"] for op in field["ops"])
    assert body["operators"]["older_than_days"] == "at least … days ago"
    assert fields["attributes."]["prefix"] is True
    assert fields["total_spent"]["kind"] == "number"
    assert fields["last_active_at"]["kind"] == "datetime"


def test_choices_carry_the_names_people_read(op_api, stage_models):
    ChannelFactory(code="store-hz", name="杭州门店")
    UserFactory(username="op_wang", first_name="芳", last_name="王", roles=["operator"])
    group = TagGroup.objects.create(name="价值")
    Tag.objects.create(group=group, name="高价值客户", color="#c0352b")
    _body, fields = _fields(op_api)

    assert {"value": "store-hz", "label": "杭州门店"} in fields["channel"]["choices"]
    assert {"value": "op_wang", "label": "王芳"} in fields["owner"]["choices"]
    tag = next(c for c in fields["tag"]["choices"] if c["name"] == "高价值客户")
    assert tag["color"] == "#c0352b" and tag["group"] == "价值"
    dormant = next(c for c in fields["stage"]["choices"] if c["value"] == "dormant")
    assert dormant["when"] == {"model": "value"} and dormant["label"] != "dormant"
    model = fields["stage"]["params"][0]
    assert model["name"] == "model" and model["required"]
    assert {"value", "journey", "aipl"} <= {c["value"] for c in model["choices"]}
    event_type = next(p for p in fields["event"]["params"] if p["name"] == "type")
    assert event_type["multiple"] and {"value": "message_in", "label": "Message from the customer"} \
        in event_type["choices"]


def test_labels_follow_the_readers_language(op_api, stage_models):
    _body, fields = _fields(op_api, "zh-hans")
    assert fields["last_active_at"]["label"] == "最近活跃"
    assert fields["stage"]["label"] == "阶段"


def test_a_field_registered_in_code_appears_without_other_changes(op_api):
    register_field(ConditionField(name="vip_level", ops=("eq", "gte"),
                                  compile=lambda leaf, ctx: Q(pk__gt=0),
                                  value_schema={"type": "integer"}))
    try:
        _body, fields = _fields(op_api)
    finally:
        conditions.fields.unregister("vip_level")
    assert fields["vip_level"]["label"] == "vip_level"
    assert fields["vip_level"]["kind"] == "integer"
    assert fields["vip_level"]["ops"] == ["eq", "gte"]


def test_anonymous_readers_are_refused(client):
    assert client.get(URL).status_code in (401, 403)


def test_analysts_read_it_too(analyst, api_client_for):
    assert api_client_for(analyst).get(URL).status_code == 200
