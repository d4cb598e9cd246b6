"""Stage durations (metrics.stage_durations, the precomputed stage spells: the medians and
stage-to-stage conversion of `stages/` and `flows/`) and channels (metrics.channels, the channel
join-day cells of `channels/`): for the standard ranges (the last 7, 30 and 90 days up to
today) the answer from the stored facts must equal the live computation, for every scope —
after the refreshes and after a day of changes — and the new hand-computed cases must come out
as worked out beside them. PostgreSQL only.

The clock stands at 2024-03-10 15:00 (Asia/Shanghai) on the hand-built data set
(tests/metrics/handbuilt.py): the 7-day range is 03-04 … 03-10, the 30-day one 02-10 … 03-10
and the 90-day one 2023-12-12 … 03-10. Transitions of 03-10 (c1 growth → mature 01:00, c5
growth → mature 12:00) are today's: they reach the answers through today's part.
"""

from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction

from crm.models import Customer, Event, Order
from lifecycle.models import CustomerStage, Stage, StageModel, StageTransition
from metrics import activity, attribution, channels, selectors, services, stage_durations
from metrics.models import (
    FactsTable,
    StageSpell,
    StageSpellDayCell,
    TodayStageSpell,
)
from metrics.periods import Period, Scope, local_today
from tests.factories import UserFactory
from tests.metrics.handbuilt import build, event, feb, local, mar, order

pytestmark = [pytest.mark.django_db, pytest.mark.postgres_only]

TODAY = date(2024, 3, 10)
NOW = mar(10, 15)
WINDOWS = (7, 30, 90)


@pytest.fixture
def data(db, monkeypatch):
    monkeypatch.setattr("django.utils.timezone.now", lambda: NOW)
    assert local_today() == TODAY
    return build()


def _period(days: int) -> Period:
    return Period(TODAY - timedelta(days=days - 1), TODAY)


def _scopes(data):
    return [Scope(), Scope(user=data.op_a), Scope(user=data.op_b), Scope(channel=data.qr),
            Scope(owner=data.op_b), Scope(channel=data.store, owner=data.op_b),
            Scope(channel=data.qr, owner=data.op_b), Scope(user=data.op_a, owner=data.op_b)]


def _reports(data, periods=None) -> dict:
    """Every answer the spells and the channel cells give, per model, range and scope (the
    standard ranges by their days, other ranges by their period)."""
    answers: dict = {}
    models = list(StageModel.objects.order_by("key"))
    ranges = periods or [(days, _period(days)) for days in WINDOWS]
    if periods:
        ranges = [(period, period) for period in periods]
    for scope in _scopes(data):
        for key, period in ranges:
            for model in models:
                answers[(scope, key, model.key, "medians")] = selectors.median_days_in_stage(
                    scope=scope, model=model, period=period)
                answers[(scope, key, model.key, "conversions")] = selectors.stage_conversions(
                    scope=scope, model=model, period=period)
            answers[(scope, key, "channels")] = attribution.channel_attribution(
                scope=scope, period=period)
    return answers


def _live(data, monkeypatch, periods=None) -> dict:
    with monkeypatch.context() as patch:
        patch.setattr(stage_durations, "stored_range", lambda period, scope: None)
        patch.setattr(channels, "stored_range", lambda period: None)
        return _reports(data, periods)


def _assert_same(stored: dict, live: dict) -> None:
    assert stored.keys() == live.keys()
    for key in live:
        assert stored[key] == live[key], key


def _count_fast_calls(monkeypatch) -> list:
    calls = []
    for module, name in ((stage_durations, "median_days_in_stage"),
                         (stage_durations, "stage_conversions"),
                         (channels, "acquisition_counts")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda _real=real, _name=name, **kw: calls.append(_name) or _real(**kw))
    return calls


def _all_stored(data, monkeypatch, periods) -> dict:
    """The reports of `periods` for every scope, asserting that each is answered from the
    stored spells and channel cells (none computed live)."""
    for period in periods:
        assert channels.stored_range(period) == period
        for scope in _scopes(data):
            assert stage_durations.stored_range(period, scope) == period, (period, scope)
    calls = _count_fast_calls(monkeypatch)
    stored = _reports(data, periods)
    # Every scope, per model and report (the (channel, owner) ones from their spells, the others
    # from the day cells), and the channels.
    assert len(calls) == len(periods) * len(_scopes(data)) * (
        2 * StageModel.objects.count() + 1)
    return stored


def move(customer, model_key: str, to_key: str, at) -> None:
    """One more transition of the customer in the model (from their current stage), as the
    lifecycle engine records it."""
    model = StageModel.objects.get(key=model_key)
    current = CustomerStage.objects.filter(customer=customer, model=model).first()
    previous = current.stage if current else None
    stage = Stage.objects.get(model=model, key=to_key)
    StageTransition.objects.create(
        customer=customer, model=model, from_stage=previous, to_stage=stage,
        from_key=previous.key if previous else "", to_key=to_key, at=at, source="rule",
        win_back=bool(previous and previous.win_back_from and not stage.win_back_from),
        backward=bool(previous and stage.position < previous.position))
    CustomerStage.objects.update_or_create(customer=customer, model=model, defaults={
        "stage": stage, "entered_at": at, "source": "rule"})


