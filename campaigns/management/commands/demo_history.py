"""`python manage.py demo_history`: the demo's past and present beyond crm's facts.

After `seed_demo` the facts cover a year, but stages, SOP sends and campaigns would all start
today. This replays the lifecycle over the past months — the stage models are evaluated "as
of" past moments, with the facts after each moment held back — so transitions, win-backs,
churn, SOP enrolments and their sends happen when the generated facts say; then it adds what a
team leaves behind: receipts of sent messages, a finished and a scheduled campaign, to-dos,
saved segments, interest tags and seed 004's custom stage model. Set-based throughout; safe to
run twice (the replay only runs before any stage history exists).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import connection, transaction
from django.db.models import F, IntegerField, Max
from django.db.models.functions import Mod
from django.utils import timezone
from django.utils.translation import gettext as _

from campaigns import services as outreach
from campaigns.models import Campaign, Enrollment, Message, OperatorTask, Sop, SopStep
from crm.models import Customer, Event, GroupMembership, Order
from crm.services import customer_aggregates_refresh, event_counts_refresh
from lifecycle import services as lifecycle
from lifecycle.models import CustomerStage, StageModel, StageTransition
from tagging import services as tagging
from tagging.models import Segment, Tag, TagGroup, TagRule

INBOUND = ["message_in", "moments_interaction", "link_clicked", "coupon_redeemed",
           "survey_answered"]
ID_CHUNK = 20_000      # customers per evaluation statement (SQLite's bound on parameters)
LOCAL_HOUR = 10        # replay moments fall at 10:00 local time, outside the quiet hours


def _h(*parts) -> int:
    """A stable number from the parts (the same demo gets the same history)."""
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(),
                                          digest_size=6).digest(), "big")


# --- Seed 004's custom model ----------------------------------------------------------------

def _silent_for(days_threshold: str) -> dict:
    days = {"threshold": days_threshold}
    return {"any": [
        {"field": "last_active_at", "op": "older_than_days", "value": days},
        {"all": [{"field": "last_active_at", "op": "is_null", "value": True},
                 {"field": "joined_at", "op": "older_than_days", "value": days}]},
    ]}


CUSTOM_MODEL = {
    "key": "wb_stages", "name": "客户阶段（微伴）", "order": 3, "monotonic": False,
    "description": "Seed 004: 新客户 → 初步沟通 → 意向客户 → 成交 → 无意向, as a team edits it "
                   "in its SCRM. A customer who bought, or who went quiet without buying and "
                   "comes back, moves on.",
    "thresholds": {"contact_messages": 1, "intent_interactions": 3, "intent_days": 30,
                   "lost_days": 60},
    "stages": [
        {"key": "new", "name": "新客户", "color": "#60a5fa", "precedence": 100,
         "condition": None},
        {"key": "contacted", "name": "初步沟通", "color": "#38bdf8", "precedence": 40,
         "condition": {"field": "event", "type": "message_in", "op": "count_gte",
                       "value": {"threshold": "contact_messages"}, "since_joined": True}},
        {"key": "intent", "name": "意向客户", "color": "#f59e0b", "precedence": 30,
         "condition": {"any": [
             {"field": "event", "type": INBOUND, "op": "count_gte",
              "value": {"threshold": "intent_interactions"},
              "within_days": {"threshold": "intent_days"}},
             {"field": "event", "type": ["coupon_redeemed", "survey_answered"],
              "op": "count_gte", "value": 1, "within_days": {"threshold": "intent_days"}},
         ]}},
        {"key": "deal", "name": "成交", "color": "#16a34a", "precedence": 20,
         "condition": {"field": "order", "op": "count_gte", "value": 1, "since_joined": True}},
        {"key": "lost", "name": "无意向", "color": "#94a3b8", "precedence": 10,
         "win_back_from": True,
         "condition": {"any": [
             {"field": "status", "op": "eq", "value": "deleted_us"},
             {"all": [{"field": "orders_count", "op": "eq", "value": 0},
                      _silent_for("lost_days")]},
         ]}},
    ],
}

SEGMENTS = (
    ("高价值老客", "Lifetime spend of 1,000 or more and three paid orders or more.",
     {"all": [{"field": "total_spent", "op": "gte", "value": 1000},
              {"field": "orders_count", "op": "gte", "value": 3},
              {"field": "status", "op": "eq", "value": "active"}]}),
    ("已购未复购 · 30天未互动", "Bought once, quiet for a month: a second-order nudge.",
     {"all": [{"field": "orders_count", "op": "eq", "value": 1},
              {"field": "last_active_at", "op": "older_than_days", "value": 30},
              {"field": "status", "op": "eq", "value": "active"}]}),
    ("近7天新加好友", "Joined in the last week.",
     {"field": "joined_at", "op": "within_days", "value": 7}),
    ("社群活跃用户", "In a group now, and three interactions or more in 30 days.",
     {"all": [{"field": "group", "op": "in", "value": []},
              {"field": "event", "type": INBOUND, "op": "count_gte", "value": 3,
               "within_days": 30}]}),
    ("休眠期 · 待唤醒", "Dormant in the value lifecycle, still reachable.",
     {"all": [{"field": "stage", "model": "value", "op": "in", "value": ["dormant"]},
              {"field": "opted_out", "op": "eq", "value": False}]}),
    ("彩妆兴趣人群", "Bought make-up.",
     {"field": "order", "op": "count_gte", "value": 1, "category": ["彩妆"]}),
)
INTEREST_TAGS = (("护肤", "#0d9488"), ("彩妆", "#db2777"), ("香氛", "#7c3aed"),
                 ("个护", "#0284c7"), ("礼盒", "#ca8a04"))
PAST_CAMPAIGN = "会员日 · 老客专享福利"
NEXT_CAMPAIGN = "新品预告 · 春季限定系列"


# --- Set-based updates by id ----------------------------------------------------------------

def _adapt_datetime(value: datetime | None):
    """What Django's SQLite backend stores (UTC text), without its per-value time-zone checks;
    PostgreSQL takes the value as it is."""
    if value is None or connection.vendor != "sqlite":
        return value
    return str(value.astimezone(UTC).replace(tzinfo=None))


def _set_by_id(model, fields: list[str], rows: list[tuple]) -> int:
    """Give each row (id, *values) its values: the pairs go to a temporary table, then one
    UPDATE per column reads them — no statement per row."""
    if not rows:
        return 0
    qn = connection.ops.quote_name
    table = qn(model._meta.db_table)
    cols = [model._meta.get_field(name) for name in fields]
    temp = "demo_set_by_id"
    adapt = [_adapt_datetime if col.get_internal_type() == "DateTimeField" else (lambda v: v)
             for col in cols]
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {temp}")
        defs = ", ".join(f"v{i} {col.db_type(connection)}" for i, col in enumerate(cols))
        cursor.execute(f"CREATE TEMPORARY TABLE {temp} (id bigint PRIMARY KEY, {defs})")
        marks = ", ".join(["%s"] * (len(cols) + 1))
        cursor.executemany(f"INSERT INTO {temp} VALUES ({marks})",
                           [(r[0], *(a(v) for a, v in zip(adapt, r[1:], strict=True)))
                            for r in rows])
        sets = ", ".join(f"{qn(col.column)} = (SELECT t.v{i} FROM {temp} t "
                         f"WHERE t.id = {table}.id)" for i, col in enumerate(cols))
        cursor.execute(f"UPDATE {table} SET {sets} WHERE id IN (SELECT id FROM {temp})")
        n = cursor.rowcount
        cursor.execute(f"DROP TABLE {temp}")
    return n


# --- The time machine -----------------------------------------------------------------------

HELD = "demo_held_"


class Facts:
    """Holds back the facts after a moment and gives them back moment by moment, with the
    values that derive from them (status, opt-out, order refunds, group leaves, customer
    aggregates, event counts) as they were then. Used inside one transaction: an error leaves
    nothing held back."""

    def __init__(self, start: datetime) -> None:
        self.at = start
        self.qn = connection.ops.quote_name
        self.t = {m: self.qn(m._meta.db_table) for m in (Event, Order, GroupMembership,
                                                         Customer)}
        adapt = connection.ops.adapt_datetimefield_value
        e, o, g, c = (self.t[m] for m in (Event, Order, GroupMembership, Customer))
        with connection.cursor() as cursor:
            for name, sql in (
                    ("event", f"SELECT * FROM {e} WHERE occurred_at > %s"),
                    ("order", f"SELECT * FROM {o} WHERE placed_at > %s"),
                    ("membership", f"SELECT * FROM {g} WHERE joined_at > %s"),
                    ("left", f"SELECT id, left_at FROM {g} WHERE left_at > %s"),
                    ("status", f"SELECT id, status FROM {c} WHERE status <> 'active' "
                               f"AND status_changed_at > %s"),
                    ("opted", f"SELECT id FROM {c} WHERE opted_out = %s")):
                cursor.execute(f"DROP TABLE IF EXISTS {HELD}{name}")
                param = True if name == "opted" else adapt(start)
                cursor.execute(f"CREATE TEMPORARY TABLE {HELD}{name} AS {sql}", [param])
            cursor.execute(f"DELETE FROM {e} WHERE occurred_at > %s", [adapt(start)])
            cursor.execute(f"DELETE FROM {o} WHERE placed_at > %s", [adapt(start)])
            cursor.execute(f"DELETE FROM {g} WHERE joined_at > %s", [adapt(start)])
        self._derive(start, None)

    def advance(self, to: datetime | None) -> None:
        """Give back the facts up to `to` (None: all of them)."""
        adapt = connection.ops.adapt_datetimefield_value
        e, o, g = self.t[Event], self.t[Order], self.t[GroupMembership]
        upto = "" if to is None else " WHERE {col} <= %s"
        params = [] if to is None else [adapt(to)]
        with connection.cursor() as cursor:
            for table, name, col in ((e, "event", "occurred_at"), (o, "order", "placed_at"),
                                     (g, "membership", "joined_at")):
                where = upto.format(col=col)
                cursor.execute(f"INSERT INTO {table} SELECT * FROM {HELD}{name}{where}", params)
                cursor.execute(f"DELETE FROM {HELD}{name}{where}", params)
            # The customers whose facts changed: their counts and aggregates are recomputed.
            cursor.execute(f"SELECT DISTINCT customer_id FROM {e} WHERE occurred_at > %s"
                           + ("" if to is None else " AND occurred_at <= %s"),
                           [adapt(self.at), *params])
            touched = {row[0] for row in cursor.fetchall()}
        self._derive(to, touched)
        self.at = to or self.at

    def _derive(self, to: datetime | None, touched: set[int] | None) -> None:
        adapt = connection.ops.adapt_datetimefield_value
        e, o, g, c = (self.t[m] for m in (Event, Order, GroupMembership, Customer))
        far = adapt(to or timezone.now() + timedelta(days=36500))
        with connection.cursor() as cursor:
            # Refunds after the moment were paid orders then. (The demo's orders are refunded
            # exactly when they carry a refund time.)
            cursor.execute(f"UPDATE {o} SET status = CASE WHEN refunded_at <= %s THEN "
                           f"'refunded' ELSE 'paid' END WHERE refunded_at IS NOT NULL", [far])
            cursor.execute(f"UPDATE {g} SET left_at = (SELECT CASE WHEN h.left_at <= %s THEN "
                           f"h.left_at END FROM {HELD}left h WHERE h.id = {g}.id) "
                           f"WHERE id IN (SELECT id FROM {HELD}left)", [far])
            cursor.execute(f"UPDATE {c} SET status = CASE WHEN status_changed_at <= %s THEN "
                           f"(SELECT h.status FROM {HELD}status h WHERE h.id = {c}.id) "
                           f"ELSE 'active' END WHERE id IN (SELECT id FROM {HELD}status)", [far])
            cursor.execute(f"UPDATE {c} SET opted_out = EXISTS (SELECT 1 FROM {e} x WHERE "
                           f"x.customer_id = {c}.id AND x.type = 'opted_out') "
                           f"WHERE id IN (SELECT id FROM {HELD}opted)")
            if touched is None or to is None:
                event_counts_refresh()
                customer_aggregates_refresh()
            else:
                # Refunds of the slice change aggregates too.
                cursor.execute(f"SELECT DISTINCT customer_id FROM {o} WHERE refunded_at > %s "
                               f"AND refunded_at <= %s", [adapt(self.at), far])
                refunds = {row[0] for row in cursor.fetchall()}
                if touched:
                    event_counts_refresh(customer_ids=sorted(touched))
                if touched | refunds:
                    customer_aggregates_refresh(customer_ids=sorted(touched | refunds))

    def close(self) -> None:
        self.advance(None)
        with connection.cursor() as cursor:
            for name in ("event", "order", "membership", "left", "status", "opted"):
                cursor.execute(f"DROP TABLE IF EXISTS {HELD}{name}")


# --- The replay -----------------------------------------------------------------------------

@dataclass
class HistoryReport:
    moments: int = 0
    transitions: int = 0
    win_backs: int = 0
    enrolments: int = 0
    sent: int = 0
    receipts: dict[str, int] = field(default_factory=dict)
    tasks_open: int = 0
    created: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _moments(now: datetime, months: int, every_days: int) -> list[datetime]:
    """Past evaluation moments at 10:00 local, every `every_days` days over the last `months`
    months, the last one two days ago."""
    local = timezone.localtime(now).replace(hour=LOCAL_HOUR, minute=0, second=0, microsecond=0)
    last = local - timedelta(days=2)
    return sorted(last - timedelta(days=every_days * k)
                  for k in range(max(1, months * 30 // every_days)))


def _retime(moment: datetime, previous: datetime, wall_start: datetime) -> int:
    """Date what the evaluation at `moment` wrote where it happened between the two moments:
    at the customer's latest fact of that span (the order, the group join, the message that
    moved them), a new customer minutes after joining, else (silence crossing a threshold) at a
    stable random time of the span. Enrolments, their messages and to-dos follow."""
    rows = list(StageTransition.objects.filter(at=moment).values_list(
        "id", "customer_id", "model_id", "from_key", "customer__joined_at"))
    if not rows:
        return 0
    customers = {r[1] for r in rows}
    latest: dict[int, datetime] = {}
    for source in (Event.objects.filter(occurred_at__gt=previous, occurred_at__lte=moment)
                   .exclude(type__in=["message_out", "message_delivered", "message_read"])
                   .values("customer_id").annotate(t=Max("occurred_at")),
                   Order.objects.filter(placed_at__gt=previous, placed_at__lte=moment)
                   .values("customer_id").annotate(t=Max("placed_at"))):
        for row in source.values_list("customer_id", "t"):
            if row[0] in customers and (row[0] not in latest or row[1] > latest[row[0]]):
                latest[row[0]] = row[1]
    when: dict[tuple[int, int], datetime] = {}
    tr_rows = []
    for pk, customer, model, from_key, joined in rows:
        salt = _h(customer, model, moment.date())
        if not from_key and joined > previous:
            at = joined + timedelta(seconds=60 + salt % 900)
        elif customer in latest:
            at = latest[customer] + timedelta(seconds=60 + salt % 600)
        else:
            lo = max(previous, joined + timedelta(minutes=1))
            at = lo + timedelta(seconds=salt % max(1, int((moment - lo).total_seconds())))
        at = min(at, moment).replace(microsecond=0)
        when[(customer, model)] = at
        tr_rows.append((pk, at))
    _set_by_id(StageTransition, ["at"], tr_rows)
    _set_by_id(CustomerStage, ["entered_at"], [
        (pk, when[(c, m)]) for pk, c, m in CustomerStage.objects.filter(
            entered_at=moment).values_list("id", "customer_id", "model_id")
        if (c, m) in when])
    sop_model = dict(Sop.objects.values_list("id", "model_id"))
    value_model = StageModel.objects.filter(key="value").values_list("id", flat=True).first()
    enrolled = {pk: when.get((c, sop_model[s]), moment) for pk, c, s in Enrollment.objects.filter(
        entered_at=moment).values_list("id", "customer_id", "sop_id")}
    _set_by_id(Enrollment, ["entered_at"], list(enrolled.items()))
    _set_by_id(Enrollment, ["ended_at"], [
        (pk, when.get((c, sop_model[s]), moment)) for pk, c, s in Enrollment.objects.filter(
            ended_at__gte=wall_start).values_list("id", "customer_id", "sop_id")])
    steps = {s.pk: s for s in SopStep.objects.all()}
    due = []
    for pk, enrolment, step in Message.objects.filter(enrollment_id__in=list(enrolled)).exclude(
            sop_step=None).values_list("id", "enrollment_id", "sop_step_id"):
        at = outreach._step_due(steps[step], enrolled[enrolment])
        due.append((pk, at, enrolled[enrolment]))
    _set_by_id(Message, ["due_at", "created_at"], due)
    _set_by_id(OperatorTask, ["due_at", "created_at"], [
        (pk, when.get((c, value_model), moment), when.get((c, value_model), moment))
        for pk, c in OperatorTask.objects.filter(due_at=moment).values_list("id", "customer_id")])
    return len(rows)


def _dispatch(moment: datetime) -> int:
    """Send what was due by `moment`, as the dispatcher would have then; each send dated when
    it was due."""
    result = outreach.messages_dispatch(now=moment, batch_size=2000)
    Message.objects.filter(sent_at=moment).update(sent_at=F("due_at"), claimed_at=F("due_at"))
    OperatorTask.objects.filter(created_at__gt=moment, message__isnull=False,
                                due_at__lte=moment).update(created_at=F("due_at"))
    return result.sent


def _past_campaign(moment: datetime, admin) -> Campaign | None:
    if Campaign.objects.filter(name=PAST_CAMPAIGN).exists():
        return None
    segment = Segment.objects.filter(name="高价值老客").first()
    campaign = outreach.campaign_save(
        campaign=None, actor=admin, name=PAST_CAMPAIGN, channel="wecom", category="content",
        condition=None if segment else {"field": "orders_count", "op": "gte", "value": 2},
        segment=segment, holdout_percent=10,
        template="{{ name }}您好，会员日老客专享：全场满299减50，另有新品小样相送～")
    campaign = outreach.campaign_start(campaign=campaign)
    Message.objects.filter(campaign=campaign).update(due_at=moment, created_at=moment)
    Campaign.objects.filter(pk=campaign.pk).update(started_at=moment, created_at=moment)
    return campaign


def _receipts(now: datetime) -> dict[str, int]:
    """Receipts for messages sent: most delivered, over half read, some replied — at stable
    random delays after the send."""
    rows = []
    counts = {"delivered": 0, "read": 0, "replied": 0}
    for pk, sent in Message.objects.filter(status=Message.Status.SENT, delivered_at=None,
                                           sent_at__lte=now - timedelta(hours=1)).exclude(
            channel="manual").values_list("id", "sent_at"):
        h = _h("receipt", pk) % 1000
        if h >= 950:
            continue
        delivered = sent + timedelta(seconds=3 + h % 40)
        read = sent + timedelta(seconds=120 + (h * 37) % 14_400) if h < 620 else None
        replied = read + timedelta(seconds=60 + (h * 53) % 3_600) if h < 120 else None
        if replied and replied > now:
            replied = None
        status = "replied" if replied else "read" if read else "delivered"
        counts[status] += 1
        rows.append((pk, status, delivered, read, replied))
    _set_by_id(Message, ["status", "delivered_at", "read_at", "replied_at"], rows)
    return counts


def _todos(now: datetime) -> None:
    """The to-do list as a team leaves it: older to-dos worked off, recent ones open; those who
    deleted us lately and last week's first buyers to follow up."""
    deleted = dict(Customer.objects.filter(
        status=Customer.Status.DELETED_US, status_changed_at__gte=now - timedelta(days=14))
        .values_list("id", "status_changed_at"))
    outreach.deletion_warnings(deleted)
    first_buyers = (StageTransition.objects.filter(
        model__key="journey", to_key="purchase", at__gte=now - timedelta(days=10))
        .values_list("customer_id", "at"))
    owners = dict(Customer.objects.filter(pk__in=[c for c, _at in first_buyers])
                  .values_list("id", "owner_id"))
    names = dict(Customer.objects.filter(pk__in=list(owners)).values_list("id", "name"))
    OperatorTask.objects.bulk_create([OperatorTask(
        assignee_id=owners[c], customer_id=c, kind=OperatorTask.Kind.FOLLOW_UP,
        title=_("Follow up one to one with %(name)s") % {"name": names.get(c) or c},
        body="首单已签收吗？问问使用感受，推荐搭配的产品。",
        due_at=at + timedelta(days=3), dedupe_key=f"demo-first-order:{c}")
        for c, at in first_buyers if owners.get(c)], batch_size=2000, ignore_conflicts=True)
    # An operator with a small book may have nothing due this week: their latest active
    # customer is worth a call.
    busy = set(OperatorTask.objects.filter(status=OperatorTask.Status.OPEN,
                                           due_at__gte=now - timedelta(days=7))
               .values_list("assignee_id", flat=True))
    for owner in (Customer.objects.exclude(owner_id__in=busy).exclude(owner=None)
                  .values_list("owner_id", flat=True).distinct()):
        customer = (Customer.objects.filter(owner_id=owner, status=Customer.Status.ACTIVE,
                                            last_active_at__isnull=False)
                    .order_by("-last_active_at").values_list("id", "name").first())
        if customer:
            OperatorTask.objects.bulk_create([OperatorTask(
                assignee_id=owner, customer_id=customer[0], kind=OperatorTask.Kind.FOLLOW_UP,
                title=_("Follow up one to one with %(name)s") % {"name": customer[1]},
                body="最近很活跃：问问需求，推荐合适的产品。", due_at=now + timedelta(days=1),
                dedupe_key=f"demo-active:{owner}")], ignore_conflicts=True)
    old = OperatorTask.objects.filter(status=OperatorTask.Status.OPEN,
                                      due_at__lt=now - timedelta(days=7))
    tagged = old.annotate(r=Mod("id", 6, output_field=IntegerField()))
    tagged.filter(r=0).update(status=OperatorTask.Status.SKIPPED,
                              closed_at=F("due_at") + timedelta(days=2),
                              closed_note="联系不上，先放一放")
    old.filter(status=OperatorTask.Status.OPEN).update(
        status=OperatorTask.Status.DONE, closed_at=F("due_at") + timedelta(hours=20),
        closed_note="已一对一沟通")


