"""The condition language: one JSON tree describing a set of customers, compiled into one `Q`.

    {"all": [...]} | {"any": [...]} | {"not": node} | {"field": f, "op": o, "value": v, ...}

Tag rules, stage entry rules, SOP filters, campaign audiences and segments all use it. Apps
contribute fields in `AppConfig.ready()` (`register_field`); this module knows no app. Every
field compiles to plain lookups or `Exists` / `IN (… GROUP BY … HAVING …)` subqueries, so each
use is one set-based query on PostgreSQL and SQLite alike. A bad node is refused with its path:
`all[2].op: unknown operator 'older_than'`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import connection
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, pgettext_lazy

from core.exceptions import ApplicationError
from core.registry import Registry

OPERATORS = (
    "eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between", "contains", "is_null",
    "within_days", "older_than_days", "count_gte", "count_lte", "sum_gte",
    "any", "all", "none",
)
# How the segment builder names each operator (`describe()`).
OPERATOR_LABELS = {
    "eq": pgettext_lazy("condition operator", "is"),
    "ne": pgettext_lazy("condition operator", "is not"),
    "in": pgettext_lazy("condition operator", "is one of"),
    "not_in": pgettext_lazy("condition operator", "is none of"),
    "gt": pgettext_lazy("condition operator", "more than"),
    "gte": pgettext_lazy("condition operator", "at least"),
    "lt": pgettext_lazy("condition operator", "less than"),
    "lte": pgettext_lazy("condition operator", "at most"),
    "between": pgettext_lazy("condition operator", "between"),
    "contains": pgettext_lazy("condition operator", "contains"),
    "is_null": pgettext_lazy("condition operator", "is empty"),
    "within_days": pgettext_lazy("condition operator", "within the last … days"),
    "older_than_days": pgettext_lazy("condition operator", "at least … days ago"),
    "count_gte": pgettext_lazy("condition operator", "count at least"),
    "count_lte": pgettext_lazy("condition operator", "count at most"),
    "sum_gte": pgettext_lazy("condition operator", "amount at least"),
    "any": pgettext_lazy("condition operator", "any of"),
    "all": pgettext_lazy("condition operator", "all of"),
    "none": pgettext_lazy("condition operator", "none of"),
}
MAX_DEPTH = 12
MAX_NODES = 300


class ConditionError(ApplicationError):
    """A condition that cannot be compiled; `path` points at the bad node."""

    def __init__(self, path: str, message: str, *, prefixed: bool = False) -> None:
        full = f"{path}: {message}" if path and not prefixed else message
        super().__init__(full, extra={"path": path})
        self.path = path


@dataclass
class Leaf:
    """A validated leaf, handed to its field's compiler."""

    field: str
    op: str
    value: Any
    params: dict[str, Any]
    path: str
    key: str = ""   # the part after the prefix, for prefix fields such as attributes.<key>


@dataclass
class Context:
    """What a compilation may depend on besides the tree: the moment it is evaluated at, the
    values of `{"threshold": name}` references, and the customers the result will be
    intersected with. Fields restrict their subqueries to that scope (`scope()`), so evaluating
    a chunk of customers or the few an event touched costs what those customers cost, not a pass
    over every event."""

    now: datetime = field(default_factory=timezone.now)
    thresholds: dict[str, Any] = field(default_factory=dict)
    customer_ids: list[int] | None = None
    pk_range: tuple[int, int | None] | None = None   # (exclusive low, inclusive high or None)
    features: Features | None = None

    def scope(self, rows, column: str = "customer_id"):
        if self.customer_ids is not None:
            rows = rows.filter(**{f"{column}__in": self.customer_ids})
        if self.pk_range is not None:
            low, high = self.pk_range
            rows = rows.filter(**{f"{column}__gt": low})
            if high is not None:
                rows = rows.filter(**{f"{column}__lte": high})
        return rows


class FeaturesClosed(RuntimeError):
    """A leaf needs a column the materialized `Features` table does not have."""