def test_nothing_stored_or_today_stale_means_live(data):
    period = _period(30)
    assert stage_durations.stored_range(period, Scope()) is None
    assert channels.stored_range(period) is None
    services.metrics_today(today=TODAY)
    assert stage_durations.stored_range(period, Scope()) is not None
    assert channels.stored_range(period) is not None
    # Facts stored before the spells existed (an upgrade): live until the next refresh.
    FactsTable.objects.update(spells_as_of=None, channels_as_of=None)
    assert stage_durations.stored_range(period, Scope()) is None
    assert channels.stored_range(period) is None
    services.metrics_today(today=TODAY)         # heals: runs the nightly job again
    assert stage_durations.stored_range(period, Scope()) is not None
    # Today's part too old: the spells are computed live (the channel cells compute it).
    FactsTable.objects.update(today_at=NOW - timedelta(hours=1))
    assert stage_durations.stored_range(period, Scope()) is None
    assert channels.stored_range(period) is not None
    assert stage_durations.stored_range(Period(TODAY - timedelta(days=9), TODAY), Scope()) is None


def test_stored_answers_equal_the_live_ones(data, monkeypatch):
    live = _live(data, monkeypatch)
    done = services.metrics_today(today=TODAY)
    assert done.nightly.facts.spells == StageSpell.objects.count() > 0
    assert done.spells == TodayStageSpell.objects.count() > 0
    calls = _count_fast_calls(monkeypatch)
    stored = _reports(data)
    _assert_same(stored, live)
    assert len(calls) == len(_scopes(data)) * len(WINDOWS) * (2 * StageModel.objects.count() + 1)

    # Hand-computed, value model, every customer. 7 days (03-04 … 03-10): exits from intro c1
    # 4 days (03-01 01:00 → 03-05 01:00) and c2 6.5 (03-02 10:00 → 03-08 22:00); from growth
    # c6 14 (02-22 → 03-07), and today c1 5 (03-05 01:00 → 03-10 01:00) and c5 6 (03-04
    # 12:00 → 03-10 12:00); from dormant c5 13 (02-20 12:00 → 03-04 12:00).
    assert stored[(Scope(), 7, "value", "medians")] == {
        "intro": {"exits": 2, "median_days": 5.25}, "growth": {"exits": 3, "median_days": 6.0},
        "dormant": {"exits": 1, "median_days": 13.0}}
    # 90 days (2023-12-12 …): intro also c7, there since 2023-12-01 10:00 (before the 90
    # days) until 01-15 00:00 = 44 d 14 h = 44.583, c5 01-10 10:00 → 02-01 10:00 = 22 and c6
    # 01-15 10:00 → 02-22 00:00 = 37.583: [4, 6.5, 22, 37.583, 44.583] → 22; dormant c7
    # 01-15 → 02-10 10:00 = 26.417 and c5 13: (13 + 26.417) / 2 = 19.708; growth adds c5's
    # 02-01 10:00 → 02-20 12:00 = 19.083: [5, 6, 14, 19.083] → 10.
    assert stored[(Scope(), 90, "value", "medians")] == {
        "intro": {"exits": 5, "median_days": 22.0},
        "dormant": {"exits": 2, "median_days": 19.708},
        "growth": {"exits": 4, "median_days": 10.0}}
    # Entries in the 7 days: growth c5 (03-04 12:00) and c1 (03-05 01:00), both on to mature
    # today after 6 and 5 days: 5.5; mature c6, c1, c5; churn c2; intro c4.
    seven = stored[(Scope(), 7, "value", "conversions")]
    assert seven["growth"] == {"entered": 2, "next": {"mature": {"customers": 2,
                                                                 "median_days": 5.5}}}
    assert seven["intro"] == {"entered": 1, "next": {}}
    assert seven["mature"] == {"entered": 3, "next": {}}
    # Only op-b's customers (c3, c4, c6, c8): c6 left growth after 14 days.
    assert stored[(Scope(user=data.op_b), 7, "value", "medians")] == {
        "growth": {"exits": 1, "median_days": 14.0}}
    # An operator filtering on another owner sees nobody.
    assert stored[(Scope(user=data.op_a, owner=data.op_b), 90, "value", "medians")] == {}


