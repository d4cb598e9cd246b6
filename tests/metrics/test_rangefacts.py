"""Precomputed range facts (metrics.rangefacts): a standard range (the last 7, 30 or 90 days up
to today) answered from the stored facts plus today's changes must equal the live answer, for
every scope — right after the nightly refresh and after a day of changes. PostgreSQL only (the
facts are not stored elsewhere).

The clock stands at 2024-03-10 15:00 (Asia/Shanghai) on the hand-built data set, so the 7-day
range is 03-04 … 03-10, the 30-day one 02-10 … 03-10 and the 90-day one 2023-12-12 … 03-10.
"""

from datetime import date, timedelta

import pytest

from crm.models import Customer, Event, Group, GroupMembership
from metrics import rangefacts, selectors, services
from metrics.models import CustomerFacts, FactsTable, RangeFacts
from metrics.periods import Period, Scope, local_today
from tests.metrics.handbuilt import build, event, mar, moves, order

pytestmark = [pytest.mark.django_db, pytest.mark.postgres_only]

TODAY = date(2024, 3, 10)
NOW = mar(10, 15)


@pytest.fixture
def data(db, monkeypatch):
    monkeypatch.setattr("django.utils.timezone.now", lambda: NOW)
    assert local_today() == TODAY
    return build()


def _scopes(data):
    return [Scope(), Scope(user=data.op_a), Scope(user=data.op_b), Scope(channel=data.qr),
            Scope(owner=data.op_b), Scope(channel=data.store, owner=data.op_b)]


def _answers(data) -> dict:
    """Every answer the range facts can give, for every standard range and scope."""
    answers: dict = {}
    for scope in _scopes(data):
        for days in rangefacts.WINDOWS:
            period = Period(TODAY - timedelta(days=days - 1), TODAY)
            answers[(scope, days, "kpis")] = selectors.relationship_kpis(scope=scope,
                                                                         period=period)
            answers[(scope, days, "revenue")] = selectors.revenue_report(
                scope=scope, period=period, compare=period.previous())
        answers[(scope, "cohorts")] = selectors.cohort_retention(
            scope=scope, period=Period(date(2023, 12, 1), TODAY))
    return answers


def _live_answers(data, monkeypatch) -> dict:
    with monkeypatch.context() as patch:
        patch.setattr(rangefacts, "stored_for_today", lambda: False)
        return _answers(data)


def _assert_same(stored: dict, live: dict) -> None:
    assert stored.keys() == live.keys()
    for key in live:
        assert stored[key] == live[key], key


def test_nothing_stored_means_live(data):
    period = Period(TODAY - timedelta(days=29), TODAY)
    assert rangefacts.current_window(period) is None
    services.range_facts_refresh(today=TODAY)
    assert rangefacts.current_window(period) == rangefacts.Window(TODAY, 30)
    # Not a standard range, or not ending today: live.
    assert rangefacts.current_window(Period(TODAY - timedelta(days=9), TODAY)) is None
    assert rangefacts.current_window(Period(TODAY - timedelta(days=30),
                                            TODAY - timedelta(days=1))) is None
    # Facts of another day: live.
    FactsTable.objects.update(as_of=TODAY - timedelta(days=2))
    assert rangefacts.current_window(period) is None


def test_stored_facts_answer_like_the_live_figures(data, monkeypatch):
    live = _live_answers(data, monkeypatch)
    result = services.range_facts_refresh(today=TODAY)
    assert result.as_of == TODAY - timedelta(days=1)
    assert result.customers == Customer.objects.count() == CustomerFacts.objects.count()
    assert FactsTable.objects.get().as_of == TODAY - timedelta(days=1)
    assert rangefacts.stored_for_today()
    calls = []
    real = rangefacts.range_figures
    monkeypatch.setattr(rangefacts, "range_figures",
                        lambda **kw: calls.append(kw["window"].days) or real(**kw))
    _assert_same(_answers(data), live)
    assert len(calls) == 2 * 3 * len(_scopes(data))         # KPIs and revenue, every range
    # Spot checks against the hand-built set. The 7 days 03-04 … 03-10: joined c4 (03-09);
    # active c1 (orders 03-05, 03-08), c3 (group 03-04), c5 (link 03-04, order 03-07), c7
    # (message 03-05); the 7 days before (02-26 … 03-03): c1 (message 03-02, group 03-03), c6
    # (order 02-29), c5 (referral 03-03); both: c1, c5.
    seven = live[(Scope(), 7, "kpis")]
    assert (seven["joined"], seven["active"], seven["active_previous"], seven["retained"]) == (
        1, 4, 3, 2)
    assert live[(Scope(), 7, "revenue")]["revenue"] == "900.00"     # 100 + 300 + 500


