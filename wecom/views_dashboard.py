"""Dashboard pages of the WeCom integration, all 404 while WeCom is not configured:

- Settings › WeCom (admins): the connection's state, callbacks, sync runs and "sync now";
- channel QR codes (admins): create, edit, delete, the QR image to show and download;
- mass sends (operators their own, admins all): what waits for the staff member's
  confirmation in the WeCom client, group sends and moments made here, reminders.

Each view is thin over wecom's services (sync, contact_ways, mass_sends)."""

from __future__ import annotations

from functools import wraps

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import content_disposition_header
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_http_methods

from core import access
from core.exceptions import ApplicationError
from core.people import staff_name
from crm.models import Channel, Group
from tagging.models import Tag
from wecom import contact_ways, mass_sends, selectors, sync
from wecom.client import WeComError, api_enabled
from wecom.models import ContactWay, MassSend, SyncRun

PAGE_SIZE = 25


def _wecom_page(*, admin: bool):
    """Signed in, WeCom configured (else 404), and the role the page needs."""
    def decorate(view):
        @login_required
        @wraps(view)
        def checked(request, *args, **kwargs):
            if not selectors.wecom_enabled():
                raise Http404
            if admin:
                access.require_admin(request.user, _("Only admins manage the WeCom connection "
                                                     "and channel QR codes."))
            else:
                access.require_customer_access(request.user, _(
                    "Mass sends are for admins and operators."))
            return view(request, *args, **kwargs)
        return checked
    return decorate


def _staff_choices() -> list[tuple[str, str]]:
    users = (get_user_model().objects.filter(is_active=True).exclude(username__startswith="@")
             .order_by("username"))
    return [(u.username, f"{staff_name(u)} ({u.username})" if staff_name(u) != u.username
             else u.username) for u in users]


def _tag_options(selected_ids=(), *, linked_only: bool = False) -> list[dict]:
    tags = Tag.objects.select_related("group").order_by("group__order", "group__name", "order",
                                                        "name")
    if linked_only:
        tags = tags.filter(wecom_link__isnull=False)
    selected = {int(i) for i in selected_ids if str(i).isdigit()}
    return [{"value": t.pk, "label": t.name, "group": t.group.name, "color": t.color,
             "selected": t.pk in selected} for t in tags]


# --- Settings › WeCom ----------------------------------------------------------------------

# Whole sentences, not "Sync " + the kind's label: the label is capitalised for a column of its
# own, and another language may not put the verb first.
SYNC_BUTTONS = {SyncRun.Kind.CONTACTS: gettext_lazy("Sync contacts"),
                SyncRun.Kind.GROUPS: gettext_lazy("Sync customer groups"),
                SyncRun.Kind.TAGS: gettext_lazy("Sync tags")}


@_wecom_page(admin=True)
@require_http_methods(["GET", "POST"])
def settings_page(request):
    if request.method == "POST":
        kinds = [k for k in request.POST.getlist("kind") if k in SyncRun.Kind.values] or None
        try:
            runs = sync.sync_start(kinds=kinds, trigger="dashboard")
        except sync.SyncDisabled as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, _("Sync started: %(kinds)s.") % {
                "kinds": ", ".join(str(r.get_kind_display()) for r in runs)})
        return redirect("settings:wecom")
    runs = selectors.sync_runs()
    return render(request, "wecom/settings.html", {
        "state": selectors.connection(), "runs": runs, "current": "wecom",
        "polling": any(r.status in ("queued", "running") for r in runs),
        "kinds": [(kind, SYNC_BUTTONS[kind]) for kind in SyncRun.Kind.values]})


@_wecom_page(admin=True)
@require_GET
def sync_runs(request):
    """The runs table, polled while a run is open."""
    runs = selectors.sync_runs()
    return render(request, "wecom/_runs.html", {
        "runs": runs, "polling": any(r.status in ("queued", "running") for r in runs)})


# --- Channel QR codes ----------------------------------------------------------------------

