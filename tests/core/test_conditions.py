"""The condition language (DESIGN §3): every operator and every field kind against a hand-built
set of twelve customers, evaluated at a fixed `now`; validation errors that name the bad node's
path, directly and through the API; the language's JSON Schema in the OpenAPI document.

Every case asserts the exact set of matching external ids, on PostgreSQL and on SQLite."""

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from core.conditions import (
    MAX_DEPTH,
    MAX_NODES,
    ConditionError,
    Context,
    Features,
    compile_condition,
    validate,
)
from crm.models import Customer, Event, GroupMembership, Order, OrderItem
from crm.services import event_counts_refresh
from tagging.models import CustomerTag, SegmentIndex, Tag, TagGroup, TagRule
from tests.factories import ChannelFactory, GroupFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ALL = {f"c{n:02d}" for n in range(1, 13)}


def ago(days: float, hours: float = 0) -> datetime:
    return NOW - timedelta(days=days, hours=hours)


def iso(moment: datetime) -> str:
    return moment.isoformat()


def but(*excluded: str) -> set[str]:
    return ALL - set(excluded)


# external id: name, phone, gender, city, channel, owner, joined (days ago), status,
#   opted_out, orders_count, total_spent, last_active (days ago), first order (days ago),
#   status changed (days ago), attributes
CUSTOMERS = {
    "c01": ("张伟", "13800000001", "male", "上海", "store-qr", "op-a", 100, "active", False,
            3, "2500.00", 2, 90, None, {"level": "gold", "score": 80}),
    "c02": ("李娜", "13800000002", "female", "北京", "store-qr", "op-a", 40, "active", False,
            1, "99.50", 25, 30, None, {"level": "silver", "score": 55}),
    "c03": ("王芳", "", "female", "上海", "live-1", "op-b", 10, "active", False,
            0, "0", 1, None, None, {"level": "gold", "score": 100, "note": "VIP 客户"}),
    "c04": ("Bob Smith", "13900000004", "male", "", None, "op-b", 200, "deleted_us", False,
            5, "2000.00", 60, 190, 30, {}),
    "c05": ("Carol", "13900000005", "unknown", "广州", "live-1", "op-a", 13, "active", True,
            0, "0", None, None, None, {"score": 55.5}),
    "c06": ("Dave", "13700000006", "male", "北京", "store-qr", "op-b", 15, "removed", False,
            2, "1999.99", 22, 14, 5, {"level": "bronze"}),
    "c07": ("赵敏", "13700000007", "female", "深圳", None, "op-a", 400, "active", True,
            10, "12000.00", 20, 390, None, {"level": "gold", "score": 20}),
    "c08": ("Eve", "13600000008", "female", "上海", "live-1", "op-b", 3, "active", False,
            0, "0", None, None, None, {"tier": 2, "level": None}),
    "c09": ("Frank", "13600000009", "male", "杭州", "store-qr", "op-a", 60, "active", False,
            1, "300.00", 31, 59, None, {"level": "silver", "score": 90}),
    "c10": ("Grace Li", "13500000010", "female", "北京", None, "op-b", 30, "active", False,
            0, "0", 29, None, None, {"level": "GOLD"}),
    "c11": ("Heidi", "13500000011", "female", "上海", "store-qr", "op-a", 7, "active", False,
            1, "500.00", 6, 8, None, {"score": 70}),
    "c12": ("Ivan", "13500000012", "male", "成都", "live-1", "op-b", 365, "removed", False,
            0, "0", 200, None, 100, {"level": "silver"}),
}

# external id: [(type, days ago)]
EVENTS = {
    "c01": [("message_in", 1), ("message_in", 5), ("message_in", 20), ("link_clicked", 3),
            ("message_out", 1)],
    "c02": [("message_in", 25), ("message_in", 45)],          # 45 days ago: before joining
    "c03": [("message_in", 1), ("message_in", 2), ("group_joined", 2)],
    "c05": [("link_clicked", 10)],
    "c07": [("message_in", 20), ("message_in", 100), ("message_in", 200)],
    "c08": [("friend_added", 3)],
    "c09": [("coupon_redeemed", 31)],
    "c11": [("message_in", 6), ("message_in", 8)],            # 8 days ago: before joining
    "c12": [("message_in", 370)],                             # only before joining
}

# external id: [(amount, status, days ago, category)]
ORDERS = {
    "c01": [("1000.00", "paid", 90, "skincare"), ("1000.00", "paid", 40, "makeup"),
            ("500.00", "paid", 5, "skincare"), ("800.00", "refunded", 10, "skincare")],
    "c02": [("99.50", "paid", 30.5, "food")],
    "c04": [("2000.00", "paid", 190, "makeup"), ("300.00", "paid", 210, "food")],  # 210: pre-join
    "c06": [("1000.00", "paid", 14, "makeup"), ("999.99", "paid", 10, "makeup")],
    "c07": [("6000.00", "paid", 390, "skincare"), ("6000.00", "paid", 20, "skincare")],
    "c09": [("300.00", "paid", 59, "toys")],
    "c10": [("700.00", "refunded", 5, "skincare")],
    "c11": [("500.00", "paid", 8, "food"), ("200.00", "refunded", 3, "food")],     # 8: pre-join
}

# external id: [(chat id, joined days ago, left days ago or None)]
MEMBERSHIPS = {
    "c01": [("wr-vip", 50, None), ("wr-new", 40, None)],
    "c02": [("wr-vip", 30, 20), ("wr-old", 10, None)],
    "c03": [("wr-new", 5, None)],
    "c07": [("wr-old", 300, 200), ("wr-old", 100, None)],
    "c09": [("wr-new", 59, 58)],
    "c12": [("wr-vip", 380, 370)],                           # before joining (365 days ago)
}

# tag name: [(external id, expires days from now or None)]
TAGS = {
    "美妆": [("c01", None), ("c02", None), ("c09", None)],
    "护肤": [("c01", None), ("c03", None), ("c09", None)],
    "VIP": [("c01", None), ("c05", -1), ("c07", 10)],       # c05's expired a day ago
}


@pytest.fixture(scope="module")
def dataset(django_db_setup, django_db_blocker):
    """Built once for the module inside a transaction that is rolled back at its end; each
    test runs in a savepoint within it."""
    with django_db_blocker.unblock(), transaction.atomic():
        data = _build()
        yield data
        transaction.set_rollback(True)


