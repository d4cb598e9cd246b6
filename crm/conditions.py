"""The condition fields crm contributes: customer attributes, channel, owner, events, orders and
group membership. Registered in `CrmConfig.ready()`."""

from __future__ import annotations

import json
import operator
import re
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from functools import reduce
from typing import Any

from django.db.models import (
    Case,
    CharField,
    Count,
    DecimalField,
    Exists,
    F,
    Func,
    IntegerField,
    OuterRef,
    Q,
    Sum,
    When,
)
from django.db.models.lookups import (
    Exact,
    GreaterThan,
    GreaterThanOrEqual,
    In,
    IsNull,
    LessThan,
    LessThanOrEqual,
)
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from core.conditions import (
    ConditionError,
    ConditionField,
    Context,
    Leaf,
    datetime_value,
    days_value,
    list_value,
    number_value,
    register_field,
    since,
)

STRING_OPS = ("eq", "ne", "in", "not_in", "contains", "is_null")
CHOICE_OPS = ("eq", "ne", "in", "not_in")
BOOL_OPS = ("eq", "ne")
NUMBER_OPS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between")
DATETIME_OPS = ("gt", "gte", "lt", "lte", "between", "within_days", "older_than_days", "is_null")
ATTRIBUTE_OPS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between", "contains",
                 "is_null")
ATTRIBUTE_KEY = re.compile(r"^[\w\-]{1,64}$")


def _path(leaf: Leaf, key: str = "value") -> str:
    return f"{leaf.path}.{key}" if leaf.path else key


def _scalar_validator(kind: str, choices: tuple[str, ...] = ()):
    def coerce(value: Any, path: str) -> Any:
        if kind in ("str", "attribute") and isinstance(value, str):
            if len(value) > 500:
                raise ConditionError(path, _("at most 500 characters"))
            return value
        if kind == "attribute" and isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if kind == "choice":
            if value not in choices:
                raise ConditionError(path, _("must be one of %(choices)s")
                                     % {"choices": ", ".join(choices)})
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                raise ConditionError(path, _("must be true or false"))
            return value
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConditionError(path, _("must be a whole number"))
            return value
        if kind == "decimal":
            return number_value(value, path)
        if kind == "datetime":
            return datetime_value(value, path)
        raise ConditionError(path, _("must be a string") if kind == "str"
                             else _("must be a string or a number"))

    def validate(leaf: Leaf) -> None:
        path = _path(leaf)
        op = leaf.op
        if op in ("in", "not_in"):
            leaf.value = [coerce(v, f"{path}[{i}]")
                          for i, v in enumerate(list_value(leaf.value, path))]
        elif op == "between":
            pair = list_value(leaf.value, path)
            if len(pair) != 2:
                raise ConditionError(path, _("between takes a list of two values [low, high]"))
            leaf.value = [coerce(pair[0], f"{path}[0]"), coerce(pair[1], f"{path}[1]")]
        elif op == "is_null":
            if not isinstance(leaf.value, bool):
                raise ConditionError(path, _("must be true or false"))
        elif op in ("within_days", "older_than_days"):
            leaf.value = days_value(leaf.value, path)
        elif op == "contains":
            if not isinstance(leaf.value, str) or not leaf.value:
                raise ConditionError(path, _("must be a non-empty string"))
        else:
            leaf.value = coerce(leaf.value, path)

    return validate


def _scalar_compiler(lookup: str, *, blank_is_null: bool = False):
    def compile_leaf(leaf: Leaf, ctx: Context) -> Q:
        op, value = leaf.op, leaf.value
        if op == "eq":
            return Q(**{lookup: value})
        if op == "ne":
            return ~Q(**{lookup: value})
        if op == "in":
            return Q(**{f"{lookup}__in": value})
        if op == "not_in":
            return ~Q(**{f"{lookup}__in": value})
        if op in ("gt", "gte", "lt", "lte"):
            return Q(**{f"{lookup}__{op}": value})
        if op == "between":
            return Q(**{f"{lookup}__gte": value[0], f"{lookup}__lte": value[1]})
        if op == "contains":
            return Q(**{f"{lookup}__icontains": value})
        if op == "within_days":
            return Q(**{f"{lookup}__gte": since(ctx, value)})
        if op == "older_than_days":     # N days ago or earlier (at least N days old)
            return Q(**{f"{lookup}__lte": since(ctx, value)})
        if op == "is_null":
            empty = Q(**{f"{lookup}__isnull": True})
            if blank_is_null:
                empty |= Q(**{lookup: ""})
            return empty if value else ~empty
        raise ConditionError(leaf.path, _("unsupported operator"))  # unreachable: validated

    return compile_leaf


