"""Personal-data requests (PIPL): `customers/{id}/export/` gives everything held about one
customer; `customers/{id}/erase/` blanks their personal data and keeps anonymous aggregates;
both audited and for admins only; an erased customer does not come back from a later ingest,
import or sync — only from adding the brand again."""

from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.models import Message, OperatorTask
from core.models import AuditEntry
from crm import services
from crm.models import Customer, CustomerNote, Event, Order
from tagging.models import Tag, TagGroup
from tagging.services import customers_tags_change

pytestmark = pytest.mark.django_db


@pytest.fixture
def lin(admin_user, operator):
    past = timezone.now() - timedelta(days=3)
    services.events_ingest(actor=admin_user, items=[
        {"customer": "wm-lin", "type": "friend_added", "idempotency_key": "add",
         "occurred_at": past.isoformat(),
         "data": {"name": "林小姐", "phone": "13800001111", "city": "杭州",
                  "owner": operator.username}},
        {"customer": "wm-lin", "type": "message_in", "idempotency_key": "msg",
         "data": {"text": "我住在西湖区文三路 8 号"}}])
    services.orders_ingest(actor=admin_user, items=[
        {"customer": "wm-lin", "external_id": "o-1", "source": "youzan", "amount": "268.00",
         "items": [{"sku": "T1", "name": "龙井", "category": "tea", "quantity": 1,
                    "price": "268.00"}]}])
    customer = Customer.objects.get(external_id="wm-lin")
    services.note_add(customer=customer, author=operator, text="她说周末在家")
    tag = Tag.objects.create(group=TagGroup.objects.create(name="兴趣"), name="茶")
    customers_tags_change(customers=Customer.objects.filter(pk=customer.pk), add=[tag],
                          remove=[], actor=operator)
    Message.objects.create(customer=customer, channel="console", category="service",
                           content="林小姐，您的龙井已发货", due_at=timezone.now(),
                           dedupe_key="m1", status="sent", sent_at=timezone.now())
    OperatorTask.objects.create(assignee=operator, customer=customer, kind="follow_up",
                                title="回访林小姐", due_at=timezone.now(), dedupe_key="t1")
    return customer


def test_the_export_holds_everything_about_the_customer(admin_api, admin_user, lin):
    response = admin_api.get(f"/api/v1/customers/{lin.pk}/export/")
    assert response.status_code == 200
    data = response.json()
    assert (data["profile"]["name"], data["profile"]["phone"]) == ("林小姐", "13800001111")
    assert {e["type"] for e in data["events"]} == {"friend_added", "message_in"}
    assert data["orders"][0]["items"][0]["name"] == "龙井"
    assert data["notes"][0]["text"] == "她说周末在家"
    assert data["tags"]["held"][0]["tag__name"] == "茶"
    assert data["outreach"]["messages"][0]["content"] == "林小姐，您的龙井已发货"
    assert data["outreach"]["tasks"][0]["title"] == "回访林小姐"
    assert "stages" in data and "wecom" in data
    entry = AuditEntry.objects.get(action="customer.data_export")
    assert (entry.actor, entry.customer_id) == (admin_user, lin.pk)


@pytest.mark.parametrize("method, path", [("get", "export"), ("post", "erase")])
def test_personal_data_requests_are_for_admins(op_api, operator, lin, method, path):
    response = getattr(op_api, method)(f"/api/v1/customers/{lin.pk}/{path}/")
    assert response.status_code == 403
    assert Customer.objects.get(pk=lin.pk).name == "林小姐"


def test_erasure_blanks_the_person_and_keeps_the_figures(admin_api, admin_user, lin):
    response = admin_api.post(f"/api/v1/customers/{lin.pk}/erase/")
    assert response.status_code == 200, response.json()
    customer = Customer.objects.get(pk=lin.pk)
    assert (customer.name, customer.phone, customer.city, customer.attributes) == ("", "", "",
                                                                                   {})
    assert customer.external_id == f"erased:{lin.pk}" and customer.opted_out
    assert not Event.objects.filter(customer=customer).exclude(data={}).exists()
    assert not CustomerNote.objects.filter(customer=customer).exists()
    assert Message.objects.get(customer=customer).content == ""
    assert "林" not in OperatorTask.objects.get(customer=customer).title
    # The anonymous aggregates stay: orders and their amounts, the events' types and times.
    assert str(Order.objects.get(customer=customer).amount) == "268.00"
    assert Event.objects.filter(customer=customer).count() == 2
    assert customer.orders_count == 1
    entry = AuditEntry.objects.get(action="customer.erase")
    assert (entry.actor, entry.customer_id) == (admin_user, lin.pk)
    assert admin_api.post(f"/api/v1/customers/{lin.pk}/erase/").status_code == 400


def test_the_erased_customer_does_not_come_back_from_a_later_ingest(admin_api, admin_user,
                                                                    lin):
    admin_api.post(f"/api/v1/customers/{lin.pk}/erase/")
    # Facts sent later under the old id find no customer …
    report = services.events_ingest(actor=admin_user, items=[
        {"customer": "wm-lin", "type": "message_in", "idempotency_key": "late"}])
    assert report.accepted == 0 and "unknown customer" in report.rejected[0]["message"]
    # … an import or a sync does not recreate them …
    imported = services.customers_upsert(rows=[{"external_id": "wm-lin", "name": "林"}],
                                         actor=admin_user)
    assert imported.accepted == 0 and "erased on request" in imported.rejected[0]["message"]
    # … nor does a replay of the old friend_added.
    replay = services.events_ingest(actor=admin_user, items=[
        {"customer": "wm-lin", "type": "friend_added", "idempotency_key": "replay",
         "occurred_at": (timezone.now() - timedelta(days=1)).isoformat()}])
    assert replay.accepted == 0 and "erased on request" in replay.rejected[0]["message"]
    assert not Customer.objects.filter(external_id="wm-lin").exists()


def test_adding_the_brand_again_brings_them_back_as_a_new_customer(admin_api, admin_user,
                                                                   lin):
    admin_api.post(f"/api/v1/customers/{lin.pk}/erase/")
    report = services.events_ingest(actor=admin_user, items=[
        {"customer": "wm-lin", "type": "friend_added", "idempotency_key": "again",
         "data": {"name": "林"}}])
    assert report.accepted == 1
    again = Customer.objects.get(external_id="wm-lin")
    assert again.pk != lin.pk and again.name == "林"
    assert services.customers_upsert(rows=[{"external_id": "wm-lin", "city": "上海"}],
                                     actor=admin_user).accepted == 1


def test_the_customer_page_downloads_and_erases_for_admins(client, admin_user, operator, lin):
    client.force_login(admin_user)
    page = client.get(f"/customers/{lin.pk}/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "data-download-personal-data" in page and "data-erase" in page
    download = client.get(f"/customers/{lin.pk}/personal-data/")
    assert download["Content-Disposition"].startswith("attachment")
    assert download.json()["profile"]["name"] == "林小姐"
    response = client.post(f"/customers/{lin.pk}/personal-data/")
    assert response.status_code == 302
    assert Customer.objects.get(pk=lin.pk).name == ""
    client.force_login(operator)
    assert "data-erase" not in client.get(f"/customers/{lin.pk}/").content.decode()
    assert client.get(f"/customers/{lin.pk}/personal-data/").status_code == 403
