#!/usr/bin/env python
"""Benchmark (not a test) of the metrics API, the nightly metrics job and a snapshot backfill.

    DATABASE_URL=postgres://…/crm_bench_metrics REDIS_URL=redis://127.0.0.1:6379/12 \
        .venv/bin/python bench/metrics.py [--backfill 90] [--cold 3] [--warm 10]

On the database DATABASE_URL names (meant for 1M customers / 10M events / 1.5M orders made by
`seed_demo`, with stages from `evaluate_lifecycle`; it refuses a database whose name lacks
"bench" unless --force):

1. The clock is set to --today (default: the local day of the latest event, so that today's
   live part holds a full day of the data, the worst case) at --time (default 18:00), in this
   process only.
2. --history (once, after `evaluate_lifecycle`): replaces the stage transitions with a
   synthetic history, since an evaluation places everyone at the moment it runs: per model and
   customer, a first placement at `joined_at` and then one move per stage up the ladder to the
   customer's current stage, spread between joining and an hour before the clock (≈ 8M
   transitions at 1M customers; no win-backs). Only `lifecycle_stagetransition` is rewritten.
3. --backfill N: snapshots the N days before today (`snapshot_metrics_range`), timed.
4. The nightly job (`metrics.services.metrics_nightly`: yesterday's snapshot, the cohort
   table, the stage spells and channel cells, the customer bitmaps), timed — unless --no-nightly; then the frequent refresh
   (`metrics_today`: today so far, and `metrics.reports.warm`) — unless --no-frequent.
   --verify compares the stored answers (overview, revenue, cohorts; 30 days; and stages,
   flows and channels for each range) with the live computation.
5. Every endpoint (`metrics/overview/`, `funnel/`, `stages/`, `flows/`, `revenue/`,
   `cohorts/`, `channels/`, `sops/`, `campaigns/`) for the ranges ending today (--ranges, days;
   default 7, 30 and 90; --custom-ranges adds any ranges for overview, revenue, stages, flows
   and channels; `funnel/` is "now" for AIPL, `stages/` and `flows/` for the
   dashboard's default model, `cohorts/` its default 12 months), as an admin,
   as an admin with `channel` and with `owner`, and as the operator owning the most customers:
   cold (the metrics cache keys deleted before each request) and warm (answered from the
   cache), p50 / p95 over the repeats. Requests go through the whole DRF stack in this process
   (APIClient, force_authenticate). --stale-today: the 30-day loads again with today
   computed by each request (as when the frequent refresh is late).

The cache is Django's (REDIS_URL: Redis, else in-process memory); only the `metrics:` keys are
deleted, so give the benchmark a Redis database of its own anyway. Writes: the metrics tables
(snapshots, cohort table, precomputed facts), and with --history the stage transitions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import date, datetime, timedelta
from datetime import time as dtime
from unittest import mock

from _common import django_setup

django_setup()

from _common import machine, sql, vacuum_stale_tables  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.cache import cache  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Count  # noqa: E402
from django.utils import timezone  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from core import access  # noqa: E402
from crm.models import Channel, Customer  # noqa: E402
from metrics import activity, periods, reports, selectors, services  # noqa: E402
from metrics.periods import Period, Scope, add_months, month_start  # noqa: E402
from metrics.reports import AIPL_MODEL, DEFAULT_MODEL  # noqa: E402

ENDPOINTS = ("overview", "funnel", "stages", "flows", "revenue", "cohorts", "channels", "sops",
             "campaigns")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def table(headers: list[str], rows: list[list], title: str = "") -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    if title:
        print(f"\n## {title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    sys.stdout.flush()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


# --- The clock and the cache ----------------------------------------------------------------

def freeze_clock(today: date, at: dtime):
    """timezone.now() answers `today` `at` (system time zone) in this process."""
    frozen = datetime.combine(today, at, tzinfo=timezone.get_default_timezone())
    patcher = mock.patch("django.utils.timezone.now", lambda: frozen)
    patcher.start()
    return frozen


def clear_metrics_cache() -> None:
    """Delete the metrics answers only (keys `…metrics:…`), whatever else the cache holds."""
    backend = settings.CACHES["default"]["BACKEND"]
    if backend.endswith("RedisCache"):
        client = cache._cache.get_client(write=True)
        keys = list(client.scan_iter(match="*metrics:*", count=1000))
        if keys:
            client.delete(*keys)
    else:
        cache.clear()       # in-process memory: this process's cache only


# --- Data -----------------------------------------------------------------------------------

def sizes() -> list[list]:
    rows = []
    for table_name in ("crm_customer", "crm_event", "crm_order", "crm_groupmembership",
                       "lifecycle_stagetransition", "lifecycle_customerstage",
                       "campaigns_enrollment", "campaigns_message", "metrics_snapshot",
                       "metrics_dailyactivity", "metrics_dailystagecount",
                       "metrics_dailytransitioncount", "metrics_cohortcell",
                       "metrics_stagespell",
                       "metrics_todaystagespell", "metrics_stagespelldaycell",
                       "metrics_joinerfacts", "metrics_channeldaycell",
                       "metrics_customerbitmap", "metrics_customercolumn"):
        found = sql("SELECT to_regclass(%s)", [table_name])[0][0]
        if found is None:
            continue
        n = sql(f"SELECT count(*) FROM {table_name}")[0][0]
        size = sql("SELECT pg_size_pretty(pg_total_relation_size(%s))", [table_name])[0][0]
        rows.append([table_name, f"{n:,}", size])
    return rows


def pick_people():
    User = get_user_model()
    admin = User.objects.filter(is_superuser=True).order_by("pk").first()
    if admin is None:
        admin = next(u for u in User.objects.order_by("pk") if access.user_role(u) == access.ADMIN)
    top = (Customer.objects.exclude(owner=None).values("owner").annotate(n=Count("pk"))
           .order_by("-n").first())
    operator = User.objects.get(pk=top["owner"])
    channel = (Customer.objects.exclude(channel=None).values("channel")
               .annotate(n=Count("pk")).order_by("-n").first())
    channel = Channel.objects.get(pk=channel["channel"])
    return admin, operator, top["n"], channel


# --- Requests -------------------------------------------------------------------------------

def request(client: APIClient, path: str, params: dict) -> float:
    started = time.perf_counter()
    response = client.get(path, params)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{path} {params}: {response.status_code} {response.content[:500]!r}")
    return elapsed


def loads(today: date, ranges: list[int], endpoints: list[str], custom=()):
    """(endpoint, range label, params) of the dashboard's loads, and of the --custom-ranges."""
    for endpoint in endpoints:
        if endpoint == "funnel":
            yield endpoint, "now", {"model": AIPL_MODEL}
            continue
        if endpoint == "cohorts":
            yield endpoint, "12 months", {}
            continue
        for days in ranges:
            params = {"start": (today - timedelta(days=days - 1)).isoformat(),
                      "end": today.isoformat()}
            if endpoint in ("stages", "flows"):
                params["model"] = DEFAULT_MODEL
            yield endpoint, f"{days} d", params
        for start, end in custom:
            if endpoint not in ("overview", "revenue", "stages", "flows", "channels"):
                continue
            params = {"start": start.isoformat(), "end": end.isoformat()}
            if endpoint in ("stages", "flows"):
                params["model"] = DEFAULT_MODEL
            yield endpoint, f"{start:%m-%d}..{end:%m-%d}", params