# The builder's widget for each kind of scalar (`ConditionField.kind`).
_WIDGETS = {"str": "text", "choice": "choice", "bool": "bool", "int": "integer",
            "decimal": "number", "datetime": "datetime"}


def _sliding(model, column: str, leaf_days, *, customer: str = "customer_id", **where):
    """Crossers (core.conditions.ConditionField.crossers) of a window of `leaf_days(leaf)`
    days over `column`: the customers of the rows the window's edge passed between the two
    moments (of the leaf's event types, for `type`)."""
    def crossers(leaf: Leaf, since_at, until_at):
        days = leaf_days(leaf)
        if days is None:
            return None
        edge = timedelta(days=days)
        rows = model.objects.filter(**where, **{f"{column}__gte": since_at - edge,
                                                f"{column}__lt": until_at - edge})
        if leaf.params.get("type"):
            rows = rows.filter(type__in=leaf.params["type"])
        return rows.values_list(customer, flat=True).distinct()

    return crossers


def _scalar(name: str, lookup: str, kind: str, ops: tuple[str, ...], description: str,
            allowed: tuple[str, ...] = (), schema: dict | None = None,
            **shown: Any) -> ConditionField:
    from crm.models import Customer

    crossers = None
    if kind == "datetime":      # within_days / older_than_days slide with the clock
        crossers = _sliding(Customer, lookup, lambda leaf: leaf.value if leaf.op in (
            "within_days", "older_than_days") else None, customer="pk")
    return ConditionField(
        name=name, ops=ops, description=description,
        compile=_scalar_compiler(lookup, blank_is_null=kind == "str"),
        validate=_scalar_validator(kind, allowed), crossers=crossers,
        value_schema=schema or {}, kind=shown.pop("widget", _WIDGETS[kind]), **shown)


# --- What the segment builder offers (`ConditionField.choices`) -----------------------------

def _text_choices(choices) -> Any:
    return lambda: [{"value": value, "label": str(label)} for value, label in choices.choices]


def _channel_choices() -> list[dict[str, Any]]:
    from crm.models import Channel

    return [{"value": code, "label": name or code}
            for code, name in Channel.objects.order_by("name", "code").values_list("code", "name")]


def _owner_choices() -> list[dict[str, Any]]:
    from django.contrib.auth import get_user_model

    from core.people import staff_name

    staff = get_user_model().objects.filter(is_active=True).order_by("username")
    return [{"value": user.get_username(), "label": staff_name(user)} for user in staff]


GROUP_CHOICES_SHOWN = 1000


def _group_choices() -> list[dict[str, Any]]:
    from crm.models import Group

    rows = Group.objects.order_by("name", "chat_id").values_list("chat_id", "name")
    return [{"value": chat_id, "label": name or chat_id}
            for chat_id, name in rows[:GROUP_CHOICES_SHOWN]]


# Text that reads as a decimal number: what CSV import stores for "35" or "-2.5".
_DECIMAL_TEXT = r"^\s*[-+]?([0-9]+([.][0-9]*)?|[.][0-9]+)\s*$"


