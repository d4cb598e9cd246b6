"""The `tag` condition field: `{"field": "tag", "op": "any" | "all" | "none", "value": [...]}`,
tags named by id or name; an expired tag no longer counts even before the sweeper removes it."""

from django.db.models import Exists, OuterRef, Q
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from core.conditions import ConditionError, ConditionField, Context, Leaf, list_value
from core.exceptions import ApplicationError


def _value_path(leaf: Leaf) -> str:
    return f"{leaf.path}.value" if leaf.path else "value"


def _validate(leaf: Leaf) -> None:
    from tagging.services import tags_resolve

    value = [leaf.value] if isinstance(leaf.value, str | int) else leaf.value
    refs = list_value(value, _value_path(leaf))
    try:
        leaf.value = [t.pk for t in tags_resolve(refs, path=_value_path(leaf))]
    except ApplicationError as exc:
        raise ConditionError(_value_path(leaf), exc.message, prefixed=True) from exc


def holds(tag_ids, ctx: Context) -> Q:
    from tagging.models import CustomerTag

    rows = CustomerTag.objects.filter(customer=OuterRef("pk"), tag_id__in=tag_ids).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=ctx.now))
    return Q(Exists(rows))


def _compile(leaf: Leaf, ctx: Context) -> Q:
    if leaf.op == "any":
        return holds(leaf.value, ctx)
    if leaf.op == "none":
        return ~holds(leaf.value, ctx)
    q = Q()
    for tag_id in leaf.value:
        q &= holds([tag_id], ctx)
    return q


def _choices() -> list[dict]:
    from tagging.models import Tag

    rows = Tag.objects.select_related("group").order_by("group__order", "group__name", "order",
                                                        "name")
    return [{"value": tag.pk, "label": tag.name, "name": tag.name, "group": tag.group.name,
             "color": tag.color} for tag in rows]


def _crossers(leaf: Leaf, since_at, until_at):
    """The holders of the listed tags whose tag expired between the two moments."""
    from tagging.models import CustomerTag

    return (CustomerTag.objects.filter(tag_id__in=leaf.value, expires_at__gte=since_at,
                                       expires_at__lt=until_at)
            .values_list("customer_id", flat=True).distinct())


FIELD = ConditionField(
    name="tag", ops=("any", "all", "none"), compile=_compile, validate=_validate,
    crossers=_crossers,
    label=gettext_lazy("Tags"), section=gettext_lazy("Tags and stages"), kind="choice",
    choices=_choices,
    description=_("Tags the customer holds now: any, all or none of the listed (ids or names)."),
    value_schema={"type": "array", "minItems": 1,
                  "items": {"oneOf": [{"type": "integer"}, {"type": "string"}]}})
