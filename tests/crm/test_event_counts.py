"""Per-customer event counts per type (EventCount): kept by ingestion in the events'
transaction, recomputed when a joining date changes and by the nightly repair, and what
whole-history and "since joining" conditions read."""

from datetime import datetime, timedelta

import pytest
from django.utils.dateparse import parse_datetime

from core.conditions import compile_condition
from crm import services
from crm.models import Customer, EventCount
from crm.tasks import refresh_customer_aggregates
from tests.factories import CustomerFactory, EventFactory

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]


def when(day: int) -> datetime:
    return parse_datetime(f"2026-01-{day:02d}T09:00:00+08:00")


def counts(customer) -> dict[str, tuple[int, int]]:
    return {row.type: (row.total, row.since_joined)
            for row in EventCount.objects.filter(customer=customer)}


def ingest(actor, *items):
    report = services.events_ingest(items=list(items), actor=actor)
    assert not report.rejected, report.rejected
    return report


def message(customer: str, key: str, day: int, kind: str = "message_in") -> dict:
    return {"customer": customer, "type": kind, "idempotency_key": key,
            "occurred_at": when(day).isoformat()}


def test_ingestion_counts_each_stored_event_once_in_all_and_since_joining(operator):
    customer = CustomerFactory(external_id="cnt-1", owner=operator, joined_at=when(10))
    # two before joining (an imported history), three after; one key sent twice
    ingest(operator, message("cnt-1", "a", 3), message("cnt-1", "b", 8),
           message("cnt-1", "c", 10), message("cnt-1", "d", 12),
           message("cnt-1", "c", 10), message("cnt-1", "e", 15, "link_clicked"))
    assert counts(customer) == {"message_in": (4, 2), "link_clicked": (1, 1)}

    report = ingest(operator, message("cnt-1", "d", 12), message("cnt-1", "f", 20))

    assert report.accepted == 1 and report.duplicates == 1
    assert counts(customer) == {"message_in": (5, 3), "link_clicked": (1, 1)}


def test_a_customer_added_by_the_batch_counts_from_its_friend_added(operator):
    ingest(operator,
           {"customer": "cnt-new", "type": "friend_added", "idempotency_key": "add",
            "occurred_at": when(5).isoformat(), "data": {"owner": operator.username}},
           message("cnt-new", "m1", 4), message("cnt-new", "m2", 6))
    customer = Customer.objects.get(external_id="cnt-new")
    assert counts(customer) == {"friend_added": (1, 1), "message_in": (2, 1)}


def test_a_changed_joining_date_recounts_since_joining(operator):
    customer = CustomerFactory(external_id="cnt-2", owner=operator, joined_at=when(10))
    ingest(operator, *[message("cnt-2", f"k{day}", day) for day in (5, 9, 11, 14)])
    assert counts(customer) == {"message_in": (4, 2)}

    services.customer_update(actor=operator, customer=customer, joined_at=when(6))

    assert counts(customer) == {"message_in": (4, 3)}


def test_the_nightly_repair_recomputes_counts_from_the_events(operator):
    customer = CustomerFactory(external_id="cnt-3", owner=operator, joined_at=when(10))
    ingest(operator, message("cnt-3", "x", 12))
    # events stored around ingestion (an import straight into the table) and a drifted row
    EventFactory(customer=customer, type="message_in", occurred_at=when(13))
    EventFactory(customer=customer, type="referral", occurred_at=when(2))
    EventCount.objects.filter(customer=customer, type="message_in").update(total=40)
    EventCount.objects.create(customer=customer, type="survey_answered", total=2)

    refresh_customer_aggregates()

    assert counts(customer) == {"message_in": (2, 2), "referral": (1, 0)}
    # and a repair that finds nothing wrong writes nothing
    assert services.event_counts_refresh() == 0


def test_whole_history_and_since_joining_conditions_read_the_counts(operator):
    early = CustomerFactory(external_id="cnt-early", owner=operator, joined_at=when(10))
    late = CustomerFactory(external_id="cnt-late", owner=operator, joined_at=when(10))
    ingest(operator, *[message("cnt-early", f"e{d}", d) for d in (2, 3, 4)],
           *[message("cnt-late", f"l{d}", d) for d in (11, 12)],
           message("cnt-late", "lc", 12, "link_clicked"))
    now = when(20) + timedelta(days=1)

    def who(leaf):
        q = compile_condition(leaf, now=now)
        return set(Customer.objects.filter(q).filter(pk__in=[early.pk, late.pk])
                   .values_list("external_id", flat=True))

    three = {"field": "event", "type": "message_in", "op": "count_gte", "value": 3}
    assert who(three) == {"cnt-early"}
    assert who({**three, "since_joined": True}) == set()
    assert who({**three, "value": 2, "since_joined": True}) == {"cnt-late"}
    inbound = {"field": "event", "type": ["message_in", "link_clicked"], "op": "count_gte",
               "value": 3, "since_joined": True}
    assert who(inbound) == {"cnt-late"}
    assert who({"field": "event", "op": "count_lte", "value": 2}) == set()
    assert who({"field": "event", "op": "count_lte", "value": 3}) == {"cnt-early", "cnt-late"}
    assert who({"field": "event", "type": "referral", "op": "count_lte", "value": 0}) == {
        "cnt-early", "cnt-late"}


