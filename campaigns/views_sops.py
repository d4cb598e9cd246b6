"""Dashboard pages of stage-matched SOPs (触达SOP): the list per stage model and stage with each
step's sends, blocks and paused state, and the editor of an SOP and its steps. Thin over the
services the SOP API calls (`sop_save`, `sop_delete`, `sop_step_resume`, `block_stats`)."""

import json
from datetime import time as time_of_day
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Prefetch
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from campaigns import selectors, services, templates
from campaigns.models import Category, Channel, Sop, SopStep
from core import access
from core.exceptions import ApplicationError
from core.views import posted_next
from lifecycle.models import Stage, StageModel

# How an editor enters a delay; stored in minutes.
UNITS = {"minutes": 1, "hours": 60, "days": 24 * 60}
UNIT_LABELS = {"minutes": gettext_lazy("minutes"), "hours": gettext_lazy("hours"),
               "days": gettext_lazy("days")}
STEP_FIELDS = ("order", "timing", "delay", "unit", "day", "at_time", "channel", "category",
               "template", "condition", "paused", "remove")


def _require_admin(user) -> None:
    access.require_admin(user, _("Only admins change SOPs."))


@login_required
def sop_list(request):
    """Every SOP under its model and stage, each step with its timing, sends, blocks, block
    rate and paused state."""
    access.require_role(request.user)
    sops = list(Sop.objects.select_related("model", "stage", "overridden_by")
                .prefetch_related(Prefetch("steps", queryset=SopStep.objects.order_by("order")))
                .annotate(enrolled=Count("enrollments"))
                .order_by("model__order", "model__key", "stage__position", "name", "pk"))
    rows = selectors.steps_with_block_rates([step for sop in sops for step in sop.steps.all()])
    by_step = {row["step"].pk: row for row in rows}
    models: dict[int, dict[str, Any]] = {}
    for sop in sops:
        group = models.setdefault(sop.model_id, {"model": sop.model, "sops": []})
        group["sops"].append({"sop": sop, "steps": [by_step[s.pk] for s in sop.steps.all()]})
    return render(request, "campaigns/sop_list.html", {"models": list(models.values())})


