"""Outreach: enrolment from the lifecycle hook, campaigns, the outbox dispatcher with its
send-time guards, delivery receipts, the harassment signal and operator tasks.

The database is the truth. Enrolling a customer writes the enrolment and every step's message
row in the transaction that recorded the stage entry; a campaign writes its whole audience as
message rows when it starts. The dispatcher claims due rows with `SELECT … FOR UPDATE SKIP
LOCKED`, so two dispatchers never take the same row, and each row has a unique dedupe key, so
nothing is queued twice.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zoneinfo
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Count, DateTimeField, Exists, ExpressionWrapper, F, OuterRef, Q
from django.utils import timezone
from django.utils.translation import gettext as _

from campaigns import backends, templates
from campaigns.models import (
    Campaign,
    CampaignControl,
    Category,
    Channel,
    Enrollment,
    Message,
    OperatorTask,
    OutreachPolicy,
    Sop,
    SopStep,
)
from core import access, audit, conditions
from core.db import insert_ignore_returning, update_from_values
from core.exceptions import ApplicationError
from crm import extensions
from crm.models import Customer, Event, OrderItem
from lifecycle.hooks import StageEntry
from lifecycle.models import CustomerStage, Stage

logger = logging.getLogger(__name__)
User = get_user_model()

# Stages where promotion drives newcomers away (seed 000: 广告轰炸 gets the brand deleted).
GUARDED_STAGES = {("journey", "interest"), ("value", "intro")}
RENDER_CHUNK = 2000
# Channels that reach the customer through the WeCom relationship: closed once they delete us.
RELATIONSHIP_CHANNELS = {Channel.WECOM, Channel.MANUAL, Channel.WEBHOOK, Channel.CONSOLE}


def policy() -> OutreachPolicy:
    found = OutreachPolicy.objects.first()
    return found if found is not None else OutreachPolicy.objects.create()


@transaction.atomic
def policy_save(**fields) -> OutreachPolicy:
    """Change the one outreach policy."""
    pol = policy()
    before = {name: getattr(pol, name) for name in fields}
    for name, value in fields.items():
        setattr(pol, name, value)
    pol.full_clean()
    pol.save()
    audit.record("settings.policy", target=pol, summary=_("Outreach policy changed"),
                 data={"before": before, "after": {n: getattr(pol, n) for n in fields}})
    return pol


# --- Rendering for many customers at once --------------------------------------------------

def _contexts(customer_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Template contexts for many customers in a fixed number of queries (their tags and
    stages read as values, not model instances: most of a batch's time once)."""
    customers = Customer.objects.filter(pk__in=customer_ids).select_related("owner", "channel")
    extra = extensions.extension_values_many(customer_ids)
    categories: dict[int, list[str]] = defaultdict(list)
    for customer_id, category in (OrderItem.objects.filter(
            order__customer_id__in=customer_ids, order__status="paid").exclude(category="")
            .values_list("order__customer_id", "category").distinct()):
        categories[customer_id].append(category)
    out = {}
    for customer in customers:
        values = extra[customer.pk]
        out[customer.pk] = templates.context_for(
            customer, tags=values.get("tags", []), stages=values.get("stages", {}),
            categories=sorted(categories[customer.pk]))
    return out


def _render_many(source: str, customer_ids: list[int]) -> dict[int, str]:
    """Each customer's text; a customer the template fails for, or renders nothing for, gets
    no message (logged)."""
    template = templates.compile_template(source)
    rendered = {}
    for start in range(0, len(customer_ids), RENDER_CHUNK):
        chunk = customer_ids[start:start + RENDER_CHUNK]
        for customer_id, context in _contexts(chunk).items():
            try:
                text = templates.render(template, context)
            except Exception as exc:  # checked at save; a customer's odd data must not stop all
                logger.warning("campaigns.render_failed", extra={"customer": customer_id,
                                                                 "error": str(exc)})
                continue
            if text:
                rendered[customer_id] = text
    return rendered


def template_preview(*, source: str, customer: Customer | None) -> str:
    """The text as the sample customer, or the given one, would receive it."""
    text = templates.check_template(source)
    if customer is None:
        return text
    try:
        text = templates.render(templates.compile_template(source),
                                _contexts([customer.pk])[customer.pk])
    except Exception as exc:   # this customer's data takes the template past a limit
        raise ApplicationError(_("template: the template does not render for this customer: "
                                 "%(error)s") % {"error": exc}) from exc
    if not text:
        raise ApplicationError(_("template: the template renders to nothing for this "
                                 "customer"))
    return text


# --- Guards at save time -------------------------------------------------------------------

def _check_stage_guard(*, promotional: bool, aimed_at: set[tuple[str, str]], override: bool,
                       actor, what: str) -> bool:
    """Refuse promotion aimed at newcomers unless an admin overrides it; answers whether the
    override is in force (to be recorded)."""
    hit = aimed_at & GUARDED_STAGES
    if not promotional or not hit:
        return False
    if override and access.is_admin(actor):
        return True
    names = ", ".join(f"{m}:{s}" for m, s in sorted(hit))
    if override:
        raise ApplicationError(_("override_stage_guard: only an admin may override the stage "
                                 "guard"))
    raise ApplicationError(
        _("%(what)s: promotional messages to customers in %(stages)s are refused — a newcomer "
          "who is sold to before trusting the brand deletes it. Send service or "
          "content instead, exclude these stages, or ask an admin to override explicitly "
          "(override_stage_guard).") % {"what": what, "stages": names})


def _condition_error(where: str, exc: conditions.ConditionError) -> ApplicationError:
    """A condition's error named by where the condition is in the request
    (`steps[0].condition.all[1].op: …`)."""
    return ApplicationError(f"{where}.{exc.message}" if exc.path else f"{where}: {exc.message}",
                            extra=exc.extra)


def _check_steps(steps: list[dict]) -> None:
    orders = [s.get("order") for s in steps]
    if len(set(orders)) != len(orders):
        raise ApplicationError(_("steps: each step has its own order"))
    for index, step in enumerate(steps):
        path = f"steps[{index}]"
        templates.check_template(step.get("template", ""), path=f"{path}.template")
        if step.get("condition") is not None:
            try:
                conditions.validate(step["condition"])
            except conditions.ConditionError as exc:
                raise _condition_error(f"{path}.condition", exc) from exc
        if (step.get("day") is None) != (step.get("at_time") is None):
            raise ApplicationError(_("%(path)s: give both day and at_time, or neither")
                                   % {"path": path})


