"""Writes of the metrics app: a day's snapshot, the cohort table and the precomputed facts
(metrics.stage_durations, metrics.channels, metrics.activity), nightly and for today every few
minutes, each under a lock on its header row so a re-run replaces what it wrote
(docs/METRICS.md, "Snapshots")."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta

from django.db import transaction
from django.utils import timezone

from core.db import heavy_statements
from lifecycle.models import StageModel
from metrics import activity, channels, selectors, stage_durations
from metrics.models import (
    BitmapTable,
    CohortCell,
    CohortTable,
    DailyActivity,
    DailyStageCount,
    DailyTransitionCount,
    FactsTable,
    Snapshot,
)
from metrics.periods import Period, Scope, add_months, day_start, local_today, month_start

logger = logging.getLogger(__name__)
BATCH = 2000


def _ms(since: float) -> int:
    """Milliseconds since the `time.monotonic()` reading `since`."""
    return round((time.monotonic() - since) * 1000)


class NegativeStageCount(Exception):
    """Stage counts carried over from the day before went below zero: a customer changed
    channel or owner since. Rebuild the day's counts."""


@dataclass
class SnapshotResult:
    date: date
    stage_counts: int = 0
    transition_counts: int = 0
    activity: int = 0
    duration_ms: int = 0
    # The stored stage counts by (channel, owner, model, stage), for the next day of a range.
    counts: dict = field(default_factory=dict, repr=False)

    @property
    def rows(self) -> int:
        return self.stage_counts + self.transition_counts + self.activity


@transaction.atomic
def snapshot_metrics(*, day: date, counts_before: dict | None = None) -> SnapshotResult:
    """Store (or replace) `day`'s stage counts at its end, transitions and activity by (channel,
    owner); the counts rebuilt from every transition, or from `counts_before` (the day
    before's) and the day's movers."""
    started = time.monotonic()
    heavy_statements()
    snapshot, _created = Snapshot.objects.select_for_update().get_or_create(
        date=day, defaults={"taken_at": timezone.now()})
    result = SnapshotResult(date=day)
    everyone = Scope()
    model_ids = list(StageModel.objects.values_list("pk", flat=True))
    for model in (DailyStageCount, DailyTransitionCount, DailyActivity):
        model.objects.filter(date=day).delete()

    transition_rows = selectors.transitions_by_day(scope=everyone, start=day, end=day,
                                                   model_ids=model_ids)
    if counts_before is None:
        result.counts = selectors.stage_counts_by_key(selectors.stage_counts_at(
            scope=everyone, at=day_start(day + timedelta(days=1)), model_ids=model_ids))
    else:
        result.counts = selectors.stage_counts_next_day(counts=counts_before,
                                                        transitions=transition_rows)
        if any(n < 0 for n in result.counts.values()):
            raise NegativeStageCount(day)
    result.stage_counts = len(DailyStageCount.objects.bulk_create([
        DailyStageCount(date=day, channel_id=ch, owner_id=ow, model_id=model_id,
                        stage_key=key, customers=n)
        for (ch, ow, model_id, key), n in result.counts.items()], batch_size=BATCH))
    result.transition_counts = len(DailyTransitionCount.objects.bulk_create([
        DailyTransitionCount(date=day, channel_id=r["ch"], owner_id=r["ow"],
                             model_id=r["model_id"], from_key=r["from_key"], to_key=r["to_key"],
                             transitions=r["transitions"], win_backs=r["win_backs"])
        for r in transition_rows], batch_size=BATCH))
    activity_rows = selectors.activity_by_day(scope=everyone, start=day, end=day)
    result.activity = len(DailyActivity.objects.bulk_create([
        DailyActivity(date=d, channel_id=ch, owner_id=ow, **values)
        for (d, ch, ow), values in activity_rows.items()], batch_size=BATCH))

    snapshot.taken_at, snapshot.duration_ms = timezone.now(), _ms(started)
    result.duration_ms = snapshot.duration_ms
    snapshot.save(update_fields=["taken_at", "duration_ms"])
    logger.info("metrics.snapshot_taken", extra={"date": day.isoformat(), "rows": result.rows,
                                                 "ms": result.duration_ms})
    return result


def _snapshot(day: date, counts_before: dict | None) -> SnapshotResult:
    """`snapshot_metrics`, rebuilding the counts when those carried over went negative."""
    try:
        return snapshot_metrics(day=day, counts_before=counts_before)
    except NegativeStageCount:
        return snapshot_metrics(day=day)


