"""The `stage` condition field:
`{"field": "stage", "model": "value", "op": "in", "value": ["dormant"]}`."""

from django.db.models import Exists, OuterRef, Q
from django.utils.translation import gettext as _

from core.conditions import ConditionError, ConditionField, Context, Leaf, list_value


def _path(leaf: Leaf, key: str) -> str:
    return f"{leaf.path}.{key}" if leaf.path else key


def _validate(leaf: Leaf) -> None:
    from lifecycle.models import Stage, StageModel

    key = leaf.params.get("model")
    if not isinstance(key, str) or not key:
        raise ConditionError(_path(leaf, "model"), _("name the stage model by its key"))
    model = StageModel.objects.filter(key=key).first()
    if model is None:
        raise ConditionError(_path(leaf, "model"), _("unknown stage model %(key)r")
                             % {"key": key})
    value = [leaf.value] if isinstance(leaf.value, str) else leaf.value
    stages = list_value(value, _path(leaf, "value"))
    known = set(Stage.objects.filter(model=model).values_list("key", flat=True))
    for index, stage in enumerate(stages):
        if stage not in known:
            raise ConditionError(f"{_path(leaf, 'value')}[{index}]",
                                 _("model %(model)r has no stage %(stage)r; it has %(known)s")
                                 % {"model": key, "stage": stage,
                                    "known": ", ".join(sorted(known))})
    leaf.value = stages


def _compile(leaf: Leaf, ctx: Context) -> Q:
    from lifecycle.models import CustomerStage

    q = Q(Exists(CustomerStage.objects.filter(customer=OuterRef("pk"),
                                              model__key=leaf.params["model"],
                                              stage__key__in=leaf.value)))
    return q if leaf.op in ("eq", "in") else ~q


FIELD = ConditionField(
    name="stage", ops=("eq", "ne", "in", "not_in"), compile=_compile, validate=_validate,
    description=_("The customer's current stage in a stage model (`model` = its key)."),
    value_schema={"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    params={"model": {"type": "string"}})