@transaction.atomic
def sop_save(*, sop: Sop | None, actor, steps: list[dict] | None = None, **fields) -> Sop:
    """Create or change an SOP with its whole list of steps."""
    sop = sop or Sop(created_by=actor)
    override = fields.pop("override_stage_guard", False)
    for name, value in fields.items():
        setattr(sop, name, value)
    if sop.stage.model_id != sop.model_id:
        raise ApplicationError(_("stage: %(stage)s is not a stage of %(model)s")
                               % {"stage": sop.stage.key, "model": sop.model.key})
    if not 0 <= sop.holdout_percent <= 50:
        raise ApplicationError(_("holdout_percent: between 0 and 50"))
    if sop.goal is not None:
        try:
            conditions.validate(sop.goal)
        except conditions.ConditionError as exc:
            raise _condition_error("goal", exc) from exc
    if steps is None:
        steps = list(sop.steps.values("order", "delay_minutes", "day", "at_time", "channel",
                                      "category", "template", "condition")) if sop.pk else []
    _check_steps(steps)
    overridden = _check_stage_guard(
        promotional=any(s.get("category") == Category.PROMOTIONAL for s in steps),
        aimed_at={(sop.model.key, sop.stage.key)}, override=override or sop.override_stage_guard,
        actor=actor, what="steps")
    newly_overridden = overridden and not sop.override_stage_guard
    if newly_overridden:
        sop.override_stage_guard, sop.overridden_by = True, actor
        logger.warning("campaigns.stage_guard_overridden", extra={"sop": sop.pk,
                                                                  "by": actor.pk})
    sop.full_clean()
    sop.save()
    audit.record("sop.save", target=sop, actor=actor, summary=sop.name,
                 data={"model": sop.model.key, "stage": sop.stage.key, "active": sop.active,
                       "steps": len(steps)})
    if newly_overridden:
        audit.record("stage_guard.override", target=sop, actor=actor, summary=sop.name,
                     data={"stage": f"{sop.model.key}:{sop.stage.key}"})
    existing = {s.order: s for s in sop.steps.all()}
    now = timezone.now()
    for data in steps:
        step = existing.pop(data["order"], None) or SopStep(sop=sop, order=data["order"])
        for name in ("delay_minutes", "day", "at_time", "channel", "category", "template",
                     "condition"):
            if name in data:
                setattr(step, name, data[name])
        if "paused" in data and step.pk and step.paused and not data["paused"]:
            _resume_step(step, now)
        elif data.get("paused") and not step.paused:
            step.paused, step.paused_reason = True, _("paused by %(user)s") % {
                "user": actor.get_username()}
        step.full_clean(exclude=["sop"])
        step.save()
    if existing:
        # A step taken out of the SOP sends nothing more, also to customers already enrolled.
        Message.objects.filter(sop_step__in=existing.values(), status=Message.Status.QUEUED
                               ).update(status=Message.Status.SKIPPED,
                                        skip_reason=Message.SkipReason.PAUSED)
    for step in existing.values():
        step.delete()
    return sop


def _resume_step(step: SopStep, now: datetime) -> None:
    """Resumed: the block rate starts afresh, or the old sends would pause it again."""
    step.paused, step.paused_reason, step.counted_since = False, "", now


@transaction.atomic
def sop_step_resume(*, step: SopStep, actor) -> SopStep:
    """An admin lets a paused step send again (its block rate counted afresh from now)."""
    if not access.is_admin(actor):
        raise ApplicationError(_("Only an admin may resume a paused SOP step."))
    step = SopStep.objects.select_for_update().get(pk=step.pk)
    if not step.paused:
        raise ApplicationError(_("The step is not paused."))
    _resume_step(step, timezone.now())
    step.save(update_fields=["paused", "paused_reason", "counted_since"])
    audit.record("sop_step.resume", target=step, actor=actor,
                 summary=f"{step.sop.name} #{step.order}")
    return step


@transaction.atomic
def sop_delete(*, sop: Sop) -> None:
    """Delete an SOP that never enrolled anyone; one with history is deactivated instead, so
    its enrolments and sent messages stay on record."""
    if sop.enrollments.exists():
        raise ApplicationError(_("This SOP has enrolled customers; deactivate it (active: "
                                 "false) to keep its history."))
    audit.record("sop.delete", target=sop, summary=sop.name)
    sop.delete()


# --- Enrolment (the lifecycle transition hook) ---------------------------------------------

def _held_out(key: str, percent: int) -> bool:
    """Whether `key` falls in the `percent` kept out as a control group: a stable hash, so the
    same customer of the same entry (or campaign) is always on the same side."""
    if percent <= 0:
        return False
    digest = hashlib.sha256(key.encode())
    return int.from_bytes(digest.digest()[:4], "big") % 100 < percent


def _in_campaign_holdout(campaign_id: int, customer_id: int, percent: int) -> bool:
    return _held_out(f"campaign:{campaign_id}:{customer_id}", percent)


def _in_holdout(sop_id: int, customer_id: int, entered_at: datetime, percent: int) -> bool:
    return _held_out(f"{sop_id}:{customer_id}:{entered_at.isoformat()}", percent)


def _step_due(step: SopStep, entered_at: datetime) -> datetime:
    if step.day is not None and step.at_time is not None:
        local = timezone.localtime(entered_at)
        day = (local + timedelta(days=step.day)).date()
        return timezone.make_aware(datetime.combine(day, step.at_time),
                                   timezone.get_current_timezone())
    return entered_at + timedelta(minutes=step.delay_minutes)


def sops_on_stage_entered(entry: StageEntry) -> None:
    """The hook lifecycle calls when customers enter a stage: end their enrolments in other
    stages of the model, enrol them in this stage's SOPs and queue every step's message."""
    exit_left_stage(model_key=entry.model, stage_key=entry.stage, customer_ids=entry.customer_ids)
    customer_ids = _enrollable(entry)
    if not customer_ids:
        return
    for sop in (Sop.objects.filter(active=True, model__key=entry.model, stage__key=entry.stage)
                .select_related("model", "stage")):
        sop_enroll(sop=sop, customer_ids=customer_ids, entered_at=entry.at)
    churn_warnings(entry, customer_ids)


def _enrollable(entry: StageEntry) -> list[int]:
    """Who of the entering customers to reach. A first placement is a welcome only for a
    customer who really just arrived: when a model is first evaluated over the customers a
    brand already has, greeting every one of them at once is the ad bombing seed 000 warns of.
    """
    if not entry.first_placement:
        return list(entry.customer_ids)
    # The recent joiners are few (index on joined_at); intersecting in Python keeps a first
    # evaluation of a million customers from sending a million-long IN list.
    recent = set(Customer.objects.filter(
        joined_at__gte=entry.at - timedelta(hours=settings.OUTREACH_FIRST_PLACEMENT_HOURS))
        .values_list("pk", flat=True))
    return [c for c in entry.customer_ids if c not in entry.first_placement or c in recent]


EXIT_BY_ID = 5_000   # up to this many customers entering a stage, their enrolments by id


def exit_left_stage(*, model_key: str, stage_key: str, customer_ids: list[int]) -> int:
    """End the enrolments these customers have in other stages of the model."""
    now = timezone.now()
    entered = set(customer_ids)
    running = Enrollment.objects.filter(
        Q(status=Enrollment.Status.ACTIVE)
        | Q(status=Enrollment.Status.HOLDOUT, ended_at__isnull=True),
        sop__model__key=model_key).exclude(sop__stage__key=stage_key)
    if len(entered) <= EXIT_BY_ID:
        # (a few customers, as the touch handler moves: their enrolments by the customer
        # index — a day's running enrolments are tens of thousands)
        ids = list(running.filter(customer_id__in=entered).values_list("pk", flat=True))
    else:
        # Running enrolments are few next to the customers a full evaluation moves: read them
        # and intersect here instead of sending every moved id to the database.
        ids = [pk for pk, customer_id in running.values_list("pk", "customer_id")
               if customer_id in entered]
    if not ids:
        return 0
    for start in range(0, len(ids), 10_000):
        chunk = ids[start:start + 10_000]
        Enrollment.objects.filter(pk__in=chunk, status=Enrollment.Status.ACTIVE).update(
            status=Enrollment.Status.EXITED, ended_at=now, exit_reason="left_stage")
        # A control-group enrolment ends but stays `holdout`: the SOP report compares the two
        # groups, and `exited` would lose which group it was in.
        Enrollment.objects.filter(pk__in=chunk, status=Enrollment.Status.HOLDOUT).update(
            ended_at=now, exit_reason="left_stage")
        Message.objects.filter(enrollment_id__in=chunk, status=Message.Status.QUEUED).update(
            status=Message.Status.SKIPPED, skip_reason=Message.SkipReason.LEFT_STAGE)
    return len(ids)


