"""Dashboard pages for operators, admins and analysts; thin over the selectors."""

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, pgettext_lazy

from core import access
from core.exceptions import ApplicationError
from crm import extensions, selectors, services, timeline
from crm.models import Customer

CUSTOMERS_PAGE_SIZE = 50
NOTES_SHOWN = 20
TIMELINE_PAGE_SIZE = 20
RECENT_EVENTS = 15

# Columns of the customer list that sort, and the direction a first click sorts them in.
SORTABLE_COLUMNS = {"name": "", "joined_at": "-", "last_active_at": "-", "orders_count": "-",
                    "total_spent": "-"}
# With a context: bare "Order" is Django's own msgid for sort order (排序).
TIMELINE_KIND_LABELS = {
    "event": pgettext_lazy("timeline entry kind", "Event"),
    "order": pgettext_lazy("timeline entry kind", "Order"),
    "tag": pgettext_lazy("timeline entry kind", "Tag"),
    "stage": pgettext_lazy("timeline entry kind", "Stage"),
    "message": pgettext_lazy("timeline entry kind", "Message"),
    "note": pgettext_lazy("timeline entry kind", "Note"),
}
EXTENSION_FILTER_LABELS = {"tag": gettext_lazy("Tags"), "stage": gettext_lazy("Stage"),
                           "segment": gettext_lazy("Segment")}


class CustomerFilterForm(forms.Form):
    q = forms.CharField(label=gettext_lazy("Search"), required=False, max_length=128)
    channel = forms.ChoiceField(label=gettext_lazy("Channel"), required=False)
    owner = forms.ChoiceField(label=gettext_lazy("Owner"), required=False)
    status = forms.ChoiceField(
        label=gettext_lazy("Status"), required=False,
        choices=[("", gettext_lazy("Any status")), *Customer.Status.choices])
    gender = forms.ChoiceField(
        label=gettext_lazy("Gender"), required=False,
        choices=[("", gettext_lazy("Any gender")), *Customer.Gender.choices])
    sort = forms.ChoiceField(required=False,
                             choices=[(key, key) for key in selectors.CUSTOMER_SORTS])

    def __init__(self, data, *, channels: list, owners: list) -> None:
        super().__init__(data)
        self.fields["channel"].choices = [("", _("All channels")), *channels]
        if owners:
            self.fields["owner"].choices = [("", _("All owners")), *owners]
        else:
            del self.fields["owner"]

    def values(self) -> dict[str, str]:
        """The valid filters; an invalid one (a stale link, a hand-edited URL) is ignored."""
        self.is_valid()
        return {name: self.cleaned_data.get(name) or "" for name in self.fields}


def _page(request, **context: Any) -> dict[str, Any]:
    """What the layout needs on every page: the user's role decides the navigation."""
    role = access.user_role(request.user)
    return {"role": role, "is_admin": role == access.ADMIN,
            "can_see_customers": access.can_see_customers(request.user), **context}


def _require_customer_access(user) -> None:
    if access.user_role(user) is None:
        raise PermissionDenied(_("Your account has no role (admin, operator or analyst); "
                                 "ask an admin for one."))
    if not access.can_see_customers(user):
        raise PermissionDenied(_("Analysts see aggregate figures only, not individual "
                                 "customers."))


def _positive_int(value: str | None) -> int:
    try:
        return max(1, int(value or 1))
    except ValueError:
        return 1


@login_required
def home(request):
    user = request.user
    figures = selectors.dashboard_figures(user=user)
    events = []
    if access.can_see_customers(user):
        recent = selectors.dashboard_recent_events(user=user, limit=RECENT_EVENTS)
        summaries = timeline.event_summaries(recent)
        events = [{"event": e, "summary": summaries[e.pk]} for e in recent]
    return render(request, "dashboard/home.html",
                  _page(request, figures=figures, events=events))


