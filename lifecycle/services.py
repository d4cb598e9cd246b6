"""Stage evaluation, manual moves, stage deletion and simulation — all set-based.

Evaluating a model is, per chunk of customers (by primary key), one statement that computes
every customer's target stage — a CASE over the stages' entry conditions in precedence order,
compiled by the condition language — compares it with the stored stage, and writes only what
changed: on PostgreSQL the upsert of the current stage and the insert of the transitions are one
statement (data-modifying CTEs), on SQLite two. The upsert only moves a customer whose stored
stage is still the one the run read (compare-and-set), and transitions are written only for the
rows the upsert changed, so two evaluations at once cannot record a move twice.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import (
    Case,
    Count,
    Exists,
    F,
    FilteredRelation,
    IntegerField,
    OuterRef,
    Q,
    Value,
    When,
)
from django.utils import timezone
from django.utils.translation import gettext as _

from core import access, audit, conditions
from core.db import execute_insert_skipping_conflicts, heavy_statements, pk_ranges
from core.exceptions import ApplicationError
from crm import hooks as crm_hooks
from crm.models import Customer
from lifecycle import hooks
from lifecycle.models import (
    BulkStageJob,
    CustomerStage,
    Stage,
    StageModel,
    StageTransition,
    TransitionSource,
)

logger = logging.getLogger(__name__)
CHUNK = 250_000   # customers per statement: measured at 1M, 100k–1M (docs/PERFORMANCE.md)


@dataclass
class Evaluation:
    model: str
    evaluated: int = 0
    changed: int = 0
    moves: Counter = field(default_factory=Counter)      # (from_key, to_key) -> n
    duration_ms: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "changed": self.changed, "duration_ms": self.duration_ms,
                "moves": [{"from": f or None, "to": t, "count": n}
                          for (f, t), n in sorted(self.moves.items(), key=lambda m: -m[1])]}


# --- The target-stage computation -----------------------------------------------------------

def _stages(model: StageModel) -> list[Stage]:
    return list(model.stages.all().order_by("position"))


def validate_stage_condition(*, model: StageModel, condition: Any,
                             thresholds: dict | None = None) -> None:
    """A stage's condition must compile with the model's thresholds (a 400 with the path)."""
    if condition is None:
        return
    conditions.validate(condition, thresholds=model.thresholds if thresholds is None
                        else thresholds)


def _target_case(stages: list[Stage], ctx: dict[str, Any]) -> Case:
    """CASE over the stages' conditions in precedence order → the winning stage's position;
    the stage without a condition is the fallback."""
    whens = [
        When(conditions.compile_condition(stage.condition, **ctx), then=Value(stage.position))
        for stage in sorted(stages, key=lambda s: (s.precedence, s.position))
        if stage.condition is not None
    ]
    fallback = next((s.position for s in stages if s.condition is None), None)
    return Case(*whens, default=Value(fallback, output_field=IntegerField()),
                output_field=IntegerField())


def _features(plan: list[tuple[StageModel, list[Stage], dict[str, Any]]], *, now: datetime,
              customer_ids: list[int] | None,
              pk_range: tuple[int, int | None] | None = None) -> conditions.Features | None:
    """On PostgreSQL, every counting leaf of every stage of every model in `plan` (model,
    stages, thresholds) reads one per-customer table computed here once for the whole run —
    one pass over the events and one over the orders, like the scan floor — and joined by each
    chunk's statement (core.conditions.Features). Call inside the run's transaction; None on
    SQLite (each leaf is a subquery there)."""
    if connection.vendor != "postgresql":
        return None
    features = conditions.Features("lifecycle_features")
    for _model, stages, thresholds in plan:
        _target_case(stages, {"now": now, "thresholds": thresholds, "customer_ids": customer_ids,
                              "features": features})
    features.materialize(conditions.Context(now=now, customer_ids=customer_ids,
                                            pk_range=pk_range))
    return features


def _changes_sql(model: StageModel, stages: list[Stage], *, now: datetime,
                 thresholds: dict[str, Any], customer_ids: list[int] | None,
                 pk_range: tuple[int, int | None] | None,
                 features: conditions.Features | None,
                 respect_locks: bool = True) -> tuple[str, list]:
    """SQL answering (customer_id, current_id, final_id) for every customer of the scope whose
    stage should change; `final_id` honours monotonic models and manual locks. `features`:
    what `_features()` prepared for the run."""
    ctx = {"now": now, "thresholds": thresholds, "customer_ids": customer_ids,
           "pk_range": pk_range, "features": features}
    customers = Customer.objects.all()
    if customer_ids is not None:
        customers = customers.filter(pk__in=customer_ids)
    if pk_range is not None:
        customers = customers.filter(pk__gt=pk_range[0])
        if pk_range[1] is not None:
            customers = customers.filter(pk__lte=pk_range[1])
    # The stored stage and lock come from one LEFT JOIN of the customer's row of this model.
    stored = Q(customer_stages__model=model)
    if pk_range is not None:   # lets the join read the chunk's range of the unique index
        stored &= Q(customer_stages__customer_id__gt=pk_range[0])
        if pk_range[1] is not None:
            stored &= Q(customer_stages__customer_id__lte=pk_range[1])
    if features is not None:
        customers = features.join(customers, pk_range)
    inner = customers.order_by().annotate(
        _cs=FilteredRelation("customer_stages", condition=stored),
    ).annotate(
        _target=_target_case(stages, ctx),
        _current=F("_cs__stage_id"),
        _locked=F("_cs__locked_until"),
    ).values_list("pk", "_target", "_current", "_locked")
    inner_sql, params = inner.query.sql_with_params()

    # The inner query computes each customer's target once; the fence (OFFSET 0) keeps the
    # planner from inlining that CASE — and every subquery in it — wherever the outer query
    # mentions it.
    fence = " OFFSET 0" if connection.vendor == "postgresql" else " LIMIT -1 OFFSET 0"
    position_of = " ".join(f"WHEN {s.pk} THEN {s.position}" for s in stages)
    id_at = " ".join(f"WHEN {s.position} THEN {s.pk}" for s in stages)
    current_pos = f"(CASE t._current {position_of} END)"
    final_pos = "t._target"
    if model.monotonic:
        final_pos = f"(CASE WHEN {current_pos} > t._target THEN {current_pos} ELSE t._target END)"
    sql = (
        f"SELECT customer_id, current_id, final_id FROM ("
        f"SELECT t.pk AS customer_id, t._current AS current_id, "
        f"(CASE {final_pos} {id_at} END) AS final_id, t._locked AS locked_until "
        f"FROM ({inner_sql}{fence}) AS t) AS f "
        f"WHERE f.final_id IS NOT NULL AND (f.current_id IS NULL OR f.current_id <> f.final_id)"
    )
    params = list(params)
    if respect_locks:
        sql += " AND (f.locked_until IS NULL OR f.locked_until <= %s)"
        params.append(connection.ops.adapt_datetimefield_value(now))
    return sql, list(params)


# --- Applying changes -----------------------------------------------------------------------

def _apply(model: StageModel, stages: list[Stage], changes_sql: str, params: list, *,
           now: datetime, source: str, reason: str = "", actor=None
           ) -> list[tuple[int, int | None, int]]:
    """Move the customers the changes SQL lists and record each move; returns
    (customer_id, from_stage_id, to_stage_id) for the moves actually made."""
    at = connection.ops.adapt_datetimefield_value(now)
    cs = CustomerStage._meta.db_table
    tr = StageTransition._meta.db_table
    st = Stage._meta.db_table
    actor_id = actor.pk if actor else None
    if connection.vendor == "postgresql":
        # New rows are inserted, stored ones updated only while they still hold the stage the
        # run read (compare-and-set) and are not locked; transitions are written for exactly
        # the rows these two changed. Only a manual move of a customer this run places at the
        # same moment can collide with the INSERT (core.db.execute_insert_skipping_conflicts).
        conflict = "ON CONFLICT (customer_id, model_id) DO NOTHING"
        sql = (
            f"WITH ch AS MATERIALIZED ({changes_sql}), "
            f"ins AS (INSERT INTO {cs} (customer_id, model_id, stage_id, entered_at, source, "
            f"locked_until) SELECT customer_id, %s, final_id, %s, %s, NULL FROM ch "
            f"WHERE current_id IS NULL {conflict} RETURNING customer_id, stage_id), "
            f"upd AS (UPDATE {cs} SET stage_id = ch.final_id, entered_at = %s, source = %s, "
            f"locked_until = NULL FROM ch WHERE ch.current_id IS NOT NULL AND {cs}.model_id = %s "
            f"AND {cs}.customer_id = ch.customer_id AND {cs}.stage_id = ch.current_id "
            f"AND ({cs}.locked_until IS NULL OR {cs}.locked_until <= %s) "
            f"RETURNING {cs}.customer_id, {cs}.stage_id), "
            f"up AS (SELECT customer_id, stage_id FROM ins "
            f"UNION ALL SELECT customer_id, stage_id FROM upd) "
            f"INSERT INTO {tr} (customer_id, model_id, from_stage_id, to_stage_id, from_key, "
            f"to_key, at, source, reason, actor_id, win_back, backward) "
            f"SELECT up.customer_id, %s, ch.current_id, up.stage_id, COALESCE(fs.key, ''), "
            f"ts.key, %s, %s, %s, CAST(%s AS integer), "
            f"(COALESCE(fs.win_back_from, FALSE) AND NOT ts.win_back_from), "
            f"(fs.position IS NOT NULL AND ts.position < fs.position) "
            f"FROM up JOIN ch ON ch.customer_id = up.customer_id "
            f"JOIN {st} ts ON ts.id = up.stage_id LEFT JOIN {st} fs ON fs.id = ch.current_id "
            f"RETURNING customer_id, from_stage_id, to_stage_id")
        return execute_insert_skipping_conflicts(
            sql, [*params, model.pk, at, source, at, source, model.pk, at, model.pk, at, source,
                  reason, actor_id], conflict)[1]
    with connection.cursor() as cursor:
        cursor.execute(changes_sql, params)
        rows = cursor.fetchall()
    if not rows:
        return []
    by_id = {s.pk: s for s in stages}
    CustomerStage.objects.bulk_create(
        [CustomerStage(customer_id=c, model=model, stage_id=to, entered_at=now, source=source,
                       locked_until=None) for c, _from, to in rows],
        update_conflicts=True, unique_fields=["customer", "model"],
        update_fields=["stage", "entered_at", "source", "locked_until"], batch_size=2000)
    StageTransition.objects.bulk_create([
        _transition(model, c, by_id.get(frm), by_id[to], now=now, source=source, reason=reason,
                    actor=actor) for c, frm, to in rows], batch_size=2000)
    return [(c, frm, to) for c, frm, to in rows]


def _transition(model, customer_id, from_stage, to_stage, *, now, source, reason="",
                actor=None) -> StageTransition:
    """The one constructor of a transition row."""
    return StageTransition(
        customer_id=customer_id, model=model, from_stage=from_stage, to_stage=to_stage,
        from_key=from_stage.key if from_stage else "", to_key=to_stage.key, at=now,
        source=source, reason=reason[:500], actor=actor,
        win_back=bool(from_stage and from_stage.win_back_from and not to_stage.win_back_from),
        backward=bool(from_stage and to_stage.position < from_stage.position))


def _announce(model: StageModel, stages: list[Stage],
              moved: list[tuple[int, int | None, int]], now: datetime, source: str) -> None:
    """Tell the registered transition hooks who entered which stage."""
    if not moved:
        return
    keys = {s.pk: s.key for s in stages}
    entered: dict[int, list[int]] = defaultdict(list)
    first: dict[int, set[int]] = defaultdict(set)
    for customer_id, from_id, stage_id in moved:
        entered[stage_id].append(customer_id)
        if from_id is None:
            first[stage_id].add(customer_id)
    for stage_id, customer_ids in entered.items():
        hooks.stage_entered(hooks.StageEntry(model=model.key, stage=keys[stage_id], at=now,
                                             source=source, customer_ids=customer_ids,
                                             first_placement=frozenset(first[stage_id])))


# --- Evaluation -----------------------------------------------------------------------------

def _pk_ranges(customer_ids: list[int] | None, chunk: int):
    if customer_ids is not None:
        ids = sorted(set(customer_ids))
        for start in range(0, len(ids), chunk):
            yield ids[start:start + chunk], None
        return
    for pk_range in pk_ranges(Customer.objects.all(), chunk):
        yield None, pk_range


def stage_model_evaluate(*, model: StageModel, customer_ids: list[int] | None = None,
                         now: datetime | None = None, chunk_size: int = CHUNK,
                         source: str = TransitionSource.RULE) -> Evaluation | None:
    """Move every customer (or the given ones) to the stage the model's rules say.

    Returns what moved, or None when the model is inactive or — for a full run — another
    worker is evaluating this model right now. An evaluation of given customers (the
    incremental path) waits for a running one instead of skipping: the touch queue has already
    handed these customers over, and a full run may have read them before their new facts.
    """
    results = _evaluate([model], customer_ids=customer_ids, now=now or timezone.now(),
                        chunk_size=chunk_size, source=source)
    return results[0] if results else None


def stage_models_evaluate(*, keys: list[str] | None = None, customer_ids: list[int] | None = None,
                          due_only: bool = False, now: datetime | None = None,
                          chunk_size: int = CHUNK) -> list[Evaluation]:
    """Evaluate the active models (those named, or due) together: one transaction, one pass
    over the events and orders for all of them, then each chunk of customers through every
    model in turn. A model another worker is evaluating is skipped (a full run) or waited for
    (given customers)."""
    now = now or timezone.now()
    models = StageModel.objects.filter(active=True).order_by("order", "key")
    if keys:
        models = models.filter(key__in=keys)
    due = [model for model in models if not (
        due_only and model.last_evaluated_at
        and (now - model.last_evaluated_at).total_seconds() < model.interval_minutes * 60 - 30)]
    if not due:
        return []
    if not due_only or customer_ids is not None:
        return _evaluate(due, customer_ids=customer_ids, now=now, chunk_size=chunk_size,
                         source=TransitionSource.RULE)
    # A periodic run: in full once a day; otherwise only the customers a condition may have
    # changed for with time alone — the touches bring the others (crm 0019's triggers).
    partial = [m for m in due if crm_hooks.read_in_full_today(
        m.last_full_evaluated_at, m.last_evaluated_at, now)]
    full = [m for m in due if m not in partial]
    results = _evaluate(full, customer_ids=None, now=now, chunk_size=chunk_size,
                        source=TransitionSource.RULE) if full else []
    if partial:
        crossers = sorted(_crossers(partial, now))
        if crossers:
            results += _evaluate(partial, customer_ids=crossers, now=now,
                                 chunk_size=chunk_size, source=TransitionSource.RULE)
        StageModel.objects.filter(pk__in=[m.pk for m in partial]).update(last_evaluated_at=now)
    return results


def _crossers(models: list[StageModel], now: datetime) -> set[int]:
    """Customers whose stage conditions may have changed value since each model's last run
    by time alone, and those whose manual lock expired meanwhile."""
    found: set[int] = set()
    for model in models:
        trees = [c for c in model.stages.values_list("condition", flat=True) if c]
        found |= conditions.crossing_customers(trees, since=model.last_evaluated_at, until=now,
                                               thresholds=model.thresholds)
        found.update(CustomerStage.objects.filter(
            model=model, locked_until__gte=model.last_evaluated_at, locked_until__lt=now)
            .values_list("customer_id", flat=True))
    return found


Plan = list[tuple[StageModel, list[Stage], dict[str, Any]]]
Chunk = tuple[list[int] | None, tuple[int, int | None] | None]


def _evaluate(models: list[StageModel], *, customer_ids: list[int] | None, now: datetime,
              chunk_size: int, source: str) -> list[Evaluation]:
    started = time.monotonic()
    # A full run outside any transaction may spread its chunks over several database sessions
    # (each its own transaction, committed on its own); inside a caller's transaction the other
    # sessions would not see what it has written, so it runs in this one.
    workers = 1 if customer_ids is not None or connection.in_atomic_block else _workers()
    with transaction.atomic():
        # NO KEY UPDATE: excludes a second evaluation of these models (and makes the
        # incremental path wait), but not the foreign-key checks of what the workers write.
        locked = list(StageModel.objects.select_for_update(
            skip_locked=customer_ids is None, no_key=True)
            .filter(pk__in=[m.pk for m in models], active=True)
            .order_by("order", "key"))
        if not locked:
            return []
        heavy_statements(None if customer_ids is None else len(customer_ids))
        plan = [(model, stages, model.thresholds) for model in locked
                if (stages := _stages(model))]
        results = {model.pk: Evaluation(model=model.key) for model in locked}
        spent = dict.fromkeys(results, 0.0)
        # A model whose stages are not written yet moves no one (and has no SQL to run).
        chunks = list(_pk_ranges(customer_ids, chunk_size)) if plan else []
        spans = _spans(chunks, workers)
        if len(spans) > 1:
            with ThreadPoolExecutor(max_workers=len(spans)) as pool:
                parts = list(pool.map(
                    lambda span: _evaluate_span_in_thread(plan, span, now=now, source=source),
                    spans))
            for part_results, part_spent in parts:
                for pk, part in part_results.items():
                    results[pk].changed += part.changed
                    results[pk].moves.update(part.moves)
                    spent[pk] += part_spent[pk]
        elif chunks:
            features = _features(plan, now=now, customer_ids=customer_ids)
            _evaluate_chunks(plan, chunks, features, results, spent, now=now, source=source)
        if customer_ids is None:
            StageModel.objects.filter(pk__in=list(results)).update(
                last_evaluated_at=now, last_full_evaluated_at=now)
    # Each model's share of the run's time (its own statements, and the shared pass over the
    # events in proportion).
    elapsed = time.monotonic() - started
    total = sum(spent.values())
    for model in locked:
        result = results[model.pk]
        share = spent[model.pk] / total if total else 1 / len(locked)
        result.duration_ms = round(elapsed * share * 1000)
        logger.info("lifecycle.evaluated", extra={"model": model.key, "changed": result.changed,
                                                  "ms": result.duration_ms, "sessions": len(spans)
                                                  or 1})
    return [results[model.pk] for model in locked]


def _workers() -> int:
    from django.conf import settings

    if connection.vendor != "postgresql":
        return 1
    return max(1, int(getattr(settings, "LIFECYCLE_EVALUATION_SESSIONS", 1)))


def _spans(chunks: list[Chunk], workers: int) -> list[list[Chunk]]:
    """The chunks in `workers` runs of consecutive ones (as even as the chunks allow): each run
    covers one range of primary keys, for which its session computes the per-customer counts."""
    workers = min(workers, len(chunks))
    if workers <= 1:
        return [chunks] if chunks else []
    size, extra = divmod(len(chunks), workers)
    spans, at = [], 0
    for index in range(workers):
        n = size + (index < extra)
        spans.append(chunks[at:at + n])
        at += n
    return spans


def _evaluate_span_in_thread(plan: Plan, span: list[Chunk], *, now: datetime, source: str
                             ) -> tuple[dict[int, Evaluation], dict[int, float]]:
    """One session's share of a full run: its own transaction over a range of customers (its
    own connection: Django's connections belong to their thread)."""
    try:
        results = {model.pk: Evaluation(model=model.key) for model, _s, _t in plan}
        spent = dict.fromkeys(results, 0.0)
        pk_range = (span[0][1][0], span[-1][1][1])
        with transaction.atomic():
            heavy_statements()
            features = _features(plan, now=now, customer_ids=None, pk_range=pk_range)
            _evaluate_chunks(plan, span, features, results, spent, now=now, source=source)
        return results, spent
    finally:
        connection.close()