def sop_enroll(*, sop: Sop, customer_ids: list[int], entered_at: datetime) -> int:
    """Enrol customers (one entry enrols once) and queue every step's message — set-based:
    the enrolments in bulk, then one `INSERT … SELECT` per step from them. The text is
    rendered when the dispatcher claims the message, so it speaks of the customer as they are
    then (and a corrected template reaches every message not yet sent)."""
    steps = list(sop.steps.filter(paused=False).order_by("order"))
    rows = [(sop.pk, c, entered_at,
             Enrollment.Status.HOLDOUT if _in_holdout(sop.pk, c, entered_at, sop.holdout_percent)
             else Enrollment.Status.ACTIVE, "") for c in customer_ids]
    created = insert_ignore_returning(
        Enrollment, ("sop", "customer", "entered_at", "status", "exit_reason"), rows,
        returning=("id",))
    if created and steps:
        stamp = int(entered_at.timestamp())
        for step in steps:
            _queue_step(step, sop=sop, entered_at=entered_at, stamp=stamp)
        transaction.on_commit(_kick_dispatch)
    return len(created)


def _queue_step(step: SopStep, *, sop: Sop, entered_at: datetime, stamp: int) -> None:
    """One message of `step` for every active enrolment of this entry, in one statement; the
    dedupe key makes a repeat a no-op."""
    msg, enr = Message._meta.db_table, Enrollment._meta.db_table
    at = connection.ops.adapt_datetimefield_value
    sql = (
        f"INSERT INTO {msg} (customer_id, channel, category, content, sop_step_id, "
        f"enrollment_id, dedupe_key, due_at, status, skip_reason, attempts, last_error, "
        f"provider_id, created_at) "
        f"SELECT e.customer_id, %s, %s, '', %s, e.id, "
        f"%s || CAST(e.customer_id AS VARCHAR(20)) || %s, %s, %s, '', 0, '', '', %s "
        f"FROM {enr} e WHERE e.sop_id = %s AND e.entered_at = %s AND e.status = %s "
        f"ON CONFLICT DO NOTHING")
    with connection.cursor() as cursor:
        cursor.execute(sql, [step.channel, step.category, step.pk, f"sop:{step.pk}:",
                             f":{stamp}", at(_step_due(step, entered_at)),
                             Message.Status.QUEUED, at(timezone.now()), sop.pk, at(entered_at),
                             Enrollment.Status.ACTIVE])


def deletion_warnings(deleted: dict[int, datetime]) -> int:
    """Customers who deleted or blocked us (crm calls this as it stores the event) become a
    to-do for their owner, like a churn warning: find out why and try another way back."""
    tasks = [OperatorTask(
        assignee_id=c.owner_id, customer=c, kind=OperatorTask.Kind.CHURN_WARNING,
        title=_("%(name)s deleted you: find out why") % {"name": c.name or c.external_id},
        body=_("Ask in a group you share or through another channel (SMS, e-mail) what went "
               "wrong; note what you learn."),
        due_at=deleted[c.pk], dedupe_key=f"deleted:{c.pk}:{int(deleted[c.pk].timestamp())}")
        for c in Customer.objects.filter(pk__in=list(deleted)).only("pk", "name",
                                                                    "external_id", "owner")]
    OperatorTask.objects.bulk_create(tasks, batch_size=2000, ignore_conflicts=True)
    return len(tasks)


def churn_warnings(entry: StageEntry, customer_ids: list[int]) -> int:
    """Customers entering a warning stage (policy: value:dormant) become a to-do for their
    owner: reach out before they are lost (seed 001: 对即将流失的用户要进行预警)."""
    if (entry.model, entry.stage) not in {tuple(s.split(":", 1)) for s in
                                          settings.OUTREACH_CHURN_WARNING_STAGES}:
        return 0
    stage = Stage.objects.filter(model__key=entry.model, key=entry.stage).first()
    stamp = int(entry.at.timestamp())
    tasks = []
    for start in range(0, len(customer_ids), 10_000):
        for c in Customer.objects.filter(pk__in=customer_ids[start:start + 10_000]).only(
                "pk", "name", "external_id", "owner"):
            tasks.append(OperatorTask(
                assignee_id=c.owner_id, customer=c, kind=OperatorTask.Kind.CHURN_WARNING,
                title=_("%(name)s is going quiet (%(stage)s): reach out one to one")
                % {"name": c.name or c.external_id,
                   "stage": stage.name if stage else entry.stage},
                body=_("Ask how they are, offer help or a personal benefit; note what you "
                       "learn."),
                due_at=entry.at, dedupe_key=f"churn:{c.pk}:{stamp}"))
    OperatorTask.objects.bulk_create(tasks, batch_size=2000, ignore_conflicts=True)
    return len(tasks)


# --- Campaigns -----------------------------------------------------------------------------

def _audience(campaign: Campaign):
    condition = campaign.segment.condition if campaign.segment_id else campaign.condition
    return Customer.objects.filter(conditions.compile_condition(condition))


def _guarded_count(queryset) -> int:
    in_guarded = Q()
    for model_key, stage_key in GUARDED_STAGES:
        in_guarded |= Q(Exists(CustomerStage.objects.filter(
            customer=OuterRef("pk"), model__key=model_key, stage__key=stage_key)))
    return queryset.filter(in_guarded).count()


@transaction.atomic
def campaign_save(*, campaign: Campaign | None, actor, **fields) -> Campaign:
    campaign = campaign or Campaign(created_by=actor)
    if campaign.pk and campaign.status not in (Campaign.Status.DRAFT, Campaign.Status.SCHEDULED):
        raise ApplicationError(_("status: a campaign that has started cannot be changed"))
    override = fields.pop("override_stage_guard", False)
    guard_overridden = False
    for name, value in fields.items():
        setattr(campaign, name, value)
    if (campaign.segment_id is None) == (campaign.condition is None):
        raise ApplicationError(_("condition: give a segment or a condition (one of them)"))
    if not 0 <= campaign.holdout_percent <= 50:
        raise ApplicationError(_("holdout_percent: between 0 and 50"))
    if campaign.condition is not None:
        try:
            conditions.validate(campaign.condition)
        except conditions.ConditionError as exc:
            raise _condition_error("condition", exc) from exc
    templates.check_template(campaign.template)
    if not campaign.paused:
        campaign.paused_reason = ""      # a template that could not be rewritten, now mended
    if campaign.category == Category.PROMOTIONAL:
        guarded = _guarded_count(_audience(campaign))
        if guarded:
            stages = {key for key in GUARDED_STAGES}
            overridden = _check_stage_guard(
                promotional=True, aimed_at=stages,
                override=override or campaign.override_stage_guard, actor=actor,
                what=_("condition (%(n)d of the audience)") % {"n": guarded})
            if overridden and not campaign.override_stage_guard:
                campaign.override_stage_guard, campaign.overridden_by = True, actor
                guard_overridden = True
    campaign.full_clean()
    campaign.save()
    audit.record("campaign.save", target=campaign, actor=actor, summary=campaign.name,
                 data={"channel": campaign.channel, "category": campaign.category})
    if guard_overridden:
        audit.record("stage_guard.override", target=campaign, actor=actor,
                     summary=campaign.name)
    return campaign


