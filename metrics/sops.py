"""SOP and campaign performance: the delivery funnel of their messages, what followed them
(orders, deletions, stage moves) and, with a holdout, the uplift against the control group
(docs/METRICS.md, "SOP and campaign performance")."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, DateTimeField, Exists, ExpressionWrapper, OuterRef, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone

from campaigns.models import Campaign, CampaignControl, Enrollment, Message, Sop, SopStep
from campaigns.services import message_blocked
from core.db import materialize_ids
from crm.models import Order
from lifecycle.models import StageTransition
from metrics.periods import Period, Scope
from metrics.selectors import ratio

CONVERSION_DAYS = 7
ADVANCEMENT_DAYS = 30
SCOPED_ENROLMENTS = "metrics_scoped_enrolments"     # a temporary table (PostgreSQL)

S = Message.Status
SENT = (S.SENT, S.DELIVERED, S.READ, S.REPLIED)
# A later receipt implies the earlier ones: a read message was delivered.
DELIVERED = (S.DELIVERED, S.READ, S.REPLIED)
READ = (S.READ, S.REPLIED)
PENDING = (S.QUEUED, S.SENDING)
COUNTS = ("total", "sent", "delivered", "read", "replied", "failed", "pending", "converted",
          "blocked", "skipped")
RATES = {"delivery_rate": "delivered", "read_rate": "read", "reply_rate": "replied",
         "conversion_rate": "converted", "block_rate": "blocked"}


def _after(ref: str, delta: timedelta) -> ExpressionWrapper:
    return ExpressionWrapper(OuterRef(ref) + delta, output_field=DateTimeField())


# What followed a row (an enrolment, a message) is counted by one statement per outcome that
# keeps the rows with WHERE EXISTS — a semi-join, one index probe per row, and for messages
# only those sent — rather than an EXISTS per row in the select list of every row (two probes
# per enrolment and per message, sent or not).

def _paid_order_within(ref: str, days: int) -> Exists:
    """A paid (not refunded) order of the row's customer placed in [ref, ref + days]."""
    return Exists(Order.objects.filter(
        customer=OuterRef("customer"), status=Order.Status.PAID,
        placed_at__gte=OuterRef(ref), placed_at__lte=_after(ref, timedelta(days=days))))


def _advanced() -> Exists:
    """The enrolment's customer moved forward past its SOP's stage, in the SOP's model, within
    ADVANCEMENT_DAYS of entering it."""
    return Exists(StageTransition.objects.filter(
        customer=OuterRef("customer"), model=OuterRef("sop__model"),
        at__gt=OuterRef("entered_at"),
        at__lte=_after("entered_at", timedelta(days=ADVANCEMENT_DAYS)),
        backward=False, to_stage__position__gt=OuterRef("sop__stage__position")))


def _counts(rows, keys: tuple[str, ...], outcomes: dict[str, tuple], **aggregates
            ) -> dict[tuple, dict[str, Any]]:
    """{(values of keys): {aggregate: value}} of a grouped aggregate of `rows`, with each of
    `outcomes` (name: the filters a row must meet) counted by a statement of its own."""
    counts = {tuple(row[k] for k in keys): row
              for row in rows.values(*keys).annotate(**aggregates).order_by()}
    for name, followed in outcomes.items():
        for row in rows.filter(*followed).values(*keys).annotate(n=Count("id")).order_by():
            counts[tuple(row[k] for k in keys)][name] = row["n"]
    return counts


def _message_counts(messages, *keys: str) -> tuple[dict, dict]:
    """The delivery funnel's counts of a queryset of messages per `keys` (a tuple of their
    values) and the skipped ones per `keys` and reason."""
    sent = Q(status__in=SENT)
    counts = _counts(
        messages, keys, {"converted": (sent, _paid_order_within("sent_at", CONVERSION_DAYS)),
                         "blocked": (sent, message_blocked())},
        total=Count("id"),
        sent=Count("id", filter=sent),
        delivered=Count("id", filter=Q(status__in=DELIVERED)),
        read=Count("id", filter=Q(status__in=READ)),
        replied=Count("id", filter=Q(status=S.REPLIED)),
        failed=Count("id", filter=Q(status=S.FAILED)),
        pending=Count("id", filter=Q(status__in=PENDING)),
        skipped=Count("id", filter=Q(status=S.SKIPPED)))
    funnel = {key: {name: row.get(name, 0) for name in COUNTS} for key, row in counts.items()}
    skipped: dict[tuple, dict[str, int]] = defaultdict(dict)
    for row in (messages.filter(status=S.SKIPPED).values(*keys, "skip_reason")
                .annotate(n=Count("id")).order_by()):
        skipped[tuple(row[k] for k in keys)][row["skip_reason"]] = row["n"]
    return funnel, skipped