def _step_form(step: SopStep | dict | None, index: int) -> dict[str, Any]:
    """One step as the editor shows it."""
    if step is None:
        return {"index": index, "order": "", "timing": "delay", "delay": "0", "unit": "hours",
                "day": "", "at_time": "", "channel": Channel.WECOM, "category": Category.CONTENT,
                "template": "", "condition": "", "paused": False, "remove": False,
                "pk": None, "paused_reason": ""}
    if isinstance(step, dict):
        return {"index": index, **step}
    minutes = step.delay_minutes
    unit = next(u for u in ("days", "hours", "minutes") if minutes % UNITS[u] == 0) \
        if minutes else "hours"
    return {"index": index, "order": str(step.order),
            "timing": "day" if step.day is not None else "delay",
            "delay": str(minutes // UNITS[unit]), "unit": unit,
            "day": "" if step.day is None else str(step.day),
            "at_time": step.at_time.strftime("%H:%M") if step.at_time else "",
            "channel": step.channel, "category": step.category, "template": step.template,
            "condition": json.dumps(step.condition, ensure_ascii=False, indent=2)
            if step.condition is not None else "",
            "paused": step.paused, "remove": False, "pk": step.pk,
            "paused_reason": step.paused_reason}


def _posted_steps(data) -> list[dict[str, Any]]:
    try:
        count = min(int(data.get("step_count", 0)), 50)
    except ValueError:
        count = 0
    steps = []
    for index in range(count):
        step = {name: data.get(f"step-{index}-{name}", "") for name in STEP_FIELDS}
        step["paused"] = bool(step["paused"])
        step["remove"] = bool(step["remove"])
        pk = data.get(f"step-{index}-pk", "").strip()
        step["pk"] = pk if pk.isdigit() else None   # shown with its step's statistics only
        step["paused_reason"] = data.get(f"step-{index}-paused_reason", "")
        steps.append(step)
    return steps


def _number(text: str, what: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ApplicationError(_("%(what)s: a whole number") % {"what": what}) from None
    if value < 0:
        raise ApplicationError(_("%(what)s: not below 0") % {"what": what})
    return value


def _json(text: str, what: str):
    text = (text or "").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ApplicationError(_("%(what)s: not valid JSON: %(error)s")
                               % {"what": what, "error": exc}) from exc


def _step_data(form: dict[str, Any], position: int) -> dict[str, Any]:
    """A posted step as `sop_save` takes it; what cannot be read names the step."""
    where = _("step %(n)d") % {"n": position}
    data: dict[str, Any] = {
        "order": _number(form["order"] or str(position), where),
        "channel": form["channel"], "category": form["category"], "template": form["template"],
        "condition": _json(form["condition"], _("%(step)s, extra condition") % {"step": where}),
        "paused": form["paused"]}
    if form["timing"] == "day":
        data["day"] = _number(form["day"], _("%(step)s, day") % {"step": where})
        try:
            data["at_time"] = time_of_day.fromisoformat(form["at_time"])
        except ValueError:
            raise ApplicationError(_("%(step)s: a time of day, HH:MM") % {"step": where}) \
                from None
        data["delay_minutes"] = 0
    else:
        amount = _number(form["delay"] or "0", _("%(step)s, delay") % {"step": where})
        data.update(delay_minutes=amount * UNITS.get(form["unit"], 1), day=None, at_time=None)
    return data


def _stages_by_model() -> list[dict[str, Any]]:
    models = StageModel.objects.prefetch_related(
        Prefetch("stages", queryset=Stage.objects.order_by("position", "key"))).order_by(
        "order", "key")
    return [{"model": m, "stages": list(m.stages.all())} for m in models]


@login_required
def sop_edit(request, pk: int | None = None):
    """The SOP editor: its model and stage, holdout, goal, and steps (delay or "day N at
    HH:MM", channel, category, template with a live preview, extra condition). Everyone with
    a role reads it; admins change it. A stage-guard refusal is shown with its reason and an
    admin may override it, on the record."""
    access.require_role(request.user)
    sop = (get_object_or_404(Sop.objects.select_related("model", "stage", "overridden_by"),
                             pk=pk) if pk is not None else None)
    can_edit = access.is_admin(request.user)
    error, status = "", 200
    if request.method == "POST":
        _require_admin(request.user)
        form = {key: request.POST.get(key, "") for key in (
            "name", "description", "stage", "holdout_percent", "goal")}
        form["active"] = bool(request.POST.get("active"))
        form["override_stage_guard"] = bool(request.POST.get("override_stage_guard"))
        steps = _posted_steps(request.POST)
        if request.POST.get("add_step"):
            steps.append(_step_form(None, len(steps)) | {
                "order": str(max([int(s["order"]) for s in steps
                                  if str(s["order"]).isdigit()] or [0]) + 1)})
        else:
            try:
                saved = _save(request, sop, form, steps)
            except ApplicationError as exc:
                error, status = exc.message, 400
            else:
                messages.success(request, _("SOP “%(name)s” saved.") % {"name": saved.name})
                return redirect("outreach:sop", pk=saved.pk)
        steps = [_step_form(step, index) for index, step in enumerate(steps)]
    else:
        stage = (f"{sop.model.key}:{sop.stage.key}" if sop else request.GET.get("stage", ""))
        form = {"name": sop.name if sop else "", "description": sop.description if sop else "",
                "stage": stage, "active": sop.active if sop else True,
                "holdout_percent": str(sop.holdout_percent) if sop else "0",
                "goal": json.dumps(sop.goal, ensure_ascii=False, indent=2)
                if sop and sop.goal is not None else "",
                "override_stage_guard": sop.override_stage_guard if sop else False}
        existing = list(sop.steps.order_by("order")) if sop else []
        steps = [_step_form(step, index) for index, step in enumerate(existing)] or (
            [_step_form(None, 0) | {"order": "1"}] if can_edit else [])
    stats = {row["step"].pk: row for row in selectors.steps_with_block_rates(
        list(sop.steps.all()) if sop else [])}
    for step in steps:
        step["stats"] = stats.get(int(step["pk"])) if step.get("pk") else None
    return render(request, "campaigns/sop_edit.html", {
        "sop": sop, "form": form, "steps": steps, "error": error, "can_edit": can_edit,
        "stages": _stages_by_model(), "channels": Channel.choices,
        "categories": Category.choices, "units": list(UNIT_LABELS.items()),
        "variables": templates.VARIABLES}, status=status)


def _save(request, sop: Sop | None, form: dict[str, Any], steps: list[dict]) -> Sop:
    model_key, _sep, stage_key = form["stage"].partition(":")
    stage = Stage.objects.select_related("model").filter(model__key=model_key,
                                                         key=stage_key).first()
    if stage is None:
        raise ApplicationError(_("stage: choose the stage the SOP follows"))
    kept = [s for s in steps if not s["remove"]]
    if not kept:
        raise ApplicationError(_("steps: an SOP sends at least one step"))
    return services.sop_save(
        sop=sop, actor=request.user, name=form["name"].strip(),
        description=form["description"].strip(), model=stage.model, stage=stage,
        active=form["active"], holdout_percent=_number(form["holdout_percent"] or "0",
                                                       _("holdout")),
        goal=_json(form["goal"], _("goal")), override_stage_guard=form["override_stage_guard"],
        steps=[_step_data(step, position) for position, step in enumerate(kept, start=1)])


@login_required
@require_POST
def sop_step_resume(request, pk: int):
    """Let a step that paused itself send again."""
    _require_admin(request.user)
    step = get_object_or_404(SopStep.objects.select_related("sop"), pk=pk)
    try:
        services.sop_step_resume(step=step, actor=request.user)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("Step %(order)d of “%(sop)s” sends again.")
                         % {"order": step.order, "sop": step.sop.name})
    return redirect(posted_next(request, reverse("outreach:sops")))


@login_required
@require_POST
def sop_delete(request, pk: int):
    _require_admin(request.user)
    sop = get_object_or_404(Sop, pk=pk)
    try:
        services.sop_delete(sop=sop)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("outreach:sop", pk=pk)
    messages.success(request, _("SOP “%(name)s” deleted.") % {"name": sop.name})
    return redirect("outreach:sops")
