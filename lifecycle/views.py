"""Dashboard pages of lifecycle: the stages panel of the customer page, the models, each
model's board, the model editor with its simulation, and the transition log. Thin over the
services the API calls (lifecycle/services.py) and the reads in lifecycle/selectors.py."""

import json
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.db.models import Count
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRefresh

from core import access
from core.exceptions import ApplicationError
from crm import selectors as crm_selectors
from lifecycle import selectors, services
from lifecycle.models import CustomerStage, Stage, StageModel, TransitionSource


def customer_stages_panel(request, customer) -> str:
    """The customer's stage in every active model, a manual move and, when locked, an unlock."""
    models = list(StageModel.objects.filter(active=True).prefetch_related("stages"))
    current = {cs.model_id: cs for cs in CustomerStage.objects.filter(customer=customer)
               .select_related("stage")}
    now = timezone.now()
    rows = [{"model": m, "stages": sorted(m.stages.all(), key=lambda s: s.position),
             "current": current.get(m.pk),
             "locked": bool(current.get(m.pk) and current[m.pk].locked_until
                            and current[m.pk].locked_until > now)} for m in models]
    return render_to_string("lifecycle/_customer_stages.html",
                            {"customer": customer, "rows": rows}, request=request)


@login_required
@require_POST
def customer_stage_edit(request, pk: int):
    if not access.can_see_customers(request.user):
        raise PermissionDenied
    customer = crm_selectors.customer_get(user=request.user, pk=pk)
    back = redirect(reverse("dashboard:customer-detail", args=[customer.pk]) + "#stages")
    try:
        if request.POST.get("unlock"):
            model = StageModel.objects.filter(key=request.POST["unlock"]).first()
            if model and services.customer_stage_unlock(customer=customer, model=model):
                messages.success(request, _("Rules may move the customer again."))
            return back
        model_key, _sep, stage_key = request.POST.get("target", "").partition(":")
        stage = Stage.objects.select_related("model").filter(model__key=model_key,
                                                             key=stage_key).first()
        if stage is None:
            raise ApplicationError(_("Choose a stage to move the customer to."))
        services.customer_stage_move(customer=customer, model=stage.model, stage=stage,
                                     reason=request.POST.get("reason", ""), actor=request.user)
        messages.success(request, _("Moved to %(stage)s.") % {"stage": stage.name})
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return back


# --- The lifecycle pages: models, boards, the model editor and the transition log ------------

def _require_admin(user) -> None:
    access.require_admin(user, _("Only admins change stage models."))


def _error_text(exc: ApplicationError | ValidationError) -> str:
    """A refusal as one line that names the field, like the API's answer."""
    if isinstance(exc, ApplicationError):
        return exc.message
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{name}: {message}" if name != NON_FIELD_ERRORS else message
                         for name, messages_ in exc.message_dict.items()
                         for message in messages_)
    return "; ".join(exc.messages)


def _page_number(value: str | None) -> int:
    try:
        return max(1, int(value or 1))
    except ValueError:
        return 1


@login_required
def model_list(request):
    access.require_role(request.user)
    return render(request, "lifecycle/models.html",
                  {"models": selectors.stage_models_overview(user=request.user)})


@login_required
def board(request, key: str):
    """A model's board: a column per stage with its count and newest arrivals. Analysts see
    the counts only."""
    access.require_role(request.user)
    model = selectors.stage_model_get(key=key)
    can_move = access.can_see_customers(request.user)
    columns = selectors.stage_board(user=request.user, model=model, with_cards=can_move)
    return render(request, "lifecycle/board.html", {
        "model": model, "columns": columns, "can_move": can_move,
        "stages": [c.stage for c in columns], "total": sum(c.count for c in columns)})


@login_required
def board_column(request, key: str, stage_key: str):
    """More cards of one column: the cards of `?page=N` with the next "more" button (htmx),
    or the column as a page of its own."""
    access.require_customer_access(request.user)
    model = selectors.stage_model_get(key=key)
    stage = get_object_or_404(Stage, model=model, key=stage_key)
    page = selectors.stage_column_page(user=request.user, model=model, stage=stage,
                                       page=_page_number(request.GET.get("page")))
    context = {"model": model, "stage": stage, "stages": selectors.model_stages(model=model),
               "can_move": True, **page}
    template = "lifecycle/_cards.html" if request.htmx else "lifecycle/column.html"
    return render(request, template, context)


