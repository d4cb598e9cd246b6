"""The Django admin writes through the services the API uses: the same checks refuse the same
input (shown next to the field), the same side effects follow, and facts are shown only."""

import json

import pytest
from django.utils import timezone

from campaigns.models import Enrollment, OutreachPolicy, Sop
from crm.hooks import touched_customers_process, touches_waiting
from crm.models import Channel, Customer, CustomerTouch
from lifecycle.models import Stage, StageModel
from tagging.models import Tag, TagGroup, TagRule
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


class Admin:
    """The admin site as a signed-in admin reading English; `post` sends the management forms
    of the page's inlines as a browser would, plus the given inline rows."""

    def __init__(self, client):
        self.client = client

    def get(self, path, **kwargs):
        return self.client.get(path, HTTP_ACCEPT_LANGUAGE="en", **kwargs)

    def post(self, path, data, follow=False):
        page = self.get(path) if not path.endswith("/delete/") else None
        management = {}
        for inline in (page.context.get("inline_admin_formsets") or [] if page else []):
            form = inline.formset.management_form
            management.update({form.add_prefix(name): value
                               for name, value in form.initial.items()})
        return self.client.post(path, {**management, **data}, HTTP_ACCEPT_LANGUAGE="en",
                                follow=follow)


@pytest.fixture
def boss(client, admin_user):
    client.force_login(admin_user)
    return Admin(client)


def _errors(response) -> str:
    """The error texts of an admin form page, as one string."""
    assert response.status_code == 200, response.status_code       # the form again, not saved
    form = response.context["adminform"].form
    texts = [str(e) for errors in form.errors.values() for e in errors]
    for formset in response.context["inline_admin_formsets"]:
        texts += [str(e) for e in formset.formset.non_form_errors()]
        texts += [str(e) for form_errors in formset.formset.errors for errors in
                  form_errors.values() for e in errors]
    return " | ".join(texts)


def _inline(prefix: str, rows: list[dict], initial: int = 0) -> dict:
    data = {f"{prefix}-TOTAL_FORMS": len(rows), f"{prefix}-INITIAL_FORMS": initial,
            f"{prefix}-MIN_NUM_FORMS": 0, f"{prefix}-MAX_NUM_FORMS": 1000}
    for index, row in enumerate(rows):
        data.update({f"{prefix}-{index}-{key}": value for key, value in row.items()})
    return data


# --- Tag rules and segments ---------------------------------------------------------------------

@pytest.fixture
def tag(db):
    return Tag.objects.create(group=TagGroup.objects.create(name="跟进"), name="待跟进")


def _rule(tag, condition) -> dict:
    return {"name": "上海客户", "tag": tag.pk, "condition": json.dumps(condition), "mode": "add",
            "active": "on", "priority": 100, "interval_minutes": 60}


def test_a_tag_rule_with_an_invalid_condition_is_refused_naming_the_node(boss, tag):
    response = boss.post("/admin/tagging/tagrule/add/", _rule(tag, {
        "all": [{"field": "city", "op": "older_than", "value": "上海"}]}))
    assert "condition.all[0].op: unknown operator 'older_than'" in _errors(response)
    assert not TagRule.objects.filter(tag=tag).exists()

    saved = boss.post("/admin/tagging/tagrule/add/", _rule(tag, {
        "field": "city", "op": "eq", "value": "上海"}))
    assert saved.status_code == 302
    assert TagRule.objects.get(tag=tag).condition == {"field": "city", "op": "eq", "value": "上海"}


def test_a_segment_with_an_invalid_condition_is_refused(boss):
    response = boss.post("/admin/tagging/segment/add/", {
        "name": "坏", "description": "", "condition": json.dumps({"field": "nope", "op": "eq"})})
    assert "condition.field: unknown field 'nope'" in _errors(response)


