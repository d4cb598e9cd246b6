"""The customer page as an operator's working sheet: notes (in the timeline too), orders,
messages with why one was not sent, the SOPs under way with the next step, time in each
stage — scoped like the API, in a bounded number of queries."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from campaigns.models import Enrollment, Message, Sop
from crm.models import CustomerNote, Order
from lifecycle.models import CustomerStage, Stage, StageModel
from lifecycle.services import customer_stage_move
from tests.factories import CustomerFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def lin(wang):
    return CustomerFactory(owner=wang, name="林小姐", external_id="wm-lin")


def test_a_note_is_added_shown_and_in_the_timeline(reader, wang, lin):
    client = reader(wang)
    response = client.post(f"/customers/{lin.pk}/notes/", {"text": "电话回访：想要敏感肌产品"})
    assert response.status_code == 302 and response["Location"].endswith("#notes")

    page = client.get(f"/customers/{lin.pk}/").content.decode()
    assert "电话回访：想要敏感肌产品" in page
    timeline = [e for e in client.get(f"/customers/{lin.pk}/").context["entries"]
                if e["kind"] == "note"]
    assert [(e["title"], e["detail"]) for e in timeline] == [
        ("Note by 王芳", "电话回访：想要敏感肌产品")]


def test_with_htmx_the_notes_panel_comes_back_alone(reader, wang, lin):
    client = reader(wang)
    response = client.post(f"/customers/{lin.pk}/notes/", {"text": "第二次联系"},
                           HTTP_HX_REQUEST="true")
    fragment = response.content.decode()
    assert response.status_code == 200
    assert fragment.startswith('<section class="panel" id="notes">') and "<html" not in fragment
    assert "第二次联系" in fragment and "王芳" in fragment

    empty = client.post(f"/customers/{lin.pk}/notes/", {"text": "   "}, HTTP_HX_REQUEST="true")
    assert "text: write the note" in empty.content.decode()
    assert CustomerNote.objects.count() == 1


def test_notes_are_scoped_like_the_customer(reader, wang, lin, analyst):
    other = UserFactory(username="op_li", roles=["operator"])
    assert reader(other).post(f"/customers/{lin.pk}/notes/", {"text": "x"}).status_code == 404
    assert reader(analyst).post(f"/customers/{lin.pk}/notes/", {"text": "x"}).status_code == 403
    assert not CustomerNote.objects.exists()


def test_notes_through_the_api(api_client_for, wang, lin):
    api = api_client_for(wang)
    created = api.post(f"/api/v1/customers/{lin.pk}/notes/", {"text": "喜欢周末联系"},
                       format="json")
    assert created.status_code == 201
    assert (created.json()["text"], created.json()["author"]) == ("喜欢周末联系", "op_wang")
    listed = api.get(f"/api/v1/customers/{lin.pk}/notes/").json()
    assert [n["text"] for n in listed["results"]] == ["喜欢周末联系"]
    assert api.post(f"/api/v1/customers/{lin.pk}/notes/", {"text": ""},
                    format="json").status_code == 400
    other = api_client_for(UserFactory(username="op_li", roles=["operator"]))
    assert other.get(f"/api/v1/customers/{lin.pk}/notes/").status_code == 404


def test_the_page_shows_orders_messages_and_the_sops_under_way(reader, wang, lin):
    now = timezone.now()
    Order.objects.create(customer=lin, source="youzan", external_id="yz-1",
                         amount=Decimal("199.00"), status="paid", placed_at=now)
    Order.objects.create(customer=lin, source="youzan", external_id="yz-2",
                         amount=Decimal("99.00"), status="refunded", placed_at=now)
    sop = Sop.objects.filter(model__key="value", stage__key="growth").first()
    steps = list(sop.steps.order_by("order"))
    enrolment = Enrollment.objects.create(sop=sop, customer=lin, entered_at=now)
    Message.objects.create(customer=lin, sop_step=steps[0], enrollment=enrolment,
                           channel="wecom", category="content", content="林小姐，最近好吗",
                           status="sent", sent_at=now, due_at=now, dedupe_key="m1")
    Message.objects.create(customer=lin, sop_step=steps[1], enrollment=enrolment,
                           channel="wecom", category="promotional", status="skipped",
                           skip_reason="frequency_cap", due_at=now, dedupe_key="m2")
    Message.objects.create(customer=lin, sop_step=steps[-1], enrollment=enrolment,
                           channel="wecom", category="content", status="queued",
                           due_at=now + timedelta(days=2), dedupe_key="m3")
    model = StageModel.objects.get(key="value")
    customer_stage_move(customer=lin, model=model, stage=Stage.objects.get(model=model,
                                                                           key="growth"),
                        reason="回访后判断", actor=wang)

    CustomerStage.objects.filter(customer=lin, model=model).update(
        entered_at=now - timedelta(days=3, hours=1))

    response = reader(wang).get(f"/customers/{lin.pk}/")
    page = response.content.decode()
    assert 'data-order="yz-1"' in page and "Refunded" in page
    assert "林小姐，最近好吗" in page and "Frequency cap" in page
    assert f"step {steps[-1].order} at" in page and sop.name in page
    assert "(3\xa0days, 1\xa0hour)" in page                  # time in the stage


def test_the_page_reads_in_a_bounded_number_of_queries(reader, wang, lin):
    """As many queries with 60 orders, notes and messages as with 30: nothing per row."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def add(start: int) -> None:
        now = timezone.now()
        for n in range(start, start + 30):
            Order.objects.create(customer=lin, source="store", external_id=f"o{n}",
                                 amount=Decimal("10.00"), status="paid", placed_at=now)
            CustomerNote.objects.create(customer=lin, author=wang, text=f"note {n}")
            Message.objects.create(customer=lin, channel="wecom", category="content",
                                   status="sent", sent_at=now, due_at=now, dedupe_key=f"q{n}")

    client = reader(wang)
    counts = []
    for start in (0, 30):
        add(start)
        client.get(f"/customers/{lin.pk}/")                   # warm the session
        with CaptureQueriesContext(connection) as queries:
            assert client.get(f"/customers/{lin.pk}/").status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1] <= 30, counts