def test_todays_changes_are_added_to_the_stored_facts(data, monkeypatch):
    services.range_facts_refresh(today=TODAY)
    c = data.c
    # A newcomer joins today with a message and a first order.
    newcomer = Customer.objects.create(external_id="today", joined_at=mar(10, 9),
                                       owner=data.op_a, channel=data.qr, referred_by=c[5])
    event(newcomer, Event.Type.MESSAGE_IN, mar(10, 9, 30))
    order(newcomer, "20.00", mar(10, 9, 45))
    # c6 writes for the first time in the ranges, and moves to op-a.
    event(c[6], Event.Type.MESSAGE_IN, mar(10, 10))
    Customer.objects.filter(pk=c[6].pk).update(owner=data.op_a)
    # c5 orders again: a repeat buyer in the 7 days.
    order(c[5], "40.00", mar(10, 11))
    # c3 (joined 03-03 10:00) deletes us on 03-10 09:00, within 7 days of joining.
    event(c[3], Event.Type.FRIEND_DELETED, mar(10, 9))
    Customer.objects.filter(pk=c[3].pk).update(status=Customer.Status.DELETED_US,
                                               status_changed_at=mar(10, 9))
    # c4 (joined 03-09) joins a group today.
    group = Group.objects.get(chat_id="wr-hand")
    GroupMembership.objects.create(group=group, customer=c[4], joined_at=mar(10, 13))
    event(c[4], Event.Type.GROUP_JOINED, mar(10, 13), group="wr-hand")
    # c7 (removed 02-10) is added back: in the private domain again.
    event(c[7], Event.Type.FRIEND_ADDED, mar(10, 14))
    Customer.objects.filter(pk=c[7].pk).update(status=Customer.Status.ACTIVE,
                                               status_changed_at=mar(10, 14))

    stored = _answers(data)
    live = _live_answers(data, monkeypatch)
    _assert_same(stored, live)
    seven = live[(Scope(), 7, "kpis")]
    # Joined c4 and the newcomer; c3 joined before the 7 days, so its deletion is not among
    # them; c4's group join is.
    assert (seven["joined"], seven["joined_group"]) == (2, 1)
    thirty = live[(Scope(), 30, "kpis")]
    assert thirty["deleted_within_7_days"] == 2                      # c2 and now c3
    assert seven["repeat_buyers"] == 2                               # c1 and now c5
    # Paid in the 7 days: c1 100 + 300, c5 500 + 40 today, the newcomer 20 — all op-a's
    # customers now (c6 bought nothing in them); c3's order was refunded.
    assert live[(Scope(), 7, "revenue")]["revenue"] == "960.00"
    assert live[(Scope(user=data.op_a), 7, "revenue")]["revenue"] == "960.00"
    assert live[(Scope(user=data.op_b), 7, "revenue")]["revenue"] == "0.00"

def test_a_rerun_replaces_the_facts(data):
    services.range_facts_refresh(today=TODAY)

    def stored():
        return sorted(RangeFacts.objects.values_list(
            "days", "channel_id", "owner_id", *rangefacts.FIGURES),
            key=lambda row: tuple((v is not None, v) for v in row))

    first = stored()
    assert len(first) == 3 * RangeFacts.objects.values("channel_id", "owner_id").distinct(
    ).count()
    services.range_facts_refresh(today=TODAY)
    assert stored() == first
    assert CustomerFacts.objects.count() == Customer.objects.count()


def test_the_nightly_job_refreshes_the_facts(data):
    done = services.metrics_nightly(today=TODAY)
    assert done.range_facts.as_of == TODAY - timedelta(days=1)
    assert rangefacts.stored_for_today()