def _evaluate_chunks(plan: Plan, chunks: list[Chunk], features: conditions.Features | None,
                     results: dict[int, Evaluation], spent: dict[int, float], *, now: datetime,
                     source: str) -> None:
    """Each chunk of customers through every model in turn, in the current transaction."""
    keys = {s.pk: s.key for _m, stages, _t in plan for s in stages}
    for ids, pk_range in chunks:
        for model, stages, thresholds in plan:
            began = time.monotonic()
            sql, params = _changes_sql(model, stages, now=now, thresholds=thresholds,
                                       customer_ids=ids, pk_range=pk_range, features=features)
            moved = _apply(model, stages, sql, params, now=now, source=source)
            result = results[model.pk]
            result.changed += len(moved)
            _announce(model, stages, moved, now, source)
            for _customer, from_id, to_id in moved:
                result.moves[(keys.get(from_id, ""), keys[to_id])] += 1
            spent[model.pk] += time.monotonic() - began


def orphans_sweep() -> int:
    """Delete the stage rows and transitions of customers that no longer exist.

    Deleting a customer deletes these rows (Django's on_delete), but an evaluation that read
    the customer just before the deletion committed may still write a row for them afterwards:
    the tables carry no database foreign key (see CustomerStage). Nightly, set-based."""
    gone = ~Exists(Customer.objects.filter(pk=OuterRef("customer_id")))
    stages, _ = CustomerStage.objects.filter(gone).delete()
    transitions, _ = StageTransition.objects.filter(gone).delete()
    return stages + transitions


