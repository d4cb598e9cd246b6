"""SOP and campaign performance: the delivery funnel of their messages, what followed them
(orders, deletions, stage moves) and, for SOPs with a holdout, the uplift against the control
group (docs/METRICS.md, "SOP and campaign performance")."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, DateTimeField, Exists, ExpressionWrapper, OuterRef, Q
from django.utils import timezone

from campaigns.models import Campaign, CampaignControl, Enrollment, Message, Sop, SopStep
from campaigns.services import policy
from crm.models import Event, Order
from lifecycle.models import StageTransition
from metrics.periods import Period, Scope
from metrics.selectors import ratio

CONVERSION_DAYS = 7
ADVANCEMENT_DAYS = 30

S = Message.Status
SENT = (S.SENT, S.DELIVERED, S.READ, S.REPLIED)
# A later receipt implies the earlier ones: a read message was delivered.
DELIVERED = (S.DELIVERED, S.READ, S.REPLIED)
READ = (S.READ, S.REPLIED)
PENDING = (S.QUEUED, S.SENDING)
COUNTS = ("total", "sent", "delivered", "read", "replied", "failed", "pending", "skipped",
          "converted", "blocked")


def _after(ref: str, delta: timedelta) -> ExpressionWrapper:
    return ExpressionWrapper(OuterRef(ref) + delta, output_field=DateTimeField())


def _paid_order_within(ref: str, days: int) -> Exists:
    """A paid (not refunded) order of the row's customer placed in [ref, ref + days]."""
    return Exists(Order.objects.filter(
        customer=OuterRef("customer"), status=Order.Status.PAID,
        placed_at__gte=OuterRef(ref), placed_at__lte=_after(ref, timedelta(days=days))))


def _message_figures(block_hours: int) -> tuple[dict, dict]:
    """Annotations and aggregates of the delivery funnel of a queryset of messages."""
    sent = Q(status__in=SENT)
    annotations = {
        "converted": _paid_order_within("sent_at", CONVERSION_DAYS),
        # Half-open like the rule that pauses a step (campaigns.services.block_stats), so the
        # two agree on every message.
        "blocked": Exists(Event.objects.filter(
            customer=OuterRef("customer"), type=Event.Type.FRIEND_DELETED,
            occurred_at__gte=OuterRef("sent_at"),
            occurred_at__lt=_after("sent_at", timedelta(hours=block_hours)))),
    }
    aggregates = {
        "total": Count("id"),
        "sent": Count("id", filter=sent),
        "delivered": Count("id", filter=Q(status__in=DELIVERED)),
        "read": Count("id", filter=Q(status__in=READ)),
        "replied": Count("id", filter=Q(status=S.REPLIED)),
        "failed": Count("id", filter=Q(status=S.FAILED)),
        "pending": Count("id", filter=Q(status__in=PENDING)),
        "skipped": Count("id", filter=Q(status=S.SKIPPED)),
        "converted": Count("id", filter=sent & Q(converted=True)),
        "blocked": Count("id", filter=sent & Q(blocked=True)),
    }
    # An aggregate may not share its name with an annotation: count under other names.
    aggregates["n_converted"] = aggregates.pop("converted")
    aggregates["n_blocked"] = aggregates.pop("blocked")
    return annotations, aggregates


def _counts(row: dict | None) -> dict[str, int]:
    row = row or {}
    return {key: row.get(f"n_{key}", row.get(key, 0)) for key in COUNTS}


def _funnel(counts: dict[str, int], skipped_by_reason: dict[str, int]) -> dict[str, Any]:
    sent = counts["sent"]
    return {
        **{key: counts[key] for key in COUNTS if key != "skipped"},
        "skipped": counts["skipped"],
        "skipped_by_reason": dict(sorted(skipped_by_reason.items())),
        "delivery_rate": ratio(counts["delivered"], sent),
        "read_rate": ratio(counts["read"], sent),
        "reply_rate": ratio(counts["replied"], sent),
        "conversion_rate": ratio(counts["converted"], sent),
        "block_rate": ratio(counts["blocked"], sent),
    }


def two_proportion_p_value(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """Two-sided p-value of the pooled two-proportion z-test of x1/n1 against x2/n2; None when
    a group is empty or the pooled proportion is 0 or 1 (no variance to test against)."""
    if not n1 or not n2:
        return None
    pooled = (x1 + x2) / (n1 + n2)
    if pooled in (0, 1):
        return None
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    z = (x1 / n1 - x2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2))


