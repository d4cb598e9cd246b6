"""A hand-built private domain for the KPI tests: eight customers with events, orders, group
memberships and stage transitions at explicit local times (Asia/Shanghai, the default time zone).

The range under test is R = 2024-03-01 … 2024-03-10; the preceding range P = 2024-02-20 …
2024-02-29 (2024 is a leap year: ten days each).

    who  owner  channel  joined (local)       status (changed)         referred by
    c1   op-a   qr-a     03-01 00:30 (R; UTC Feb 29)  active
    c2   op-a   qr-a     03-02 10:00 (R)      deleted_us (03-06)
    c3   op-b   store    03-03 10:00 (R)      active                   c5
    c4   op-b   store    03-09 12:00 (R)      deleted_us (03-17)       c5
    c5   op-a   qr-a     01-10 10:00          active
    c6   op-b   —        01-15 10:00          active
    c7   op-a   qr-a     2023-12-01 10:00     removed (02-10)
    c8   op-b   store    03-11 00:10 (after R) active

Events: c1 message_in 03-02, group_joined 03-03; c5 referral 03-03 and 03-09, link_clicked
03-04, message_in 02-25 (P); c3 group_joined 03-04, message_out 03-06 (ours: not inbound);
c7 message_in 03-05, friend_removed 02-10; c2 friend_deleted 03-06 (4 days after joining),
group_joined 03-11 (after R); c4 friend_deleted 03-17 (7.5 days after joining).
Orders: c1 100.00 on 03-05 and 300.00 on 03-08; c5 500.00 on 03-07 and 80.00 on 02-01;
c6 50.00 on 02-29 23:30 (P; the last half hour of it); c3 200.00 placed 03-04, refunded 03-06.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from itertools import count

from django.apps import apps as django_apps
from django.utils import timezone

from crm.models import Channel, Customer, Event, Group, GroupMembership, Order
from crm.services import customer_aggregates_refresh
from lifecycle.models import CustomerStage, Stage, StageModel, StageTransition
from tests.factories import UserFactory

_keys = count()


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=timezone.get_default_timezone())


def mar(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return local(2024, 3, day, hour, minute)


def feb(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return local(2024, 2, day, hour, minute)


@dataclass
class Data:
    op_a: object = None
    op_b: object = None
    qr: Channel = None
    store: Channel = None
    c: dict[int, Customer] = field(default_factory=dict)


def event(customer: Customer, type_: str, at: datetime, **data) -> Event:
    return Event.objects.create(customer=customer, type=type_, occurred_at=at, data=data,
                                idempotency_key=f"hand-{next(_keys)}")


def order(customer: Customer, amount: str, placed_at: datetime, *, refunded_at=None) -> Order:
    return Order.objects.create(
        customer=customer, source="youzan", external_id=f"hand-{next(_keys)}",
        amount=Decimal(amount), placed_at=placed_at,
        status=Order.Status.REFUNDED if refunded_at else Order.Status.PAID,
        refunded_at=refunded_at)


def moves(customer: Customer, model_key: str, *steps: tuple[str, datetime]) -> None:
    """Record the customer's path through a model (first step = first placement) and leave
    them in the last stage, as the lifecycle engine does."""
    model = StageModel.objects.get(key=model_key)
    stages = {s.key: s for s in Stage.objects.filter(model=model)}
    previous = None
    for key, at in steps:
        stage = stages[key]
        StageTransition.objects.create(
            customer=customer, model=model, from_stage=previous, to_stage=stage,
            from_key=previous.key if previous else "", to_key=key, at=at, source="rule",
            win_back=bool(previous and previous.win_back_from and not stage.win_back_from),
            backward=bool(previous and stage.position < previous.position))
        previous = stage
    CustomerStage.objects.update_or_create(
        customer=customer, model=model,
        defaults={"stage": previous, "entered_at": steps[-1][1], "source": "rule"})


def build() -> Data:
    # The built-in stage models come from a data migration, which a transactional test's flush
    # deletes; the migration's own function recreates them (and leaves existing ones alone).
    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(django_apps, None)
    d = Data()
    d.op_a = UserFactory(username="op-a", roles=["operator"])
    d.op_b = UserFactory(username="op-b", roles=["operator"])
    d.qr = Channel.objects.create(code="qr-a", name="QR A")
    d.store = Channel.objects.create(code="store", name="Store")

    def customer(n, joined_at, owner, channel, status=Customer.Status.ACTIVE, changed=None,
                 referred_by=None):
        d.c[n] = Customer.objects.create(
            external_id=f"c{n}", name=f"c{n}", joined_at=joined_at, owner=owner,
            channel=channel, status=status, status_changed_at=changed, referred_by=referred_by)
        return d.c[n]

    deleted, removed = Customer.Status.DELETED_US, Customer.Status.REMOVED
    customer(5, local(2024, 1, 10, 10), d.op_a, d.qr)
    customer(1, mar(1, 0, 30), d.op_a, d.qr)
    customer(2, mar(2, 10), d.op_a, d.qr, deleted, mar(6, 10))
    customer(3, mar(3, 10), d.op_b, d.store, referred_by=d.c[5])
    customer(4, mar(9, 12), d.op_b, d.store, deleted, mar(17, 10), referred_by=d.c[5])
    customer(6, local(2024, 1, 15, 10), d.op_b, None)
    customer(7, local(2023, 12, 1, 10), d.op_a, d.qr, removed, feb(10, 10))
    customer(8, mar(11, 0, 10), d.op_b, d.store)
    c = d.c

    group = Group.objects.create(chat_id="wr-hand", name="Hand group")
    for who, at in ((1, mar(3, 9)), (3, mar(4, 11)), (2, mar(11, 10))):
        GroupMembership.objects.create(group=group, customer=c[who], joined_at=at)
        event(c[who], Event.Type.GROUP_JOINED, at, group="wr-hand")
    event(c[1], Event.Type.MESSAGE_IN, mar(2, 9))
    event(c[5], Event.Type.REFERRAL, mar(3, 12), referred="c3")
    event(c[5], Event.Type.LINK_CLICKED, mar(4, 15))
    event(c[5], Event.Type.REFERRAL, mar(9, 13), referred="c4")
    event(c[5], Event.Type.MESSAGE_IN, feb(25, 10))
    event(c[3], Event.Type.MESSAGE_OUT, mar(6, 10))
    event(c[7], Event.Type.MESSAGE_IN, mar(5, 8))
    event(c[7], Event.Type.FRIEND_REMOVED, feb(10, 10))
    event(c[2], Event.Type.FRIEND_DELETED, mar(6, 10))
    event(c[4], Event.Type.FRIEND_DELETED, mar(17, 0))

    order(c[1], "100.00", mar(5, 10))
    order(c[1], "300.00", mar(8, 10))
    order(c[5], "500.00", mar(7, 10))
    order(c[5], "80.00", feb(1, 10))
    order(c[6], "50.00", feb(29, 23, 30))
    order(c[3], "200.00", mar(4, 10), refunded_at=mar(6, 9))
    customer_aggregates_refresh(customer_ids=[x.pk for x in c.values()])

    # The value lifecycle (dormant and churn are win-back stages).
    moves(c[7], "value", ("intro", local(2023, 12, 1, 10)), ("dormant", local(2024, 1, 15)),
          ("churn", feb(10, 10)))
    moves(c[5], "value", ("intro", local(2024, 1, 10, 10)), ("growth", feb(1, 10)),
          ("dormant", feb(20, 12)), ("growth", mar(4, 12)), ("mature", mar(10, 12)))
    moves(c[6], "value", ("intro", local(2024, 1, 15, 10)), ("growth", feb(22)),
          ("mature", mar(7)))
    moves(c[1], "value", ("intro", mar(1, 1)), ("growth", mar(5, 1)), ("mature", mar(10, 1)))
    moves(c[2], "value", ("intro", mar(2, 10)), ("churn", mar(8, 22)))
    moves(c[3], "value", ("intro", mar(3, 10)))
    moves(c[4], "value", ("intro", mar(9, 12)))
    # AIPL.
    moves(c[5], "aipl", ("awareness", local(2024, 1, 10, 10)), ("purchase", feb(1, 10)),
          ("loyalty", mar(7, 10)))
    moves(c[6], "aipl", ("awareness", local(2024, 1, 15, 10)), ("purchase", feb(29, 23, 45)))
    moves(c[7], "aipl", ("awareness", local(2023, 12, 1, 10)))
    moves(c[1], "aipl", ("awareness", mar(1, 1)), ("interest", mar(3, 10)),
          ("purchase", mar(5, 10)))
    moves(c[2], "aipl", ("awareness", mar(2, 10)))
    moves(c[3], "aipl", ("awareness", mar(3, 10)), ("interest", mar(4, 10)))
    moves(c[4], "aipl", ("awareness", mar(9, 12)))
    return d
