"""Every write of tags: manual and bulk tagging, rules, expiry, renaming, merging, deleting.

All of it is set-based: a tag is added to a whole set of customers with one
`INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING`, removed with one `DELETE … RETURNING`, and
the history rows follow from what those statements report — so two writers at once can neither
duplicate a tag nor record the same change twice. Rules never touch a manual tag.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import (
    BigIntegerField,
    BooleanField,
    CharField,
    Count,
    DateTimeField,
    Exists,
    IntegerField,
    OuterRef,
    ProtectedError,
    Q,
    Value,
)
from django.db.models.expressions import RawSQL
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.translation import gettext as _

from core import audit, conditions
from core.db import (
    delete_returning,
    execute_insert_skipping_conflicts,
    heavy_statements,
    insert_from_select,
    materialize_ids,
    materialize_rows,
)
from core.exceptions import ApplicationError
from crm import hooks
from crm.models import Customer
from tagging.models import (
    BulkTagJob,
    CustomerTag,
    Segment,
    Tag,
    TagChange,
    TagGroup,
    TagRule,
    TagRuleRun,
    TagSource,
)

logger = logging.getLogger(__name__)
MATCH_TABLE = "tagging_rule_match"   # temporary, per transaction: the customers a rule matches
FEATURES_TABLE = "tagging_features"  # temporary, per batch of rules: their per-customer counts
SYNC_BATCH = 5_000   # a bulk change this large or smaller runs in the request


# --- Resolving tags by id or name -----------------------------------------------------------

def tags_resolve(refs: Iterable[int | str], *, path: str = "tags") -> list[Tag]:
    """Tags named by id or name; a name two groups share is a 400 that asks for the id."""
    refs = list(refs)
    if not isinstance(refs, list):
        raise ApplicationError(_("%(path)s: must be a list") % {"path": path})
    ids = {r for r in refs if isinstance(r, int) and not isinstance(r, bool)}
    names = {str(r).strip() for r in refs if isinstance(r, str)}
    if len(ids) + len(names) < len(set(map(str, refs))):
        bad = [r for r in refs if not isinstance(r, int | str) or isinstance(r, bool)]
        if bad:
            raise ApplicationError(_("%(path)s: tags are named by id or name, got %(bad)r")
                                   % {"path": path, "bad": bad[0]})
    found = list(Tag.objects.select_related("group").filter(Q(pk__in=ids) | Q(name__in=names)))
    by_id = {t.pk: t for t in found}
    by_name: dict[str, list[Tag]] = {}
    for tag in found:
        by_name.setdefault(tag.name, []).append(tag)
    out: list[Tag] = []
    for ref in refs:
        if isinstance(ref, int):
            tag = by_id.get(ref)
            if tag is None:
                raise ApplicationError(_("%(path)s: unknown tag id %(id)d") % {"path": path,
                                                                               "id": ref})
        else:
            matches = by_name.get(str(ref).strip(), [])
            if not matches:
                raise ApplicationError(_("%(path)s: unknown tag %(name)r") % {"path": path,
                                                                              "name": ref})
            if len(matches) > 1:
                raise ApplicationError(
                    _("%(path)s: the name %(name)r is used in groups %(groups)s; name the tag "
                      "by its id instead") % {"path": path, "name": ref,
                                              "groups": ", ".join(t.group.name for t in matches)},
                    extra={"ids": [t.pk for t in matches]})
            tag = matches[0]
        if tag not in out:
            out.append(tag)
    return out


# --- The set-based core ---------------------------------------------------------------------

@dataclass
class Change:
    added: int = 0
    removed: int = 0


def _write_history(rows: list[tuple[int, int]], *, action: str, source: str, actor, rule,
                   now: datetime) -> None:
    tags = {t.pk: t for t in Tag.objects.select_related("group")
            .filter(pk__in={r[1] for r in rows})}
    TagChange.objects.bulk_create([
        TagChange(customer_id=customer_id, tag_id=tag_id, tag_name=tags[tag_id].name,
                  group_name=tags[tag_id].group.name, action=action, source=source,
                  actor=actor, rule=rule, at=now)
        for customer_id, tag_id in rows], batch_size=5000)


_HISTORY_COLUMNS = ("customer_id", "tag_id", "tag_name", "group_name", "action", "source",
                    "rule_id", "actor_id", "at")


def _history_sql(written: str, *, by_rule: bool = False) -> str:
    """INSERT of one history row per (customer_id, tag_id) pair the CTE `written` produced;
    parameters: action, source, rule, actor, time — or with `by_rule` (the CTE names each row's
    rule_id, no actor): action, source, time."""
    who = "w.rule_id, NULL" if by_rule else "CAST(%s AS bigint), CAST(%s AS integer)"
    return (
        f"INSERT INTO {TagChange._meta.db_table} ({', '.join(_HISTORY_COLUMNS)}) "
        f"SELECT w.customer_id, w.tag_id, t.name, g.name, %s, %s, {who}, %s "
        f"FROM {written} w JOIN {Tag._meta.db_table} t ON t.id = w.tag_id "
        f"JOIN {TagGroup._meta.db_table} g ON g.id = t.group_id"
    )


def _constants(action: str, source: str, actor, rule, now: datetime) -> list:
    return [action, source, rule.pk if rule else None, actor.pk if actor else None, now]


def _nonempty(queryset) -> bool:
    """Whether a rule's set has any row — by COUNT, not EXISTS: `… LIMIT 1` makes PostgreSQL
    pick a nested loop that runs the condition's subqueries once per row, which at a million
    customers and nothing to find (a rule that changes nothing) scans everything the slow way;
    a count is planned with hash (anti-)joins."""
    return queryset.order_by().count() > 0


def _remove(rows_qs, *, action: str, source: str, actor=None, rule: TagRule | None = None,
            now: datetime, keep_manual: bool = False) -> int:
    """Delete the CustomerTag rows of the queryset and record each removal: one statement on
    PostgreSQL (a data-modifying CTE), two on SQLite; none when there is nothing to delete.

    `keep_manual` (rules): the DELETE itself re-checks that a row is not manual. The subquery
    picks rows by the statement's snapshot, so without the re-check a row an operator turned
    manual in a transaction that commits while the DELETE waits for it would still go."""
    if not _nonempty(rows_qs):
        return 0
    consts = _constants(action, source, actor, rule, now)
    if connection.vendor == "postgresql":
        sql, params = rows_qs.order_by().values("pk").query.sql_with_params()
        recheck = " AND source <> %s" if keep_manual else ""
        statement = (f"WITH w AS (DELETE FROM {CustomerTag._meta.db_table} WHERE id IN ({sql})"
                     f"{recheck} RETURNING customer_id, tag_id) " + _history_sql("w"))
        with connection.cursor() as cursor:
            cursor.execute(statement, [*params, *([TagSource.MANUAL] if keep_manual else []),
                                       *consts])
            return cursor.rowcount
    if keep_manual:
        rows_qs = rows_qs.exclude(source=TagSource.MANUAL)
    removed = delete_returning(rows_qs, ("customer", "tag"))
    if removed:
        _write_history(removed, action=action, source=source, actor=actor, rule=rule, now=now)
    return len(removed)


_TAG_FIELDS = ("customer", "tag", "exclusive_group", "source", "rule", "added_by", "added_at",
               "expires_at")


def _insert(select, *, source: str, actor, rule, now: datetime) -> int:
    """INSERT … SELECT the CustomerTag rows `select` yields, skipping conflicts, and record each
    row actually written: one statement on PostgreSQL, two on SQLite."""
    consts = _constants(TagChange.Action.ADDED, source, actor, rule, now)
    if connection.vendor == "postgresql":
        sql, params = select.query.sql_with_params()
        columns = ", ".join(CustomerTag._meta.get_field(f).column for f in _TAG_FIELDS)
        statement = (f"WITH w AS (INSERT INTO {CustomerTag._meta.db_table} ({columns}) "
                     f"SELECT * FROM ({sql}) AS src ON CONFLICT DO NOTHING "
                     f"RETURNING customer_id, tag_id) " + _history_sql("w"))
        # The SELECT leaves out who holds the tag: only a writer racing this one collides.
        return execute_insert_skipping_conflicts(statement, [*params, *consts])[0]
    rows = insert_from_select(CustomerTag, _TAG_FIELDS, select, returning=("customer", "tag"))
    if rows:
        _write_history(rows, action=TagChange.Action.ADDED, source=source, actor=actor,
                       rule=rule, now=now)
    return len(rows)


def _add(customers, tag: Tag, *, source: str, actor=None, rule: TagRule | None = None,
         expires_at: datetime | None = None, now: datetime, size: int | None = None) -> int:
    """Give `tag` to every customer of the queryset that lacks it; in an exclusive group, the
    customer's other tag of the group is replaced — unless it is manual and this is a rule.

    A person's choice in an exclusive group wins over a rule writing at the same moment: when
    the INSERT skipped customers because a concurrent rule run had just given them another tag
    of the group (the INSERT waits for that run and then does nothing), it replaces that tag
    and inserts again. `size`: how many customers the queryset holds, when the caller knows."""
    group = tag.group
    retry = group.exclusive and source != TagSource.RULE
    added = 0
    for _attempt in range(3 if retry else 1):
        if group.exclusive:
            others = CustomerTag.objects.filter(exclusive_group=group, customer__in=customers
                                                ).exclude(tag=tag)
            if source == TagSource.RULE:
                others = others.exclude(source=TagSource.MANUAL)
            _remove(others, action=TagChange.Action.REPLACED, source=source, actor=actor,
                    rule=rule, now=now, keep_manual=source == TagSource.RULE)
        if size == 0:
            break
        # (ordered as the (tag, customer) index is: a plain EXISTS may be planned as a scan
        # of the table until a holder turns up, seconds behind dead rows or a rare tag)
        if (size is not None and not group.exclusive
                and CustomerTag.objects.filter(tag=tag).order_by("tag_id", "customer_id")
                .values_list("pk", flat=True).first() is None):
            # Nobody holds the tag yet (a rule's first run): every one of them lacks it — no
            # anti-join, no pre-check.
            lacking = customers
        else:
            lacking = customers.exclude(Exists(CustomerTag.objects.filter(
                customer=OuterRef("pk"), tag=tag)))
            if not _nonempty(lacking):
                break
        added += _insert_lacking(lacking, tag, source=source, actor=actor, rule=rule,
                                 expires_at=expires_at, now=now)
    return added


def _insert_lacking(lacking, tag: Tag, *, source: str, actor, rule: TagRule | None,
                    expires_at: datetime | None, now: datetime) -> int:
    group = tag.group

    def const(value, field):
        # Cast even non-NULL constants: PostgreSQL types a bare NULL in a subquery as text.
        return Cast(Value(value, output_field=field), output_field=field)

    select = lacking.annotate(
        _tag=const(tag.pk, BigIntegerField()),
        _group=const(group.pk if group.exclusive else None, BigIntegerField()),
        _source=const(source, CharField()),
        _rule=const(rule.pk if rule else None, BigIntegerField()),
        _by=const(actor.pk if actor else None, IntegerField()),
        _at=const(now, DateTimeField()),
        _expires=const(expires_at, DateTimeField()),
    ).order_by().values_list("pk", "_tag", "_group", "_source", "_rule", "_by", "_at",
                             "_expires")
    return _insert(select, source=source, actor=actor, rule=rule, now=now)


def _check_exclusive(tags: list[Tag]) -> None:
    seen: dict[int, Tag] = {}
    for tag in tags:
        if tag.group.exclusive:
            if tag.group_id in seen:
                raise ApplicationError(
                    _("add: %(a)r and %(b)r are in the exclusive group %(group)r; a customer "
                      "holds only one of them") % {"a": seen[tag.group_id].name, "b": tag.name,
                                                   "group": tag.group.name})
            seen[tag.group_id] = tag


@transaction.atomic
def customers_tags_change(*, customers, add: list[Tag], remove: list[Tag], actor,
                          source: str = TagSource.MANUAL,
                          expires_at: datetime | None = None, customer=None,
                          audited: bool = True) -> Change:
    """Add and remove tags for a set of customers (a queryset), as one person's decision.

    A manual add of a tag the customer already holds from a rule makes it manual, so a `sync`
    rule will not take it away again.
    """
    _check_exclusive(add)
    overlap = {t.pk for t in add} & {t.pk for t in remove}
    if overlap:
        raise ApplicationError(_("A tag cannot be added and removed at once."))
    now = timezone.now()
    change = Change()
    if remove:
        change.removed = _remove(CustomerTag.objects.filter(customer__in=customers, tag__in=remove),
                                 action=TagChange.Action.REMOVED, source=source, actor=actor,
                                 now=now)
    for tag in add:
        # Claim the rows a rule gave before adding (the UPDATE locks them, so a sync run that
        # would delete them waits and then leaves them); then add, and claim what a rule run
        # racing us gave meanwhile (see _claim).
        if source == TagSource.MANUAL:
            _claim(customers, tag, actor)
        change.added += _add(customers, tag, source=source, actor=actor, expires_at=expires_at,
                             now=now)
        if source == TagSource.MANUAL:
            change.added += _claim(customers, tag, actor, now=now, expires_at=expires_at)
    if source == TagSource.MANUAL and audited and (change.added or change.removed):
        _audit_tags(actor=actor, add=add, remove=remove, change=change, customer=customer)
    return change


def _audit_tags(*, actor, add, remove, change: Change, customer=None, customers=None) -> None:
    audit.record("tags.change", actor=actor, customer=customer,
                 summary=" ".join([*(f"+{t.name}" for t in add), *(f"−{t.name}" for t in remove)]),
                 data={"added": [t.name for t in add], "removed": [t.name for t in remove],
                       "rows_added": change.added, "rows_removed": change.removed,
                       **({"customers": customers} if customers is not None else {})})


def _claim(customers, tag: Tag, actor, *, now: datetime | None = None,
           expires_at: datetime | None = None) -> int:
    """Make the customers' rule-given `tag` manual, so no `sync` rule takes it away again.

    After an add (`now` given), also make sure each of them holds it: a rule run may have given
    the tag after our INSERT's snapshot (so the INSERT skipped the customer) and a sync run
    deleted it before our UPDATE (which waited for that DELETE and found nothing) — those
    customers are tagged again. Each round needs a rule run to commit in between, so a few
    rounds settle it. Returns how many rows the rounds added."""
    added = 0
    for _round in range(5):
        CustomerTag.objects.filter(customer__in=customers, tag=tag).exclude(
            source=TagSource.MANUAL).update(source=TagSource.MANUAL, rule=None, added_by=actor)
        if now is None or not _nonempty(customers.exclude(
                Exists(CustomerTag.objects.filter(customer=OuterRef("pk"), tag=tag)))):
            return added
        added += _add(customers, tag, source=TagSource.MANUAL, actor=actor,
                      expires_at=expires_at, now=now)
    raise ApplicationError(_("Tag rules kept changing %(tag)r while it was being added; "
                             "try again.") % {"tag": tag.name})


# --- Rules ----------------------------------------------------------------------------------

def _rule_condition(rule: TagRule, now: datetime, customer_ids: list[int] | None,
                    features: conditions.Features | None = None,
                    memo: dict | None = None) -> Q:
    """The rule's own condition, and in an exclusive group: not matched by a rule of higher
    priority of the same group, and not holding a manual tag of the group. With `features`
    (a batch of rules), counting leaves read the batch's per-customer table. `memo` (one per
    batch, for the same `now`, customers and features) keeps what was compiled: the batch's
    features, its check and each run then compile a rule once, while its condition is
    unchanged."""
    if memo is not None:
        key = (rule.pk, features is not None)
        kept = memo.get(key)
        if kept is not None and kept[0] == (rule.condition, rule.priority):
            return kept[1]
        q = _rule_condition(rule, now, customer_ids, features)
        memo[key] = ((rule.condition, rule.priority), q)
        return q

    def compiled(tree):
        return conditions.compile_condition(tree, now=now, customer_ids=customer_ids,
                                            features=features)

    q = compiled(rule.condition)
    group = rule.tag.group
    if group.exclusive:
        higher = (TagRule.objects.filter(tag__group=group, active=True)
                  .filter(Q(priority__lt=rule.priority)
                          | Q(priority=rule.priority, pk__lt=rule.pk))
                  .exclude(pk=rule.pk).only("condition"))
        for other in higher:
            q &= ~compiled(other.condition)
        q &= ~Q(Exists(CustomerTag.objects.filter(customer=OuterRef("pk"), exclusive_group=group,
                                                  source=TagSource.MANUAL)))
    return q


def _matching(rule: TagRule, scope, *, now: datetime, customer_ids: list[int] | None,
              features: conditions.Features | None, memo: dict | None):
    """The customers of `scope` the rule matches: joined with the batch's per-customer table
    when there is one (and the rule's leaves are among its columns), else on its own."""
    if features is not None:
        try:
            return features.join(scope).filter(
                _rule_condition(rule, now, customer_ids, features, memo))
        except conditions.FeaturesClosed:   # the rule changed since the batch began
            pass
    return scope.filter(_rule_condition(rule, now, customer_ids))


def tag_rule_run(*, rule: TagRule, trigger: str = TagRuleRun.Trigger.MANUAL,
                 customer_ids: list[int] | None = None, now: datetime | None = None,
                 features: conditions.Features | None = None,
                 memo: dict | None = None) -> TagRuleRun | None:
    """Run one rule: tag who matches, and in `sync` mode untag whom this rule tagged and who no
    longer matches. With `customer_ids` only those customers are evaluated (incremental).
    `features`: the per-customer table a batch of rules shares (`_batch_features`); `memo`: its
    compiled conditions (`_rule_condition`).

    Returns the run record, or None when another worker is running this rule right now. A run
    that changes nothing writes no tag and no history; an incremental run that changes nothing
    leaves no run record either.
    """
    started = time.monotonic()
    now = now or timezone.now()
    with transaction.atomic():
        locked = TagRule.objects.select_for_update(skip_locked=True).filter(pk=rule.pk).first()
        if locked is None:
            return None
        rule = (TagRule.objects.select_related("tag__group").get(pk=rule.pk))
        heavy_statements(None if customer_ids is None else len(customer_ids))
        scope = Customer.objects.all()
        if customer_ids is not None:
            scope = scope.filter(pk__in=customer_ids)
        matching = _matching(rule, scope, now=now, customer_ids=customer_ids,
                             features=features, memo=memo)
        # The condition is evaluated once: on PostgreSQL into a temporary table that the
        # count, the INSERT and the sync DELETE then join (an index probe each), so no plan
        # can re-run an events aggregate per customer.
        matched = materialize_ids(MATCH_TABLE, matching)
        if matched is None:
            matched = matching.count()
        else:
            matching = scope.filter(pk__in=RawSQL(f"SELECT id FROM {MATCH_TABLE}", ()))
        removed = 0
        if rule.mode == TagRule.Mode.SYNC:
            # Before the INSERT, which adds only matching rows: the same rows go, and the
            # anti-join does not read the rows a first run has just written (2.5 s for 410k).
            stale = CustomerTag.objects.filter(tag=rule.tag, rule=rule, source=TagSource.RULE,
                                               customer__in=scope).exclude(
                Exists(matching.filter(pk=OuterRef("customer_id"))))
            removed = _remove(stale, action=TagChange.Action.REMOVED, source=TagSource.RULE,
                              rule=rule, now=now, keep_manual=True)
        added = _add(matching, rule.tag, source=TagSource.RULE, rule=rule, now=now,
                     size=matched)
        run = TagRuleRun(rule=rule, trigger=trigger, started_at=now, matched=matched, added=added,
                         removed=removed,
                         duration_ms=round((time.monotonic() - started) * 1000),
                         scope_size=len(customer_ids) if customer_ids is not None else None)
        if customer_ids is None or added or removed:
            run.save()
        if customer_ids is None:
            TagRule.objects.filter(pk=rule.pk).update(last_run_at=now, last_full_run_at=now)
    logger.info("tagging.rule_run", extra={"rule": rule.pk, "matched": matched, "added": added,
                                            "removed": removed, "ms": run.duration_ms})
    return run


@contextmanager
def _batch_features(rules: list[TagRule], *, now: datetime, customer_ids: list[int] | None,
                    memo: dict | None = None):
    """One per-customer table for a batch of rules (PostgreSQL): every counting leaf of every
    rule — events of a type in a window, orders, group membership — is a column of it,
    computed in one pass over the events and one over the orders, and each rule's run joins
    it instead of aggregating the events again. It lives in the session for the batch (each
    rule still runs in its own transaction) and is dropped after. Yields None on SQLite or
    when no rule counts anything."""
    if connection.vendor != "postgresql" or not rules:
        yield None
        return
    features = conditions.Features(FEATURES_TABLE)
    for rule in rules:
        try:
            _rule_condition(rule, now, customer_ids, features, memo)
        except ApplicationError:    # a broken rule reports itself when it runs, alone
            continue
    if features.empty:
        yield None
        return
    with transaction.atomic():
        heavy_statements(None if customer_ids is None else len(customer_ids))
        features.materialize(conditions.Context(now=now, customer_ids=customer_ids),
                             keep=True)
    try:
        yield features
    finally:
        features.drop()


def tag_rules_run_due(*, now: datetime | None = None, force: bool = False) -> list[TagRuleRun]:
    """Run every active rule whose interval has passed (all of them with `force`), as one
    batch: the rules' counts come from one pass over the events and orders."""
    now = now or timezone.now()
    active = list(TagRule.objects.filter(active=True).select_related("tag__group")
                  .order_by("priority", "pk"))
    due = [rule for rule in active
           if force or rule.last_run_at is None
           or (now - rule.last_run_at).total_seconds() >= rule.interval_minutes * 60 - 30]
    # In full once a day (or when forced); otherwise only the customers a condition may have
    # changed for with time alone — the touches bring the others (crm 0019's triggers).
    partial = [] if force else [rule for rule in due if hooks.read_in_full_today(
        rule.last_full_run_at, rule.last_run_at, now)]
    full = [rule for rule in due if rule not in partial]
    runs = _run_batch(full, now=now, customer_ids=None)
    if partial:
        # Every active rule's condition: a rule of an exclusive group yields to those above it.
        since = min(rule.last_run_at for rule in partial)
        crossers = sorted(conditions.crossing_customers(
            [rule.condition for rule in active], since=since, until=now))
        if crossers:
            runs += _run_batch(partial, now=now, customer_ids=crossers)
        TagRule.objects.filter(pk__in=[rule.pk for rule in partial]).update(last_run_at=now)
    return runs


def _run_batch(rules: list[TagRule], *, now: datetime, customer_ids: list[int] | None
               ) -> list[TagRuleRun]:
    """Run the rules in order. A full run outside any transaction on PostgreSQL spreads them
    over TAG_RULE_SESSIONS database sessions (`_lanes`: rules that share an exclusive group or
    read one another's tags stay in one session, in order); inside a caller's transaction the
    other sessions would not see what it has written."""
    lanes = _lanes(rules) if (customer_ids is None and not connection.in_atomic_block
                              and connection.vendor == "postgresql") else [rules]
    if len(lanes) > 1:
        with ThreadPoolExecutor(max_workers=len(lanes)) as pool:
            parts = list(pool.map(lambda lane: _run_lane_in_thread(lane, now=now), lanes))
        done = {run.rule_id: run for part in parts for run in part}
        return [done[rule.pk] for rule in rules if rule.pk in done]
    return _run_in_order(rules, now=now, customer_ids=customer_ids)


def _run_in_order(rules: list[TagRule], *, now: datetime, customer_ids: list[int] | None
                  ) -> list[TagRuleRun]:
    runs, memo = [], {}
    with _batch_features(rules, now=now, customer_ids=customer_ids, memo=memo) as features:
        for rule in rules:
            run = tag_rule_run(rule=rule, trigger=TagRuleRun.Trigger.SCHEDULE, now=now,
                               customer_ids=customer_ids, features=features, memo=memo)
            if run is not None:
                runs.append(run)
    return runs


def _run_lane_in_thread(rules: list[TagRule], *, now: datetime) -> list[TagRuleRun]:
    """One session's share of a full run (its own connection: Django's belong to the thread)."""
    try:
        return _run_in_order(rules, now=now, customer_ids=None)
    finally:
        connection.close()


def _lanes(rules: list[TagRule]) -> list[list[TagRule]]:
    """The rules in at most TAG_RULE_SESSIONS lanes that may run at once: rules of one
    exclusive group, and a rule with the rules whose tags its condition reads, share a lane
    and keep their order; the groups so formed are spread by their rules' last full run time
    (a first run: one second each)."""
    sessions = max(1, int(getattr(settings, "TAG_RULE_SESSIONS", 1)))
    if sessions < 2 or len(rules) < 2:
        return [rules]
    parent = list(range(len(rules)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    writers: dict[int, list[int]] = {}
    groups: dict[int, int] = {}
    for i, rule in enumerate(rules):
        writers.setdefault(rule.tag_id, []).append(i)
        if rule.tag.group.exclusive:
            parent[root(i)] = root(groups.setdefault(rule.tag.group_id, i))
    ids: set[int] = set()
    names: dict[str, list[int]] = {}
    for pk, name in Tag.objects.values_list("pk", "name"):
        ids.add(pk)
        names.setdefault(name, []).append(pk)
    for i, rule in enumerate(rules):
        for leaf in conditions.leaf_nodes(rule.condition):
            if leaf.get("field") != "tag":
                continue
            refs = leaf.get("value")
            for ref in refs if isinstance(refs, list) else [refs]:
                read = [ref] if ref in ids else names.get(str(ref), [])
                for writer in (w for tag in read for w in writers.get(tag, [])):
                    parent[root(i)] = root(writer)
    cost = dict(TagRuleRun.objects.filter(rule__in=rules, scope_size__isnull=True)
                .order_by("rule_id", "-started_at").distinct("rule_id")
                .values_list("rule_id", "duration_ms"))
    components: dict[int, list[int]] = {}
    for i in range(len(rules)):
        components.setdefault(root(i), []).append(i)
    lanes: list[list[int]] = [[] for _ in range(min(sessions, len(components)))]
    load = [0] * len(lanes)
    for members in sorted(components.values(),
                          key=lambda m: -sum(cost.get(rules[i].pk, 1000) for i in m)):
        lane = load.index(min(load))
        lanes[lane].extend(members)
        load[lane] += sum(cost.get(rules[i].pk, 1000) for i in members)
    return [[rules[i] for i in sorted(lane)] for lane in lanes if lane]


_WRITES = (
    # (action, the statement writing it from the match table `m` of `_rules_run_together`,
    # what it returns, its parameters given the customers and the time), in this order: a tag
    # a sync rule takes away and another rule gives is given again, as when rules run one
    # after another.
    # An exclusive group's other tag gives way to the rule's (never a manual one: the DELETE
    # re-checks the row it deletes, as `_remove` does).
    ("replaced",
     "DELETE FROM {tags} ct USING {match} m WHERE m.group_id IS NOT NULL "
     "AND ct.customer_id = m.customer_id AND ct.exclusive_group_id = m.group_id "
     "AND ct.tag_id <> m.tag_id AND ct.source <> %s",
     "ct.customer_id, ct.tag_id, m.rule_id", lambda ids, now: [TagSource.MANUAL]),
    # A sync rule's tag leaves whom it no longer matches.
    ("removed",
     "DELETE FROM {tags} ct USING {rules} r WHERE ct.customer_id = ANY(%s) "
     "AND r.id = ct.rule_id AND r.id IN ({sync}) AND ct.tag_id = r.tag_id AND ct.source = %s "
     "AND NOT EXISTS (SELECT 1 FROM {match} m WHERE m.customer_id = ct.customer_id "
     "AND m.rule_id = ct.rule_id)",
     "ct.customer_id, ct.tag_id, ct.rule_id", lambda ids, now: [list(ids), TagSource.RULE]),
    ("added",
     "INSERT INTO {tags} (customer_id, tag_id, exclusive_group_id, source, rule_id, "
     "added_by_id, added_at, expires_at) "
     "SELECT m.customer_id, m.tag_id, m.group_id, %s, m.rule_id, NULL, %s, NULL FROM {match} m "
     "WHERE NOT EXISTS (SELECT 1 FROM {tags} h WHERE h.customer_id = m.customer_id "
     "AND h.tag_id = m.tag_id) ON CONFLICT DO NOTHING",
     "customer_id, tag_id, rule_id", lambda ids, now: [TagSource.RULE, now]),
)


def _rules_run_together(rules: list[TagRule], customer_ids: list[int], *, now: datetime,
                        features: conditions.Features | None, memo: dict) -> int:
    """Run these rules for a few customers at once (PostgreSQL, the touch handler): what each
    rule matches goes into one table of (customer, rule), and three statements (`_WRITES`: the
    exclusive groups' replacements, the sync rules' removals, the new tags) write every rule's
    changes with their history. A rule's own run (`tag_rule_run`) takes a dozen statements, and a
    handler's run changes most rules a little. The tags are those of the rules run one by one;
    a tag of an exclusive group that gives way to the group's other is recorded as replaced
    (one by one, as removed when its own sync rule happened to run first). A rule another
    worker is running right now is skipped, as there; one whose condition cannot be compiled
    runs alone, which reports it. Returns how many tags were added and removed."""
    started = time.monotonic()
    changed = 0
    qn = connection.ops.quote_name
    with transaction.atomic():
        locked = set(TagRule.objects.select_for_update(skip_locked=True)
                     .filter(pk__in=[rule.pk for rule in rules]).values_list("pk", flat=True))
        heavy_statements(len(customer_ids))
        scope = Customer.objects.filter(pk__in=customer_ids).order_by()
        parts, params, alone = [], [], []
        for rule in rules:
            if rule.pk not in locked:
                continue
            try:
                matching = _matching(rule, scope, now=now, customer_ids=customer_ids,
                                     features=features, memo=memo)
            except ApplicationError:
                alone.append(rule)
                continue
            sql, part_params = matching.values("pk").query.sql_with_params()
            group = rule.tag.group
            parts.append(f"SELECT s.id, CAST(%s AS bigint), CAST(%s AS bigint), "
                         f"CAST(%s AS bigint) FROM ({sql}) AS s(id)")
            params += [rule.pk, rule.tag_id, group.pk if group.exclusive else None,
                       *part_params]
        batch = [rule for rule in rules if rule.pk in locked and rule not in alone]
        counts: dict[tuple[str, int], int] = {}
        matched: dict[int, int] = {}
        if batch:
            materialize_rows(MATCH_TABLE, (" UNION ALL ".join(parts), params),
                             ("customer_id", "rule_id", "tag_id", "group_id"), key=2)
            names = {"tags": qn(CustomerTag._meta.db_table), "match": qn(MATCH_TABLE),
                     "rules": qn(TagRule._meta.db_table),
                     "sync": ", ".join(str(int(rule.pk)) for rule in batch
                                       if rule.mode == TagRule.Mode.SYNC) or "NULL"}
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT rule_id, count(*) FROM {names['match']} GROUP BY 1")
                matched = dict(cursor.fetchall())
                for action, write, returning, write_params in _WRITES:
                    statement = (
                        f"WITH w AS ({write.format(**names)} RETURNING {returning}), "
                        f"h AS ({_history_sql('w', by_rule=True)}) "
                        f"SELECT w.rule_id, count(*) FROM w GROUP BY 1")
                    cursor.execute(statement, [*write_params(customer_ids, now), action,
                                               TagSource.RULE, now])
                    counts.update({(action, rule_id): n for rule_id, n in cursor.fetchall()})
        # (each rule's run record carries the time of the whole batch: they ran as one)
        duration = round((time.monotonic() - started) * 1000)
        runs = []
        for rule in batch:
            added, removed = counts.get(("added", rule.pk), 0), counts.get(("removed", rule.pk), 0)
            if added or removed:
                runs.append(TagRuleRun(rule=rule, trigger=TagRuleRun.Trigger.INCREMENTAL,
                                       started_at=now, matched=matched.get(rule.pk, 0),
                                       added=added, removed=removed, duration_ms=duration,
                                       scope_size=len(customer_ids)))
                changed += added + removed
        TagRuleRun.objects.bulk_create(runs)
    for rule in alone:
        run = tag_rule_run(rule=rule, trigger=TagRuleRun.Trigger.INCREMENTAL,
                           customer_ids=customer_ids, now=now)
        if run is not None:
            changed += run.added + run.removed
    return changed


def _holds(tag_id: int, *, given_by: TagRule | None = None) -> RawSQL:
    """Whether the customer holds the tag (given by this rule): an EXISTS written out, as the
    ORM would say it — compiled at every check of every rule, the ORM's own took a handler's
    run longer to build than to run. It names the customers table itself, so it serves only a
    query on that table unaliased, as the check is (the `tag` leaf, `tagging.conditions.holds`,
    stays an ORM Exists: conditions are compiled inside other queries too)."""
    qn = connection.ops.quote_name
    sql = (f"EXISTS (SELECT 1 FROM {qn(CustomerTag._meta.db_table)} h WHERE h.customer_id = "
           f"{qn(Customer._meta.db_table)}.{qn('id')} AND h.tag_id = %s")
    params: list = [tag_id]
    if given_by is not None:
        sql += " AND h.rule_id = %s AND h.source = %s"
        params += [given_by.pk, TagSource.RULE]
    return RawSQL(sql + ")", params, output_field=BooleanField())


def _rules_changing(rules: list[TagRule], customer_ids: list[int], *, now: datetime,
                    features: conditions.Features | None, memo: dict) -> list[TagRule]:
    """The rules that would tag or untag one of these customers, found in one statement: a
    handful of customers touched every few seconds would otherwise cost each rule a dozen
    statements (its lock, its match table, its checks) to change nothing. A rule whose
    condition cannot be compiled here counts as changing: its own run reports it. What a
    rule's writes change for a later rule reaches this handler as touches, on its next run."""
    scope = Customer.objects.filter(pk__in=customer_ids).order_by()
    if features is not None:
        scope = features.join(scope)
    checks, changing = {}, set()
    for rule in rules:
        try:
            matches = _rule_condition(rule, now, customer_ids, features, memo)
        except (ApplicationError, conditions.FeaturesClosed):
            changing.add(rule.pk)
            continue
        holds = _holds(rule.tag_id)
        checks[f"a{rule.pk}"] = Count("pk", filter=matches & ~Q(holds))
        if rule.mode == TagRule.Mode.SYNC:
            given = _holds(rule.tag_id, given_by=rule)
            # (given, less given and matching: a condition that is unknown for a customer
            # does not match, as in the run)
            checks[f"g{rule.pk}"] = Count("pk", filter=Q(given))
            checks[f"k{rule.pk}"] = Count("pk", filter=Q(given) & matches)
    counts = {}
    if checks:
        with transaction.atomic():
            heavy_statements(len(customer_ids))     # (JIT off: a few hundred customers)
            counts = scope.aggregate(**checks)
    for rule in rules:
        pk = rule.pk
        if counts.get(f"a{pk}") or counts.get(f"g{pk}", 0) > counts.get(f"k{pk}", 0):
            changing.add(pk)
    return [rule for rule in rules if rule.pk in changing]


def touch_skips() -> set[str]:
    """The touches the tag handler need not read (crm.hooks.touch_skips): the stages' — the
    models write them at every move — unless an active rule's condition reads stages. The
    tags' own it always reads: a rule may read the tags another rule gives."""
    reads = conditions.field_names(list(TagRule.objects.filter(active=True)
                                        .values_list("condition", flat=True)))
    return set() if "stage" in reads else {"lifecycle"}


# How many times the handler re-reads the customers its own tags touched, for the rules that
# read tags (a rule tagging those another tags), before leaving the rest to its next run.
SETTLE_PASSES = 3


def tag_rules_run_for_customers(customer_ids: list[int] | None) -> int:
    """Re-evaluate every active rule for just these customers (new events or orders) — or for
    everyone (None), when so many were touched that a full pass costs less (crm.hooks). On
    PostgreSQL the incremental path then re-checks the customers its own tags changed against
    the rules that read tags, until nothing more changes, and answers `hooks.Settled`: its own
    writes need no other run."""
    changed = 0
    now = timezone.now()
    rules = list(TagRule.objects.filter(active=True).select_related("tag__group")
                 .order_by("priority", "pk"))
    settles = customer_ids is not None and connection.vendor == "postgresql"
    memo: dict = {}
    with _batch_features(rules, now=now, customer_ids=customer_ids, memo=memo) as features:
        todo, scope = rules, customer_ids
        if customer_ids is not None:
            todo = _rules_changing(rules, customer_ids, now=now, features=features, memo=memo)
            if not todo:
                return hooks.Settled(0) if settles else 0
        # What its own writes may change: the rules that read tags, and a rule giving a tag
        # another rule gives too (a sync rule's removal leaves it to give again).
        givers = Counter(rule.tag_id for rule in rules)
        readers = [rule for rule in rules if givers[rule.tag_id] > 1
                   or "tag" in conditions.field_names([rule.condition])]
        mark = hooks.own_touches_since()[1] if settles else 0
        for _pass in range(SETTLE_PASSES):
            if not settles:
                for rule in todo:
                    run = tag_rule_run(rule=rule, trigger=TagRuleRun.Trigger.INCREMENTAL,
                                       customer_ids=scope, now=now, features=features, memo=memo)
                    if run is not None:
                        changed += run.added + run.removed
                return changed
            changed += _rules_run_together(todo, scope, now=now, features=features, memo=memo)
            # (the customers it wrote are among those touched: the shared counts cover them,
            # and conditions compiled for all of them hold for a part)
            scope, mark = hooks.own_touches_since(mark)
            todo = (_rules_changing(readers, scope, now=now, features=features, memo=memo)
                    if scope and readers else [])
            if not todo:
                return hooks.Settled(changed)
    return changed


def orphans_sweep() -> int:
    """Delete the tags of customers that no longer exist (nightly, set-based).

    Deleting a customer deletes their tags and history (Django's on_delete), but a rule run
    that read the customer just before the deletion committed may still write a tag for them:
    the table carries no database foreign key (see CustomerTag)."""
    gone = ~Exists(Customer.objects.filter(pk=OuterRef("customer_id")))
    tags, _ = CustomerTag.objects.filter(gone).delete()
    history, _ = TagChange.objects.filter(gone).delete()
    return tags + history


# --- Expiry, rename, merge, delete ----------------------------------------------------------

@transaction.atomic
def tags_expire(*, now: datetime | None = None) -> int:
    """Remove every tag whose expiry has passed (tags must stay fresh)."""
    now = now or timezone.now()
    return _remove(CustomerTag.objects.filter(expires_at__lte=now),
                   action=TagChange.Action.EXPIRED, source=TagSource.SYNC, now=now)


@transaction.atomic
def tag_merge(*, source: Tag, target: Tag, actor) -> Change:
    """Move every holder of `source` to `target`, then delete `source`; history keeps both."""
    if source.pk == target.pk:
        raise ApplicationError(_("into: a tag cannot be merged into itself."))
    now = timezone.now()
    holders = Customer.objects.filter(Exists(CustomerTag.objects.filter(
        customer=OuterRef("pk"), tag=source)))
    added = _add(holders, target, source=TagSource.MANUAL, actor=actor, now=now)
    removed = _remove(CustomerTag.objects.filter(tag=source), action=TagChange.Action.MERGED,
                      source=TagSource.MANUAL, actor=actor, now=now)
    TagRule.objects.filter(tag=source).update(tag=target)
    audit.record("tag.merge", target=target, actor=actor,
                 summary=f"{source.name} → {target.name}",
                 data={"source": source.name, "holders_moved": added})
    source.delete()
    return Change(added=added, removed=removed)


@transaction.atomic
def tag_delete(*, tag: Tag, actor) -> int:
    """Delete a tag; each holder's history records that it went and why."""
    removed = _remove(CustomerTag.objects.filter(tag=tag), action=TagChange.Action.DELETED,
                      source=TagSource.MANUAL, actor=actor, now=timezone.now())
    audit.record("tag.delete", target=tag, actor=actor, summary=tag.name,
                 data={"group": tag.group.name, "holders": removed})
    tag.delete()
    return removed


@transaction.atomic
def tag_save(*, tag: Tag | None, **fields) -> Tag:
    """Create or change a tag. A tag moved to another group takes its holders along: into an
    exclusive group only when none of them holds another tag of that group already."""
    tag = tag or Tag()
    old_group_id = tag.group_id
    for name, value in fields.items():
        setattr(tag, name, value)
    moved = tag.pk is not None and tag.group_id != old_group_id
    group = tag.group
    if moved and group.exclusive:
        clash = CustomerTag.objects.filter(tag=tag).filter(Exists(
            CustomerTag.objects.filter(customer=OuterRef("customer"), tag__group=group)))
        if clash.exists():
            raise ApplicationError(
                _("group: some customers holding this tag already hold another tag of the "
                  "exclusive group %(group)r; remove one of them first.") % {"group": group.name})
    tag.save()
    if moved:
        CustomerTag.objects.filter(tag=tag).update(
            exclusive_group=group if group.exclusive else None)
    audit.record("tag.save", target=tag, summary=f"{group.name}: {tag.name}",
                 data={"fields": sorted(fields)})
    return tag


@transaction.atomic
def tag_group_save(*, group: TagGroup | None, **fields) -> TagGroup:
    group = group or TagGroup()
    becoming_exclusive = fields.get("exclusive") and not group.exclusive
    for name, value in fields.items():
        setattr(group, name, value)
    group.full_clean()
    if becoming_exclusive and group.pk:
        clash = (CustomerTag.objects.filter(tag__group=group).values("customer_id")
                 .annotate(n=Count("id")).filter(n__gt=1).exists())
        if clash:
            raise ApplicationError(_("exclusive: some customers hold several tags of this group; "
                                     "remove the extra tags first."))
    group.save()
    CustomerTag.objects.filter(tag__group=group).update(
        exclusive_group=group if group.exclusive else None)
    audit.record("tag_group.save", target=group, summary=group.name,
                 data={"fields": sorted(fields)})
    return group


def _checked_condition(condition, name: str = "condition"):
    try:
        conditions.validate(condition)
    except conditions.ConditionError as exc:
        raise ApplicationError(f"{name}.{exc.message}" if exc.path else f"{name}: {exc.message}",
                               extra=exc.extra) from exc
    return condition


@transaction.atomic
def tag_rule_save(*, rule: TagRule | None, **fields) -> TagRule:
    """Create or change a tag rule; its condition is checked here, so a rule that could only
    fail when it runs is never stored."""
    rule = rule or TagRule()
    for name, value in fields.items():
        setattr(rule, name, value)
    _checked_condition(rule.condition)
    rule.full_clean()
    rule.save()
    audit.record("tag_rule.save", target=rule, summary=rule.name,
                 data={"fields": sorted(fields)})
    return rule


@transaction.atomic
def segment_save(*, segment: Segment | None, actor, **fields) -> Segment:
    segment = segment or Segment(created_by=actor)
    for name, value in fields.items():
        setattr(segment, name, value)
    _checked_condition(segment.condition)
    segment.full_clean()
    segment.save()
    audit.record("segment.save", target=segment, actor=actor, summary=segment.name,
                 data={"fields": sorted(fields)})
    return segment


def segment_delete(*, segment: Segment, actor=None) -> None:
    """Delete a saved segment; one that a campaign sends to is kept, and the error says which."""
    try:
        with transaction.atomic():
            # Written first (the row still has its id) and rolled back with a refused delete.
            audit.record("segment.delete", target=segment, actor=actor, summary=segment.name,
                         data={"condition": segment.condition})
            segment.delete()
    except ProtectedError as exc:
        names = sorted({str(item) for item in exc.protected_objects})
        raise ApplicationError(
            _("The segment “%(segment)s” is the audience of %(names)s; it cannot be deleted "
              "while they use it.") % {"segment": segment.name,
                                       "names": ", ".join(f"“{n}”" for n in names)},
            extra={"used_by": names}) from exc


# --- Bulk jobs ------------------------------------------------------------------------------

def bulk_tag_start(*, actor, customers, add: list[Tag], remove: list[Tag],
                   condition=None, customer_ids=None) -> tuple[BulkTagJob, Change | None]:
    """Small sets are changed at once; larger ones become a background job with progress."""
    _check_exclusive(add)
    total = customers.count()
    job = BulkTagJob(actor=actor, add=[t.pk for t in add], remove=[t.pk for t in remove],
                     condition=condition, customer_ids=customer_ids, total=total)
    _audit_tags(actor=actor, add=add, remove=remove, change=Change(), customers=total)
    if total <= SYNC_BATCH:
        change = customers_tags_change(customers=customers, add=add, remove=remove, actor=actor,
                                       audited=False)
        job.status = BulkTagJob.Status.DONE
        job.processed, job.added, job.removed = total, change.added, change.removed
        job.save()
        return job, change
    job.save()
    from tagging.tasks import run_bulk_tag_job

    transaction.on_commit(lambda: run_bulk_tag_job.delay(job.pk))
    return job, None


def bulk_tag_job_run(*, job_id: int) -> BulkTagJob:
    """Work through the job in primary-key chunks, committing progress after each. Each chunk
    locks the job row and reads its progress afresh, so a job resumed by the sweeper while a
    slow worker still runs it is never processed twice, and a job whose worker died resumes
    where it stopped."""
    from crm.selectors import customer_set

    job = BulkTagJob.objects.select_related("actor").get(pk=job_id)
    add = list(Tag.objects.select_related("group").filter(pk__in=job.add))
    remove = list(Tag.objects.select_related("group").filter(pk__in=job.remove))
    customers = customer_set(user=job.actor, condition=job.condition,
                             customer_ids=job.customer_ids)
    try:
        while True:
            with transaction.atomic():
                job = BulkTagJob.objects.select_for_update().get(pk=job_id)
                if job.status in (BulkTagJob.Status.DONE, BulkTagJob.Status.FAILED):
                    return job
                upper = list(customers.filter(pk__gt=job.last_customer_id).order_by("pk")
                             .values_list("pk", flat=True)[SYNC_BATCH - 1:SYNC_BATCH])
                chunk = customers.filter(pk__gt=job.last_customer_id)
                if upper:
                    chunk = chunk.filter(pk__lte=upper[0])
                size = chunk.count()
                change = customers_tags_change(customers=chunk, add=add, remove=remove,
                                               actor=job.actor, audited=False)
                job.status = BulkTagJob.Status.RUNNING
                job.processed += size
                job.added += change.added
                job.removed += change.removed
                if upper:
                    job.last_customer_id = upper[0]
                else:
                    job.status = BulkTagJob.Status.DONE
                job.save()
            if not upper:
                return job
    except Exception as exc:
        BulkTagJob.objects.filter(pk=job_id).update(status=BulkTagJob.Status.FAILED,
                                                    error=str(exc)[:2000])
        raise


def bulk_tag_jobs_resume(*, stale_after_seconds: int = 300) -> list[int]:
    """Job ids left queued or running without progress (a lost broker message, a dead worker),
    for the sweeper to enqueue again."""
    cutoff = timezone.now() - timedelta(seconds=stale_after_seconds)
    return list(BulkTagJob.objects.filter(
        status__in=[BulkTagJob.Status.QUEUED, BulkTagJob.Status.RUNNING],
        updated_at__lt=cutoff).values_list("pk", flat=True))


# --- The customer list's extension points (crm.listing) --------------------------------------

def _segment_choices() -> list[tuple[int, str]]:
    return list(Segment.objects.order_by("name").values_list("pk", "name"))


def _segment_condition(segment_id: int):
    return Segment.objects.filter(pk=segment_id).values_list("condition", flat=True).first()


def _count_from_index(*, user, condition):
    """A customer list's total from the segment index (as of its build), or None."""
    from crm.listing import CountAnswer
    from tagging import segment_index

    answer = segment_index.preview(condition, user=user, sample_size=0)
    return CountAnswer(answer.count, answer.as_of) if answer is not None else None


def _bulk_tag_summary(job: BulkTagJob) -> str:
    return _("%(added)d tags added, %(removed)d removed for %(n)d customers") % {
        "added": job.added, "removed": job.removed, "n": job.processed}


def _bulk_tag_action_start(*, actor, customers, condition, customer_ids, params):
    from crm.listing import BulkStarted

    refs = {key: [int(v) if str(v).isdigit() else v for v in params.get(key) or []]
            for key in ("add", "remove")}
    add = tags_resolve(refs["add"], path="add")
    remove = tags_resolve(refs["remove"], path="remove")
    if not add and not remove:
        raise ApplicationError(_("tags: choose a tag to add or to remove"))
    job, change = bulk_tag_start(actor=actor, customers=customers, add=add, remove=remove,
                                 condition=condition, customer_ids=customer_ids)
    return BulkStarted(job_id=job.pk, done=change is not None,
                       summary=_bulk_tag_summary(job) if change is not None else "")


def _bulk_tag_action_progress(*, user, job_id: int):
    from core import access
    from crm.listing import BulkProgress

    jobs = BulkTagJob.objects.filter(pk=job_id)
    if not access.is_admin(user):
        jobs = jobs.filter(actor=user)
    job = jobs.first()
    if job is None:
        return None
    return BulkProgress(status=job.status, status_label=job.get_status_display(),
                        total=job.total, processed=job.processed,
                        summary=_bulk_tag_summary(job), error=job.error)


def register_customer_list_extensions() -> None:
    from crm import listing

    listing.segment_sources.register("segments", listing.SegmentSource(
        choices=_segment_choices, condition=_segment_condition))
    listing.customer_counters.register("segment_index", _count_from_index)
    from tagging import segment_index

    listing.index_summaries.register("segment_index", segment_index.summarize)
    listing.bulk_actions.register("tags", listing.BulkAction(
        start=_bulk_tag_action_start, progress=_bulk_tag_action_progress))

