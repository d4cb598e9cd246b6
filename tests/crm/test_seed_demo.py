"""seed_demo: every persona, facts that agree with each other, aggregates that equal the
repair computation, and the same data for the same seed."""

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import F, Q

from crm import demo
from crm.models import (
    INBOUND_EVENT_TYPES,
    Channel,
    Customer,
    Event,
    EventCount,
    GroupMembership,
    Order,
    OrderItem,
)
from crm.services import customer_aggregates_refresh, event_counts_refresh

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]

NOW = datetime(2026, 6, 1, tzinfo=UTC)
AGGREGATES = ("orders_count", "total_spent", "first_order_at", "last_order_at", "last_active_at")


def seed(customers=200, seed=7, **options):
    return demo.seed_demo(customers=customers, seed=seed, days=365, now=NOW, **options)


def snapshot():
    """What a second run must reproduce: customers with their aggregates, and every fact."""
    return {
        "customers": list(Customer.objects.order_by("pk").values_list(
            "pk", "external_id", "name", "phone", "gender", "city", "channel__code",
            "owner__username", "referred_by_id", "joined_at", "status", "opted_out",
            "attributes", *AGGREGATES)),
        "events": list(Event.objects.order_by("pk").values_list(
            "pk", "customer_id", "type", "occurred_at", "idempotency_key", "data")),
        "orders": list(Order.objects.order_by("pk").values_list(
            "pk", "customer_id", "source", "external_id", "amount", "status", "placed_at",
            "refunded_at")),
        "items": list(OrderItem.objects.order_by("pk").values_list(
            "pk", "order_id", "sku", "quantity", "price")),
        "memberships": list(GroupMembership.objects.order_by("pk").values_list(
            "pk", "group__chat_id", "customer_id", "joined_at", "left_at")),
        "event_counts": list(EventCount.objects.order_by("customer_id", "type").values_list(
            "customer_id", "type", "total", "since_joined")),
    }


def test_makes_every_persona_and_consistent_facts():
    report = seed()

    assert report.created["Customer"] == Customer.objects.count() == 200
    assert set(report.personas) == set(demo.PERSONA_KINDS)
    assert all(report.personas[kind] > 0 for kind in demo.PERSONA_KINDS)
    events = Event.objects.count()
    assert 7 * 200 <= events <= 14 * 200          # about 10 per customer
    assert 200 <= Order.objects.count() <= 450    # about 1.5 per customer

    # Every customer was added as a friend when they joined, and did nothing before.
    assert Event.objects.filter(type="friend_added", occurred_at=F("customer__joined_at")) \
        .values("customer").distinct().count() == 200
    assert not Event.objects.filter(occurred_at__lt=F("customer__joined_at")).exists()
    start = NOW - timedelta(days=365)
    assert not Event.objects.filter(Q(occurred_at__lt=start) | Q(occurred_at__gt=NOW)).exists()
    assert not Order.objects.filter(Q(placed_at__lt=start) | Q(placed_at__gt=NOW)).exists()

    # Never engaged: no inbound interaction at all, so never active.
    silent = Customer.objects.filter(last_active_at__isnull=True, orders_count=0)
    assert silent.exists()
    assert not Event.objects.filter(customer__in=silent, type__in=INBOUND_EVENT_TYPES).exists()
    # Engaged but never bought, one purchase, repeat buyers.
    assert Customer.objects.filter(orders_count=0, last_active_at__isnull=False).exists()
    assert Customer.objects.filter(orders_count=1).exists()
    assert Customer.objects.filter(orders_count__gte=3).exists()
    # Dormant: active once, silent for two months and more (our messages do not count).
    assert Customer.objects.filter(last_active_at__lt=NOW - timedelta(days=60),
                                   status="active", joined_at__lt=NOW - timedelta(days=90)
                                   ).exists()
    # Deleted us: status and the event agree, and nothing happens after it.
    deleted = Customer.objects.filter(status="deleted_us")
    assert deleted.exists()
    for customer in deleted:
        last = customer.events.order_by("-occurred_at", "-pk").first()
        assert last.type == "friend_deleted"
        assert customer.status_changed_at == last.occurred_at
    assert not Event.objects.filter(type="friend_deleted").exclude(
        customer__status="deleted_us").exists()
    # Opted out: the flag and the event agree; we send nothing afterwards.
    opted = Customer.objects.filter(opted_out=True)
    assert opted.exists()
    assert set(opted.values_list("pk", flat=True)) == set(
        Event.objects.filter(type="opted_out").values_list("customer_id", flat=True))
    for customer in opted:
        at = customer.events.get(type="opted_out").occurred_at
        assert not customer.events.filter(type="message_out", occurred_at__gt=at).exists()
    # Referrers: each referral names a customer who joined later, through the referral
    # channel, and who records the referrer.
    referrals = Event.objects.filter(type="referral")
    assert referrals.exists()
    for event in referrals:
        friend = Customer.objects.get(external_id=event.data["referred"])
        assert friend.referred_by_id == event.customer_id
        assert friend.channel.kind == Channel.Kind.REFERRAL
        assert friend.joined_at > event.customer.joined_at
    assert Customer.objects.filter(referred_by__isnull=False).count() == referrals.count()

    # Group stays match the join and leave events.
    assert Event.objects.filter(type="group_joined").count() == GroupMembership.objects.count()
    assert Event.objects.filter(type="group_left").count() == \
        GroupMembership.objects.filter(left_at__isnull=False).count()
    # Orders: items, refunds, and a few bought before they joined.
    assert not Order.objects.filter(items__isnull=True).exists()
    refunded = Order.objects.filter(status="refunded")
    assert refunded.exists() and not refunded.filter(refunded_at__isnull=True).exists()
    assert Order.objects.filter(placed_at__lt=F("customer__joined_at")).exists()
    assert set(Order.objects.values_list("source", flat=True)) <= {
        "youzan", "weimob", "store", "manual"}


