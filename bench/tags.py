#!/usr/bin/env python
"""Benchmark (not a test) of tag rules, segment previews and tag indexes on PostgreSQL.

    DATABASE_URL=postgres://… .venv/bin/python bench/tags.py [--rules 20] [--previews 40]

What it does, on the database DATABASE_URL names (meant for 1M customers / 10M events made by
`seed_demo`; it refuses a database whose name lacks "bench" unless --force):

1. Empties the tag tables (customer tags, tag history, rule runs) and (re)creates the bench tag
   rules: the 4 built-in value-layer rules plus 16 of mixed kinds (half `sync`, half `add`).
2. Runs every rule once from scratch, then again (the no-change re-run: 0 rows written), with
   the `exists()` pre-checks of `tagging.services._add` / `_remove` as they are — then empties
   the tags again and repeats both runs with the pre-checks bypassed (monkeypatched here).
3. Builds the segment index and times `tagging.selectors.segment_preview` from it, then in SQL
   (`exact`), over random 3-condition combinations (a tag leaf,
   an attribute or customer-field leaf, an event leaf): p50 / p95.
4. Compares the join table `tagging_customertag` (EXISTS on (tag, customer)) with a GIN index
   on a `tag_ids int[]` copy (`bench_customer_tags`): A AND B, A OR B, a rare tag, sizes.
5. EXPLAIN (ANALYZE, BUFFERS) of the slowest preview and of the slowest rule's slowest
   statement.

Everything it writes is tag data (and the bench_customer_tags copy); customers, events and
orders are left alone.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from contextlib import ExitStack, contextmanager, nullcontext
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
from django.db import OperationalError, connection, connections, transaction  # noqa: E402
from django.db.models import QuerySet  # noqa: E402
from django.utils import timezone  # noqa: E402

from core import access  # noqa: E402
from tagging import segment_index, services  # noqa: E402
from tagging.models import (  # noqa: E402
    CustomerTag,
    Tag,
    TagGroup,
    TagRule,
)
from tagging.selectors import segment_preview  # noqa: E402

BENCH_GROUP = "bench"
INBOUND = ["message_in", "moments_interaction", "link_clicked", "coupon_redeemed",
           "survey_answered"]
WRITE_TABLES = ("tagging_customertag", "tagging_tagchange")
COMMIT_SECONDS = [0.0]


# --- Measuring ------------------------------------------------------------------------------

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


REDUNDANT_INDEXES = (
    # covered by unique (customer_id, tag_id), (tag_id, customer_id), (rule_id, customer_id)
    "tagging_customertag_customer_id_b2323298", "tagging_customertag_tag_id_055a73a9",
    "tagging_customertag_rule_id_ba53263f",
    # NULL for every rule's tag / change
    "tagging_customertag_added_by_id_4eea3850", "tagging_tagchange_actor_id_d8a27ff0",
    # covered by (customer_id, at)
    "tagging_tagchange_customer_id_f4422f05",
)


def rows_written(tables=WRITE_TABLES) -> int:
    """Rows inserted + updated + deleted in `tables` so far, from the statistics (this backend
    flushes its pending counters when it goes idle after pg_stat_force_next_flush())."""
    sql("SELECT pg_stat_force_next_flush()")
    time.sleep(0.05)
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


# --- Rules ----------------------------------------------------------------------------------

def bench_rules() -> list[tuple[str, str, object]]:
    """(tag key, mode, condition) of the 16 bench rules; `@key` stands for a tag id."""
    return [
        ("skin_sensitive", "sync",
         {"field": "attributes.skin_type", "op": "eq", "value": "敏感肌"}),
        ("paid_channels", "add",
         {"field": "channel", "op": "in", "value": ["live", "douyin", "xiaohongshu"]}),
        ("tier1_city", "sync", {"field": "city", "op": "in", "value": ["上海", "北京", "深圳", "广州"]}),
        ("repeat_buyer", "add", {"field": "orders_count", "op": "gte", "value": 3}),
        ("big_spender", "sync", {"field": "total_spent", "op": "gte", "value": 1000}),
        ("chatty_14d", "sync",
         {"field": "event", "type": "message_in", "op": "count_gte", "value": 3,
          "within_days": 14}),
        ("clicker_30d", "add",
         {"field": "event", "type": "link_clicked", "op": "count_gte", "value": 1,
          "within_days": 30}),
        ("gift_box_buyer", "add",
         {"field": "order", "op": "count_gte", "value": 1, "category": "礼盒"}),
        ("in_group", "add", {"field": "group", "op": "in", "value": []}),
        ("vip_or_active", "sync",
         {"field": "tag", "op": "any", "value": ["@high_value", "@active"]}),
        ("buyer_not_at_risk", "add",
         {"all": [{"field": "tag", "op": "none", "value": ["@at_risk"]},
                  {"field": "orders_count", "op": "gte", "value": 1}]}),
        ("female_not_store", "add",
         {"all": [{"field": "gender", "op": "eq", "value": "female"},
                  {"not": {"field": "channel", "op": "eq", "value": "store-qr"}}]}),
        ("promo_responsive", "add",
         {"any": [{"field": "event", "type": "coupon_redeemed", "op": "count_gte", "value": 2,
                   "within_days": 90},
                  {"field": "order", "op": "sum_gte", "value": 500, "within_days": 90}]}),
        ("sensitive_tier1", "sync",
         {"all": [{"field": "tag", "op": "all", "value": ["@skin_sensitive", "@tier1_city"]},
                  {"not": {"field": "tag", "op": "any", "value": ["@at_risk"]}}]}),
        ("young_engaged_or_repeat", "add",
         {"any": [{"all": [{"field": "attributes.age_band", "op": "in",
                            "value": ["18-24", "25-29"]},
                           {"field": "event", "type": "moments_interaction", "op": "count_gte",
                            "value": 2, "within_days": 30}]},
                  {"field": "order", "op": "count_gte", "value": 2, "within_days": 60}]}),
        ("reachable_recent", "add",
         {"all": [{"field": "opted_out", "op": "eq", "value": False},
                  {"field": "status", "op": "eq", "value": "active"},
                  {"not": {"any": [
                      {"field": "last_active_at", "op": "older_than_days", "value": 7},
                      {"field": "last_active_at", "op": "is_null", "value": True}]}}]}),
    ]


def resolve_refs(node, ids: dict[str, int]):
    if isinstance(node, dict):
        return {k: resolve_refs(v, ids) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_refs(v, ids) for v in node]
    if isinstance(node, str) and node.startswith("@"):
        return ids[node[1:]]
    return node


def reset_tags() -> None:
    """Empty what rules write; TRUNCATE is what makes this quick at millions of rows."""
    sql("TRUNCATE tagging_customertag, tagging_tagchange, tagging_tagrulerun")
    TagRule.objects.update(last_run_at=None)


def setup_rules(n_rules: int) -> list[TagRule]:
    reset_tags()
    TagGroup.objects.filter(key=BENCH_GROUP).delete()
    group = TagGroup.objects.create(key=BENCH_GROUP, name="bench", exclusive=False, order=99,
                                    description="Made by bench/tags.py")
    layers = list(TagRule.objects.filter(tag__group__key="value_layer")
                  .select_related("tag").order_by("priority", "pk"))
    TagRule.objects.exclude(pk__in=[r.pk for r in layers]).update(active=False)
    ids = {r.tag.key: r.tag_id for r in layers}
    rules = list(layers)
    for order, (key, mode, condition) in enumerate(bench_rules()[:max(0, n_rules - len(layers))]):
        tag = Tag.objects.create(group=group, name=key, key=key, order=order)
        ids[key] = tag.pk
        rules.append(TagRule.objects.create(
            name=f"bench: {key}", tag=tag, condition=resolve_refs(condition, ids), mode=mode,
            priority=100 + order, interval_minutes=60, active=True))
    return rules


@contextmanager
def prechecks_bypassed():
    """Make the pre-checks in `tagging.services._add` / `_remove` answer "there is something to
    write", so the writing statement always runs: `_nonempty` (a COUNT, since 6a4027d) or, in
    older code, `QuerySet.exists()` called from `_add` / `_remove`; every other `exists()` is
    left alone."""
    original = QuerySet.exists
    original_nonempty = getattr(services, "_nonempty", None)

    def exists(self):
        caller = sys._getframe(1)
        if (caller.f_globals.get("__name__") == services.__name__
                and caller.f_code.co_name in ("_add", "_remove")):
            return True
        return original(self)

    QuerySet.exists = exists
    if original_nonempty is not None:
        services._nonempty = lambda queryset: True
    try:
        yield
    finally:
        QuerySet.exists = original
        if original_nonempty is not None:
            services._nonempty = original_nonempty


def run_all(rules: list[TagRule], recorder: Recorder) -> dict:
    """Every rule once, in priority order, as one batch — what `tag_rules_run_due(force=True)`
    does: the rules' per-customer counts first (one pass over events and orders), then each
    rule in its own transaction. With TAG_RULE_SESSIONS > 1 through the service's own spread
    (`_run_batch`): the rules' times are then their run records', without their statements."""
    before = rows_written()
    per_rule = []
    now = timezone.now()
    started_all = time.perf_counter()
    if settings.TAG_RULE_SESSIONS > 1:
        runs = {run.rule_id: run for run in services._run_batch(rules, now=now,
                                                                customer_ids=None)}
        total = time.perf_counter() - started_all
        for rule in rules:
            run = runs.get(rule.pk)
            per_rule.append({"rule": rule, "s": run.duration_ms / 1000 if run else 0.0,
                             "timeout": run is None, "matched": run.matched if run else 0,
                             "added": run.added if run else 0,
                             "removed": run.removed if run else 0, "statements": [],
                             "commit": 0.0})
        return {"total": total, "shared": 0.0, "rules": per_rule,
                "written": rows_written() - before, "timeouts": sum(r["timeout"]
                                                                   for r in per_rule)}
    with ExitStack() as batch:
        with recorder.recording():
            features = batch.enter_context(
                services._batch_features(rules, now=now, customer_ids=None))
        shared = time.perf_counter() - started_all
        for rule in rules:
            COMMIT_SECONDS[0] = 0.0
            with recorder.recording() as statements:
                started = time.perf_counter()
                try:
                    run = services.tag_rule_run(rule=rule, now=now, features=features)
                    timeout = False
                except OperationalError as exc:   # statement_timeout: the run is rolled back
                    if "statement timeout" not in str(exc):
                        raise
                    run, timeout = None, True
                seconds = time.perf_counter() - started
            per_rule.append({"rule": rule, "s": seconds, "timeout": timeout,
                             "matched": run.matched if run else 0,
                             "added": run.added if run else 0,
                             "removed": run.removed if run else 0,
                             "statements": list(statements), "commit": COMMIT_SECONDS[0]})
    total = time.perf_counter() - started_all
    return {"total": total, "shared": shared, "rules": per_rule,
            "written": rows_written() - before, "timeouts": sum(r["timeout"] for r in per_rule)}


# --- Segment previews -----------------------------------------------------------------------

def random_condition(rng: random.Random, tag_ids: list[int]) -> dict:
    n = rng.choice([1, 1, 2])
    picked = rng.sample(tag_ids, n)
    tag_leaf = {"field": "tag", "op": rng.choice(["any", "any", "all", "none"]), "value": picked}
    field_leaf = rng.choice([
        lambda: {"field": "attributes.skin_type", "op": "eq",
                 "value": rng.choice(["干性", "油性", "混合性", "敏感肌", "中性"])},
        lambda: {"field": "attributes.age_band", "op": "in",
                 "value": rng.sample(["18-24", "25-29", "30-34", "35-39", "40-49", "50+"], 2)},
        lambda: {"field": "city", "op": "in",
                 "value": rng.sample(["上海", "北京", "杭州", "成都", "广州", "深圳", "南京"],
                                     rng.randint(1, 3))},
        lambda: {"field": "channel", "op": "eq",
                 "value": rng.choice(["store-qr", "wecom-qr", "live", "douyin", "xiaohongshu"])},
        lambda: {"field": "orders_count", "op": "gte", "value": rng.randint(1, 5)},
        lambda: {"field": "total_spent", "op": "gte", "value": rng.choice([200, 500, 1000, 3000])},
        lambda: {"field": "gender", "op": "eq", "value": rng.choice(["female", "male"])},
        lambda: {"field": "last_active_at", "op": "within_days",
                 "value": rng.choice([7, 30, 90])},
        lambda: {"field": "joined_at", "op": "older_than_days",
                 "value": rng.choice([30, 90, 180])},
    ])()
    event_leaf = {"field": "event", "type": rng.choice(INBOUND + ["message_out"]),
                  "op": "count_gte", "value": rng.choice([1, 1, 2, 3, 5])}
    window = rng.choice([7, 14, 30, 90, None, "since_joined"])
    if window == "since_joined":
        event_leaf["since_joined"] = True
    elif window is not None:
        event_leaf["within_days"] = window
    leaves = [tag_leaf, field_leaf, event_leaf]
    rng.shuffle(leaves)
    return {"any" if rng.random() < 0.2 else "all": leaves}


def previews(admin, conditions: list[dict], recorder: Recorder, *, exact: bool) -> list[dict]:
    out = []
    for condition in conditions:
        with recorder.recording() as statements:
            seconds, result = timed(segment_preview, user=admin, condition=condition,
                                    exact=exact)
        out.append({"condition": condition, "s": seconds, "count": result["count"],
                    "source": result["source"], "statements": list(statements)})
    return out


def same_at_one_moment(conditions: list[dict]) -> int:
    """How many conditions the index counts as SQL does, both at one `now` (previews a minute
    apart differ by the customers who crossed a window's edge meanwhile)."""
    from core.conditions import compile_condition
    from crm.models import Customer

    snapshot = segment_index.current()
    same = 0
    for condition in conditions:
        now = timezone.now()
        found = segment_index.evaluate(condition, snapshot, now=now)
        with transaction.atomic():
            services.heavy_statements()     # as the preview's own SQL runs
            counted = Customer.objects.filter(compile_condition(condition, now=now)).count()
        same += found is not None and int(found.sum()) == counted
    return same


def index_previews(admin, conditions: list[dict], recorder: Recorder) -> None:
    """Build the segment index, then preview from it: the first preview of a fresh process
    (it loads the customers' and tags' parts), the conditions as they come (each event type
    and the attributes loaded the first time a condition reads them), and the same again."""
    seconds, index = timed(segment_index.build)
    print(f"\nSegment index built in {seconds:.1f} s: {index.customers:,} customers, "
          f"{index.size_bytes / 1e6:.1f} MB stored")
    segment_index.forget()
    first, _r = timed(segment_preview, user=admin, condition=conditions[0])
    cold = previews(admin, conditions, recorder, exact=False)
    warm = previews(admin, conditions, recorder, exact=False)
    rows = [["first preview of a process", 1, ms(first), "", ms(first), "index"]]
    for label, results in (("as they come (parts loaded on first use)", cold),
                           ("again (parts loaded)", warm)):
        times = [r["s"] for r in results]
        sources = {r["source"] for r in results}
        rows.append([label, len(times), ms(pct(times, 0.5)), ms(pct(times, 0.95)),
                     ms(max(times)), "/".join(sorted(sources))])
    table(["from the segment index", "previews", "p50 ms", "p95 ms", "max ms", "source"], rows,
          "Segment preview from the segment index, 3-condition combinations "
          "(target p95 ≤ 200 ms)")


# --- Join table vs GIN ----------------------------------------------------------------------

def best_of(statement: str, params=None, repeat: int = 5) -> tuple[float, object]:
    sql(statement, params)   # warm
    times, result = [], None
    for _i in range(repeat):
        seconds, got = timed(sql, statement, params)
        times.append(seconds)
        result = got[0][0]
    return statistics.median(times), result


def gin_compare() -> None:
    built, _rows = timed(sql, """
        DROP TABLE IF EXISTS bench_customer_tags;
        CREATE TABLE bench_customer_tags AS
            SELECT customer_id, array_agg(tag_id::integer ORDER BY tag_id) AS tag_ids
            FROM tagging_customertag GROUP BY customer_id;
        ALTER TABLE bench_customer_tags ADD PRIMARY KEY (customer_id);
    """)
    gin_built, _rows = timed(sql, "CREATE INDEX bench_customer_tags_gin ON bench_customer_tags "
                                  "USING gin (tag_ids)")
    sql("VACUUM ANALYZE bench_customer_tags")
    held = sql("SELECT t.id, t.name, count(*) FROM tagging_customertag ct "
               "JOIN tagging_tag t ON t.id = ct.tag_id GROUP BY t.id, t.name ORDER BY 3 DESC")
    by_count = [(int(i), name, int(n)) for i, name, n in held]
    common_a, common_b = by_count[0], by_count[1]
    mid = by_count[len(by_count) // 2]
    rare = by_count[-1]
    print(f"\nTags compared: common A={common_a}, common B={common_b}, mid={mid}, rare={rare}")

    def exists(tag_ids: list[int]) -> str:
        return ("EXISTS (SELECT 1 FROM tagging_customertag t WHERE t.customer_id = c.id "
                f"AND t.tag_id IN ({', '.join(map(str, tag_ids))}))")

    def arr(tag_ids: list[int]) -> str:
        return f"ARRAY[{', '.join(map(str, tag_ids))}]::integer[]"

    cases = [
        ("A AND B (common, common)", [common_a[0], common_b[0]], "and"),
        ("A AND B (common, mid)", [common_a[0], mid[0]], "and"),
        ("A AND rare", [common_a[0], rare[0]], "and"),
        ("A OR B (common, common)", [common_a[0], common_b[0]], "or"),
        ("A OR rare", [common_a[0], rare[0]], "or"),
        ("rare tag alone", [rare[0]], "and"),
        ("A AND B AND city=上海", [common_a[0], common_b[0]], "and+city"),
    ]
    rows = []
    for label, tags, kind in cases:
        city = " AND c.city = '上海'" if kind == "and+city" else ""
        if kind.startswith("and"):
            join_exists = ("SELECT count(*) FROM crm_customer c WHERE "
                           + " AND ".join(exists([t]) for t in tags) + city)
            join_group = ("SELECT count(*) FROM (SELECT customer_id FROM tagging_customertag "
                          f"WHERE tag_id IN ({', '.join(map(str, tags))}) GROUP BY customer_id "
                          f"HAVING count(*) = {len(tags)}) s"
                          + (" JOIN crm_customer c ON c.id = s.customer_id "
                             "WHERE c.city = '上海'" if city else ""))
            gin = f"tag_ids @> {arr(tags)}"
        else:
            join_exists = f"SELECT count(*) FROM crm_customer c WHERE {exists(tags)}"
            join_group = ("SELECT count(DISTINCT customer_id) FROM tagging_customertag "
                          f"WHERE tag_id IN ({', '.join(map(str, tags))})")
            gin = f"tag_ids && {arr(tags)}"
        gin_sql = (f"SELECT count(*) FROM bench_customer_tags WHERE {gin}" if not city else
                   "SELECT count(*) FROM bench_customer_tags b JOIN crm_customer c "
                   f"ON c.id = b.customer_id WHERE {gin}{city}")
        s_exists, n_exists = best_of(join_exists)
        s_group, n_group = best_of(join_group)
        s_gin, n_gin = best_of(gin_sql)
        assert n_exists == n_group == n_gin, (label, n_exists, n_group, n_gin)
        rows.append([label, n_exists, ms(s_exists), ms(s_group), ms(s_gin),
                     "GIN" if s_gin < min(s_exists, s_group) else "join table"])
    table(["count customers with", "customers", "join EXISTS ms", "join GROUP BY ms",
           "GIN @>/&& ms", "faster"], rows, "Join table (tag, customer) vs GIN on int[]")

    sizes = sql("""
        SELECT c.relname, pg_relation_size(c.oid)
        FROM pg_class c WHERE c.relname IN ('tagging_customertag', 'tagging_ct_tag_customer',
            'tagging_one_tag_once', 'tagging_customertag_pkey', 'tagging_ct_rule',
            'tagging_one_tag_per_exclusive_group', 'bench_customer_tags',
            'bench_customer_tags_gin', 'bench_customer_tags_pkey')
        ORDER BY 1""")
    table(["relation", "size MB"], [[name, f"{n / 2**20:.1f}"] for name, n in sizes],
          "Sizes")
    print(f"bench_customer_tags built in {built:.1f} s, GIN index in {gin_built:.1f} s")


# --- EXPLAIN --------------------------------------------------------------------------------

def explain(statement: str, params) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) in a transaction that is rolled back (it may write)."""
    with transaction.atomic():
        plan = sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
        transaction.set_rollback(True)
    return "\n".join(line for (line,) in plan)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def rule_ms(run: dict) -> str:
    return f"TIMEOUT ({run['s']:.0f} s)" if run["timeout"] else ms(run["s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=20)
    parser.add_argument("--previews", type=int, default=30)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--prechecks", choices=["both", "as-is", "bypassed"], default="as-is",
                        help="the pre-checks of _add/_remove: run the rules with them "
                             "as they are, bypassed, or both (twice the time)")
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
    parser.add_argument("--no-gin", action="store_true", help="skip the GIN comparison")
    parser.add_argument("--sessions", type=int, default=None,
                        help="TAG_RULE_SESSIONS for the rule runs (default: the setting)")
    parser.add_argument("--skip-rules", action="store_true",
                        help="keep the tags of an earlier run and only measure the previews")
    parser.add_argument("--rule-timeout", type=int, default=120,
                        help="statement_timeout (s) while rules run; a rule that hits it is "
                             "reported as TIMEOUT and rolled back")
    parser.add_argument("--force", action="store_true",
                        help="Run on a database whose name lacks 'bench'.")
    args = parser.parse_args()
    with ExitStack() as stack:
        run(args, stack)


def rule_runs(args, *, rules: list[TagRule], recorder: Recorder) -> tuple[list, dict]:
    # After TRUNCATE the tag tables are as a fresh install has them: never analyzed, so the
    # planner sizes them from their files as they grow.
    variants = {"both": ["as-is", "bypassed"], "as-is": ["as-is"],
                "bypassed": ["bypassed"]}[args.prechecks]
    runs: dict[str, tuple[dict, dict]] = {}
    tags_held = None
    for variant in variants:
        reset_tags()
        sql(f"SET statement_timeout = '{args.rule_timeout}s'")
        with prechecks_bypassed() if variant == "bypassed" else nullcontext():
            first = run_all(rules, recorder)
            sql("ANALYZE tagging_customertag")   # what autovacuum does after a load this size
            again = run_all(rules, recorder)
        sql("SET statement_timeout = 0")
        runs[variant] = (first, again)
        # (The variants run minutes apart: a customer or two may cross a 14- or 30-day line.)
        tags_held = CustomerTag.objects.count()
    sql("VACUUM ANALYZE tagging_customertag, tagging_tagchange")
    first, again = runs[variants[0]]

    rows = []
    for i, rule in enumerate(rules):
        a, b = first["rules"][i], again["rules"][i]
        sql_s = sum(x[0] for x in a["statements"])
        row = [rule.pk, rule.name[7:31] if rule.name.startswith("bench: ") else rule.name[:24],
               rule.mode, f"{a['matched']:,}", f"{a['added']:,}", rule_ms(a), ms(sql_s),
               ms(a["commit"]), rule_ms(b), b["added"] + b["removed"]]
        for variant in variants[1:]:
            row += [rule_ms(runs[variant][0]["rules"][i]), rule_ms(runs[variant][1]["rules"][i])]
        rows.append(row)
    headers = ["id", "rule", "mode", "matched", "added", "1st ms", "of which SQL",
               "of which COMMIT", "re-run ms", "re-run writes"]
    for variant in variants[1:]:
        headers += [f"1st ms ({variant})", f"re-run ms ({variant})"]
    table(headers, rows, f"Tag rules ({len(rules)}), pre-checks {variants[0]}; customer tags "
                         f"held after the run: {tags_held:,}")
    summary = []
    for variant in variants:
        a, b = runs[variant]
        summary.append([f"pre-checks {variant}", f"{a['total']:.1f}", f"{a['shared']:.1f}",
                        f"{sum(r['commit'] for r in a['rules']):.1f}", f"{a['written']:,}",
                        a["timeouts"], f"{b['total']:.1f}", b["written"], b["timeouts"]])
    table(["variant", "all rules 1st run s", "of which shared counts s", "of which COMMIT s", "rows written 1st",
           "rules timed out", "re-run s", "rows written re-run", "re-run timed out"], summary,
          "All rules (target: 1st run ≤ 60 s; re-run writes 0 rows of tags or history)")

    return rules, first


def run(args, stack: ExitStack) -> None:
    if connection.vendor != "postgresql":
        sys.exit("bench/tags.py measures PostgreSQL; set DATABASE_URL")
    name = connection.settings_dict["NAME"]
    if "bench" not in name and not args.force:
        sys.exit(f"refusing to empty the tags of database {name!r} (pass --force)")
    started = time.perf_counter()
    if args.sessions is not None:
        settings.TAG_RULE_SESSIONS = args.sessions
    print(f"tag rule sessions: {settings.TAG_RULE_SESSIONS}")
    _time_commits()
    session_settings(sql, jit=args.jit, work_mem=args.work_mem, fk_checks=args.fk_checks)
    if args.drop_redundant_indexes:
        dropped = stack.enter_context(indexes_dropped(REDUNDANT_INDEXES))
        print(f"(dropped for this run, rebuilt at its end: {', '.join(dropped)})")
    vacuumed = vacuum_stale_tables(sql)
    if vacuumed:
        print(f"(vacuumed first, as autovacuum would have: {', '.join(vacuumed)})")
    recorder = Recorder()
    connection.execute_wrappers.append(recorder)

    counts = {t: sql(f"SELECT reltuples::bigint FROM pg_class WHERE relname = '{t}'")[0][0]
              for t in ("crm_customer", "crm_event", "crm_order", "crm_groupmembership")}
    counts["crm_customer"] = sql("SELECT count(*) FROM crm_customer")[0][0]
    version = sql("SHOW server_version")[0][0]
    print(f"# bench/tags.py — database {name}, PostgreSQL {version}, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, jit {sql('SHOW jit')[0][0]}, "
          f"work_mem {sql('SHOW work_mem')[0][0]}, pre-checks {args.prechecks}, "
          f"fk checks {args.fk_checks}")
    print("data: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))

    if args.skip_rules:
        layers = TagRule.objects.filter(tag__group__key="value_layer")
        rules = list(layers.order_by("priority", "pk")) + list(
            TagRule.objects.filter(name__startswith="bench: ", active=True).order_by("priority"))
        first = None
    else:
        rules, first = rule_runs(args, rules=setup_rules(args.rules), recorder=recorder)

    admin = get_user_model().objects.filter(is_superuser=True).first() or next(
        u for u in get_user_model().objects.all() if access.user_role(u) == access.ADMIN)
    tag_ids = [r.tag_id for r in rules]
    if args.previews:
        rng = random.Random(args.seed)
        conditions = [random_condition(rng, tag_ids) for _i in range(args.previews)]
        index_previews(admin, conditions, recorder)
        segment_preview(user=admin, condition=conditions[0], exact=True)     # warm
        results = previews(admin, conditions, recorder, exact=True)
        times = [r["s"] for r in results]
        same = same_at_one_moment(conditions)
        table(["previews", "p50 ms", "p95 ms", "max ms", "mean ms",
               "index = SQL at the same moment"],
              [[len(times), ms(pct(times, 0.5)), ms(pct(times, 0.95)), ms(max(times)),
                ms(statistics.mean(times)), f"{same} of {len(times)}"]],
              "Segment preview counted in SQL now (`exact`), the same conditions")
        by_window: dict[str, list[float]] = {}
        for r in results:
            leaf = next(x for x in next(iter(r["condition"].values())) if x["field"] == "event")
            window = ("since joining" if leaf.get("since_joined") else
                      f"≤ {leaf['within_days']} days" if "within_days" in leaf else
                      "whole history")
            by_window.setdefault(window, []).append(r["s"])
        table(["event leaf window", "previews", "p50 ms", "max ms"],
              [[k, len(v), ms(pct(v, 0.5)), ms(max(v))] for k, v in sorted(by_window.items())],
              "Preview time by the event leaf's window")
        slowest = sorted(results, key=lambda r: -r["s"])[:5]
        table(["ms", "count", "condition"],
              [[ms(r["s"]), f"{r['count']:,}", str(r["condition"])[:160]] for r in slowest],
              "Slowest previews")

        worst = max(results, key=lambda r: r["s"])
        s_stmt, statement, params = max(worst["statements"], key=lambda x: x[0])
        print(f"\n## EXPLAIN (ANALYZE, BUFFERS) of the slowest preview's slowest statement "
              f"({s_stmt * 1000:.0f} ms)\n{worst['condition']}")
        print(explain(statement, params))

    if not args.no_gin:
        gin_compare()

    if first is None:
        print(f"\nbench/tags.py done in {time.perf_counter() - started:.0f} s")
        return
    worst_rule = max(first["rules"], key=lambda r: r["s"])
    if not worst_rule["statements"]:
        print(f"\n(rules spread over {settings.TAG_RULE_SESSIONS} sessions: no statements "
              f"recorded; --sessions 1 for the slowest rule's)\nbench/tags.py done in "
              f"{time.perf_counter() - started:.0f} s")
        return
    index = max(range(len(worst_rule["statements"])),
                key=lambda i: worst_rule["statements"][i][0])
    s_stmt, statement, params = worst_rule["statements"][index]
    rule = worst_rule["rule"]
    share = [f"{s * 1000:.0f} ms {st.split()[0]} {st[:60]!r}…"
             for s, st, _p in sorted(worst_rule["statements"], key=lambda x: -x[0])[:5]]
    print(f"\n## Slowest rule: {rule.name} ({worst_rule['s'] * 1000:.0f} ms on the 1st run); "
          f"its statements:\n  " + "\n  ".join(share))
    # Rebuild the state the statement ran in — the rule's tags gone, then every statement of the
    # run before it replayed with its own parameters — and explain it; all rolled back.
    analyze = not worst_rule["timeout"]
    # (the batch's per-customer table again: its statements join it)
    with services._batch_features(rules, now=timezone.now(), customer_ids=None), \
            transaction.atomic():
        sql(f"DELETE FROM tagging_customertag WHERE tag_id = {rule.tag_id}")
        for _s, replayed, replayed_params in worst_rule["statements"][:index]:
            sql(replayed, replayed_params)
        plan = sql(("EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN ") + statement,
                   params)
        transaction.set_rollback(True)
    print(("EXPLAIN (ANALYZE, BUFFERS)" if analyze else
           f"EXPLAIN (no ANALYZE: it did not finish within {args.rule_timeout} s)")
          + f" of its slowest statement ({s_stmt * 1000:.0f} ms):\n{statement[:300]}…\n"
          + "\n".join(r[0] for r in plan))
    print(f"\nbench/tags.py done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