def _setup(admin, created: list[str]) -> None:
    """Seed 004's model, interest tags and their rules, saved segments — each once."""
    if not StageModel.objects.filter(key=CUSTOM_MODEL["key"]).exists():
        spec = dict(CUSTOM_MODEL)
        stages = [{"position": i, **s} for i, s in enumerate(spec.pop("stages"))]
        lifecycle.stage_model_save(model=None, stages=stages, **spec)
        created.append(f"stage model {spec['key']}")
    group = TagGroup.objects.filter(name="兴趣偏好").first()
    if group is None:
        group = tagging.tag_group_save(group=None, name="兴趣偏好", exclusive=False,
                                       description="按购买品类自动打标", order=5)
        created.append("tag group 兴趣偏好")
    for name, color in INTEREST_TAGS:
        tag = Tag.objects.filter(group=group, name=name).first() or tagging.tag_save(
            tag=None, group=group, name=name, color=color, description=f"买过{name}类商品")
        if not TagRule.objects.filter(tag=tag).exists():
            tagging.tag_rule_save(rule=None, name=f"兴趣偏好：{name}", tag=tag, mode="sync",
                                  condition={"field": "order", "op": "count_gte", "value": 1,
                                             "category": [name]}, interval_minutes=360)
            created.append(f"tag rule 兴趣偏好：{name}")
    for name, description, condition in SEGMENTS:
        if not Segment.objects.filter(name=name).exists():
            tagging.segment_save(segment=None, actor=admin, name=name,
                                 description=description, condition=condition)
            created.append(f"segment {name}")


