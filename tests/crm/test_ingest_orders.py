"""POST /api/v1/orders/: orders once per (source, external_id), refunds, customer aggregates."""

from datetime import datetime
from decimal import Decimal

import pytest
from django.utils.dateparse import parse_datetime

from crm.models import Customer, CustomerTouch, Order
from crm.services import customer_aggregates_refresh
from tests.factories import CustomerFactory, EventFactory, OrderFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/orders/"


def at(day: int, hour: int = 12) -> str:
    return f"2026-03-{day:02d}T{hour:02d}:00:00+08:00"


def when(day: int, hour: int = 12) -> datetime:
    return parse_datetime(at(day, hour))


def order(customer, external_id="T1", amount="100.00", **extra):
    ext = customer if isinstance(customer, str) else customer.external_id
    return {"customer": ext, "external_id": external_id, "source": "youzan", "amount": amount,
            **extra}


def post(client, body):
    return client.post(URL, body, format="json")


@pytest.fixture
def client(operator, api_client_for):
    return api_client_for(operator)


@pytest.fixture
def mine(operator):
    return CustomerFactory(external_id="wm-buyer", owner=operator)


def shown(client, customer):
    """The customer as the API shows it."""
    response = client.get(f"/api/v1/customers/{customer.pk}/")
    assert response.status_code == 200
    return response.json()


def times(body, *names):
    return tuple(parse_datetime(body[n]) if body[n] else None for n in names)


# --- Aggregates ---------------------------------------------------------------------------

def test_aggregates_follow_the_orders(client, mine):
    response = post(client, [order(mine, "T1", "100.00", placed_at=at(1)),
                             order(mine, "T2", "50.50", placed_at=at(5))])

    assert response.status_code == 200
    assert response.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    body = shown(client, mine)
    assert (body["orders_count"], body["total_spent"]) == (2, "150.50")
    assert times(body, "first_order_at", "last_order_at", "last_active_at") == (
        when(1), when(5), when(5))


def test_a_later_inbound_event_stays_the_last_activity(client, mine):
    EventFactory(customer=mine, type="message_in", occurred_at=when(9))
    post(client, order(mine, placed_at=at(5)))

    assert times(shown(client, mine), "last_active_at") == (when(9),)


def test_a_refund_keeps_the_row_and_drops_the_aggregates(client, mine):
    post(client, [order(mine, "T1", "100.00", placed_at=at(1)),
                  order(mine, "T2", "50.50", placed_at=at(5))])

    response = post(client, order(mine, "T2", "50.50", status="refunded", placed_at=at(5)))

    assert response.status_code == 200
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    refunded = Order.objects.get(source="youzan", external_id="T2")
    assert refunded.status == Order.Status.REFUNDED
    assert refunded.refunded_at is not None
    assert Order.objects.filter(customer=mine).count() == 2
    body = shown(client, mine)
    assert (body["orders_count"], body["total_spent"]) == (1, "100.00")
    assert times(body, "first_order_at", "last_order_at", "last_active_at") == (
        when(1), when(1), when(1))


def test_refunding_the_only_order_empties_the_aggregates(client, mine):
    post(client, order(mine, placed_at=at(2)))
    post(client, order(mine, status="refunded", refunded_at=at(3)))

    body = shown(client, mine)
    assert (body["orders_count"], body["total_spent"]) == (0, "0.00")
    assert times(body, "first_order_at", "last_order_at") == (None, None)
    assert Order.objects.get().refunded_at == when(3)


def test_an_order_first_seen_as_refunded_never_counts(client, mine):
    response = post(client, order(mine, status="refunded", placed_at=at(2)))

    assert response.json()["accepted"] == 1
    assert shown(client, mine)["orders_count"] == 0


def test_paid_then_refunded_in_one_batch(client, mine):
    response = post(client, [order(mine, placed_at=at(2)),
                             order(mine, status="refunded", placed_at=at(2))])

    assert response.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    assert Order.objects.get().status == Order.Status.REFUNDED
    assert shown(client, mine)["total_spent"] == "0.00"


