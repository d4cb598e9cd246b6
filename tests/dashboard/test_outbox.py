"""The outbox page: messages by status, channel, skip reason, SOP or campaign, scoped by role;
admins queue failed ones again."""

import itertools
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.models import Campaign, Message, Sop, SopStep
from lifecycle.models import Stage, StageModel
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db

_keys = itertools.count(1)


def sop_with_steps(name: str, steps: int = 1) -> Sop:
    model, _created = StageModel.objects.get_or_create(key="outbox-test",
                                                       defaults={"name": "测试模型"})
    stage, _created = Stage.objects.get_or_create(model=model, key="s1",
                                                  defaults={"name": "阶段一"})
    sop = Sop.objects.create(name=name, model=model, stage=stage)
    for order in range(1, steps + 1):
        SopStep.objects.create(sop=sop, order=order, template="你好")
    return sop


def campaign(name: str) -> Campaign:
    return Campaign.objects.create(name=name, condition={"all": []}, template="x",
                                   status="sending")


def message(customer, **fields) -> Message:
    values = {"channel": "wecom", "category": "content", "content": "hello",
              "due_at": timezone.now() - timedelta(hours=1), "dedupe_key": f"ob:{next(_keys)}",
              **fields}
    return Message.objects.create(customer=customer, **values)


def shown(response) -> set[int]:
    """The ids of the messages in the page's table."""
    assert response.status_code == 200
    return {int(pk) for pk in re.findall(r'data-message="(\d+)"', response.content.decode())}


@pytest.fixture
def outbox(operator, other_operator):
    mine = CustomerFactory(owner=operator, name="王芳")
    theirs = CustomerFactory(owner=other_operator, name="李雷")
    welcome = sop_with_steps("新人欢迎", steps=2)
    sale = campaign("618 大促")
    return {
        "mine": mine, "theirs": theirs, "sop": welcome, "campaign": sale,
        "sent": message(mine, status="sent", sent_at=timezone.now(),
                        sop_step=welcome.steps.get(order=1)),
        "failed": message(mine, status="failed", attempts=3, channel="sms",
                          last_error="gateway refused: number unreachable " * 5,
                          campaign=sale),
        "skipped": message(mine, status="skipped", skip_reason="frequency_cap",
                           campaign=sale),
        "queued": message(mine, sop_step=welcome.steps.get(order=2),
                          due_at=timezone.now() + timedelta(hours=2)),
        "theirs_failed": message(theirs, status="failed", attempts=3, last_error="timeout",
                                 campaign=sale),
        "theirs_sent": message(theirs, status="sent", sent_at=timezone.now()),
    }


def ids(outbox, *names) -> set[int]:
    return {outbox[name].pk for name in names}


# --- Who sees what ----------------------------------------------------------------------------

def test_anonymous_visitors_are_sent_to_sign_in(client):
    response = client.get("/outbox/?status=failed")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")
    assert client.post("/outbox/retry/", {"ids": ["1"]})["Location"].startswith("/login/")


def test_analysts_see_aggregates_only(reader, analyst):
    assert reader(analyst).get("/outbox/").status_code == 403


def test_an_operator_sees_only_their_customers_messages(reader, operator, outbox):
    response = reader(operator).get("/outbox/")
    assert shown(response) == ids(outbox, "sent", "failed", "skipped", "queued")
    page = response.content.decode()
    assert "王芳" in page and "李雷" not in page
    assert 'name="ids"' not in page and "Retry selected" not in page     # admins only
    # Newest due first.
    assert page.index(f'data-message="{outbox["queued"].pk}"') < page.index(
        f'data-message="{outbox["sent"].pk}"')