def bench_endpoints(opts, today: date) -> list[list]:
    admin, operator, owned, channel = pick_people()
    print(f"admin: {admin.username}; operator: {operator.username} ({owned:,} customers); "
          f"channel filter: {channel.code}; owner filter: {operator.username}")
    variants = [("admin", admin, {}), (f"admin ch={channel.code}", admin, {"channel": channel.code}),
                (f"admin owner={operator.username}", admin, {"owner": operator.username}),
                (f"admin ch={channel.code}+owner={operator.username}", admin,
                 {"channel": channel.code, "owner": operator.username}),
                (f"operator {operator.username}", operator, {}),
                (f"operator {operator.username} ch={channel.code}", operator,
                 {"channel": channel.code})]
    rows = []
    for endpoint, label, params in loads(today, opts.ranges, opts.endpoints,
                                         opts.custom_ranges):
        path = f"/api/v1/metrics/{endpoint}/"
        for who, user, extra in variants:
            if who not in opts.who_filter(who):
                continue
            client = APIClient()
            client.force_authenticate(user)
            cold = []
            for _ in range(opts.cold):
                clear_metrics_cache()
                cold.append(request(client, path, {**params, **extra}))
            warm = [request(client, path, {**params, **extra}) for _ in range(opts.warm)]
            rows.append([endpoint, label, who, ms(pct(cold, .5)), ms(pct(cold, .95)),
                         ms(pct(warm, .5)), ms(pct(warm, .95))])
            print(f"  {endpoint:9} {label:9} {who:28} cold {ms(pct(cold, .5)):>7} ms  "
                  f"warm {ms(pct(warm, .5)):>4} ms", flush=True)
    return rows