def demo_history(*, months: int = 6, every_days: int = 30, sop_days: int = 35,
                 now: datetime | None = None) -> HistoryReport:
    report = HistoryReport()
    wall_start = timezone.now()
    now = now or wall_start
    admin = get_user_model().objects.filter(is_superuser=True).order_by("pk").first()
    started = time.monotonic()
    with transaction.atomic():
        _setup(admin, report.created)
    report.timings["setup"] = time.monotonic() - started
    replay = not StageTransition.objects.exists() and Customer.objects.exists()
    previous = None
    if replay:
        t = time.monotonic()
        moments = _moments(now, months, every_days)
        campaign_at = min(moments, key=lambda m: abs((now - m).days - 20))
        with transaction.atomic():
            # The team switched its SOPs on some weeks ago: enrolments and sends are replayed
            # from then on (the dispatcher is the slow part of a replay).
            sops = list(Sop.objects.filter(active=True).values_list("pk", flat=True))
            Sop.objects.filter(pk__in=sops).update(active=False)
            sops_from = now - timedelta(days=sop_days)
            facts = Facts(moments[0])
            previous = moments[0] - timedelta(days=every_days)
            for moment in moments:
                facts.advance(moment)
                if moment >= sops_from and sops:
                    Sop.objects.filter(pk__in=sops).update(active=True)
                    sops = []
                if not sops:
                    report.sent += _dispatch(moment)
                joined = list(Customer.objects.filter(joined_at__lte=moment).order_by("pk")
                              .values_list("pk", flat=True))
                if joined:
                    lifecycle.stage_models_evaluate(customer_ids=joined, now=moment,
                                                    chunk_size=ID_CHUNK)
                    report.transitions += _retime(moment, previous, wall_start)
                if moment == campaign_at and _past_campaign(moment, admin):
                    report.sent += _dispatch(moment)
                    outreach.campaigns_finish()
                    Campaign.objects.filter(name=PAST_CAMPAIGN).update(
                        finished_at=moment + timedelta(hours=2))
                previous = moment
                report.moments += 1
            facts.close()
            Sop.objects.filter(pk__in=sops).update(active=True)
        report.timings["replay"] = time.monotonic() - t
    t = time.monotonic()
    with transaction.atomic():
        # The present: today's evaluation, what is due now, the receipts so far, the to-dos.
        lifecycle.stage_models_evaluate(now=now)
        if previous is not None:
            # As beat would have: the moves since the last replayed moment, when they happened.
            report.transitions += _retime(now, previous, wall_start)
        report.sent += _dispatch(now)
        report.receipts = _receipts(now)
        for rule in TagRule.objects.filter(tag__group__name="兴趣偏好", last_run_at=None):
            tagging.tag_rule_run(rule=rule)
        if not Campaign.objects.filter(name=NEXT_CAMPAIGN).exists():
            nxt = outreach.campaign_save(
                campaign=None, actor=admin, name=NEXT_CAMPAIGN, channel="wecom",
                category="content", condition={"all": [
                    {"field": "status", "op": "eq", "value": "active"},
                    {"field": "opted_out", "op": "eq", "value": False},
                    {"field": "last_active_at", "op": "within_days", "value": 60}]},
                template="{{ name }}，春季限定系列下周上新，先给你留了试用装名额～",
                send_at=(timezone.localtime(now) + timedelta(days=7)).replace(
                    hour=19, minute=30, second=0, microsecond=0))
            outreach.campaign_schedule(campaign=nxt, actor=admin)
            report.created.append(f"campaign {NEXT_CAMPAIGN} (scheduled)")
        _todos(now)
    report.timings["present"] = time.monotonic() - t
    report.win_backs = StageTransition.objects.filter(win_back=True).count()
    report.enrolments = Enrollment.objects.count()
    report.tasks_open = OperatorTask.objects.filter(status=OperatorTask.Status.OPEN).count()
    return report


