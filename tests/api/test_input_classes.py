"""Classes of bad input that used to answer a 500 or store nonsense, each through every path it
can arrive by: times the database cannot hold, times in the future, NUL characters and lone
surrogates (JSON, form, multipart, query string, path, headers), unknown API paths."""

from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from crm.models import Channel, Customer, Event, Order
from tagging.models import Tag, TagGroup, TagRule
from tests.factories import ChannelFactory, CustomerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def mine(admin_user):
    return CustomerFactory(external_id="wm-1", owner=admin_user)


def _message(response) -> str:
    return response.json()["message"]


# --- Times the database cannot hold ---------------------------------------------------------

@pytest.mark.parametrize("query, parameter", [
    ("occurred_after=1458-06-08T00:07:07%2B17:09", "occurred_after"),
    ("occurred_before=0001-01-01T00:00:00%2B05:00", "occurred_before"),
    ("occurred_after=9999-12-31T23:59:59-05:00", "occurred_after"),
])
def test_a_filter_time_outside_the_years_held_is_a_400_naming_it(admin_api, query, parameter):
    response = admin_api.get(f"/api/v1/events/?{query}")
    assert response.status_code == 400
    assert _message(response) == f"{parameter}: must be between the years 1901 and 2999"


@pytest.mark.both_dbs
def test_a_utc_offset_the_database_refuses_is_read_as_the_same_moment(admin_api, mine):
    """+17:09 is a valid ISO 8601 offset that PostgreSQL cannot parse; the moment is kept."""
    Event.objects.create(customer=mine, type="message_in", idempotency_key="k1",
                         occurred_at=timezone.now() - timedelta(days=1))
    response = admin_api.get("/api/v1/events/?occurred_after=2020-06-08T00:07:07%2B17:09"
                             "&occurred_before=2999-01-01T00:00:00-20:38")
    assert response.status_code == 200, response.json()
    assert response.json()["count"] == 1
    orders = admin_api.get("/api/v1/orders/?placed_after=2020-01-01T00:00:00-20:38")
    assert orders.status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/metrics/overview/", "/api/v1/metrics/sops/",
                                  "/api/v1/metrics/revenue/", "/api/v1/metrics/channels/"])
def test_a_metrics_range_outside_the_years_held_is_a_400(admin_api, path):
    response = admin_api.get(f"{path}?start=9999-12-01&end=9999-12-31")
    assert response.status_code == 400
    assert _message(response) == "start: must be between the years 1901 and 2999"


def test_an_ingested_offset_the_database_refuses_is_stored_as_the_same_moment(admin_api, mine):
    response = admin_api.post("/api/v1/events/", {
        "customer": "wm-1", "type": "message_in", "idempotency_key": "offset",
        "occurred_at": "2026-01-01T20:00:00+17:09"}, format="json")
    assert response.json()["accepted"] == 1, response.json()
    stored = Event.objects.get(idempotency_key="offset").occurred_at
    assert stored.isoformat() == "2026-01-01T02:51:00+00:00"


# --- Times in the future ----------------------------------------------------------------------

def _ahead(**delta) -> str:
    return (timezone.now() + timedelta(**delta)).isoformat()


@pytest.mark.both_dbs
def test_events_and_orders_dated_ahead_are_rejected_with_their_index(admin_api, mine):
    events = admin_api.post("/api/v1/events/", [
        {"customer": "wm-1", "type": "message_in", "idempotency_key": "now"},
        {"customer": "wm-1", "type": "message_in", "idempotency_key": "2030",
         "occurred_at": "2030-01-01T00:00:00+08:00"},
        {"customer": "wm-1", "type": "message_in", "idempotency_key": "skew",
         "occurred_at": _ahead(minutes=2)}], format="json")
    body = events.json()
    assert body["accepted"] == 2
    assert body["rejected"] == [{"index": 1, "message": (
        "occurred_at: 2030-01-01T00:00:00+08:00 is in the future; times more than 5 minutes "
        "ahead are refused")}]
    mine.refresh_from_db()
    assert mine.last_active_at < timezone.now() + timedelta(minutes=5)

    orders = admin_api.post("/api/v1/orders/", [
        {"customer": "wm-1", "external_id": "o1", "source": "youzan", "amount": "10.00",
         "placed_at": "2031-05-01T10:00:00+08:00"},
        {"customer": "wm-1", "external_id": "o2", "source": "youzan", "amount": "10.00",
         "placed_at": _ahead(days=-1), "status": "refunded", "refunded_at": _ahead(days=30)}],
        format="json")
    assert orders.json()["accepted"] == 0
    assert [(r["index"], r["message"].split(":")[0]) for r in orders.json()["rejected"]] == [
        (0, "placed_at"), (1, "refunded_at")]
    assert not Order.objects.exists()