@transaction.atomic
def campaign_schedule(*, campaign: Campaign, actor) -> Campaign:
    """Start now, or at `send_at` (beat starts it then)."""
    campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
    if campaign.status not in (Campaign.Status.DRAFT, Campaign.Status.SCHEDULED):
        raise ApplicationError(_("status: the campaign is %(status)s already")
                               % {"status": campaign.get_status_display()})
    audit.record("campaign.schedule", target=campaign, actor=actor, summary=campaign.name,
                 data={"send_at": campaign.send_at.isoformat() if campaign.send_at else None})
    if campaign.send_at and campaign.send_at > timezone.now():
        campaign.status = Campaign.Status.SCHEDULED
        campaign.save(update_fields=["status", "updated_at"])
        return campaign
    return campaign_start(campaign=campaign)


@transaction.atomic
def campaign_start(*, campaign: Campaign) -> Campaign:
    """Fix the audience: one queued message per customer, rendered now."""
    campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
    if campaign.status not in (Campaign.Status.DRAFT, Campaign.Status.SCHEDULED):
        return campaign
    now = timezone.now()
    audience = _audience(campaign)
    if campaign.category == Category.PROMOTIONAL and not campaign.override_stage_guard:
        # Customers who entered a guarded stage since the campaign was saved stay out.
        for model_key, stage_key in GUARDED_STAGES:
            audience = audience.exclude(Exists(CustomerStage.objects.filter(
                customer=OuterRef("pk"), model__key=model_key, stage__key=stage_key)))
    ids = list(audience.order_by("pk").values_list("pk", flat=True))
    control = [c for c in ids if _in_campaign_holdout(campaign.pk, c, campaign.holdout_percent)]
    if control:
        held = set(control)
        ids = [c for c in ids if c not in held]
        CampaignControl.objects.bulk_create(
            [CampaignControl(campaign=campaign, customer_id=c) for c in control],
            batch_size=5000, ignore_conflicts=True)
    texts = _render_many(campaign.template, ids)
    Message.objects.bulk_create([
        Message(customer_id=c, channel=campaign.channel, category=campaign.category,
                content=text, campaign=campaign, due_at=now,
                dedupe_key=f"campaign:{campaign.pk}:{c}") for c, text in texts.items()],
        batch_size=2000, ignore_conflicts=True)
    campaign.status = Campaign.Status.SENDING
    campaign.audience_size, campaign.started_at = len(texts), now
    campaign.save(update_fields=["status", "audience_size", "started_at", "updated_at"])
    transaction.on_commit(_kick_dispatch)
    logger.info("campaigns.campaign_started", extra={"campaign": campaign.pk,
                                                      "audience": len(texts)})
    return campaign


@transaction.atomic
def campaign_delete(*, campaign: Campaign) -> None:
    """Only a campaign that has not started may be deleted: once it sends, its messages and
    their outcomes are history (and a deleted sending campaign would leave its queue behind,
    still to be sent)."""
    campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
    if campaign.status not in (Campaign.Status.DRAFT, Campaign.Status.SCHEDULED):
        raise ApplicationError(_("status: a campaign that has started cannot be deleted; "
                                 "cancel it instead"))
    audit.record("campaign.delete", target=campaign, summary=campaign.name)
    campaign.delete()


@transaction.atomic
def campaign_cancel(*, campaign: Campaign) -> int:
    campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
    if campaign.status in (Campaign.Status.DONE, Campaign.Status.CANCELLED):
        raise ApplicationError(_("status: the campaign is %(status)s already")
                               % {"status": campaign.get_status_display()})
    skipped = Message.objects.filter(campaign=campaign, status=Message.Status.QUEUED).update(
        status=Message.Status.SKIPPED, skip_reason=Message.SkipReason.CANCELLED)
    campaign.status, campaign.finished_at = Campaign.Status.CANCELLED, timezone.now()
    campaign.save(update_fields=["status", "finished_at", "updated_at"])
    audit.record("campaign.cancel", target=campaign, summary=campaign.name,
                 data={"unsent_skipped": skipped})
    return skipped


def campaigns_start_due(*, now: datetime | None = None) -> int:
    now = now or timezone.now()
    started = 0
    for campaign in Campaign.objects.filter(status=Campaign.Status.SCHEDULED, send_at__lte=now):
        campaign_start(campaign=campaign)
        started += 1
    return started


def campaigns_finish() -> int:
    """Sending campaigns with nothing left queued or in flight are done."""
    pending = Message.objects.filter(campaign=OuterRef("pk"), status__in=[
        Message.Status.QUEUED, Message.Status.SENDING])
    return Campaign.objects.filter(status=Campaign.Status.SENDING).exclude(
        Exists(pending)).update(status=Campaign.Status.DONE, finished_at=timezone.now())


# --- The dispatcher ------------------------------------------------------------------------

@dataclass
class DispatchResult:
    claimed: int = 0
    sent: int = 0
    submitted: int = 0
    failed: int = 0
    retried: int = 0
    held: int = 0
    skipped: Counter = field(default_factory=Counter)
    duration_ms: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"claimed": self.claimed, "sent": self.sent, "submitted": self.submitted,
                "failed": self.failed,
                "retried": self.retried, "held": self.held, "skipped": dict(self.skipped),
                "duration_ms": self.duration_ms}


def quiet_window() -> tuple[dtime, dtime] | None:
    raw = (settings.OUTREACH_QUIET_HOURS or "").strip()
    if not raw:
        return None
    try:
        start, end = (dtime.fromisoformat(part.strip()) for part in raw.split("-"))
    except ValueError as exc:
        raise ApplicationError(_("OUTREACH_QUIET_HOURS: use HH:MM-HH:MM, e.g. 22:00-08:00")
                               ) from exc
    return start, end


def quiet_until(moment: datetime, tz, window) -> datetime | None:
    """When the quiet window ends, if `moment` falls in it (in time zone `tz`); else None."""
    if window is None:
        return None
    start, end = window
    local = moment.astimezone(tz)
    now_t = local.time()
    inside = (start <= now_t < end) if start < end else (now_t >= start or now_t < end)
    if not inside:
        return None
    day = local.date() if (start < end or now_t < end) else local.date() + timedelta(days=1)
    return datetime.combine(day, end, tzinfo=tz)


def _customer_tz(customer):
    name = (customer.attributes or {}).get("timezone")
    if name:
        try:
            return zoneinfo.ZoneInfo(str(name))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    return timezone.get_current_timezone()