def touch_skips() -> set[str]:
    """The touches the stage models need not read (crm.hooks.touch_skips): the stages' own —
    written by the models themselves — and the tags', unless an active model's stage condition
    reads tags."""
    reads = conditions.field_names(list(Stage.objects.filter(model__active=True)
                                        .values_list("condition", flat=True)))
    return {"lifecycle"} if "tag" in reads else {"lifecycle", "tagging"}


def stage_models_evaluate_touched(customer_ids: list[int] | None) -> int:
    """The incremental path: re-evaluate every active model for these customers — or for
    everyone (None), when so many were touched that a full pass costs less (crm.hooks)."""
    return sum(r.changed for r in stage_models_evaluate(customer_ids=customer_ids))


# --- Manual moves ---------------------------------------------------------------------------

@transaction.atomic
def customer_stage_move(*, customer: Customer, model: StageModel, stage: Stage, reason: str,
                        actor) -> StageTransition:
    """Put a customer in a stage by hand; evaluation leaves them there for the model's lock
    period. In a monotonic model only an admin may move a customer back."""
    if stage.model_id != model.pk:
        raise ApplicationError(_("stage: %(stage)r is not a stage of model %(model)r")
                               % {"stage": stage.key, "model": model.key})
    if not reason or not reason.strip():
        raise ApplicationError(_("reason: say why the customer is moved"))
    now = timezone.now()
    current = (CustomerStage.objects.select_for_update().select_related("stage")
               .filter(customer=customer, model=model).first())
    from_stage = current.stage if current else None
    if from_stage and from_stage.pk == stage.pk:
        raise ApplicationError(_("stage: the customer is already in %(stage)s")
                               % {"stage": stage.name})
    backward = bool(from_stage and stage.position < from_stage.position)
    if backward and model.monotonic and not access.is_admin(actor):
        raise ApplicationError(
            _("stage: %(model)s only moves forward; only an admin may move a customer back from "
              "%(from)s to %(to)s") % {"model": model.name, "from": from_stage.name,
                                       "to": stage.name})
    locked_until = now + timedelta(days=model.lock_days) if model.lock_days else None
    CustomerStage.objects.update_or_create(
        customer=customer, model=model,
        defaults={"stage": stage, "entered_at": now, "source": TransitionSource.MANUAL,
                  "locked_until": locked_until})
    transition = _transition(model, customer.pk, from_stage, stage, now=now,
                             source=TransitionSource.MANUAL, reason=reason.strip(), actor=actor)
    transition.save()
    audit.record("stage.move", target=transition, customer=customer, actor=actor,
                 summary=f"{model.name}: {from_stage.name if from_stage else '—'} → {stage.name}",
                 data={"model": model.key, "from": from_stage.key if from_stage else None,
                       "to": stage.key, "reason": reason.strip()})
    _announce(model, [stage], [(customer.pk, from_stage.pk if from_stage else None, stage.pk)],
              now, TransitionSource.MANUAL)
    return transition