def test_todays_moves_are_counted(data, monkeypatch):
    services.metrics_today(today=TODAY)
    c = data.c
    # c3 (intro since 03-03 10:00) moves to growth at 14:00 today: 7 d 4 h = 7.167 days.
    move(c[3], "value", "growth", mar(10, 14))
    # c5 goes back from mature to growth at 14:30: a second entry into growth in every range
    # (the first, 03-04 12:00, is in them all), so it does not count as an entry; its mature
    # spell (since 12:00 today) exits after 2.5 h = 0.104 days.
    move(c[5], "value", "growth", mar(10, 14, 30))
    # A newcomer is placed in intro and moves on to growth within the hour.
    newcomer = Customer.objects.create(external_id="today", joined_at=mar(10, 9),
                                       owner=data.op_b, channel=data.store)
    move(newcomer, "value", "intro", mar(10, 9))
    move(newcomer, "value", "growth", mar(10, 9, 45))
    move(newcomer, "aipl", "awareness", mar(10, 9))
    # Before the next refresh, today's part is stale: still the stored one …
    before = selectors.median_days_in_stage(scope=Scope(), model=StageModel.objects.get(
        key="value"), period=_period(7))
    assert before["intro"] == {"exits": 2, "median_days": 5.25}
    services.metrics_today(today=TODAY)
    calls = _count_fast_calls(monkeypatch)
    stored = _reports(data)
    assert calls
    _assert_same(stored, _live(data, monkeypatch))
    # Exits from intro in the 7 days: c1 4, c2 6.5, c3 7.167, the newcomer 0.031 (45 min):
    # (4 + 6.5) / 2. From mature: c5 0.104.
    medians = stored[(Scope(), 7, "value", "medians")]
    assert medians["intro"] == {"exits": 4, "median_days": 5.25}
    assert medians["mature"] == {"exits": 1, "median_days": 0.104}
    # Growth entered: c5 (03-04), c1, c3 and the newcomer — c5's return is not a first entry.
    conversions = stored[(Scope(), 7, "value", "conversions")]
    assert conversions["growth"]["entered"] == 4
    assert conversions["mature"]["next"] == {"growth": {"customers": 1, "median_days": 0.104}}
    # A re-run with nobody touched since re-reads nobody and answers the same.
    again = services.metrics_today(today=TODAY)
    assert again.spells == 0 and TodayStageSpell.objects.count() == 10
    _assert_same(_reports(data), stored)


def _today_cells() -> dict:
    """Today's cells summed per key, as a reader sums them."""
    cells: dict = {}
    for row in StageSpellDayCell.objects.filter(today=True).values():
        key = (row["day"], row["days"], row["previous_on"], row["kind"], row["model_id"],
               row["stage_key"], row["next_key"], row["grain"], row["channel_id"],
               row["owner_id"])
        spells, histogram = cells.get(key, (0, {}))
        for bucket, n in row["histogram"].items():
            histogram[bucket] = histogram.get(bucket, 0) + n
        cells[key] = (spells + row["spells"], histogram)
    return {key: (spells, {b: n for b, n in histogram.items() if n})
            for key, (spells, histogram) in cells.items()
            if spells or any(histogram.values())}


def test_later_refreshes_read_the_touched_customers_and_equal_one_from_scratch(
        data, monkeypatch):
    """After the day's first refresh, the next ones re-read only the customers touched since
    (a move, another owner, a customer deleted): today's spells and cells end as a refresh of
    everyone who moved today would store them, and the answers equal the live ones."""
    c = data.c
    services.metrics_today(today=TODAY)
    # (the day's first refresh records how many cells it stored: the rows are summed back once
    # they are twice as many)
    assert FactsTable.objects.get().spells_today_cells == (
        StageSpellDayCell.objects.filter(today=True).count()) > 0
    move(c[3], "value", "growth", mar(10, 14))
    newcomer = Customer.objects.create(external_id="today", joined_at=mar(10, 9),
                                       owner=data.op_b, channel=data.store)
    move(newcomer, "value", "intro", mar(10, 9))
    move(newcomer, "value", "growth", mar(10, 9, 45))
    second = Customer.objects.create(external_id="today-2", joined_at=mar(10, 10),
                                     owner=data.op_a, channel=data.qr)
    move(second, "aipl", "awareness", mar(10, 10))
    move(second, "aipl", "interest", mar(10, 11))
    first = services.metrics_today(today=TODAY)
    assert first.spells > 0
    # c3 moves on again, c6 moves, the first newcomer is erased, the second passes to another
    # owner: its spells of today keep the old one until it moves again (or the night).
    move(c[3], "value", "mature", mar(10, 14, 40))
    move(c[6], "value", "dormant", mar(10, 15))
    newcomer.delete()
    Customer.objects.filter(pk=second.pk).update(owner=data.op_b)
    later = services.metrics_today(today=TODAY)
    # (only the customers whose stages changed are read — the erased newcomer has none left)
    assert later.spells == TodayStageSpell.objects.filter(
        customer_id__in=[c[3].pk, c[6].pk]).count()
    assert set(TodayStageSpell.objects.filter(customer_id=second.pk)
               .values_list("owner_id", flat=True)) == {data.op_a.pk}
    move(second, "aipl", "purchase", mar(10, 14, 50))
    services.metrics_today(today=TODAY)
    assert set(TodayStageSpell.objects.filter(customer_id=second.pk)
               .values_list("owner_id", flat=True)) == {data.op_b.pk}
    followed = (_today_cells(), sorted(TodayStageSpell.objects.values_list(
        "spell_id", "owner_id", "ended_at", "next_key")))
    stored = _reports(data)
    _assert_same(stored, _live(data, monkeypatch))
    # Summed back to one row per cell (as once they are twice as many), the same cells; and the
    # same day refreshed from scratch stores the same.
    with transaction.atomic():
        rows = stage_durations._compact_today()
    assert rows == len(followed[0])             # one row per cell
    assert (_today_cells(), sorted(TodayStageSpell.objects.values_list(
        "spell_id", "owner_id", "ended_at", "next_key"))) == followed
    FactsTable.objects.update(spells_today_on=None)
    services.metrics_today(today=TODAY)
    assert (_today_cells(), sorted(TodayStageSpell.objects.values_list(
        "spell_id", "owner_id", "ended_at", "next_key"))) == followed
    _assert_same(_reports(data), stored)


