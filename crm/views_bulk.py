"""The customer list's bulk actions — tags, stage, campaign, CSV export — on the selected rows
or on every customer the filter matches, and the pages of their background jobs (a progress
bar polled by htmx). Thin: the actions are the services other apps registered in
`crm.listing.bulk_actions` and crm's export service."""

import json
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from core import access, conditions
from core.exceptions import ApplicationError
from core.views import posted_next
from crm import listing, selectors, services
from crm.models import CustomerExport

MAX_SELECTED = 1000
JOB_KINDS = ("tags", "stage", "export")


def _back(request) -> str:
    """Where the action returns: the list with its filters (only ever this site's URL)."""
    return posted_next(request, reverse("dashboard:customer-list"))


def _target(request) -> tuple[Any, list[int] | None]:
    """The set an action works on: the selected ids, or the filter's condition (None: every
    customer the user may see) for "all matching"."""
    if request.POST.get("scope") == "all":
        text = request.POST.get("condition", "").strip()
        if not text:
            return None, None
        try:
            condition = json.loads(text)
        except ValueError as exc:
            raise ApplicationError(_("The filter's condition is not valid JSON: %(error)s")
                                   % {"error": exc}) from exc
        conditions.validate(condition)
        return condition, None
    ids = sorted({int(v) for v in request.POST.getlist("ids") if v.strip().isdigit()})
    if not ids:
        raise ApplicationError(_("Select customers first, or choose all customers matching "
                                 "the filter."))
    if len(ids) > MAX_SELECTED:
        raise ApplicationError(_("At most %(n)d selected customers; choose all customers "
                                 "matching the filter instead.") % {"n": MAX_SELECTED})
    return None, ids


def _campaign_condition(*, user, condition: Any, ids: list[int] | None) -> Any:
    """The audience for the composer: the filter's condition, or the selected customers by
    external id (the condition language names customers by it)."""
    if ids is None:
        return condition
    external = list(selectors.customer_set(user=user, customer_ids=ids)
                    .order_by("pk").values_list("external_id", flat=True))
    if not external:
        raise ApplicationError(_("None of the selected customers is yours to message."))
    return {"field": "external_id", "op": "in", "value": external}


def _export_response(*, user, customers, condition, ids):
    """A small set streams at once; a large one becomes a background export."""
    if customers.count() <= services.EXPORT_STREAM_LIMIT:
        name = f"customers-{timezone.localtime():%Y%m%d-%H%M}.csv"
        response = StreamingHttpResponse(
            services.customer_export_stream(user=user, condition=condition, customer_ids=ids),
            content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
    export = services.customer_export_start(actor=user, customers=customers,
                                            condition=condition, customer_ids=ids)
    return redirect("dashboard:customer-job", kind="export", pk=export.pk)


@login_required
@require_POST
def customer_bulk(request):
    """POST `action` (tags / stage / campaign / export) with `scope` = `selected` (the `ids`)
    or `all` (the filter's `condition`), and the action's own fields."""
    user = request.user
    access.require_customer_access(user)
    action = request.POST.get("action", "")
    back = _back(request)
    try:
        condition, ids = _target(request)
        if action == "campaign":
            if not access.is_admin(user):
                raise PermissionDenied(_("Only admins compose campaigns."))
            audience = _campaign_condition(user=user, condition=condition, ids=ids)
            query = urlencode({"condition": json.dumps(audience, ensure_ascii=False)})
            return redirect(f"{reverse('outreach:campaign-new')}?{query}")
        customers = selectors.customer_set(user=user, condition=condition, customer_ids=ids)
        if action == "export":
            return _export_response(user=user, customers=customers, condition=condition,
                                    ids=ids)
        bulk = listing.bulk_actions.get(action)
        if bulk is None:
            raise ApplicationError(_("Choose what to do with the customers."))
        started = bulk.start(actor=user, customers=customers, condition=condition,
                             customer_ids=ids, params={
                                 "add": request.POST.getlist("add"),
                                 "remove": request.POST.getlist("remove"),
                                 "target": request.POST.get("target", ""),
                                 "reason": request.POST.get("reason", "")})
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect(back)
    if started.done:
        messages.success(request, started.summary)
        return redirect(back)
    return redirect("dashboard:customer-job", kind=action, pk=started.job_id)


def _job(user, kind: str, pk: int) -> dict[str, Any]:
    """A job's progress for its page, or a 404 for a job that is not the user's (admins see
    every job)."""
    if kind == "export":
        exports = CustomerExport.objects.filter(pk=pk)
        if not access.is_admin(user):
            exports = exports.filter(actor=user)
        export = exports.first()
        if export is None:
            raise Http404
        progress = listing.BulkProgress(
            status=export.status, status_label=export.get_status_display(),
            total=export.total, processed=export.processed,
            summary=_("%(n)d of %(total)d customers written")
            % {"n": export.processed, "total": export.total}, error=export.error)
        return {"kind": kind, "pk": pk, "progress": progress, "export": export}
    bulk = listing.bulk_actions.get(kind) if kind in JOB_KINDS else None
    progress = bulk.progress(user=user, job_id=pk) if bulk is not None else None
    if progress is None:
        raise Http404
    return {"kind": kind, "pk": pk, "progress": progress, "export": None}


@login_required
def customer_job(request, kind: str, pk: int):
    """A bulk job's page: its progress bar (polled while it runs) and, for an export, the
    download once it is written."""
    access.require_customer_access(request.user)
    context = _job(request.user, kind, pk)
    if request.htmx:
        return render(request, "dashboard/_customer_job_progress.html", context)
    titles = {"tags": _("Bulk tagging"), "stage": _("Bulk stage move"),
              "export": _("Customer export")}
    return render(request, "dashboard/customer_job.html",
                  {"title": titles[kind], **context})


@login_required
def customer_job_progress(request, kind: str, pk: int):
    """The progress fragment the job page polls."""
    access.require_customer_access(request.user)
    return render(request, "dashboard/_customer_job_progress.html",
                  _job(request.user, kind, pk))


@login_required
def customer_export_download(request, pk: int):
    """The file of a finished export (its author's, or any for admins)."""
    access.require_customer_access(request.user)
    context = _job(request.user, "export", pk)
    export = context["export"]
    path = services.customer_export_path(export)
    if export.status != CustomerExport.Status.DONE or not path.exists():
        raise Http404
    name = f"customers-{timezone.localtime(export.created_at):%Y%m%d-%H%M}.csv"
    return FileResponse(open(path, "rb"), as_attachment=True, filename=name,
                        content_type="text/csv; charset=utf-8")
