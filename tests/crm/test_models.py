"""The database itself refuses impossible facts, whatever code path writes them."""

from contextlib import contextmanager
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from crm.models import Channel, Customer, GroupMembership, Order
from tests.factories import (
    ChannelFactory,
    CustomerFactory,
    GroupFactory,
    OrderFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


@contextmanager
def refused():
    """The statement inside fails with IntegrityError; the savepoint keeps the test usable."""
    with pytest.raises(IntegrityError), transaction.atomic():
        yield


def test_customer_external_id_is_unique():
    first = CustomerFactory(external_id="wm-same")
    with refused():
        Customer.objects.create(external_id="wm-same", owner=first.owner)
    assert Customer.objects.filter(external_id="wm-same").count() == 1


def test_customer_external_id_cannot_be_empty():
    owner = UserFactory()
    with refused():
        Customer.objects.create(external_id="", owner=owner)
    assert not Customer.objects.exists()


def test_customer_total_spent_cannot_be_negative():
    owner = UserFactory()
    with refused():
        Customer.objects.create(external_id="wm-neg", owner=owner, total_spent=Decimal("-0.01"))


def test_order_is_unique_per_source_and_external_id():
    order = OrderFactory(source="youzan", external_id="E1")
    with refused():
        Order.objects.create(customer=order.customer, source="youzan", external_id="E1",
                             amount=Decimal("1"), placed_at=timezone.now())
    # The same external id in another shop system is another order.
    Order.objects.create(customer=order.customer, source="weimob", external_id="E1",
                         amount=Decimal("1"), placed_at=timezone.now())
    assert Order.objects.filter(external_id="E1").count() == 2


def test_order_amount_cannot_be_negative():
    customer = CustomerFactory()
    with refused():
        Order.objects.create(customer=customer, source="store", external_id="neg",
                             amount=Decimal("-1.00"), placed_at=timezone.now())
    Order.objects.create(customer=customer, source="store", external_id="zero",
                         amount=Decimal("0"), placed_at=timezone.now())


def test_channel_cost_cannot_be_negative():
    ChannelFactory(code="free", cost=Decimal("0"))
    with refused():
        Channel.objects.create(code="neg", name="neg", cost=Decimal("-5"))


def test_one_open_membership_per_group_and_customer():
    group, customer = GroupFactory(), CustomerFactory()
    start = timezone.now() - timedelta(days=10)
    GroupMembership.objects.create(group=group, customer=customer, joined_at=start)
    with refused():
        GroupMembership.objects.create(group=group, customer=customer,
                                       joined_at=start + timedelta(days=1))
    # Closed stays of the same customer may be any number.
    for day in (2, 4):
        GroupMembership.objects.create(group=group, customer=customer,
                                       joined_at=start - timedelta(days=day + 1),
                                       left_at=start - timedelta(days=day))
    assert GroupMembership.objects.filter(group=group, customer=customer).count() == 3


def test_membership_cannot_end_before_it_starts():
    group, customer = GroupFactory(), CustomerFactory()
    now = timezone.now()
    with refused():
        GroupMembership.objects.create(group=group, customer=customer, joined_at=now,
                                       left_at=now - timedelta(seconds=1))
    GroupMembership.objects.create(group=group, customer=customer, joined_at=now, left_at=now)