def _build():
    owners = {name: UserFactory(username=name, roles=["operator"]) for name in ("op-a", "op-b")}
    channels = {code: ChannelFactory(code=code) for code in ("store-qr", "live-1")}
    customers = {}
    for ext, (name, phone, gender, city, channel, owner, joined, status, opted_out, n_orders,
              spent, active, first, changed, attributes) in CUSTOMERS.items():
        customers[ext] = Customer.objects.create(
            external_id=ext, name=name, phone=phone, gender=gender, city=city,
            channel=channels.get(channel), owner=owners[owner], joined_at=ago(joined),
            status=status, opted_out=opted_out, orders_count=n_orders,
            total_spent=Decimal(spent), last_active_at=ago(active) if active else None,
            first_order_at=ago(first) if first else None,
            last_order_at=ago(min(first, 5)) if first else None,
            status_changed_at=ago(changed) if changed else None, attributes=attributes)
    Event.objects.bulk_create([
        Event(customer=customers[ext], type=kind, occurred_at=ago(days),
              idempotency_key=f"{ext}-{index}")
        for ext, rows in EVENTS.items() for index, (kind, days) in enumerate(rows)])
    # Stored around events_ingest, so their per-customer counts are computed as the nightly
    # repair does (ingest keeps them itself: tests/crm).
    event_counts_refresh()
    for ext, rows in ORDERS.items():
        for index, (amount, status, days, category) in enumerate(rows):
            order = Order.objects.create(
                customer=customers[ext], source="youzan", external_id=f"{ext}-{index}",
                amount=Decimal(amount), status=status, placed_at=ago(days),
                refunded_at=ago(days - 1) if status == "refunded" else None)
            OrderItem.objects.create(order=order, sku=f"sku-{category}", category=category,
                                     price=Decimal(amount))
    groups = {chat: GroupFactory(chat_id=chat, owner=owners["op-a"])
              for chat in ("wr-vip", "wr-new", "wr-old")}
    GroupMembership.objects.bulk_create([
        GroupMembership(group=groups[chat], customer=customers[ext], joined_at=ago(joined),
                        left_at=ago(left) if left is not None else None)
        for ext, rows in MEMBERSHIPS.items() for chat, joined, left in rows])
    interest = TagGroup.objects.create(name="兴趣")
    membership = TagGroup.objects.create(name="会员")
    tags = {"美妆": Tag.objects.create(group=interest, name="美妆"),
            "护肤": Tag.objects.create(group=interest, name="护肤"),
            "VIP": Tag.objects.create(group=membership, name="VIP")}
    CustomerTag.objects.bulk_create([
        CustomerTag(customer=customers[ext], tag=tags[name], added_at=ago(30),
                    expires_at=NOW + timedelta(days=expires) if expires is not None else None)
        for name, rows in TAGS.items() for ext, expires in rows])
    return {"customers": customers, "tags": tags}


def matching(tree) -> set[str]:
    q = compile_condition(tree, now=NOW)
    return set(Customer.objects.filter(q).values_list("external_id", flat=True))


def leaf(field, op, value, **params):
    return {"field": field, "op": op, "value": value, **params}