def test_the_planner_knows_how_many_spells_today_holds_after_each_refresh(data):
    """The reports join today's spells against the stored ones (NOT EXISTS); planned with the
    few rows of the day's first refresh, that anti-join ran as a loop over both — 57 s late in
    the day at 1M customers. Every refresh leaves the table's statistics up to date."""
    def estimated() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples FROM pg_class "
                           "WHERE relname = 'metrics_todaystagespell'")
            return int(cursor.fetchone()[0])

    services.metrics_today(today=TODAY)
    first = TodayStageSpell.objects.count()
    assert estimated() == first
    for n in range(12):
        newcomer = Customer.objects.create(external_id=f"later-{n}", joined_at=mar(10, 9),
                                           owner=data.op_b, channel=data.store)
        move(newcomer, "value", "intro", mar(10, 9))
        move(newcomer, "value", "growth", mar(10, 9, 45))
    services.metrics_today(today=TODAY)

    assert TodayStageSpell.objects.count() > first
    assert estimated() == TodayStageSpell.objects.count()


def test_spell_cells_exist_per_grain(data):
    """Block cells at the grains every customer, channel and owner (a (channel, owner) scope
    counts its own spells), one stored row per block, figure and grain key."""
    services.metrics_today(today=TODAY)
    assert set(StageSpellDayCell.objects.values_list("grain", flat=True)) == {0, 1, 2}
    keys = ("day", "days", "previous_on", "kind", "model_id", "stage_key", "next_key", "grain",
            "channel_id", "owner_id")
    stored = StageSpellDayCell.objects.filter(today=False)
    assert stored.filter(grain=2, owner_id=data.op_a.pk, kind="exit").exists()
    assert stored.values(*keys).distinct().count() == stored.count()


# Ranges within the 90 days (2023-12-12 … 03-10) that are not a standard range: from the
# first stored day, across c5's two entries into growth (02-01 10:00 and 03-04 12:00), ending
# before today, and a 10-day range ending today.
ARBITRARY = [Period(date(2023, 12, 12), date(2024, 1, 20)), Period(date(2024, 2, 1),
                                                                   date(2024, 3, 4)),
             Period(date(2024, 2, 2), date(2024, 3, 4)), Period(date(2024, 3, 3),
                                                                date(2024, 3, 9)),
             Period(date(2024, 1, 15), date(2024, 2, 22)), Period(TODAY - timedelta(days=9),
                                                                  TODAY)]


def test_arbitrary_ranges_in_the_window_are_stored_and_equal_the_live_ones(data, monkeypatch):
    live = _live(data, monkeypatch, ARBITRARY)
    services.metrics_today(today=TODAY)
    assert StageSpellDayCell.objects.filter(today=False).exists()
    assert StageSpellDayCell.objects.filter(today=True).exists()
    assert set(StageSpellDayCell.objects.values_list("grain", flat=True)) == {0, 1, 2}
    stored = _all_stored(data, monkeypatch, ARBITRARY)
    _assert_same(stored, live)
    # A (channel, owner) scope's figures are not all empty (the test would prove nothing).
    both = [Scope(channel=data.qr, owner=data.op_b), Scope(channel=data.store, owner=data.op_b)]
    assert [key for key, answer in stored.items() if key[0] in both and answer]

    # Hand-computed, value model, every customer. 02-02 … 03-04: c5's entry into growth on
    # 03-04 12:00 is its first in the range (the previous one, 02-01, is before it), on to
    # mature after 6 days; c6's (02-22 00:00) after 14: (6 + 14) / 2.
    growth = stored[(Scope(), ARBITRARY[2], "value", "conversions")]["growth"]
    assert growth == {"entered": 2, "next": {"mature": {"customers": 2, "median_days": 10.0}}}
    # 02-01 … 03-04: c5's first entry is 02-01 10:00, on to dormant after 19.083 days.
    growth = stored[(Scope(), ARBITRARY[1], "value", "conversions")]["growth"]
    assert growth == {"entered": 2, "next": {
        "dormant": {"customers": 1, "median_days": 19.083},
        "mature": {"customers": 1, "median_days": 14.0}}}
    # 03-03 … 03-09 (before today): exits from intro c1 4 days (03-05 01:00) and c2 6.5
    # (03-08 22:00); from growth c6 14 (03-07).
    medians = stored[(Scope(), ARBITRARY[3], "value", "medians")]
    assert medians["intro"] == {"exits": 2, "median_days": 5.25}
    assert medians["growth"] == {"exits": 1, "median_days": 14.0}


