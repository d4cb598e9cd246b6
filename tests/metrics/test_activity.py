"""Activity (metrics.activity, the customer bitmaps): the overview's and the revenue report's
figures over distinct customers for any range within the stored history must equal the live
computation, for every scope — after the nightly refresh, after a day of changes (today live),
after a refund, an owner change and a deleted customer — and a range reaching before the
history is computed live. PostgreSQL only (the bitmaps are not stored elsewhere).

The clock stands at 2024-03-10 15:00 (Asia/Shanghai) on the hand-built data set
(tests/metrics/handbuilt.py).
"""

from datetime import date, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import override_settings

from crm.models import Customer, Event, Order
from lifecycle.models import StageModel, StageTransition
from metrics import activity, selectors, services
from metrics.models import BitmapTable, CustomerBitmap
from metrics.periods import Period, Scope, local_today
from tests.metrics.handbuilt import build, event, feb, mar, moves, order

pytestmark = [pytest.mark.django_db, pytest.mark.postgres_only]

TODAY = date(2024, 3, 10)
NOW = mar(10, 15)
PERIODS = [
    Period(date(2024, 3, 1), date(2024, 3, 9)),      # ends yesterday
    Period(date(2024, 2, 11), date(2024, 3, 10)),    # 29 days to today (not a standard range)
    Period(date(2024, 3, 4), date(2024, 3, 6)),
    Period(date(2024, 2, 1), date(2024, 2, 29)),     # February: churn of c7, c5's order
    Period(date(2024, 1, 1), date(2024, 3, 14)),     # 74 days, ending in the future
    Period(date(2023, 12, 1), date(2024, 3, 10)),    # 101 days: blocks of 64 and 16 days
    Period(date(2024, 3, 10), date(2024, 3, 10)),    # today only
    # The standard ranges: the last 7, 30 and 90 days up to today.
    Period(date(2024, 3, 4), date(2024, 3, 10)),
    Period(date(2024, 2, 10), date(2024, 3, 10)),
    Period(date(2023, 12, 12), date(2024, 3, 10)),
]


@pytest.fixture
def data(db, monkeypatch):
    monkeypatch.setattr("django.utils.timezone.now", lambda: NOW)
    assert local_today() == TODAY
    return build()


def _scopes(data):
    return [Scope(), Scope(user=data.op_a), Scope(user=data.op_b), Scope(channel=data.qr),
            Scope(owner=data.op_b), Scope(channel=data.store, owner=data.op_b),
            Scope(user=data.op_a, owner=data.op_b), Scope(user=data.op_b, channel=data.store)]


def _answers(data, periods=PERIODS) -> dict:
    answers: dict = {}
    for scope in _scopes(data):
        for period in periods:
            answers[(scope, period, "kpis")] = selectors.relationship_kpis(
                scope=scope, period=period)
            answers[(scope, period, "revenue")] = selectors.revenue_report(
                scope=scope, period=period, compare=period.previous())
            answers[(scope, period, "revenue-feb")] = selectors.revenue_report(
                scope=scope, period=period,
                compare=Period(date(2024, 2, 1), date(2024, 2, 29)))
            overview = selectors.overview_report(scope=scope, period=period)
            for day in overview["series"]:
                day.pop("live")         # whether a day was snapshotted, not a figure
            answers[(scope, period, "overview")] = overview
        # The cohorts: this month's activity from the bitmaps, the months before from the
        # cohort table.
        cohorts = selectors.cohort_retention(scope=scope,
                                             period=Period(date(2023, 12, 1), TODAY))
        cohorts.pop("stored_through")       # where the cells came from, not a figure
        answers[(scope, "cohorts")] = cohorts
    return answers


def _live(data, monkeypatch, periods=PERIODS) -> dict:
    with monkeypatch.context() as patch:
        patch.setattr(activity, "stored_period", lambda period, table=None: False)
        return _answers(data, periods)


def _assert_same(stored: dict, live: dict) -> None:
    assert stored.keys() == live.keys()
    for key in live:
        assert stored[key] == live[key], key


def _count_fast_calls(monkeypatch) -> list:
    calls = []
    for name in ("relationship_figures", "revenue_figures", "churned"):
        real = getattr(activity, name)

        def counted(_real=real, _name=name, **kw):
            answer = _real(**kw)
            found = any(a is not None for a in answer) if isinstance(answer, list) else (
                answer is not None)
            calls.append((_name, found))
            return answer
        monkeypatch.setattr(activity, name, counted)
    return calls


def test_pieces_cover_a_range_with_few_aligned_blocks():
    first, last = date(2023, 2, 4), date(2024, 3, 9)
    found = activity.pieces(first, last)
    days = []
    for start, size in found:
        assert activity.day_number(start) % size == 0
        days += [start + timedelta(days=i) for i in range(size)]
    assert days == [first + timedelta(days=i) for i in range((last - first).days + 1)]
    assert len(found) <= 2 * 3 * (len(activity.SIZES) - 1) + 1
    assert max(size for _start, size in found) == 256