@transaction.atomic
def customer_stage_unlock(*, customer: Customer, model: StageModel) -> bool:
    return bool(CustomerStage.objects.filter(customer=customer, model=model,
                                             locked_until__isnull=False)
                .update(locked_until=None))


# --- Models and stages ----------------------------------------------------------------------

def _thresholds_check(thresholds: Any) -> None:
    if not isinstance(thresholds, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in thresholds.values()):
        raise ApplicationError(_("thresholds: an object of numbers, e.g. {\"dormant_days\": 30}"))


def _stages_check(*, stages: list[dict], existing: set[str], thresholds: dict) -> None:
    """The rules of a model's whole list of stages (saving and simulating a definition): keys
    once each, none of the `existing` ones dropped, one fallback at most, a position each, and
    every condition compiling with `thresholds` (a 400 naming the stage and the bad node)."""
    keys = [s["key"] for s in stages]
    if len(set(keys)) != len(keys):
        raise ApplicationError(_("stages: each stage key appears once"))
    missing = existing - set(keys)
    if missing:
        raise ApplicationError(
            _("stages: %(keys)s would be dropped; delete a stage with its own endpoint, which "
              "asks where its customers go") % {"keys": ", ".join(sorted(missing))})
    if sum(1 for s in stages if s.get("condition") is None) > 1:
        raise ApplicationError(_("stages: at most one stage may have no condition (the "
                                 "fallback)"))
    taken: dict[Any, int] = {}
    for index, data in enumerate(stages):
        position = data.get("position", index)
        if position in taken:
            raise ApplicationError(
                _("stages[%(index)d].position: %(position)s is also the position of "
                  "stages[%(other)d]; each stage has its own")
                % {"index": index, "position": position, "other": taken[position]},
                extra={"stage": data["key"]})
        taken[position] = index
    for index, data in enumerate(stages):
        try:
            if data.get("condition") is not None:
                conditions.validate(data["condition"], thresholds=thresholds)
        except conditions.ConditionError as exc:
            raise ApplicationError(f"stages[{index}].condition.{exc.message}"
                                   if exc.path else f"stages[{index}].condition: {exc.message}",
                                   extra={"stage": data["key"]}) from exc