def _claim(batch_size: int, now: datetime) -> list[int]:
    with transaction.atomic():
        # A paused campaign's messages wait (queued) until it is resumed or cancelled.
        ids = list(Message.objects.select_for_update(skip_locked=True, of=("self",))
                   .filter(status=Message.Status.QUEUED, due_at__lte=now)
                   .exclude(campaign__paused=True)
                   .order_by("due_at", "id").values_list("pk", flat=True)[:batch_size])
        if ids:
            Message.objects.filter(pk__in=ids).update(status=Message.Status.SENDING,
                                                      claimed_at=now,
                                                      attempts=F("attempts") + 1)
    return ids


def _skip(messages: list[Message], reason: str, result: DispatchResult) -> None:
    if messages:
        Message.objects.filter(pk__in=[m.pk for m in messages]).update(
            status=Message.Status.SKIPPED, skip_reason=reason)
        # A plain string key: the result is printed by the command and returned by the task.
        result.skipped[str(reason)] += len(messages)


def _handed_over_since(moment: datetime) -> Q:
    """Sent since `moment`, or handed to the channel since then and awaiting confirmation."""
    return Q(sent_at__gte=moment) | Q(status=Message.Status.SUBMITTED, claimed_at__gte=moment)


def _daily_quotas(messages: list[Message]) -> dict[str, int]:
    """The channels among `messages` whose backend has a daily quota per customer."""
    quotas = {}
    for channel in {m.channel for m in messages if m.channel != Channel.MANUAL}:
        quota = backends.backend_for(channel).daily_quota
        if quota is not None:
            quotas[channel] = quota
    return quotas


def _quota_counts(messages: list[Message], now: datetime,
                  quotas: dict[str, int]) -> dict[tuple[int, str], int]:
    """Messages handed to a channel with a per-customer daily quota (WeCom's mass sends), per
    (customer, channel), since the start of today."""
    limited = [m for m in messages if m.channel in quotas]
    if not limited:
        return {}
    day_start = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = (Message.objects.filter(_handed_over_since(day_start),
                                   customer_id__in={m.customer_id for m in limited},
                                   channel__in={m.channel for m in limited})
            .values_list("customer_id", "channel").annotate(n=Count("id")))
    return {(customer, channel): n for customer, channel, n in rows}


def _promo_counts(messages: list[Message], now: datetime, pol: OutreachPolicy):
    """Promotional messages already sent per (customer, channel): in the recent window and in
    this calendar month."""
    promo = [m for m in messages if m.category == Category.PROMOTIONAL]
    if not promo:
        return {}, {}
    local_now = timezone.localtime(now)
    month_start = local_now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    recent_start = now - timedelta(days=pol.promo_min_days_between)
    rows = (Message.objects.filter(_handed_over_since(min(month_start, recent_start)),
                                   customer_id__in={m.customer_id for m in promo},
                                   category=Category.PROMOTIONAL)
            .values("customer_id", "channel")
            .annotate(recent=Count("id", filter=_handed_over_since(recent_start)),
                      month=Count("id", filter=_handed_over_since(month_start))))
    recent = {(r["customer_id"], r["channel"]): r["recent"] for r in rows}
    month = {(r["customer_id"], r["channel"]): r["month"] for r in rows}
    return recent, month


def messages_dispatch(*, batch_size: int = 500, max_batches: int | None = None,
                      now: datetime | None = None) -> DispatchResult:
    """Send every due message once: claim a batch, apply the send-time guards, send through
    the channel's backend, record the outcome; until nothing is due."""
    started = time.monotonic()
    result = DispatchResult()
    pol = policy()
    window = quiet_window()
    batches = 0
    while max_batches is None or batches < max_batches:
        moment = now or timezone.now()
        ids = _claim(batch_size, moment)
        if not ids:
            break
        batches += 1
        result.claimed += len(ids)
        _process(ids, moment, pol, window, result)
    result.duration_ms = round((time.monotonic() - started) * 1000)
    if result.claimed:
        logger.info("campaigns.dispatched", extra=result.as_dict())
    return result


# Why an enrolment ended → the skip reason of its messages.
_EXIT_SKIP = {"left_stage": Message.SkipReason.LEFT_STAGE,
              "opted_out": Message.SkipReason.OPTED_OUT,
              "deleted_us": Message.SkipReason.DELETED_US,
              "goal": Message.SkipReason.GOAL_REACHED}


