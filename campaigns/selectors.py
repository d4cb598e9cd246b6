"""Reads of outreach data."""

from django.db.models import Count, OuterRef, Q, QuerySet, Subquery

from campaigns.models import Campaign, Enrollment, Message, Sop
from core import access

PROGRESS_STATES = ("queued", "sending", "sent", "delivered", "read", "replied", "failed",
                   "skipped")


def campaign_list() -> QuerySet[Campaign]:
    """Campaigns with their messages counted by status in the same query (progress)."""
    # Explicitly ordered: Meta.ordering is not applied to a GROUP BY query, and an unordered
    # list pages unpredictably.
    return Campaign.objects.select_related("segment", "overridden_by").annotate(**{
        f"n_{state}": Count("messages", filter=Q(messages__status=state))
        for state in PROGRESS_STATES}).order_by("-created_at", "-id")


def campaign_progress(*, campaign: Campaign) -> dict[str, int]:
    if hasattr(campaign, "n_queued"):
        counts = {state: getattr(campaign, f"n_{state}") for state in PROGRESS_STATES}
    else:
        found = dict(Message.objects.filter(campaign=campaign).values_list("status")
                     .annotate(n=Count("id")))
        counts = {state: found.get(state, 0) for state in PROGRESS_STATES}
    counts["total"] = sum(counts.values())
    return counts


S = Message.Status
# The cards of Today's outreach: a message delivered, read or replied to was sent.
TODAY_CARDS = {"queued": (S.QUEUED, S.SENDING), "sent": (S.SENT, S.DELIVERED, S.READ, S.REPLIED),
               "skipped": (S.SKIPPED,), "failed": (S.FAILED,)}


def today_for(*, user) -> dict:
    """An operator's day: open to-dos (overdue first) and the messages due today for their
    customers, counted by status, with the next ones to go out."""
    from datetime import timedelta

    from django.utils import timezone

    from campaigns.models import OperatorTask
    from core import access

    now = timezone.localtime()
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    end = start + timedelta(days=1)
    tasks = (OperatorTask.objects.filter(assignee=user, status=OperatorTask.Status.OPEN,
                                         due_at__lt=end)
             .select_related("customer").order_by("due_at")[:200])
    todays = access.scope_customers(Message.objects.filter(due_at__gte=start, due_at__lt=end),
                                    user, owner_field="customer__owner")
    by_status = dict(todays.values_list("status").annotate(n=Count("id")))
    # Every message due today in exactly one card, whatever receipts have said of it since.
    counts = {card: sum(by_status.get(status, 0) for status in statuses)
              for card, statuses in TODAY_CARDS.items()}
    upcoming = (todays.filter(status=Message.Status.QUEUED).select_related("customer")
                .order_by("due_at")[:50])
    return {"tasks": tasks, "counts": counts, "upcoming": upcoming, "now": now,
            "total_today": sum(by_status.values())}


def customer_outreach(*, customer, messages: int = 20) -> dict:
    """What the customer was sent, is about to be sent or was spared (with the reason), and
    the SOPs they are going through with the next step and when it is due: three queries."""
    recent = list(Message.objects.filter(customer=customer)
                  .select_related("sop_step__sop", "campaign")
                  .order_by("-due_at", "-id")[:messages])
    queued = Message.objects.filter(enrollment=OuterRef("pk"), status=Message.Status.QUEUED
                                    ).order_by("due_at", "id")
    enrolments = list(
        Enrollment.objects.filter(customer=customer, status__in=[Enrollment.Status.ACTIVE,
                                                                 Enrollment.Status.HOLDOUT],
                                  ended_at__isnull=True)
        .select_related("sop__model", "sop__stage")
        .annotate(next_due=Subquery(queued.values("due_at")[:1]),
                  next_step=Subquery(queued.values("sop_step__order")[:1]))
        .order_by("next_due", "-entered_at"))
    return {"recent_messages": recent, "enrolments": enrolments}


# --- The outbox page -------------------------------------------------------------------------

