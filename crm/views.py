"""Dashboard pages for operators, admins and analysts; thin over the selectors."""

import json
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import content_disposition_header
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, pgettext_lazy
from django.views.decorators.http import require_http_methods

from core import access, conditions
from core.exceptions import ApplicationError
from crm import extensions, listing, selectors, services
from crm.models import Customer

CUSTOMERS_PAGE_SIZE = 50
NOTES_SHOWN = 20
TIMELINE_PAGE_SIZE = 20

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
    tag_mode = forms.ChoiceField(
        label=gettext_lazy("Tags match"), required=False,
        choices=[("any", gettext_lazy("any of")), ("all", gettext_lazy("all of")),
                 ("none", gettext_lazy("none of"))])
    segment = forms.ChoiceField(label=gettext_lazy("Segment"), required=False)
    joined_from = forms.DateField(label=gettext_lazy("Joined from"), required=False)
    joined_to = forms.DateField(label=gettext_lazy("Joined to"), required=False)
    sort = forms.ChoiceField(required=False,
                             choices=[(key, key) for key in selectors.CUSTOMER_SORTS])

    def __init__(self, data, *, channels: list, owners: list, segments: list) -> None:
        super().__init__(data)
        self.fields["channel"].choices = [("", _("All channels")), *channels]
        self.fields["segment"].choices = [("", _("Any segment")),
                                          *[(str(pk), name) for pk, name in segments]]
        if owners:
            self.fields["owner"].choices = [("", _("All owners")), *owners]
        else:
            del self.fields["owner"]

    def values(self) -> dict[str, Any]:
        """The valid filters; an invalid one (a stale link, a hand-edited URL) is ignored."""
        self.is_valid()
        return {name: self.cleaned_data.get(name) or ("" if name not in DATE_FILTERS else None)
                for name in self.fields}


DATE_FILTERS = ("joined_from", "joined_to")


class CountedPaginator(Paginator):
    """A Paginator told the total (an estimate, or the segment index's count) instead of
    running COUNT(*) itself; a page past the real end is empty, never an error."""

    def __init__(self, object_list, per_page, *, count: int) -> None:
        super().__init__(object_list, per_page)
        self._given_count = count

    @property
    def count(self) -> int:
        return self._given_count


def _listed(request, name: str) -> list[str]:
    """A repeatable parameter (`?tag=a&tag=b`); one box may hold "a, b" as well."""
    return [v.strip() for raw in request.GET.getlist(name)
            for v in raw.replace("，", ",").split(",") if v.strip()]


def _listed_stages(request) -> list[str]:
    """`?stage=` values as `model:stage`; a link may list several stages of one model after
    it (`value:dormant,churn`)."""
    stages, model = [], ""
    for value in _listed(request, "stage"):
        if ":" in value:
            model = value.partition(":")[0]
            stages.append(value)
        else:
            stages.append(f"{model}:{value}" if model else value)
    return stages