def test_a_customer_joined_in_the_future_is_refused_in_the_api_and_the_csv(admin_api):
    response = admin_api.post("/api/v1/customers/", {"external_id": "wm-2031",
                                                     "joined_at": "2031-01-01T00:00:00Z"},
                              format="json")
    assert response.status_code == 400
    assert _message(response).startswith("joined_at: 2031-01-01T08:00:00+08:00 is in the future")

    csv = b"external_id,joined_at\nwm-ok,2026-01-05\nwm-later,2031-01-05\n"
    upload = admin_api.post("/api/v1/customers/import/", {
        "file": SimpleUploadedFile("c.csv", csv, content_type="text/csv")}, format="multipart")
    body = upload.json()
    assert body["accepted"] == 1
    assert body["rejected"][0]["index"] == 1
    assert "joined_at: 2031-01-05T00:00:00+08:00 is in the future" in body["rejected"][0][
        "message"]
    assert list(Customer.objects.values_list("external_id", flat=True)) == ["wm-ok"]


def test_the_allowance_for_clock_skew_is_a_setting(admin_api, mine, settings):
    settings.INGEST_MAX_FUTURE_MINUTES = 60
    response = admin_api.post("/api/v1/events/", {
        "customer": "wm-1", "type": "message_in", "idempotency_key": "fast-clock",
        "occurred_at": _ahead(minutes=30)}, format="json")
    assert response.json()["accepted"] == 1


# --- NUL characters and lone surrogates, by every way in --------------------------------------

@pytest.fixture
def tag(db):
    return Tag.objects.create(group=TagGroup.objects.create(name="g"), name="t")


def test_a_nul_in_a_form_encoded_field_is_a_400_naming_it(admin_api, tag):
    response = admin_api.post("/api/v1/tag-rules/", f"name=a%00b&tag={tag.pk}&mode=add",
                              content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert _message(response) == "Malformed request body: name: NUL characters are not allowed"
    assert not TagRule.objects.filter(tag=tag).exists()


def test_a_nul_in_a_multipart_field_is_a_400(admin_api, tag):
    response = admin_api.post("/api/v1/tag-rules/", {"name": "a\x00b", "tag": tag.pk},
                              format="multipart")
    assert response.status_code == 400
    assert "name: NUL characters are not allowed" in _message(response)


@pytest.mark.parametrize("body, where", [
    ('"name": "r", "condition": {"field": "city", "op": "eq", "value": "杭\\u0000州"}',
     "condition.value"),
    ('"name": "r", "condition": {"field": "city", "op": "eq", "value": "\\ud800"}',
     "condition.value"),
    ('"name": "r\\u0000", "condition": {"all": [{"field": "city", "op": "eq", "value": "x"}]}',
     "name"),
    ('"name": "r", "condition": {"all": [{"field": "city", "op": "eq", "value": ["x", "\\u0000"]'
     '}]}', "condition.all[0].value[1]"),
    ('"name": "r", "condition": {"field": "attributes.a", "op": "eq", "\\u0000": "x"}',
     "condition.\x00"),
])
def test_a_nul_or_lone_surrogate_anywhere_in_json_is_a_400_naming_where(admin_api, tag, body,
                                                                       where):
    response = admin_api.post("/api/v1/tag-rules/", f'{{{body}, "tag": {tag.pk}}}',
                              content_type="application/json")
    assert response.status_code == 400
    assert _message(response).startswith(f"Malformed request body: {where}: ")


@pytest.mark.parametrize("url, where", [
    ("/api/v1/customers/?search=%00", "search"),
    ("/api/v1/customers/?city=%00x", "city"),
    ("/api/v1/stage-models/%00/", "path"),
    ("/api/v1/customers/?%00=1", "\x00"),
    ("/api/v1/customers/?tag=a&tag=%00", "tag[1]"),
])
def test_a_nul_in_the_query_string_or_path_is_a_400(admin_api, url, where):
    response = admin_api.get(url)
    assert response.status_code == 400
    assert response.json() == {"message": f"{where}: NUL characters are not allowed",
                               "extra": {"parameter": where}}


def test_a_nul_in_a_header_is_a_400(api_client_for, admin_user):
    response = api_client_for(None).get("/api/v1/customers/", HTTP_AUTHORIZATION="Token a\x00b")
    assert response.status_code == 400
    assert _message(response) == "Authorization: NUL characters are not allowed"


def test_a_nul_in_a_dashboard_form_is_a_plain_400(client, admin_user):
    client.force_login(admin_user)
    assert client.get("/customers/?q=%00").status_code == 400


# --- Model rules through the API --------------------------------------------------------------

def test_a_negative_channel_cost_is_a_400_not_a_constraint_violation(admin_api):
    channel = ChannelFactory(code="qr")
    response = admin_api.patch(f"/api/v1/channels/{channel.pk}/", {"cost": "-1.00"},
                               format="json")
    assert response.status_code == 400
    assert _message(response).startswith("cost: ")
    assert Channel.objects.get(pk=channel.pk).cost >= 0


def test_an_unknown_api_path_is_a_json_404(admin_api):
    response = admin_api.get("/api/v1/customers/not-a-number/")
    assert response.status_code == 404
    assert response.json() == {"message": "Not found.", "extra": {}}