@transaction.atomic
def stage_model_save(*, model: StageModel | None, stages: list[dict] | None = None,
                     **fields: Any) -> StageModel:
    """Create or change a model and (when given) its whole list of stages. Stages are matched by
    key: new keys are created, missing ones must be deleted with `stage_delete` first (their
    customers need a destination)."""
    model = model or StageModel()
    for name, value in fields.items():
        setattr(model, name, value)
    _thresholds_check(model.thresholds)
    model.full_clean()
    model.save()
    if stages is None:
        stages = [{"key": s.key, "name": s.name, "description": s.description,
                   "position": s.position, "precedence": s.precedence, "color": s.color,
                   "condition": s.condition, "win_back_from": s.win_back_from}
                  for s in model.stages.all()]
    existing = {s.key: s for s in model.stages.all()}
    _stages_check(stages=stages, existing=set(existing), thresholds=model.thresholds)
    # Positions are unique: park the old ones out of the way before writing the new ones.
    Stage.objects.filter(model=model).update(position=F("position") + 10_000)
    for index, data in enumerate(stages):
        stage = existing.get(data["key"]) or Stage(model=model, key=data["key"])
        for name in ("name", "description", "precedence", "color", "condition",
                     "win_back_from"):
            if name in data:
                setattr(stage, name, data[name])
        stage.position = data.get("position", index)
        stage.full_clean(exclude=["model"])
        stage.save()
    audit.record("stage_model.save", target=model, summary=model.name,
                 data={"fields": sorted(fields), "stages": [d["key"] for d in stages]})
    return model


@transaction.atomic
def stage_model_delete(*, model: StageModel) -> None:
    """Delete a custom model with its stages, its customers' places in it and its history.
    (A customer's place protects its stage, so the places go first.)"""
    if model.built_in:
        raise ApplicationError(_("Built-in models cannot be deleted; deactivate them."))
    audit.record("stage_model.delete", target=model, summary=model.name)
    CustomerStage.objects.filter(model=model).delete()
    model.delete()


@transaction.atomic
def stage_delete(*, stage: Stage, move_to: Stage, actor) -> int:
    """Delete a stage after moving its customers to `move_to`, each move recorded."""
    if move_to.model_id != stage.model_id or move_to.pk == stage.pk:
        raise ApplicationError(_("move_to: choose another stage of the same model"))
    model = stage.model
    now = timezone.now()
    moving = list(CustomerStage.objects.filter(model=model, stage=stage)
                  .values_list("customer_id", flat=True))
    StageTransition.objects.bulk_create([
        _transition(model, c, stage, move_to, now=now, source=TransitionSource.SYSTEM,
                    reason=_("stage %(stage)s deleted") % {"stage": stage.name}, actor=actor)
        for c in moving], batch_size=5000)
    CustomerStage.objects.filter(model=model, stage=stage).update(stage=move_to, entered_at=now,
                                                                  source=TransitionSource.SYSTEM)
    StageTransition.objects.filter(from_stage=stage).update(from_stage=None)
    StageTransition.objects.filter(to_stage=stage).update(to_stage=None)
    audit.record("stage_model.save", target=model, actor=actor,
                 summary=_("%(model)s: stage %(stage)s deleted, %(n)d customers moved to "
                           "%(to)s") % {"model": model.name, "stage": stage.name,
                                        "n": len(moving), "to": move_to.name},
                 data={"deleted_stage": stage.key, "moved_to": move_to.key,
                       "customers": len(moving)})
    stage.delete()
    _announce(model, [move_to], [(c, stage.pk, move_to.pk) for c in moving], now,
              TransitionSource.SYSTEM)
    return len(moving)


