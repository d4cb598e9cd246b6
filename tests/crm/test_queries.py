"""Lists cost a fixed number of queries whatever their length; ingestion is set-based."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from crm.models import Customer, Event, GroupMembership, OrderItem
from tests.factories import (
    ChannelFactory,
    CustomerFactory,
    EventFactory,
    GroupFactory,
    OrderFactory,
)

pytestmark = pytest.mark.django_db


def _customers(owner, n):
    channel = ChannelFactory(code="qr-q")
    referrer = CustomerFactory(owner=owner)
    return [CustomerFactory(owner=owner, channel=channel, referred_by=referrer)
            for _ in range(n)]


def _events(owner, n):
    for customer in _customers(owner, n):
        EventFactory(customer=customer, data={"text": "hi"})


def _orders(owner, n):
    for customer in _customers(owner, n):
        order = OrderFactory(customer=customer)
        OrderItem.objects.create(order=order, sku="A", name="Tea", price=Decimal("1"))
        OrderItem.objects.create(order=order, sku="B", name="Cup", price=Decimal("2"))


def _groups(owner, n):
    now = timezone.now()
    members = _customers(owner, 2)
    for _ in range(n):
        group = GroupFactory(owner=owner)
        for member in members:
            GroupMembership.objects.create(group=group, customer=member, joined_at=now)


def _channels(owner, n):
    for _ in range(n):
        ChannelFactory()


LISTS = {
    "customers": _customers,
    "events": _events,
    "orders": _orders,
    "groups": _groups,
    "channels": _channels,
}


def count_queries(client, url) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, {"page_size": 500})
    assert response.status_code == 200, response.content[:300]
    return len(queries)


@pytest.mark.parametrize("name", LISTS)
@pytest.mark.parametrize("role", ["admin", "operator"])
def test_a_list_costs_the_same_queries_for_3_and_30_rows(
        name, role, admin_user, operator, api_client_for):
    viewer = admin_user if role == "admin" else operator
    client = api_client_for(viewer)
    url = f"/api/v1/{name}/"
    client.get(url)  # warm per-process caches (content types, …)

    LISTS[name](operator, 3)
    few = count_queries(client, url)
    LISTS[name](operator, 27)
    many = count_queries(client, url)

    assert client.get(url).json()["count"] >= 30
    assert many == few, f"{url}: {few} queries for few rows, {many} for many"
    assert few <= 12, f"{url}: {few} queries"


def test_members_of_a_group_cost_the_same_queries_for_3_and_30(admin_user, operator,
                                                                api_client_for):
    client = api_client_for(admin_user)
    group = GroupFactory(owner=operator)
    url = f"/api/v1/groups/{group.pk}/members/"
    now = timezone.now()

    def add(n):
        for customer in _customers(operator, n):
            GroupMembership.objects.create(group=group, customer=customer, joined_at=now)

    add(3)
    few = count_queries(client, url)
    add(27)
    many = count_queries(client, url)
    assert many == few


def test_the_timeline_costs_the_same_queries_for_3_and_30_entries(operator, api_client_for):
    client = api_client_for(operator)
    customer = CustomerFactory(owner=operator)
    url = f"/api/v1/customers/{customer.pk}/timeline/"

    def add(n):
        for _ in range(n):
            EventFactory(customer=customer)
            order = OrderFactory(customer=customer)
            OrderItem.objects.create(order=order, sku="A")

    add(3)
    few = count_queries(client, url)
    add(27)
    many = count_queries(client, url)
    assert many == few


def _mixed_batch(prefix: str, size: int, owner) -> list[dict]:
    """`size` events for size/5 customers: each is added, talks, joins a group and refers
    the next one; some delete us or opt out."""
    base = timezone.now() - timedelta(days=30)
    items = []
    people = size // 5
    for n in range(people):
        ext = f"{prefix}-{n}"
        t = base + timedelta(minutes=n)
        items += [
            {"customer": ext, "type": "friend_added", "idempotency_key": f"{ext}-add",
             "occurred_at": t.isoformat(),
             "data": {"name": f"P{n}", "owner": owner.username, "channel": f"qr-{n % 7}"}},
            {"customer": ext, "type": "message_in", "idempotency_key": f"{ext}-in",
             "occurred_at": (t + timedelta(hours=1)).isoformat(), "data": {"text": "hi"}},
            {"customer": ext, "type": "group_joined", "idempotency_key": f"{ext}-join",
             "occurred_at": (t + timedelta(hours=2)).isoformat(),
             "data": {"group": f"chat-{n % 11}", "name": f"Group {n % 11}"}},
            {"customer": ext, "type": "referral", "idempotency_key": f"{ext}-ref",
             "occurred_at": (t + timedelta(hours=3)).isoformat(),
             "data": {"referred": f"{prefix}-{(n + 1) % people}"}},
            {"customer": ext, "idempotency_key": f"{ext}-last",
             "occurred_at": (t + timedelta(hours=4)).isoformat(),
             "type": ("friend_deleted", "opted_out", "group_left", "message_out")[n % 4],
             "data": {"group": f"chat-{n % 11}"}},
        ]
    return items


def test_ingesting_500_events_takes_a_bounded_number_of_queries(operator, api_client_for):
    client = api_client_for(operator)
    batch = _mixed_batch("q", 500, operator)

    with CaptureQueriesContext(connection) as queries:
        response = client.post("/api/v1/events/", batch, format="json")

    assert response.json() == {"accepted": 500, "duplicates": 0, "rejected": []}
    assert len(queries) <= 30, f"{len(queries)} queries for 500 events"
    assert Event.objects.count() == 500
    assert Customer.objects.filter(external_id__startswith="q-").count() == 100
    assert Customer.objects.filter(referred_by__isnull=False).count() == 100
    assert GroupMembership.objects.filter(left_at__isnull=True).count() == 75

    with CaptureQueriesContext(connection) as again:
        response = client.post("/api/v1/events/", batch, format="json")
    assert response.json() == {"accepted": 0, "duplicates": 500, "rejected": []}
    assert len(again) <= 30, f"{len(again)} queries for 500 duplicate events"


def test_the_query_count_of_an_events_batch_does_not_grow_with_its_size(operator,
                                                                         api_client_for):
    client = api_client_for(operator)
    counts = []
    for prefix, size in (("small", 20), ("large", 500)):
        with CaptureQueriesContext(connection) as queries:
            response = client.post("/api/v1/events/", _mixed_batch(prefix, size, operator),
                                   format="json")
        assert response.json()["accepted"] == size
        counts.append(len(queries))
    assert counts[1] <= counts[0] + 2, counts


def test_ingesting_500_orders_takes_a_bounded_number_of_queries(operator, api_client_for):
    client = api_client_for(operator)
    customers = _customers(operator, 50)
    batch = [{"customer": customers[n % 50].external_id, "external_id": f"O-{n}",
              "source": "youzan", "amount": "12.50",
              "items": [{"sku": "A", "name": "Tea", "quantity": 2, "price": "6.25"}]}
             for n in range(500)]

    with CaptureQueriesContext(connection) as queries:
        response = client.post("/api/v1/orders/", batch, format="json")

    assert response.json() == {"accepted": 500, "duplicates": 0, "rejected": []}
    assert len(queries) <= 30, f"{len(queries)} queries for 500 orders"
    assert Customer.objects.get(pk=customers[0].pk).orders_count == 10
