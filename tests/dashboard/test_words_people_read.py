"""Defects a newcomer found in the dashboard: keys where people read names, raw data where they
read a sentence, Chinese names in Western order, jargon in a refusal."""

import re

import pytest

from campaigns import templates
from campaigns.services import sop_save
from core.exceptions import ApplicationError
from crm.models import Customer
from lifecycle.models import Stage, StageModel
from lifecycle.services import customer_stage_move
from tagging.models import CustomerTag, Tag, TagGroup
from tagging.services import customers_tags_change
from tests.factories import CustomerFactory, UserFactory

pytestmark = pytest.mark.django_db


def _place(customer, model_key, stage_key, actor, reason="checked by phone"):
    model = StageModel.objects.get(key=model_key)
    stage = Stage.objects.get(model=model, key=stage_key)
    return customer_stage_move(customer=customer, model=model, stage=stage, reason=reason,
                               actor=actor)


def test_the_customer_list_shows_stage_names_and_tag_colours_not_keys(reader, wang):
    customer = CustomerFactory(owner=wang, name="林小姐")
    _place(customer, "value", "growth", wang)
    tag = Tag.objects.create(group=TagGroup.objects.create(name="兴趣"), name="护肤",
                             color="#0b8a5f")
    customers_tags_change(customers=Customer.objects.filter(pk=customer.pk), add=[tag],
                          remove=[], actor=wang)

    response = reader(wang).get("/customers/")
    chips = response.context["rows"][0]["chips"]
    assert chips["stages"] == [{"label": "成长期", "color": Stage.objects.get(
        model__key="value", key="growth").color, "title": "价值生命周期"}]
    assert chips["tags"] == [{"label": "护肤", "color": "#0b8a5f", "title": "兴趣"}]
    page = response.content.decode()
    assert "成长期" in page and ">growth<" not in page
    assert 'style="background: #0b8a5f1f' in page


def test_the_timeline_says_what_happened_in_a_sentence(reader, wang):
    customer = CustomerFactory(owner=wang, name="林小姐")
    _place(customer, "value", "mature", wang, reason="复购三次")
    _place(customer, "value", "dormant", wang, reason="一个月没回复")

    page = reader(wang, "zh-hans").get(f"/customers/{customer.pk}/").content.decode()
    text = " ".join(re.sub(r"<[^>]+>", " ", page).split())       # what a reader sees
    assert "价值生命周期：成熟期 → 休眠期" in text
    assert "王芳 手动调整；原因：一个月没回复。" in text
    for raw in ("win_back", "backward", "source", "manual", "mature", "dormant"):
        assert raw not in text, raw

    english = reader(wang, "en").get(f"/customers/{customer.pk}/").content.decode()
    assert "Moved by 王芳; reason: 一个月没回复." in english


def test_chinese_staff_names_read_family_name_first(reader, wang):
    CustomerFactory(owner=wang, name="林小姐")
    page = reader(wang).get("/customers/").content.decode()
    assert "王芳" in page and "芳 王" not in page
    western = UserFactory(username="op_anna", roles=["operator"], first_name="Anna",
                          last_name="Smith")
    assert "Anna Smith" in reader(western).get("/").content.decode()


def test_an_sop_greeting_names_the_owner_family_name_first(wang):
    customer = CustomerFactory(owner=wang, name="林小姐")
    context = templates.context_for(customer, tags=[], stages={}, categories=[])
    text = templates.render(templates.compile_template("{{ name }}您好，我是{{ owner.name }}"),
                            context)
    assert text == "林小姐您好，我是王芳"


def test_the_stage_guard_does_not_talk_about_seed_articles(admin_user):
    model = StageModel.objects.get(key="value")
    with pytest.raises(ApplicationError) as refused:
        sop_save(sop=None, actor=UserFactory(username="op-x", roles=["operator"]),
                 name="促销", model=model, stage=Stage.objects.get(model=model, key="intro"),
                 steps=[{"order": 1, "delay_minutes": 0, "channel": "wecom",
                         "category": "promotional", "template": "限时优惠"}])
    assert "seed" not in refused.value.message
    assert CustomerTag.objects.count() == 0


def test_a_group_event_names_the_group_not_its_chat_id(reader, wang):
    from crm import services as crm_services

    customer = CustomerFactory(owner=wang, external_id="wm-grp")
    crm_services.events_ingest(actor=wang, items=[
        {"customer": "wm-grp", "type": "group_joined", "idempotency_key": "g1",
         "data": {"group": "wrX9chat", "name": "老客专属群"}},
        {"customer": "wm-grp", "type": "group_left", "idempotency_key": "g2",
         "data": {"group": "wrX9chat"}}])
    client = reader(wang)
    detail = client.get(f"/customers/{customer.pk}/").content.decode()
    home = client.get("/").content.decode()
    for page in (detail, home):
        assert "老客专属群" in page and "wrX9chat" not in page
