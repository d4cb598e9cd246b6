"""What lifecycle adds to crm's customer resource: the `stages` field, the `?stage=model:stage`
filter and stage transitions in the timeline."""

from collections import defaultdict

from django.db.models import Exists, OuterRef, Prefetch
from django.utils.translation import gettext as _
from django.utils.translation import pgettext

from core.exceptions import ApplicationError
from crm.extensions import FieldExtension, FilterExtension, IndexPart, PersonalData
from crm.timeline import TimelineSource


def _prepare(queryset):
    from lifecycle.models import CustomerStage

    return queryset.prefetch_related(Prefetch(
        "customer_stages",
        queryset=CustomerStage.objects.select_related("model", "stage").order_by(
            "model__order", "model__key"),
        to_attr="_stages"))


def _value(customer) -> dict[str, str]:
    return {cs.model.key: cs.stage.key for cs in getattr(customer, "_stages", [])}


def _chips(customer) -> list[dict[str, str]]:
    return [{"label": cs.stage.name, "color": cs.stage.color, "title": cs.model.name}
            for cs in getattr(customer, "_stages", [])]


def _many(customer_ids: list[int]) -> dict[int, dict[str, str]]:
    from lifecycle.models import CustomerStage

    found: dict[int, dict[str, str]] = defaultdict(dict)
    for customer_id, model_key, stage_key in (
            CustomerStage.objects.filter(customer_id__in=customer_ids)
            .order_by("model__order", "model__key")
            .values_list("customer_id", "model__key", "stage__key")):
        found[customer_id][model_key] = stage_key
    return found


STAGES_FIELD = FieldExtension("stages", _prepare, _value, dict, _chips, _many)


def _filter(queryset, values: list[str]):
    from lifecycle.models import CustomerStage

    for value in values:
        model_key, sep, stage_keys = value.partition(":")
        if not sep or not model_key or not stage_keys:
            raise ApplicationError(_("stage: use model_key:stage_key, e.g. value:dormant "
                                     "(several stages: value:dormant,churn)"))
        queryset = queryset.filter(Exists(CustomerStage.objects.filter(
            customer=OuterRef("pk"), model__key=model_key,
            stage__key__in=stage_keys.split(","))))
    return queryset


STAGE_FILTER = FilterExtension(
    "stage", _filter, "`model_key:stage_key` (e.g. `value:dormant`; repeatable).")


def _transition_detail(transition) -> str:
    """Why a customer moved, in a sentence: moved by a person (with their reason), by the
    model's rules, by an event; a win-back or a step back said so."""
    from core.people import staff_name

    if transition.actor is not None:
        said = _("Moved by %(person)s") % {"person": staff_name(transition.actor)}
    else:
        said = {"rule": _("By the model's rules"), "event": _("By an event"),
                "system": _("By the system")}.get(transition.source,
                                                   _("Moved by hand"))
    parts = [said]
    if transition.reason:
        parts.append(_("reason: %(reason)s") % {"reason": transition.reason})
    if transition.win_back:
        parts.append(_("a win-back (回流)"))
    if transition.backward:
        parts.append(_("a step back"))
    return pgettext("joins the parts of a sentence", "; ").join(parts) + pgettext(
        "ends a sentence", ".")


def _timeline_entries(customer_id: int, limit: int):
    from lifecycle.models import StageTransition

    rows = (StageTransition.objects.filter(customer_id=customer_id)
            .select_related("model", "from_stage", "to_stage", "actor")
            .order_by("-at", "-id")[:limit])
    out = []
    for t in rows:
        to_name = t.to_stage.name if t.to_stage else t.to_key
        from_name = t.from_stage.name if t.from_stage else (t.from_key or "—")
        out.append({
            "at": t.at, "kind": "stage", "type": t.source,
            "title": _("%(model)s: %(from)s → %(to)s") % {"model": t.model.name,
                                                          "from": from_name, "to": to_name},
            "detail": _transition_detail(t),
            "data": {"model": t.model.key, "from": t.from_key or None, "to": t.to_key,
                     "source": t.source, "reason": t.reason, "win_back": t.win_back,
                     "backward": t.backward, "by": t.actor.username if t.actor else None},
        })
    return out


def _timeline_count(customer_id: int) -> int:
    from lifecycle.models import StageTransition

    return StageTransition.objects.filter(customer_id=customer_id).count()


TIMELINE = TimelineSource("stage", _timeline_entries, _timeline_count)


# --- The segment index's `stages` part (tagging.segment_index, through crm.extensions) -------

def _index_read(size: int, ids=None) -> dict:
    """Each customer's stage per model: `model:<id>` = stage id by customer id (0: not
    placed) — or, with `ids`, per id of `ids` — read with one binary COPY inside the build's
    snapshot."""
    import numpy as np

    from core.db import copy_columns
    from lifecycle.models import CustomerStage, StageModel

    table = CustomerStage._meta.db_table
    where, params = ("customer_id < %s", [size]) if ids is None else (
        "customer_id = ANY(%s::bigint[])", [[int(i) for i in ids]])
    customer, model, stage = copy_columns(
        f'SELECT customer_id::int8, model_id::int4, stage_id::int4 FROM "{table}" '
        f"WHERE {where}", params, ["int8", "int4", "int4"])
    rows_of = customer if ids is None else np.searchsorted(ids, customer)
    part = {}
    for model_id in StageModel.objects.values_list("pk", flat=True):
        column = np.zeros(size if ids is None else len(ids), dtype=np.int32)
        rows = model == model_id
        column[rows_of[rows]] = stage[rows]
        part[f"model:{model_id}"] = column
    return part


def _index_stage(ev, leaf):
    """As lifecycle.conditions: in / eq — the customer's stage in the model is one of them;
    ne / not_in — it is not (customers not placed in the model included)."""
    import numpy as np

    from lifecycle.models import Stage

    rows = list(Stage.objects.filter(model__key=leaf.params["model"])
                .values_list("key", "pk", "model_id"))
    ids = {key: pk for key, pk, _model in rows}
    column = ev.snapshot.part("stages").get(f"model:{rows[0][2]}") if rows else None
    if column is None:              # a model newer than the build: SQL answers
        return None
    found = np.isin(column, np.array([ids[key] for key in leaf.value] or [-1],
                                     dtype=np.int32))
    return ~found if leaf.op in ("ne", "not_in") else found


INDEX_PART = IndexPart("stages", _index_read, {"stage": _index_stage})


def _stages_export(customer) -> dict:
    from lifecycle.models import CustomerStage, StageTransition

    return {
        "current": list(CustomerStage.objects.filter(customer=customer).values(
            "model__key", "stage__key", "entered_at", "source")),
        "transitions": list(StageTransition.objects.filter(customer=customer).order_by("at")
                            .values("model__key", "from_key", "to_key", "at", "source",
                                    "reason")),
    }


def _stages_erase(customer) -> dict[str, int]:
    """The reasons people wrote for moves are free text: blanked."""
    from lifecycle.models import StageTransition

    return {"reasons": StageTransition.objects.filter(customer=customer).exclude(reason="")
            .update(reason="")}


PERSONAL_DATA = PersonalData("stages", _stages_export, _stages_erase)