# --- Simulation -----------------------------------------------------------------------------

def stage_model_simulate(*, model: StageModel, thresholds: dict[str, Any] | None = None,
                         stages: list[dict] | None = None,
                         monotonic: bool | None = None) -> dict[str, Any]:
    """Per-stage counts now and under a proposal, and the from→to matrix — with the same
    rules, locks and monotonicity as evaluation, and without writing anything.

    `thresholds` alone proposes other values for thresholds the model has. With `stages` —
    the whole list, as `stage_model_save` takes it (renamed, reordered, new stages, other
    conditions) — the proposal is a model definition: `thresholds` is then its whole set (the
    model's when omitted) and `monotonic` may change too. An unsaved model can be simulated
    that way: nobody is in it yet."""
    current = _stages(model) if model.pk else []
    if stages is None:
        thresholds = {} if thresholds is None else thresholds
        unknown = set(thresholds) - set(model.thresholds)
        if unknown:
            raise ApplicationError(_("thresholds: unknown %(names)s; the model has %(known)s")
                                   % {"names": ", ".join(sorted(unknown)),
                                      "known": ", ".join(sorted(model.thresholds)) or "-"})
        for name, value in thresholds.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ApplicationError(_("thresholds.%(name)s: must be a number")
                                       % {"name": name})
        proposal = {**model.thresholds, **thresholds}
        for stage in current:
            try:
                validate_stage_condition(model=model, condition=stage.condition,
                                         thresholds=proposal)
            except conditions.ConditionError as exc:
                raise ApplicationError(
                    _("thresholds: the proposed values do not fit the rule of stage %(stage)s "
                      "(%(error)s)") % {"stage": stage.key, "error": exc.message}) from exc
        proposed = current
    else:
        proposal = dict(model.thresholds if thresholds is None else thresholds)
        _thresholds_check(proposal)
        _stages_check(stages=stages, existing={s.key for s in current}, thresholds=proposal)
        proposed = _proposed_stages(current, stages)
    simulated = copy.copy(model)
    if monotonic is not None:
        simulated.monotonic = monotonic
    if simulated.pk is None:
        simulated.pk = 0        # no customer has a place in a model not saved yet
    names = {s.pk: s.key for s in [*current, *proposed]}
    now_counts = Counter({names[sid]: n for sid, n in CustomerStage.objects.filter(
        model_id=simulated.pk).values_list("stage_id").annotate(n=Count("id"))})
    moves: Counter = Counter()
    now = timezone.now()
    # Chunked by primary key like evaluation, so each chunk's aggregates stay small enough to
    # hash; read-only, in one transaction for the work_mem setting.
    with transaction.atomic():
        heavy_statements()
        features = _features([(simulated, proposed, proposal)], now=now,
                             customer_ids=None) if proposed else None
        for _ids, pk_range in (_pk_ranges(None, CHUNK) if proposed else ()):
            sql, params = _changes_sql(simulated, proposed, now=now, thresholds=proposal,
                                       customer_ids=None, pk_range=pk_range, features=features)
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT current_id, final_id, COUNT(*) FROM ({sql}) AS moves "
                               f"GROUP BY current_id, final_id", params)
                for current_id, final_id, n in cursor.fetchall():
                    moves[(current_id, final_id)] += n
    after = Counter(now_counts)
    matrix = []
    for (current_id, final_id), n in moves.items():
        if current_id is not None:
            after[names[current_id]] -= n
        after[names[final_id]] += n
        matrix.append({"from": names.get(current_id), "to": names[final_id], "count": n})
    matrix.sort(key=lambda m: -m["count"])
    return {
        "model": model.key, "thresholds": proposal,
        "stages": [{"stage": s.key, "name": s.name, "color": s.color,
                    "now": now_counts.get(s.key, 0), "proposed": after.get(s.key, 0)}
                   for s in sorted(proposed, key=lambda s: s.position)],
        "moves": matrix,
    }


def _proposed_stages(current: list[Stage], stages: list[dict]) -> list[Stage]:
    """Unsaved stages as a proposed list describes them: a kept stage keeps its id (customers
    are in it now), a new one gets a negative stand-in id for the statement's CASE."""
    by_key = {s.key: s for s in current}
    out = []
    for index, data in enumerate(stages):
        stage = copy.copy(by_key[data["key"]]) if data["key"] in by_key else Stage(
            pk=-1 - index, key=data["key"], name=data.get("name") or data["key"])
        for name in ("name", "precedence", "color", "condition", "win_back_from"):
            if name in data:
                setattr(stage, name, data[name])
        stage.position = data.get("position", index)
        out.append(stage)
    return out


# --- Bulk manual moves ------------------------------------------------------------------------

BULK_STAGE_SYNC = 5_000   # a bulk move this large or smaller runs in the request; also the chunk


@dataclass
class BulkStageResult:
    moved: int = 0
    refused: int = 0      # backward in a monotonic model, asked by someone not an admin
    customer_ids: list[int] = field(default_factory=list)


def _bulk_move_check(*, model: StageModel, stage: Stage, reason: str) -> str:
    """customer_stage_move's own checks, once for the whole set."""
    if stage.model_id != model.pk:
        raise ApplicationError(_("stage: %(stage)r is not a stage of model %(model)r")
                               % {"stage": stage.key, "model": model.key})
    if not isinstance(reason, str) or not reason.strip():
        raise ApplicationError(_("reason: say why the customers are moved"))
    return reason.strip()[:500]