# --- Jobs -----------------------------------------------------------------------------------

HISTORY_SQL = """
INSERT INTO lifecycle_stagetransition (from_key, to_key, at, source, reason, win_back, backward,
                                       customer_id, from_stage_id, model_id, to_stage_id)
SELECT COALESCE(prev.key, ''), s.key,
       CASE WHEN s.position = 0 THEN c.joined_at
            ELSE c.joined_at + (GREATEST(%(end)s, c.joined_at) - c.joined_at)
                 * (s.position::float / (cur.position + 1))
                 * (0.8 + 0.2 * ((hashint8(c.id * 7 + s.position) & 1023) / 1023.0)) END,
       'rule', '', false, false, cs.customer_id, prev.id, cs.model_id, s.id
FROM lifecycle_customerstage cs
JOIN lifecycle_stage cur ON cur.id = cs.stage_id
JOIN lifecycle_stage s ON s.model_id = cs.model_id AND s.position <= cur.position
LEFT JOIN lifecycle_stage prev ON prev.model_id = s.model_id AND prev.position = s.position - 1
JOIN crm_customer c ON c.id = cs.customer_id
"""


def synthesize_history(frozen: datetime) -> list[list]:
    started = time.perf_counter()
    sql("TRUNCATE lifecycle_stagetransition")
    sql(HISTORY_SQL, {"end": frozen - timedelta(hours=1)})
    sql("ANALYZE lifecycle_stagetransition")
    n = sql("SELECT count(*) FROM lifecycle_stagetransition")[0][0]
    return [["synthetic stage history (--history)", f"{time.perf_counter() - started:,.1f} s",
             f"{n:,} transitions"]]


# --- Timed jobs ------------------------------------------------------------------------------

def bench_backfill(today: date, days: int) -> list[list]:
    start, end = today - timedelta(days=days), today - timedelta(days=1)
    durations = []
    started = time.perf_counter()
    services.snapshot_metrics_range(start=start, end=end,
                                    progress=lambda r: durations.append(r.duration_ms / 1000))
    total = time.perf_counter() - started
    return [[f"backfill {start} … {end} ({days} days)", f"{total:,.1f} s",
             f"{statistics.median(durations):.2f} s a day (median), "
             f"{max(durations):.2f} s the slowest"]]