CASES = [
    # --- strings: external_id, name, phone, city -------------------------------------------
    ("string-eq", leaf("external_id", "eq", "c01"), {"c01"}),
    ("string-in", leaf("external_id", "in", ["c01", "c02", "nobody"]), {"c01", "c02"}),
    ("string-ne", leaf("name", "ne", "张伟"), but("c01")),
    ("string-contains-case-insensitive", leaf("name", "contains", "li"), {"c10"}),
    ("string-contains-cjk", leaf("name", "contains", "王"), {"c03"}),
    ("string-contains-prefix", leaf("phone", "contains", "1380"), {"c01", "c02"}),
    ("string-is-null-blank", leaf("phone", "is_null", True), {"c03"}),
    ("string-is-not-null", leaf("phone", "is_null", False), but("c03")),
    ("city-eq", leaf("city", "eq", "上海"), {"c01", "c03", "c08", "c11"}),
    ("city-not-in", leaf("city", "not_in", ["上海", "北京"]), {"c04", "c05", "c07", "c09", "c12"}),
    ("city-is-null", leaf("city", "is_null", True), {"c04"}),
    # --- choices: gender, status ------------------------------------------------------------
    ("gender-eq", leaf("gender", "eq", "female"), {"c02", "c03", "c07", "c08", "c10", "c11"}),
    ("gender-ne", leaf("gender", "ne", "male"),
     {"c02", "c03", "c05", "c07", "c08", "c10", "c11"}),
    ("gender-in", leaf("gender", "in", ["unknown"]), {"c05"}),
    ("status-in", leaf("status", "in", ["deleted_us", "removed"]), {"c04", "c06", "c12"}),
    ("status-not-in", leaf("status", "not_in", ["deleted_us", "removed"]),
     but("c04", "c06", "c12")),
    ("status-ne", leaf("status", "ne", "active"), {"c04", "c06", "c12"}),
    # --- bool -------------------------------------------------------------------------------
    ("bool-eq", leaf("opted_out", "eq", True), {"c05", "c07"}),
    ("bool-ne", leaf("opted_out", "ne", True), but("c05", "c07")),
    # --- channel and owner ------------------------------------------------------------------
    ("channel-eq", leaf("channel", "eq", "store-qr"), {"c01", "c02", "c06", "c09", "c11"}),
    ("channel-ne-includes-no-channel", leaf("channel", "ne", "store-qr"),
     {"c03", "c04", "c05", "c07", "c08", "c10", "c12"}),
    ("channel-in", leaf("channel", "in", ["live-1"]), {"c03", "c05", "c08", "c12"}),
    ("channel-not-in", leaf("channel", "not_in", ["live-1"]),
     {"c01", "c02", "c04", "c06", "c07", "c09", "c10", "c11"}),
    ("channel-contains", leaf("channel", "contains", "LIVE"), {"c03", "c05", "c08", "c12"}),
    ("channel-is-null", leaf("channel", "is_null", True), {"c04", "c07", "c10"}),
    ("owner-eq", leaf("owner", "eq", "op-a"), {"c01", "c02", "c05", "c07", "c09", "c11"}),
    ("owner-ne", leaf("owner", "ne", "op-a"), {"c03", "c04", "c06", "c08", "c10", "c12"}),
    ("owner-in", leaf("owner", "in", ["op-b"]), {"c03", "c04", "c06", "c08", "c10", "c12"}),
    ("owner-not-in", leaf("owner", "not_in", ["op-a", "op-b"]), set()),
    # --- int --------------------------------------------------------------------------------
    ("int-eq", leaf("orders_count", "eq", 5), {"c04"}),
    ("int-ne", leaf("orders_count", "ne", 0), {"c01", "c02", "c04", "c06", "c07", "c09", "c11"}),
    ("int-gt", leaf("orders_count", "gt", 2), {"c01", "c04", "c07"}),
    ("int-gte", leaf("orders_count", "gte", 2), {"c01", "c04", "c06", "c07"}),
    ("int-lt", leaf("orders_count", "lt", 1), {"c03", "c05", "c08", "c10", "c12"}),
    ("int-lte", leaf("orders_count", "lte", 1),
     {"c02", "c03", "c05", "c08", "c09", "c10", "c11", "c12"}),
    ("int-in", leaf("orders_count", "in", [1, 2]), {"c02", "c06", "c09", "c11"}),
    ("int-not-in", leaf("orders_count", "not_in", [0, 1]), {"c01", "c04", "c06", "c07"}),
    ("int-between-inclusive", leaf("orders_count", "between", [2, 5]), {"c01", "c04", "c06"}),
    # --- decimal ----------------------------------------------------------------------------
    ("decimal-gte-boundary", leaf("total_spent", "gte", 2000), {"c01", "c04", "c07"}),
    ("decimal-gt", leaf("total_spent", "gt", "2000"), {"c01", "c07"}),
    ("decimal-lt", leaf("total_spent", "lt", 2000), but("c01", "c04", "c07")),
    ("decimal-lte-cents", leaf("total_spent", "lte", 99.5),
     {"c02", "c03", "c05", "c08", "c10", "c12"}),
    ("decimal-eq-cents", leaf("total_spent", "eq", "99.50"), {"c02"}),
    ("decimal-between-cents", leaf("total_spent", "between", ["1999.99", 2000]), {"c04", "c06"}),
    # --- datetime ---------------------------------------------------------------------------
    ("datetime-within-days", leaf("joined_at", "within_days", 14),
     {"c03", "c05", "c08", "c11"}),
    ("datetime-within-days-boundary-inclusive", leaf("joined_at", "within_days", 100),
     but("c04", "c07", "c12")),
    # "At least N days old": exactly 100 days ago counts, as it does for within_days.
    ("datetime-older-than-boundary-inclusive", leaf("joined_at", "older_than_days", 100),
     {"c01", "c04", "c07", "c12"}),
    ("datetime-older-than", leaf("joined_at", "older_than_days", 101), {"c04", "c07", "c12"}),
    ("datetime-gt", leaf("joined_at", "gt", iso(ago(15))), {"c03", "c05", "c08", "c11"}),
    ("datetime-gte", leaf("joined_at", "gte", iso(ago(15))), {"c03", "c05", "c06", "c08", "c11"}),
    ("datetime-lt", leaf("joined_at", "lt", iso(ago(365))), {"c07"}),
    ("datetime-lte", leaf("joined_at", "lte", iso(ago(365))), {"c07", "c12"}),
    ("datetime-between", leaf("joined_at", "between", [iso(ago(40)), iso(ago(30))]),
     {"c02", "c10"}),
    # A bare date is midnight in the project's time zone (Asia/Shanghai): 2026-02-19 16:00 UTC.
    ("datetime-date-only", leaf("joined_at", "gte", "2026-02-20"), {"c08", "c11"}),
    ("datetime-is-null", leaf("last_active_at", "is_null", True), {"c05", "c08"}),
    ("datetime-is-not-null", leaf("first_order_at", "is_null", False),
     {"c01", "c02", "c04", "c06", "c07", "c09", "c11"}),
    ("last-active-older-than-skips-null", leaf("last_active_at", "older_than_days", 21),
     {"c02", "c04", "c06", "c09", "c10", "c12"}),
    ("last-active-within", leaf("last_active_at", "within_days", 21),
     {"c01", "c03", "c07", "c11"}),
    ("status-changed-within", leaf("status_changed_at", "within_days", 10), {"c06"}),
    # --- attributes.<key> -------------------------------------------------------------------
    ("attr-eq-case-sensitive", leaf("attributes.level", "eq", "gold"), {"c01", "c03", "c07"}),
    ("attr-in", leaf("attributes.level", "in", ["silver", "bronze"]),
     {"c02", "c06", "c09", "c12"}),
    ("attr-contains", leaf("attributes.level", "contains", "gold"),
     {"c01", "c03", "c07", "c10"}),
    ("attr-gt-number", leaf("attributes.score", "gt", 60), {"c01", "c03", "c09", "c11"}),
    ("attr-gte-number", leaf("attributes.score", "gte", 80), {"c01", "c03", "c09"}),
    ("attr-lt-number", leaf("attributes.score", "lt", 55), {"c07"}),
    ("attr-lte-number", leaf("attributes.score", "lte", 55), {"c02", "c07"}),
    ("attr-between-number", leaf("attributes.score", "between", [50, 60]), {"c02", "c05"}),
    ("attr-eq-float", leaf("attributes.score", "eq", 55.5), {"c05"}),
    ("attr-in-numbers", leaf("attributes.score", "in", [55, 100]), {"c02", "c03"}),
    ("attr-eq-int", leaf("attributes.tier", "eq", 2), {"c08"}),
    ("attr-is-not-null", leaf("attributes.score", "is_null", False),
     {"c01", "c02", "c03", "c05", "c07", "c09", "c11"}),
    # c08's level is an explicit JSON null: as null as a missing key.
    ("attr-is-null-missing-or-null", leaf("attributes.level", "is_null", True),
     {"c04", "c05", "c08", "c11"}),
    # Customers without the key are not gold either.
    ("attr-ne-includes-missing", leaf("attributes.level", "ne", "gold"),
     but("c01", "c03", "c07")),
    ("attr-not-in-includes-missing", leaf("attributes.level", "not_in", ["gold", "silver"]),
     but("c01", "c03", "c07", "c02", "c09", "c12")),
    # --- event ------------------------------------------------------------------------------
    ("event-type-count-gte-1", leaf("event", "count_gte", 1, type="message_in"),
     {"c01", "c02", "c03", "c07", "c11", "c12"}),
    ("event-type-count-gte-3", leaf("event", "count_gte", 3, type="message_in"), {"c01", "c07"}),
    ("event-within-days", leaf("event", "count_gte", 2, type="message_in", within_days=7),
     {"c01", "c03"}),
    ("event-since-joined", leaf("event", "count_gte", 2, type="message_in", since_joined=True),
     {"c01", "c03", "c07"}),
    ("event-since-joined-1", leaf("event", "count_gte", 1, type="message_in", since_joined=True),
     {"c01", "c02", "c03", "c07", "c11"}),
    ("event-types-list", leaf("event", "count_gte", 1, type=["link_clicked", "coupon_redeemed"]),
     {"c01", "c05", "c09"}),
    ("event-any-type", leaf("event", "count_gte", 4), {"c01"}),
    ("event-count-lte-0", leaf("event", "count_lte", 0, type="message_in"),
     {"c04", "c05", "c06", "c08", "c09", "c10"}),
    ("event-count-lte-1-within", leaf("event", "count_lte", 1, type="message_in", within_days=30),
     {"c02", "c04", "c05", "c06", "c07", "c08", "c09", "c10", "c12"}),
    ("event-count-gte-0-is-everyone", leaf("event", "count_gte", 0, type="referral"), ALL),
    # --- order (refunded orders never count) ------------------------------------------------
    ("order-count-gte-1", leaf("order", "count_gte", 1),
     {"c01", "c02", "c04", "c06", "c07", "c09", "c11"}),
    ("order-count-gte-2", leaf("order", "count_gte", 2), {"c01", "c04", "c06", "c07"}),
    ("order-count-gte-3", leaf("order", "count_gte", 3), {"c01"}),
    ("order-count-lte-0", leaf("order", "count_lte", 0), {"c03", "c05", "c08", "c10", "c12"}),
    ("order-count-lte-1", leaf("order", "count_lte", 1),
     {"c02", "c03", "c05", "c08", "c09", "c10", "c11", "c12"}),
    ("order-sum-gte", leaf("order", "sum_gte", 2000), {"c01", "c04", "c07"}),
    ("order-sum-gte-cents", leaf("order", "sum_gte", "1999.99"), {"c01", "c04", "c06", "c07"}),
    ("order-sum-gte-refunds-excluded", leaf("order", "sum_gte", 500),
     {"c01", "c04", "c06", "c07", "c11"}),
    ("order-sum-gte-600", leaf("order", "sum_gte", 600), {"c01", "c04", "c06", "c07"}),
    ("order-sum-within-days", leaf("order", "sum_gte", 1000, within_days=30), {"c06", "c07"}),
    ("order-count-within-days", leaf("order", "count_gte", 1, within_days=30),
     {"c01", "c06", "c07", "c11"}),
    ("order-since-joined-count", leaf("order", "count_gte", 1, since_joined=True),
     {"c01", "c02", "c04", "c06", "c07", "c09"}),
    ("order-sum-2100", leaf("order", "sum_gte", 2100), {"c01", "c04", "c07"}),
    ("order-since-joined-sum", leaf("order", "sum_gte", 2100, since_joined=True), {"c01", "c07"}),
    ("order-category", leaf("order", "count_gte", 1, category="skincare"), {"c01", "c07"}),
    ("order-categories", leaf("order", "count_gte", 1, category=["makeup", "food"]),
     {"c01", "c02", "c04", "c06", "c11"}),
    ("order-category-sum", leaf("order", "sum_gte", 1500, category="skincare"), {"c01", "c07"}),
    ("order-category-sum-refund-excluded", leaf("order", "sum_gte", 1600, category="skincare"),
     {"c07"}),
    ("order-category-within", leaf("order", "count_gte", 2, category="skincare", within_days=100),
     {"c01"}),
    # --- group ------------------------------------------------------------------------------
    ("group-any-now", leaf("group", "in", []), {"c01", "c02", "c03", "c07"}),
    ("group-any-now-null", leaf("group", "in", None), {"c01", "c02", "c03", "c07"}),
    ("group-specific-now", leaf("group", "in", ["wr-vip"]), {"c01"}),
    ("group-specific-ever", leaf("group", "in", ["wr-vip"], ever=True), {"c01", "c02", "c12"}),
    ("group-several", leaf("group", "in", ["wr-vip", "wr-new"]), {"c01", "c03"}),
    ("group-string-value", leaf("group", "in", "wr-old"), {"c02", "c07"}),
    ("group-not-in-specific", leaf("group", "not_in", ["wr-vip"]), but("c01")),
    ("group-in-none-now", leaf("group", "not_in", []), but("c01", "c02", "c03", "c07")),
    ("group-never", leaf("group", "not_in", [], ever=True),
     {"c04", "c05", "c06", "c08", "c10", "c11"}),
    ("group-count-now", leaf("group", "count_gte", 2), {"c01"}),
    ("group-count-ever", leaf("group", "count_gte", 2, ever=True), {"c01", "c02"}),
    ("group-count-1", leaf("group", "count_gte", 1), {"c01", "c02", "c03", "c07"}),
    ("group-ever-since-joined", leaf("group", "in", [], ever=True, since_joined=True),
     {"c01", "c02", "c03", "c07", "c09"}),
    # --- tag (an expired tag no longer counts) ----------------------------------------------
    ("tag-any-expired-skipped", leaf("tag", "any", ["VIP"]), {"c01", "c07"}),
    ("tag-any-of-two", leaf("tag", "any", ["美妆", "护肤"]), {"c01", "c02", "c03", "c09"}),
    ("tag-all", leaf("tag", "all", ["美妆", "护肤"]), {"c01", "c09"}),
    ("tag-all-across-groups", leaf("tag", "all", ["美妆", "VIP"]), {"c01"}),
    ("tag-none-expired-counts-as-none", leaf("tag", "none", ["VIP"]), but("c01", "c07")),
    ("tag-by-id", leaf("tag", "any", ["@护肤"]), {"c01", "c03", "c09"}),
    ("tag-single-name", leaf("tag", "none", "美妆"), but("c01", "c02", "c09")),
    # --- all / any / not --------------------------------------------------------------------
    ("all", {"all": [leaf("city", "eq", "上海"), leaf("gender", "eq", "female")]},
     {"c03", "c08", "c11"}),
    ("any", {"any": [leaf("orders_count", "gte", 5), leaf("opted_out", "eq", True)]},
     {"c04", "c05", "c07"}),
    ("not", {"not": leaf("city", "eq", "上海")}, but("c01", "c03", "c08", "c11")),
    ("not-not", {"not": {"not": leaf("city", "eq", "上海")}}, {"c01", "c03", "c08", "c11"}),
    ("not-nullable-datetime", {"not": leaf("last_active_at", "within_days", 21)},
     but("c01", "c03", "c07", "c11")),
    ("not-channel", {"not": leaf("channel", "eq", "store-qr")},
     {"c03", "c04", "c05", "c07", "c08", "c10", "c12"}),
    ("not-attribute-includes-missing", {"not": leaf("attributes.level", "eq", "gold")},
     but("c01", "c03", "c07")),
    ("not-attribute-number", {"not": leaf("attributes.score", "gt", 60)},
     but("c01", "c03", "c09", "c11")),
    ("not-tag", {"not": leaf("tag", "any", ["VIP"])}, but("c01", "c07")),
    ("not-event", {"not": leaf("event", "count_gte", 1, type="message_in")},
     {"c04", "c05", "c06", "c08", "c09", "c10"}),
    ("not-group", {"not": leaf("group", "in", ["wr-vip"], ever=True)}, but("c01", "c02", "c12")),
    ("nested", {"all": [
        {"any": [leaf("tag", "any", ["美妆"]), leaf("order", "sum_gte", 5000)]},
        {"not": leaf("owner", "eq", "op-b")},
        leaf("last_active_at", "within_days", 30),
    ]}, {"c01", "c02", "c07"}),
    ("design-example", {"all": [
        {"field": "tag", "op": "any", "value": ["美妆", "VIP"]},
        {"field": "orders_count", "op": "gte", "value": 2},
        {"field": "last_active_at", "op": "older_than_days", "value": 1},
        {"not": {"field": "channel", "op": "eq", "value": "live-1"}},
        {"field": "event", "type": "message_in", "op": "count_gte", "value": 1,
         "within_days": 30},
    ]}, {"c01", "c07"}),
    ("any-of-one-all-of-one", {"any": [{"all": [leaf("external_id", "eq", "c12")]}]}, {"c12"}),
]