def test_the_same_order_with_the_same_status_is_a_duplicate(client, mine):
    post(client, order(mine, placed_at=at(2)))
    response = post(client, order(mine, placed_at=at(2)))

    assert response.status_code == 200
    assert response.json() == {"accepted": 0, "duplicates": 1, "rejected": []}
    assert Order.objects.count() == 1
    assert shown(client, mine)["orders_count"] == 1


def test_a_repeated_order_within_a_batch_is_a_duplicate(client, mine):
    response = post(client, [order(mine), order(mine)])

    assert response.json() == {"accepted": 1, "duplicates": 1, "rejected": []}
    assert Order.objects.count() == 1


def test_the_same_external_id_in_another_source_is_another_order(client, mine):
    post(client, order(mine, "T1", "10.00"))
    response = post(client, order(mine, "T1", "20.00", source="weimob"))

    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    assert sorted(Order.objects.values_list("source", flat=True)) == ["weimob", "youzan"]
    assert shown(client, mine)["total_spent"] == "30.00"


def test_order_items_are_stored(client, mine):
    items = [{"sku": "TEA-01", "name": "龙井", "category": "tea", "quantity": 2, "price": "40"},
             {"sku": "CUP-02", "name": "Cup", "category": "ware", "quantity": 1,
              "price": "20.00"}]
    post(client, order(mine, items=items))

    stored = Order.objects.get()
    assert sorted((i.sku, i.name, i.category, i.quantity, i.price) for i in stored.items.all()) == [
        ("CUP-02", "Cup", "ware", 1, Decimal("20.00")),
        ("TEA-01", "龙井", "tea", 2, Decimal("40.00")),
    ]
    listed = client.get(URL, {"customer": mine.external_id}).json()["results"]
    assert {i["sku"] for i in listed[0]["items"]} == {"TEA-01", "CUP-02"}


# --- Rejections ---------------------------------------------------------------------------

@pytest.mark.parametrize("amount", [
    "abc", "-1", "-0.01", "1.005", "12.345", None, "", True, [], {"v": 1}, "NaN",
    "Infinity", "1e30", "1e-30", "1000000000000",
])
def test_a_bad_amount_is_rejected_with_a_message_naming_amount(client, mine, amount):
    response = post(client, [order(mine, "OK"), order(mine, "BAD", amount=amount)])

    assert response.status_code == 200, response.content[:300]
    rejected = response.json()["rejected"]
    assert [r["index"] for r in rejected] == [1]
    assert rejected[0]["message"].startswith("amount:"), rejected[0]
    assert not Order.objects.filter(external_id="BAD").exists()


def test_a_json_number_too_large_for_a_float_is_rejected_as_amount(client, mine):
    raw = ('{"customer": "wm-buyer", "external_id": "BIG", "source": "youzan", '
           '"amount": 1e400}')
    response = client.post(URL, data=raw, content_type="application/json")

    assert response.status_code == 400
    assert response.json()["rejected"][0]["message"].startswith("amount:")


@pytest.mark.parametrize("amount", ["0", "0.1", 12, 12.5, "999999999999.99"])
def test_good_amounts_are_accepted(client, mine, amount):
    response = post(client, order(mine, amount=amount))

    assert response.json()["accepted"] == 1
    assert Order.objects.get().amount == Decimal(str(amount))


@pytest.mark.parametrize(("change", "field"), [
    ({"customer": "nobody"}, "customer"),
    ({"external_id": ""}, "external_id"),
    ({"source": None}, "source"),
    ({"status": "cancelled"}, "status"),
    ({"placed_at": "last tuesday"}, "placed_at"),
    ({"placed_at": "0001-01-01T00:00:00"}, "placed_at"),
    ({"items": "tea"}, "items"),
    ({"items": ["tea"]}, "items[0]"),
    ({"items": [{"quantity": 0}]}, "items[0].quantity"),
    ({"items": [{"quantity": 10**30}]}, "items[0].quantity"),
    ({"items": [{"quantity": 2**31}]}, "items[0].quantity"),
    ({"items": [{"price": "-3"}]}, "items[0].price"),
    ({"items": [{"price": "1e40"}]}, "items[0].price"),
    ({"items": [{"sku": "s" * 65}]}, "items[0].sku"),
])
def test_an_invalid_order_is_rejected_with_the_field_named(client, mine, change, field):
    response = post(client, [order(mine, "OK"), {**order(mine, "BAD"), **change}])

    assert response.status_code == 200, response.content[:300]
    rejected = response.json()["rejected"]
    assert [r["index"] for r in rejected] == [1]
    assert rejected[0]["message"].startswith(f"{field}:"), rejected[0]


