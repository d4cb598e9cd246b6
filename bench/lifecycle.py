#!/usr/bin/env python
"""Benchmark (not a test) of lifecycle evaluation on PostgreSQL.

    DATABASE_URL=postgres://… .venv/bin/python bench/lifecycle.py [--chunk 100000]

On the database DATABASE_URL names (meant for 1M customers / 10M events / 1.5M orders made by
`seed_demo`; it refuses a database whose name lacks "bench" unless --force):

1. Empties the customers' stages and transitions, then evaluates the three built-in models
   (journey, value, aipl) in full: everyone enters a stage (3 rows + 3 transitions a customer).
2. Evaluates them again: the no-change re-run (0 rows written).
3. The "scan floor": one SQL statement aggregating, per customer, the events and orders the
   stage conditions read — measured in the same run.
4. `stage_model_simulate(value, {"dormant_days": 45})`.
5. Steady state: 10,000 paid orders for 10,000 customers (1%) through `crm.services.
   orders_ingest`, then `stage_models_evaluate(customer_ids=touched)` — the incremental path —
   all in a transaction that is rolled back, so the database is left as it was.
6. A profile: each stage condition alone (count over all customers), the re-run at other chunk
   sizes, and EXPLAIN (ANALYZE, BUFFERS) of the slowest chunk statement.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from _common import session_settings, sql, vacuum_stale_tables  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection, connections, transaction  # noqa: E402
from django.db.backends.signals import connection_created  # noqa: E402
from django.utils import timezone  # noqa: E402

from core import access, conditions  # noqa: E402
from crm.models import Customer  # noqa: E402
from crm.services import orders_ingest  # noqa: E402
from lifecycle import hooks, services  # noqa: E402
from lifecycle.models import StageModel  # noqa: E402

MODELS = ("journey", "value", "aipl")
WRITE_TABLES = ("lifecycle_customerstage", "lifecycle_stagetransition")
INBOUND = ("message_in", "moments_interaction", "link_clicked", "coupon_redeemed",
           "survey_answered")


# --- Measuring ------------------------------------------------------------------------------

HOOK_SECONDS = [0.0]
COMMIT_SECONDS = [0.0]
HOOKS_ON = [True]
_stage_entered = hooks.stage_entered


def _timed_stage_entered(entry) -> None:
    """The transition hooks (campaigns' SOP enrolment) timed apart from evaluation proper;
    `--hooks off` leaves them out."""
    started = time.perf_counter()
    try:
        if HOOKS_ON[0]:
            _stage_entered(entry)
    finally:
        HOOK_SECONDS[0] += time.perf_counter() - started


hooks.stage_entered = _timed_stage_entered


def _time_commits() -> None:
    """COMMIT is where PostgreSQL checks the deferred foreign keys of every row written."""
    wrapper = connections["default"]
    original = wrapper._commit

    def commit():
        started = time.perf_counter()
        try:
            return original()
        finally:
            COMMIT_SECONDS[0] += time.perf_counter() - started

    wrapper._commit = commit


class Recorder:
    """An execute wrapper keeping (seconds, sql, params) of every statement while `on`."""

    def __init__(self) -> None:
        self.on = False
        self.rows: list[tuple[float, str, object]] = []

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            if self.on:
                self.rows.append((time.perf_counter() - started, sql, params))

    @contextmanager
    def recording(self):
        self.rows, self.on = [], True
        try:
            yield self.rows
        finally:
            self.on = False


REDUNDANT_INDEXES = (
    # covered by unique (customer_id, model_id) / (model_id, stage_id, customer_id)
    "lifecycle_customerstage_customer_id_6831de24", "lifecycle_customerstage_model_id_fd5ac67c",
    # covered by (customer_id, at) / (model_id, at); actor is NULL for every rule transition
    "lifecycle_stagetransition_customer_id_4b4d6990", "lifecycle_stagetransition_model_id_5dd537ee",
    "lifecycle_stagetransition_actor_id_806e60e4",
)


def rows_written(tables=WRITE_TABLES) -> int:
    """Rows inserted + updated + deleted in `tables` so far, from the statistics (this backend
    flushes its pending counters when it goes idle after pg_stat_force_next_flush())."""
    sql("SELECT pg_stat_force_next_flush()")
    # (the other sessions of a full run flush theirs as they exit, just before)
    time.sleep(0.5)
    sql("SELECT pg_stat_clear_snapshot()")
    got = sql("SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) "
              "FROM pg_stat_user_tables WHERE relname = ANY(%s)", [list(tables)])
    return int(got[0][0])


@contextmanager
def indexes_dropped(names: tuple[str, ...]):
    """Drop these indexes for the duration (the scratch experiment), then build them again
    from their own definitions."""
    found = sql("SELECT indexname, indexdef FROM pg_indexes WHERE indexname = ANY(%s)",
                [list(names)])
    for index, _definition in found:
        sql(f"DROP INDEX {index}")
    try:
        yield [index for index, _definition in found]
    finally:
        for _index, definition in found:
            sql(definition)


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


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


def s(seconds: float) -> str:
    return f"{seconds:.2f}"


# --- The scan floor -------------------------------------------------------------------------

def floor_sql(now, *, groups: bool) -> tuple[str, list]:
    """One statement: per customer, the events and paid orders the three models' conditions
    read (inbound interactions and referrals since joining; paid orders since joining, in the
    last 180 days since joining, lifetime), summed up so that only one row travels."""
    inbound = ", ".join(f"'{t}'" for t in INBOUND)
    since_180 = now - timedelta(days=180)
    group_join = group_cols = ""
    if groups:
        group_cols = ", sum(g.ever_since_joined), sum(g.now)"
        group_join = (
            "LEFT JOIN (SELECT m.customer_id, "
            "count(*) FILTER (WHERE m.joined_at >= cj.joined_at) AS ever_since_joined, "
            "count(*) FILTER (WHERE m.left_at IS NULL) AS now "
            "FROM crm_groupmembership m JOIN crm_customer cj ON cj.id = m.customer_id "
            "GROUP BY m.customer_id) g ON g.customer_id = c.id ")
    statement = (
        "SELECT count(*), sum(e.inbound), sum(e.referrals), sum(o.since_joined), "
        f"sum(o.recent_since_joined), sum(o.lifetime){group_cols} "
        "FROM crm_customer c "
        "LEFT JOIN (SELECT ev.customer_id, "
        f"count(*) FILTER (WHERE ev.type IN ({inbound})) AS inbound, "
        "count(*) FILTER (WHERE ev.type = 'referral') AS referrals "
        "FROM crm_event ev JOIN crm_customer cj ON cj.id = ev.customer_id "
        f"WHERE ev.type IN ({inbound}, 'referral') AND ev.occurred_at >= cj.joined_at "
        "GROUP BY ev.customer_id) e ON e.customer_id = c.id "
        "LEFT JOIN (SELECT od.customer_id, "
        "count(*) FILTER (WHERE od.placed_at >= cj.joined_at) AS since_joined, "
        "count(*) FILTER (WHERE od.placed_at >= cj.joined_at AND od.placed_at >= %s) "
        "AS recent_since_joined, count(*) AS lifetime "
        "FROM crm_order od JOIN crm_customer cj ON cj.id = od.customer_id "
        "WHERE od.status = 'paid' GROUP BY od.customer_id) o ON o.customer_id = c.id "
        + group_join)
    return statement, [since_180]


def scan_floor(*, groups: bool, repeat: int = 3) -> float:
    statement, params = floor_sql(timezone.now(), groups=groups)
    times = [timed(sql, statement, params)[0] for _i in range(repeat)]
    return statistics.median(times)


def write_floor(models: list[StageModel]) -> float:
    """The "write floor" of a full placement: one INSERT … SELECT per table and model writing
    the rows a placement writes — a stage row and a transition per customer and model, into
    the same tables with the same indexes — with no evaluation at all; rolled back."""
    started = time.perf_counter()
    with transaction.atomic():
        for model in models:
            first = services._stages(model)[0]
            sql("INSERT INTO lifecycle_customerstage (customer_id, model_id, stage_id, "
                "entered_at, source, locked_until) SELECT id, %s, %s, now(), 'rule', NULL "
                "FROM crm_customer ORDER BY id", [model.pk, first.pk])
            sql("INSERT INTO lifecycle_stagetransition (customer_id, model_id, from_stage_id, "
                "to_stage_id, from_key, to_key, at, source, reason, actor_id, win_back, "
                "backward) SELECT id, %s, NULL, %s, '', %s, now(), 'rule', '', NULL, false, "
                "false FROM crm_customer ORDER BY id", [model.pk, first.pk, first.key])
        seconds = time.perf_counter() - started
        transaction.set_rollback(True)
    return seconds


# --- Evaluation -----------------------------------------------------------------------------

def evaluate_all(models: list[StageModel], recorder: Recorder, *, chunk: int,
                 customer_ids: list[int] | None = None, now=None) -> dict:
    """The models evaluated together, as the periodic task and the command do (one pass over
    the events for all of them); per model: its own statements plus its share of that pass."""
    before = rows_written()
    HOOK_SECONDS[0] = COMMIT_SECONDS[0] = 0.0
    with recorder.recording() as statements:
        seconds, results = timed(services.stage_models_evaluate,
                                 keys=[m.key for m in models], chunk_size=chunk,
                                 customer_ids=customer_ids, now=now)
    by_key = {r.model: r for r in results}
    out = {"total": seconds, "statements": list(statements), "hooks": HOOK_SECONDS[0],
           "commit": COMMIT_SECONDS[0],
           "models": [{"model": m, "s": by_key[m.key].duration_ms / 1000,
                       "changed": by_key[m.key].changed} for m in models]}
    out["written"] = rows_written() - before
    return out


def condition_profile(models: list[StageModel]) -> list[list]:
    """Each stage's entry condition alone: how long counting its customers takes."""
    rows = []
    now = timezone.now()
    for model in models:
        for stage in services._stages(model):
            if stage.condition is None:
                continue
            q = conditions.compile_condition(stage.condition, now=now,
                                             thresholds=model.thresholds)
            seconds, n = timed(Customer.objects.filter(q).count)
            rows.append([model.key, stage.key, f"{n:,}", s(seconds)])
    return rows


def steady_state(models: list[StageModel], recorder: Recorder, *, touched: int, seed: int,
                 chunk: int) -> dict:
    """Orders for `touched` random customers, then the incremental evaluation; rolled back."""
    rng = random.Random(seed)
    admin = get_user_model().objects.filter(is_superuser=True).first() or next(
        u for u in get_user_model().objects.all() if access.user_role(u) == access.ADMIN)
    top = Customer.objects.order_by("-pk").values_list("pk", flat=True).first()
    picked = sorted(rng.sample(range(1, top + 1), min(touched * 2, top)))
    customers = list(Customer.objects.filter(pk__in=picked).values_list("pk", "external_id")
                     [:touched])
    stamp = timezone.now()
    orders = [{"customer": ext, "source": "bench", "external_id": f"bench-{stamp:%s}-{pk}",
               "amount": str(Decimal(rng.randint(5000, 80000)) / 100), "status": "paid",
               "placed_at": (stamp - timedelta(minutes=rng.randint(0, 600))).isoformat(),
               "items": [{"sku": "B1", "name": "bench", "category": "护肤", "quantity": 1,
                          "price": "99.00"}]}
              for pk, ext in customers]
    out = {}
    with transaction.atomic():
        ingest_s = 0.0
        for start in range(0, len(orders), 1000):
            seconds, report = timed(orders_ingest, items=orders[start:start + 1000], actor=admin)
            ingest_s += seconds
            assert report.accepted == len(orders[start:start + 1000]), report
        ids = [pk for pk, _ext in customers]
        out["ingest"] = ingest_s
        out["incremental"] = evaluate_all(models, recorder, chunk=chunk, customer_ids=ids)
        out["touched"] = len(ids)
        transaction.set_rollback(True)
    return out


def explain(statement: str, params, models: list[StageModel], at) -> str:
    """EXPLAIN a chunk statement of a run, in a transaction that first builds the run's shared
    per-customer table again (a temporary table, gone with the run's transaction)."""
    with transaction.atomic():
        services.heavy_statements()
        services._features([(m, services._stages(m), m.thresholds) for m in models], now=at,
                           customer_ids=None)
        plan = sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
        transaction.set_rollback(True)
    return "\n".join(line for (line,) in plan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=services.CHUNK,
                        help="chunk_size for stage_model_evaluate (default: the product's)")
    parser.add_argument("--other-chunks", default="1000000",
                        help="chunk sizes to time the no-change re-run with as well ('' = none)")
    parser.add_argument("--touched", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--jit", choices=["server", "off"], default="server",
                        help="'off': SET jit = off on the bench's connections (the proposal)")
    parser.add_argument("--work-mem", default="",
                        help="SET work_mem on the bench's connections, e.g. 64MB (default: the "
                             "server's)")
    parser.add_argument("--fk-checks", choices=["on", "off"], default="on",
                        help="'off': session_replication_role = replica, i.e. no foreign-key "
                             "checks at all (to measure what they cost; not a proposal as is)")
    parser.add_argument("--drop-redundant-indexes", action="store_true",
                        help="drop the indexes other indexes cover for the run, then rebuild "
                             "them (a scratch experiment on the bench database)")
    parser.add_argument("--hooks", choices=["on", "off"], default="on",
                        help="'off': do not call the transition hooks (campaigns' SOP "
                             "enrolment), to time evaluation proper")
    parser.add_argument("--sessions", type=int, default=None,
                        help="LIFECYCLE_EVALUATION_SESSIONS for the runs (default: the setting, 1): "
                             "database sessions a full run spreads over")
    parser.add_argument("--force", action="store_true",
                        help="Run on a database whose name lacks 'bench'.")
    args = parser.parse_args()
    with ExitStack() as stack:
        run(args, stack)


def run(args, stack: ExitStack) -> None:
    if connection.vendor != "postgresql":
        sys.exit("bench/lifecycle.py measures PostgreSQL; set DATABASE_URL")
    name = connection.settings_dict["NAME"]
    if "bench" not in name and not args.force:
        sys.exit(f"refusing to empty the stages of database {name!r} (pass --force)")
    started = time.perf_counter()
    _time_commits()
    session_settings(sql, jit=args.jit, work_mem=args.work_mem, fk_checks=args.fk_checks)
    HOOKS_ON[0] = args.hooks == "on"
    if args.drop_redundant_indexes:
        dropped = stack.enter_context(indexes_dropped(REDUNDANT_INDEXES))
        print(f"(dropped for this run, rebuilt at its end: {', '.join(dropped)})")
    if args.sessions is not None:
        settings.LIFECYCLE_EVALUATION_SESSIONS = args.sessions
    vacuumed = vacuum_stale_tables(sql)
    if vacuumed:
        print(f"(vacuumed first, as autovacuum would have: {', '.join(vacuumed)})")
    recorder = Recorder()
    connection.execute_wrappers.append(recorder)

    def _record(sender, connection, **kwargs) -> None:
        # The other sessions of a full run (their threads' own connections) are recorded too.
        if recorder not in connection.execute_wrappers:
            connection.execute_wrappers.append(recorder)

    connection_created.connect(_record, weak=False)

    counts = {t: sql(f"SELECT count(*) FROM {t}")[0][0]
              for t in ("crm_customer", "crm_event", "crm_order", "crm_groupmembership")}
    version = sql("SHOW server_version")[0][0]
    print(f"# bench/lifecycle.py — database {name}, PostgreSQL {version}, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, chunk {args.chunk:,}, "
          f"jit {sql('SHOW jit')[0][0]}, work_mem {sql('SHOW work_mem')[0][0]}, "
          f"hooks {args.hooks}, fk checks {args.fk_checks}, "
          f"sessions {settings.LIFECYCLE_EVALUATION_SESSIONS}")
    print("data: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))

    models = list(StageModel.objects.filter(key__in=MODELS).order_by("order", "key"))
    StageModel.objects.filter(key__in=MODELS).update(active=True, last_evaluated_at=None)
    # TRUNCATE leaves the tables as a fresh install has them: never analyzed (reltuples -1),
    # so the planner sizes them from their files as they grow. (ANALYZE of the empty tables
    # would instead tell it "0 rows" for the whole first run.)
    sql("TRUNCATE lifecycle_customerstage, lifecycle_stagetransition")
    write_s = write_floor(models)
    sql("TRUNCATE lifecycle_customerstage, lifecycle_stagetransition")

    # Full run and re-run at the same moment: the re-run then has truly nothing to change
    # (with the clock running on, a few customers cross the 30- or 90-day line meanwhile).
    at = timezone.now()
    floor_before = scan_floor(groups=False)
    full = evaluate_all(models, recorder, chunk=args.chunk, now=at)
    sql("VACUUM ANALYZE lifecycle_customerstage, lifecycle_stagetransition")  # as autovacuum
    again = evaluate_all(models, recorder, chunk=args.chunk, now=at)
    floor_after = scan_floor(groups=False)
    floor_groups = scan_floor(groups=True)
    floor = min(floor_before, floor_after)
    sim_s, sim = timed(services.stage_model_simulate,
                       model=StageModel.objects.get(key="value"), thresholds={"dormant_days": 45})
    steady = steady_state(models, recorder, touched=args.touched, seed=args.seed,
                          chunk=args.chunk)

    rows = []
    for a, b, c in zip(full["models"], again["models"], steady["incremental"]["models"],
                       strict=True):
        rows.append([a["model"].key, f"{a['changed']:,}", s(a["s"]), b["changed"], s(b["s"]),
                     f"{c['changed']:,}", s(c["s"])])
    rows.append(["all three", f"{sum(m['changed'] for m in full['models']):,}",
                 s(full["total"]), sum(m["changed"] for m in again["models"]),
                 s(again["total"]), f"{sum(m['changed'] for m in steady['incremental']['models']):,}",
                 s(steady["incremental"]["total"])])
    table(["model", "full: moved", "full s", "re-run: moved", "re-run s",
           f"incremental ({steady['touched']:,}): moved", "incremental s"], rows,
          "Evaluation of the built-in models")
    target_full = min(30.0, 3 * floor)
    table(["figure", "value", "target", "met"], [
        ["scan floor (events + orders, 1 statement) s",
         f"{s(floor)} (before {s(floor_before)}, after {s(floor_after)})", "-", "-"],
        ["scan floor incl. group memberships s", s(floor_groups), "-", "-"],
        ["full evaluation s", s(full["total"]), f"≤ 30 and ≤ 3 × floor = {s(3 * floor)}",
         "yes" if full["total"] <= target_full else "NO"],
        ["full / floor", f"{full['total'] / floor:.1f}×", "≤ 3×",
         "yes" if full["total"] <= 3 * floor else "NO"],
        ["write floor: the same 6 M rows by bare INSERT … SELECT s", s(write_s), "-", "-"],
        ["full / (scan floor + write floor)", f"{full['total'] / (floor + write_s):.1f}×", "-",
         "-"],
        ["rows written, full (stages + transitions)", f"{full['written']:,}", "-", "-"],
        ["re-run s", s(again["total"]), f"≤ full / 3 = {s(full['total'] / 3)}",
         "yes" if again["total"] <= full["total"] / 3 else "NO"],
        ["rows written, re-run", again["written"], "0", "yes" if again["written"] == 0 else "NO"],
        ["simulation value {dormant_days: 45} s", s(sim_s), "≤ 10",
         "yes" if sim_s <= 10 else "NO"],
        [f"orders_ingest of {steady['touched']:,} orders s", s(steady["ingest"]), "-", "-"],
        [f"incremental evaluation of {steady['touched']:,} customers s",
         s(steady["incremental"]["total"]), "-", "-"],
    ], "Targets")
    moved = sum(m["count"] for m in sim["moves"])
    print(f"simulation: {moved:,} customers would move; "
          + ", ".join(f"{m['from']}→{m['to']} {m['count']:,}" for m in sim["moves"][:4]))

    # Where the time goes: the shared per-customer table, the chunk statements, the hooks.
    rows = []
    for label, run in (("full", full), ("re-run", again),
                       ("incremental", steady["incremental"])):
        chunks = [x for x in run["statements"] if x[1].startswith("WITH ch AS")]
        shared = [x for x in run["statements"]
                  if x[1].startswith('CREATE TEMPORARY TABLE "lifecycle_features"')]
        # A full run over several sessions overlaps their statements: no "rest" then.
        spread = label != "incremental" and settings.LIFECYCLE_EVALUATION_SESSIONS > 1
        rows.append([label, s(sum(x[0] for x in shared)), len(chunks),
                     s(sum(x[0] for x in chunks)), s(max((x[0] for x in chunks), default=0)),
                     s(run["hooks"]), s(run["commit"]),
                     "-" if spread else
                     s(run["total"] - sum(x[0] for x in chunks + shared) - run["hooks"]
                       - run["commit"])])
    table(["run", "per-customer counts s (all sessions)", "chunk statements",
           "sum s (all sessions)", "slowest chunk s", "transition hooks s (SQL + Python)",
           "COMMIT s (first session)", "rest s"], rows,
          "Where the time goes (the three models together)")
    heavy: dict[str, list[float]] = {}
    for seconds, statement, _params in full["statements"] + steady["incremental"]["statements"]:
        if not statement.startswith("WITH ch AS"):
            heavy.setdefault(statement[:90], []).append(seconds)
    table(["statement (first 90 characters)", "times", "sum s"],
          [[k, len(v), s(sum(v))] for k, v in sorted(heavy.items(), key=lambda kv: -sum(kv[1]))
           [:6]], "Heaviest other statements (full run and incremental)")

    if not args.no_profile:
        table(["model", "stage", "customers", "count s"], condition_profile(models),
              "Each stage condition alone (COUNT over all customers)")
        other = [int(x) for x in args.other_chunks.split(",") if x.strip()]
        rows = [[f"{args.chunk:,}", s(again["total"]), sum(m["changed"] for m in again["models"])]]
        for size in other:
            run = evaluate_all(models, recorder, chunk=size, now=at)
            rows.append([f"{size:,}", s(run["total"]),
                         sum(m["changed"] for m in run["models"])])
        table(["chunk_size", "re-run s (all three)", "moved"], rows,
              "Re-run by chunk size")
        chunk_s, statement, params = max(
            (x for x in again["statements"] if x[1].startswith("WITH ch AS")),
            key=lambda x: x[0])
        print(f"\n## EXPLAIN (ANALYZE, BUFFERS) of the slowest re-run chunk statement: "
              f"{chunk_s:.2f} s")
        print(explain(statement, params, models, at))
    print(f"\nbench/lifecycle.py done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