class _AttributeNumber(Func):
    """The number under `attributes.<key>`: a JSON number, or text that reads as one; NULL for
    anything else (missing, null, true/false, other text, lists, objects). Written out per
    database because they order JSON values of different types differently (PostgreSQL puts
    every string below every number, SQLite every text above), so comparing the raw JSON values
    would give different customers on each."""

    output_field = DecimalField()

    def __init__(self, key: str) -> None:
        super().__init__(F("attributes"))
        self.key = key

    def as_postgresql(self, compiler, connection, **extra):
        column, params = compiler.compile(self.source_expressions[0])
        value, text = f"({column} -> %s)", f"({column} ->> %s)"
        sql = (f"CASE WHEN jsonb_typeof({value}) = 'number' THEN {text}::numeric "
               f"WHEN jsonb_typeof({value}) = 'string' AND {text} ~ %s THEN {text}::numeric END")
        key = [*params, self.key]
        return sql, (*key, *key, *key, *key, _DECIMAL_TEXT, *key)

    def as_sqlite(self, compiler, connection, **extra):
        column, params = compiler.compile(self.source_expressions[0])
        path = [*params, "$." + json.dumps(self.key)]
        # The CAST gives the result NUMERIC affinity, so it compares with decimal parameters
        # (which SQLite receives as text) as numbers.
        sql = (f"CAST(CASE WHEN json_type({column}, %s) IN ('integer', 'real') "
               f"THEN json_extract({column}, %s) "
               f"WHEN json_type({column}, %s) = 'text' AND json_extract({column}, %s) REGEXP %s "
               f"THEN json_extract({column}, %s) END AS NUMERIC)")
        return sql, (*path, *path, *path, *path, _DECIMAL_TEXT, *path)


class _AttributeText(Func):
    """The text under `attributes.<key>` when it is a JSON string, NULL otherwise; ordered by
    code point on both databases (PostgreSQL's default collation may be a locale's)."""

    output_field = CharField()

    def __init__(self, key: str) -> None:
        super().__init__(F("attributes"))
        self.key = key

    def as_postgresql(self, compiler, connection, **extra):
        column, params = compiler.compile(self.source_expressions[0])
        sql = (f"(CASE WHEN jsonb_typeof({column} -> %s) = 'string' THEN {column} ->> %s END) "
               f'COLLATE "C"')
        return sql, (*params, self.key, *params, self.key)

    def as_sqlite(self, compiler, connection, **extra):
        column, params = compiler.compile(self.source_expressions[0])
        path = [*params, "$." + json.dumps(self.key)]
        sql = (f"CASE WHEN json_type({column}, %s) = 'text' THEN json_extract({column}, %s) "
               f"END")
        return sql, (*path, *path)


_LOOKUPS = {"eq": Exact, "gt": GreaterThan, "gte": GreaterThanOrEqual, "lt": LessThan,
            "lte": LessThanOrEqual}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _attribute_compile(leaf: Leaf, ctx: Context) -> Q:
    """A customer without the key, or with JSON null under it, has no value: `is_null` matches
    him and every comparison leaves him out, as a plain FALSE (never SQL's NULL) — so `ne`,
    `not_in` and `not` keep him, as they do for every other field. Compared with numbers, an
    attribute is compared as a number whether it is stored as one or as text ("35", as CSV
    import stores it), the same way on PostgreSQL and SQLite."""
    lookup = f"attributes__{leaf.key}"
    op, value = leaf.op, leaf.value
    if op == "is_null":
        empty = Q(**{f"{lookup}__isnull": True}) | Q(**{lookup: None})
        return empty if value else ~empty
    if op in ("ne", "not_in"):
        return ~_attribute_compile(replace(leaf, op="eq" if op == "ne" else "in"), ctx)
    operands = value if op in ("in", "between") else [value]
    if op != "contains" and all(_is_number(v) for v in operands):
        number = _AttributeNumber(leaf.key)
        decimals = [Decimal(str(v)) for v in operands]
        if op == "in":
            compared = Q(In(number, decimals))
        elif op == "between":
            compared = Q(GreaterThanOrEqual(number, decimals[0])) & Q(
                LessThanOrEqual(number, decimals[1]))
        else:
            compared = Q(_LOOKUPS[op](number, decimals[0]))
        return Q(IsNull(number, False)) & compared
    if op in ("gt", "gte", "lt", "lte", "between"):
        # Ordered against text: only text values take part, compared as text.
        text = _AttributeText(leaf.key)
        if op == "between":
            compared = Q(GreaterThanOrEqual(text, str(value[0]))) & Q(
                LessThanOrEqual(text, str(value[1])))
        else:
            compared = Q(_LOOKUPS[op](text, str(value)))
        return Q(IsNull(text, False)) & compared
    present = Q(attributes__has_key=leaf.key) & ~Q(**{lookup: None})
    return present & _scalar_compiler(lookup)(leaf, ctx)