class Features:
    """Per-customer counts that several leaves need, computed in one pass per source table.

    Compiled normally, every counting leaf (`event` count_gte 3, `order` sum_gte 2000, …) is a
    subquery of its own, so three stage models with five such leaves each read the same events
    fifteen times. With a `Features` in the context, fields hand their counted row sets here
    instead (`counted()`): each becomes one `COUNT(*) FILTER (WHERE …)` column of a
    per-customer aggregate of its source table, and `materialize()` stores, in one temporary
    table keyed by customer (PostgreSQL), one row per customer of the scope with every column
    of every source. A leaf is then a comparison of a column of that table, which the query
    joins once (`join()`): one row of the table per customer, whatever the number of leaves.

    The caller compiles every condition first (so every column is known), materializes in the
    same transaction with the same scope, and runs its statements on `join(queryset)`.
    """

    def __init__(self, table: str) -> None:
        self.table = table
        self.materialized = False
        self._columns: dict[type, list[tuple[str, Any]]] = {}
        self._names: dict[tuple[type, str], str] = {}
        self._rows: dict[type, list[tuple[str, list] | None]] = {}

    @property
    def empty(self) -> bool:
        return not self._columns

    def counted(self, model: type, measure: Any, value: Any, key: str, ctx: Context,
                rows: tuple[str, list] | None = None) -> Q:
        """The customers whose `measure` reaches `value`. `key` names the measure (what it
        counts, over which rows): compiled again — another model's stage, another chunk — it
        reuses its column. `rows` = (field, values): the measure counts only rows whose field
        is one of the values (events of these types, paid orders); when every column of a
        table says so for the same field, the pass reads only those rows — from the index, for
        event types. After `materialize()` no new column may appear."""
        from django.db.models import BooleanField
        from django.db.models.expressions import RawSQL

        name = self._names.get((model, key))
        if name is None:
            if self.materialized:
                raise FeaturesClosed(f"Features: {key} is new after materialize()")
            name = self._names[(model, key)] = f"f{len(self._names)}"
            self._columns.setdefault(model, []).append((name, measure))
            self._rows.setdefault(model, []).append(rows)
        column = f"{connection.ops.quote_name(self.table)}.{connection.ops.quote_name(name)}"
        # A customer without rows has NULL here (a count of 0, a sum of nothing): false, and
        # still false — not unknown — under a NOT.
        return Q(RawSQL(f"COALESCE({column} >= %s, FALSE)", [value],
                        output_field=BooleanField()))

    def join(self, queryset, pk_range: tuple[int, int | None] | None = None):
        """`queryset` (of customers) joined with the materialized table, one row each; with
        `pk_range`, the table is read for that range of customers only."""
        if self.empty:
            return queryset
        table = connection.ops.quote_name(self.table)
        customers = connection.ops.quote_name(queryset.model._meta.db_table)
        where, params = [f"{table}.customer_id = {customers}.id"], []
        if pk_range is not None:
            where.append(f"{table}.customer_id > %s")
            params.append(pk_range[0])
            if pk_range[1] is not None:
                where.append(f"{table}.customer_id <= %s")
                params.append(pk_range[1])
        return queryset.extra(tables=[self.table], where=where, params=params)

    def materialize(self, ctx: Context, *, keep: bool = False) -> int:
        """Store the counts of every customer of `ctx`'s scope; returns the number of rows.
        The table is dropped at COMMIT, or with `keep` when `drop()` is called (it serves
        several transactions of the session then)."""
        from core.db import materialize_rows

        self.materialized = True
        if self.empty:
            return 0
        qn = connection.ops.quote_name
        customer_model = next(iter(self._columns))._meta.get_field("customer").related_model
        customers = ctx.scope(customer_model.objects.order_by(), "pk")
        select, params = customers.values("pk").query.sql_with_params()
        names: list[str] = []
        joins, join_params = [], []
        for index, (model, columns) in enumerate(self._columns.items()):
            rows = ctx.scope(model.objects.all())
            narrow = self._rows[model]
            if all(narrow) and len({f for f, _v in narrow}) == 1:   # read only what they count
                values = sorted({str(v) for _f, vs in narrow for v in vs})
                rows = rows.filter(**{f"{narrow[0][0]}__in": values})
            rows = rows.order_by().values("customer_id").annotate(**dict(columns))
            rows = self._scope_joined_customers(model, rows, ctx)
            sql, sql_params = rows.query.sql_with_params()
            alias = f"a{index}"
            joins.append(f"LEFT JOIN ({sql}) AS {alias} ON {alias}.customer_id = c.id")
            join_params.extend(sql_params)
            names.extend(f"{alias}.{qn(name)}" for name, _m in columns)
        statement = (f"SELECT c.id, {', '.join(names)} FROM ({select}) AS c(id) "
                     f"{' '.join(joins)}")
        columns = ["customer_id", *(n for cols in self._columns.values() for n, _m in cols)]
        return materialize_rows(self.table, (statement, [*params, *join_params]), columns,
                                keep=keep)

    def drop(self) -> None:
        if self.materialized and not self.empty:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS {connection.ops.quote_name(self.table)}")

    @staticmethod
    def _scope_joined_customers(model: type, rows, ctx: Context):
        """A column such as "since joining" joins the customers table; repeat the scope on it,
        or the planner hashes every customer for each chunk (PostgreSQL does not carry a range
        across a join)."""
        customers = model._meta.get_field("customer").related_model._meta.db_table
        table = connection.ops.quote_name(customers)
        if f"JOIN {table} ON" not in str(rows.query):
            return rows
        where, params = [], []
        if ctx.customer_ids is not None:
            where.append(f"{table}.id = ANY(%s)")
            params.append(list(ctx.customer_ids))
        if ctx.pk_range is not None:
            where.append(f"{table}.id > %s")
            params.append(ctx.pk_range[0])
            if ctx.pk_range[1] is not None:
                where.append(f"{table}.id <= %s")
                params.append(ctx.pk_range[1])
        return rows.extra(where=where, params=params) if where else rows