@transaction.atomic
def customers_stage_move_bulk(*, actor, customers, model: StageModel, stage: Stage,
                              reason: str) -> BulkStageResult:
    """Put a set of customers (a queryset, already scoped to what `actor` may see) in a stage
    by hand, under customer_stage_move's rules, in one statement: the reason is required; a
    manual move overrides an evaluation lock and sets a new one; in a monotonic model only an
    admin moves a customer back (the others are `refused`, not moved); customers already in
    the stage are left alone. One transition row per moved customer, with the reason.

    Idempotent and safe beside another writer: each place is changed only while it still holds
    the stage this statement read (compare-and-set) and a new place is inserted only where
    none exists, so a move is never recorded twice."""
    reason = _bulk_move_check(model=model, stage=stage, reason=reason)
    now = timezone.now()
    refuse_back = bool(model.monotonic and not access.is_admin(actor))
    locked_until = now + timedelta(days=model.lock_days) if model.lock_days else None
    if connection.vendor != "postgresql":
        return _bulk_move_portable(actor=actor, customers=customers, model=model, stage=stage,
                                   reason=reason, now=now, refuse_back=refuse_back,
                                   locked_until=locked_until)
    ids_sql, ids_params = customers.order_by().values("pk").query.sql_with_params()
    cs, tr, st = (CustomerStage._meta.db_table, StageTransition._meta.db_table,
                  Stage._meta.db_table)
    at = connection.ops.adapt_datetimefield_value(now)
    lock = connection.ops.adapt_datetimefield_value(locked_until)
    manual = TransitionSource.MANUAL
    sql = (
        f"WITH cur AS MATERIALIZED (SELECT c.id AS customer_id, p.stage_id AS current_id, "
        f"fs.position AS from_position FROM ({ids_sql}) AS c(id) "
        f"LEFT JOIN {cs} p ON p.customer_id = c.id AND p.model_id = %s "
        f"LEFT JOIN {st} fs ON fs.id = p.stage_id), "
        f"ch AS (SELECT customer_id, current_id FROM cur "
        f"WHERE current_id IS DISTINCT FROM %s AND NOT (%s AND COALESCE(from_position, -1) > %s)), "
        f"ins AS (INSERT INTO {cs} (customer_id, model_id, stage_id, entered_at, source, "
        f"locked_until) SELECT customer_id, %s, %s, %s, %s, %s FROM ch WHERE current_id IS NULL "
        f"ON CONFLICT (customer_id, model_id) DO NOTHING RETURNING customer_id), "
        f"upd AS (UPDATE {cs} SET stage_id = %s, entered_at = %s, source = %s, "
        f"locked_until = %s FROM ch WHERE ch.current_id IS NOT NULL AND {cs}.model_id = %s "
        f"AND {cs}.customer_id = ch.customer_id AND {cs}.stage_id = ch.current_id "
        f"RETURNING {cs}.customer_id), "
        f"up AS (SELECT customer_id FROM ins UNION ALL SELECT customer_id FROM upd), "
        f"moved AS (INSERT INTO {tr} (customer_id, model_id, from_stage_id, to_stage_id, "
        f"from_key, to_key, at, source, reason, actor_id, win_back, backward) "
        f"SELECT up.customer_id, %s, ch.current_id, %s, COALESCE(fs.key, ''), %s, %s, %s, %s, "
        f"CAST(%s AS integer), (COALESCE(fs.win_back_from, FALSE) AND NOT %s), "
        f"(fs.position IS NOT NULL AND %s < fs.position) "
        f"FROM up JOIN ch ON ch.customer_id = up.customer_id "
        f"LEFT JOIN {st} fs ON fs.id = ch.current_id RETURNING customer_id, from_stage_id) "
        f"SELECT customer_id, from_stage_id, FALSE FROM moved UNION ALL "
        f"SELECT customer_id, NULL, TRUE FROM cur "
        f"WHERE %s AND from_position > %s AND current_id IS DISTINCT FROM %s")
    params = [*ids_params, model.pk,
              stage.pk, refuse_back, stage.position,
              model.pk, stage.pk, at, manual, lock,
              stage.pk, at, manual, lock, model.pk,
              model.pk, stage.pk, stage.key, at, manual, reason, actor.pk if actor else None,
              stage.win_back_from, stage.position,
              refuse_back, stage.position, stage.pk]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    moves = [(c, frm, stage.pk) for c, frm, refused in rows if not refused]
    _announce(model, [stage], moves, now, manual)
    return BulkStageResult(moved=len(moves), refused=sum(1 for r in rows if r[2]),
                           customer_ids=[c for c, _f, _s in moves])


def _bulk_move_portable(*, actor, customers, model, stage, reason, now, refuse_back,
                        locked_until) -> BulkStageResult:
    """The same move where data-modifying CTEs are missing (SQLite, which writes one at a
    time): read the places under the write lock, then write them in bulk."""
    places = {p.customer_id: p for p in CustomerStage.objects.select_related("stage").filter(
        model=model, customer_id__in=customers.values("pk"))}
    ids = list(customers.order_by("pk").values_list("pk", flat=True))
    refused = [c for c in ids if refuse_back and c in places
               and places[c].stage.position > stage.position]
    moving = [c for c in ids if c not in refused
              and (c not in places or places[c].stage_id != stage.pk)]
    CustomerStage.objects.bulk_create(
        [CustomerStage(customer_id=c, model=model, stage=stage, entered_at=now,
                       source=TransitionSource.MANUAL, locked_until=locked_until)
         for c in moving],
        update_conflicts=True, unique_fields=["customer", "model"],
        update_fields=["stage", "entered_at", "source", "locked_until"], batch_size=2000)
    StageTransition.objects.bulk_create([
        _transition(model, c, places[c].stage if c in places else None, stage, now=now,
                    source=TransitionSource.MANUAL, reason=reason, actor=actor)
        for c in moving], batch_size=2000)
    moves = [(c, places[c].stage_id if c in places else None, stage.pk) for c in moving]
    _announce(model, [stage], moves, now, TransitionSource.MANUAL)
    return BulkStageResult(moved=len(moving), refused=len(refused), customer_ids=moving)


