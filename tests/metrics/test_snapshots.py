"""Daily snapshots: a day replaced atomically (idempotent, never doubled), backfill rebuilding
stage counts from transitions, stored days agreeing with live ones, the cohort table, the
nightly task and the command."""

from datetime import date, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db.models import Sum
from django.utils import timezone, translation

from config.beat import BEAT_SCHEDULE
from config.celery import app as celery_app
from crm.models import Customer
from lifecycle.models import CustomerStage, StageModel
from metrics import selectors, services, tasks
from metrics.models import (
    CohortCell,
    CohortTable,
    DailyActivity,
    DailyStageCount,
    DailyTransitionCount,
    Snapshot,
)
from metrics.periods import Period, Scope, add_months, day_start, local_today, month_start
from tests.metrics.handbuilt import build, event, mar, moves, order
from tests.threads import run_at_once

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]

R = Period(date(2024, 3, 1), date(2024, 3, 10))


@pytest.fixture
def data(db):
    return build()


def _stored(day: date):
    """Everything stored for a day, as comparable tuples (no channel sorts first)."""
    def rows(queryset):
        return sorted(queryset, key=lambda row: tuple((v is not None, v) for v in row))

    return (
        rows(DailyStageCount.objects.filter(date=day).values_list(
            "channel_id", "owner_id", "model__key", "stage_key", "customers")),
        rows(DailyTransitionCount.objects.filter(date=day).values_list(
            "channel_id", "owner_id", "model__key", "from_key", "to_key", "transitions",
            "win_backs")),
        rows(DailyActivity.objects.filter(date=day).values_list(
            "channel_id", "owner_id", "new_customers", "deleted_us", "paid_orders", "revenue",
            "refunds", "refunded_amount", "buyers", "first_time_buyers", "active_customers",
            "referrals")),
    )


def _stage_totals(day: date, model_key: str) -> dict[str, int]:
    return {r["stage_key"]: r["n"] for r in DailyStageCount.objects.filter(
        date=day, model__key=model_key).values("stage_key").annotate(n=Sum("customers"))}


def test_snapshot_of_a_day(data):
    result = services.snapshot_metrics(day=date(2024, 3, 5))
    assert Snapshot.objects.get(date=date(2024, 3, 5)).taken_at is not None
    assert result.rows == (DailyStageCount.objects.count() + DailyTransitionCount.objects.count()
                           + DailyActivity.objects.count())
    # AIPL at the end of 03-05: c1 (purchase at 10:00), c5, c6 in purchase; c3 interest;
    # c2, c7 awareness; c4 joins only on 03-09.
    assert _stage_totals(date(2024, 3, 5), "aipl") == {"awareness": 2, "interest": 1,
                                                       "purchase": 3}
    # Moves on 03-05: c1 intro → growth (value), interest → purchase (AIPL).
    assert sorted(DailyTransitionCount.objects.filter(date=date(2024, 3, 5)).values_list(
        "model__key", "from_key", "to_key", "transitions")) == [
        ("aipl", "interest", "purchase", 1), ("value", "intro", "growth", 1)]
    # Activity on 03-05: c1's first order (100.00) and c7's message → two active, one
    # first-time buyer; at the grain of c1 (qr-a, op-a) and c7 (qr-a, op-a): one row.
    row = DailyActivity.objects.get(date=date(2024, 3, 5))
    assert (row.channel_id, row.owner_id) == (data.qr.pk, data.op_a.pk)
    assert (row.paid_orders, row.revenue, row.buyers, row.first_time_buyers,
            row.active_customers) == (1, Decimal("100.00"), 1, 1, 2)


def test_rerunning_a_day_replaces_it(data):
    day = date(2024, 3, 5)
    services.snapshot_metrics(day=day)
    first = _stored(day)
    services.snapshot_metrics(day=day)
    assert _stored(day) == first
    assert Snapshot.objects.filter(date=day).count() == 1
    # A late order of that day: the re-run replaces the day's figures, it does not add to them.
    order(data.c[6], "40.00", mar(5, 20))
    services.snapshot_metrics(day=day)
    assert DailyActivity.objects.filter(date=day).aggregate(
        r=Sum("revenue"), n=Sum("paid_orders")) == {"r": Decimal("140.00"), "n": 2}