def test_deleting_a_tag_in_the_admin_keeps_its_holders_history(boss, tag, admin_user):
    from tagging.models import TagChange
    from tagging.services import customers_tags_change

    customer = CustomerFactory()
    customers_tags_change(customers=Customer.objects.filter(pk=customer.pk), add=[tag],
                          remove=[], actor=admin_user)
    response = boss.post(f"/admin/tagging/tag/{tag.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Tag.objects.filter(pk=tag.pk).exists()
    assert list(TagChange.objects.filter(customer=customer).values_list("action", flat=True)
                .order_by("id")) == ["added", "deleted"]


# --- SOPs: the stage guard and the template checks ---------------------------------------------

def _sop(model: StageModel, stage_key: str, steps: list[dict], **extra) -> dict:
    stage = Stage.objects.get(model=model, key=stage_key)
    rows = [{"order": n + 1, "delay_minutes": 0, "channel": "wecom", "category": "service",
             "template": "{{ name }}您好", "condition": "null", **row}
            for n, row in enumerate(steps)]
    return {"name": "测试SOP", "description": "", "model": model.pk, "stage": stage.pk,
            "active": "on", "holdout_percent": 0, "goal": "null", **extra,
            **_inline("steps", rows)}


@pytest.fixture
def value_model(db):
    return StageModel.objects.get(key="value")


def test_a_promotional_step_for_newcomers_is_refused_by_the_stage_guard(boss, value_model):
    response = boss.post("/admin/campaigns/sop/add/", _sop(value_model, "intro", [
        {"category": "promotional", "template": "限时优惠"}]))
    assert "promotional messages to customers in value:intro are refused" in _errors(response)
    assert not Sop.objects.filter(name="测试SOP").exists()


def test_an_admin_may_override_the_stage_guard_and_it_is_recorded(boss, value_model, admin_user):
    response = boss.post("/admin/campaigns/sop/add/", _sop(value_model, "intro", [
        {"category": "promotional", "template": "限时优惠"}], override_stage_guard="on"))
    assert response.status_code == 302
    sop = Sop.objects.get(name="测试SOP")
    assert (sop.override_stage_guard, sop.overridden_by) == (True, admin_user)


@pytest.mark.parametrize("template, reason", [
    ("{% for a in name %}" * 3 + "x" + "{% endfor %}" * 3, "loops nest at most 2 deep"),
    ("{% lorem 100000 w %}", "the template does not compile"),
    ("{{ name|center(1000000000) }}", "the filter “center” is not allowed"),
])
def test_a_step_template_the_api_refuses_is_refused_in_the_admin(boss, value_model, template,
                                                                  reason):
    response = boss.post("/admin/campaigns/sop/add/", _sop(value_model, "growth", [
        {"template": "{{ name }}您好"}, {"template": template}]))
    errors = _errors(response)
    assert "steps[1].template: " in errors and reason in errors
    assert not Sop.objects.filter(name="测试SOP").exists()


def test_a_valid_sop_is_saved_with_its_steps(boss, value_model):
    response = boss.post("/admin/campaigns/sop/add/", _sop(value_model, "growth", [
        {"template": "{{ name }}您好"},
        {"delay_minutes": 60, "template": "{{ name }}，{% if categories %}看您喜欢"
                                          "{{ categories|join('、') }}{% endif %}"}]))
    assert response.status_code == 302
    sop = Sop.objects.get(name="测试SOP")
    assert list(sop.steps.order_by("order").values_list("order", "delay_minutes")) == [
        (1, 0), (2, 60)]


def test_an_sop_with_enrolments_is_not_deleted_from_the_admin(boss, value_model):
    sop = Sop.objects.filter(model=value_model).first()
    Enrollment.objects.create(sop=sop, customer=CustomerFactory(), entered_at=timezone.now())
    response = boss.post(f"/admin/campaigns/sop/{sop.pk}/delete/", {"post": "yes"}, follow=True)
    assert Sop.objects.filter(pk=sop.pk).exists()
    assert "This SOP has enrolled customers" in response.content.decode()


# --- Stage models and their stages ----------------------------------------------------------

def test_a_stage_condition_naming_an_unknown_threshold_is_refused(boss):
    rows = [{"position": 0, "key": "new", "name": "新", "description": "", "precedence": 0,
             "color": "#888888", "condition": "null", "win_back_from": ""},
            {"position": 1, "key": "old", "name": "老", "description": "", "precedence": 0,
             "color": "#888888", "win_back_from": "", "condition": json.dumps(
                 {"field": "joined_at", "op": "older_than_days",
                  "value": {"threshold": "old_days"}})}]
    model = {"key": "mine", "name": "我的模型", "description": "", "active": "on",
             "thresholds": json.dumps({"new_days": 7}), "lock_days": 0,
             "interval_minutes": 15, "order": 10}
    response = boss.post("/admin/lifecycle/stagemodel/add/", {**model, **_inline("stages", rows)})
    assert "unknown threshold 'old_days'" in _errors(response)
    assert not StageModel.objects.filter(key="mine").exists()

    model["thresholds"] = json.dumps({"old_days": 30})
    saved = boss.post("/admin/lifecycle/stagemodel/add/", {**model, **_inline("stages", rows)})
    assert saved.status_code == 302
    assert list(StageModel.objects.get(key="mine").stages.order_by("position")
                .values_list("key", flat=True)) == ["new", "old"]


# --- Customers and channels -------------------------------------------------------------------

def _customer(channel=None, **fields) -> dict:
    return {"external_id": "wm-admin", "name": "林", "phone": "", "gender": "unknown",
            "city": "", "channel": channel.pk if channel else "", "owner": fields.pop("owner"),
            "referred_by": "", "joined_at_0": "2026-01-05", "joined_at_1": "10:00:00",
            "status": "active", "opted_out": "", "attributes": "{}", **fields}


def test_a_customer_joined_in_the_future_is_refused(boss, admin_user):
    response = boss.post("/admin/crm/customer/add/", _customer(
        owner=admin_user.pk, joined_at_0="2031-01-05"))
    assert "joined_at: 2031-01-05T10:00:00+08:00 is in the future" in _errors(response)
    assert not Customer.objects.exists()


def test_a_customer_changed_in_the_admin_is_re_evaluated_like_one_changed_by_the_api(
        boss, admin_user):
    response = boss.post("/admin/crm/customer/add/", _customer(owner=admin_user.pk))
    assert response.status_code == 302
    customer = Customer.objects.get(external_id="wm-admin")
    for consumer in ("tagging", "lifecycle"):
        touched_customers_process(consumer)
    changed = boss.post(f"/admin/crm/customer/{customer.pk}/change/",
                        _customer(owner=admin_user.pk, city="上海"))
    assert changed.status_code == 302
    customer.refresh_from_db()
    assert customer.city == "上海"
    # The change is a touch (crm's service on SQLite, the triggers on PostgreSQL) that the tag
    # rules and the stage models read next.
    assert set(CustomerTouch.objects.values_list("customer_id", flat=True)) >= {customer.pk}
    waiting = touches_waiting()
    assert waiting["tagging"] >= 1 and waiting["lifecycle"] >= 1


def test_a_negative_channel_cost_is_refused(boss):
    response = boss.post("/admin/crm/channel/add/", {
        "code": "qr", "name": "扫码", "kind": "other", "cost": "-5", "description": "",
        "active": "on"})
    assert "cost" in response.context["adminform"].form.errors
    assert not Channel.objects.exists()


def test_the_outreach_policy_is_saved_by_its_service(boss):
    policy = OutreachPolicy.objects.first() or OutreachPolicy.objects.create()
    page = boss.get(f"/admin/campaigns/outreachpolicy/{policy.pk}/change/")
    form = page.context["adminform"].form
    data = {name: ("on" if value is True else "" if value is False else value)
            for name, value in form.initial.items() if name in form.fields}
    data["promo_max_per_month"] = 2
    response = boss.post(f"/admin/campaigns/outreachpolicy/{policy.pk}/change/", data)
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.promo_max_per_month == 2


# --- Facts are shown, not written ----------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "crm/event", "crm/order", "crm/orderitem", "crm/groupmembership", "tagging/customertag",
    "tagging/tagchange", "tagging/tagrulerun", "tagging/bulktagjob", "lifecycle/customerstage",
    "lifecycle/stagetransition", "campaigns/message", "campaigns/enrollment",
    "campaigns/operatortask",
])
def test_facts_and_history_cannot_be_added_in_the_admin(boss, path):
    assert boss.get(f"/admin/{path}/").status_code == 200
    assert boss.get(f"/admin/{path}/add/").status_code == 403


def test_every_admin_page_opens(boss, admin_user, value_model):
    """Each registered model's list, its add page (or a 403 for facts) and the change page of
    one of its rows, with the built-in data and a customer with facts."""
    from django.contrib import admin as django_admin

    from crm import services as crm_services

    crm_services.events_ingest(actor=admin_user, items=[
        {"customer": "wm-page", "type": "friend_added", "idempotency_key": "p1"},
        {"customer": "wm-page", "type": "group_joined", "idempotency_key": "p2",
         "data": {"group": "chat-p"}}])
    crm_services.orders_ingest(actor=admin_user, items=[
        {"customer": "wm-page", "external_id": "p-o", "source": "store", "amount": "10.00",
         "items": [{"sku": "s", "name": "n", "category": "c", "quantity": 1, "price": "10"}]}])
    for model in django_admin.site._registry:
        base = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        assert boss.get(base).status_code == 200, base
        assert boss.get(f"{base}add/").status_code in (200, 403), base
        row = model.objects.first()
        if row is not None:
            assert boss.get(f"{base}{row.pk}/change/").status_code == 200, base