def test_an_order_key_of_another_customer_is_rejected(client, mine, operator):
    someone = CustomerFactory(external_id="wm-someone", owner=operator)
    OrderFactory(customer=someone, source="youzan", external_id="T1", amount=Decimal("5"))

    response = post(client, order(mine, "T1", status="refunded"))

    assert response.status_code == 400
    assert response.json()["rejected"][0]["message"].startswith("customer:")
    assert Order.objects.get(external_id="T1").status == Order.Status.PAID
    assert Order.objects.get(external_id="T1").customer == someone


def test_one_order_key_for_two_customers_in_one_batch_is_rejected(client, mine, operator):
    someone = CustomerFactory(external_id="wm-someone", owner=operator)

    response = post(client, [order(mine, "T1"), order(someone, "T1", status="refunded")])

    body = response.json()
    assert body["accepted"] == 1
    assert [r["index"] for r in body["rejected"]] == [1]
    assert body["rejected"][0]["message"].startswith("customer:")
    stored = Order.objects.get(external_id="T1")
    assert (stored.customer, stored.status) == (mine, Order.Status.PAID)


def test_an_order_for_someone_elses_customer_is_rejected(client, other_operator):
    theirs = CustomerFactory(external_id="wm-theirs", owner=other_operator)

    response = post(client, order(theirs))

    assert response.status_code == 400
    assert response.json()["message"].startswith("customer:")
    assert not Order.objects.exists()


@pytest.mark.parametrize("body", [12, "x", None, [], [[]], [None], {"amount": {"$gt": 0}}])
def test_garbage_bodies_are_a_400(client, body):
    response = post(client, body)

    assert response.status_code == 400
    assert response.json()["message"]


# --- Repair -------------------------------------------------------------------------------

@pytest.mark.both_dbs
def test_full_aggregate_refresh_repairs_corrupted_aggregates(operator):
    buyers = [CustomerFactory(owner=operator) for _ in range(5)]
    for n, buyer in enumerate(buyers[:4]):
        OrderFactory(customer=buyer, amount=Decimal("10.00"), placed_at=when(1))
        OrderFactory(customer=buyer, amount=Decimal(n), placed_at=when(2 + n))
        OrderFactory(customer=buyer, amount=Decimal("99"), placed_at=when(20),
                     status=Order.Status.REFUNDED)
    EventFactory(customer=buyers[0], type="message_in", occurred_at=when(10))
    EventFactory(customer=buyers[1], type="message_out", occurred_at=when(11))
    EventFactory(customer=buyers[4], type="survey_answered", occurred_at=when(12))
    Customer.objects.update(orders_count=42, total_spent=Decimal("1.23"),
                            first_order_at=when(28), last_order_at=when(28),
                            last_active_at=when(28))

    assert customer_aggregates_refresh(chunk_size=2) == 5

    got = {c.pk: (c.orders_count, c.total_spent, c.first_order_at, c.last_order_at,
                  c.last_active_at) for c in Customer.objects.all()}
    assert got == {
        buyers[0].pk: (2, Decimal("10.00"), when(1), when(2), when(10)),
        buyers[1].pk: (2, Decimal("11.00"), when(1), when(3), when(3)),
        buyers[2].pk: (2, Decimal("12.00"), when(1), when(4), when(4)),
        buyers[3].pk: (2, Decimal("13.00"), when(1), when(5), when(5)),
        buyers[4].pk: (0, Decimal("0.00"), None, None, when(12)),
    }
    # Nothing left to repair: nothing written (on PostgreSQL, nobody touched either).
    touched = CustomerTouch.objects.count()
    assert customer_aggregates_refresh(chunk_size=2) == 0
    assert CustomerTouch.objects.count() == touched