def test_backfill_rebuilds_stage_counts_from_transitions(data):
    with translation.override("en"):
        call_command("snapshot_metrics", "--start", "2024-03-01", "--end", "2024-03-10",
                     "--no-cohorts", stdout=StringIO())
    assert Snapshot.objects.count() == 10
    # After the first day the backfill carries the stage counts over from the day before,
    # moving only the day's movers; a day rebuilt from every transition is the same.
    chained = {day: _stored(day) for day in R.each_day()}
    for day in R.each_day():
        services.snapshot_metrics(day=day)
        assert _stored(day) == chained[day], day
    # 03-04 end of day (see test_kpis): awareness c2 c7, interest c1 c3, purchase c5 c6.
    assert _stage_totals(date(2024, 3, 4), "aipl") == {"awareness": 2, "interest": 2,
                                                       "purchase": 2}
    # 03-10 end of day, value: intro c3 c4, mature c1 c5 c6, churn c2 c7.
    assert _stage_totals(date(2024, 3, 10), "value") == {"intro": 2, "mature": 3, "churn": 2}
    # The funnel of a stored day comes from the snapshot and says so.
    aipl = StageModel.objects.get(key="aipl")
    report = selectors.funnel_report(scope=Scope(), model=aipl, day=date(2024, 3, 4))
    assert report["source"] == "snapshot"
    assert [r["count"] for r in report["stages"]] == [2, 2, 2, 0]


def test_stored_days_agree_with_live_ones(data):
    live_series = selectors.activity_series(scope=Scope(), period=R)
    value = StageModel.objects.get(key="value")
    live_flows = selectors.transition_totals(scope=Scope(), model=value, period=R)
    live_stages = selectors.stages_report(scope=Scope(), model=value, period=R)
    assert all(day["live"] for day in live_series)
    services_days = [services.snapshot_metrics(day=d) for d in R.each_day()]
    assert len(services_days) == 10
    stored_series = selectors.activity_series(scope=Scope(), period=R)
    assert not any(day["live"] for day in stored_series)
    assert [{**d, "live": None} for d in stored_series] == [
        {**d, "live": None} for d in live_series]
    assert selectors.transition_totals(scope=Scope(), model=value, period=R) == live_flows
    stored_stages = selectors.stages_report(scope=Scope(), model=value, period=R)
    assert stored_stages["counts_source"] == "snapshot"
    assert stored_stages["stages"] == live_stages["stages"]
    # Scoped: an operator's series is the same either way.
    op_series = selectors.activity_series(scope=Scope(user=data.op_b), period=R)
    assert sum(d["active_customers"] for d in op_series) == 1      # c3 on 03-04
    assert selectors.series_totals(op_series)["refunded_amount"] == "200.00"


def test_todays_live_figures_agree_with_a_snapshot_taken_afterwards(data):
    today = local_today()
    now = timezone.now()
    midday = day_start(today) + (now - day_start(today)) / 2       # today, and not future
    c = data.c
    newcomer = Customer.objects.create(external_id="today-1", joined_at=midday, owner=data.op_a,
                                       channel=data.qr)
    event(c[5], "message_in", midday)
    event(newcomer, "link_clicked", midday)
    order(c[6], "75.50", midday)
    order(newcomer, "20.00", midday)
    moves(newcomer, "aipl", ("awareness", midday), ("purchase", midday))
    period = Period(today - timedelta(days=1), today)
    live = selectors.activity_series(scope=Scope(), period=period)[-1]
    assert live["date"] == today.isoformat() and live["live"] is True
    assert (live["new_customers"], live["paid_orders"], live["revenue"],
            live["active_customers"]) == (1, 2, "95.50", 3)
    aipl = StageModel.objects.get(key="aipl")
    current = selectors.current_stage_counts(scope=Scope(), model=aipl)
    live_moves = selectors.transition_totals(scope=Scope(), model=aipl, period=period)

    services.snapshot_metrics(day=today)
    stored = DailyActivity.objects.filter(date=today).aggregate(
        **{f: Sum(f) for f in ("new_customers", "paid_orders", "revenue", "active_customers",
                               "buyers", "first_time_buyers", "referrals")})
    assert stored == {"new_customers": 1, "paid_orders": 2, "revenue": Decimal("95.50"),
                      "active_customers": 3, "buyers": live["buyers"],
                      "first_time_buyers": live["first_time_buyers"],
                      "referrals": live["referrals"]}
    assert _stage_totals(today, "aipl") == current
    assert {(f, t): v["transitions"] for (f, t), v in live_moves.items()} == {
        (r.from_key, r.to_key): r.transitions
        for r in DailyTransitionCount.objects.filter(date=today, model=aipl)}
    # Today stays live in a series even once stored (the day is not over).
    assert selectors.activity_series(scope=Scope(), period=period)[-1]["live"] is True
    assert CustomerStage.objects.filter(customer=newcomer).count() == 1


