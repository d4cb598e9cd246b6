"""Read-side extension points of the customer resource.

Lower apps add what they know about a customer — `tags` (tagging), `stages` (lifecycle) — and the
filters that go with it (`?tag=`, `?stage=`), without crm importing them. A field extension
prepares a queryset once (prefetch/annotate, so a list stays a fixed number of queries) and
reads the value off each customer — or reads the values of many customers by id at once, without
making model instances (`many`: the dispatcher's template contexts); a filter extension narrows
a queryset.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet

from core.registry import Registry


@dataclass(frozen=True)
class FieldExtension:
    name: str
    prepare: Callable[[QuerySet], QuerySet]
    value: Callable[[Any], Any]
    empty: Callable[[], Any]
    # For pages: the value as chips people read — [{"label", "color", "title"}] (stage and tag
    # names with their colours, never keys). None: the value's items as plain chips.
    chips: Callable[[Any], list[dict[str, str]]] | None = None
    # {customer id: value} of many customers in one query; None: `prepare` and `value`.
    many: Callable[[list[int]], dict[int, Any]] | None = None


@dataclass(frozen=True)
class FilterExtension:
    name: str
    apply: Callable[[QuerySet, list[str]], QuerySet]   # values of the (repeatable) parameter
    help_text: str = ""


customer_fields: Registry[FieldExtension] = Registry("customer_fields")
customer_filters: Registry[FilterExtension] = Registry("customer_filters")

# Fields the contract promises even before the app that fills them is installed.
CONTRACT_FIELDS = {"tags": list, "stages": dict}


def prepare_customers(queryset: QuerySet) -> QuerySet:
    for extension in customer_fields:
        queryset = extension.prepare(queryset)
    return queryset


def extension_values(customer) -> dict[str, Any]:
    values = {name: make() for name, make in CONTRACT_FIELDS.items()}
    for extension in customer_fields:
        values[extension.name] = extension.value(customer)
    return values


def extension_values_many(customer_ids: list[int]) -> dict[int, dict[str, Any]]:
    """`extension_values` of many customers by id, an extension's `many` where it has one."""
    from crm.models import Customer

    out = {pk: {name: make() for name, make in CONTRACT_FIELDS.items()} for pk in customer_ids}
    for extension in customer_fields:
        if extension.many is not None:
            found = extension.many(customer_ids)
            for pk, values in out.items():
                values[extension.name] = found.get(pk) or extension.empty()
        else:
            for customer in extension.prepare(Customer.objects.filter(pk__in=customer_ids)):
                out[customer.pk][extension.name] = extension.value(customer)
    return out


def extension_chips(customer) -> dict[str, list[dict[str, str]]]:
    """Each field extension's value as chips for a page (see FieldExtension.chips)."""
    out = {}
    for extension in customer_fields:
        if extension.chips is not None:
            out[extension.name] = extension.chips(customer)
        else:
            value = extension.value(customer)
            items = value.values() if isinstance(value, dict) else value
            out[extension.name] = [{"label": str(item), "color": "", "title": ""}
                                   for item in items]
    return out


# Panels other apps add to the dashboard's customer page (tags, stages, …): each renders its
# own HTML — typically with a form posting to a view of its app — for one customer.
CustomerPanel = Callable[[Any, Any], str]       # (request, customer) -> HTML
customer_panels: Registry[CustomerPanel] = Registry("customer_panels")


@dataclass(frozen=True)
class IndexPart:
    """A part another app adds to tagging's segment index (lifecycle: the stages), so that
    conditions on its fields are answered from memory too. `read(size, ids)` gives the part's
    numpy arrays, read inside the build's snapshot: one entry per customer id below `size`
    (a full build), or with `ids` (sorted) one entry per id of `ids` (an update), an absent
    customer's entry being 0; `handlers` maps a condition field to
    `handler(evaluator, leaf) -> boolean array by customer id`, with the same meaning as the
    field's SQL compiler. The index follows the changes of the part's tables through the
    touches the database's triggers write (the app's migration installs them:
    core.db.customer_change_triggers)."""

    name: str
    read: Callable[[int, Any], dict[str, Any]]
    handlers: dict[str, Callable[[Any, Any], Any]]


segment_index_parts: Registry[IndexPart] = Registry("segment_index_parts")


@dataclass(frozen=True)
class PersonalData:
    """What another app holds about one customer, for personal-data requests (PIPL):
    `export(customer)` the JSON-ready records under `name`, `erase(customer)` blanks the
    personal parts in bulk and answers what it changed ({what: rows})."""

    name: str
    export: Callable[[Any], Any]
    erase: Callable[[Any], dict[str, int]]


personal_data: Registry[PersonalData] = Registry("personal_data")