def test_arbitrary_ranges_count_todays_moves(data, monkeypatch):
    services.metrics_today(today=TODAY)
    c = data.c
    move(c[3], "value", "growth", mar(10, 14))
    move(c[5], "value", "growth", mar(10, 14, 30))
    move(c[6], "value", "dormant", mar(10, 15))
    order(c[1], "20.00", mar(10, 14))
    services.metrics_today(today=TODAY)
    calls = _count_fast_calls(monkeypatch)
    stored = _reports(data, ARBITRARY)
    assert calls
    _assert_same(stored, _live(data, monkeypatch, ARBITRARY))
    # c6 entered mature on 03-07 (in 03-03 … 03-09) and moved on to dormant today: 3.625 days.
    mature = stored[(Scope(), ARBITRARY[3], "value", "conversions")]["mature"]
    assert mature["next"] == {"dormant": {"customers": 1, "median_days": 3.625}}


def test_a_range_reaching_outside_the_window_is_computed_live(data, monkeypatch, settings,
                                                               api_client_for):
    # The spells and the channel cells cut to the standard 90 days (2023-12-12 … 03-10), so
    # that the hand-built data reaches before them.
    settings.METRICS_SPELL_DAYS = 90
    settings.METRICS_CHANNEL_DAYS = 90
    services.metrics_today(today=TODAY)
    outside = [Period(date(2023, 12, 11), date(2024, 1, 20)),
               Period(date(2023, 11, 1), date(2024, 3, 10))]
    for period in outside:
        assert stage_durations.stored_range(period, Scope()) is None
        assert channels.stored_range(period) is None
    calls = _count_fast_calls(monkeypatch)
    answers = _reports(data, outside)
    assert not calls
    _assert_same(answers, _live(data, monkeypatch, outside))
    admin = UserFactory(username="boss", roles=["admin"])
    client = api_client_for(admin)
    for path in ("stages", "flows", "channels"):
        response = client.get(f"/api/v1/metrics/{path}/", {
            "model": "value", "start": "2023-12-11", "end": "2024-01-20"})
        assert response.status_code == 200, response.content
    assert not calls


def _by_code(report: dict) -> dict:
    return {row["channel"]: row for row in report["results"]}


