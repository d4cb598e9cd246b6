"""Dashboard pages of segments: the list, the builder (a visual editor of the condition with
a live count and sample) and its fragments. Thin over tagging's services and selectors, the
same ones the segments API calls."""

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from core import access
from core.exceptions import ApplicationError
from crm import extensions
from tagging import selectors, services
from tagging.models import Segment


def _require_editor(user) -> None:
    access.require_customer_access(user, _("Analysts read segments; only admins and "
                                           "operators save them."))


def _page(request, **context):
    """The layout's role comes from core.context_processors; pages add whether they edit."""
    return {"can_edit": access.can_see_customers(request.user), **context}


def _condition_from(text: str):
    """The condition typed or built in the form; a clear error for what is not JSON."""
    text = (text or "").strip()
    if not text:
        raise ApplicationError(_("The condition is empty: add at least one condition."))
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ApplicationError(_("The condition is not valid JSON: %(error)s")
                               % {"error": exc}) from exc


@login_required
def segment_list(request):
    access.require_role(request.user)
    segments = Segment.objects.select_related("created_by").order_by("name")
    return render(request, "tagging/segment_list.html", _page(request, segments=segments))


@login_required
def segment_edit(request, pk: int | None = None):
    """The builder: GET shows it (a new segment, or a saved one); POST saves through
    `segment_save`. A refused condition is shown with its path, with what was typed kept."""
    access.require_role(request.user)
    segment = get_object_or_404(Segment, pk=pk) if pk is not None else None
    form = {"name": segment.name if segment else "",
            "description": segment.description if segment else "",
            "condition": json.dumps(segment.condition, ensure_ascii=False, indent=2)
            if segment else request.GET.get("condition", "")}
    error, status = "", 200
    if request.method == "POST":
        _require_editor(request.user)
        form = {key: request.POST.get(key, "") for key in ("name", "description", "condition")}
        try:
            saved = services.segment_save(
                segment=segment, actor=request.user, name=form["name"].strip(),
                description=form["description"].strip(),
                condition=_condition_from(form["condition"]))
        except ApplicationError as exc:
            error, status = exc.message, 400
        else:
            messages.success(request, _("Segment “%(name)s” saved.") % {"name": saved.name})
            return redirect("segments:edit", pk=saved.pk)
    return render(request, "tagging/segment_edit.html",
                  _page(request, segment=segment, form=form, error=error), status=status)


@login_required
@require_POST
def segment_delete(request, pk: int):
    _require_editor(request.user)
    segment = get_object_or_404(Segment, pk=pk)
    try:
        services.segment_delete(segment=segment, actor=request.user)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("segments:edit", pk=pk)
    messages.success(request, _("Segment “%(name)s” deleted.") % {"name": segment.name})
    return redirect("segments:list")


@login_required
@require_POST
def segment_preview(request):
    """The live count and sample of the condition in the builder (an htmx fragment), from
    the segment index when it can answer (saying as of when), else counted now."""
    access.require_role(request.user)
    context = {"error": "", "can_see_customers": access.can_see_customers(request.user)}
    try:
        condition = _condition_from(request.POST.get("condition", ""))
        answer = selectors.segment_preview(user=request.user, condition=condition,
                                           exact=request.POST.get("exact") == "1")
    except ApplicationError as exc:
        context["error"] = exc.message
    else:
        # The sample comes from crm's customer list: tags and stages are loaded with it.
        context.update(answer=answer, rows=[
            {"customer": c, "chips": extensions.extension_chips(c)} for c in answer["sample"]])
    return render(request, "tagging/_segment_preview.html", context)


@login_required
def segment_count(request, pk: int):
    """A saved segment's count for its row in the list (an htmx fragment, loaded lazily)."""
    access.require_role(request.user)
    segment = get_object_or_404(Segment, pk=pk)
    try:
        answer = selectors.segment_preview(user=request.user, condition=segment.condition)
    except ApplicationError as exc:
        return render(request, "tagging/_segment_count.html", {"error": exc.message})
    return render(request, "tagging/_segment_count.html", {"answer": answer})
