"""Dashboard pages of CSV imports: the upload form with the list of past imports, one
import's progress (polled by htmx) and rejected rows, and those rows as a CSV file.

Admins and operators import; an operator sees only their own imports (someone else's is a
404), an admin all of them. The work is crm.services.customer_import_start / _run.
"""

import csv
from functools import wraps
from itertools import zip_longest
from pathlib import PurePath
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import content_disposition_header
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.http import require_GET, require_http_methods

from core import access
from core.exceptions import ApplicationError
from crm import services
from crm.models import Customer, CustomerImport

IMPORTS_PAGE_SIZE = 25
ERRORS_PAGE_SIZE = 50

def _column_help() -> list[tuple[str, str]]:
    """The columns an import reads, with what goes in them (shown next to the upload form)."""
    return [
        ("external_id", _("Required. The customer's id in your systems; a row with a known id "
                          "updates that customer with its non-empty cells.")),
        ("name", _("Name, up to 100 characters.")),
        ("phone", _("Phone number, up to 32 characters.")),
        ("gender", _("One of: %(choices)s.") % {"choices": ", ".join(Customer.Gender.values)}),
        ("city", _("City, up to 64 characters.")),
        ("channel", _("The code of an existing channel.")),
        ("owner", _("The username of the staff member who owns the customer; empty: you.")),
        ("joined_at", _("When they joined: a date (2024-03-01) or an ISO 8601 date-time, not "
                        "in the future; empty: now.")),
        ("status", _("One of: %(choices)s; empty: active.")
         % {"choices": ", ".join(Customer.Status.values)}),
        ("opted_out", _("true / false (also 是 / 否, yes / no, 1 / 0).")),
        ("attributes.<key>", _("Any further attribute, e.g. attributes.level; usable in "
                               "segments and conditions.")),
    ]


SAMPLE_ROWS = [
    ["external_id", "name", "phone", "gender", "city", "channel", "owner", "joined_at", "status",
     "opted_out", "attributes.level"],
    ["wx-10001", "张伟", "13800001111", "male", "上海", "", "", "2024-03-01", "active", "false",
     "gold"],
    ["wx-10002", "李娜", "", "female", "杭州", "", "", "2024-03-02T10:30:00+08:00", "", "", ""],
    ["wx-10003", "王磊", "13900002222", "", "", "", "", "", "", "是", "silver"],
]


class ImportForm(forms.Form):
    file = forms.FileField(label=gettext_lazy("CSV file"),
                           widget=forms.ClearableFileInput(attrs={"accept": ".csv,text/csv"}))


def _importers_only(view):
    """Signed-in admins and operators; anyone else is a 403, whatever the method."""
    @login_required
    @wraps(view)
    def checked(request, *args, **kwargs):
        access.require_customer_access(request.user, _(
            "Analysts see aggregate figures only; imports are for admins and operators."))
        return view(request, *args, **kwargs)
    return checked


def _imports_for(user):
    """The imports the user may see, without their files (which only the worker reads)."""
    imports = CustomerImport.objects.select_related("actor").defer("content")
    if not access.is_admin(user):
        imports = imports.filter(actor=user)
    return imports


def _csv_response(filename: str) -> tuple[HttpResponse, Any]:
    """A CSV download that Excel opens as UTF-8 (with a byte-order mark), so Chinese reads."""
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = content_disposition_header(True, filename)
    response.write("\ufeff")
    return response, csv.writer(response)


@_importers_only
@require_http_methods(["GET", "POST"])
def imports(request):
    """The upload form and the imports so far; POST queues an import and goes to its page."""
    user = request.user
    form, status = ImportForm(), 200
    if request.method == "POST":
        form = ImportForm(request.POST, request.FILES)
        if form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                job = services.customer_import_start(actor=user, name=upload.name,
                                                     content=upload.read())
            except ApplicationError as exc:
                form.add_error("file", exc.message)
            else:
                messages.success(request, ngettext(
                    "“%(name)s” uploaded: %(n)d row is being imported.",
                    "“%(name)s” uploaded: %(n)d rows are being imported.", job.total_rows)
                    % {"name": job.name, "n": job.total_rows})
                return redirect("dashboard:import", pk=job.pk)
        status = 400
    page_obj = Paginator(_imports_for(user).defer("rejected_rows", "columns"),
                         IMPORTS_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "crm/imports.html", {
        "form": form, "page_obj": page_obj, "columns": _column_help(),
        "max_rows": services.IMPORT_MAX_ROWS,
        "max_mb": services.IMPORT_MAX_BYTES // (1024 * 1024),
        "page_range": page_obj.paginator.get_elided_page_range(page_obj.number, on_each_side=2,
                                                               on_ends=1)}, status=status)


@_importers_only
@require_GET
def import_sample(request):
    """A small CSV file in the expected shape, to start from."""
    response, writer = _csv_response("customers-sample.csv")
    writer.writerows(SAMPLE_ROWS)
    return response


@_importers_only
@require_GET
def import_detail(request, pk: int):
    """One import: its progress while it runs, then its figures and rejected rows (paged)."""
    user = request.user
    job = get_object_or_404(_imports_for(user), pk=pk)
    page_obj = Paginator(job.rejected_rows, ERRORS_PAGE_SIZE).get_page(request.GET.get("page"))
    errors = [{"row": item["row"], "message": item["message"],
               "cells": [{"column": column or "", "value": value}
                         for column, value in zip_longest(job.columns, item["values"])
                         if value]}
              for item in page_obj.object_list]
    return render(request, "crm/import_detail.html", {
        "job": job, "polling": not job.finished, "errors": errors, "page_obj": page_obj,
        "kept": len(job.rejected_rows),
        "page_range": page_obj.paginator.get_elided_page_range(page_obj.number, on_each_side=2,
                                                               on_ends=1)})


@_importers_only
@require_GET
def import_progress(request, pk: int):
    """The progress fragment, polled every second while the import is queued or running. The
    answer for a finished import has no polling in it, and tells htmx to load the page once
    more so the results and the rejected rows are shown whole."""
    user = request.user
    job = get_object_or_404(_imports_for(user).defer("rejected_rows"), pk=pk)
    response = render(request, "crm/_import_progress.html",
                      {"job": job, "polling": not job.finished})
    if request.htmx and job.finished:
        response["HX-Refresh"] = "true"
    return response


@_importers_only
@require_GET
def import_errors_csv(request, pk: int):
    """The rejected rows kept (services.IMPORT_ERRORS_KEPT at most): row number, message, then
    the row's cells under the file's own header."""
    user = request.user
    job = get_object_or_404(_imports_for(user), pk=pk)
    response, writer = _csv_response(f"{PurePath(job.name).stem}-errors.csv")
    writer.writerow([_("Row"), _("Message"), *job.columns])
    for item in job.rejected_rows:
        writer.writerow([item["row"], item["message"], *item["values"]])
    return response