@dataclass(frozen=True)
class ConditionField:
    """A field of the language. `compile` turns a validated leaf into a `Q` on customers.

    `params` lists the extra keys a leaf may carry (`type`, `within_days`, …) with a JSON
    Schema each; `validate` checks the leaf further and may normalise `leaf.value`.
    """

    name: str
    ops: tuple[str, ...]
    compile: Callable[[Leaf, Context], Q]
    description: str = ""
    value_schema: dict[str, Any] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    validate: Callable[[Leaf], None] | None = None
    prefix: bool = False      # name is a prefix: "attributes." matches "attributes.level"
    # What the segment builder shows (`describe()`); a field without them still appears there,
    # named by its key, with a text box.
    label: Any = ""           # a (lazy) translated name
    section: Any = ""         # where the builder's field picker lists it
    kind: str = ""            # the value's widget: text, choice, bool, integer, number, datetime
    choices: Callable[[], list[dict[str, Any]]] | None = None   # [{"value", "label", …}]
    param_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → label, kind,
    #                                            choices (a callable), required, multiple
    # The customers for whom a leaf may change value between two moments by time alone (a
    # window of days sliding over their rows, an expiry passing): `crossers(leaf, since,
    # until)` gives a query of their ids, or None when the leaf does not move with time.
    crossers: Callable[[Leaf, datetime, datetime], Any] | None = None


fields: Registry[ConditionField] = Registry("condition_fields")


def register_field(spec: ConditionField) -> ConditionField:
    return fields.register(spec.name, spec)


def _lookup_field(name: str) -> tuple[ConditionField | None, str]:
    spec = fields.get(name)
    if spec is not None and not spec.prefix:
        return spec, ""
    for key, candidate in fields.items():
        if candidate.prefix and name.startswith(key) and len(name) > len(key):
            return candidate, name[len(key):]
    return None, ""


# --- Validation ----------------------------------------------------------------------------

def _join(path: str, part: str) -> str:
    if part.startswith("["):
        return f"{path}{part}"
    return f"{path}.{part}" if path else part


