"""Dashboard pages of outreach: what an operator has to do today, the outbox, campaigns (compose,
progress, results) and the outreach panel of the customer page."""

import json

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.http import require_POST

from campaigns import selectors, services, templates
from campaigns.extensions import campaign_panels
from campaigns.models import Campaign, Category, Channel, Message, OperatorTask
from core import access
from core.exceptions import ApplicationError
from core.views import posted_next
from crm import selectors as crm_selectors
from tagging import selectors as tagging_selectors
from tagging.models import Segment

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


@login_required
def outbox(request):
    """Every message of the user's customers by status, channel, skip reason, SOP or
    campaign; admins retry failed ones from here."""
    access.require_customer_access(request.user)
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
    back = posted_next(request, reverse("outreach:outbox"))
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


# --- Campaigns (群发): list, compose, progress, results --------------------------------------

CAMPAIGNS_PAGE_SIZE = 30
FINAL_STATES = (Campaign.Status.DONE, Campaign.Status.CANCELLED)


def _progress_context(campaign: Campaign) -> dict:
    counts = selectors.campaign_progress(campaign=campaign)
    total = counts["total"]
    done = total - counts["queued"] - counts["sending"]
    return {"campaign": campaign, "counts": counts, "total": total, "done": done,
            "percent": round(100 * done / total) if total else
            (100 if campaign.status in FINAL_STATES else 0),
            "polling": campaign.status in (Campaign.Status.SENDING, Campaign.Status.SCHEDULED)}


@login_required
def campaign_list(request):
    """Every campaign with its status and progress; admins compose new ones."""
    access.require_role(request.user)
    page_obj = Paginator(selectors.campaign_list(), CAMPAIGNS_PAGE_SIZE).get_page(
        request.GET.get("page"))
    rows = [_progress_context(c) for c in page_obj.object_list]
    return render(request, "campaigns/campaign_list.html", {
        "rows": rows, "page_obj": page_obj,
        "page_range": page_obj.paginator.get_elided_page_range(page_obj.number, on_each_side=2,
                                                               on_ends=1)})


def _campaign_form(campaign: Campaign | None, data=None, *, segment_id: str = "",
                   condition: str = "") -> dict:
    """What the composer shows: the campaign's values, or what was posted. A new campaign
    may start from a saved segment (`?segment=`) or a condition (`?condition=`, JSON: the
    customer list's filter)."""
    if data is not None:
        return {key: data.get(key, "") for key in (
            "name", "audience", "segment", "condition", "channel", "category", "template",
            "send_at", "holdout_percent")} | {"override_stage_guard": bool(
                data.get("override_stage_guard"))}
    if campaign is None:
        return {"name": "", "audience": "segment" if segment_id else "condition",
                "segment": segment_id, "condition": condition, "channel": Channel.WECOM,
                "category": Category.CONTENT, "template": "", "send_at": "",
                "holdout_percent": "0", "override_stage_guard": False}
    return {"name": campaign.name,
            "audience": "segment" if campaign.segment_id else "condition",
            "segment": str(campaign.segment_id or ""),
            "condition": json.dumps(campaign.condition, ensure_ascii=False, indent=2)
            if campaign.condition is not None else "",
            "channel": campaign.channel, "category": campaign.category,
            "template": campaign.template,
            "send_at": timezone.localtime(campaign.send_at).strftime("%Y-%m-%dT%H:%M")
            if campaign.send_at else "",
            "holdout_percent": str(campaign.holdout_percent),
            "override_stage_guard": campaign.override_stage_guard}