# Enough campaigns for the outbox's picker; older ones are still reachable by URL.
OUTBOX_CAMPAIGN_CHOICES = 300


def _outbox_filtered(*, user, status: str = "", channel: str = "", skip_reason: str = "",
                     sop=None, campaign=None) -> QuerySet[Message]:
    queryset = access.scope_customers(Message.objects.all(), user,
                                      owner_field="customer__owner")
    if status:
        queryset = queryset.filter(status=status)
    if channel:
        queryset = queryset.filter(channel=channel)
    if skip_reason:
        queryset = queryset.filter(skip_reason=skip_reason)
    if sop is not None:
        queryset = queryset.filter(sop_step__sop=sop)
    if campaign is not None:
        queryset = queryset.filter(campaign=campaign)
    return queryset


def outbox_messages(*, user, status: str = "", channel: str = "", skip_reason: str = "",
                    sop=None, campaign=None) -> QuerySet[Message]:
    """The outbox as the user may see it (an operator: their own customers' messages),
    filtered, newest due first, with what a row of the outbox page shows joined in. `sop` and
    `campaign` are ids or instances."""
    return (_outbox_filtered(user=user, status=status, channel=channel,
                             skip_reason=skip_reason, sop=sop, campaign=campaign)
            .select_related("customer__owner", "sop_step__sop", "campaign")
            .order_by("-due_at", "-id"))


def outbox_status_counts(*, user, channel: str = "", skip_reason: str = "", sop=None,
                         campaign=None) -> dict[str, int]:
    """The messages of `outbox_messages` with the same filters but any status, counted by
    status in one GROUP BY (every status present, in the order of `Message.Status`)."""
    found = dict(_outbox_filtered(user=user, channel=channel, skip_reason=skip_reason, sop=sop,
                                  campaign=campaign)
                 .order_by().values_list("status").annotate(n=Count("id")))
    return {status: found.get(status, 0) for status in Message.Status.values}


def outbox_filter_choices(*, campaign: int | None = None) -> dict[str, list]:
    """The outbox's SOP picker (grouped by stage model) and campaign picker (the latest ones,
    and the chosen one even when it is older)."""
    sops: dict[str, list[tuple[int, str]]] = {}
    for pk, name, model_name, stage_name in (
            Sop.objects.order_by("model__name", "stage__position", "name")
            .values_list("pk", "name", "model__name", "stage__name")):
        sops.setdefault(model_name, []).append((pk, f"{name} · {stage_name}"))
    campaigns = list(Campaign.objects.order_by("-created_at", "-id")
                     .values_list("pk", "name")[:OUTBOX_CAMPAIGN_CHOICES])
    if campaign is not None and campaign not in {pk for pk, _name in campaigns}:
        campaigns += list(Campaign.objects.filter(pk=campaign).values_list("pk", "name"))
    return {"sops": list(sops.items()), "campaigns": campaigns}


# --- The workbench: what needs someone's attention -------------------------------------------

FAILED_SENDS_DAYS = 7
TODOS_SHOWN = 8


