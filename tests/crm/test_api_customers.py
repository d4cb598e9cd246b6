"""customers/: CRUD, filters, pagination, timeline, CSV import; and the OpenAPI schema."""

import codecs
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from crm.models import Customer
from tests.factories import ChannelFactory, CustomerFactory, EventFactory, OrderFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/customers/"


@pytest.fixture
def client(operator, api_client_for):
    return api_client_for(operator)


@pytest.fixture
def admin_client(admin_user, api_client_for):
    return api_client_for(admin_user)


def ids(response):
    assert response.status_code == 200, response.content[:300]
    return {c["external_id"] for c in response.json()["results"]}


# --- CRUD ---------------------------------------------------------------------------------

def test_create_read_update_delete(client, operator):
    ChannelFactory(code="store-qr")
    created = client.post(URL, {
        "external_id": "wm-1", "name": "张伟", "phone": "13800001111", "gender": "male",
        "city": "上海", "channel": "store-qr", "attributes": {"level": "gold"},
        "joined_at": "2026-02-01T10:00:00+08:00",
    }, format="json")

    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["owner"] == operator.username
    assert (body["name"], body["channel"], body["attributes"]) == (
        "张伟", "store-qr", {"level": "gold"})
    assert (body["status"], body["opted_out"], body["orders_count"], body["total_spent"]) == (
        "active", False, 0, "0.00")
    assert body["tags"] == [] and body["stages"] == {}
    assert parse_datetime(body["joined_at"]) == parse_datetime("2026-02-01T10:00:00+08:00")
    detail = f"{URL}{body['id']}/"

    assert client.get(detail).json()["external_id"] == "wm-1"

    patched = client.patch(detail, {"name": "张伟伟", "status": "removed"}, format="json")
    assert patched.status_code == 200, patched.json()
    stored = Customer.objects.get(external_id="wm-1")
    assert (stored.name, stored.status) == ("张伟伟", "removed")
    assert stored.status_changed_at is not None

    assert client.delete(detail).status_code == 204
    assert client.get(detail).status_code == 404
    assert not Customer.objects.exists()


def test_read_only_aggregates_cannot_be_written(client, operator):
    mine = CustomerFactory(owner=operator)
    client.patch(f"{URL}{mine.pk}/", {"orders_count": 99, "total_spent": "5"}, format="json")
    mine.refresh_from_db()
    assert (mine.orders_count, mine.total_spent) == (0, Decimal("0"))


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "no id"}, "external_id"),
    ({"external_id": ""}, "external_id"),
    ({"external_id": "x" * 129}, "external_id"),
    ({"external_id": "wm-2", "gender": "robot"}, "gender"),
    ({"external_id": "wm-2", "channel": "nope"}, "channel"),
    ({"external_id": "wm-2", "attributes": ["a"]}, "attributes"),
    ({"external_id": "wm-2", "joined_at": "soon"}, "joined_at"),
    ({"external_id": "wm-2", "joined_at": "0001-01-01T00:00:00"}, "joined_at"),
    ({"external_id": "wm-2", "joined_at": "9999-12-31T23:59:59-14:00"}, "joined_at"),
])
def test_invalid_customer_is_a_400_naming_the_field(client, body, field):
    response = client.post(URL, body, format="json")

    assert response.status_code == 400
    assert response.json()["message"].startswith(f"{field}:"), response.json()


def test_a_duplicate_external_id_is_a_400(client, operator):
    CustomerFactory(external_id="wm-dup", owner=operator)
    response = client.post(URL, {"external_id": "wm-dup"}, format="json")

    assert response.status_code == 400
    assert response.json()["message"].startswith("external_id:")


# --- Filters and pagination ---------------------------------------------------------------

@pytest.fixture
def people(operator, other_operator):
    qr, store = ChannelFactory(code="qr-live"), ChannelFactory(code="store-1")
    return {
        "a": CustomerFactory(external_id="wx-alpha-1", name="张伟", phone="13800001111",
                             channel=qr, owner=operator),
        "b": CustomerFactory(external_id="wx-beta-2", name="Li Na", phone="13912345678",
                             channel=store, owner=operator, status="deleted_us"),
        "c": CustomerFactory(external_id="store-77", name="王芳", channel=qr,
                             owner=other_operator),
    }


@pytest.mark.parametrize(("params", "expected"), [
    ({"channel": "qr-live"}, {"wx-alpha-1", "store-77"}),
    ({"channel": "store-1"}, {"wx-beta-2"}),
    ({"owner": "op-b"}, {"store-77"}),
    ({"owner": "op-a", "channel": "qr-live"}, {"wx-alpha-1"}),
    ({"status": "deleted_us"}, {"wx-beta-2"}),
    ({"status": "active"}, {"wx-alpha-1", "store-77"}),
    ({"search": "张"}, {"wx-alpha-1"}),
    ({"search": "li na"}, {"wx-beta-2"}),
    ({"search": "wx-"}, {"wx-alpha-1", "wx-beta-2"}),
    ({"search": "store-77"}, {"store-77"}),
    ({"search": "139"}, {"wx-beta-2"}),
    ({"search": "alpha"}, set()),
    ({"search": "1111"}, set()),
    ({"search": "  "}, {"wx-alpha-1", "wx-beta-2", "store-77"}),
])
def test_filters(admin_client, people, params, expected):
    assert ids(admin_client.get(URL, params)) == expected