def test_channel_cells_hand_computed_and_today(data, monkeypatch):
    c = data.c
    # Joined 2024-02-09, on the day the 30-day windows end now (03-10 15:00 − 30 days =
    # 02-09 15:00): one at 10:00 (window over; deleted us 20 days later: lost), one at 16:00
    # (window open: not eligible yet). Counted live for that day, the others from the cells.
    early = Customer.objects.create(external_id="early", joined_at=feb(9, 10), owner=data.op_a,
                                    channel=data.qr)
    event(early, Event.Type.FRIEND_DELETED, feb(29, 10))
    Customer.objects.create(external_id="late", joined_at=feb(9, 16), owner=data.op_a,
                            channel=data.qr)
    # A customer imported with status deleted_us, 40 days after joining: lost within 90 only.
    Customer.objects.create(external_id="gone", joined_at=local(2024, 1, 1, 10), owner=data.op_b,
                            channel=data.store, status=Customer.Status.DELETED_US,
                            status_changed_at=local(2024, 2, 10, 10))
    services.metrics_today(today=TODAY)
    live = _live(data, monkeypatch)
    stored = _reports(data)
    _assert_same(stored, live)
    # 30 days (02-10 … 03-10): QR A acquired c1 and c2, c1 bought 100 + 300; Store c3 and c4,
    # c3's order refunded. Nobody's 30 days are over.
    thirty = _by_code(stored[(Scope(), 30, "channels")])
    assert (thirty["qr-a"]["acquired"], thirty["qr-a"]["buyers"], thirty["qr-a"]["revenue"]) == (
        2, 1, "400.00")
    assert (thirty["store"]["acquired"], thirty["store"]["buyers"]) == (2, 0)
    assert thirty["qr-a"]["retention_30d"] == {"eligible": 0, "retained": 0, "rate": None}
    # 90 days (2023-12-12 …): QR A also c5 (01-10; 500 on 03-07 and 80 on 02-01, both after
    # joining), early and late; eligible for 30 days: c5 and early (late joined after 15:00);
    # early deleted us after 20 days: 1 of 2 retained. Store: also "gone" (01-01), eligible,
    # deleted after 40 days: retained within 30. No channel: c6 (01-15, 50 on 02-29).
    ninety = _by_code(stored[(Scope(), 90, "channels")])
    assert (ninety["qr-a"]["acquired"], ninety["qr-a"]["buyers"],
            ninety["qr-a"]["revenue"]) == (5, 2, "980.00")
    assert ninety["qr-a"]["retention_30d"] == {"eligible": 2, "retained": 1, "rate": 0.5}
    assert ninety["store"]["retention_30d"] == {"eligible": 1, "retained": 1, "rate": 1.0}
    assert ninety[None]["revenue"] == "50.00"
    assert ninety["qr-a"]["retention_90d"]["eligible"] == 0

    # A day of changes: a newcomer joins and buys; c2 buys (their first purchase since
    # joining); c1's 300.00 of 03-08 is refunded; c3 deletes us.
    newcomer = Customer.objects.create(external_id="today", joined_at=mar(10, 9),
                                       owner=data.op_a, channel=data.store)
    order(newcomer, "20.00", mar(10, 9, 45))
    order(c[2], "60.00", mar(10, 11))
    Order.objects.filter(customer=c[1], amount=Decimal("300.00")).update(
        status=Order.Status.REFUNDED, refunded_at=mar(10, 12))
    event(c[3], Event.Type.FRIEND_DELETED, mar(10, 13))
    Customer.objects.filter(pk=c[3].pk).update(status=Customer.Status.DELETED_US,
                                               status_changed_at=mar(10, 13))
    # Stale today: the request computes today's changes itself …
    FactsTable.objects.update(today_at=NOW - timedelta(hours=1))
    _assert_same(_reports(data), _live(data, monkeypatch))
    # … and after the frequent refresh reads them stored.
    services.metrics_today(today=TODAY)
    stored = _reports(data)
    _assert_same(stored, _live(data, monkeypatch))
    seven = _by_code(stored[(Scope(), 7, "channels")])
    # 7 days (03-04 …): QR A nobody; Store c4 and the newcomer (20.00).
    assert (seven["store"]["acquired"], seven["store"]["buyers"], seven["store"]["revenue"]) == (
        2, 1, "20.00")
    thirty = _by_code(stored[(Scope(), 30, "channels")])
    assert (thirty["qr-a"]["buyers"], thirty["qr-a"]["revenue"]) == (2, "160.00")   # 100 + 60
    # Each channel's customers to date, whatever the range: Store c3, c4, "gone", the newcomer
    # and one dated after today; QR A c1, c2, c5, c7 (before the 90 channel days), early, late.
    assert [(seven[code]["customers_to_date"], thirty[code]["customers_to_date"])
            for code in ("store", "qr-a")] == [(5, 5), (6, 6)]


def test_stored_answers_read_no_transitions_or_orders(data):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    services.metrics_today(today=TODAY)
    value = StageModel.objects.get(key="value")
    for days in WINDOWS:
        with CaptureQueriesContext(connection) as ctx:
            selectors.median_days_in_stage(scope=Scope(user=data.op_a), model=value,
                                           period=_period(days))
            selectors.stage_conversions(scope=Scope(channel=data.qr), model=value,
                                        period=_period(days))
            attribution.channel_attribution(scope=Scope(user=data.op_b), period=_period(days))
        statements = [q["sql"] for q in ctx.captured_queries]
        assert not [sql for sql in statements if "lifecycle_stagetransition" in sql]
        assert not [sql for sql in statements if "crm_order" in sql]
        # Customers read live only for the join day whose 30/90-day windows end now; each
        # channel's customers to date from the cells, not counted over every customer.
        assert not [sql for sql in statements if "crm_customer" in sql and "joined_at" not in sql]
        # A fixed number of statements: the header, the cells, the exact middle values — and
        # per report a savepoint setting a short lock wait and restoring it (four).
        assert len(statements) <= 24