def test_an_import_that_changes_the_joining_date_recounts_since_joining(operator):
    customer = CustomerFactory(external_id="cnt-4", owner=operator, joined_at=when(10))
    ingest(operator, *[message("cnt-4", f"i{day}", day) for day in (5, 9, 11)])
    assert counts(customer) == {"message_in": (3, 1)}

    report = services.customers_import(
        content=f"external_id,joined_at\ncnt-4,{when(8).isoformat()}\n".encode(), actor=operator)

    assert report.extra == {"created": 0, "updated": 1}, report.as_dict()
    assert counts(customer) == {"message_in": (3, 2)}


LATEST = ("latest_1", "latest_2", "latest_3", "latest_4", "latest_5")


def test_ingestion_keeps_the_latest_times_as_a_recount_finds_them(operator):
    """Events arriving out of order, in several batches, with a tie and a duplicate key: each
    (customer, type) row holds its five latest times, newest first — what the nightly recount
    computes."""
    customer = CustomerFactory(external_id="lt-1", owner=operator, joined_at=when(5))
    ingest(operator, *(message("lt-1", f"a{d}", d) for d in (20, 3, 9)))
    ingest(operator, *(message("lt-1", f"b{d}", d) for d in (12, 25, 1, 12)),
           message("lt-1", "b-dup", 12))
    ingest(operator, message("lt-1", "c", 2), message("lt-1", "d", 30, "link_clicked"))

    def latest():
        return {row[0]: row[1:] for row in EventCount.objects.filter(customer=customer)
                .values_list("type", *LATEST)}

    assert latest() == {
        "message_in": (when(25), when(20), when(12), when(12), when(9)),
        "link_clicked": (when(30), None, None, None, None)}
    kept = latest()
    assert services.event_counts_refresh() == 0     # the recount agrees
    assert latest() == kept


def test_windowed_counts_from_the_latest_times_equal_counting_the_events(operator,
                                                                          monkeypatch):
    """`count_gte k within N days` (k ≤ 5) reads the k-th latest time; every variant — one
    type, several, any type, since joining, count_lte — selects exactly the customers that
    counting the window's events selects, past 5 as well (counted from the events)."""
    import copy
    import random

    from crm import conditions as crm_conditions

    rng = random.Random(7)
    now = when(31)
    kinds = ["message_in", "link_clicked", "coupon_redeemed"]
    for n in range(30):
        ext = f"win-{n}"
        CustomerFactory(external_id=ext, owner=operator, joined_at=when(1 + n % 20))
        items = [message(ext, f"{ext}-{i}", rng.randint(1, 30), rng.choice(kinds))
                 for i in range(rng.randint(0, 14))]
        for start in range(0, len(items), 4):       # several batches a customer
            if items[start:start + 4]:
                ingest(operator, *items[start:start + 4])

    def found(leaf):
        q = compile_condition(leaf, now=now)
        return set(Customer.objects.filter(q).values_list("external_id", flat=True))

    leaves = [{"field": "event", "op": op, "value": value, "within_days": days, **extra}
              for op in ("count_gte", "count_lte") for value in (0, 1, 2, 3, 5, 6)
              for days in (2, 7, 20)
              for extra in ({"type": "message_in"}, {"type": ["message_in", "link_clicked"]},
                            {}, {"type": "message_in", "since_joined": True},
                            {"type": kinds, "since_joined": True})]
    latest = [found(copy.deepcopy(leaf)) for leaf in leaves]
    monkeypatch.setattr(crm_conditions, "_event_latest_compile", lambda leaf, ctx: None)
    counted = [found(copy.deepcopy(leaf)) for leaf in leaves]
    assert [(leaf, a) for leaf, a, b in zip(leaves, latest, counted, strict=True) if a != b] == []
    assert sum(0 < len(v) < 30 for v in counted) >= len(leaves) / 3   # not all-or-nothing