def _dashboard(data) -> dict:
    """What the dashboard reads for the 30 days up to today, for every scope."""
    from lifecycle.models import StageModel

    value = StageModel.objects.get(key="value")
    period = Period(TODAY - timedelta(days=29), TODAY)
    answers: dict = {}
    for scope in _scopes(data):
        answers[(scope, "overview")] = selectors.overview_report(scope=scope, period=period)
        answers[(scope, "revenue")] = selectors.revenue_report(scope=scope, period=period,
                                                               compare=period.previous())
        answers[(scope, "stages")] = {k: v for k, v in selectors.stages_report(
            scope=scope, model=value, period=period).items() if k != "counts_source"}
        answers[(scope, "funnel")] = selectors.funnel_report(scope=scope, model=value,
                                                             day=None)["stages"]
        answers[(scope, "flows")] = selectors.flows_report(scope=scope, model=value,
                                                           period=period)
        answers[(scope, "cohorts")] = selectors.cohort_retention(
            scope=scope, period=Period(date(2023, 12, 1), TODAY))
    return answers


def _live_dashboard(data, monkeypatch) -> dict:
    with monkeypatch.context() as patch:
        patch.setattr(rangefacts, "stored_for_today", lambda: False)
        patch.setattr(selectors, "_today_snapshot_is_fresh", lambda taken_at: False)
        return _dashboard(data)


def _a_day_of_changes(data):
    c = data.c
    newcomer = Customer.objects.create(external_id="today", joined_at=mar(10, 9),
                                       owner=data.op_a, channel=data.qr, referred_by=c[5])
    event(newcomer, Event.Type.MESSAGE_IN, mar(10, 9, 30))
    event(c[5], Event.Type.REFERRAL, mar(10, 9, 40), referred="today")
    order(newcomer, "20.00", mar(10, 9, 45))
    event(c[6], Event.Type.MESSAGE_IN, mar(10, 10))
    order(c[5], "40.00", mar(10, 11))
    event(c[3], Event.Type.FRIEND_DELETED, mar(10, 9))
    Customer.objects.filter(pk=c[3].pk).update(status=Customer.Status.DELETED_US,
                                               status_changed_at=mar(10, 9))
    moves(c[3], "value", ("intro", mar(3, 10)), ("churn", mar(10, 9, 5)))
    return newcomer


def test_the_frequent_refresh_stores_today(data, monkeypatch):
    _a_day_of_changes(data)
    done = services.metrics_today(today=TODAY)
    # Yesterday was not stored: the refresh ran the nightly job first.
    assert done.nightly is not None and done.nightly.snapshot.date == TODAY - timedelta(days=1)
    assert done.range_cells > 0
    table = FactsTable.objects.get()
    assert table.today_at == NOW and rangefacts.today_is_fresh(table)
    assert RangeFacts.objects.filter(today=True).exists()
    stored = _dashboard(data)
    assert stored[(Scope(), "funnel")] == _live_dashboard(data, monkeypatch)[(Scope(), "funnel")]
    _assert_same(stored, _live_dashboard(data, monkeypatch))
    # Entered churn in the 30 days (02-10 … 03-10): c7 (02-10), c2 (03-08) and c3 today.
    assert stored[(Scope(), "overview")]["lifecycle"]["churn"]["entered"] == 3
    # Read from the stored today: no statement reads today's events.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        _dashboard(data)
    assert not [q for q in ctx.captured_queries
                if "crm_event" in q["sql"] and "metrics_customerfacts" in q["sql"]]
    # A second run replaces today's rows (and does not need the nightly job).
    again = services.metrics_today(today=TODAY)
    assert again.nightly is None and again.range_cells == done.range_cells


def test_a_stale_today_is_computed_live(data, monkeypatch):
    services.metrics_today(today=TODAY)
    newcomer = _a_day_of_changes(data)
    # Until the next refresh, today's stored part does not know the changes …
    before = selectors.relationship_kpis(scope=Scope(), period=Period(TODAY - timedelta(days=6),
                                                                      TODAY))
    # … and once it is older than METRICS_TODAY_MAX_AGE_SECONDS, today is computed now.
    later = NOW + timedelta(seconds=rangefacts.today_max_age() + 1)
    monkeypatch.setattr("django.utils.timezone.now", lambda: later)
    assert not rangefacts.today_is_fresh(FactsTable.objects.get())
    _assert_same(_dashboard(data), _live_dashboard(data, monkeypatch))
    after = selectors.relationship_kpis(scope=Scope(), period=Period(TODAY - timedelta(days=6),
                                                                     TODAY))
    assert after["joined"] == before["joined"] + 1 == 2        # c4 and the newcomer
    assert newcomer.pk
