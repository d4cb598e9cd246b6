"""The `stage` condition field:
`{"field": "stage", "model": "value", "op": "in", "value": ["dormant"]}`."""

from django.db.models import Exists, OuterRef, Q
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

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


def _stage_choices() -> list[dict]:
    """Every stage, shown under the model the leaf names (`when`)."""
    from lifecycle.models import Stage

    rows = Stage.objects.select_related("model").order_by("model__pk", "position", "key")
    return [{"value": stage.key, "label": stage.name, "color": stage.color,
             "when": {"model": stage.model.key}} for stage in rows]


def _model_choices() -> list[dict]:
    from lifecycle.models import StageModel

    return [{"value": key, "label": name}
            for key, name in StageModel.objects.order_by("pk").values_list("key", "name")]


FIELD = ConditionField(
    name="stage", ops=("eq", "ne", "in", "not_in"), compile=_compile, validate=_validate,
    label=gettext_lazy("Stage"), section=gettext_lazy("Tags and stages"), kind="choice",
    choices=_stage_choices,
    param_info={"model": {"label": gettext_lazy("in the model"), "kind": "choice",
                          "required": True, "choices": _model_choices}},
    description=_("The customer's current stage in a stage model (`model` = its key)."),
    value_schema={"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    params={"model": {"type": "string"}})