def test_nothing_stored_means_live(data):
    period = PERIODS[0]
    assert not activity.stored_period(period)
    assert activity.relationship_figures(scope=Scope(), period=period) is None
    services.metrics_today(today=TODAY)
    assert activity.stored_period(period)
    # The bitmaps of the days before yesterday only (the nightly job has not run): live.
    BitmapTable.objects.update(last_day=TODAY - timedelta(days=2))
    assert not activity.stored_period(period)
    services.metrics_today(today=TODAY)           # heals: runs the nightly job again
    assert activity.stored_period(period)
    # Before the stored history (400 days): live; a range whose preceding range reaches
    # before it is live for the overview, the revenue of the range itself stored.
    first = BitmapTable.objects.get().first_day
    assert first == TODAY - timedelta(days=400)
    assert not activity.stored_period(Period(first - timedelta(days=1), first + timedelta(days=5)))
    inside = Period(first, first + timedelta(days=5))
    assert activity.relationship_figures(scope=Scope(), period=inside) is None
    assert activity.revenue_figures(scope=Scope(), periods=[inside]) != [None]


def test_stored_answers_equal_the_live_ones(data, monkeypatch):
    live = _live(data, monkeypatch)
    done = services.metrics_today(today=TODAY)
    assert done.nightly.bitmaps.days_built == 400
    calls = _count_fast_calls(monkeypatch)
    stored = _answers(data)
    _assert_same(stored, live)
    assert calls and all(found for _name, found in calls)
    # Hand-computed, every customer, 03-01 … 03-09 (preceding range 02-21 … 02-29): active c1
    # (message 03-02, orders 03-05 and 03-08), c5 (link 03-04, order 03-07), c7 (message
    # 03-05), c1 and c3 by joining a group (03-03, 03-04); before: c5 (message 02-25), c6
    # (order 02-29 23:30) — retained c5. Buyers c1 (2 orders: a repeat buyer) and c5; c3's
    # order of 03-04 was refunded.
    kpis = stored[(Scope(), PERIODS[0], "kpis")]
    assert (kpis["active"], kpis["active_previous"], kpis["retained"]) == (4, 2, 1)
    assert (kpis["buyers"], kpis["repeat_buyers"]) == (2, 1)
    revenue = stored[(Scope(), PERIODS[0], "revenue")]
    assert (revenue["revenue"], revenue["paid_orders"], revenue["buyers"]) == ("900.00", 3, 2)


def _a_day_of_changes(data):
    c = data.c
    newcomer = Customer.objects.create(external_id="today", joined_at=mar(10, 9),
                                       owner=data.op_a, channel=data.qr, referred_by=c[5])
    event(newcomer, Event.Type.MESSAGE_IN, mar(10, 9, 30))
    order(newcomer, "20.00", mar(10, 9, 45))
    order(newcomer, "25.00", mar(10, 9, 50))
    event(c[6], Event.Type.MESSAGE_IN, mar(10, 10))
    order(c[5], "40.00", mar(10, 11))
    event(c[3], Event.Type.FRIEND_DELETED, mar(10, 9))
    Customer.objects.filter(pk=c[3].pk).update(status=Customer.Status.DELETED_US,
                                               status_changed_at=mar(10, 9))
    moves(c[3], "value", ("intro", mar(3, 10)), ("churn", mar(10, 9, 5)))
    return newcomer


def test_a_first_placement_into_churn_is_not_counted_as_churn(data, monkeypatch):
    late = Customer.objects.create(external_id="c9", name="c9", joined_at=mar(4, 9),
                                   owner=data.op_a, channel=data.qr)
    moves(late, "value", ("churn", mar(4, 12)))
    value = StageModel.objects.get(key="value")
    StageTransition.objects.create(customer=data.c[3], model=value, from_key="intro",
                                   to_key="churn", at=mar(5, 12), source="rule")
    period = Period(date(2024, 3, 1), date(2024, 3, 9))
    live = _live(data, monkeypatch, [period])
    services.metrics_today(today=TODAY)
    _assert_same(_answers(data, [period]), live)
    # c2 (03-08) and c3; not c9.
    assert activity.churned(scope=Scope(), period=period) == 2