def snapshot_metrics_range(*, start: date, end: date, progress=None) -> list[SnapshotResult]:
    """Snapshot every day from `start` to `end` (a backfill), each in its own transaction and
    carrying the stage counts over from the day before; `progress(result)` after each."""
    results: list[SnapshotResult] = []
    for day in Period(start, end).each_day():
        results.append(_snapshot(day, results[-1].counts if results else None))
        if progress is not None:
            progress(results[-1])
    return results


@dataclass
class CohortResult:
    through: date | None
    cells: int = 0
    duration_ms: int = 0
    cohorts: set = field(default_factory=set)


@transaction.atomic
def cohorts_refresh(*, today: date | None = None) -> CohortResult:
    """Rewrite the cohort table with every complete month (those before the current one)."""
    started = time.monotonic()
    heavy_statements()
    header, _created = CohortTable.objects.select_for_update().get_or_create(pk=1)
    current = month_start(today or local_today())
    sizes, active = selectors.cohort_cells(scope=Scope(), joined_until=current,
                                           active_until=current)
    CohortCell.objects.all().delete()
    cells = [CohortCell(cohort=cohort, month_offset=0, channel_id=ch, owner_id=ow,
                        customers=size, active=active.get((cohort, 0, ch, ow), 0))
             for (cohort, ch, ow), size in sizes.items()]
    cells += [CohortCell(cohort=cohort, month_offset=offset, channel_id=ch, owner_id=ow,
                         customers=sizes.get((cohort, ch, ow), 0), active=n)
              for (cohort, offset, ch, ow), n in active.items() if offset > 0]
    CohortCell.objects.bulk_create(cells, batch_size=BATCH)
    result = CohortResult(through=add_months(current, -1), cells=len(cells),
                          cohorts={cohort for cohort, _ch, _ow in sizes}, duration_ms=_ms(started))
    header.through, header.duration_ms = result.through, result.duration_ms
    header.refreshed_at = timezone.now()
    header.save()
    logger.info("metrics.cohorts_refreshed", extra={"cells": result.cells,
                                                    "ms": result.duration_ms})
    return result


@dataclass
class FactsResult:
    as_of: date | None
    spells: int = 0
    spell_cells: int = 0
    spells_rebuilt: bool = False
    spell_movers: int | None = None
    joiners: int = 0
    channel_cells: int = 0
    spells_ms: int = 0
    channels_ms: int = 0
    duration_ms: int = 0


@transaction.atomic
def facts_refresh(*, today: date | None = None) -> FactsResult:
    """Bring the stage spells and channel join-day cells up to the day before `today`. On
    PostgreSQL only: elsewhere those reports are computed live."""
    today = today or local_today()
    if not activity.available():
        return FactsResult(as_of=None)
    started = time.monotonic()
    heavy_statements()
    header, _created = FactsTable.objects.select_for_update().get_or_create(pk=1)
    spells = stage_durations.refresh(today, header)
    spells_ms, lap = _ms(started), time.monotonic()
    cells = channels.refresh(today)
    result = FactsResult(
        as_of=today - timedelta(days=1), spells=spells["spells"],
        spell_cells=spells["spell_cells"], spells_rebuilt=spells["rebuilt"],
        spell_movers=spells["moved"], joiners=cells["joiners"],
        channel_cells=cells["channel_cells"], spells_ms=spells_ms, channels_ms=_ms(lap),
        duration_ms=_ms(started))
    header.spells_as_of = header.channels_as_of = result.as_of
    # Today's part was replaced too: none stored until the next frequent refresh.
    header.today_at = None
    header.refreshed_at, header.duration_ms = timezone.now(), result.duration_ms
    header.save()
    logger.info("metrics.facts_refreshed", extra={
        **asdict(result), "as_of": result.as_of.isoformat(), "ms": result.duration_ms})
    return result


