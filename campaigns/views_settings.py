"""The outreach policy settings page (admins): frequency caps, the block-rate pause, retries —
the same `policy()` / `policy_save()` the `outreach-policy/` API uses — and the quiet hours,
which are the deployment's `OUTREACH_QUIET_HOURS` setting and shown read-only."""

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from campaigns import services
from campaigns.models import OutreachPolicy
from core.exceptions import ApplicationError
from core.views_settings import admin_required


class PolicyForm(forms.ModelForm):
    """The policy's fields with the model's rules, as the API's PolicySerializer has them;
    `policy_save` checks them once more (full_clean) before it writes."""

    class Meta:
        model = OutreachPolicy
        fields = ["promo_min_days_between", "promo_max_per_month", "block_rate_pause",
                  "block_min_sends", "block_window_hours", "max_attempts"]
        help_texts = {
            "promo_min_days_between": gettext_lazy(
                "A customer gets no promotional message sooner than this after the last one."),
            "promo_max_per_month": gettext_lazy(
                "At most this many promotional messages per customer, channel and month."),
            "block_window_hours": gettext_lazy(
                "A customer deleting us this soon after a message counts as a block."),
            "block_rate_pause": gettext_lazy(
                "A fraction: 0.02 = 2 %. Above it an SOP step or campaign pauses and the admins "
                "are alerted."),
            "block_min_sends": gettext_lazy("The block rate counts only after this many sends."),
            "max_attempts": gettext_lazy("A message that fails this many times is marked failed."),
        }


def _quiet_hours() -> dict:
    raw = (settings.OUTREACH_QUIET_HOURS or "").strip()
    try:
        window = services.quiet_window()
    except ApplicationError as exc:
        return {"raw": raw, "error": exc.message}
    return {"raw": raw, "start": window[0] if window else None,
            "end": window[1] if window else None}


@admin_required
def policy(request):
    status = 200
    if request.method == "POST":
        form = PolicyForm(request.POST, instance=services.policy())
        if form.is_valid():
            try:
                services.policy_save(**form.cleaned_data)
            except ValidationError as exc:
                form.add_error(None, exc)
            else:
                messages.success(request, _("Outreach policy saved."))
                return redirect("settings:policy")
        status = 400
    else:
        form = PolicyForm(instance=services.policy())
    return render(request, "settings/policy.html", {
        "form": form, "quiet": _quiet_hours(), "current": "policy"}, status=status)