def test_todays_changes_are_live(data, monkeypatch):
    services.metrics_today(today=TODAY)
    newcomer = _a_day_of_changes(data)
    calls = _count_fast_calls(monkeypatch)
    stored = _answers(data)
    assert calls and all(found for _name, found in calls)
    _assert_same(stored, _live(data, monkeypatch))
    # 02-11 … 03-10: c3 deleted us today, 6 days 23 hours after joining (03-03 10:00): within
    # 7 days, like c2; the newcomer joined and bought twice today, c5 bought on 03-07 and
    # today, c1 on 03-05 and 03-08: three repeat buyers.
    kpis = stored[(Scope(), PERIODS[1], "kpis")]
    assert kpis["joined"] == 5 and kpis["deleted_within_7_days"] == 2
    assert kpis["repeat_buyers"] == 3
    # The frequent refresh stores today's changed customers and today's pieces; a request then
    # reads only what happened since: c6 removed by staff, c7 writes, c1 buys and the
    # newcomer's first order is refunded, all after it.
    monkeypatch.setattr("django.utils.timezone.now", lambda: mar(10, 16))
    done = services.metrics_today(today=TODAY)
    assert done.nightly is None and done.changed_customers >= 3
    assert BitmapTable.objects.get().patch_at == mar(10, 16)
    assert CustomerBitmap.objects.filter(start=TODAY).count() == 3
    monkeypatch.setattr("django.utils.timezone.now", lambda: mar(10, 16, 5))
    Customer.objects.filter(pk=data.c[6].pk).update(status=Customer.Status.REMOVED,
                                                    status_changed_at=mar(10, 16, 5))
    event(data.c[7], Event.Type.MESSAGE_IN, mar(10, 16, 4))
    order(data.c[1], "70.00", mar(10, 16, 4))
    Order.objects.filter(customer=newcomer, amount=Decimal("20.00")).update(
        status=Order.Status.REFUNDED, refunded_at=mar(10, 16, 5), updated_at=mar(10, 16, 5))
    calls = _count_fast_calls(monkeypatch)
    stored = _answers(data)
    assert calls and all(found for _name, found in calls)
    _assert_same(stored, _live(data, monkeypatch))


def test_refunds_owner_changes_and_deletions(data, monkeypatch):
    services.metrics_today(today=TODAY)
    monkeypatch.setattr("django.utils.timezone.now", lambda: mar(10, 16))
    c = data.c
    # c1's order of 03-08 refunded after the refresh: no longer paid on 03-08 (the stored
    # piece still has it; the request takes it out).
    Order.objects.filter(customer=c[1], placed_at=mar(8, 10)).update(
        status=Order.Status.REFUNDED, refunded_at=mar(10, 15, 30), updated_at=mar(10, 15, 30))
    # c6 moves from op-b to op-a; c4 is deleted outright.
    Customer.objects.filter(pk=c[6].pk).update(owner=data.op_a, channel=data.qr)
    c[4].delete()
    live = _live(data, monkeypatch)
    stored = _answers(data)
    # Scopes that never held c4 agree at once (op-a's, the qr channel's): the refund and the
    # move; c4 still counts elsewhere until the columns are read again.
    for key in live:
        if key[0] in (Scope(user=data.op_a), Scope(channel=data.qr)):
            assert stored[key] == live[key], key
    kpis = stored[(Scope(user=data.op_a), PERIODS[0], "kpis")]
    assert kpis["repeat_buyers"] == 0
    # After the nightly job everything agrees, the deleted customer gone.
    services.bitmaps_refresh(today=TODAY)
    _assert_same(_answers(data), live)


def test_a_rerun_stores_the_same_and_repairs_refunded_days(data, monkeypatch):
    services.metrics_today(today=TODAY)
    monkeypatch.setattr("django.utils.timezone.now", lambda: mar(10, 18))

    def stored():
        return {(b.kind, b.start, b.days): bytes(b.data)
                for b in CustomerBitmap.objects.filter(start__lt=TODAY)}

    before = stored()
    again = services.bitmaps_refresh(today=TODAY)
    # (The days whose orders were recorded at the clock's time are read again: the same.)
    assert again.days_built == 0
    assert stored() == before
    # Refunded with the shop's time of the refund, long before the pieces were read: found by
    # the time it was recorded (`updated_at`).
    Order.objects.filter(customer=data.c[5], placed_at=feb(1, 10)).update(
        status=Order.Status.REFUNDED, refunded_at=feb(2, 10), updated_at=mar(10, 17))
    again = services.bitmaps_refresh(today=TODAY)
    assert date(2024, 2, 1) in again.repaired and again.blocks_built > 0
    period = Period(date(2024, 1, 20), date(2024, 2, 20))
    assert _answers(data, [period]) == _live(data, monkeypatch, [period])
    # The next day: one more day built, the oldest one dropped.
    done = services.bitmaps_refresh(today=TODAY + timedelta(days=1))
    assert done.days_built == 1
    assert not CustomerBitmap.objects.filter(start__lt=done.first_day).exists()


@override_settings(METRICS_BITMAP_DAYS=30)
def test_a_range_before_the_history_is_live(data, monkeypatch):
    services.metrics_today(today=TODAY)
    calls = _count_fast_calls(monkeypatch)
    period = Period(date(2024, 1, 1), date(2024, 1, 31))
    stored = _answers(data, [period])
    assert calls and not any(found for _name, found in calls)
    _assert_same(stored, _live(data, monkeypatch, [period]))


def test_a_late_event_shows_once_its_day_is_read_again(data, monkeypatch):
    services.metrics_today(today=TODAY)
    period = PERIODS[0]
    # An inbound event of 03-05 recorded late: the stored piece of 03-05 does not have it.
    event(data.c[6], Event.Type.MESSAGE_IN, mar(5, 10))
    stale = selectors.relationship_kpis(scope=Scope(), period=period)
    live = _live(data, monkeypatch, [period])[(Scope(), period, "kpis")]
    assert stale["active"] == live["active"] - 1
    call_command("snapshot_metrics", "--date", "2024-03-05", "--no-cohorts", stdout=StringIO())
    assert selectors.relationship_kpis(scope=Scope(), period=period) == live