def bench_nightly(today: date) -> list[list]:
    timings: list[tuple[str, float]] = []
    steps = [name for name in ("snapshot_metrics", "cohorts_refresh", "facts_refresh",
                               "bitmaps_refresh")
             if hasattr(services, name)]
    originals = {name: getattr(services, name) for name in steps}

    def timed(name):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                timings.append((name, time.perf_counter() - started))
        return wrapper

    for name in steps:
        setattr(services, name, timed(name))
    try:
        started = time.perf_counter()
        done = services.metrics_nightly(today=today)
        total = time.perf_counter() - started
    finally:
        for name, fn in originals.items():
            setattr(services, name, fn)
    facts = done.facts
    parts = []
    if getattr(facts, "spells", 0):
        how = ("rebuilt" if facts.spells_rebuilt
               else f"updated: {facts.spell_movers:,} customers re-read")
        parts += [f"stage spells {facts.spells_ms / 1000:.1f} s ({how}; {facts.spells:,} spells, "
                  f"{facts.spell_cells:,} cells)",
                  f"channel cells {facts.channels_ms / 1000:.1f} s ({facts.joiners:,} joiners, "
                  f"{facts.channel_cells:,} cells)"]
    rows = [[f"nightly job for {today} (yesterday's snapshot and the rest)", f"{total:,.1f} s",
             ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings)],
            ["  of which facts_refresh", "", "; ".join(parts)]]
    done_bitmaps = getattr(done, "bitmaps", None)
    if done_bitmaps is not None and done_bitmaps.last_day is not None:
        rows.append(["  of which bitmaps_refresh", f"{done_bitmaps.duration_ms / 1000:.1f} s",
                     f"{done_bitmaps.first_day} … {done_bitmaps.last_day}: "
                     f"{done_bitmaps.days_built} days built, {done_bitmaps.days_repaired} "
                     f"rebuilt (refunds), {done_bitmaps.blocks_built} blocks, columns of "
                     f"{done_bitmaps.customers:,} ids; stored "
                     f"{activity.storage_bytes() / 2**20:,.0f} MB"])
    return rows


def bench_frequent(today: date) -> list[list]:
    """The frequent refresh (beat every 4 minutes): today's snapshot and today's part of the
    stored facts, then the cache warmed with the dashboard's default answers."""
    # A minute after the nightly job (the clock stands still otherwise), as when the beat runs
    # it: today's changed customers for the bitmaps are those since the nightly read.
    later = timezone.now() + timedelta(minutes=1)
    started = time.perf_counter()
    with mock.patch("django.utils.timezone.now", lambda: later):
        done = services.metrics_today(today=today)
    refreshed = time.perf_counter() - started
    _admin, operator, _owned, _channel = pick_people()
    reports._note_operator(Scope(user=operator))        # one operator used the dashboard lately
    started = time.perf_counter()
    warmed = reports.warm()
    warming = time.perf_counter() - started
    return [[f"frequent refresh: today so far ({today}, clock at {later:%H:%M})", f"{refreshed:,.1f} s",
             f"today's snapshot {done.snapshot.duration_ms / 1000:.1f} s; today's "
             f"stage spells {getattr(done, 'spells_ms', 0) / 1000:.1f} s "
             f"({getattr(done, 'spells', 0):,} spells), channel cells "
             f"{getattr(done, 'channels_ms', 0) / 1000:.1f} s; bitmaps: today's "
             f"{getattr(done, 'changed_customers', 0):,} changed customers "
             f"{getattr(done, 'bitmaps_ms', 0) / 1000:.1f} s"],
            [f"frequent refresh: cache warmed (dashboard defaults, admins and "
             f"{operator.username})", f"{warming:,.1f} s",
             f"{warmed} answers"]]


def verify(today: date, operator) -> list[list]:
    """The stored answers against the live computation (customer bitmaps and today's snapshot
    switched off), for the 30 days up to today."""
    period = Period(today - timedelta(days=29), today)
    rows = []
    for who, scope in (("admin", Scope()), (f"operator {operator.username}",
                                            Scope(user=operator))):
        for name, fn in (("overview", lambda s: selectors.overview_report(scope=s,
                                                                          period=period)),
                         ("revenue", lambda s: selectors.revenue_report(
                             scope=s, period=period, compare=period.previous())),
                         ("cohorts", lambda s: selectors.cohort_retention(
                             scope=s, period=Period(add_months(month_start(today), -11),
                                                    today)))):
            started = time.perf_counter()
            stored = fn(scope)
            fast = time.perf_counter() - started
            with mock.patch.object(activity, "stored_period", lambda *a, **k: False), \
                    mock.patch.object(selectors, "_today_snapshot_is_fresh", lambda t: False):
                started = time.perf_counter()
                live = fn(scope)
                slow = time.perf_counter() - started
            rows.append([name, who, "same" if stored == live else "DIFFERENT", ms(fast),
                         ms(slow)])
    return rows


