"""The SOP pages: the list per model with each step's figures, the editor (timing, channel,
category, template, extra condition), the stage guard refused inline and overridden on the
record, and resuming a paused step."""

import importlib

import pytest
from django.apps import apps as django_apps

from campaigns.models import Message, Sop, SopStep
from lifecycle.models import Stage
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def stages(db):
    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(django_apps, None)
    return {f"{s.model.key}:{s.key}": s for s in Stage.objects.select_related("model")}


@pytest.fixture
def sop(stages, admin_user):
    mature = stages["value:mature"]
    sop = Sop.objects.create(name="成熟期关怀", model=mature.model, stage=mature,
                             created_by=admin_user)
    SopStep.objects.create(sop=sop, order=1, delay_minutes=60, channel="console",
                           category="content", template="{{ name }}，新品到了")
    return sop


def _post(**fields):
    data = {"name": "意向跟进", "description": "", "stage": "value:growth", "active": "1",
            "holdout_percent": "0", "goal": "", "step_count": "1",
            "step-0-order": "1", "step-0-timing": "delay", "step-0-delay": "2",
            "step-0-unit": "hours", "step-0-day": "", "step-0-at_time": "",
            "step-0-channel": "console", "step-0-category": "content",
            "step-0-template": "{{ name }}您好", "step-0-condition": ""}
    data.update(fields)
    return data


@pytest.mark.parametrize("method, path", [
    ("get", "/sops/"), ("get", "/sops/new/"), ("get", "/sops/{pk}/"),
    ("post", "/sops/{pk}/delete/"), ("post", "/sops/steps/{step}/resume/")])
def test_anonymous_readers_are_sent_to_sign_in(client, sop, method, path):
    response = getattr(client, method)(path.format(pk=sop.pk, step=sop.steps.get().pk))
    assert response.status_code == 302 and response["Location"].startswith("/login/")


@pytest.mark.parametrize("role", ["operator", "analyst"])
def test_everyone_reads_only_admins_change(reader, request, sop, role):
    client = reader(request.getfixturevalue(role))
    assert client.get("/sops/").status_code == 200
    page = client.get(f"/sops/{sop.pk}/").content.decode()
    assert "成熟期关怀" in page and "Save SOP" not in page
    assert client.post(f"/sops/{sop.pk}/", _post()).status_code == 403
    assert client.post(f"/sops/{sop.pk}/delete/").status_code == 403
    assert Sop.objects.get(pk=sop.pk).name == "成熟期关怀"


def test_an_admin_creates_an_sop_with_both_kinds_of_timing(reader, admin_user, stages):
    client = reader(admin_user)
    response = client.post("/sops/new/", _post(**{
        "step_count": "2", "step-1-order": "2", "step-1-timing": "day", "step-1-day": "3",
        "step-1-at_time": "20:00", "step-1-delay": "", "step-1-unit": "hours",
        "step-1-channel": "wecom", "step-1-category": "service",
        "step-1-template": "第三天晚上好", "step-1-condition":
            '{"field": "orders_count", "op": "gte", "value": 1}'}))
    sop = Sop.objects.get(name="意向跟进")
    assert response.status_code == 302 and response["Location"] == f"/sops/{sop.pk}/"
    first, third = sop.steps.order_by("order")
    assert (sop.model.key, sop.stage.key) == ("value", "growth")
    assert first.delay_minutes == 120 and first.day is None
    assert third.day == 3 and third.at_time.strftime("%H:%M") == "20:00"
    assert third.condition == {"field": "orders_count", "op": "gte", "value": 1}
    page = client.get(response["Location"]).content.decode()
    assert "SOP “意向跟进” saved." in page and 'value="2" ' in page


def test_add_a_step_redraws_without_saving(reader, admin_user, stages):
    page = reader(admin_user).post("/sops/new/", _post(add_step="1")).content.decode()
    assert "Step 2" in page and 'name="step-1-template"' in page
    assert not Sop.objects.filter(name="意向跟进").exists()


def test_the_stage_guard_is_refused_inline_and_an_admin_overrides_on_the_record(
        reader, admin_user, stages):
    client = reader(admin_user)
    refused = client.post("/sops/new/", _post(**{"stage": "value:intro",
                                                 "step-0-category": "promotional"}))
    page = refused.content.decode()
    assert refused.status_code == 400
    assert "promotional messages to customers in value:intro are refused" in page
    assert 'value="意向跟进"' in page                               # what was typed is kept
    client.post("/sops/new/", _post(**{"stage": "value:intro", "step-0-category": "promotional",
                                       "override_stage_guard": "1"}))
    sop = Sop.objects.get(name="意向跟进")
    assert sop.override_stage_guard and sop.overridden_by == admin_user
    assert "data-guard-override" in client.get(f"/sops/{sop.pk}/").content.decode()