@transaction.atomic
def bitmaps_refresh(*, today: date | None = None,
                    rebuild: tuple[date, date] | None = None) -> activity.RefreshResult:
    """Bring the customer bitmaps up to the day before `today` (the days not stored yet, those
    with an order refunded since; `rebuild` (first, last day): those days again). On
    PostgreSQL only: elsewhere the figures are computed live."""
    today = today or local_today()
    if not activity.available():
        return activity.RefreshResult()
    heavy_statements()
    header, _created = BitmapTable.objects.select_for_update().get_or_create(pk=1)
    read_at = timezone.now()
    result = activity.refresh(today, since=header.read_at, rebuild=rebuild)
    header.first_day, header.last_day = result.first_day, result.last_day
    header.read_at, header.refreshed_at = read_at, timezone.now()
    header.duration_ms = result.duration_ms
    header.save()
    logger.info("metrics.bitmaps_refreshed", extra={
        "first_day": result.first_day.isoformat(), "last_day": result.last_day.isoformat(),
        "days_built": result.days_built, "days_repaired": result.days_repaired,
        "blocks_built": result.blocks_built, "ms": result.duration_ms})
    return result


@dataclass
class TodayResult:
    date: date
    snapshot: SnapshotResult
    spells: int = 0
    spells_ms: int = 0
    channels_ms: int = 0
    changed_customers: int = 0
    bitmaps_ms: int = 0
    nightly: NightlyResult | None = None
    duration_ms: int = 0


def _stored_counts(day: date) -> dict | None:
    """The stage counts stored for `day` after it ended, as a next day's snapshot carries them
    over; None when not stored so."""
    snapshot = Snapshot.objects.filter(date=day).first()
    if snapshot is None or snapshot.taken_at < day_start(day + timedelta(days=1)):
        return None
    return {(r.channel_id, r.owner_id, r.model_id, r.stage_key): r.customers
            for r in DailyStageCount.objects.filter(date=day)}


def metrics_today(*, today: date | None = None) -> TodayResult:
    """The frequent refresh: store today so far (its snapshot, and today's part of the stage
    spells, channel cells and customer bitmaps), after the nightly job when that has not run
    for yesterday. Safe to run twice or concurrently: each part replaces under its lock."""
    started = time.monotonic()
    today = today or local_today()
    yesterday = today - timedelta(days=1)
    nightly = None
    facts, bitmaps = FactsTable.objects.first(), BitmapTable.objects.first()
    counts = _stored_counts(yesterday)
    if counts is None or (activity.available() and (
            facts is None or bitmaps is None
            or not facts.spells_as_of == facts.channels_as_of == bitmaps.last_day == yesterday)):
        nightly = metrics_nightly(today=today)
        counts = _stored_counts(yesterday)
    result = TodayResult(date=today, snapshot=_snapshot(today, counts), nightly=nightly)
    if activity.available():
        with transaction.atomic():
            heavy_statements()
            header = FactsTable.objects.select_for_update().get(pk=1)
            taken_at = timezone.now()
            if header.spells_as_of == yesterday:
                lap = time.monotonic()
                result.spells = stage_durations.refresh_today(today, header)["spells"]
                header.save(update_fields=["spells_today_on", "spells_today_cells"])
                result.spells_ms = _ms(lap)
            if header.channels_as_of == yesterday:
                lap = time.monotonic()
                channels.refresh_today(today)
                result.channels_ms = _ms(lap)
            if yesterday == header.spells_as_of == header.channels_as_of:
                header.today_at, header.today_ms = taken_at, _ms(started)
                header.save(update_fields=["today_at", "today_ms"])
        lap = time.monotonic()
        with transaction.atomic():
            header = BitmapTable.objects.select_for_update().filter(pk=1).first()
            if header is not None and header.last_day == yesterday:
                header.patch_at = timezone.now()
                result.changed_customers = activity.refresh_today(header, today)
                header.save(update_fields=["patch_at"])
        result.bitmaps_ms = _ms(lap)
    result.duration_ms = _ms(started)
    logger.info("metrics.today_refreshed", extra={"date": today.isoformat(),
                                                  "ms": result.duration_ms})
    return result


@dataclass
class NightlyResult:
    snapshot: SnapshotResult
    cohorts: CohortResult
    facts: FactsResult
    bitmaps: activity.RefreshResult


def metrics_nightly(*, today: date | None = None) -> NightlyResult:
    """The nightly job: snapshot yesterday, refresh the cohort table, the stage spells and
    channel cells, then the customer bitmaps."""
    today = today or local_today()
    return NightlyResult(snapshot=snapshot_metrics(day=today - timedelta(days=1)),
                         cohorts=cohorts_refresh(today=today),
                         facts=facts_refresh(today=today),
                         bitmaps=bitmaps_refresh(today=today))