def validate(tree: Any, *, thresholds: dict[str, Any] | None = None) -> Any:
    """Check a whole tree; raise ConditionError naming the first bad node's path. Threshold
    references are checked against `thresholds` when given."""
    if thresholds is not None:
        tree = resolve_thresholds(tree, thresholds)
    counter = [0]
    _validate(tree, "", 0, counter)
    return tree


def _validate(node: Any, path: str, depth: int, counter: list[int]) -> None:
    counter[0] += 1
    if counter[0] > MAX_NODES:
        raise ConditionError(path, _("too many nodes (at most %(n)d)") % {"n": MAX_NODES})
    if depth > MAX_DEPTH:
        raise ConditionError(path, _("nested too deeply (at most %(n)d levels)")
                             % {"n": MAX_DEPTH})
    if not isinstance(node, dict):
        raise ConditionError(path, _("must be an object"))
    groups = [k for k in ("all", "any", "not") if k in node]
    if groups:
        if len(node) != 1:
            raise ConditionError(path, _("a group node has exactly one key (all, any or not)"))
        key = groups[0]
        child = node[key]
        if key == "not":
            _validate(child, _join(path, "not"), depth + 1, counter)
            return
        if not isinstance(child, list) or not child:
            raise ConditionError(_join(path, key), _("must be a non-empty list"))
        for index, item in enumerate(child):
            _validate(item, f"{_join(path, key)}[{index}]", depth + 1, counter)
        return
    _to_leaf(node, path)


def _to_leaf(node: dict, path: str) -> Leaf:
    if "field" not in node:
        raise ConditionError(path, _("expected 'all', 'any', 'not' or a leaf with 'field'"))
    name = node["field"]
    if not isinstance(name, str):
        raise ConditionError(_join(path, "field"), _("must be a string"))
    spec, key = _lookup_field(name)
    if spec is None:
        raise ConditionError(_join(path, "field"), _("unknown field %(name)r; known: %(known)s")
                             % {"name": name, "known": ", ".join(known_field_names())})
    op = node.get("op")
    if op not in OPERATORS:
        raise ConditionError(_join(path, "op"), _("unknown operator %(op)r") % {"op": op})
    if op not in spec.ops:
        raise ConditionError(_join(path, "op"), _("operator %(op)r does not apply to field "
                                                  "%(field)r; use one of %(ops)s")
                             % {"op": op, "field": name, "ops": ", ".join(spec.ops)})
    allowed = {"field", "op", "value", *spec.params}
    for extra in node:
        if extra not in allowed:
            raise ConditionError(_join(path, extra), _("unexpected key for field %(field)r")
                                 % {"field": name})
    params = {k: node[k] for k in spec.params if k in node}
    leaf = Leaf(field=name, op=op, value=node.get("value"), params=params, path=path, key=key)
    for pname in ("within_days",):
        if pname in params:
            params[pname] = days_value(params[pname], _join(path, pname))
    if spec.validate:
        spec.validate(leaf)
    return leaf


def to_leaf(node: dict, path: str = "") -> Leaf:
    """The validated `Leaf` of a leaf node (its value normalised as its field's compiler gets
    it), for evaluators other than the SQL compiler (tagging.segment_index)."""
    return _to_leaf(node, path)


def _schema_kind(schema: dict[str, Any]) -> str:
    kinds = {schema.get("type")} | {s.get("type") for s in schema.get("oneOf", [])}
    for kind, name in (("boolean", "bool"), ("integer", "integer"), ("number", "number")):
        if kinds == {kind}:
            return name
    return "text"


def _param_description(name: str, schema: dict[str, Any], info: dict[str, Any]) -> dict:
    choices = info.get("choices")
    return {"name": name, "label": str(info.get("label") or name),
            "kind": info.get("kind") or _schema_kind(schema),
            "choices": choices() if choices else None,
            "required": bool(info.get("required")), "multiple": bool(info.get("multiple"))}