def test_cohort_table_agrees_with_live_cohorts(data):
    period = Period(date(2023, 12, 1), date(2024, 3, 31))
    live = selectors.cohort_retention(scope=Scope(), period=period)
    assert live["stored_through"] is None
    # Stored through February 2024 (as on 2024-03-15): March onwards stays live.
    result = services.cohorts_refresh(today=date(2024, 3, 15))
    assert result.through == date(2024, 2, 1)
    # Cohorts 2023-12 (c7) and 2024-01 (c5, c6): offset-0 rows for both, offset 1 (February)
    # for 2024-01 → 3 cells.
    assert sorted(CohortCell.objects.values_list("cohort", "month_offset", "customers",
                                                 "active")) == [
        (date(2023, 12, 1), 0, 1, 0), (date(2024, 1, 1), 0, 1, 0),
        (date(2024, 1, 1), 0, 1, 0), (date(2024, 1, 1), 1, 1, 1),
        (date(2024, 1, 1), 1, 1, 1)]
    mixed = selectors.cohort_retention(scope=Scope(), period=period)
    assert mixed["stored_through"] == "2024-02"
    assert mixed["cohorts"] == live["cohorts"]
    # Every complete month stored: the same answer again, and for an operator.
    services.cohorts_refresh()
    assert CohortTable.objects.get().through < local_today()
    assert selectors.cohort_retention(scope=Scope(), period=period)["cohorts"] == live["cohorts"]
    op_live = selectors.cohort_retention(scope=Scope(user=data.op_b), period=period)
    assert [c["customers"] for c in op_live["cohorts"]] == [0, 1, 0, 3]    # c6; c3 c4 c8


def test_nightly_task_snapshots_yesterday_and_refreshes_cohorts(data):
    answer = tasks.snapshot_metrics_nightly.apply().get()
    yesterday = local_today() - timedelta(days=1)
    assert answer["date"] == yesterday.isoformat()
    assert Snapshot.objects.filter(date=yesterday).exists()
    # The last complete month: the one before today's.
    assert CohortTable.objects.get().through == add_months(month_start(local_today()), -1)


def test_beat_runs_the_snapshot_after_midnight_in_the_system_time_zone(settings):
    entry = BEAT_SCHEDULE["metrics-snapshot-nightly"]
    assert entry["task"] == "metrics.tasks.snapshot_metrics_nightly"
    assert entry["schedule"].hour == {0}
    assert celery_app.conf.timezone == settings.TIME_ZONE


def test_command_output(data):
    out = StringIO()
    with translation.override("en"):
        call_command("snapshot_metrics", "--date", "2024-03-05", stdout=out)
    text = out.getvalue()
    # Stage counts at the end of 03-05 per (channel, owner, model, stage): value — qr-a/op-a
    # churn (c7), growth (c1 c5), intro (c2); op-b growth (c6), store/op-b intro (c3); AIPL —
    # qr-a/op-a purchase (c1 c5), awareness (c2 c7); op-b purchase (c6); store/op-b interest
    # (c3): 9 rows. Two moves (c1 in value and AIPL), one activity row (c1 and c7 share qr-a/op-a).
    assert ("2024-03-05: 9 stage counts, 2 transition counts, 1 activity rows in" in text)
    assert "Cohort table:" in text
    assert "Snapshotted 1 day(s)" in text
    # Default: yesterday.
    out = StringIO()
    with translation.override("en"):
        call_command("snapshot_metrics", "--no-cohorts", stdout=out)
    assert (local_today() - timedelta(days=1)).isoformat() in out.getvalue()


@pytest.mark.parametrize("args, message", [
    (["--date", "2024-13-01"], "--date: not a date"),
    (["--date", "tomorrow"], "--date: not a date"),
    (["--start", "2024-03-05", "--end", "2024-03-01"], "--end: must not be before --start"),
    (["--end", "2024-03-01"], "--start: required"),
    (["--date", "2999-01-01"], "Cannot snapshot a day in the future"),
    (["--date", "2024-03-01", "--start", "2024-03-01"], "either --date or --start/--end"),
])
def test_command_rejects_bad_dates(db, args, message):
    with translation.override("en"), pytest.raises(CommandError, match=message):
        call_command("snapshot_metrics", *args, stdout=StringIO())


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_two_workers_snapshotting_the_same_day_store_it_once():
    data = build()
    day = date(2024, 3, 5)
    run_at_once(*[lambda: services.snapshot_metrics(day=day)] * 2)
    assert Snapshot.objects.filter(date=day).count() == 1
    row = DailyActivity.objects.get(date=day, owner=data.op_a)
    assert (row.paid_orders, row.revenue, row.active_customers) == (1, Decimal("100.00"), 2)
    assert _stage_totals(day, "aipl") == {"awareness": 2, "interest": 1, "purchase": 3}