def verify_details(today: date, operator, channel, ranges: list[int], custom=()) -> list[list]:
    """Stages, flows (the dashboard's default model) and channels answered from the stored
    spells and channel cells against the live computation, per standard range and per
    --custom-ranges range, as admin, operator and an operator filtering on a channel (the
    (channel, owner) grain)."""
    from lifecycle.models import StageModel
    from metrics import attribution, channels, stage_durations

    model = StageModel.objects.get(key=DEFAULT_MODEL)
    rows = []
    periods = [(f"{days} d", Period(today - timedelta(days=days - 1), today))
               for days in ranges]
    periods += [(f"{start:%m-%d}..{end:%m-%d}", Period(start, end)) for start, end in custom]
    for label, period in periods:
        for who, scope in (("admin", Scope()), (f"operator {operator.username}",
                                                Scope(user=operator)),
                           (f"operator {operator.username} ch={channel.code}",
                            Scope(user=operator, channel=channel))):
            for name, fn in (("stages", lambda s, period=period: selectors.stages_report(
                                 scope=s, model=model, period=period)),
                             ("flows", lambda s, period=period: selectors.flows_report(
                                 scope=s, model=model, period=period)),
                             ("channels", lambda s, period=period: attribution.channel_attribution(
                                 scope=s, period=period))):
                started = time.perf_counter()
                stored = fn(scope)
                fast = time.perf_counter() - started
                with mock.patch.object(stage_durations, "stored_range", lambda p, s: None), \
                        mock.patch.object(channels, "stored_range", lambda p: None):
                    started = time.perf_counter()
                    live = fn(scope)
                    slow = time.perf_counter() - started
                rows.append([f"{name} {label}", who, "same" if stored == live else "DIFFERENT",
                             ms(fast), ms(slow)])
                print(f"  {rows[-1]}", flush=True)
    return rows


