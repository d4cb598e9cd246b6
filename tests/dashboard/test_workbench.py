"""The workbench (home): figures, the 30-day trend, what needs attention, the to-dos due and a
funnel per stage model, each as the reader's role allows."""

import importlib
from datetime import timedelta

import pytest
from django.apps import apps as django_apps
from django.utils import timezone

from campaigns.models import Campaign, Message, OperatorTask, Sop, SopStep
from crm.models import CustomerImport
from lifecycle.models import CustomerStage, Stage
from tagging.models import BulkTagJob
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def stages(db):
    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(django_apps, None)
    return {f"{s.model.key}:{s.key}": s for s in Stage.objects.select_related("model")}


def _task(user, title, kind="follow_up", due=None, **fields):
    return OperatorTask.objects.create(assignee=user, kind=kind, title=title,
                                       due_at=due or timezone.now(), dedupe_key=title, **fields)


def test_anonymous_readers_are_sent_to_sign_in(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_alerts_show_what_needs_attention_within_the_readers_scope(
        reader, operator, other_operator, admin_user, stages):
    mine = CustomerFactory(owner=operator)
    theirs = CustomerFactory(owner=other_operator)
    stage = stages["value:mature"]
    sop = Sop.objects.create(name="成熟期关怀", model=stage.model, stage=stage)
    SopStep.objects.create(sop=sop, order=2, template="hi", paused=True,
                           paused_reason="too many blocks")
    Campaign.objects.create(name="双十二", condition={"field": "city", "op": "eq", "value": "x"},
                            template="hi", status="sending", paused=True)
    for index, customer in enumerate([mine, theirs, theirs]):
        Message.objects.create(customer=customer, channel="sms", category="content",
                               content="x", status="failed", due_at=timezone.now(),
                               dedupe_key=f"f{index}")
    _task(operator, "王芳 is going quiet", kind="churn_warning")
    _task(other_operator, "李雷 is going quiet", kind="churn_warning")
    BulkTagJob.objects.create(actor=operator, add=[1], total=400, processed=100,
                              status="running")
    upload = CustomerImport.objects.create(actor=operator, name="客户.csv", content=b"x",
                                           status="running", total_rows=200, next_row=150)
    CustomerImport.objects.create(actor=other_operator, name="别人.csv", content=b"x",
                                  status="running", total_rows=10)

    page = reader(operator).get("/").content.decode()
    assert "1 SOP step paused itself" in page and "成熟期关怀 #2" in page
    assert "1 campaign paused itself" in page
    assert "1 churn warning to act on" in page
    assert "1 message failed in the last 7 days" in page           # only my customer's
    assert "2 bulk jobs running" in page and "width: 25%" in page       # not the other's
    assert f'href="/imports/{upload.pk}/"' in page and "width: 75%" in page

    admin_page = reader(admin_user).get("/").content.decode()
    assert "2 churn warnings to act on" in admin_page
    assert "3 messages failed in the last 7 days" in admin_page
    assert "3 bulk jobs running" in admin_page


def test_nothing_to_do_says_so(reader, operator):
    page = reader(operator).get("/").content.decode()
    assert "data-alerts-empty" in page and "No to-dos due today." in page


def test_the_todos_due_today_overdue_first(reader, operator, other_operator):
    now = timezone.now()
    _task(operator, "昨天该回访", due=now - timedelta(days=1))
    _task(operator, "今天回访", due=now)
    _task(operator, "下周再说", due=now + timedelta(days=7))
    _task(other_operator, "别人的", due=now)
    page = reader(operator).get("/").content.decode()
    todos = page.split('id="todos"')[1]
    assert todos.index("昨天该回访") < todos.index("今天回访")
    assert "下周再说" not in todos and "别人的" not in todos
    assert "2 open" in todos


def test_one_funnel_per_active_model_by_stage_names(reader, admin_user, stages):
    customer = CustomerFactory(owner=admin_user)
    mature = stages["value:mature"]
    CustomerStage.objects.create(customer=customer, model=mature.model, stage=mature,
                                 entered_at=timezone.now(), source="rule")
    page = reader(admin_user).get("/").content.decode()
    funnels = page.split('id="funnels"')[1].split("</section>")[0]
    for model in ("journey", "value", "aipl"):
        assert f'data-funnel="{model}"' in funnels
    assert mature.name in funnels and 'id="funnel-value"' in funnels


def test_analysts_see_figures_but_no_customers_or_todos(reader, analyst, operator):
    CustomerFactory(owner=operator, name="秘密客户")
    _task(analyst, "分析师的待办")
    page = reader(analyst).get("/").content.decode()
    assert 'data-figure="total"' in page and 'id="trend"' in page
    assert "秘密客户" not in page and 'id="todos"' not in page


def test_the_page_costs_a_bounded_number_of_queries(reader, operator, stages,
                                                    django_assert_max_num_queries):
    for index in range(30):
        customer = CustomerFactory(owner=operator)
        _task(operator, f"待办{index}")
        Message.objects.create(customer=customer, channel="sms", category="content",
                               content="x", status="failed", due_at=timezone.now(),
                               dedupe_key=f"q{index}")
    client = reader(operator)
    client.get("/")                                   # the reports are cached from here
    # A fixed number: a query per model's funnel, per kind of alert and of bulk job.
    with django_assert_max_num_queries(19):
        client.get("/")