class ContactWayForm(forms.Form):
    channel = forms.ModelChoiceField(
        label=gettext_lazy("Channel"), required=False, queryset=Channel.objects.none(),
        empty_label=gettext_lazy("A new channel (below)"))
    new_code = forms.SlugField(label=gettext_lazy("New channel's code"), required=False,
                               max_length=contact_ways.STATE_MAX_LENGTH,
                               help_text=gettext_lazy("Letters, digits, - and _; at most 30. "
                                                      "WeCom reports it as the contact's State."))
    new_name = forms.CharField(label=gettext_lazy("New channel's name"), required=False,
                               max_length=100)
    cost = forms.DecimalField(label=gettext_lazy("Channel cost (CNY)"), required=False,
                              min_value=0, max_digits=14, decimal_places=2,
                              help_text=gettext_lazy("Spend on this channel, for its ROI."))
    staff = forms.MultipleChoiceField(label=gettext_lazy("Staff"), choices=(),
                                      help_text=gettext_lazy(
                                          "Who the customer adds; with several, WeCom spreads "
                                          "them."))
    skip_verify = forms.BooleanField(label=gettext_lazy("Add without verification"),
                                     required=False, initial=True)
    welcome_message = forms.CharField(
        label=gettext_lazy("Welcome message"), required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text=gettext_lazy("Sent when someone adds staff through this code (WeCom allows it "
                               "within 20 seconds); a message template, e.g. {{ name }}."))

    def __init__(self, *args, way: ContactWay | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        channels = Channel.objects.filter(contact_way__isnull=True)
        if way is not None:
            channels = Channel.objects.filter(pk=way.channel_id)
            self.fields["channel"].required = True
            self.fields["channel"].empty_label = None
            for name in ("new_code", "new_name"):
                del self.fields[name]
        self.fields["channel"].queryset = channels.order_by("name")
        self.fields["staff"].choices = _staff_choices()

    def clean(self):
        data = super().clean()
        if "new_code" in self.fields and not data.get("channel"):
            if not data.get("new_code"):
                self.add_error("new_code", _("Choose a channel or give the new one's code."))
            elif Channel.objects.filter(code=data["new_code"]).exists():
                self.add_error("new_code", _("A channel with this code exists: choose it."))
            if not data.get("new_name"):
                self.add_error("new_name", _("Give the new channel a name."))
        return data


def _way_form_page(request, way: ContactWay | None):
    form = ContactWayForm(request.POST or None, way=way, initial=None if way is None else {
        "channel": way.channel, "cost": way.channel.cost, "staff": way.staff,
        "skip_verify": way.skip_verify, "welcome_message": way.welcome_message})
    tag_ids = (request.POST.getlist("tags") if request.method == "POST"
               else [t.pk for t in way.tags.all()] if way else [])
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            data = form.cleaned_data
            try:
                way = contact_ways.contact_way_save(
                    way=way, channel=data["channel"], cost=data["cost"],
                    new_channel=(data["new_code"], data["new_name"])
                    if data["channel"] is None else None, staff=data["staff"],
                    skip_verify=data["skip_verify"],
                    tags=Tag.objects.filter(pk__in=[int(t) for t in tag_ids if t.isdigit()]),
                    welcome_message=data["welcome_message"])
            except ApplicationError as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(request, _("QR code of “%(name)s” saved.")
                                 % {"name": way.channel.name})
                return redirect("wecom:contact-way", pk=way.pk)
    return render(request, "wecom/contact_way_edit.html", {
        "form": form, "way": way, "tag_options": _tag_options(tag_ids)}, status=status)


@_wecom_page(admin=True)
@require_GET
def contact_way_list(request):
    return render(request, "wecom/contact_ways.html", {"rows": selectors.contact_ways(),
                                                       "api": api_enabled()})


@_wecom_page(admin=True)
@require_http_methods(["GET", "POST"])
def contact_way_new(request):
    return _way_form_page(request, None)


@_wecom_page(admin=True)
@require_http_methods(["GET", "POST"])
def contact_way_edit(request, pk: int):
    way = get_object_or_404(ContactWay.objects.select_related("channel"), pk=pk)
    if request.method == "POST" and request.POST.get("action") == "delete":
        try:
            contact_ways.contact_way_delete(way=way)
        except ApplicationError as exc:
            messages.error(request, exc.message)
            return redirect("wecom:contact-way", pk=way.pk)
        messages.success(request, _("QR code of “%(name)s” deleted; the channel and its "
                                    "customers stay.") % {"name": way.channel.name})
        return redirect("wecom:contact-ways")
    return _way_form_page(request, way)


@_wecom_page(admin=True)
@require_GET
def contact_way_qr(request, pk: int):
    way = get_object_or_404(ContactWay.objects.select_related("channel"), pk=pk)
    if not way.qr_code:
        way = contact_ways.qr_refresh(way=way)
    if not way.qr_code:
        raise Http404
    response = HttpResponse(bytes(way.qr_code), content_type="image/png")
    if request.GET.get("download"):
        response["Content-Disposition"] = content_disposition_header(
            True, f"qr-{way.channel.code}.png")
    response["Cache-Control"] = "private, max-age=300"
    return response


# --- Mass sends ----------------------------------------------------------------------------

class GroupSendForm(forms.Form):
    content = forms.CharField(label=gettext_lazy("Text"), widget=forms.Textarea(
        attrs={"rows": 4}))
    groups = forms.MultipleChoiceField(label=gettext_lazy("Customer groups"), choices=())
    sender = forms.ChoiceField(label=gettext_lazy("Sender"), choices=(), required=False)

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        groups = Group.objects.exclude(owner=None).select_related("owner").order_by("name")
        if not access.is_admin(user):
            groups = groups.filter(owner=user)
            del self.fields["sender"]
        else:
            self.fields["sender"].choices = _staff_choices()
        self.fields["groups"].choices = [
            (g.chat_id, f"{g.name or g.chat_id} · {g.owner.get_username()}") for g in groups]


class MomentForm(forms.Form):
    content = forms.CharField(label=gettext_lazy("Text"), widget=forms.Textarea(
        attrs={"rows": 4}))
    senders = forms.MultipleChoiceField(label=gettext_lazy("Posted by"), choices=(),
                                        required=False)

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not access.is_admin(user):
            del self.fields["senders"]
        else:
            self.fields["senders"].choices = _staff_choices()


@_wecom_page(admin=False)
@require_http_methods(["GET", "POST"])
def mass_send_list(request):
    user = request.user
    group_form = GroupSendForm(user=user)
    moment_form = MomentForm(user=user)
    status = 200
    if request.method == "POST":
        action = request.POST.get("action")
        try:
            if action == "group":
                group_form = GroupSendForm(request.POST, user=user)
                if not group_form.is_valid():
                    raise ApplicationError(_("Correct the marked fields."))
                data = group_form.cleaned_data
                mass_sends.group_send_create(actor=user, sender=data.get("sender") or "",
                                             chat_ids=data["groups"], content=data["content"])
                messages.success(request, _("Group send made: confirm it in WeCom."))
            elif action == "moment":
                moment_form = MomentForm(request.POST, user=user)
                if not moment_form.is_valid():
                    raise ApplicationError(_("Correct the marked fields."))
                data = moment_form.cleaned_data
                mass_sends.moment_create(
                    actor=user, senders=data.get("senders") or [],
                    tags=Tag.objects.filter(pk__in=[int(t) for t in request.POST.getlist("tags")
                                                    if t.isdigit()]),
                    content=data["content"])
                messages.success(request, _("Moment made: confirm it in WeCom."))
            elif action in ("remind", "check"):
                mass = get_object_or_404(selectors.mass_sends_for(user),
                                         pk=request.POST.get("send"))
                if action == "remind":
                    mass_sends.remind(mass=mass)
                    messages.success(request, _("WeCom reminded the sender."))
                else:
                    mass = mass_sends.mass_send_poll(mass=mass)
                    messages.success(request, _("Checked: %(status)s.")
                                     % {"status": mass.get_status_display()})
            else:
                raise ApplicationError(_("Unknown action."))
        except ApplicationError as exc:
            messages.error(request, exc.message)
            status = 400
        except WeComError as exc:       # WeCom unreachable while checking or reminding
            messages.error(request, _("WeCom did not answer: %(error)s") % {"error": exc})
            status = 400
        if status == 200:
            return redirect("wecom:mass-sends")
    sends = selectors.mass_sends_for(user)
    wanted = request.GET.get("status", "")
    if wanted in MassSend.Status.values:
        sends = sends.filter(status=wanted)
    page_obj = Paginator(sends, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "wecom/mass_sends.html", {
        "page_obj": page_obj, "waiting": selectors.waiting_summary(user),
        "status_choices": MassSend.Status.choices, "wanted": wanted,
        "group_form": group_form, "moment_form": moment_form,
        "tag_options": _tag_options(linked_only=True)}, status=status)