def verify_bitmaps(today: date, custom=()) -> list[list]:
    """Overview and revenue of the --custom-ranges answered from the customer bitmaps against
    the live computation, as admin, admin with a channel, admin with an owner and operator."""
    from metrics import activity

    admin, operator, _owned, channel = pick_people()
    scopes = (("admin", Scope(user=admin)), (f"admin ch={channel.code}",
                                             Scope(user=admin, channel=channel)),
              (f"admin owner={operator.username}", Scope(user=admin, owner=operator)),
              (f"operator {operator.username}", Scope(user=operator)))
    rows = []
    for start, end in custom:
        period = Period(start, end)
        for who, scope in scopes:
            for name, fn in (("overview", lambda s, period=period: selectors.overview_report(
                                 scope=s, period=period)),
                             ("revenue", lambda s, period=period: selectors.revenue_report(
                                 scope=s, period=period, compare=period.previous()))):
                started = time.perf_counter()
                stored = fn(scope)
                fast = time.perf_counter() - started
                with mock.patch.object(activity, "stored_period", lambda p, t=None: False):
                    started = time.perf_counter()
                    live = fn(scope)
                    slow = time.perf_counter() - started
                rows.append([f"{name} {start:%m-%d}..{end:%m-%d}", who,
                             "same" if stored == live else "DIFFERENT", ms(fast), ms(slow)])
                print(f"  {rows[-1]}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--today", type=date.fromisoformat, default=None,
                        help="the clock's day (default: the local day of the latest event)")
    parser.add_argument("--time", type=dtime.fromisoformat, default=dtime(18, 0))
    parser.add_argument("--history", action="store_true",
                        help="replace the stage transitions with a synthetic history first")
    parser.add_argument("--backfill", type=int, default=0, metavar="DAYS",
                        help="snapshot the DAYS days before today first (timed)")
    parser.add_argument("--no-nightly", action="store_true")
    parser.add_argument("--no-frequent", action="store_true",
                        help="skip the frequent refresh (today so far, cache warming)")
    parser.add_argument("--stale-today", action="store_true",
                        help="also time the 30-day loads with today computed live")
    parser.add_argument("--verify", action="store_true",
                        help="compare the stored answers with the live computation")
    parser.add_argument("--cold", type=int, default=3, help="cold requests per load")
    parser.add_argument("--warm", type=int, default=10, help="warm requests per load")
    parser.add_argument("--ranges", type=lambda s: [int(x) for x in s.split(",")],
                        default=[7, 30, 90])
    parser.add_argument(
        "--custom-ranges", default=[], metavar="START:END,…",
        type=lambda s: [tuple(date.fromisoformat(d) for d in r.split(":")) for r in s.split(",")],
        help="also time (and with --verify compare) overview, revenue, stages, flows and "
             "channels for these "
             "ranges, e.g. 2026-09-01:2026-09-30,2026-10-15:2026-11-22")
    parser.add_argument("--endpoints", type=lambda s: s.split(","), default=list(ENDPOINTS))
    parser.add_argument("--who", default="", help="only the variants containing this text")
    parser.add_argument("--force", action="store_true")
    opts = parser.parse_args()
    opts.who_filter = (lambda who: who if opts.who in who else "")

    name = connection.settings_dict["NAME"]
    if connection.vendor != "postgresql":
        raise SystemExit("PostgreSQL only (set DATABASE_URL)")
    if "bench" not in name and not opts.force:
        raise SystemExit(f"refusing database {name!r} (no 'bench' in its name); it writes the "
                         "metrics tables. --force to insist.")
    if opts.today is None:
        latest = sql("SELECT max(occurred_at) FROM crm_event")[0][0]
        opts.today = timezone.localtime(latest, timezone.get_default_timezone()).date()
    frozen = freeze_clock(opts.today, opts.time)

    print(f"machine: {machine()}")
    print(f"database: PostgreSQL {sql('SHOW server_version')[0][0]}, {name}; cache: "
          f"{settings.CACHES['default']['BACKEND'].rsplit('.', 1)[-1]}")
    print(f"clock: {frozen.isoformat()} (today = {opts.today})")
    vacuumed = vacuum_stale_tables(sql)
    if vacuumed:
        print(f"(vacuumed first, as autovacuum would have: {', '.join(vacuumed)})")
    table(["table", "rows", "size"], sizes(), "Data")

    jobs = []
    if opts.history:
        jobs += synthesize_history(frozen)
    if opts.backfill:
        jobs += bench_backfill(opts.today, opts.backfill)
    if not opts.no_nightly:
        jobs += bench_nightly(opts.today)
    if not opts.no_frequent:
        jobs += bench_frequent(opts.today)
    if jobs:
        table(["job", "time", "detail"], jobs, "Jobs")
        print(f"load average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    if opts.verify:
        _admin, operator, _owned, channel = pick_people()
        table(["report (30 days)", "who", "stored vs live", "stored ms", "live ms"],
              verify(opts.today, operator), "Stored answers against the live computation")
        table(["report", "who", "stored vs live", "stored ms", "live ms"],
              verify_details(opts.today, operator, channel, opts.ranges, opts.custom_ranges),
              "Stage spells and channel cells against the live computation")
        if opts.custom_ranges:
            table(["report", "who", "stored vs live", "stored ms", "live ms"],
                  verify_bitmaps(opts.today, opts.custom_ranges),
                  "Customer bitmaps (overview, revenue) against the live computation")

    headers = ["endpoint", "range", "who", "cold p50 ms", "cold p95 ms", "warm p50 ms",
               "warm p95 ms"]
    rows = bench_endpoints(opts, opts.today)
    table(headers, rows, f"Metrics API ({opts.cold} cold, {opts.warm} warm requests per load)")
    if opts.stale_today:
        # The frequent refresh late: today's part computed by each request.
        with mock.patch.object(periods, "today_max_age", lambda: -1), \
                mock.patch.object(selectors, "today_max_age", lambda: -1), \
                mock.patch.object(activity, "today_max_age", lambda: -1):
            opts.ranges = [30]
            rows = bench_endpoints(opts, opts.today)
        table(headers, rows, "Metrics API, today computed live (the frequent refresh late)")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{machine()}")


if __name__ == "__main__":
    main()