def _comparison(row: dict, what: str, window_open: int) -> dict[str, Any]:
    """Treatment against control for one outcome (`converted` / `advanced`)."""
    control_n, treatment_n = row.get("control", 0), row.get("treatment", 0)
    control_x, treatment_x = row.get(f"{what}_control", 0), row.get(f"{what}_treatment", 0)
    t_rate = treatment_x / treatment_n if treatment_n else None
    c_rate = control_x / control_n if control_n else None
    both = t_rate is not None and c_rate is not None
    return {
        "treatment": {"size": treatment_n, "count": treatment_x, "rate": ratio(treatment_x,
                                                                                treatment_n)},
        "control": {"size": control_n, "count": control_x, "rate": ratio(control_x, control_n)},
        "uplift_pp": (t_rate - c_rate) * 100 if both else None,
        "relative_uplift": (t_rate - c_rate) / c_rate if both and c_rate else None,
        "p_value": two_proportion_p_value(treatment_x, treatment_n, control_x, control_n),
        "window_open": window_open,
    }


def sop_performance(*, scope: Scope, period: Period, sop: Sop | None = None,
                    now: datetime | None = None) -> dict[str, Any]:
    """Per SOP and per step, for the enrolments of customers in scope that entered in the
    period, and their messages. Five queries: the SOPs, their steps, the enrolments aggregated per SOP, the
    messages aggregated per step, the skipped messages per step and reason."""
    now = now or timezone.now()
    sops = Sop.objects.select_related("model", "stage").order_by("model__order", "model__key",
                                                                 "stage__position", "name", "pk")
    if sop is not None:
        sops = sops.filter(pk=sop.pk)
    sops = list(sops)
    steps = defaultdict(list)
    for step in SopStep.objects.filter(sop__in=[s.pk for s in sops]).order_by("sop", "order"):
        steps[step.sop_id].append(step)

    enrolments = scope.apply(Enrollment.objects.filter(
        entered_at__gte=period.since, entered_at__lt=period.until), path="customer__")
    if sop is not None:
        enrolments = enrolments.filter(sop=sop)
    advanced = Exists(StageTransition.objects.filter(
        customer=OuterRef("customer"), model=OuterRef("sop__model"),
        at__gt=OuterRef("entered_at"),
        at__lte=_after("entered_at", timedelta(days=ADVANCEMENT_DAYS)),
        backward=False, to_stage__position__gt=OuterRef("sop__stage__position")))
    # Grouped by status too, so each subquery is evaluated once per enrolment; the statuses
    # fold into the two groups below.
    by_sop: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in enrolments.annotate(
            is_converted=_paid_order_within("entered_at", CONVERSION_DAYS),
            is_advanced=advanced).values("sop", "status").annotate(
            n=Count("id"),
            converted=Count("id", filter=Q(is_converted=True)),
            advanced=Count("id", filter=Q(is_advanced=True)),
            conversion_open=Count("id", filter=Q(
                entered_at__gt=now - timedelta(days=CONVERSION_DAYS))),
            advancement_open=Count("id", filter=Q(
                entered_at__gt=now - timedelta(days=ADVANCEMENT_DAYS)))).order_by():
        group = "control" if row["status"] == Enrollment.Status.HOLDOUT else "treatment"
        folded = by_sop[row["sop"]]
        folded["enrolled"] += row["n"]
        folded[group] += row["n"]
        for outcome in ("converted", "advanced"):
            folded[f"{outcome}_{group}"] += row[outcome]
        for window in ("conversion_open", "advancement_open"):
            folded[window] += row[window]

    messages = Message.objects.filter(enrollment__in=enrolments.values("pk"))
    annotations, aggregates = _message_figures(policy().block_window_hours)
    by_step = {(row["enrollment__sop"], row["sop_step"]): row for row in messages.annotate(
        **annotations).values("enrollment__sop", "sop_step").annotate(**aggregates).order_by()}
    skipped = defaultdict(dict)
    for row in (messages.filter(status=S.SKIPPED)
                .values("enrollment__sop", "sop_step", "skip_reason")
                .annotate(n=Count("id")).order_by()):
        skipped[(row["enrollment__sop"], row["sop_step"])][row["skip_reason"]] = row["n"]

    return {"results": [
        _sop_row(s, steps[s.pk], by_sop.get(s.pk, {}), by_step, skipped) for s in sops]}