def _funnel(counts: dict[str, int] | None, skipped_by_reason: dict[str, int]) -> dict[str, Any]:
    counts = counts or dict.fromkeys(COUNTS, 0)
    return {**counts, "skipped_by_reason": dict(sorted(skipped_by_reason.items())),
            **{rate: ratio(counts[key], counts["sent"]) for rate, key in RATES.items()}}


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
    sides = {side: {"size": row.get(side, 0), "count": row.get(f"{what}_{side}", 0)}
             for side in ("treatment", "control")}
    for side in sides.values():
        side["rate"] = ratio(side["count"], side["size"])
    treatment, control = sides["treatment"], sides["control"]
    both = treatment["rate"] is not None and control["rate"] is not None
    uplift = treatment["rate"] - control["rate"] if both else None
    return {
        **sides,
        "uplift_pp": uplift * 100 if both else None,
        "relative_uplift": uplift / control["rate"] if both and control["rate"] else None,
        "p_value": two_proportion_p_value(treatment["count"], treatment["size"],
                                          control["count"], control["size"]),
        "window_open": window_open,
    }


def sop_performance(*, scope: Scope, period: Period, sop: Sop | None = None,
                    now: datetime | None = None) -> dict[str, Any]:
    """Per SOP and per step: the enrolments of customers in scope that entered in the period,
    and their messages (nine queries, docs/METRICS.md)."""
    now = now or timezone.now()
    sops = Sop.objects.select_related("model", "stage").order_by("model__order", "model__key",
                                                                 "stage__position", "name", "pk")
    if sop is not None:
        sops = sops.filter(pk=sop.pk)
    sops = list(sops)
    steps = defaultdict(list)
    for step in SopStep.objects.filter(sop__in=[s.pk for s in sops]).order_by("sop", "order"):
        steps[step.sop_id].append(step)

    enrolments = Enrollment.objects.filter(entered_at__gte=period.since,
                                           entered_at__lt=period.until)
    if sop is not None:
        enrolments = enrolments.filter(sop=sop)
    if scope.restricted and materialize_ids(
            SCOPED_ENROLMENTS, scope.apply(enrolments, path="customer__")) is not None:
        # The scope's customers are read once, not by each statement below.
        enrolments = Enrollment.objects.filter(
            pk__in=RawSQL(f"SELECT id FROM {SCOPED_ENROLMENTS}", []))
    else:
        enrolments = scope.apply(enrolments, path="customer__")
    counts = _counts(
        enrolments, ("sop", "status"),
        {"converted": (_paid_order_within("entered_at", CONVERSION_DAYS),),
         "advanced": (_advanced(),)},
        n=Count("id"),
        conversion_open=Count("id", filter=Q(entered_at__gt=now - timedelta(days=CONVERSION_DAYS))),
        advancement_open=Count("id", filter=Q(
            entered_at__gt=now - timedelta(days=ADVANCEMENT_DAYS))))
    by_sop: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in counts.values():
        group = "control" if row["status"] == Enrollment.Status.HOLDOUT else "treatment"
        folded = by_sop[row["sop"]]
        folded["enrolled"] += row["n"]
        folded[group] += row["n"]
        for outcome in ("converted", "advanced"):
            folded[f"{outcome}_{group}"] += row.get(outcome, 0)
        for window in ("conversion_open", "advancement_open"):
            folded[window] += row[window]

    by_step, skipped = _message_counts(
        Message.objects.filter(enrollment__in=enrolments.values("pk")), "enrollment__sop",
        "sop_step")
    return {"results": [
        _sop_row(s, steps[s.pk], by_sop.get(s.pk, {}), by_step, skipped) for s in sops]}


def _sop_row(sop: Sop, steps: list[SopStep], row: dict, by_step: dict,
             skipped: dict) -> dict[str, Any]:
    # Messages of a deleted step (sop_step set to NULL) still count towards the SOP.
    keys = [(sop.pk, step.pk) for step in steps] + [(sop.pk, None)]
    total = {key: sum(by_step[k][key] for k in keys if k in by_step) for key in COUNTS}
    total_skipped: Counter[str] = Counter()
    for k in keys:
        total_skipped.update(skipped.get(k, {}))
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
        "steps": [{"id": step.pk, "order": step.order, "channel": step.channel,
                   "category": step.category, **_funnel(by_step.get((sop.pk, step.pk)),
                                                        skipped.get((sop.pk, step.pk), {}))}
                  for step in steps],
    }


def campaign_performance(*, scope: Scope, period: Period, campaign: Campaign | None = None,
                         now: datetime | None = None) -> dict[str, Any]:
    """Per campaign started in the period: the funnel of its messages to the customers in
    scope and, with a holdout, the uplift of a paid order within CONVERSION_DAYS of its start
    (customers sent it against the control group)."""
    now = now or timezone.now()
    campaigns = Campaign.objects.filter(
        started_at__gte=period.since, started_at__lt=period.until).order_by("-started_at", "-pk")
    if campaign is not None:
        campaigns = campaigns.filter(pk=campaign.pk)
    campaigns = list(campaigns)
    ids = [c.pk for c in campaigns]
    messages = scope.apply(Message.objects.filter(campaign__in=ids), path="customer__")
    by_campaign, skipped = _message_counts(messages, "campaign")
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
        funnel = _funnel(by_campaign.get((c.pk,)), skipped.get((c.pk,), {}))
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