def test_an_unknown_status_filter_is_a_400(admin_client, people):
    response = admin_client.get(URL, {"status": "vip"})

    assert response.status_code == 400
    assert response.json()["message"].startswith("status:")


def test_pagination_defaults_and_caps_page_size_at_500(admin_client, operator):
    now = timezone.now()
    Customer.objects.bulk_create([
        Customer(external_id=f"bulk-{n:04d}", owner=operator, joined_at=now - timedelta(n))
        for n in range(501)])

    first = admin_client.get(URL).json()
    assert (first["count"], len(first["results"])) == (501, 50)
    assert first["previous"] is None and "page=2" in first["next"]

    capped = admin_client.get(URL, {"page_size": 1000}).json()
    assert len(capped["results"]) == 500
    last = admin_client.get(URL, {"page_size": 1000, "page": 2}).json()
    assert [c["external_id"] for c in last["results"]] == ["bulk-0500"]
    assert last["next"] is None

    # Newest first, and pages do not overlap.
    assert capped["results"][0]["external_id"] == "bulk-0000"


def test_a_page_past_the_end_is_a_404_with_a_message(admin_client, people):
    response = admin_client.get(URL, {"page": 99})

    assert response.status_code == 404
    assert response.json()["message"]


# --- Timeline -----------------------------------------------------------------------------

def _day(n: int) -> datetime:
    return parse_datetime(f"2026-04-{n:02d}T10:00:00+08:00")


@pytest.fixture
def history(operator):
    mine = CustomerFactory(owner=operator)
    EventFactory(customer=mine, type="friend_added", occurred_at=_day(1))
    OrderFactory(customer=mine, placed_at=_day(2), amount=Decimal("30"), external_id="O-2")
    EventFactory(customer=mine, type="message_in", occurred_at=_day(3), data={"text": "hi"})
    OrderFactory(customer=mine, placed_at=_day(4), amount=Decimal("40"), external_id="O-4",
                 status="refunded")
    EventFactory(customer=mine, type="message_out", occurred_at=_day(5))
    return mine


def test_timeline_is_newest_first_mixing_events_and_orders(client, history):
    body = client.get(f"{URL}{history.pk}/timeline/").json()

    assert body["count"] == 5
    assert [(e["kind"], e["type"]) for e in body["results"]] == [
        ("event", "message_out"), ("order", "refunded"), ("event", "message_in"),
        ("order", "paid"), ("event", "friend_added")]
    assert [parse_datetime(e["at"]) for e in body["results"]] == [_day(n) for n in (5, 4, 3, 2, 1)]
    assert body["results"][2]["data"]["text"] == "hi"
    assert body["results"][1]["data"]["external_id"] == "O-4"


def test_timeline_is_paginated(client, history):
    url = f"{URL}{history.pk}/timeline/"
    first = client.get(url, {"page_size": 2}).json()
    second = client.get(first["next"]).json()
    third = client.get(second["next"]).json()

    assert [parse_datetime(e["at"]) for e in first["results"]] == [_day(5), _day(4)]
    assert [parse_datetime(e["at"]) for e in second["results"]] == [_day(3), _day(2)]
    assert [parse_datetime(e["at"]) for e in third["results"]] == [_day(1)]
    assert first["previous"] is None and third["next"] is None
    assert second["previous"] and second["count"] == 5


@pytest.mark.parametrize("page", ["abc", "-1", "1.5"])
def test_timeline_with_a_bad_page_is_a_400(client, history, page):
    response = client.get(f"{URL}{history.pk}/timeline/", {"page": page})

    if page == "-1":  # read as the first page
        assert response.status_code == 200
    else:
        assert response.status_code == 400
        assert response.json()["message"].startswith("page:")


@pytest.mark.parametrize("page", ["1000", "99999999999999999999"])
def test_timeline_past_the_end_is_empty_not_an_error(client, history, page):
    response = client.get(f"{URL}{history.pk}/timeline/", {"page": page, "page_size": 500})

    assert response.status_code == 200, response.content[:300]
    assert response.json()["results"] == []
    assert response.json()["count"] == 5


# --- CSV import ---------------------------------------------------------------------------

IMPORT = f"{URL}import/"


def upload(client, content: bytes, name="customers.csv"):
    return client.post(IMPORT, {"file": SimpleUploadedFile(name, content, "text/csv")},
                       format="multipart")