class Command(BaseCommand):
    help = _("Give the demo a past: replay the stage models over the past months, send and "
             "receive the SOP messages of that time, a finished and a scheduled campaign, "
             "to-dos, segments and seed 004's custom stage model. Run after seed_demo; safe to "
             "run twice.")

    def add_arguments(self, parser):
        parser.add_argument("--months", type=int, default=6,
                            help=_("Replay every --every days over this many months (default 6)."))
        parser.add_argument("--every", type=int, default=30,
                            help=_("Days between replayed evaluations (default 30)."))
        parser.add_argument("--sop-days", type=int, default=35,
                            help=_("SOP enrolments and sends are replayed over this many last "
                                   "days (default 35)."))

    def handle(self, *args, months, every, sop_days, **options):
        started = time.monotonic()
        report = demo_history(months=months, every_days=every, sop_days=sop_days)
        out = self.stdout.write
        for line in report.created:
            out(_("  created %(what)s") % {"what": line})
        if report.moments:
            out(_("Replayed %(n)d past evaluations: %(t)d stage moves (%(w)d win-backs), "
                  "%(s)d messages sent.") % {"n": report.moments, "t": report.transitions,
                                             "w": report.win_backs, "s": report.sent})
        else:
            out(_("Stage history exists already: no replay."))
        out(_("Receipts: %(r)s; enrolments %(e)d; open to-dos %(o)d.")
            % {"r": ", ".join(f"{k} {v}" for k, v in report.receipts.items()),
               "e": report.enrolments, "o": report.tasks_open})
        out(_("Done in %(s).1f s (%(parts)s).") % {
            "s": time.monotonic() - started,
            "parts": ", ".join(f"{k} {v:.1f} s" for k, v in report.timings.items())})