def _process(ids: list[int], now: datetime, pol: OutreachPolicy, window,
             result: DispatchResult) -> None:
    # In due order (not the model's newest-first): when a guard lets only one of a customer's
    # messages through (the frequency cap), it is the one that was due first.
    messages = list(Message.objects.filter(pk__in=ids).select_related(
        "customer", "customer__owner", "sop_step__sop__stage", "sop_step__sop__model",
        "enrollment", "campaign").order_by("due_at", "id"))
    customer_ids = [m.customer_id for m in messages]
    stage_of = {(cs.customer_id, cs.model_id): cs.stage_id for cs in
                CustomerStage.objects.filter(customer_id__in=customer_ids)}
    recent, month = _promo_counts(messages, now, pol)
    quotas = _daily_quotas(messages)
    today = _quota_counts(messages, now, quotas)
    goal_hits: dict[int, set[int]] = {}
    step_hits: dict[int, set[int]] = {}

    def matching(tree, cache, key) -> set[int]:
        if key not in cache:
            try:
                compiled = conditions.compile_condition(tree, customer_ids=customer_ids, now=now)
            except ApplicationError as exc:
                # A condition that no longer compiles (a tag it names was deleted) is met by no
                # one; it must not hold up the batch — and the outbox behind it.
                logger.error("campaigns.condition_broken", extra={"key": key,
                                                                  "error": exc.message})
                cache[key] = set()
            else:
                cache[key] = set(Customer.objects.filter(compiled, pk__in=customer_ids)
                                 .values_list("pk", flat=True))
        return cache[key]

    elsewhere: dict[int, bool] = {}

    def reaches_elsewhere(sop_id: int) -> bool:
        """Whether the SOP has a step outside WeCom (SMS, e-mail): asked once a batch."""
        if sop_id not in elsewhere:
            elsewhere[sop_id] = SopStep.objects.filter(sop_id=sop_id).exclude(
                channel__in=RELATIONSHIP_CHANNELS).exists()
        return elsewhere[sop_id]

    to_send, held = [], []
    skips: dict[str, list[Message]] = defaultdict(list)
    ended: dict[str, list[int]] = defaultdict(list)
    for m in messages:
        customer, step = m.customer, m.sop_step
        sop = step.sop if step else None
        if m.campaign_id and m.campaign.status == Campaign.Status.CANCELLED:
            skips[Message.SkipReason.CANCELLED].append(m)
        elif customer.opted_out:
            skips[Message.SkipReason.OPTED_OUT].append(m)
            if m.enrollment_id:
                ended["opted_out"].append(m.enrollment_id)
        elif customer.status != Customer.Status.ACTIVE and m.channel in RELATIONSHIP_CHANNELS:
            # Gone from WeCom: nothing more through the relationship. SMS and e-mail can still
            # ask those who left why (seed 001: 对于已流失的用户，可通过邮件、短信等方式进行挽回).
            skips[Message.SkipReason.DELETED_US].append(m)
            if m.enrollment_id and not (m.sop_step and reaches_elsewhere(m.sop_step.sop_id)):
                ended["deleted_us"].append(m.enrollment_id)
        elif step and (step.paused or not sop.active):
            # A paused step or a deactivated SOP sends nothing more.
            skips[Message.SkipReason.PAUSED].append(m)
        elif m.enrollment_id and m.enrollment.status != Enrollment.Status.ACTIVE:
            skips[Message.SkipReason.GOAL_REACHED
                  if m.enrollment.status == Enrollment.Status.GOAL
                  else _EXIT_SKIP.get(m.enrollment.exit_reason,
                                      Message.SkipReason.LEFT_STAGE)].append(m)
        elif sop and stage_of.get((customer.pk, sop.model_id)) != sop.stage_id:
            skips[Message.SkipReason.LEFT_STAGE].append(m)
            ended["left_stage"].append(m.enrollment_id)
        elif sop and sop.goal and customer.pk in matching(sop.goal, goal_hits, sop.pk):
            skips[Message.SkipReason.GOAL_REACHED].append(m)
            ended["goal"].append(m.enrollment_id)
        elif step and step.condition and customer.pk not in matching(step.condition, step_hits,
                                                                     step.pk):
            skips[Message.SkipReason.CONDITION].append(m)
        else:
            key = (customer.pk, m.channel)
            if m.category == Category.PROMOTIONAL and (
                    recent.get(key, 0) >= 1 or month.get(key, 0) >= pol.promo_max_per_month):
                skips[Message.SkipReason.FREQUENCY_CAP].append(m)
                continue
            if m.channel in quotas and today.get(key, 0) >= quotas[m.channel]:
                skips[Message.SkipReason.PLATFORM_QUOTA].append(m)
                continue
            until = (quiet_until(now, _customer_tz(customer), window)
                     if m.channel != Channel.MANUAL else None)
            if until is not None:
                held.append((m, until))
                continue
            if m.category == Category.PROMOTIONAL:
                recent[key] = recent.get(key, 0) + 1
                month[key] = month.get(key, 0) + 1
            if m.channel in quotas:
                today[key] = today.get(key, 0) + 1
            to_send.append(m)
    for reason, rows in skips.items():
        _skip(rows, reason, result)
    for reason, enrollment_ids in ended.items():
        # The SOP ends for these customers: the enrolment says why, and its later messages are
        # skipped now (with the same reason) instead of waiting in the queue.
        Enrollment.objects.filter(pk__in=[e for e in enrollment_ids if e],
                                  status=Enrollment.Status.ACTIVE).update(
            status=(Enrollment.Status.GOAL if reason == "goal" else Enrollment.Status.EXITED),
            ended_at=now, exit_reason=reason)
        Message.objects.filter(enrollment_id__in=[e for e in enrollment_ids if e],
                               status=Message.Status.QUEUED).update(
            status=Message.Status.SKIPPED, skip_reason=_EXIT_SKIP[reason])
    # Held, not dropped: back in the queue until the window opens; not an attempt. One
    # statement per opening (a time zone's): at night every due message of the batch is held.
    opening: dict[datetime, list[int]] = defaultdict(list)
    for m, until in held:
        opening[until].append(m.pk)
    for until, pks in opening.items():
        Message.objects.filter(pk__in=pks).update(status=Message.Status.QUEUED, due_at=until,
                                                  attempts=F("attempts") - 1, claimed_at=None)
    result.held += len(held)
    to_send = _render_due(to_send, result)
    _send(to_send, now, pol, result)
    _complete_enrollments({m.enrollment_id for m in messages if m.enrollment_id}, now)


def _complete_enrollments(enrollment_ids: set[int], now: datetime) -> int:
    """Enrolments with no message left to send have completed their SOP."""
    if not enrollment_ids:
        return 0
    pending = Message.objects.filter(enrollment=OuterRef("pk"), status__in=[
        Message.Status.QUEUED, Message.Status.SENDING])
    return Enrollment.objects.filter(pk__in=enrollment_ids, status=Enrollment.Status.ACTIVE
                                     ).exclude(Exists(pending)).update(
        status=Enrollment.Status.COMPLETED, ended_at=now, exit_reason="")


def _render_due(messages: list[Message], result: DispatchResult) -> list[Message]:
    """Write the text of SOP messages now, from their step's template and the customer as
    they are at send time; a template that fails for a customer skips that message."""
    blank = [m for m in messages if not m.content and m.sop_step_id]
    if not blank:
        return messages
    contexts = _contexts(sorted({m.customer_id for m in blank}))
    compiled: dict[int, Any] = {}
    failed = []
    for m in blank:
        try:
            if m.sop_step_id not in compiled:
                compiled[m.sop_step_id] = templates.compile_template(m.sop_step.template)
            m.content = templates.render(compiled[m.sop_step_id], contexts[m.customer_id])
        except Exception as exc:  # an author's template or a customer's odd data
            logger.warning("campaigns.render_failed", extra={"message_id": m.pk,
                                                             "error": str(exc)})
            m.last_error = str(exc)[:500]
            failed.append(m)
        else:
            if not m.content:
                m.last_error = "the template renders to nothing for this customer"
                failed.append(m)
    if failed:
        for m in failed:
            Message.objects.filter(pk=m.pk).update(last_error=m.last_error)
        _skip(failed, Message.SkipReason.TEMPLATE_ERROR, result)
    return [m for m in messages if m not in failed]


def _send(messages: list[Message], now: datetime, pol: OutreachPolicy,
          result: DispatchResult) -> None:
    sent, failed, retry, submitted = [], [], [], []
    skipped: dict[str, list[Message]] = defaultdict(list)
    tasks = []
    by_channel: dict[str, list[Message]] = defaultdict(list)
    for m in messages:
        if m.channel == Channel.MANUAL:
            tasks.append(OperatorTask(
                assignee_id=m.customer.owner_id, customer_id=m.customer_id,
                kind=OperatorTask.Kind.FOLLOW_UP, message=m, due_at=m.due_at,
                title=(_("Follow up one to one with %(name)s")
                       % {"name": m.customer.name or m.customer.external_id}),
                body=m.content, dedupe_key=f"message:{m.pk}"))
            sent.append((m, f"task-{m.pk}"))
        else:
            by_channel[m.channel].append(m)
    for channel, batch in by_channel.items():
        try:
            outcomes = backends.backend_for(channel).send_many(batch)
        except Exception as exc:   # a backend's bug must not lose what the batch already sent
            logger.exception("campaigns.backend_error", extra={"channel": channel})
            outcomes = [backends.SendResult(ok=False, transient=True,
                                            error=f"{type(exc).__name__}: {exc}"[:500])] * len(batch)
        for m, outcome in zip(batch, outcomes, strict=True):
            if outcome.ok and outcome.submitted:
                submitted.append((m, outcome.provider_id))
            elif outcome.ok:
                sent.append((m, outcome.provider_id))
            elif outcome.skip_reason:
                m.last_error = outcome.error
                skipped[outcome.skip_reason].append(m)
            elif outcome.transient and m.attempts < pol.max_attempts:
                retry.append((m, outcome.error))
            else:
                failed.append((m, outcome.error))
    # The batch's outcomes land together: no reader sees a message `sent` whose provider id
    # or text is not written yet.
    with transaction.atomic():
        if tasks:
            OperatorTask.objects.bulk_create(tasks, ignore_conflicts=True)
        # One plain UPDATE per outcome; per-row values only for what really differs per row, in
        # small batches (bulk_update's CASE grows with rows × fields and dominated a batch).
        for status, rows in ((Message.Status.SENT, sent), (Message.Status.SUBMITTED, submitted)):
            if not rows:
                continue
            Message.objects.filter(pk__in=[m.pk for m, _p in rows]).update(
                status=status, sent_at=now if status == Message.Status.SENT else None,
                last_error="")
            for m, provider_id in rows:
                m.provider_id = provider_id[:128]
            # (the text rendered now, or as it was)
            update_from_values(Message, ["provider_id", "content"],
                               {m.pk: (m.provider_id, m.content) for m, _p in rows})
        for reason, rows in skipped.items():
            _skip(rows, reason, result)
            Message.objects.bulk_update(rows, ["last_error"], batch_size=100)
        by_backoff: dict[int, list[Message]] = defaultdict(list)
        for m, error in retry:
            # Exponential backoff: 1, 2, 4, 8 … minutes, capped at an hour.
            m.last_error = error
            by_backoff[min(60, 2 ** (m.attempts - 1))].append(m)
        for minutes, rows in by_backoff.items():
            Message.objects.filter(pk__in=[m.pk for m in rows]).update(
                status=Message.Status.QUEUED, due_at=now + timedelta(minutes=minutes),
                claimed_at=None)
        for m, error in failed:
            m.last_error = error
        if retry or failed:
            Message.objects.filter(pk__in=[m.pk for m, _e in failed]).update(
                status=Message.Status.FAILED)
            Message.objects.bulk_update([m for m, _e in retry] + [m for m, _e in failed],
                                        ["last_error"], batch_size=100)
    for m, _p in sent:
        m.status, m.sent_at = Message.Status.SENT, now
    for m, _p in submitted:
        m.status = Message.Status.SUBMITTED
    result.sent += len(sent)
    result.submitted += len(submitted)
    result.retried += len(retry)
    result.failed += len(failed)