def _sop_row(sop: Sop, steps: list[SopStep], row: dict, by_step: dict,
             skipped: dict) -> dict[str, Any]:
    step_rows = []
    total = dict.fromkeys(COUNTS, 0)
    total_skipped: dict[str, int] = defaultdict(int)
    # Messages of a deleted step (sop_step set to NULL) still count towards the SOP.
    keys = [(step.pk, step) for step in steps] + [(None, None)]
    for pk, step in keys:
        counts = _counts(by_step.get((sop.pk, pk)))
        reasons = skipped.get((sop.pk, pk), {})
        for key in COUNTS:
            total[key] += counts[key]
        for reason, n in reasons.items():
            total_skipped[reason] += n
        if step is not None:
            step_rows.append({"id": step.pk, "order": step.order, "channel": step.channel,
                              "category": step.category, **_funnel(counts, reasons)})
    return {
        "id": sop.pk,
        "name": sop.name,
        "model": sop.model.key,
        "stage": sop.stage.key,
        "active": sop.active,
        "holdout_percent": sop.holdout_percent,
        "enrolled": row.get("enrolled", 0),
        "treatment": row.get("treatment", 0),
        "control": row.get("control", 0),
        "messages": _funnel(total, total_skipped),
        "conversion": _comparison(row, "converted", row.get("conversion_open", 0)),
        "advancement": _comparison(row, "advanced", row.get("advancement_open", 0)),
        "steps": step_rows,
    }


def campaign_performance(*, scope: Scope, period: Period, campaign: Campaign | None = None,
                         now: datetime | None = None) -> dict[str, Any]:
    """Per campaign started in the period: the funnel of its messages to the customers in
    scope and, for a campaign with a holdout, its uplift: customers sent it against the
    control group, converted = a paid order within CONVERSION_DAYS of the campaign's start.
    Five queries: the campaigns, their messages aggregated, the skipped ones by reason, the
    treatment and the control groups' conversions."""
    now = now or timezone.now()
    campaigns = Campaign.objects.filter(
        started_at__gte=period.since, started_at__lt=period.until).order_by("-started_at", "-pk")
    if campaign is not None:
        campaigns = campaigns.filter(pk=campaign.pk)
    campaigns = list(campaigns)
    ids = [c.pk for c in campaigns]
    messages = scope.apply(Message.objects.filter(campaign__in=ids), path="customer__")
    annotations, aggregates = _message_figures(policy().block_window_hours)
    by_campaign = {row["campaign"]: row for row in messages.annotate(**annotations)
                   .values("campaign").annotate(**aggregates).order_by()}
    skipped = defaultdict(dict)
    for row in (messages.filter(status=S.SKIPPED).values("campaign", "skip_reason")
                .annotate(n=Count("id")).order_by()):
        skipped[row["campaign"]][row["skip_reason"]] = row["n"]
    converted = _paid_order_within("campaign__started_at", CONVERSION_DAYS)
    groups: dict[int, dict[str, int]] = defaultdict(dict)
    for row in (messages.filter(status__in=SENT).values("campaign")
                .annotate(n=Count("customer", distinct=True),
                          x=Count("customer", distinct=True, filter=converted))
                .order_by()):
        groups[row["campaign"]].update(treatment=row["n"], converted_treatment=row["x"])
    for row in (scope.apply(CampaignControl.objects.filter(campaign__in=ids), path="customer__")
                .values("campaign").annotate(n=Count("id"), x=Count("id", filter=converted))
                .order_by()):
        groups[row["campaign"]].update(control=row["n"], converted_control=row["x"])
    results = []
    for c in campaigns:
        funnel = _funnel(_counts(by_campaign.get(c.pk)), skipped.get(c.pk, {}))
        group = groups.get(c.pk, {})
        open_ = c.started_at + timedelta(days=CONVERSION_DAYS) > now
        results.append({
            "id": c.pk, "name": c.name, "status": c.status, "channel": c.channel,
            "category": c.category, "started_at": c.started_at, "finished_at": c.finished_at,
            "audience": funnel.pop("total"), **funnel, "holdout_percent": c.holdout_percent,
            "control": group.get("control", 0),
            "conversion": _comparison(group, "converted", window_open=(
                group.get("treatment", 0) + group.get("control", 0)) if open_ else 0)})
    return {"results": results}