def test_ranges_longer_ago_than_ninety_days_are_stored_within_the_longer_windows(
        data, monkeypatch, settings):
    """The spells and the channel cells cover 400 days by default (METRICS_SPELL_DAYS,
    METRICS_CHANNEL_DAYS): a range starting before the standard 90 days — here from before c7
    joined (2023-12-01), the data's first day — is answered from them and equals the live
    answer; with 90 spell days it is computed live, and so is one starting before the 400."""
    earlier = [Period(date(2023, 12, 11), date(2024, 1, 20)),
               Period(date(2023, 11, 1), date(2024, 3, 10)),
               Period(date(2023, 11, 20), date(2024, 2, 29))]
    settings.METRICS_SPELL_DAYS = 90
    services.metrics_today(today=TODAY)
    for period in earlier:
        assert channels.stored_range(period) == period
        assert stage_durations.stored_range(period, Scope()) is None
    del settings.METRICS_SPELL_DAYS
    FactsTable.objects.update(spells_as_of=None)    # the nightly job again, with the longer window
    services.metrics_today(today=TODAY)
    assert stage_durations.first_stored_day(TODAY) == TODAY - timedelta(days=399)
    stored = _all_stored(data, monkeypatch, earlier)
    _assert_same(stored, _live(data, monkeypatch, earlier))
    # Hand-computed, value model, every customer, 2023-11-01 … 03-10: the exits from intro are
    # c1 4 days (03-01 01:00 → 03-05 01:00), c2 6.5 (03-02 10:00 → 03-08 22:00), c5 22
    # (01-10 10:00 → 02-01 10:00), c6 37.583 (01-15 10:00 → 02-22 00:00) and c7 44.583
    # (2023-12-01 10:00 → 01-15 00:00): the median is the third, 22.
    intro = stored[(Scope(), earlier[1], "value", "medians")]["intro"]
    assert intro == {"exits": 5, "median_days": 22.0}
    # The same range from blocks of 1, 4, 16 and 64 days. Entries into growth: c5 02-01 10:00
    # (on to dormant after 19.083 days), c6 02-22 00:00 (to mature after 14), c1 03-05 01:00 (to
    # mature today 01:00, after 5); c5's second entry, 03-04 12:00 (to mature today 12:00), is
    # not its first in the range — the block cells count it, the re-entries take it off.
    assert {days for _day, days in activity.pieces(earlier[1].start, earlier[1].end)} == {
        1, 4, 16, 64}
    growth = stored[(Scope(), earlier[1], "value", "conversions")]["growth"]
    assert growth == {"entered": 3, "next": {
        "dormant": {"customers": 1, "median_days": 19.083},
        "mature": {"customers": 2, "median_days": 9.5}}}
    assert StageSpellDayCell.objects.filter(kind="reentry", stage_key="growth", days=1,
                                            grain=0).exists()
    assert set(StageSpellDayCell.objects.values_list("days", flat=True)) == {1, 4, 16, 64, 256}
    assert stage_durations.stored_range(Period(date(2023, 1, 15), TODAY), Scope()) is None
    assert channels.stored_range(Period(date(2023, 1, 15), TODAY)) is None


def _readable_cells() -> dict:
    """The stored block cells a range within the spell days can read — the whole blocks in them,
    and the re-entries whose previous entry is in them too — by key."""
    first = stage_durations.first_stored_day(TODAY)
    cells = {}
    for cell in StageSpellDayCell.objects.filter(today=False, day__gte=first):
        if cell.previous_on is not None and cell.previous_on < first:
            continue
        key = (cell.day, cell.days, cell.previous_on, cell.kind, cell.model_id, cell.stage_key,
               cell.next_key, cell.grain, cell.channel_id, cell.owner_id)
        cells[key] = (cell.spells, cell.histogram)
    return cells


# 60 spell days: the first night's begin on 01-10, the second's on 01-11 — c5's entry into
# intro (01-10 10:00) leaves them (its exit on 02-01 stays); 400: the default.
@pytest.mark.parametrize("spell_days", [60, 400])
def test_the_nightly_update_equals_a_rebuild(data, monkeypatch, settings, spell_days):
    """The nightly refresh re-reads only the customers who moved (or changed channel or owner,
    or are gone) since the last night and adds the difference into the block cells: the cells
    equal those of a full rebuild, and the answers the live ones."""
    settings.METRICS_SPELL_DAYS = spell_days
    c = data.c
    # c9 does not move after the first night: it enters growth on 01-10 (the 60-day window's
    # first day that night, gone from it the next), leaves for dormant and comes back on 02-10 —
    # a re-entry whose previous entry leaves the window.
    c9 = Customer.objects.create(external_id="c9", joined_at=local(2024, 1, 10, 9),
                                 owner=data.op_a, channel=data.qr)
    move(c9, "value", "intro", local(2024, 1, 10, 12))
    move(c9, "value", "growth", local(2024, 1, 10, 18))
    move(c9, "value", "dormant", local(2024, 1, 25))
    move(c9, "value", "growth", feb(10, 9))
    first = services.facts_refresh(today=TODAY - timedelta(days=1))
    assert first.spells_rebuilt
    # A transition committed after that night read the highest id, with a lower one (its
    # transaction began before) and a time before the night: c2 into interest on 03-08 20:00.
    move(c[2], "aipl", "interest", mar(8, 20))
    FactsTable.objects.update(spells_read_id=StageTransition.objects.latest("id").pk)
    # After that night: c4 (intro since 03-09 12:00) moves on to growth at 20:00 the same day;
    # c6 goes to another owner and channel; c7 is deleted outright.
    move(c[4], "value", "growth", mar(9, 20))
    Customer.objects.filter(pk=c[6].pk).update(owner=data.op_a, channel=data.qr)
    Customer.objects.filter(pk=c[7].pk).delete()
    second = services.facts_refresh(today=TODAY)
    assert not second.spells_rebuilt
    # Re-read: c4, c6 and c7, c1 and c5 for their transitions after the first night's 00:00
    # (today's), c2 for its late one — not c3 or c9.
    assert second.spell_movers == 6
    updated = _readable_cells()
    assert [key for key in updated if key[3] == "reentry"]
    # The same night again changes nothing.
    again = services.facts_refresh(today=TODAY)
    assert not again.spells_rebuilt
    assert _readable_cells() == updated
    # Today's part and the answers: the same as live, for the standard and other ranges.
    services.metrics_today(today=TODAY)
    first_day = stage_durations.first_stored_day(TODAY)
    periods = [_period(days) for days in WINDOWS if _period(days).start >= first_day] + [
        period for period in ARBITRARY if period.start >= first_day]
    stored = _all_stored(data, monkeypatch, periods)
    _assert_same(stored, _live(data, monkeypatch, periods))
    # A rebuild of the same night stores the same cells.
    FactsTable.objects.update(spells_as_of=None)
    rebuilt = services.facts_refresh(today=TODAY)
    assert rebuilt.spells_rebuilt
    assert _readable_cells() == updated