@transaction.atomic
def messages_submitted_resolve(*, sent: dict[int, datetime] | None = None,
                               skipped: dict[int, str] | None = None,
                               failed: dict[int, str] | None = None) -> int:
    """What a channel reported about messages it took as `submitted` (by message id): sent at
    a time, skipped with a reason, or failed with an error. Only messages still `submitted`
    change, so a report read twice changes nothing the second time."""
    waiting = Message.objects.filter(status=Message.Status.SUBMITTED)
    changed = 0
    by_time: dict[datetime, list[int]] = defaultdict(list)
    for pk, at in (sent or {}).items():
        by_time[at].append(pk)
    for at, ids in by_time.items():
        changed += waiting.filter(pk__in=ids).update(status=Message.Status.SENT, sent_at=at)
    by_reason: dict[str, list[int]] = defaultdict(list)
    for pk, reason in (skipped or {}).items():
        by_reason[reason].append(pk)
    for reason, ids in by_reason.items():
        changed += waiting.filter(pk__in=ids).update(status=Message.Status.SKIPPED,
                                                     skip_reason=reason)
    by_error: dict[str, list[int]] = defaultdict(list)
    for pk, error in (failed or {}).items():
        by_error[error[:500]].append(pk)
    for error, ids in by_error.items():
        changed += waiting.filter(pk__in=ids).update(status=Message.Status.FAILED,
                                                     last_error=error)
    return changed


def messages_sweep(*, stale_after_seconds: int = 300) -> int:
    """Return rows stuck in `sending` (their worker died) to the queue."""
    cutoff = timezone.now() - timedelta(seconds=stale_after_seconds)
    return Message.objects.filter(status=Message.Status.SENDING, claimed_at__lt=cutoff).update(
        status=Message.Status.QUEUED, claimed_at=None)


# Ids an admin may hand over at once: one statement, and a request body that stays small.
RETRY_MAX_IDS = 10_000


@transaction.atomic
def messages_retry(*, actor, ids: list[int] | None = None, queryset=None) -> int:
    """Queue failed messages again, as new (admins): the given ids and/or the messages of
    `queryset`, in one UPDATE. Only failed ones are touched — one sent, queued or skipped
    meanwhile is left as it is — and the dispatcher is woken after commit."""
    if not access.is_admin(actor):
        raise ApplicationError(_("Only admins may retry failed messages."))
    if ids is None and queryset is None:
        raise ApplicationError(_("ids: give the messages to retry"))
    if ids is not None and len(ids) > RETRY_MAX_IDS:
        raise ApplicationError(_("ids: at most %(max)d messages at a time")
                               % {"max": RETRY_MAX_IDS})
    targets = Message.objects.filter(status=Message.Status.FAILED)
    if ids is not None:
        targets = targets.filter(pk__in=ids)
    if queryset is not None:
        targets = targets.filter(pk__in=queryset.values("pk"))
    retried = targets.update(status=Message.Status.QUEUED, last_error="", claimed_at=None,
                             attempts=0, due_at=timezone.now())
    if retried:
        transaction.on_commit(_kick_dispatch)
    logger.info("campaigns.messages_retried", extra={"actor": actor.pk, "retried": retried})
    if retried:
        audit.record("messages.retry", actor=actor, data={"messages": retried},
                     summary=_("%(n)d messages queued again") % {"n": retried})
    return retried


def _kick_dispatch() -> None:
    from campaigns.tasks import dispatch_messages

    dispatch_messages.delay()


# --- Receipts ------------------------------------------------------------------------------

RECEIPT_EVENTS = {"delivered": Event.Type.MESSAGE_DELIVERED, "read": Event.Type.MESSAGE_READ,
                  "replied": Event.Type.MESSAGE_IN, "clicked": Event.Type.LINK_CLICKED}
_STATUS_RANK = {Message.Status.SENT: 0, Message.Status.DELIVERED: 1, Message.Status.READ: 2,
                Message.Status.REPLIED: 3}


def receipts_record(*, items: list[dict], actor) -> dict[str, Any]:
    """Delivery receipts (delivered / read / replied / clicked) for sent messages, by message
    id or provider id; each becomes an event of the customer (idempotent by receipt)."""
    from crm.services import check_batch, events_ingest, parse_timestamp

    items = check_batch(items)
    rejected, events, updates = [], [], []
    by_id = {str(i.get("message")) for i in items if isinstance(i, dict) and i.get("message")}
    by_provider = {str(i.get("provider_id")) for i in items if isinstance(i, dict)
                   and i.get("provider_id")}
    found = list(access.scope_customers(Message.objects.filter(
        Q(pk__in=[int(x) for x in by_id if x.isascii() and x.isdigit() and len(x) < 19])
        | Q(provider_id__in=by_provider)),
        actor, owner_field="customer__owner").select_related("customer"))
    messages = {str(m.pk): m for m in found} | {m.provider_id: m for m in found if m.provider_id}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            rejected.append({"index": index, "message": _("item is not an object")})
            continue
        kind = item.get("status")
        if not isinstance(kind, str) or kind not in RECEIPT_EVENTS:
            rejected.append({"index": index, "message": _("status: one of %(s)s")
                             % {"s": ", ".join(RECEIPT_EVENTS)}})
            continue
        ref = str(item.get("message") or item.get("provider_id") or "")
        message = messages.get(ref)
        if message is None:
            rejected.append({"index": index, "message": _("message: unknown message %(ref)r")
                             % {"ref": ref}})
            continue
        try:
            at = parse_timestamp(item.get("at"), "at", default_now=True)
        except Exception as exc:
            rejected.append({"index": index, "message": str(exc)})
            continue
        updates.append((message, kind, at))
        events.append({"customer": message.customer.external_id, "type": RECEIPT_EVENTS[kind],
                       "occurred_at": at.isoformat(),
                       "idempotency_key": f"receipt:{message.pk}:{kind}",
                       "data": {"message": message.pk, "channel": message.channel,
                                **({"campaign": message.campaign_id} if message.campaign_id
                                   else {}),
                                **({"sop_step": message.sop_step_id} if message.sop_step_id
                                   else {})}})
    with transaction.atomic():
        for message, kind, at in updates:
            # Idempotent and order-proof: a repeated receipt keeps the time first recorded, and
            # a late "delivered" never moves a read or replied message back.
            Message.objects.filter(pk=message.pk, **{f"{kind}_at__isnull": True}).update(
                **{f"{kind}_at": at})
            if kind != "clicked":
                Message.objects.filter(pk=message.pk, status__in=[
                    s for s, rank in _STATUS_RANK.items() if rank < _STATUS_RANK[kind]]).update(
                    status=kind)
        report = events_ingest(items=events, actor=actor) if events else None
    return {"accepted": report.accepted if report else 0,
            "duplicates": report.duplicates if report else 0, "rejected": rejected}