def _resolve_ids(tree, tags):
    """`"@name"` in a tree stands for that tag's id."""
    if isinstance(tree, dict):
        return {k: _resolve_ids(v, tags) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_resolve_ids(v, tags) for v in tree]
    if isinstance(tree, str) and tree.startswith("@"):
        return tags[tree[1:]].pk
    return tree


@pytest.mark.parametrize(("tree", "expected"),
                         [pytest.param(tree, expected, id=name) for name, tree, expected in CASES])
def test_condition_matches_exactly(dataset, tree, expected):
    assert matching(_resolve_ids(tree, dataset["tags"])) == expected


@pytest.mark.postgres_only
@pytest.mark.parametrize(("tree", "expected"),
                         [pytest.param(tree, expected, id=name) for name, tree, expected in CASES])
def test_the_shared_per_customer_counts_give_the_same_customers(dataset, tree, expected):
    """What lifecycle evaluation uses on PostgreSQL: counting leaves read one materialized
    per-customer aggregate per source table instead of a subquery each."""
    tree = _resolve_ids(tree, dataset["tags"])
    features = Features("test_features")
    compile_condition(tree, now=NOW, features=features)     # registers the counts
    with transaction.atomic():
        features.materialize(Context(now=NOW))
        found = set(features.join(Customer.objects.all())
                    .filter(compile_condition(tree, now=NOW, features=features))
                    .values_list("external_id", flat=True))
        # and chunk by chunk, as an evaluation reads it
        ids = sorted(Customer.objects.values_list("pk", flat=True))
        middle = ids[len(ids) // 2]
        chunked = set()
        for pk_range in ((0, middle), (middle, None)):
            q = compile_condition(tree, now=NOW, pk_range=pk_range, features=features)
            chunked |= set(features.join(Customer.objects.all(), pk_range).filter(q)
                           .filter(pk__gt=pk_range[0]).filter(
                pk__lte=pk_range[1] or ids[-1]).values_list("external_id", flat=True))
    assert found == expected
    assert chunked == expected


@pytest.fixture(scope="module")
def segment_index_build(dataset, django_db_blocker):
    """The segment index built over the dataset (within the module's transaction)."""
    from tagging import segment_index

    with django_db_blocker.unblock():
        index = segment_index.build()
        snapshot = segment_index.Snapshot(index)
        for name in index.parts.values_list("name", flat=True):
            snapshot.part(name)
        # loaded: the build goes, so that the module's other previews count in SQL
        index.delete()
    return snapshot


@pytest.fixture(scope="module")
def segment_index_update(dataset, django_db_blocker):
    """An update of the segment index over a full build of another state: the full build is
    taken with tags, orders, memberships, event counts and a customer's fields changed and a
    customer more, then those changes are undone (rows deleted come back as new rows, the
    extra customer is deleted, one more is created and deleted past the last id) and an
    update reads the customers they touched again — through the triggers, not told which.
    Laid over the full build, it must answer as a build of the data as it is."""
    from crm.models import EventCount
    from tagging import segment_index

    def again(rows):                        # the same rows, stored anew
        for row in rows:
            row.pk = None
        return rows

    with django_db_blocker.unblock():
        c = dataset["customers"]
        tags = list(CustomerTag.objects.filter(customer_id__in=[c["c01"].pk, c["c09"].pk]))
        orders = [(order, list(order.items.all()))
                  for order in Order.objects.filter(customer=c["c06"])]
        stays = list(GroupMembership.objects.filter(customer=c["c07"]))
        counts = list(EventCount.objects.filter(customer=c["c01"]))
        c02 = Customer.objects.get(pk=c["c02"].pk)
        CustomerTag.objects.filter(pk__in=[t.pk for t in tags]).delete()
        Order.objects.filter(customer=c["c06"]).delete()
        GroupMembership.objects.filter(customer=c["c07"]).delete()
        EventCount.objects.filter(customer=c["c01"]).delete()
        Customer.objects.filter(pk=c02.pk).update(
            city="拉萨", owner=c["c03"].owner, attributes={"level": "bronze", "fresh": "x"})
        extra = Customer.objects.create(external_id="gone", name="gone", city="拉萨",
                                        joined_at=NOW, owner=c["c01"].owner)
        CustomerTag.objects.create(customer_id=extra.pk, tag=dataset["tags"]["VIP"],
                                   added_at=NOW)
        full = segment_index.build(full=True)
        assert full.base_id is None
        CustomerTag.objects.bulk_create(again(tags))
        for order, items in orders:
            order.pk = None
            order.save()
            for item in again(items):
                item.order = order
            OrderItem.objects.bulk_create(items)
        GroupMembership.objects.bulk_create(again(stays))
        EventCount.objects.bulk_create(again(counts))
        c02.save()
        Customer.objects.filter(pk=extra.pk).delete()
        Customer.objects.create(external_id="later", name="later", joined_at=NOW,
                                owner=c["c01"].owner).delete()
        with override_settings(SEGMENT_INDEX_FULL_SHARE=1):    # 7 of 14 would take a full one
            update = segment_index.build()
        assert update.base_id == full.pk and update.changed == 7
        snapshot = segment_index.Snapshot(update)
        for name in update.parts.exclude(name="changed").values_list("name", flat=True):
            snapshot.part(name)
        SegmentIndex.objects.filter(pk__in=[full.pk, update.pk]).delete()
    return snapshot


_SQL_ONLY_FIELDS = {"external_id", "name", "phone"}


def _index_answers(tree) -> bool:
    """What the segment index answers itself (tagging.segment_index); the rest goes to SQL."""
    if isinstance(tree, list):
        return all(_index_answers(node) for node in tree)
    if "field" not in tree:
        return _index_answers(next(iter(tree.values())))
    field, op, value = tree["field"], tree["op"], tree.get("value")
    if field in _SQL_ONLY_FIELDS or op == "contains":
        return False
    if field.startswith("attributes."):
        operands = value if isinstance(value, list) else [value]
        return op == "is_null" or (op in ("eq", "ne", "in", "not_in")
                                   and all(isinstance(v, str) for v in operands))
    if field == "event" and tree.get("within_days") is not None:
        return (value if op == "count_gte" else value + 1) <= 5
    return True


@pytest.mark.postgres_only
@pytest.mark.parametrize(("tree", "expected"),
                         [pytest.param(tree, expected, id=name) for name, tree, expected in CASES])
def test_the_segment_index_gives_the_same_customers(dataset, segment_index_build, tree,
                                                    expected):
    """What segment previews read: the columns of the segment index, evaluated as arrays.
    Every case it answers gives the same customers as SQL; the others it declines."""
    from tagging import segment_index

    tree = _resolve_ids(tree, dataset["tags"])
    found = segment_index.evaluate(tree, segment_index_build, now=NOW)
    if not _index_answers(tree):
        assert found is None
        return
    assert found is not None
    ids = [int(i) for i in np.flatnonzero(found)]
    assert set(Customer.objects.filter(pk__in=ids).values_list("external_id", flat=True)) \
        == expected
    assert len(ids) == len(expected)


@pytest.mark.postgres_only
@pytest.mark.parametrize(("tree", "expected"),
                         [pytest.param(tree, expected, id=name) for name, tree, expected in CASES])
def test_an_update_of_the_segment_index_gives_the_same_customers(
        dataset, segment_index_update, tree, expected):
    from tagging import segment_index

    tree = _resolve_ids(tree, dataset["tags"])
    found = segment_index.evaluate(tree, segment_index_update, now=NOW)
    if not _index_answers(tree):
        assert found is None
        return
    ids = [int(i) for i in np.flatnonzero(found)]
    assert set(Customer.objects.filter(pk__in=ids).values_list("external_id", flat=True)) \
        == expected


@pytest.mark.postgres_only
@pytest.mark.parametrize("tree", [
    # amounts between cents, rounded the right way for each comparison
    leaf("total_spent", "gte", "1999.995"), leaf("total_spent", "gt", "1999.985"),
    leaf("total_spent", "lt", "99.505"), leaf("total_spent", "lte", "99.499"),
    leaf("total_spent", "eq", "99.5"), leaf("total_spent", "eq", "99.505"),
    leaf("total_spent", "in", ["0", "99.5", "300.001"]),
    leaf("total_spent", "between", ["99.491", "1999.999"]),
    leaf("total_spent", "gte", "1e30"), leaf("orders_count", "gte", 10 ** 30),
    # more digits than a default decimal context keeps
    leaf("total_spent", "gt", "1999.99999999999999999999999999999"),
    leaf("total_spent", "lte", "1999.99999999999999999999999999999"),
    leaf("total_spent", "ne", "1999.99999999999999999999999999999"),
    # a type listed twice counts once
    leaf("event", "count_gte", 2, type=["message_in", "message_in"]),
    leaf("event", "count_lte", 1, type=["message_in", "message_in"], within_days=400),
    leaf("orders_count", "in", [1, 10 ** 30]), leaf("orders_count", "not_in", [-(10 ** 30)]),
    # windows of events since joining: an event before joining does not count
    leaf("event", "count_gte", 2, type="message_in", within_days=400, since_joined=True),
    leaf("event", "count_gte", 1, type="message_in", within_days=30, since_joined=True),
    leaf("event", "count_lte", 1, type="message_in", within_days=400, since_joined=True),
    leaf("event", "count_gte", 2, within_days=400),
    leaf("event", "count_gte", 5, type=["message_in", "link_clicked"], within_days=400),
    leaf("joined_at", "between", [iso(ago(40)), iso(ago(10))]),
    leaf("last_active_at", "lt", iso(ago(25))),
    leaf("status_changed_at", "is_null", False),
    leaf("channel", "is_null", True), leaf("channel", "not_in", ["store-qr"]),
    leaf("owner", "ne", "op-a"), leaf("attributes.nothing", "is_null", True),
    leaf("attributes.nothing", "ne", "x"), leaf("attributes.tier", "eq", "2"),
    # paid orders: sums in cents, windows since joining, categories, counts at most
    leaf("order", "sum_gte", "1999.99", within_days=400),
    leaf("order", "sum_gte", "1000.005"), leaf("order", "sum_gte", "99.501"),
    leaf("order", "count_lte", 1, category="skincare"),
    leaf("order", "count_gte", 2, category=["makeup", "food"], since_joined=True),
    leaf("order", "count_gte", 1, category="nothing-sold"),
    # groups: now or ever, since joining, named or any, distinct groups
    leaf("group", "count_gte", 2, ever=True), leaf("group", "count_gte", 2),
    leaf("group", "not_in", ["wr-old", "no-such-group"], ever=True, since_joined=True),
    leaf("group", "in", [], since_joined=True), leaf("group", "count_gte", 1, since_joined=True,
                                                     ever=True),
])
def test_the_segment_index_agrees_with_sql_at_the_edges(dataset, segment_index_build, tree):
    from tagging import segment_index

    found = segment_index.evaluate(tree, segment_index_build, now=NOW)
    assert found is not None
    ids = [int(i) for i in np.flatnonzero(found)]
    assert set(Customer.objects.filter(pk__in=ids).values_list("external_id", flat=True)) \
        == matching(tree)


def test_every_operator_of_the_language_is_exercised():
    from core.conditions import OPERATORS

    used = set()

    def walk(node):
        if isinstance(node, dict):
            if "op" in node:
                used.add(node["op"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for _name, tree, _expected in CASES:
        walk(tree)
    assert used == set(OPERATORS)


def test_a_tag_that_expires_later_than_now_still_counts_and_then_stops(dataset):
    vip = leaf("tag", "any", ["VIP"])
    assert "c07" in matching(vip)
    later = compile_condition(vip, now=NOW + timedelta(days=11))
    assert set(Customer.objects.filter(later).values_list("external_id", flat=True)) == {"c01"}


def test_within_days_moves_with_now(dataset):
    tree = leaf("joined_at", "within_days", 14)
    q = compile_condition(tree, now=NOW + timedelta(days=4))
    # Four days later c05 (joined 13 days before NOW) has left the window; c03 (10 days before
    # NOW) is exactly 14 days old and still inside it.
    assert set(Customer.objects.filter(q).values_list("external_id", flat=True)) == {
        "c03", "c08", "c11"}
    q = compile_condition(tree, now=NOW + timedelta(days=4, seconds=1))
    assert set(Customer.objects.filter(q).values_list("external_id", flat=True)) == {"c08",
                                                                                      "c11"}


def test_a_compiled_condition_is_one_query(dataset):
    tree = {"all": [
        leaf("tag", "all", ["美妆", "护肤"]),
        leaf("event", "count_gte", 2, type="message_in", within_days=30),
        leaf("order", "sum_gte", 1000, category="skincare"),
        {"not": leaf("group", "in", ["wr-old"])},
        leaf("attributes.score", "gt", 10),
    ]}
    q = compile_condition(tree, now=NOW)
    with CaptureQueriesContext(connection) as queries:
        found = list(Customer.objects.filter(q).values_list("external_id", flat=True))
    assert found == ["c01"]
    assert len(queries) == 1


def test_values_are_parameters_not_sql(dataset):
    sneaky = "x' OR '1'='1"
    assert matching(leaf("name", "eq", sneaky)) == set()
    assert matching(leaf("attributes.level", "contains", "%")) == set()
    assert matching(leaf("name", "contains", "_")) == set()


def test_numbers_imported_from_csv_compare_as_numbers(operator, english_client):
    """CSV import stores attributes as text ("35"); a segment `attributes.age gt 30` must still
    compare them as numbers, and count the same on PostgreSQL and SQLite."""
    client = english_client(operator)
    content = (b"external_id,name,attributes.age\n"
               b"csv-25,A,25\ncsv-35,B,35\ncsv-100,C,100\ncsv-x,D,unknown\n")
    imported = client.post("/api/v1/customers/import/",
                           {"file": SimpleUploadedFile("c.csv", content, "text/csv")},
                           format="multipart")
    assert imported.status_code == 200, imported.content[:300]
    assert imported.json()["accepted"] == 4

    def count(condition):
        response = client.post("/api/v1/segments/preview/", {"condition": condition},
                               format="json")
        assert response.status_code == 200, response.json()
        return {c["external_id"] for c in response.json()["sample"]}

    assert count(leaf("attributes.age", "eq", "35")) == {"csv-35"}
    assert count(leaf("attributes.age", "gt", 30)) == {"csv-35", "csv-100"}
    assert count(leaf("attributes.age", "between", [20, 40])) == {"csv-25", "csv-35"}
    assert count(leaf("attributes.age", "lt", 50)) == {"csv-25", "csv-35"}


def test_attribute_comparisons_leave_out_values_of_another_type(dataset):
    """Compared with a number, only numbers (or text reading as one) take part; compared with
    text, only text — so both databases answer alike whatever customers stored."""
    owner = dataset["customers"]["c01"].owner
    values = {"m-num": 90, "m-num-text": "90", "m-text": "abc", "m-bool": True, "m-list": [1],
              "m-null": None, "m-date": "2026-01-05"}
    for ext, value in values.items():
        Customer.objects.create(external_id=ext, owner=owner, attributes={"v": value})

    def among(tree):
        return matching(tree) & set(values)

    assert among(leaf("attributes.v", "gt", 60)) == {"m-num", "m-num-text"}
    assert among(leaf("attributes.v", "lt", 100)) == {"m-num", "m-num-text"}
    assert among(leaf("attributes.v", "eq", 90)) == {"m-num", "m-num-text"}
    assert among(leaf("attributes.v", "eq", "90")) == {"m-num-text"}
    assert among(leaf("attributes.v", "gt", "a")) == {"m-text"}
    assert among(leaf("attributes.v", "lt", "a")) == {"m-num-text", "m-date"}
    assert among(leaf("attributes.v", "between", ["2026-01-01", "2026-01-31"])) == {"m-date"}
    assert among({"not": leaf("attributes.v", "gte", 60)}) == {
        "m-text", "m-bool", "m-list", "m-null", "m-date"}


# --- Validation: the message names the path of the bad node ---------------------------------

OK_A = leaf("city", "eq", "上海")
OK_B = leaf("orders_count", "gte", 1)

ERRORS = [
    ("unknown-operator", {"all": [OK_A, OK_B, {"field": "joined_at", "op": "older_than",
                                                "value": 3}]},
     "all[2].op: unknown operator 'older_than'"),
    ("missing-operator", {"any": [{"field": "city", "value": "x"}]},
     "any[0].op: unknown operator None"),
    ("unknown-field", {"not": {"field": "shoe_size", "op": "eq", "value": 42}},
     "not.field: unknown field 'shoe_size'; known: "),
    ("field-not-string", {"field": 7, "op": "eq", "value": 1}, "field: must be a string"),
    ("wrong-op-for-field", {"any": [OK_A, leaf("gender", "gt", "male")]},
     "any[1].op: operator 'gt' does not apply to field 'gender'; use one of eq, ne, in, not_in"),
    ("wrong-op-for-event", leaf("event", "sum_gte", 3),
     "op: operator 'sum_gte' does not apply to field 'event'; use one of count_gte, count_lte"),
    ("unexpected-key", {"all": [{"field": "city", "op": "eq", "value": "x", "colour": "red"}]},
     "all[0].colour: unexpected key for field 'city'"),
    ("param-of-another-field", leaf("order", "count_gte", 1, type="message_in"),
     "type: unexpected key for field 'order'"),
    ("int-not-a-number", {"not": leaf("orders_count", "gte", "many")},
     "not.value: must be a whole number"),
    ("int-not-whole", leaf("orders_count", "gte", 2.5), "value: must be a whole number"),
    ("int-bool", leaf("orders_count", "eq", True), "value: must be a whole number"),
    ("decimal-not-a-number", leaf("total_spent", "gt", "lots"), "value: must be a number"),
    ("decimal-bool", leaf("total_spent", "gt", False), "value: must be a number"),
    ("decimal-nan", leaf("total_spent", "gt", "NaN"), "value: must be a number"),
    ("between-one-value", leaf("total_spent", "between", [1]),
     "value: between takes a list of two values [low, high]"),
    ("between-three-values", leaf("joined_at", "between", ["2026-01-01", "2026-01-02",
                                                           "2026-01-03"]),
     "value: between takes a list of two values [low, high]"),
    ("between-not-a-list", leaf("orders_count", "between", 3), "value: must be a non-empty list"),
    ("between-bad-item", leaf("orders_count", "between", [1, "x"]),
     "value[1]: must be a whole number"),
    ("in-empty", leaf("city", "in", []), "value: must be a non-empty list"),
    ("in-bad-item", leaf("city", "in", ["a", 3]), "value[1]: must be a string"),
    ("string-not-string", leaf("name", "eq", {"a": 1}), "value: must be a string"),
    ("choice-unknown", leaf("gender", "eq", "alien"),
     "value: must be one of male, female, unknown"),
    ("bool-not-bool", leaf("opted_out", "eq", "yes"), "value: must be true or false"),
    ("is-null-not-bool", leaf("joined_at", "is_null", "yes"), "value: must be true or false"),
    ("contains-empty", leaf("name", "contains", ""), "value: must be a non-empty string"),
    ("datetime-garbage", leaf("joined_at", "gt", "yesterday"),
     "value: must be an ISO 8601 date or date-time"),
    ("datetime-number", leaf("joined_at", "gt", 20260101),
     "value: must be an ISO 8601 date or date-time"),
    ("datetime-impossible-date", leaf("joined_at", "gt", "2026-02-30"),
     "value: must be an ISO 8601 date or date-time"),
    ("days-fraction", leaf("joined_at", "within_days", 1.5),
     "value: must be a whole number of days between 0 and 36500"),
    ("days-negative", leaf("last_active_at", "older_than_days", -1),
     "value: must be a whole number of days between 0 and 36500"),
    ("within-days-param", leaf("event", "count_gte", 1, within_days="7"),
     "within_days: must be a whole number of days between 0 and 36500"),
    ("since-joined-not-bool", leaf("order", "count_gte", 1, since_joined="yes"),
     "since_joined: must be true or false"),
    ("count-negative", leaf("event", "count_gte", -1), "value: must be a whole number at or "
                                                       "above 0"),
    ("count-not-int", leaf("order", "count_lte", "2"), "value: must be a whole number at or "
                                                       "above 0"),
    ("sum-not-number", leaf("order", "sum_gte", "lots"), "value: must be a number"),
    ("event-unknown-type", {"all": [OK_A, leaf("event", "count_gte", 1, type="message_inn")]},
     "all[1].type: unknown event type 'message_inn'"),
    ("event-unknown-type-in-list", leaf("event", "count_gte", 1, type=["message_in", "x"]),
     "type[1]: unknown event type 'x'"),
    ("group-ever-not-bool", leaf("group", "in", [], ever="yes"), "ever: must be true or false"),
    ("attribute-bad-key", leaf("attributes.my key", "eq", 1),
     "field: attribute keys are 1-64 letters, digits, '_' or '-'"),
    ("attribute-lookup-injection", leaf("attributes.a__b", "eq", 1),
     "field: attribute keys are 1-64 letters, digits, '_' or '-'"),
    ("attribute-key-of-digits", {"all": [OK_B, leaf("attributes.2024", "eq", "x")]},
     "all[1].field: an attribute key of digits only cannot be used in conditions"),
    ("attribute-value-object", leaf("attributes.level", "eq", {"a": 1}),
     "value: must be a string or a number"),
    ("tag-unknown", {"any": [OK_B, leaf("tag", "any", ["nope"])]},
     "any[1].value: unknown tag 'nope'"),
    ("tag-unknown-id", leaf("tag", "all", [999999]), "value: unknown tag id 999999"),
    ("tag-empty", leaf("tag", "any", []), "value: must be a non-empty list"),
    ("not-an-object", {"all": [OK_A, "city = 上海"]}, "all[1]: must be an object"),
    ("top-level-not-an-object", ["city"], "must be an object"),
    ("empty-all", {"all": []}, "all: must be a non-empty list"),
    ("any-not-a-list", {"any": OK_A}, "any: must be a non-empty list"),
    ("two-group-keys", {"all": [OK_A], "any": [OK_B]},
     "a group node has exactly one key (all, any or not)"),
    ("group-with-extra-key", {"not": OK_A, "field": "city"},
     "a group node has exactly one key (all, any or not)"),
    ("neither-group-nor-leaf", {"all": [{"op": "eq", "value": 1}]},
     "all[0]: expected 'all', 'any', 'not' or a leaf with 'field'"),
    ("deep-path", {"all": [OK_A, {"any": [OK_B, {"not": {"all": [
        leaf("city", "eq", 5)]}}]}]},
     "all[1].any[1].not.all[0].value: must be a string"),
]


@pytest.mark.parametrize(("tree", "message"),
                         [pytest.param(tree, message, id=name) for name, tree, message in ERRORS])
def test_a_bad_condition_is_refused_with_its_path(tree, message):
    with pytest.raises(ConditionError) as raised:
        compile_condition(tree, now=NOW)
    if message.endswith(": "):
        assert raised.value.message.startswith(message)
    else:
        assert raised.value.message == message


def test_unknown_field_lists_the_known_ones():
    with pytest.raises(ConditionError) as raised:
        validate({"field": "shoe_size", "op": "eq", "value": 42})
    for known in ("tag", "event", "order", "group", "attributes.<key>", "joined_at", "channel"):
        assert known in raised.value.message
    assert raised.value.path == "field"


def test_nesting_too_deep_is_refused_with_the_path():
    tree = OK_A
    for _level in range(MAX_DEPTH + 1):
        tree = {"not": tree}
    with pytest.raises(ConditionError) as raised:
        validate(tree)
    assert raised.value.message == (
        f"{'.'.join(['not'] * (MAX_DEPTH + 1))}: nested too deeply (at most {MAX_DEPTH} levels)")

    allowed = OK_A
    for _level in range(MAX_DEPTH):
        allowed = {"not": allowed}
    validate(allowed)


def test_too_many_nodes_is_refused():
    with pytest.raises(ConditionError) as raised:
        validate({"any": [OK_A] * MAX_NODES})
    assert raised.value.message == f"any[{MAX_NODES - 1}]: too many nodes (at most {MAX_NODES})"
    validate({"any": [OK_A] * (MAX_NODES - 1)})


def test_a_tag_name_two_groups_share_asks_for_the_id(dataset):
    other = TagGroup.objects.create(name="渠道偏好")
    Tag.objects.create(group=other, name="VIP")
    with pytest.raises(ConditionError) as raised:
        validate({"all": [OK_A, leaf("tag", "any", ["VIP"])]})
    assert raised.value.message.startswith("all[1].value: the name 'VIP' is used in groups ")
    assert "name the tag by its id instead" in raised.value.message
    by_id = leaf("tag", "any", [dataset["tags"]["VIP"].pk])
    assert matching(by_id) == {"c01", "c07"}


# --- Through the API: a 400 whose message names the path ------------------------------------

BAD = {"all": [OK_A, OK_B, {"field": "joined_at", "op": "older_than", "value": 3}]}
BAD_MESSAGE = "all[2].op: unknown operator 'older_than'"


def test_segment_preview_refuses_a_bad_condition_with_the_path(operator, english_client):
    response = english_client(operator).post("/api/v1/segments/preview/", {"condition": BAD},
                                             format="json")
    assert response.status_code == 400
    assert BAD_MESSAGE in response.json()["message"]


@pytest.mark.parametrize(("condition", "message"), [
    (leaf("event", "count_gte", 1, within_days=-3),
     "within_days: must be a whole number of days between 0 and 36500"),
    ({"any": [OK_A, {"not": leaf("attributes.level", "between", ["a"])}]},
     "any[1].not.value: between takes a list of two values [low, high]"),
    ("city = 上海", "must be an object"),
])
def test_segment_preview_other_bad_conditions(operator, english_client, condition, message):
    response = english_client(operator).post("/api/v1/segments/preview/",
                                             {"condition": condition}, format="json")
    assert response.status_code == 400
    assert message in response.json()["message"]


def test_tag_rule_with_a_bad_condition_is_a_400_with_the_path(admin_user, english_client):
    tag = Tag.objects.create(group=TagGroup.objects.create(name="偏好"), name="户外")
    response = english_client(admin_user).post("/api/v1/tag-rules/", {
        "name": "bad", "tag": tag.pk, "condition": BAD, "mode": "add"}, format="json")
    assert response.status_code == 400
    assert BAD_MESSAGE in response.json()["message"]
    assert not TagRule.objects.filter(name="bad").exists()


def test_saving_a_segment_with_a_bad_condition_is_a_400(operator, english_client):
    response = english_client(operator).post("/api/v1/segments/", {
        "name": "bad", "condition": {"not": leaf("gender", "eq", "alien")}}, format="json")
    assert response.status_code == 400
    assert "not.value: must be one of male, female, unknown" in response.json()["message"]


def _accepts(schema: dict, fragment: dict, value) -> bool:
    """Whether a (small) JSON Schema fragment of the OpenAPI document allows a string value."""
    if "$ref" in fragment:
        fragment = schema["components"]["schemas"][fragment["$ref"].rsplit("/", 1)[-1]]
    if "allOf" in fragment and not all(_accepts(schema, f, value) for f in fragment["allOf"]):
        return False
    for key in ("oneOf", "anyOf"):
        if key in fragment and not any(_accepts(schema, f, value) for f in fragment[key]):
            return False
    if "enum" in fragment and value not in fragment["enum"]:
        return False
    if "const" in fragment and value != fragment["const"]:
        return False
    return not ("pattern" in fragment and not re.search(fragment["pattern"], value))


_SCHEMA: dict = {}


def _openapi(client) -> dict:
    """The OpenAPI document, fetched once for the module (it takes a while to generate)."""
    if not _SCHEMA:
        response = client.get("/api/schema/?format=json")
        assert response.status_code == 200
        _SCHEMA.update(response.json())
    return _SCHEMA


def test_openapi_schema_has_the_condition_component(admin_user, english_client):
    schema = _openapi(english_client(admin_user))
    condition = schema["components"]["schemas"]["Condition"]
    branches = {branch["title"]: branch for branch in condition["oneOf"]}
    assert {"all", "any", "not", "tag", "event", "order", "group", "attributes.",
            "joined_at", "channel", "total_spent"} <= set(branches)
    assert branches["not"]["properties"]["not"] == {"$ref": "#/components/schemas/Condition"}
    preview = schema["paths"]["/api/v1/segments/preview/"]["post"]
    body = preview["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    request_schema = schema["components"]["schemas"][body.rsplit("/", 1)[-1]]
    assert request_schema["properties"]["condition"] == {"$ref": "#/components/schemas/Condition"}


@pytest.mark.parametrize(("title", "field", "good_ops", "bad_ops"), [
    ("event", "event", ["count_gte", "count_lte"], ["eq", "sum_gte"]),
    ("order", "order", ["count_gte", "sum_gte"], ["contains"]),
    ("tag", "tag", ["any", "all", "none"], ["eq"]),
    ("joined_at", "joined_at", ["within_days", "older_than_days", "between"], ["contains"]),
    ("gender", "gender", ["eq", "in"], ["gt", "contains"]),
])
def test_openapi_condition_leaves_describe_their_own_field_and_operators(
        admin_user, english_client, title, field, good_ops, bad_ops):
    """A client generated from the schema must accept `{"field": "event", "op": "count_gte"}`
    and refuse what the server refuses."""
    schema = _openapi(english_client(admin_user))
    branch = next(b for b in schema["components"]["schemas"]["Condition"]["oneOf"]
                  if b["title"] == title)
    props = branch["properties"]
    assert _accepts(schema, props["field"], field)
    assert not _accepts(schema, props["field"], "external_id" if field != "external_id" else "x")
    for op in good_ops:
        assert _accepts(schema, props["op"], op), op
    for op in bad_ops:
        assert not _accepts(schema, props["op"], op), op


@pytest.mark.parametrize(("tree", "start_days", "end_days", "expected"), [
    # c02 was last active 25 days ago: 30 days of silence begin 5 days from now.
    ({"field": "last_active_at", "op": "older_than_days", "value": 30}, 4, 6, {"c02"}),
    ({"field": "last_active_at", "op": "within_days", "value": {"threshold": "silent"}}, 4, 6,
     {"c02"}),
    ({"field": "last_active_at", "op": "older_than_days", "value": 30}, 6, 7, set()),
    # its message 25 days ago leaves a 30-day window then too
    ({"field": "event", "op": "count_gte", "value": 1, "type": ["message_in"],
      "within_days": 30}, 4, 6, {"c02"}),
    # its paid order 30.5 days ago leaves a 31-day window half a day from now
    ({"field": "order", "op": "count_gte", "value": 1, "within_days": 31}, 0, 1, {"c02"}),
    # c07's VIP tag expires in 10 days
    ({"field": "tag", "op": "any", "value": ["VIP"]}, 9, 11, {"c07"}),
    ({"not": {"all": [{"field": "city", "op": "eq", "value": "上海"},
                      {"field": "tag", "op": "none", "value": ["VIP"]}]}}, 9, 11, {"c07"}),
    # fields that do not move with the clock
    ({"field": "city", "op": "eq", "value": "上海"}, 0, 400, set()),
    ({"field": "joined_at", "op": "gte", "value": "2026-01-01T00:00:00+08:00"}, 0, 400, set()),
])
def test_the_customers_a_condition_changes_for_with_time_alone(dataset, tree, start_days,
                                                               end_days, expected):
    """What a periodic rule or stage run reads between its full runs (docs/DOMAIN.md)."""
    from core.conditions import crossing_customers

    broken = {"field": "tag", "op": "any", "value": ["no such tag"]}    # skipped, not fatal
    found = crossing_customers([broken, tree], since=NOW + timedelta(days=start_days),
                               until=NOW + timedelta(days=end_days), thresholds={"silent": 30})
    assert set(Customer.objects.filter(pk__in=found).values_list("external_id", flat=True)) \
        == expected