@login_required
@require_POST
def board_move(request, key: str):
    """Move a card (a customer) to another stage with a reason: `customer_stage_move`, with
    its locks, monotonic rule and roles. htmx: a 400 with the refusal for the dialog, or a
    refresh of the board; otherwise back to the board with a message."""
    access.require_customer_access(request.user)
    model = selectors.stage_model_get(key=key)
    board_url = reverse("lifecycle-dashboard:board", args=[model.key])
    try:
        customer_id = int(request.POST.get("customer", ""))
    except ValueError:
        raise Http404 from None
    customer = crm_selectors.customer_get(user=request.user, pk=customer_id)
    try:
        stage = Stage.objects.filter(model=model, key=request.POST.get("stage", "")).first()
        if stage is None:
            raise ApplicationError(_("Choose a stage to move the customer to."))
        services.customer_stage_move(customer=customer, model=model, stage=stage,
                                     reason=request.POST.get("reason", ""), actor=request.user)
    except ApplicationError as exc:
        if request.htmx:
            return render(request, "lifecycle/_move_error.html", {"error": exc.message},
                          status=400)
        messages.error(request, exc.message)
        return redirect(board_url)
    messages.success(request, _("%(customer)s moved to %(stage)s.") % {
        "customer": customer.name or customer.external_id, "stage": stage.name})
    if request.htmx:
        return HttpResponseClientRefresh()
    return redirect(board_url)


# --- The model editor -----------------------------------------------------------------------

MODEL_FIELDS = ("name", "description", "lock_days", "interval_minutes", "order")
NEW_STAGE_COLOR = "#64748b"


def _number(text: str):
    """A number typed in the form; what is not one goes to the service as typed, which says
    what it expects."""
    text = (text or "").strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _form_of(model: StageModel | None) -> dict[str, Any]:
    """The editor's form for a stored model (or a new one)."""
    if model is None:
        return {"key": "", "name": "", "description": "", "active": True, "monotonic": False,
                "lock_days": 7, "interval_minutes": 15, "order": 10,
                "thresholds": [], "stages": []}
    counts = dict(CustomerStage.objects.filter(model=model).values_list("stage_id")
                  .annotate(n=Count("id")).values_list("stage_id", "n"))
    return {
        "key": model.key, "name": model.name, "description": model.description,
        "active": model.active, "monotonic": model.monotonic, "lock_days": model.lock_days,
        "interval_minutes": model.interval_minutes, "order": model.order,
        "thresholds": [{"name": k, "value": v} for k, v in model.thresholds.items()],
        "stages": [{"key": s.key, "name": s.name, "color": s.color, "precedence": s.precedence,
                    "win_back_from": s.win_back_from, "stored": True,
                    "count": counts.get(s.pk, 0),
                    "condition": json.dumps(s.condition, ensure_ascii=False, indent=2)
                    if s.condition is not None else ""}
                   for s in model.stages.order_by("position")],
    }


def _row_count(value: str | None) -> int:
    return min(int(value), 200) if value and value.isdigit() else 0


def _form_from(post, model: StageModel | None) -> dict[str, Any]:
    """The editor's form as posted: what was typed, kept as typed."""
    stored = {}
    if model is not None:
        counts = dict(CustomerStage.objects.filter(model=model).values_list("stage__key")
                      .annotate(n=Count("id")).values_list("stage__key", "n"))
        stored = {key: counts.get(key, 0) for key in model.stages.values_list("key", flat=True)}
    form: dict[str, Any] = {name: post.get(name, "") for name in MODEL_FIELDS}
    form.update(key=model.key if model else post.get("key", "").strip(),
                active=bool(post.get("active")), monotonic=bool(post.get("monotonic")))
    form["thresholds"] = [
        {"name": post.get(f"threshold-{i}-name", "").strip(),
         "value": post.get(f"threshold-{i}-value", "").strip()}
        for i in range(_row_count(post.get("threshold-count")))]
    stages = []
    for i in range(_row_count(post.get("stage-count"))):
        key = post.get(f"stage-{i}-key", "").strip()
        stages.append({"key": key, "name": post.get(f"stage-{i}-name", "").strip(),
                       "color": post.get(f"stage-{i}-color", "") or NEW_STAGE_COLOR,
                       "precedence": post.get(f"stage-{i}-precedence", "").strip(),
                       "win_back_from": bool(post.get(f"stage-{i}-win_back_from")),
                       "condition": post.get(f"stage-{i}-condition", ""),
                       "stored": key in stored, "count": stored.get(key, 0)})
    form["stages"] = stages
    return form