def _advanced_condition(text: str) -> Any:
    """The "Advanced" condition typed or built; a clear error for what is not one."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        tree = json.loads(text)
    except ValueError as exc:
        raise ApplicationError(_("Advanced condition: not valid JSON (%(error)s)")
                               % {"error": exc}) from exc
    if tree in ({}, {"all": []}, {"any": []}):
        return None
    try:
        conditions.validate(tree)
    except ApplicationError as exc:
        raise ApplicationError(_("Advanced condition: %(error)s") % {"error": exc.message}
                               ) from exc
    return tree


def customer_list_filters(request, *, user) -> dict[str, Any]:
    """The customer list's filter bar read from the URL: the form (with its choices), the
    filters as a condition (None: none), the other extension filters, and an error for a
    filter the condition language refuses. The list and the bulk actions both read it."""
    choices = selectors.customer_filter_choices(user=user)
    form = CustomerFilterForm(request.GET, channels=choices["channels"],
                              owners=choices["owners"], segments=choices["segments"])
    values = form.values()
    # Stages and tags come from pickers (several values) or from links such as
    # ?stage=value:dormant and ?tag=美妆; a tag named by a name one group holds is picked by id.
    tag_ids = {t["name"]: [] for t in choices["tags"]}
    for tag in choices["tags"]:
        tag_ids[tag["name"]].append(str(tag["value"]))
    tags = [tag_ids[t][0] if len(tag_ids.get(t, [])) == 1 else t for t in _listed(request, "tag")]
    filters = selectors.CustomerFilters(
        search=values["q"], channel=values["channel"], owner=values.get("owner", ""),
        status=values["status"], gender=values["gender"], stages=_listed_stages(request),
        tags=tags, tag_mode=values["tag_mode"] or "any", segment=values["segment"],
        joined_from=values["joined_from"], joined_to=values["joined_to"])
    advanced_text = request.GET.get("condition", "")
    extension_filters = {
        name: _listed(request, name) for name, _extension in extensions.customer_filters.items()
        if name not in selectors.CONDITION_FILTERS}
    condition, error = None, ""
    try:
        filters.advanced = _advanced_condition(advanced_text)
        condition = selectors.customer_filters_condition(filters=filters)
    except ApplicationError as exc:     # e.g. a tag name that two tag groups share
        error = exc.message
    return {"form": form, "values": values, "choices": choices, "filters": filters,
            "condition": condition, "extension_filters": extension_filters, "error": error,
            "advanced_text": advanced_text,
            "narrowed": any(extension_filters.values())}


def _positive_int(value: str | None) -> int:
    try:
        return max(1, int(value or 1))
    except ValueError:
        return 1


@login_required
def customer_list(request):
    """The customer list: the filter bar (pickers, an advanced condition) as one condition,
    its total without a full COUNT(*) (crm.selectors.customer_count), and the bulk bar."""
    user = request.user
    access.require_customer_access(user)
    parsed = customer_list_filters(request, user=user)
    values, filters = parsed["values"], parsed["filters"]
    sort = values["sort"] or selectors.CUSTOMER_DEFAULT_SORT
    error, total = parsed["error"], None
    queryset = Customer.objects.none()
    if not error:
        try:
            queryset = selectors.customer_browse(
                user=user, condition=parsed["condition"], sort=sort,
                extension_filters=parsed["extension_filters"])
            total = selectors.customer_count(user=user, condition=parsed["condition"],
                                             queryset=queryset, narrowed=parsed["narrowed"])
            page_obj = CountedPaginator(queryset, CUSTOMERS_PAGE_SIZE,
                                        count=total.value).get_page(request.GET.get("page"))
            customers = list(page_obj.object_list)
        except ApplicationError as exc:   # a filter extension refusing its value
            error, total = exc.message, None
    if error:
        page_obj = Paginator(Customer.objects.none(), CUSTOMERS_PAGE_SIZE).get_page(1)
        customers = []
    rows = [{"customer": c, **extensions.extension_values(c),
             "chips": extensions.extension_chips(c)} for c in customers]
    sort_links = {}
    for column, first in SORTABLE_COLUMNS.items():
        direction = "asc" if sort == column else "desc" if sort == f"-{column}" else ""
        following = {"asc": f"-{column}", "desc": column}.get(direction, f"{first}{column}")
        sort_links[column] = {"next": following, "direction": direction}
    extension_fields = [
        {"name": name, "label": EXTENSION_FILTER_LABELS.get(name, name),
         "help": extensions.customer_filters.get(name).help_text,
         "value": ", ".join(values_)}
        for name, values_ in parsed["extension_filters"].items()]
    filtered = filters.active or parsed["narrowed"] or bool(parsed["advanced_text"].strip())
    choices = parsed["choices"]
    picked_stages = set(filters.stages)
    picked_tags = set(filters.tags)
    return render(request, "dashboard/customer_list.html", dict(
        form=parsed["form"], rows=rows, page_obj=page_obj, error=error, sort=sort,
        sort_links=sort_links, extension_fields=extension_fields, filtered=filtered,
        total=total, condition=parsed["condition"],
        condition_json=json.dumps(parsed["condition"], ensure_ascii=False)
        if parsed["condition"] is not None else "",
        advanced_text=parsed["advanced_text"],
        advanced_open=bool(parsed["advanced_text"].strip()),
        stage_groups=[{**group, "stages": [{**s, "selected": s["value"] in picked_stages}
                                           for s in group["stages"]]}
                      for group in choices["stage_groups"]],
        tag_options=[{**t, "selected": str(t["value"]) in picked_tags}
                     for t in choices["tags"]],
        can_bulk=not parsed["narrowed"], bulk_actions=bulk_action_names(),
        page_range=page_obj.paginator.get_elided_page_range(page_obj.number, on_each_side=2,
                                                            on_ends=1)))


def bulk_action_names() -> list[str]:
    return [name for name, _action in listing.bulk_actions.items()]


@login_required
def customer_detail(request, pk: int):
    user = request.user
    access.require_customer_access(user)
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
    return render(request, "dashboard/customer_detail.html", dict(
        customer=customer, extension=extensions.extension_values(customer),
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
    access.require_customer_access(user)
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


@login_required
@require_http_methods(["GET", "POST"])
def customer_personal_data(request, pk: int):
    """Personal-data requests (PIPL), admins: GET downloads everything held about the customer
    as JSON; POST erases their personal data (crm.services.customer_erase)."""
    access.require_admin(request.user, _("Only admins handle personal-data requests."))
    customer = selectors.customer_get(user=request.user, pk=pk)
    if request.method == "POST":
        try:
            services.customer_erase(customer=customer, actor=request.user)
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, _("Personal data erased; the figures stay, anonymous."))
        return redirect("dashboard:customer-detail", pk=customer.pk)
    data = services.customer_personal_data(customer=customer, actor=request.user)
    response = JsonResponse(data, json_dumps_params={"ensure_ascii": False, "indent": 2})
    response["Content-Disposition"] = content_disposition_header(
        True, f"customer-{customer.pk}-personal-data.json")
    return response