def describe() -> dict[str, Any]:
    """Every field of the language as the segment builder draws it: label, section, the
    operators with their names, the value's widget and choices, and the extra keys a leaf may
    carry. The registry fills it, so a field registered in code appears in the builder."""
    described = []
    for name, spec in fields.items():
        described.append({
            "name": name, "label": str(spec.label or name), "section": str(spec.section or ""),
            "description": str(spec.description), "prefix": spec.prefix,
            "kind": spec.kind or _schema_kind(spec.value_schema),
            "ops": list(spec.ops),
            "choices": spec.choices() if spec.choices else None,
            "params": [_param_description(p, schema, spec.param_info.get(p, {}))
                       for p, schema in spec.params.items()],
        })
    return {"operators": {op: str(OPERATOR_LABELS[op]) for op in OPERATORS},
            "groups": {"all": str(gettext_lazy("all of these")),
                       "any": str(gettext_lazy("any of these")),
                       "not": str(gettext_lazy("not"))},
            "fields": described}


def known_field_names() -> list[str]:
    return sorted(f"{name}<key>" if spec.prefix else name for name, spec in fields.items())


# --- Compilation ---------------------------------------------------------------------------

def compile_condition(tree: Any, *, now: datetime | None = None,
                      thresholds: dict[str, Any] | None = None,
                      customer_ids: list[int] | None = None,
                      pk_range: tuple[int, int | None] | None = None,
                      features: Features | None = None) -> Q:
    """The `Q` selecting the customers the tree describes (validates first).

    `customer_ids` / `pk_range` promise that the caller intersects the result with those
    customers; subqueries are restricted to them. `thresholds` resolves `{"threshold": name}`.
    With `features`, counting leaves read per-customer counts the caller materializes (see
    `Features`).
    """
    ctx = Context(now=now or timezone.now(), thresholds=thresholds or {},
                  customer_ids=customer_ids, pk_range=pk_range, features=features)
    tree = resolve_thresholds(tree, ctx.thresholds)
    validate(tree)
    return _compile(tree, "", ctx)