def _attribute_validate(leaf: Leaf) -> None:
    if not ATTRIBUTE_KEY.match(leaf.key) or "__" in leaf.key:
        raise ConditionError(_path(leaf, "field"), _("attribute keys are 1-64 letters, digits, "
                                                     "'_' or '-'"))
    if leaf.key.isdigit():
        # Django's JSON lookups read a key of digits as a position in a list
        # (`attributes -> 2024`), never as the object's key "2024": refuse it rather than
        # answer for another key.
        raise ConditionError(_path(leaf, "field"), _("an attribute key of digits only cannot "
                                                     "be used in conditions"))
    _scalar_validator("attribute")(leaf)


# --- Events ---------------------------------------------------------------------------------

def _count_validate(leaf: Leaf) -> None:
    value = leaf.value
    if leaf.op == "sum_gte":
        leaf.value = number_value(value, _path(leaf))
        if leaf.value < 0:
            raise ConditionError(_path(leaf), _("must be a number at or above 0"))
    elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConditionError(_path(leaf), _("must be a whole number at or above 0"))
    if "since_joined" in leaf.params and not isinstance(leaf.params["since_joined"], bool):
        raise ConditionError(_path(leaf, "since_joined"), _("must be true or false"))


def _counted(model, where: Q, leaf: Leaf, measure, exists_ok: bool, ctx: Context,
             measure_kind: str = "count", rows: tuple[str, list] | None = None) -> Q:
    """Customers whose rows of `model` matching `where` reach / stay under the leaf's count (or
    sum); `measure(where)` is the aggregate, e.g. `lambda q: Count("id", filter=q)`.

    `count_gte 1` is an EXISTS; larger thresholds are `pk IN (SELECT customer … GROUP BY customer
    HAVING …)`, which the database answers with one pass over the matching rows. With
    `ctx.features` the count is a column of a per-customer aggregate shared with the other
    leaves (see `core.conditions.Features`).
    """
    value = leaf.value
    if leaf.op == "count_lte":
        return ~_counted(model, where, Leaf(leaf.field, "count_gte", value + 1, leaf.params,
                                            leaf.path), measure, exists_ok, ctx, measure_kind,
                         rows)
    if value <= 0:
        return Q(pk__isnull=False)
    if ctx.features is not None:
        key = json.dumps([leaf.field, measure_kind, leaf.params, leaf.value if leaf.field == "group"
                          else None], sort_keys=True, default=str)
        return ctx.features.counted(model, measure(where or None), value, key, ctx, rows=rows)
    rows = ctx.scope(model.objects.filter(where))
    if leaf.op == "count_gte" and value == 1 and exists_ok:
        return Q(Exists(rows.filter(customer=OuterRef("pk"))))
    grouped = (rows.order_by().values("customer_id").annotate(m=measure(None))
               .filter(m__gte=value).values("customer_id"))
    return Q(pk__in=grouped)


def _event_validate(leaf: Leaf) -> None:
    from crm.models import Event

    kinds = leaf.params.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        kinds = list_value(kinds, _path(leaf, "type"))
        for index, kind in enumerate(kinds):
            if kind not in Event.Type.values:
                raise ConditionError(f"{_path(leaf, 'type')}[{index}]" if len(kinds) > 1
                                     else _path(leaf, "type"),
                                     _("unknown event type %(type)r") % {"type": kind})
        leaf.params["type"] = kinds
    _count_validate(leaf)


def _event_compile(leaf: Leaf, ctx: Context) -> Q:
    from crm.models import Event

    if leaf.params.get("within_days") is None:
        return _event_count_compile(leaf, ctx)
    latest = _event_latest_compile(leaf, ctx)
    if latest is not None:
        return latest
    where = Q()
    if leaf.params.get("type"):
        where &= Q(type__in=leaf.params["type"])
    if leaf.params.get("within_days") is not None:
        where &= Q(occurred_at__gte=since(ctx, leaf.params["within_days"]))
    if leaf.params.get("since_joined"):
        where &= Q(occurred_at__gte=F("customer__joined_at"))
    # COUNT(customer_id), not COUNT(id): the covering (type, occurred_at) INCLUDE (customer)
    # index then answers a windowed count without reading the events themselves.
    return _counted(Event, where, leaf, lambda q: Count("customer", filter=q), ctx=ctx,
                    exists_ok=not leaf.params.get("since_joined"),
                    rows=("type", leaf.params["type"]) if leaf.params.get("type") else None)