@pytest.mark.parametrize("fields, message", [
    ({"step-0-template": "{% for a in b %}{% for c in d %}{% for e in f %}x{% endfor %}"
                         "{% endfor %}{% endfor %}"}, "steps[0].template"),
    ({"step-0-condition": '{"field": "nope"}'}, "steps[0].condition"),
    ({"step-0-condition": "{"}, "step 1, extra condition: not valid JSON"),
    ({"step-0-timing": "day", "step-0-day": "2", "step-0-at_time": "晚上"},
     "step 1: a time of day, HH:MM"),
    ({"stage": ""}, "stage: choose the stage the SOP follows"),
    ({"step-0-remove": "1"}, "steps: an SOP sends at least one step"),
])
def test_a_refused_sop_names_what_is_wrong(reader, admin_user, stages, fields, message):
    response = reader(admin_user).post("/sops/new/", _post(**fields))
    assert response.status_code == 400 and message in response.content.decode()
    assert not Sop.objects.filter(name="意向跟进").exists()


def test_removing_a_step(reader, admin_user, sop):
    SopStep.objects.create(sop=sop, order=2, delay_minutes=0, channel="console",
                           category="content", template="第二步")
    first = sop.steps.get(order=1)
    reader(admin_user).post(f"/sops/{sop.pk}/", _post(**{
        "name": "成熟期关怀", "stage": "value:mature", "step_count": "2",
        "step-0-pk": str(first.pk), "step-0-template": "第一步", "step-0-remove": "1",
        "step-1-order": "2", "step-1-timing": "delay", "step-1-delay": "0",
        "step-1-unit": "minutes", "step-1-channel": "console", "step-1-category": "content",
        "step-1-template": "第二步", "step-1-condition": ""}))
    assert list(sop.steps.values_list("template", flat=True)) == ["第二步"]


def test_a_paused_step_shows_why_and_an_admin_resumes_it(reader, admin_user, operator, sop):
    step = sop.steps.get()
    SopStep.objects.filter(pk=step.pk).update(paused=True,
                                              paused_reason="3 of 10 customers deleted us")
    page = reader(admin_user).get("/sops/").content.decode()
    assert "3 of 10 customers deleted us" in page and "Resume" in page
    assert reader(operator).post(f"/sops/steps/{step.pk}/resume/").status_code == 403
    response = reader(admin_user).post(f"/sops/steps/{step.pk}/resume/", follow=True)
    assert "Step 1 of “成熟期关怀” sends again." in response.content.decode()
    step.refresh_from_db()
    assert not step.paused and step.counted_since is not None


def test_the_list_shows_sends_and_blocks_per_step(reader, admin_user, sop):
    from django.utils import timezone

    step = sop.steps.get()
    for index in range(4):
        customer = CustomerFactory(owner=admin_user)
        Message.objects.create(customer=customer, channel="console", category="content",
                               content="x", sop_step=step, due_at=timezone.now(),
                               sent_at=timezone.now(), status="sent", dedupe_key=f"m{index}")
    page = reader(admin_user).get("/sops/").content.decode()
    assert '<td class="num">4</td><td class="num">0</td>' in page
    assert "1 h after entry" in page


def test_an_sop_with_history_is_kept_when_deleted(reader, admin_user, sop):
    from django.utils import timezone

    sop.enrollments.create(customer=CustomerFactory(), entered_at=timezone.now())
    response = reader(admin_user).post(f"/sops/{sop.pk}/delete/", follow=True)
    assert "deactivate it" in response.content.decode()
    assert Sop.objects.filter(pk=sop.pk).exists()


def test_the_pages_cost_a_fixed_number_of_queries(reader, admin_user, stages,
                                                  django_assert_max_num_queries):
    for index in range(8):
        stage = stages["value:mature" if index % 2 else "journey:trust"]
        sop = Sop.objects.create(name=f"SOP{index}", model=stage.model, stage=stage)
        for order in (1, 2, 3):
            SopStep.objects.create(sop=sop, order=order, template="hi", channel="console")
    client = reader(admin_user)
    client.get("/sops/")
    with django_assert_max_num_queries(8):
        page = client.get("/sops/").content.decode()
    assert "SOP7" in page
    with django_assert_max_num_queries(10):
        client.get(f"/sops/{sop.pk}/")