def test_an_admin_sees_every_message_with_names_not_keys(reader, admin_user, outbox):
    response = reader(admin_user).get("/outbox/")
    assert shown(response) == ids(outbox, "sent", "failed", "skipped", "queued",
                                  "theirs_failed", "theirs_sent")
    page = response.content.decode()
    assert f'href="/customers/{outbox["mine"].pk}/"' in page
    assert "新人欢迎" in page and "#2" in page and "618 大促" in page
    assert "Frequency cap" in page and "frequency_cap</td>" not in page
    assert "SMS" in page and "WeCom" in page and "Content" in page
    # The last error shortened, its full text in the title.
    assert 'title="gateway refused: number unreachable gateway' in page
    visible = re.sub(r'title="[^"]*"', "", page)
    assert "gateway refused: number" in visible
    assert "gateway refused: number unreachable " * 5 not in visible
    # A tick box for each failed message only.
    ticks = set(map(int, re.findall(r'name="ids" value="(\d+)"', page)))
    assert ticks == ids(outbox, "failed", "theirs_failed")
    assert "Retry selected" in page and "Retry all failed (2)" in page


# --- Filters and counts -----------------------------------------------------------------------

def test_filters_narrow_the_table(reader, admin_user, outbox):
    client = reader(admin_user)
    assert shown(client.get("/outbox/?status=failed")) == ids(outbox, "failed", "theirs_failed")
    assert shown(client.get("/outbox/?channel=sms")) == ids(outbox, "failed")
    assert shown(client.get("/outbox/?skip_reason=frequency_cap")) == ids(outbox, "skipped")
    assert shown(client.get(f"/outbox/?campaign={outbox['campaign'].pk}")) == ids(
        outbox, "failed", "skipped", "theirs_failed")
    assert shown(client.get(f"/outbox/?sop={outbox['sop'].pk}")) == ids(outbox, "sent",
                                                                          "queued")
    assert shown(client.get(f"/outbox/?campaign={outbox['campaign'].pk}&status=failed")) == ids(
        outbox, "failed", "theirs_failed")
    # A stale or hand-edited filter is ignored rather than an error.
    assert shown(client.get("/outbox/?status=nonsense&sop=abc")) == ids(
        outbox, "sent", "failed", "skipped", "queued", "theirs_failed", "theirs_sent")


def test_the_pickers_show_names(reader, admin_user, outbox):
    page = reader(admin_user).get("/outbox/").content.decode()
    assert f'<option value="{outbox["sop"].pk}">新人欢迎 · 阶段一</option>' in page
    assert f'<option value="{outbox["campaign"].pk}">618 大促</option>' in page
    assert '<option value="frequency_cap">Frequency cap</option>' in page
    assert '<optgroup label="测试模型">' in page


def test_status_counts_follow_the_other_filters(reader, operator, admin_user, outbox):
    context = reader(admin_user).get("/outbox/?status=failed").context
    assert context["counts"] == {"queued": 1, "sending": 0, "submitted": 0, "sent": 2,
                                 "delivered": 0, "read": 0, "replied": 0, "failed": 2,
                                 "skipped": 1}
    tabs = {tab["status"]: tab["count"] for tab in context["tabs"]}
    assert tabs[""] == 6 and tabs["failed"] == 2
    assert context["page_obj"].paginator.count == 2

    context = reader(operator).get(f"/outbox/?campaign={outbox['campaign'].pk}").context
    assert {k: v for k, v in context["counts"].items() if v} == {"failed": 1, "skipped": 1}
    page = reader(operator).get("/outbox/").content.decode()
    assert re.search(r'data-status="failed"[^>]*>\s*Failed <span class="outbox-count">1</span>',
                     page)


def test_pagination_keeps_the_filters(reader, operator):
    customer = CustomerFactory(owner=operator)
    sale = campaign("双十一")
    for n in range(60):
        message(customer, status="failed", campaign=sale, due_at=timezone.now()
                - timedelta(minutes=n))
    message(customer, status="sent")
    client = reader(operator)
    first = client.get(f"/outbox/?status=failed&campaign={sale.pk}")
    assert len(shown(first)) == 50
    page = first.content.decode().replace("&amp;", "&")
    assert f"?status=failed&campaign={sale.pk}&page=2" in page
    second = client.get(f"/outbox/?status=failed&campaign={sale.pk}&page=2")
    assert len(shown(second)) == 10
    assert shown(first).isdisjoint(shown(second))


# --- Retry ------------------------------------------------------------------------------------

def _kicks(monkeypatch) -> list:
    calls = []
    monkeypatch.setattr("campaigns.services._kick_dispatch", lambda: calls.append(1))
    return calls