def workbench_alerts(*, user) -> list[dict]:
    """What needs attention now, for the workbench: SOP steps and campaigns that paused
    themselves, churn warnings waiting for the user (every operator's for admins), sends that
    failed in the last week (within what the user may see) and the user's bulk jobs still
    running — tags, stage moves, exports, imports (every one for admins). Each: `kind`,
    `count`, a few `names` or `jobs` with their progress."""
    from datetime import timedelta

    from django.utils import timezone

    from campaigns.models import OperatorTask, SopStep
    from crm.models import CustomerExport, CustomerImport
    from lifecycle.models import BulkStageJob
    from tagging.models import BulkTagJob

    role = access.user_role(user)
    alerts = []
    paused_steps = list(SopStep.objects.filter(paused=True, sop__active=True)
                        .select_related("sop").order_by("sop__name", "order")[:50])
    if paused_steps:
        alerts.append({"kind": "paused_steps", "count": len(paused_steps),
                       "names": [f"{s.sop.name} #{s.order}" for s in paused_steps[:3]]})
    paused_campaigns = list(Campaign.objects.filter(paused=True,
                                                    status=Campaign.Status.SENDING)
                            .values_list("pk", "name")[:50])
    if paused_campaigns:
        alerts.append({"kind": "paused_campaigns", "count": len(paused_campaigns),
                       "names": [name for _pk, name in paused_campaigns[:3]],
                       "pk": paused_campaigns[0][0]})
    if role in (access.ADMIN, access.OPERATOR):
        warnings = OperatorTask.objects.filter(kind=OperatorTask.Kind.CHURN_WARNING,
                                               status=OperatorTask.Status.OPEN)
        if role == access.OPERATOR:
            warnings = warnings.filter(assignee=user)
        churn = warnings.count()
        if churn:
            alerts.append({"kind": "churn_warnings", "count": churn, "names": []})
    # One query for two counts: sends that failed lately and, for the staff, messages handed
    # to a channel where the owner still confirms the send (WeCom's mass sends).
    since = timezone.now() - timedelta(days=FAILED_SENDS_DAYS)
    recent_failures = Q(status=Message.Status.FAILED, due_at__gte=since)
    awaiting = Q(status=Message.Status.SUBMITTED)
    messages = Message.objects.filter(recent_failures | awaiting if role != access.ANALYST
                                      else recent_failures)
    if role != access.ANALYST:
        messages = access.scope_customers(messages, user, owner_field="customer__owner")
    counts = messages.aggregate(failed=Count("id", filter=recent_failures),
                                awaiting=Count("id", filter=awaiting))
    if counts["awaiting"] and role != access.ANALYST:
        alerts.append({"kind": "awaiting_confirmation", "count": counts["awaiting"],
                       "names": []})
    failed_count = counts["failed"]
    if failed_count:
        alerts.append({"kind": "failed_sends", "count": failed_count, "names": [],
                       "days": FAILED_SENDS_DAYS})
    running = []
    # (model, kind of job page, the field of rows done, the field of rows in all)
    for model, kind, done, total in ((BulkTagJob, "tags", "processed", "total"),
                                     (BulkStageJob, "stage", "processed", "total"),
                                     (CustomerExport, "export", "processed", "total"),
                                     (CustomerImport, "import", "next_row", "total_rows")):
        jobs = model.objects.filter(status__in=["queued", "running"])
        if role != access.ADMIN:
            jobs = jobs.filter(actor=user)
        for pk, n, of in jobs.order_by("created_at").values_list("pk", done, total)[:10]:
            running.append({"kind": kind, "pk": pk, "done": n, "total": of,
                            "percent": round(100 * n / of) if of else 0})
    if running:
        alerts.append({"kind": "bulk_jobs", "count": len(running), "names": [],
                       "jobs": running[:10]})
    return alerts


def due_todos(*, user, limit: int = TODOS_SHOWN) -> dict:
    """The user's open to-dos due by the end of today, overdue first, and how many in all."""
    from datetime import timedelta

    from django.utils import timezone

    from campaigns.models import OperatorTask

    start = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    due = OperatorTask.objects.filter(assignee=user, status=OperatorTask.Status.OPEN,
                                      due_at__lt=start + timedelta(days=1))
    return {"tasks": list(due.select_related("customer").order_by("due_at")[:limit]),
            "count": due.count(), "now": timezone.now()}


def steps_with_block_rates(steps) -> list[dict]:
    """Each SOP step with its sends, blocks and block rate (None before a first send), as the
    harassment check counts them (`services.block_stats`, one query)."""
    from campaigns.services import block_stats

    stats = block_stats(step_ids=[s.pk for s in steps], campaign_ids=[])
    rows = []
    for step in steps:
        figures = stats.get(("step", step.pk), {"sends": 0, "blocks": 0})
        rows.append({"step": step, **figures,
                     "block_rate": figures["blocks"] / figures["sends"]
                     if figures["sends"] else None})
    return rows