@login_required
def customer_list(request):
    user = request.user
    _require_customer_access(user)
    form = CustomerFilterForm(request.GET, **selectors.customer_filter_choices(user=user))
    values = form.values()
    sort = values["sort"] or selectors.CUSTOMER_DEFAULT_SORT
    # Repeatable parameters (`?tag=a&tag=b`); the filter bar's one box takes "a, b" as well.
    extension_filters = {
        name: [v.strip() for raw in request.GET.getlist(name)
               for v in raw.replace("，", ",").split(",") if v.strip()]
        for name, _extension in extensions.customer_filters.items()
    }
    error = ""
    try:
        queryset = selectors.customer_browse(
            user=user, search=values["q"], channel=values["channel"],
            owner=values.get("owner", ""), status=values["status"], gender=values["gender"],
            sort=sort, extension_filters=extension_filters)
        page_obj = Paginator(queryset, CUSTOMERS_PAGE_SIZE).get_page(request.GET.get("page"))
    except ApplicationError as exc:   # e.g. a tag name that two tag groups share
        error = exc.message
        page_obj = Paginator(Customer.objects.none(), CUSTOMERS_PAGE_SIZE).get_page(1)
    rows = [{"customer": c, **extensions.extension_values(c),
             "chips": extensions.extension_chips(c)} for c in page_obj.object_list]
    sort_links = {}
    for column, first in SORTABLE_COLUMNS.items():
        direction = "asc" if sort == column else "desc" if sort == f"-{column}" else ""
        following = {"asc": f"-{column}", "desc": column}.get(direction, f"{first}{column}")
        sort_links[column] = {"next": following, "direction": direction}
    extension_fields = [
        {"name": name, "label": EXTENSION_FILTER_LABELS.get(name, name),
         "help": extension.help_text, "value": ", ".join(extension_filters.get(name, []))}
        for name, extension in extensions.customer_filters.items()
    ]
    filtered = any(values.get(k) for k in ("q", "channel", "owner", "status", "gender")) or any(
        extension_filters.values())
    return render(request, "dashboard/customer_list.html", _page(
        request, form=form, rows=rows, page_obj=page_obj, error=error, sort=sort,
        sort_links=sort_links, extension_fields=extension_fields, filtered=filtered,
        page_range=page_obj.paginator.get_elided_page_range(page_obj.number, on_each_side=2,
                                                            on_ends=1)))


@login_required
def customer_detail(request, pk: int):
    user = request.user
    _require_customer_access(user)
    customer = selectors.customer_get(user=user, pk=pk)
    requested = _positive_int(request.GET.get("page"))
    history = selectors.customer_timeline(customer_id=customer.pk, page=requested,
                                          page_size=TIMELINE_PAGE_SIZE)
    # The timeline merges several sources, so it is paginated by the selector; a Paginator
    # over its count only draws the page links (and pulls a page past the end back in).
    page_obj = Paginator(range(history["count"]), TIMELINE_PAGE_SIZE).get_page(requested)
    if page_obj.number != requested:
        history = selectors.customer_timeline(customer_id=customer.pk, page=page_obj.number,
                                              page_size=TIMELINE_PAGE_SIZE)
    entries = [{**entry, "kind_label": TIMELINE_KIND_LABELS.get(entry["kind"], entry["kind"]),
                "items": (entry.get("data") or {}).get("items") or []}
               for entry in history["results"]]
    average_order = (customer.total_spent / customer.orders_count
                     if customer.orders_count else None)
    notes = list(selectors.customer_notes(customer=customer)[:NOTES_SHOWN])
    orders = selectors.customer_orders(customer=customer)
    panels = [mark_safe(panel(request, customer)) for panel in extensions.customer_panels]
    return render(request, "dashboard/customer_detail.html", _page(
        request, customer=customer, extension=extensions.extension_values(customer),
        panels=panels, notes=notes, orders=orders,
        groups=selectors.customer_current_groups(customer=customer), entries=entries,
        timeline_count=history["count"], page_obj=page_obj, average_order=average_order,
        page_range=page_obj.paginator.get_elided_page_range(page_obj.number, on_each_side=2,
                                                            on_ends=1)))


@login_required
def customer_notes(request, pk: int):
    """The notes panel of a customer; POST adds a note (crm.services.note_add). An htmx request
    gets the panel back, a plain one goes back to the customer's page."""
    user = request.user
    _require_customer_access(user)
    customer = selectors.customer_get(user=user, pk=pk)
    context = {"customer": customer, "text": "", "error": ""}
    if request.method == "POST":
        try:
            services.note_add(customer=customer, author=user, text=request.POST.get("text"))
        except ApplicationError as exc:
            # Shown in the panel, with what was typed (htmx swaps only a 2xx answer in).
            context.update(text=request.POST.get("text", ""), error=exc.message)
            if not request.htmx:
                messages.error(request, exc.message)
        if not request.htmx:
            return redirect(reverse("dashboard:customer-detail", args=[customer.pk]) + "#notes")
    elif not request.htmx:
        return redirect(reverse("dashboard:customer-detail", args=[customer.pk]) + "#notes")
    context["notes"] = list(selectors.customer_notes(customer=customer)[:NOTES_SHOWN])
    return render(request, "dashboard/_notes.html", context)