def test_an_admin_retries_the_ticked_failed_messages(reader, admin_user, outbox, monkeypatch,
                                                     django_capture_on_commit_callbacks):
    kicks = _kicks(monkeypatch)
    client = reader(admin_user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/outbox/retry/", {
            "ids": [outbox["failed"].pk, outbox["sent"].pk],
            "next": "/outbox/?status=failed"})
    assert response.status_code == 302 and response["Location"] == "/outbox/?status=failed"
    retried = Message.objects.get(pk=outbox["failed"].pk)
    assert (retried.status, retried.attempts, retried.last_error, retried.claimed_at) == (
        "queued", 0, "", None)
    assert retried.due_at > timezone.now() - timedelta(minutes=1)
    assert Message.objects.get(pk=outbox["sent"].pk).status == "sent"     # not touched
    assert Message.objects.get(pk=outbox["theirs_failed"].pk).status == "failed"
    assert kicks == [1]
    page = client.get(response["Location"]).content.decode()
    assert "1 failed message queued again." in page


def test_an_admin_retries_every_failed_message_of_a_filter(reader, admin_user, outbox,
                                                           monkeypatch):
    _kicks(monkeypatch)
    other = campaign("other")
    elsewhere = message(outbox["mine"], status="failed", campaign=other)
    response = reader(admin_user).post("/outbox/retry/", {
        "all_failed": "1", "campaign": outbox["campaign"].pk,
        "next": f"/outbox/?campaign={outbox['campaign'].pk}"})
    assert response.status_code == 302
    statuses = dict(Message.objects.values_list("pk", "status"))
    assert statuses[outbox["failed"].pk] == statuses[outbox["theirs_failed"].pk] == "queued"
    assert statuses[elsewhere.pk] == "failed"
    assert statuses[outbox["skipped"].pk] == "skipped"
    assert "2 failed messages queued again." in reader(admin_user).get(
        response["Location"]).content.decode()


def test_retry_without_a_choice_says_so(reader, admin_user, outbox):
    client = reader(admin_user)
    response = client.post("/outbox/retry/", {"next": "https://evil.example/"})
    assert response["Location"] == "/outbox/"
    assert "Tick the failed messages to retry" in client.get("/outbox/").content.decode()
    client.post("/outbox/retry/", {"ids": ["x"]})
    assert "Message ids are numbers." in client.get("/outbox/").content.decode()
    response = client.post("/outbox/retry/", {"ids": ["9" * 30]})      # no such message
    assert response.status_code == 302
    assert "No failed message to retry" in client.get("/outbox/").content.decode()
    assert client.get("/outbox/?campaign=" + "9" * 30).status_code == 200
    assert Message.objects.filter(status="failed").count() == 2


@pytest.mark.parametrize("role", ["operator", "analyst"])
def test_only_admins_may_retry(request, reader, outbox, role):
    client = reader(request.getfixturevalue(role))
    response = client.post("/outbox/retry/", {"ids": [outbox["failed"].pk]})
    assert response.status_code == 403
    response = client.post("/outbox/retry/", {"all_failed": "1"})
    assert response.status_code == 403
    assert Message.objects.filter(status="failed").count() == 2


# --- Cost -------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["admin_user", "operator"])
def test_the_page_does_not_query_per_row(request, reader, operator, other_operator,
                                         django_assert_max_num_queries, role):
    customers = [CustomerFactory(owner=owner) for owner in (operator, other_operator) * 3]
    sops = [sop_with_steps(f"SOP {n}", steps=2) for n in range(4)]
    campaigns = [campaign(f"活动 {n}") for n in range(4)]
    for n in range(40):
        source = ({"sop_step": sops[n % 4].steps.get(order=n % 2 + 1)} if n % 2
                  else {"campaign": campaigns[n % 4]})
        message(customers[n % len(customers)], status=["sent", "failed", "skipped"][n % 3],
                **source)
    client = reader(request.getfixturevalue(role))
    # Session, user, role, status counts, one page of rows, the SOP and campaign pickers.
    with django_assert_max_num_queries(8):
        response = client.get("/outbox/")
    assert len(shown(response)) == (40 if role == "admin_user" else 20)