def _event_latest_compile(leaf: Leaf, ctx: Context) -> Q | None:
    """A window of days and a count up to EVENT_COUNT_LATEST, without shared counts: "at least
    k events within N days" is "the k-th latest event of the type is within N days", read from
    the per-type rows' latest times (an index range) instead of counting the window's events.
    With several types, a customer's latest times in the window are added up over the types —
    exact too: a type that fills all its latest times in the window reaches k on its own. None
    where this does not apply."""
    from crm.models import EVENT_COUNT_LATEST, EventCount

    if ctx.features is not None:
        return None
    k = leaf.value if leaf.op == "count_gte" else leaf.value + 1   # ≤ v: not ≥ v + 1
    if not 1 <= k <= EVENT_COUNT_LATEST:
        return None
    bound = since(ctx, leaf.params["within_days"])
    kinds = leaf.params.get("type")
    joined = leaf.params.get("since_joined")

    def in_window(i: int) -> Q:
        q = Q(**{f"latest_{i}__gte": bound})
        return q & Q(**{f"latest_{i}__gte": F("customer__joined_at")}) if joined else q

    rows = EventCount.objects.filter(latest_1__gte=bound)
    if kinds:
        rows = rows.filter(type__in=kinds)
    if kinds and len(kinds) == 1:
        rows = rows.filter(in_window(k))
    else:
        # per row: how many of its latest times fall in the window
        n = reduce(operator.add, (Case(When(in_window(i), then=1), default=0)
                                  for i in range(1, EVENT_COUNT_LATEST + 1)))
        rows = (rows.order_by().values("customer_id")
                .annotate(n=Sum(n, output_field=IntegerField())).filter(n__gte=k))
    q = Q(pk__in=ctx.scope(rows).values("customer_id"))
    return q if leaf.op == "count_gte" else ~q


def _event_count_compile(leaf: Leaf, ctx: Context) -> Q:
    """A whole history or "since joining": read the per-customer counts per type (EventCount,
    kept with the events) instead of aggregating the events."""
    from crm.models import EventCount

    column = "since_joined" if leaf.params.get("since_joined") else "total"
    kinds = leaf.params.get("type")
    where = Q(type__in=kinds) if kinds else Q()
    if leaf.op == "count_gte" and kinds and len(kinds) == 1 and ctx.features is None \
            and leaf.value > 0:
        # One type: one row per customer — the customers whose row reaches the count.
        rows = ctx.scope(EventCount.objects.filter(where, **{f"{column}__gte": leaf.value}))
        return Q(pk__in=rows.values("customer_id"))
    return _counted(EventCount, where, leaf, lambda q: Sum(column, filter=q), ctx=ctx,
                    exists_ok=False, measure_kind=f"events.{column}",
                    rows=("type", kinds) if kinds else None)


# --- Orders ---------------------------------------------------------------------------------

def _order_validate(leaf: Leaf) -> None:
    category = leaf.params.get("category")
    if category is not None:
        category = [category] if isinstance(category, str) else category
        leaf.params["category"] = [str(c) for c in list_value(category, _path(leaf, "category"))]
    _count_validate(leaf)


def _order_compile(leaf: Leaf, ctx: Context) -> Q:
    from crm.models import Order, OrderItem

    where = Q(status=Order.Status.PAID)
    if leaf.params.get("within_days") is not None:
        where &= Q(placed_at__gte=since(ctx, leaf.params["within_days"]))
    if leaf.params.get("since_joined"):
        where &= Q(placed_at__gte=F("customer__joined_at"))
    if leaf.params.get("category"):
        where &= Q(Exists(OrderItem.objects.filter(
            order=OuterRef("pk"), category__in=leaf.params["category"])))
    if leaf.op == "sum_gte":
        leaf = Leaf(leaf.field, "count_gte", leaf.value, leaf.params, leaf.path)
        if leaf.value <= 0:
            return Q(pk__isnull=False)
        return _counted(Order, where, leaf, lambda q: Sum("amount", filter=q), ctx=ctx,
                        exists_ok=False, measure_kind="sum", rows=("status", [Order.Status.PAID]))
    return _counted(Order, where, leaf, lambda q: Count("id", filter=q), ctx=ctx,
                    exists_ok=not leaf.params.get("since_joined"),
                    rows=("status", [Order.Status.PAID]))