def _definition(form: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The form as `stage_model_save` / `stage_model_simulate` take it: model fields and the
    stages in their order (positions 0, 1, …)."""
    fields = {"name": form["name"].strip(), "description": form["description"].strip(),
              "active": form["active"], "monotonic": form["monotonic"],
              "lock_days": _number(str(form["lock_days"])),
              "interval_minutes": _number(str(form["interval_minutes"])),
              "order": _number(str(form["order"])),
              "thresholds": {t["name"]: _number(str(t["value"]))
                             for t in form["thresholds"] if t["name"]}}
    stages = []
    for index, row in enumerate(form["stages"]):
        text = row["condition"].strip()
        try:
            condition = json.loads(text) if text else None
        except ValueError as exc:
            raise ApplicationError(_("stages[%(index)d].condition: not valid JSON (%(error)s)")
                                   % {"index": index, "error": exc},
                                   extra={"stage": row["key"]}) from exc
        stages.append({"key": row["key"], "name": row["name"], "color": row["color"],
                       "precedence": _number(str(row["precedence"])),
                       "win_back_from": row["win_back_from"], "condition": condition,
                       "position": index})
    return fields, stages


def _apply_op(form: dict[str, Any], op: str) -> bool:
    """Add, move or drop a row of the form without saving (the buttons work without
    JavaScript); False when `op` is not one of these."""
    stages = form["stages"]
    if op == "add-stage":
        stages.append({"key": "", "name": "", "color": NEW_STAGE_COLOR, "precedence": 50,
                       "win_back_from": False, "condition": "", "stored": False, "count": 0})
        return True
    if op == "add-threshold":
        form["thresholds"].append({"name": "", "value": ""})
        return True
    verb, _sep, index = op.partition("-")
    if verb not in ("up", "down", "remove") or not index.isdigit():
        return False
    i = int(index)
    if not 0 <= i < len(stages):
        return True
    if verb == "up" and i > 0:
        stages[i - 1], stages[i] = stages[i], stages[i - 1]
    elif verb == "down" and i < len(stages) - 1:
        stages[i + 1], stages[i] = stages[i], stages[i + 1]
    elif verb == "remove" and not stages[i]["stored"]:
        del stages[i]
    return True


def _simulation(model: StageModel | None, form: dict[str, Any]) -> dict[str, Any]:
    """The simulation of the form's definition, shaped for the page: counts now and proposed
    per stage, and the from→to matrix (staying customers on the diagonal)."""
    fields, stages = _definition(form)
    result = services.stage_model_simulate(
        model=model or StageModel(key=form["key"] or "new", thresholds={}),
        thresholds=fields["thresholds"], stages=stages, monotonic=fields["monotonic"])
    for stage in result["stages"]:
        stage["change"] = stage["proposed"] - stage["now"]
    keys = [s["stage"] for s in result["stages"]]
    moves = {(m["from"], m["to"]): m["count"] for m in result["moves"]}
    leaving = {k: sum(n for (f, _t), n in moves.items() if f == k) for k in keys}
    rows = []
    for stage in result["stages"]:
        cells = [{"count": moves.get((stage["stage"], k), 0) if k != stage["stage"]
                  else stage["now"] - leaving[stage["stage"]], "stay": k == stage["stage"]}
                 for k in keys]
        rows.append({"stage": stage, "cells": cells})
    unplaced = [moves.get((None, k), 0) for k in keys]
    return {"stages": result["stages"], "rows": rows,
            "unplaced": [{"count": n, "stay": False} for n in unplaced] if any(unplaced)
            else None,
            "moved": sum(moves.values()),
            "now_total": sum(s["now"] for s in result["stages"]),
            "proposed_total": sum(s["proposed"] for s in result["stages"])}


def _editor(request, model: StageModel | None, form: dict[str, Any], *, error: str = "",
            simulation: dict[str, Any] | None = None, status: int = 200):
    return render(request, "lifecycle/model_edit.html", {
        "model": model, "form": form, "error": error, "simulation": simulation,
        "move_targets": [s for s in form["stages"] if s["stored"]]}, status=status)


@login_required
def model_edit(request, key: str | None = None):
    """The model editor (admins): model fields, thresholds and stages. POST saves through
    `stage_model_save`; the row buttons (add, up, down, remove) and "Simulate" without
    JavaScript re-render the form as typed."""
    _require_admin(request.user)
    model = selectors.stage_model_get(key=key) if key is not None else None
    if request.method != "POST":
        return _editor(request, model, _form_of(model))
    form = _form_from(request.POST, model)
    op = request.POST.get("op", "save")
    if _apply_op(form, op):
        return _editor(request, model, form)
    if op == "simulate":
        try:
            simulation = _simulation(model, form)
        except ApplicationError as exc:
            return _editor(request, model, form, error=exc.message, status=400)
        return _editor(request, model, form, simulation=simulation)
    try:
        fields, stages = _definition(form)
        if model is None:
            fields["key"] = form["key"]
        saved = services.stage_model_save(model=model, stages=stages, **fields)
    except (ApplicationError, ValidationError) as exc:
        if model is not None:
            model.refresh_from_db()     # the service set the typed values on it
        return _editor(request, model, form, error=_error_text(exc), status=400)
    messages.success(request, _("Stage model “%(name)s” saved.") % {"name": saved.name})
    return redirect("lifecycle-dashboard:model-edit", key=saved.key)


@login_required
@require_POST
def model_simulate(request, key: str | None = None):
    """The simulation of the editor's form, before saving (an htmx fragment; a refusal is a
    400 with its message)."""
    _require_admin(request.user)
    model = selectors.stage_model_get(key=key) if key is not None else None
    form = _form_from(request.POST, model)
    try:
        simulation = _simulation(model, form)
    except ApplicationError as exc:
        return render(request, "lifecycle/_simulation.html", {"error": exc.message},
                      status=400)
    return render(request, "lifecycle/_simulation.html", {"simulation": simulation})


@login_required
@require_POST
def stage_remove(request, key: str, stage_key: str):
    """Delete a stage, its customers moved to the chosen stage (`stage_delete`)."""
    _require_admin(request.user)
    model = selectors.stage_model_get(key=key)
    stage = get_object_or_404(Stage, model=model, key=stage_key)
    move_to = Stage.objects.filter(model=model, key=request.POST.get("move_to", "")).first()
    try:
        if move_to is None:
            raise ApplicationError(_("Choose the stage its customers move to."))
        moved = services.stage_delete(stage=stage, move_to=move_to, actor=request.user)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, ngettext(
            "Stage “%(stage)s” deleted; %(count)d customer moved to %(to)s.",
            "Stage “%(stage)s” deleted; %(count)d customers moved to %(to)s.", moved)
            % {"stage": stage.name, "count": moved, "to": move_to.name})
    return redirect("lifecycle-dashboard:model-edit", key=model.key)


@login_required
@require_POST
def model_delete(request, key: str):
    _require_admin(request.user)
    model = selectors.stage_model_get(key=key)
    try:
        services.stage_model_delete(model=model)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("lifecycle-dashboard:model-edit", key=model.key)
    messages.success(request, _("Stage model “%(name)s” deleted.") % {"name": model.name})
    return redirect("lifecycle-dashboard:models")


# --- The transition log ---------------------------------------------------------------------

class TransitionFilterForm(forms.Form):
    model = forms.SlugField(required=False)
    from_stage = forms.CharField(required=False)
    to_stage = forms.CharField(required=False)
    source = forms.ChoiceField(required=False,
                               choices=[("", "")] + list(TransitionSource.choices))
    start = forms.DateField(required=False)
    end = forms.DateField(required=False)
    q = forms.CharField(required=False, max_length=100)

    def values(self) -> dict[str, Any]:
        """The valid filters; an invalid one (a stale link, a hand-edited URL) is ignored."""
        self.is_valid()
        return {name: self.cleaned_data.get(name) or ("" if name not in ("start", "end")
                                                      else None) for name in self.fields}


@login_required
def transition_log(request, key: str | None = None):
    """Stage transitions newest first, filtered; operators see their customers' only."""
    access.require_customer_access(request.user)
    form = TransitionFilterForm(request.GET)
    values = form.values()
    models = list(StageModel.objects.order_by("order", "key"))
    model = None
    if key is not None:
        model = selectors.stage_model_get(key=key)
    elif values["model"]:
        model = next((m for m in models if m.key == values["model"]), None)
    answer = selectors.transition_log(
        user=request.user, model=model, from_stage=values["from_stage"] if model else "",
        to_stage=values["to_stage"] if model else "", source=values["source"],
        start=values["start"], end=values["end"], search=values["q"],
        page=_page_number(request.GET.get("page")))
    return render(request, "lifecycle/log.html", {
        "model": model, "fixed_model": key is not None, "models": models,
        "stages": selectors.model_stages(model=model) if model else [],
        "sources": TransitionSource.choices, "values": values,
        "filtered": any(values[k] for k in ("from_stage", "to_stage", "source", "start", "end",
                                             "q")) or (key is None and values["model"]),
        **answer})