# --- The harassment signal -----------------------------------------------------------------

def message_blocked() -> Exists:
    """Whether the message's customer deleted us within the policy's block window (48 h) of
    its sending: [sent_at, sent_at + window), for a queryset of messages. The one definition
    of a block — the step-pausing rule below and metrics' SOP and campaign reports."""
    window = ExpressionWrapper(
        OuterRef("sent_at") + timedelta(hours=policy().block_window_hours),
        output_field=DateTimeField())
    return Exists(Event.objects.filter(customer=OuterRef("customer"),
                                       type=Event.Type.FRIEND_DELETED,
                                       occurred_at__gte=OuterRef("sent_at"),
                                       occurred_at__lt=window))


def block_stats(*, step_ids=None, campaign_ids=None) -> dict[tuple[str, int], dict[str, int]]:
    """Sends and blocks per SOP step and per campaign (a block: `message_blocked`)."""
    blocked = message_blocked()
    sent = Message.objects.filter(sent_at__isnull=False).exclude(channel=Channel.MANUAL).filter(
        # a resumed step counts only what it sent since
        Q(sop_step__counted_since__isnull=True) | Q(sent_at__gte=F("sop_step__counted_since"))
    ).filter(Q(campaign__counted_since__isnull=True)
             | Q(sent_at__gte=F("campaign__counted_since")))
    out = {}
    for key, column, ids in (("step", "sop_step", step_ids), ("campaign", "campaign",
                                                              campaign_ids)):
        rows = sent.filter(**{f"{column}__isnull": False})
        if ids is not None:
            rows = rows.filter(**{f"{column}__in": ids})
        for row in (rows.annotate(blocked=blocked).values(column)
                    .annotate(sends=Count("id"), blocks=Count("id", filter=Q(blocked=True)))):
            out[(key, row[column])] = {"sends": row["sends"], "blocks": row["blocks"]}
    return out


def _alert_admins(*, title: str, body: str, dedupe: str) -> None:
    admins = User.objects.filter(Q(is_superuser=True) | Q(groups__name=access.ADMIN),
                                 is_active=True).distinct()
    OperatorTask.objects.bulk_create([OperatorTask(
        assignee=admin, kind=OperatorTask.Kind.ALERT, due_at=timezone.now(), title=title,
        body=body, dedupe_key=f"{dedupe}:{admin.pk}") for admin in admins],
        ignore_conflicts=True)


def harassment_check() -> list[tuple[str, int]]:
    """Pause every SOP step and every sending campaign whose block rate is over the policy's
    threshold (after enough sends) and alert the admins; answers what was paused, as
    ("step" | "campaign", id). A paused campaign's unsent messages wait for a resume."""
    pol = policy()
    paused = []
    stats_by_key = block_stats(
        step_ids=SopStep.objects.filter(paused=False).values("pk"),
        campaign_ids=Campaign.objects.filter(status=Campaign.Status.SENDING,
                                             paused=False).values("pk"))
    for (kind, pk), stats in stats_by_key.items():
        if stats["sends"] < pol.block_min_sends:
            continue
        rate = stats["blocks"] / stats["sends"]
        if rate <= float(pol.block_rate_pause):
            continue
        figures = {"blocks": stats["blocks"], "sends": stats["sends"], "rate": rate * 100,
                   "hours": pol.block_window_hours}
        if kind == "step":
            step = SopStep.objects.select_related("sop").get(pk=pk)
            reason = _("%(blocks)d of %(sends)d customers (%(rate).1f%%) deleted us within "
                       "%(hours)d h of this step") % figures
            SopStep.objects.filter(pk=pk).update(paused=True, paused_reason=reason[:300])
            title = _("SOP step paused: %(sop)s #%(order)d") % {"sop": step.sop.name,
                                                               "order": step.order}
        else:
            campaign = Campaign.objects.get(pk=pk)
            reason = _("%(blocks)d of %(sends)d customers (%(rate).1f%%) deleted us within "
                       "%(hours)d h of this campaign") % figures
            Campaign.objects.filter(pk=pk).update(paused=True, paused_reason=reason[:300])
            title = _("Campaign paused: %(campaign)s") % {"campaign": campaign.name}
        _alert_admins(title=title, body=reason, dedupe=f"pause:{kind}:{pk}:{stats['sends']}")
        logger.warning("campaigns.paused", extra={"kind": kind, "id": pk, "rate": rate})
        paused.append((kind, pk))
    return paused


@transaction.atomic
def campaign_resume(*, campaign: Campaign, actor) -> Campaign:
    """An admin sends a paused campaign's remaining messages after all; its block rate is
    counted afresh from now, or the sends before would pause it again at once."""
    if not access.is_admin(actor):
        raise ApplicationError(_("Only an admin may resume a paused campaign."))
    campaign = Campaign.objects.select_for_update().get(pk=campaign.pk)
    if not campaign.paused:
        raise ApplicationError(_("status: the campaign is not paused"))
    campaign.paused, campaign.paused_reason = False, ""
    campaign.counted_since = timezone.now()
    campaign.save(update_fields=["paused", "paused_reason", "counted_since", "updated_at"])
    audit.record("campaign.resume", target=campaign, actor=actor, summary=campaign.name)
    transaction.on_commit(_kick_dispatch)
    return campaign


# --- Operator tasks ------------------------------------------------------------------------

@transaction.atomic
def task_close(*, task: OperatorTask, actor, status: str, note: str = "") -> OperatorTask:
    if status not in (OperatorTask.Status.DONE, OperatorTask.Status.SKIPPED):
        raise ApplicationError(_("status: done or skipped"))
    if task.assignee_id != actor.pk and not access.is_admin(actor):
        raise ApplicationError(_("This to-do is someone else's."))
    task.status, task.closed_at, task.closed_note = status, timezone.now(), note[:300]
    task.save(update_fields=["status", "closed_at", "closed_note", "updated_at"])
    return task