def bulk_stage_start(*, actor, customers, model: StageModel, stage: Stage, reason: str,
                     condition: Any = None, customer_ids: list[int] | None = None
                     ) -> tuple[BulkStageJob, BulkStageResult | None]:
    """Small sets are moved at once; larger ones become a background job with progress
    (`bulk_stage_job_run`). `condition` / `customer_ids` describe `customers` for the job."""
    reason = _bulk_move_check(model=model, stage=stage, reason=reason)
    total = customers.count()
    job = BulkStageJob(actor=actor, model=model, stage=stage, reason=reason,
                       condition=condition, customer_ids=customer_ids, total=total)
    audit.record("stage.move_bulk", actor=actor,
                 summary=_("%(n)d customers to %(model)s: %(stage)s") % {
                     "n": total, "model": model.name, "stage": stage.name},
                 data={"model": model.key, "to": stage.key, "reason": reason,
                       "customers": total, "condition": condition,
                       "customer_ids": (customer_ids or [])[:1000]})
    if total <= BULK_STAGE_SYNC:
        with transaction.atomic():
            result = customers_stage_move_bulk(actor=actor, customers=customers, model=model,
                                               stage=stage, reason=reason)
            job.status = BulkStageJob.Status.DONE
            job.processed, job.moved, job.refused = total, result.moved, result.refused
            job.save()
        return job, result
    job.save()
    from lifecycle.tasks import run_bulk_stage_job

    transaction.on_commit(lambda: run_bulk_stage_job.delay(job.pk))
    return job, None


def bulk_stage_job_run(*, job_id: int) -> BulkStageJob:
    """Work through the job in primary-key chunks, committing progress with each chunk's
    moves. Each chunk locks the job row and reads its progress afresh, so a job resumed by the
    sweeper while a slow worker still runs it is never processed twice, and one whose worker
    died resumes where it stopped."""
    from crm.selectors import customer_set

    job = BulkStageJob.objects.select_related("actor", "model", "stage").get(pk=job_id)
    customers = customer_set(user=job.actor, condition=job.condition,
                             customer_ids=job.customer_ids)
    try:
        while True:
            with transaction.atomic():
                job = (BulkStageJob.objects.select_for_update().select_related("model", "stage")
                       .get(pk=job_id))
                if job.status in (BulkStageJob.Status.DONE, BulkStageJob.Status.FAILED):
                    return job
                rest = customers.filter(pk__gt=job.last_customer_id)
                upper = list(rest.order_by("pk").values_list("pk", flat=True)
                             [BULK_STAGE_SYNC - 1:BULK_STAGE_SYNC])
                chunk = rest.filter(pk__lte=upper[0]) if upper else rest
                size = chunk.count()
                result = customers_stage_move_bulk(actor=job.actor, customers=chunk,
                                                   model=job.model, stage=job.stage,
                                                   reason=job.reason)
                job.status = BulkStageJob.Status.RUNNING
                job.processed += size
                job.moved += result.moved
                job.refused += result.refused
                if upper:
                    job.last_customer_id = upper[0]
                else:
                    job.status = BulkStageJob.Status.DONE
                    job.total = max(job.total, job.processed)
                job.save()
            if not upper:
                return job
    except Exception as exc:
        BulkStageJob.objects.filter(pk=job_id).update(status=BulkStageJob.Status.FAILED,
                                                      error=str(exc)[:2000])
        raise


def bulk_stage_jobs_resume(*, stale_after_seconds: int = 300) -> list[int]:
    """Job ids left queued or running without progress (a lost broker message, a dead
    worker), for the sweeper to enqueue again."""
    cutoff = timezone.now() - timedelta(seconds=stale_after_seconds)
    return list(BulkStageJob.objects.filter(
        status__in=[BulkStageJob.Status.QUEUED, BulkStageJob.Status.RUNNING],
        updated_at__lt=cutoff).values_list("pk", flat=True))


# --- The customer list's bulk action (crm.listing) --------------------------------------------

def _bulk_stage_summary(job: BulkStageJob) -> str:
    text = _("%(moved)d moved to %(stage)s (%(model)s)") % {
        "moved": job.moved, "stage": job.stage.name, "model": job.model.name}
    if job.refused:
        text += "; " + _("%(refused)d not moved: in %(model)s only an admin moves customers "
                         "back") % {"refused": job.refused, "model": job.model.name}
    return text


def _bulk_stage_action_start(*, actor, customers, condition, customer_ids, params):
    from crm.listing import BulkStarted

    model_key, _sep, stage_key = str(params.get("target") or "").partition(":")
    stage = (Stage.objects.select_related("model").filter(model__key=model_key, key=stage_key)
             .first())
    if stage is None:
        raise ApplicationError(_("stage: choose the stage to move the customers to"))
    job, result = bulk_stage_start(actor=actor, customers=customers, model=stage.model,
                                   stage=stage, reason=params.get("reason", ""),
                                   condition=condition, customer_ids=customer_ids)
    return BulkStarted(job_id=job.pk, done=result is not None,
                       summary=_bulk_stage_summary(job) if result is not None else "")


def _bulk_stage_action_progress(*, user, job_id: int):
    from crm.listing import BulkProgress

    jobs = BulkStageJob.objects.select_related("model", "stage").filter(pk=job_id)
    if not access.is_admin(user):
        jobs = jobs.filter(actor=user)
    job = jobs.first()
    if job is None:
        return None
    return BulkProgress(status=job.status, status_label=job.get_status_display(),
                        total=job.total, processed=job.processed,
                        summary=_bulk_stage_summary(job), error=job.error)


def register_customer_list_extensions() -> None:
    from crm.listing import BulkAction, bulk_actions

    bulk_actions.register("stage", BulkAction(start=_bulk_stage_action_start,
                                              progress=_bulk_stage_action_progress))