# --- Groups ---------------------------------------------------------------------------------

def _group_validate(leaf: Leaf) -> None:
    for flag in ("ever", "since_joined"):
        if flag in leaf.params and not isinstance(leaf.params[flag], bool):
            raise ConditionError(_path(leaf, flag), _("must be true or false"))
    if leaf.op == "count_gte":
        _count_validate(leaf)
        return
    value = leaf.value
    if value is None:
        leaf.value = []
        return
    value = [value] if isinstance(value, str) else value
    leaf.value = [str(v) for v in list_value(value, _path(leaf), allow_empty=True)]


def _group_compile(leaf: Leaf, ctx: Context) -> Q:
    from crm.models import GroupMembership

    where = Q()
    if not leaf.params.get("ever"):
        where &= Q(left_at__isnull=True)
    if leaf.params.get("since_joined"):
        where &= Q(joined_at__gte=F("customer__joined_at"))
    if leaf.op == "count_gte":
        return _counted(GroupMembership, where, leaf,
                        lambda q: Count("group_id", distinct=True, filter=q), ctx=ctx,
                        exists_ok=True)
    if ctx.features is not None:   # a member: one of the shared per-customer counts ≥ 1
        if leaf.value:
            where &= Q(group__chat_id__in=leaf.value)
        key = json.dumps(["group", "member", leaf.params, leaf.value], sort_keys=True)
        q = ctx.features.counted(GroupMembership, Count("id", filter=where or None), 1, key,
                                 ctx)
        return q if leaf.op == "in" else ~q
    rows = ctx.scope(GroupMembership.objects.filter(where))
    if leaf.value:
        rows = rows.filter(group__chat_id__in=leaf.value)
    q = Q(Exists(rows.filter(customer=OuterRef("pk"))))
    return q if leaf.op == "in" else ~q


