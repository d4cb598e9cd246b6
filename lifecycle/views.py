"""Dashboard pieces of lifecycle: the stages panel of the customer page and its forms."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from core import access
from core.exceptions import ApplicationError
from crm import selectors as crm_selectors
from lifecycle import services
from lifecycle.models import CustomerStage, Stage, StageModel


def customer_stages_panel(request, customer) -> str:
    """The customer's stage in every active model, a manual move and, when locked, an unlock."""
    models = list(StageModel.objects.filter(active=True).prefetch_related("stages"))
    current = {cs.model_id: cs for cs in CustomerStage.objects.filter(customer=customer)
               .select_related("stage")}
    now = timezone.now()
    rows = [{"model": m, "stages": sorted(m.stages.all(), key=lambda s: s.position),
             "current": current.get(m.pk),
             "locked": bool(current.get(m.pk) and current[m.pk].locked_until
                            and current[m.pk].locked_until > now)} for m in models]
    return render_to_string("lifecycle/_customer_stages.html",
                            {"customer": customer, "rows": rows}, request=request)


@login_required
@require_POST
def customer_stage_edit(request, pk: int):
    if not access.can_see_customers(request.user):
        raise PermissionDenied
    customer = crm_selectors.customer_get(user=request.user, pk=pk)
    back = redirect(reverse("dashboard:customer-detail", args=[customer.pk]) + "#stages")
    try:
        if request.POST.get("unlock"):
            model = StageModel.objects.filter(key=request.POST["unlock"]).first()
            if model and services.customer_stage_unlock(customer=customer, model=model):
                messages.success(request, _("Rules may move the customer again."))
            return back
        model_key, _sep, stage_key = request.POST.get("target", "").partition(":")
        stage = Stage.objects.select_related("model").filter(model__key=model_key,
                                                             key=stage_key).first()
        if stage is None:
            raise ApplicationError(_("Choose a stage to move the customer to."))
        services.customer_stage_move(customer=customer, model=stage.model, stage=stage,
                                     reason=request.POST.get("reason", ""), actor=request.user)
        messages.success(request, _("Moved to %(stage)s.") % {"stage": stage.name})
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return back