def _campaign_fields(form: dict) -> dict:
    """The posted composer as campaign_save's fields; what cannot be read is a clear error."""
    fields = {"name": form["name"].strip(), "channel": form["channel"],
              "category": form["category"], "template": form["template"],
              "override_stage_guard": form["override_stage_guard"]}
    if form["audience"] == "segment":
        segment = (Segment.objects.filter(pk=int(form["segment"])).first()
                   if form["segment"].isdigit() else None)
        if segment is None:
            raise ApplicationError(_("audience: choose a saved segment"))
        fields.update(segment=segment, condition=None)
    else:
        text = form["condition"].strip()
        if not text:
            raise ApplicationError(_("audience: add at least one condition"))
        try:
            fields.update(condition=json.loads(text), segment=None)
        except ValueError as exc:
            raise ApplicationError(_("audience: the condition is not valid JSON: %(error)s")
                                   % {"error": exc}) from exc
    try:
        fields["holdout_percent"] = int(form["holdout_percent"] or 0)
    except ValueError:
        raise ApplicationError(_("holdout: a whole number of percent")) from None
    send_at = form["send_at"].strip()
    if send_at:
        moment = parse_datetime(send_at)
        if moment is None:
            raise ApplicationError(_("send at: a date and time, e.g. 2026-12-12 20:00"))
        fields["send_at"] = (timezone.make_aware(moment) if timezone.is_naive(moment)
                             else moment)
    else:
        fields["send_at"] = None
    return fields


@login_required
def campaign_edit(request, pk: int | None = None):
    """The composer (admins): audience (a saved segment or the builder) with its count,
    channel, category, template with a live preview, when to send and the holdout. "Save"
    keeps a draft; "Save and start" also schedules it (now, or at its time)."""
    access.require_admin(request.user, _("Only admins compose campaigns."))
    campaign = get_object_or_404(Campaign, pk=pk) if pk is not None else None
    if campaign is not None and campaign.status not in (Campaign.Status.DRAFT,
                                                        Campaign.Status.SCHEDULED):
        messages.error(request, _("A campaign that has started cannot be changed."))
        return redirect("outreach:campaign", pk=campaign.pk)
    form = _campaign_form(campaign, segment_id=request.GET.get("segment", ""),
                          condition=request.GET.get("condition", ""))
    error, status = "", 200
    if request.method == "POST":
        form = _campaign_form(campaign, request.POST)
        try:
            with transaction.atomic():
                saved = services.campaign_save(campaign=campaign, actor=request.user,
                                               **_campaign_fields(form))
                if request.POST.get("start"):
                    saved = services.campaign_schedule(campaign=saved, actor=request.user)
        except ApplicationError as exc:
            error, status = exc.message, 400
        else:
            if saved.status == Campaign.Status.SENDING:
                messages.success(request, _("Sending started to %(n)d customers.")
                                 % {"n": saved.audience_size or 0})
            elif saved.status == Campaign.Status.SCHEDULED:
                messages.success(request, _("Scheduled for %(when)s.") % {
                    "when": timezone.localtime(saved.send_at).strftime("%Y-%m-%d %H:%M")})
            else:
                messages.success(request, _("Draft saved."))
            return redirect("outreach:campaign", pk=saved.pk)
    return render(request, "campaigns/campaign_edit.html", {
        "campaign": campaign, "form": form, "error": error,
        "segments": Segment.objects.order_by("name").values_list("pk", "name"),
        "channels": Channel.choices, "categories": Category.choices,
        "variables": templates.VARIABLES}, status=status)


@login_required
@require_POST
def campaign_audience(request):
    """The composer's audience count and sample (an htmx fragment): the saved segment's or
    the builder's condition, counted the way segment previews are."""
    access.require_role(request.user)
    context = {"error": ""}
    try:
        if request.POST.get("audience") == "segment":
            raw = request.POST.get("segment", "")
            segment = Segment.objects.filter(pk=int(raw)).first() if raw.isdigit() else None
            if segment is None:
                raise ApplicationError(_("Choose a saved segment."))
            condition = segment.condition
        else:
            text = request.POST.get("condition", "").strip()
            if not text:
                raise ApplicationError(_("Add at least one condition."))
            try:
                condition = json.loads(text)
            except ValueError as exc:
                raise ApplicationError(_("The condition is not valid JSON: %(error)s")
                                       % {"error": exc}) from exc
        context["answer"] = tagging_selectors.segment_preview(user=request.user,
                                                              condition=condition)
    except ApplicationError as exc:
        context["error"] = exc.message
    return render(request, "campaigns/_campaign_audience.html", context)