def register() -> None:
    from crm.models import Customer, Event, Order

    profile, activity = gettext_lazy("Profile"), gettext_lazy("Activity and purchases")
    str_schema = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                            {"type": "boolean"}]}
    num_schema = {"oneOf": [{"type": "number"}, {"type": "string"},
                            {"type": "array", "items": {"oneOf": [{"type": "number"}, {"type": "string"}]}}]}
    dt_schema = {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "integer"},
                           {"type": "boolean"},
                           {"type": "array", "items": {"type": "string"}}]}
    labels = {"external_id": gettext_lazy("External id"), "name": gettext_lazy("Name"),
              "phone": gettext_lazy("Phone"), "city": gettext_lazy("City"),
              "joined_at": gettext_lazy("Joined"), "last_active_at": gettext_lazy("Last active"),
              "first_order_at": gettext_lazy("First order"), "last_order_at": gettext_lazy("Last order"),
              "status_changed_at": gettext_lazy("Status changed")}
    for name in ("external_id", "name", "phone", "city"):
        register_field(_scalar(name, name, "str", STRING_OPS,
                               _("The customer's %(field)s.") % {"field": name},
                               schema=str_schema, label=labels[name], section=profile))
    register_field(_scalar("channel", "channel__code", "str", STRING_OPS,
                           _("Acquisition channel code."), schema=str_schema, widget="choice",
                           label=gettext_lazy("Channel"), section=profile, choices=_channel_choices))
    register_field(_scalar("owner", "owner__username", "str", CHOICE_OPS,
                           _("Owning staff member's username."), schema=str_schema,
                           widget="choice", label=gettext_lazy("Owner"), section=profile,
                           choices=_owner_choices))
    register_field(_scalar("gender", "gender", "choice", CHOICE_OPS, _("Gender."),
                           tuple(Customer.Gender.values), schema=str_schema,
                           label=gettext_lazy("Gender"), section=profile,
                           choices=_text_choices(Customer.Gender)))
    register_field(_scalar("status", "status", "choice", CHOICE_OPS,
                           _("Relationship status."), tuple(Customer.Status.values),
                           schema=str_schema, label=gettext_lazy("Status"), section=profile,
                           choices=_text_choices(Customer.Status)))
    register_field(_scalar("opted_out", "opted_out", "bool", BOOL_OPS, _("Opted out."),
                           schema={"type": "boolean"}, label=gettext_lazy("Opted out"),
                           section=profile))
    register_field(_scalar("orders_count", "orders_count", "int", NUMBER_OPS,
                           _("Paid orders, lifetime."), schema=num_schema,
                           label=gettext_lazy("Orders (lifetime)"), section=activity))
    register_field(_scalar("total_spent", "total_spent", "decimal", NUMBER_OPS,
                           _("Paid spend net of refunds, lifetime (CNY)."), schema=num_schema,
                           label=gettext_lazy("Total spent (CNY)"), section=activity))
    for name in ("joined_at", "last_active_at", "first_order_at", "last_order_at",
                 "status_changed_at"):
        register_field(_scalar(name, name, "datetime", DATETIME_OPS,
                               _("Date-time %(field)s; within_days / older_than_days take days.")
                               % {"field": name}, schema=dt_schema, label=labels[name],
                               section=activity if name != "joined_at" else profile))
    register_field(ConditionField(
        name="attributes.", prefix=True, ops=ATTRIBUTE_OPS, compile=_attribute_compile,
        validate=_attribute_validate, description=_("A key of the customer's attributes."),
        value_schema={}, label=gettext_lazy("Attribute"), section=profile, kind="text"))
    days = {"type": "integer", "minimum": 0}
    within = {"label": gettext_lazy("within the last (days)"), "kind": "integer"}
    since_joined = {"label": gettext_lazy("since joining"), "kind": "bool"}
    register_field(ConditionField(
        name="event", ops=("count_gte", "count_lte"), compile=_event_compile,
        validate=_event_validate,
        crossers=_sliding(Event, "occurred_at", lambda leaf: leaf.params.get("within_days")),
        description=_("How many events (of `type`) the customer has, within `within_days` or "
                      "since joining."),
        value_schema={"type": "integer", "minimum": 0},
        params={"type": {"nullable": True,
                         "oneOf": [{"type": "string", "enum": list(Event.Type.values)},
                                   {"type": "array", "items": {"type": "string"}}]},
                "within_days": days, "since_joined": {"type": "boolean"}},
        label=gettext_lazy("Events"), section=activity, kind="integer",
        param_info={"type": {"label": gettext_lazy("of type"), "kind": "choice", "multiple": True,
                             "choices": _text_choices(Event.Type)},
                    "within_days": within, "since_joined": since_joined}))
    register_field(ConditionField(
        name="order", ops=("count_gte", "count_lte", "sum_gte"), compile=_order_compile,
        crossers=_sliding(Order, "placed_at", lambda leaf: leaf.params.get("within_days"),
                          status=Order.Status.PAID),
        validate=_order_validate,
        description=_("Paid orders: count or sum, within `within_days` or since joining, "
                      "optionally of a `category`."),
        value_schema={"type": "number", "minimum": 0},
        params={"within_days": days, "since_joined": {"type": "boolean"},
                "category": {"nullable": True,
                             "oneOf": [{"type": "string"},
                                       {"type": "array", "items": {"type": "string"}}]}},
        label=gettext_lazy("Paid orders"), section=activity, kind="number",
        param_info={"within_days": within, "since_joined": since_joined,
                    "category": {"label": gettext_lazy("of category"), "kind": "text"}}))
    register_field(ConditionField(
        name="group", ops=("in", "not_in", "count_gte"), compile=_group_compile,
        validate=_group_validate,
        description=_("Membership of groups (chat ids; empty or null = any group), now or "
                      "`ever`, optionally only stays begun `since_joined`."),
        value_schema={"nullable": True,
                      "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                                {"type": "integer"}]},
        params={"ever": {"type": "boolean"}, "since_joined": {"type": "boolean"}},
        label=gettext_lazy("Groups"), section=activity, kind="choice", choices=_group_choices,
        param_info={"ever": {"label": gettext_lazy("ever (also groups left)"), "kind": "bool"},
                    "since_joined": since_joined}))
