"""Today's outreach: an operator's open to-dos and the messages going out today."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from campaigns.models import Message, OperatorTask
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


def _client(user) -> Client:
    client = Client(HTTP_ACCEPT_LANGUAGE="en")
    client.force_login(user)
    return client


def _task(user, customer, title, **fields):
    return OperatorTask.objects.create(
        assignee=user, customer=customer, kind=fields.pop("kind", "follow_up"), title=title,
        due_at=fields.pop("due_at", timezone.now()), dedupe_key=title, **fields)


def test_an_operator_sees_own_todos_and_todays_messages(operator, other_operator):
    mine = CustomerFactory(owner=operator, name="王芳")
    theirs = CustomerFactory(owner=other_operator, name="李雷")
    _task(operator, mine, "回访王芳", body="感谢长期支持")
    _task(other_operator, theirs, "回访李雷")
    _task(operator, mine, "下周再联系", due_at=timezone.now() + timedelta(days=3))
    Message.objects.create(customer=mine, channel="wecom", category="content",
                           content="王芳，新品到了", due_at=timezone.now() + timedelta(minutes=5),
                           dedupe_key="m1")
    Message.objects.create(customer=theirs, channel="wecom", category="content",
                           content="李雷，新品到了", due_at=timezone.now(), dedupe_key="m2")

    page = _client(operator).get("/today/").content.decode()
    assert "回访王芳" in page and "感谢长期支持" in page
    assert "回访李雷" not in page          # someone else's to-do
    assert "下周再联系" not in page        # not due today
    assert "王芳，新品到了" in page and "李雷，新品到了" not in page


def test_done_and_skip_close_a_todo(operator):
    customer = CustomerFactory(owner=operator)
    task = _task(operator, customer, "回访")
    client = _client(operator)
    response = client.post(f"/tasks/{task.pk}/close/", {"status": "done"})
    assert response.status_code == 302
    task.refresh_from_db()
    assert task.status == "done" and task.closed_at is not None
    assert "回访" not in client.get("/today/").content.decode().split("My to-dos")[1]


def test_closing_someone_elses_todo_is_refused(operator, other_operator):
    task = _task(other_operator, CustomerFactory(owner=other_operator), "别人的")
    _client(operator).post(f"/tasks/{task.pk}/close/", {"status": "done"})
    task.refresh_from_db()
    assert task.status == "open"


def test_analysts_have_no_todo_page(analyst):
    assert _client(analyst).get("/today/").status_code == 403


def test_the_cards_add_up_to_the_messages_due_today_whatever_receipts_said(operator):
    customer = CustomerFactory(owner=operator)
    noon = timezone.localtime().replace(hour=12, minute=0, second=0, microsecond=0)
    for n, status in enumerate(["queued", "sending", "sent", "delivered", "read", "replied",
                                "skipped", "failed"]):
        Message.objects.create(customer=customer, channel="wecom", category="content",
                               content="x", due_at=noon, status=status, dedupe_key=f"c{n}")

    context = _client(operator).get("/today/").context
    assert context["total_today"] == 8
    assert context["counts"] == {"queued": 2, "sent": 4, "skipped": 1, "failed": 1}
    assert sum(context["counts"].values()) == context["total_today"]
