"""Dashboard pages of outreach: what an operator has to do today, the outbox, and the outreach
panel of the customer page."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.http import require_POST

from campaigns import selectors, services
from campaigns.models import Channel, Message, OperatorTask
from core import access
from core.exceptions import ApplicationError

OUTBOX_PAGE_SIZE = 50


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


class OutboxFilterForm(forms.Form):
    status = forms.ChoiceField(
        label=gettext_lazy("Status"), required=False,
        choices=[("", gettext_lazy("Any status")), *Message.Status.choices])
    channel = forms.ChoiceField(
        label=gettext_lazy("Channel"), required=False,
        choices=[("", gettext_lazy("All channels")), *Channel.choices])
    skip_reason = forms.ChoiceField(
        label=gettext_lazy("Skip reason"), required=False,
        choices=[("", gettext_lazy("Any reason")), *Message.SkipReason.choices])
    sop = forms.TypedChoiceField(label=gettext_lazy("SOP"), required=False, coerce=int,
                                 empty_value=None)
    campaign = forms.TypedChoiceField(label=gettext_lazy("Campaign"), required=False,
                                      coerce=int, empty_value=None)

    def __init__(self, data, *, sops: list, campaigns: list) -> None:
        super().__init__(data)
        self.fields["sop"].choices = [("", _("All SOPs")), *sops]
        self.fields["campaign"].choices = [("", _("All campaigns")), *campaigns]

    def values(self) -> dict:
        """The valid filters; an invalid one (a stale link, a hand-edited URL) is ignored."""
        self.is_valid()
        return {name: self.cleaned_data.get(name, field.empty_value
                                            if isinstance(field, forms.TypedChoiceField) else "")
                for name, field in self.fields.items()}


def _outbox_form(data) -> OutboxFilterForm:
    raw_campaign = data.get("campaign", "")
    return OutboxFilterForm(data, **selectors.outbox_filter_choices(
        campaign=int(raw_campaign) if raw_campaign.isdigit() else None))


def _require_outbox_access(user) -> None:
    if access.user_role(user) is None:
        raise PermissionDenied(_("Your account has no role (admin, operator or analyst); "
                                 "ask an admin for one."))
    if not access.can_see_customers(user):
        raise PermissionDenied(_("Analysts see aggregate figures only, not individual "
                                 "customers."))


@login_required
def outbox(request):
    """Every message of the user's customers by status, channel, skip reason, SOP or
    campaign; admins retry failed ones from here."""
    _require_outbox_access(request.user)
    form = _outbox_form(request.GET)
    values = form.values()
    counts = selectors.outbox_status_counts(
        user=request.user, **{k: v for k, v in values.items() if k != "status"})
    paginator = Paginator(selectors.outbox_messages(user=request.user, **values),
                          OUTBOX_PAGE_SIZE)
    # The status counts already say how many rows match: no second COUNT over the outbox.
    paginator.count = counts[values["status"]] if values["status"] else sum(counts.values())
    page_obj = paginator.get_page(request.GET.get("page"))
    tabs = [{"status": "", "label": _("All"), "count": sum(counts.values())}] + [
        {"status": status, "label": label, "count": counts[status]}
        for status, label in Message.Status.choices]
    return render(request, "campaigns/outbox.html", {
        "form": form, "values": values, "tabs": tabs, "counts": counts,
        "page_obj": page_obj, "rows": page_obj.object_list,
        "page_range": paginator.get_elided_page_range(page_obj.number, on_each_side=2,
                                                      on_ends=1),
        "filtered": any(v not in ("", None) for v in values.values()),
        "can_retry": access.is_admin(request.user),
        "retry_all_count": counts[Message.Status.FAILED]
        if values["status"] in ("", Message.Status.FAILED) else 0,
    })


@login_required
@require_POST
def outbox_retry(request):
    """Retry the failed messages ticked (`ids`) or every failed one the filters select
    (`all_failed`), then go back to the outbox as it was."""
    if not access.is_admin(request.user):
        raise PermissionDenied(_("Only admins may retry failed messages."))
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        back = reverse("outreach:outbox")
    try:
        if request.POST.get("all_failed"):
            values = _outbox_form(request.POST).values()
            retried = services.messages_retry(
                actor=request.user, queryset=selectors.outbox_messages(
                    user=request.user, **{**values, "status": Message.Status.FAILED}))
        else:
            raw = request.POST.getlist("ids")
            if not raw:
                raise ApplicationError(_("Tick the failed messages to retry, or retry all "
                                         "failed ones."))
            if not all(value.isdigit() for value in raw):
                raise ApplicationError(_("Message ids are numbers."))
            retried = services.messages_retry(actor=request.user, ids=[int(v) for v in raw])
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        if retried:
            messages.success(request, ngettext(
                "%(count)d failed message queued again.",
                "%(count)d failed messages queued again.", retried) % {"count": retried})
        else:
            messages.warning(request, _("No failed message to retry: nothing changed."))
    return redirect(back)