def test_the_nightly_refresh_rebuilds_when_it_cannot_update(data, settings, monkeypatch):
    services.facts_refresh(today=TODAY - timedelta(days=1))
    # The spells gone (an unlogged table after a crash): rebuilt.
    StageSpell.objects.all().delete()
    assert services.facts_refresh(today=TODAY).spells_rebuilt
    # Another spell-days setting: rebuilt; then updated again.
    settings.METRICS_SPELL_DAYS = 120
    assert services.facts_refresh(today=TODAY).spells_rebuilt
    assert not services.facts_refresh(today=TODAY).spells_rebuilt
    # More than a week of nights missed: rebuilt; 30 days after a rebuild: rebuilt.
    assert services.facts_refresh(today=TODAY + timedelta(days=9)).spells_rebuilt
    assert not services.facts_refresh(today=date(2024, 3, 20)).spells_rebuilt
    FactsTable.objects.update(spells_rebuilt_on=date(2024, 2, 20))
    assert services.facts_refresh(today=date(2024, 3, 21)).spells_rebuilt
    assert FactsTable.objects.get().spells_rebuilt_on == date(2024, 3, 21)
    assert not services.facts_refresh(today=date(2024, 3, 22)).spells_rebuilt
    # Another time zone (the days of the cells change): rebuilt.
    FactsTable.objects.update(spells_time_zone="Asia/Tokyo")
    assert services.facts_refresh(today=date(2024, 3, 23)).spells_rebuilt
    # Most customers moved (more than a quarter; the minimum lifted for 8 customers): rebuilt.
    monkeypatch.setattr(stage_durations, "REBUILD_MIN", 0)
    for customer in list(data.c.values())[:3]:
        move(customer, "aipl", "loyalty", mar(10, 16))
    assert services.facts_refresh(today=date(2024, 3, 24)).spells_rebuilt


@pytest.mark.django_db(transaction=True)     # the rebuild's lock taken by another connection
def test_a_request_during_a_rebuild_answers_live_instead_of_waiting(data, monkeypatch):
    """A rebuild holds the spells' table (TRUNCATE, index builds) until it commits — minutes at
    1M customers: a request meanwhile gives the live answer within the lock wait."""
    import time

    import psycopg2
    from django.db import connection

    services.metrics_today(today=TODAY)
    value = StageModel.objects.get(key="value")
    period = ARBITRARY[1]
    live = _live(data, monkeypatch, [period])
    params = connection.get_connection_params()
    other = psycopg2.connect(**{k: v for k, v in params.items() if k != "cursor_factory"})
    try:
        with other.cursor() as cursor:
            cursor.execute("LOCK TABLE metrics_stagespell IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        answer = selectors.stage_conversions(scope=Scope(), model=value, period=period)
        assert time.monotonic() - started < 5
        assert answer == live[(Scope(), period, "value", "conversions")]
        assert stage_durations.stored_range(period, Scope()) == period
    finally:
        other.rollback()
        other.close()
    # Once the rebuild is over, answered from the spells again.
    calls = _count_fast_calls(monkeypatch)
    assert selectors.stage_conversions(scope=Scope(), model=value, period=period) == answer
    assert calls == ["stage_conversions"]


def test_a_second_nightly_run_the_same_day_drops_todays_part_until_the_next_refresh(
        data, monkeypatch):
    """The nightly refresh replaces today's changes too: run again during the day, the stages
    and flows of the ranges ending today are computed live (not short of today's moves) until
    the next frequent refresh stores today's part again (the channels count today's part per
    request meanwhile)."""
    services.metrics_today(today=TODAY)
    period = _period(7)
    assert stage_durations.stored_range(period, Scope()) == period
    services.facts_refresh(today=TODAY)
    assert not TodayStageSpell.objects.exists()
    assert stage_durations.stored_range(period, Scope()) is None
    live = _live(data, monkeypatch, [period])
    assert _reports(data, [period]) == live
    services.metrics_today(today=TODAY)
    assert stage_durations.stored_range(period, Scope()) == period
    _assert_same(_all_stored(data, monkeypatch, [period]), live)