@login_required
@require_POST
def template_preview(request):
    """A template as one customer would read it (an htmx fragment for the campaign and SOP
    editors): the chosen customer of yours, or a sample customer."""
    if not access.can_see_customers(request.user):
        raise PermissionDenied(_("Analysts see aggregate figures only, not individual "
                                 "customers."))
    context = {"error": "", "content": "", "customer": None}
    raw = request.POST.get("customer", "").strip()
    field = request.POST.get("template_field") or "template"
    source = request.POST.get(field if field.endswith("template") else "template", "")
    if not source.strip():
        return render(request, "campaigns/_template_preview.html", {"empty": True})
    try:
        if raw:
            found = crm_selectors.customer_search(
                crm_selectors.customer_list(user=request.user), raw).order_by("-pk").first()
            if found is None:
                raise ApplicationError(_("No customer of yours matches “%(term)s”.")
                                       % {"term": raw})
            context["customer"] = found
        context["content"] = services.template_preview(source=source,
                                                       customer=context["customer"])
    except ApplicationError as exc:
        context["error"] = exc.message
    return render(request, "campaigns/_template_preview.html", context)


@login_required
def campaign_detail(request, pk: int):
    """A campaign: what it sends to whom, its progress while sending, and its results."""
    access.require_role(request.user)
    campaign = get_object_or_404(Campaign.objects.select_related("segment", "created_by",
                                                                 "overridden_by"), pk=pk)
    panels = [mark_safe(panel(request, campaign)) for panel in campaign_panels]
    return render(request, "campaigns/campaign_detail.html", {
        **_progress_context(campaign), "panels": panels,
        "condition_json": json.dumps(campaign.segment.condition if campaign.segment_id
                                     else campaign.condition, ensure_ascii=False, indent=2)})


@login_required
def campaign_progress(request, pk: int):
    """The progress bar (polled by htmx every two seconds while the campaign sends; the
    answer for a finished campaign stops the polling)."""
    access.require_role(request.user)
    campaign = get_object_or_404(Campaign, pk=pk)
    response = render(request, "campaigns/_campaign_progress.html", _progress_context(campaign))
    if request.htmx and campaign.status in FINAL_STATES:
        # The page was polling a sending campaign that has now finished: load it once more,
        # so its results are shown whole.
        response["HX-Refresh"] = "true"
    return response


@login_required
@require_POST
def campaign_action(request, pk: int, action: str):
    """Start (now or at its time), cancel, resume or delete a campaign (admins), through the
    services the API's actions call."""
    access.require_admin(request.user, _("Only admins start, cancel or resume campaigns."))
    campaign = get_object_or_404(Campaign, pk=pk)
    try:
        if action == "start":
            campaign = services.campaign_schedule(campaign=campaign, actor=request.user)
            messages.success(request, _("Sending started.") if campaign.status ==
                             Campaign.Status.SENDING else _("Scheduled."))
        elif action == "cancel":
            skipped = services.campaign_cancel(campaign=campaign)
            messages.success(request, ngettext(
                "Cancelled: %(n)d message will not be sent.",
                "Cancelled: %(n)d messages will not be sent.", skipped) % {"n": skipped})
        elif action == "resume":
            services.campaign_resume(campaign=campaign, actor=request.user)
            messages.success(request, _("Resumed: its waiting messages go out."))
        elif action == "delete":
            services.campaign_delete(campaign=campaign)
            messages.success(request, _("Campaign “%(name)s” deleted.") % {"name": campaign.name})
            return redirect("outreach:campaigns")
        else:
            raise Http404
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("outreach:campaign", pk=pk)
