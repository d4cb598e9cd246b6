"""Dashboard pieces of tagging: the tags panel of the customer page and its form."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from core import access
from core.exceptions import ApplicationError
from crm import selectors as crm_selectors
from tagging import selectors, services
from tagging.models import Tag, TagGroup


def customer_tags_panel(request, customer) -> str:
    """The customer's tags, each removable, and a picker to add one."""
    held = selectors.customer_tags(customer_id=customer.pk)
    held_ids = {t["id"] for t in held}
    tags_by_group: dict[int, list[Tag]] = {}
    for tag in Tag.objects.order_by("order", "name"):
        if tag.pk not in held_ids:
            tags_by_group.setdefault(tag.group_id, []).append(tag)
    choices = [(group, tags_by_group[group.pk]) for group in TagGroup.objects.all()
               if group.pk in tags_by_group]
    return render_to_string("tagging/_customer_tags.html",
                            {"customer": customer, "tags": held, "choices": choices},
                            request=request)


@login_required
@require_POST
def customer_tags_edit(request, pk: int):
    if not access.can_see_customers(request.user):
        raise PermissionDenied
    customer = crm_selectors.customer_get(user=request.user, pk=pk)
    add = [int(v) for v in request.POST.getlist("add") if v.isdigit()]
    remove = [int(v) for v in request.POST.getlist("remove") if v.isdigit()]
    try:
        change = services.customers_tags_change(
            customers=crm_selectors.customer_list(user=request.user).filter(pk=customer.pk),
            add=services.tags_resolve(add, path="add"),
            remove=services.tags_resolve(remove, path="remove"), actor=request.user)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        if change.added:
            messages.success(request, _("Tag added."))
        elif change.removed:
            messages.success(request, _("Tag removed."))
    return redirect(reverse("dashboard:customer-detail", args=[customer.pk]) + "#tags")