def test_aggregates_equal_the_repair_computation():
    seed()
    stored = {row[0]: row[1:] for row in Customer.objects.values_list("pk", *AGGREGATES)}

    customer_aggregates_refresh()

    recomputed = {row[0]: row[1:] for row in Customer.objects.values_list("pk", *AGGREGATES)}
    assert stored == recomputed
    assert any(values[0] for values in stored.values())


def test_event_counts_are_stored_with_the_events_and_equal_a_recount():
    seed()
    stored = set(EventCount.objects.values_list("customer_id", "type", "total", "since_joined"))
    # Every customer has counts (the friend_added event at least), and they add up to the
    # events stored.
    assert {c for c, *_rest in stored} == set(Customer.objects.values_list("pk", flat=True))
    assert sum(total for _c, _t, total, _s in stored) == Event.objects.count()

    assert event_counts_refresh() == 0    # the recount from the events finds nothing to fix
    assert set(EventCount.objects.values_list(
        "customer_id", "type", "total", "since_joined")) == stored


def test_same_seed_same_data_and_a_second_run_adds_nothing():
    seed()
    first = snapshot()

    again = seed()
    assert again.skipped and again.existing_customers == 200
    assert snapshot() == first

    seed(reset=True)
    assert snapshot() == first

    seed(reset=True, seed=8)
    assert snapshot()["customers"] != first["customers"]


def test_reset_leaves_no_rows_of_other_apps_to_the_new_customers():
    """Stage rows keep no database foreign key: left behind by a reset, they would belong to
    the new customers that take the same ids."""
    from core import audit
    from lifecycle.models import CustomerStage, StageTransition
    from lifecycle.services import stage_models_evaluate

    seed()
    stage_models_evaluate()
    first = Customer.objects.order_by("pk").first()
    entry = audit.record("customer.erase", customer=first, summary="before the reset")
    assert CustomerStage.objects.exists() and StageTransition.objects.exists()

    report = seed(reset=True, seed=8)

    assert not CustomerStage.objects.exists() and not StageTransition.objects.exists()
    assert "lifecycle_customerstage" in report.truncated or connection.vendor != "postgresql"
    entry.refresh_from_db()
    assert entry.customer_id is None and entry.summary == "before the reset"


def test_command_prints_counts_and_logins():
    out = StringIO()
    call_command("seed_demo", customers=50, seed=3, until="2026-06-01T00:00:00+00:00",
                 stdout=out)
    text = out.getvalue()
    assert "50" in text and "admin" in text and "op_wang" in text and demo.DEMO_PASSWORD in text
    assert Customer.objects.count() == 50


@pytest.mark.postgres_only
def test_parallel_load_with_index_rebuild_gives_the_same_data_and_schema():
    # postgres_only: COPY, worker processes and index rebuilds exist on PostgreSQL only; the
    # SQLite pass of scripts/test leaves such tests out.

    def schema():
        with connection.cursor() as cursor:
            cursor.execute("""
                SELECT indexdef FROM pg_indexes WHERE tablename LIKE 'crm\\_%%'
                UNION ALL
                SELECT conrelid::regclass::text || conname || pg_get_constraintdef(oid)
                       || convalidated::text || condeferred::text
                FROM pg_constraint WHERE conrelid::regclass::text LIKE 'crm\\_%%'
                ORDER BY 1""")
            return [row[0] for row in cursor.fetchall()]

    before = schema()
    seed(reset=True)
    inline = snapshot()

    report = seed(reset=True, workers=2, rebuild_indexes=True)

    assert report.workers == 2 and report.rebuilt
    assert snapshot() == inline
    assert schema() == before
    stored = {row[0]: row[1:] for row in Customer.objects.values_list("pk", *AGGREGATES)}
    customer_aggregates_refresh()
    assert stored == {row[0]: row[1:] for row in Customer.objects.values_list("pk", *AGGREGATES)}
