"""Dashboard pages of outreach: what an operator has to do today, and the outreach panel of the
customer page."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from campaigns import selectors, services
from campaigns.models import OperatorTask
from core import access
from core.exceptions import ApplicationError


@login_required
def today(request):
    """Open to-dos (1-to-1 follow-ups, churn warnings, alerts) and today's messages."""
    if not access.can_see_customers(request.user):
        raise PermissionDenied(_("Analysts see aggregate figures only, not individual "
                                 "customers."))
    return render(request, "campaigns/today.html", selectors.today_for(user=request.user))


@login_required
@require_POST
def task_close(request, pk: int):
    task = get_object_or_404(OperatorTask, pk=pk)
    try:
        services.task_close(task=task, actor=request.user, status=request.POST.get("status", ""),
                            note=request.POST.get("note", ""))
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("Marked as done.") if task.status == "done"
                         else _("Skipped."))
    return redirect("outreach:today")


def customer_outreach_panel(request, customer) -> str:
    """The customer's messages (sent, queued, skipped with the reason) and the SOPs they are
    going through with the next step."""
    return render_to_string("campaigns/_customer_outreach.html",
                            {"customer": customer, **selectors.customer_outreach(
                                customer=customer)}, request=request)