def threshold_names(tree: Any) -> set[str]:
    """Names of the thresholds a tree refers to."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if set(node) == {"threshold"} and isinstance(node["threshold"], str):
                found.add(node["threshold"])
            else:
                stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def leaf_nodes(tree: Any) -> list[dict]:
    """The leaves (`{"field": …}` nodes) of a tree — or of a list of trees."""
    found: list[dict] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("field"), str):
                found.append(node)
            for key in ("all", "any", "not"):
                if key in node:
                    stack.append(node[key])
        elif isinstance(node, list):
            stack.extend(node)
    return found


def field_names(tree: Any) -> set[str]:
    """Names of the fields a (validated) tree's leaves test — or a list of trees'."""
    return {leaf["field"] for leaf in leaf_nodes(tree)}


def resolve_thresholds(tree: Any, thresholds: dict[str, Any], path: str = "") -> Any:
    """A copy of the tree with every `{"threshold": name}` replaced by its value."""
    if isinstance(tree, dict):
        if set(tree) == {"threshold"}:
            name = tree["threshold"]
            if not isinstance(name, str) or name not in thresholds:
                raise ConditionError(path, _("unknown threshold %(name)r; the model has: "
                                             "%(known)s") % {"name": name, "known":
                                                             ", ".join(sorted(thresholds)) or "-"})
            return thresholds[name]
        return {k: resolve_thresholds(v, thresholds, _join(path, k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [resolve_thresholds(v, thresholds, f"{path}[{i}]") for i, v in enumerate(tree)]
    return tree


def _compile(node: dict, path: str, ctx: Context) -> Q:
    if "all" in node:
        q = Q()
        for index, child in enumerate(node["all"]):
            q &= _compile(child, f"{_join(path, 'all')}[{index}]", ctx)
        return q
    if "any" in node:
        q = Q(pk__in=[])
        for index, child in enumerate(node["any"]):
            q |= _compile(child, f"{_join(path, 'any')}[{index}]", ctx)
        return q
    if "not" in node:
        return ~_compile(node["not"], _join(path, "not"), ctx)
    leaf = _to_leaf(node, path)
    spec, _key = _lookup_field(leaf.field)
    return spec.compile(leaf, ctx)


# --- Value helpers fields share ------------------------------------------------------------

def days_value(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 36500:
        raise ConditionError(path, _("must be a whole number of days between 0 and 36500"))
    return value


def number_value(value: Any, path: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise ConditionError(path, _("must be a number"))
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ConditionError(path, _("must be a number"))
    if not number.is_finite():
        raise ConditionError(path, _("must be a number"))
    return number


def datetime_value(value: Any, path: str) -> datetime:
    if isinstance(value, str):
        parsed = None
        try:
            parsed = parse_datetime(value)
            if parsed is None:
                day = parse_date(value)
                if day is not None:
                    parsed = datetime(day.year, day.month, day.day)
        except ValueError:
            parsed = None
        if parsed is not None:
            if timezone.is_naive(parsed):
                parsed = timezone.make_aware(parsed, timezone.get_current_timezone())
            return parsed
    raise ConditionError(path, _("must be an ISO 8601 date or date-time"))


def list_value(value: Any, path: str, *, allow_empty: bool = False) -> list:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise ConditionError(path, _("must be a non-empty list"))
    if len(value) > 1000:
        raise ConditionError(path, _("at most 1000 values"))
    return value


def since(ctx: Context, days: int) -> datetime:
    return ctx.now - timedelta(days=days)


def crossing_customers(trees: list[Any], *, since: datetime, until: datetime,
                       thresholds: dict[str, Any] | None = None) -> set[int]:
    """The customers for whom some leaf of the (valid) `trees` may have changed value between
    `since` and `until` with nothing written about them — "silent for 30 days" starting to
    hold, an event leaving a 180-day window, a tag expiring: with the customers whose rows
    changed (the touches), the only ones a periodic run need read again (docs/DOMAIN.md)."""
    found: set[int] = set()

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict) and ("all" in node or "any" in node):
            for index, child in enumerate(node.get("all") or node.get("any")):
                walk(child, f"{path}[{index}]")
        elif isinstance(node, dict) and "not" in node:
            walk(node["not"], f"{path}.not")
        elif isinstance(node, dict):
            leaf = to_leaf(node, path)
            spec, _key = _lookup_field(leaf.field)
            if spec is None or spec.crossers is None:
                return
            query = spec.crossers(leaf, since, until)
            if query is not None:
                found.update(query)

    for tree in trees:
        try:
            tree = validate(tree, thresholds=thresholds or {})
        except ConditionError:
            continue        # a broken condition reports itself when its rule or model runs
        walk(tree, "")
    return found


# --- JSON Schema ---------------------------------------------------------------------------

def json_schema() -> dict[str, Any]:
    """The language as JSON Schema (draft 2020-12 style, as OpenAPI 3.1 embeds it)."""
    leaves = []
    for name, spec in fields.items():
        # `allOf` keeps each leaf's enums its own: drf-spectacular's enum post-processing
        # names enums by component and property name, and would otherwise give every leaf of
        # `Condition` one shared `ConditionOpEnum` (the first leaf's operators).
        props: dict[str, Any] = {
            "field": ({"type": "string", "pattern": f"^{name.replace('.', '[.]')}.+$"}
                      if spec.prefix else {"allOf": [{"type": "string", "enum": [name]}]}),
            "op": {"allOf": [{"type": "string", "enum": list(spec.ops)}]},
            "value": spec.value_schema or {},
        }
        props.update(spec.params)
        leaves.append({"type": "object", "title": name, "description": spec.description,
                       "required": ["field", "op"], "properties": props,
                       "additionalProperties": False})
    node = {"$ref": "#/components/schemas/Condition"}
    return {
        "description": "A condition on customers: all / any / not groups and field leaves.",
        "oneOf": [
            {"type": "object", "title": "all", "required": ["all"], "additionalProperties": False,
             "properties": {"all": {"type": "array", "minItems": 1, "items": node}}},
            {"type": "object", "title": "any", "required": ["any"], "additionalProperties": False,
             "properties": {"any": {"type": "array", "minItems": 1, "items": node}}},
            {"type": "object", "title": "not", "required": ["not"], "additionalProperties": False,
             "properties": {"not": node}},
            *leaves,
        ],
    }