@pytest.mark.parametrize("bom", [b"", codecs.BOM_UTF8], ids=["no-bom", "bom"])
def test_import_creates_customers_from_utf8(client, operator, bom):
    ChannelFactory(code="store-1")
    content = bom + (
        "external_id,name,phone,gender,city,channel,joined_at,opted_out,attributes.level\n"
        "wm-10,张伟,13800001111,male,上海,store-1,2026-01-05,是,gold\n"
        "wm-11,李娜,,female,,,,,\n"
    ).encode()

    response = upload(client, content)

    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 0, [])
    a = Customer.objects.get(external_id="wm-10")
    assert (a.name, a.phone, a.gender, a.city, a.channel.code, a.opted_out, a.attributes) == (
        "张伟", "13800001111", "male", "上海", "store-1", True, {"level": "gold"})
    assert a.owner == operator
    assert a.joined_at == parse_datetime("2026-01-05T00:00:00+08:00")
    b = Customer.objects.get(external_id="wm-11")
    assert (b.name, b.gender, b.attributes, b.opted_out) == ("李娜", "female", {}, False)


def test_import_reports_bad_rows_with_index_and_line_and_keeps_the_good_ones(client):
    content = (
        b"external_id,gender,owner,joined_at\n"
        b"wm-ok,male,,\n"
        b"wm-bad-gender,robot,,\n"
        b",male,,\n"
        b"wm-bad-owner,,ghost,\n"
        b"wm-bad-date,,,someday\n"
    )

    body = upload(client, content).json()

    assert body["accepted"] == 1
    assert [(r["index"], r["message"].split(":")[0], r["message"].split(": ")[1])
            for r in body["rejected"]] == [
        (1, "line 3", "gender"), (2, "line 4", "external_id"), (3, "line 5", "owner"),
        (4, "line 6", "joined_at")]
    assert list(Customer.objects.values_list("external_id", flat=True)) == ["wm-ok"]


def test_import_counts_a_repeated_external_id_as_a_duplicate(client):
    body = upload(client, b"external_id,name\nwm-1,First\nwm-1,Second\nwm-2,Other\n").json()

    assert (body["accepted"], body["duplicates"]) == (2, 1)
    assert Customer.objects.get(external_id="wm-1").name == "First"


def test_import_updates_an_existing_customer_with_the_non_empty_cells(client, operator):
    ChannelFactory(code="new-ch")
    existing = CustomerFactory(external_id="wm-1", owner=operator, name="Old", city="北京",
                               attributes={"level": "silver", "vip": "yes"})

    body = upload(client, b"external_id,name,city,channel,attributes.level\n"
                          b"wm-1,New,,new-ch,gold\n").json()

    assert (body["accepted"], body["rejected"]) == (1, [])
    existing.refresh_from_db()
    assert (existing.name, existing.city, existing.channel.code) == ("New", "北京", "new-ch")
    assert existing.attributes == {"level": "gold", "vip": "yes"}
    assert Customer.objects.count() == 1


def test_a_status_set_by_import_is_not_undone_by_an_older_event(client, operator):
    existing = CustomerFactory(external_id="wm-1", owner=operator)
    upload(client, b"external_id,status\nwm-1,deleted_us\n")
    existing.refresh_from_db()
    assert existing.status == "deleted_us"

    a_year_ago = (timezone.now() - timedelta(days=365)).isoformat()
    client.post("/api/v1/events/", {"customer": "wm-1", "type": "friend_added",
                                    "idempotency_key": "old-add", "occurred_at": a_year_ago},
                format="json")

    existing.refresh_from_db()
    assert existing.status == "deleted_us"


def test_an_unknown_column_is_a_400_naming_it(client):
    response = upload(client, b"external_id,nickname\nwm-1,x\n")

    assert response.status_code == 400
    assert "nickname" in response.json()["message"]
    assert not Customer.objects.exists()


def test_a_file_that_is_not_utf8_is_a_400(client):
    response = upload(client, "external_id,name\nwm-1,张伟\n".encode("gbk"))

    assert response.status_code == 400
    assert "UTF-8" in response.json()["message"]
    assert not Customer.objects.exists()


@pytest.mark.parametrize("content", [
    b"", b"\n\n", b"name\nx\n", b"external_id,name\nwm-1\x00,x\n",
    b"external_id,attributes.level\nwm-1,a\x00b\n", b"external_id\n" + b"x" * 300 + b"\n",
    b'external_id,name\n"wm-1,unterminated\n', b"external_id,name\nwm-1,a,b,c\n",
], ids=["empty", "blank-lines", "no-external-id", "nul", "nul-in-attribute", "long-id",
        "unterminated-quote", "extra-cells"])
def test_odd_files_are_answered_without_a_server_error(client, content):
    response = upload(client, content)

    assert response.status_code in (200, 400), response.content[:300]
    assert response.json().get("message") or "rejected" in response.json()


def test_import_without_a_file_is_a_400(client):
    response = client.post(IMPORT, {}, format="multipart")

    assert response.status_code == 400
    assert "file" in response.json()["message"]


# --- OpenAPI ------------------------------------------------------------------------------

def test_the_schema_is_served(api_client_for):
    response = api_client_for(None).get("/api/schema/")

    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert {"/api/v1/customers/", "/api/v1/events/", "/api/v1/orders/"} <= schema["paths"].keys()


def test_the_schema_builds_and_validates_without_warnings(tmp_path, capsys):
    target = tmp_path / "schema.yaml"
    try:
        call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__}: {exc}\n{capsys.readouterr().err}")
    assert "/api/v1/customers/{id}/timeline/" in yaml.safe_load(target.read_text())["paths"]
