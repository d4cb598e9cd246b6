"""SOP and campaign performance (`metrics/sops/`, `metrics/campaigns/`): a hand-built SOP with
a control group, its steps' messages and a campaign, every figure computed by hand beside its
assert — the 7-day and 48-hour boundaries, refunds, the uplift against control and its
p-value; the scope of an operator, the filters, the 400s and the shapes of the API."""

from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.utils import timezone

from campaigns import services as campaign_services
from campaigns.models import Campaign, Enrollment, Message, Sop, SopStep
from crm.models import Customer, Event, Order
from lifecycle.models import Stage, StageModel, StageTransition
from metrics.periods import Period, Scope
from metrics.sops import campaign_performance, sop_performance, two_proportion_p_value

SOPS_URL = "/api/v1/metrics/sops/"
CAMPAIGNS_URL = "/api/v1/metrics/campaigns/"
MARCH = {"start": "2026-03-01", "end": "2026-03-31"}


def local(year, month, day, hour=0, minute=0, second=0) -> datetime:
    return timezone.make_aware(datetime(year, month, day, hour, minute, second),
                               timezone.get_default_timezone())


MARCH_P = Period(date(2026, 3, 1), date(2026, 3, 31))     # [Mar 1 00:00, Apr 1 00:00)
SINCE = MARCH_P.since
NOW = local(2026, 6, 10, 12)
E = local(2026, 3, 10, 10)                      # when every enrolment of the period entered
K = local(2026, 3, 15, 10)                      # when the campaign's messages went out
DAY, HOUR, SECOND = timedelta(days=1), timedelta(hours=1), timedelta(seconds=1)


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


class Data:
    """The hand-built data set; attributes name its people and things."""


@pytest.fixture
def data(db, admin_user, operator, other_operator):
    d = Data()
    d.admin, d.op_a, d.op_b = admin_user, operator, other_operator
    seq = iter(range(1, 10_000))
    model = StageModel.objects.create(key="perf", name="Perf")
    stages = {key: Stage.objects.create(model=model, key=key, name=key, position=pos)
              for pos, key in enumerate(["aware", "interest", "trust", "loyal"], start=1)}
    other = StageModel.objects.create(key="perf-other", name="Other")
    other_low = Stage.objects.create(model=other, key="low", name="low", position=1)
    other_high = Stage.objects.create(model=other, key="high", name="high", position=5)

    d.sop = Sop.objects.create(name="Interest nurture", model=model, stage=stages["interest"],
                               holdout_percent=50)
    d.step1 = SopStep.objects.create(sop=d.sop, order=1, template="hi", channel="wecom")
    d.step2 = SopStep.objects.create(sop=d.sop, order=2, template="offer", channel="sms",
                                     category="promotional", day=3)
    gone = SopStep.objects.create(sop=d.sop, order=3, template="old")   # deleted below
    d.quiet = Sop.objects.create(name="Aware welcome", model=model, stage=stages["aware"])
    SopStep.objects.create(sop=d.quiet, order=1, template="welcome")

    def customer(name, owner=operator):
        return Customer.objects.create(external_id=f"sop-{name}", name=name, owner=owner,
                                       joined_at=local(2026, 1, 1))

    def enrol(who, status, sop=d.sop, at=E):
        return Enrollment.objects.create(sop=sop, customer=who, entered_at=at, status=status)

    def order(who, at, status=Order.Status.PAID):
        Order.objects.create(customer=who, source="youzan", external_id=f"so-{next(seq)}",
                             amount=Decimal("99.00"), status=status, placed_at=at)

    def deleted(who, at):
        Event.objects.create(customer=who, type=Event.Type.FRIEND_DELETED, occurred_at=at,
                             idempotency_key=f"se-{next(seq)}")

    def move(who, to, at, frm=None, backward=False, on=model):
        StageTransition.objects.create(customer=who, model=on, from_stage=frm, to_stage=to,
                                       from_key=frm.key if frm else "", to_key=to.key, at=at,
                                       source="rule", backward=backward)

    def message(who, status, sent_at=None, step=None, enrollment=None, campaign=None,
                skip_reason=""):
        return Message.objects.create(
            customer=who, channel="wecom", category="content", sop_step=step,
            enrollment=enrollment, campaign=campaign, dedupe_key=f"sm-{next(seq)}",
            due_at=sent_at or E, status=status, sent_at=sent_at, skip_reason=skip_reason)

    # Treatment: four enrolments that got the messages.
    t1, t2, t3, t4 = (customer(n) for n in ("t1", "t2", "t3", "t4"))
    t2.owner = other_operator
    t2.save(update_fields=["owner"])
    e1, e2 = enrol(t1, "completed"), enrol(t2, "active")
    e3, e4 = enrol(t3, "goal"), enrol(t4, "exited")
    order(t1, E + 7 * DAY)                                # exactly 7 days: converted
    move(t1, stages["trust"], E + 30 * DAY, stages["interest"])          # exactly 30 days
    order(t2, E + 7 * DAY + SECOND)                       # 7 days + 1 s: not converted
    move(t2, stages["trust"], E + 30 * DAY + SECOND, stages["interest"])  # too late
    order(t3, E + DAY, Order.Status.REFUNDED)             # refunded: not converted
    move(t3, stages["aware"], E + 2 * DAY, stages["interest"], backward=True)
    move(t3, stages["trust"], E + 3 * DAY, stages["aware"])   # forward past the SOP's stage
    order(t4, E + HOUR)                                   # converted
    move(t4, stages["interest"], E + 4 * DAY, stages["aware"])   # back to the same stage: no
    # Control: four held-out enrolments (two of them ended by leaving the stage since).
    c1, c2, c3, c4 = (customer(n) for n in ("c1", "c2", "c3", "c4"))
    c2.owner = other_operator
    c2.save(update_fields=["owner"])
    for who in (c1, c2, c3, c4):
        enrol(who, "holdout")
    order(c1, E + 2 * DAY)                                # converted
    move(c1, stages["loyal"], E + 31 * DAY, stages["interest"])   # after 30 days: no
    order(c2, E - HOUR)                                   # before entry: no
    move(c4, other_high, E + DAY, other_low, on=other)    # another model: no

    # Step 1: one message per treatment enrolment.
    message(t1, "replied", E + HOUR, d.step1, e1)   # t1's order E+7d ≤ E+1h+7d: converted
    message(t2, "read", E + HOUR, d.step1, e2)      # t2's order E+7d+1s ≤ E+1h+7d: converted
    message(t3, "delivered", E + HOUR, d.step1, e3)
    deleted(t3, E + HOUR + 48 * HOUR)               # exactly 48 h after: not a block
    message(t4, "sent", E + 2 * HOUR, d.step1, e4)  # t4's order came before it: not converted
    deleted(t4, E + 2 * HOUR + 48 * HOUR - SECOND)  # 48 h − 1 s after: blocked
    # Step 2: none went out.
    message(t1, "failed", None, d.step2, e1)
    message(t2, "queued", None, d.step2, e2)
    message(t3, "skipped", None, d.step2, e3, skip_reason="deleted_us")
    message(t4, "skipped", None, d.step2, e4, skip_reason="frequency_cap")
    # Step 3 sent one message, then the step was deleted (sop_step becomes NULL).
    message(t1, "sent", E + 3 * DAY, gone, e1)      # t1's order E+7d ≤ E+10d: converted
    gone.delete()
    # Outside the period: an enrolment that entered a second before it, with its message.
    early = customer("early")
    message(early, "replied", E, d.step1, enrol(early, "active", at=SINCE - SECOND))
    order(early, SINCE)

    # The campaign, started on March 15: five customers.
    d.campaign = Campaign.objects.create(name="Spring sale", template="sale", status="done",
                                         started_at=K, finished_at=K + HOUR)
    g1, g2, g3, g4, g5 = (customer(n) for n in ("g1", "g2", "g3", "g4", "g5"))
    g2.owner = other_operator
    g2.save(update_fields=["owner"])
    message(g1, "sent", K, campaign=d.campaign)
    order(g1, K + 7 * DAY)                                # exactly 7 days: converted
    message(g2, "delivered", K, campaign=d.campaign)
    order(g2, K + 7 * DAY + SECOND)                       # 7 days + 1 s: not
    deleted(g2, K + 48 * HOUR - SECOND)                   # blocked
    message(g3, "read", K, campaign=d.campaign)
    order(g3, K + DAY, Order.Status.REFUNDED)             # refunded: not converted
    deleted(g3, K + 48 * HOUR)                            # exactly 48 h: not a block
    message(g4, "skipped", campaign=d.campaign, skip_reason="opted_out")
    message(g5, "failed", campaign=d.campaign)
    # Campaigns outside the period, or never started, are not reported.
    before = Campaign.objects.create(name="Winter", template="x", status="done",
                                     started_at=SINCE - SECOND)
    message(g1, "sent", SINCE - SECOND, campaign=before)
    Campaign.objects.create(name="Draft", template="x")
    return d


def _by_name(report):
    return {row["name"]: row for row in report["results"]}


# --- SOPs ---------------------------------------------------------------------------------

@pytest.mark.both_dbs
def test_sop_performance_hand_computed(data, django_assert_max_num_queries):
    # role, SOPs, steps, policy; enrolments and those converted, advanced; messages and those
    # converted, blocked; the skipped
    with django_assert_max_num_queries(11):
        report = sop_performance(scope=Scope(user=data.admin), period=MARCH_P, now=NOW)
    # (The built-in SOPs of other models are listed too, with nothing enrolled in March.)
    assert [r["name"] for r in report["results"] if r["model"] == "perf"] == [
        "Aware welcome", "Interest nurture"]
    row = _by_name(report)["Interest nurture"]
    assert {k: row[k] for k in ("model", "stage", "active", "holdout_percent")} == {
        "model": "perf", "stage": "interest", "active": True, "holdout_percent": 50}
    assert (row["enrolled"], row["treatment"], row["control"]) == (8, 4, 4)   # 'early' is out

    assert row["conversion"] == {
        # treatment: t1 (order at exactly 7 d) and t4 (1 h); not t2 (7 d + 1 s), t3 (refunded)
        "treatment": {"size": 4, "count": 2, "rate": 0.5},
        # control: c1 (2 d); not c2 (ordered before entry), c3, c4
        "control": {"size": 4, "count": 1, "rate": 0.25},
        "uplift_pp": 25.0,                     # (0.5 − 0.25) × 100
        "relative_uplift": 1.0,                # (0.5 − 0.25) ÷ 0.25
        # pooled p = 3/8 = 0.375; se = √(0.375 × 0.625 × (1/4 + 1/4)) = 0.342327;
        # z = 0.25 ÷ 0.342327 = 0.730297; p = erfc(0.730297 ÷ √2) = 0.465209
        "p_value": pytest.approx(0.465209, abs=1e-6),
        "window_open": 0,                      # June 10: every 7-day window has closed
    }
    assert row["advancement"] == {
        # t1 (to trust at exactly 30 d), t3 (back to aware, then on to trust); not t2 (30 d +
        # 1 s), t4 (back into interest: not past the SOP's stage)
        "treatment": {"size": 4, "count": 2, "rate": 0.5},
        # c1 reached loyal after 31 d; c4 moved in another model
        "control": {"size": 4, "count": 0, "rate": 0.0},
        "uplift_pp": 50.0,                     # (0.5 − 0) × 100
        "relative_uplift": None,               # ÷ 0
        # pooled p = 2/8 = 0.25; se = √(0.25 × 0.75 × 0.5) = 0.306186;
        # z = 0.5 ÷ 0.306186 = 1.632993; p = erfc(1.632993 ÷ √2) = 0.102470
        "p_value": pytest.approx(0.102470, abs=1e-6),
        "window_open": 0,
    }
    step1, step2 = row["steps"]
    assert step1 == {
        "id": data.step1.pk, "order": 1, "channel": "wecom", "category": "content",
        "total": 4, "sent": 4,
        "delivered": 3,                        # replied, read, delivered
        "read": 2,                             # replied, read
        "replied": 1, "failed": 0, "pending": 0, "skipped": 0, "skipped_by_reason": {},
        "converted": 2,                        # t1's and t2's messages (order ≤ sent + 7 d)
        "blocked": 1,                          # t4 (48 h − 1 s); not t3 (exactly 48 h)
        "delivery_rate": 0.75, "read_rate": 0.5, "reply_rate": 0.25,   # ÷ 4 sent
        "conversion_rate": 0.5, "block_rate": 0.25,
    }
    assert step2 == {
        "id": data.step2.pk, "order": 2, "channel": "sms", "category": "promotional",
        "total": 4, "sent": 0, "delivered": 0, "read": 0, "replied": 0,
        "failed": 1, "pending": 1, "skipped": 2,
        "skipped_by_reason": {"deleted_us": 1, "frequency_cap": 1},
        "converted": 0, "blocked": 0, "delivery_rate": None, "read_rate": None,
        "reply_rate": None, "conversion_rate": None, "block_rate": None,   # nothing sent
    }
    assert row["messages"] == {
        "total": 9,                            # 4 + 4 + the deleted step's 1
        "sent": 5,                             # 4 + 0 + 1
        "delivered": 3, "read": 2, "replied": 1, "failed": 1, "pending": 1, "skipped": 2,
        "skipped_by_reason": {"deleted_us": 1, "frequency_cap": 1},
        "converted": 3,                        # 2 + 0 + 1 (t1's step-3 message)
        "blocked": 1,
        "delivery_rate": 0.6, "read_rate": 0.4, "reply_rate": 0.2,      # 3, 2, 1 ÷ 5
        "conversion_rate": 0.6, "block_rate": 0.2,                      # 3, 1 ÷ 5
    }

    quiet = _by_name(report)["Aware welcome"]
    assert (quiet["enrolled"], quiet["holdout_percent"]) == (0, 0)
    assert quiet["conversion"] == {
        "treatment": {"size": 0, "count": 0, "rate": None},
        "control": {"size": 0, "count": 0, "rate": None},
        "uplift_pp": None, "relative_uplift": None, "p_value": None, "window_open": 0}
    assert [s["total"] for s in quiet["steps"]] == [0]


@pytest.mark.both_dbs
def test_windows_still_open_are_counted(data):
    report = sop_performance(scope=Scope(user=data.admin), period=MARCH_P,
                             now=E + 10 * DAY, sop=data.sop)
    row = report["results"][0]
    assert row["conversion"]["window_open"] == 0           # E + 7 d < now
    assert row["advancement"]["window_open"] == 8          # E + 30 d > now: all eight


@pytest.mark.both_dbs
def test_an_operator_sees_the_sop_through_their_customers(data):
    row = _by_name(sop_performance(scope=Scope(user=data.op_a), period=MARCH_P, now=NOW))[
        "Interest nurture"]
    # t2 and c2 are op-b's.
    assert (row["enrolled"], row["treatment"], row["control"]) == (6, 3, 3)
    conversion = row["conversion"]
    assert conversion["treatment"] == {"size": 3, "count": 2, "rate": pytest.approx(2 / 3)}
    assert conversion["control"] == {"size": 3, "count": 1, "rate": pytest.approx(1 / 3)}
    assert conversion["uplift_pp"] == pytest.approx(100 / 3)      # (2/3 − 1/3) × 100
    assert conversion["relative_uplift"] == pytest.approx(1.0)    # (2/3 − 1/3) ÷ 1/3
    # pooled 3/6; se = √(0.25 × 2/3) = 0.408248; z = 0.816497; p = erfc(0.57735) = 0.414216
    assert conversion["p_value"] == pytest.approx(0.414216, abs=1e-6)
    assert (row["messages"]["total"], row["messages"]["sent"]) == (7, 4)   # without t2's two


@pytest.mark.both_dbs
def test_sop_and_owner_filters(data):
    only = sop_performance(scope=Scope(user=data.admin), period=MARCH_P, now=NOW, sop=data.sop)
    assert [r["name"] for r in only["results"]] == ["Interest nurture"]
    theirs = sop_performance(scope=Scope(user=data.admin, owner=data.op_b), period=MARCH_P,
                             now=NOW, sop=data.sop)["results"][0]
    assert (theirs["treatment"], theirs["control"]) == (1, 1)          # t2, c2
    assert theirs["conversion"]["treatment"]["count"] == 0              # 7 d + 1 s
    assert theirs["steps"][0]["converted"] == 1                         # but after its message


@pytest.mark.both_dbs
def test_a_control_enrolment_that_leaves_the_stage_stays_in_the_control_group(data):
    held = Enrollment.objects.filter(sop=data.sop, status="holdout").first()
    active = Enrollment.objects.filter(sop=data.sop, status="active").first()
    campaign_services.exit_left_stage(model_key="perf", stage_key="trust",
                                      customer_ids=[held.customer_id, active.customer_id])
    held.refresh_from_db()
    active.refresh_from_db()
    assert (held.status, held.exit_reason) == ("holdout", "left_stage")
    assert held.ended_at is not None
    assert active.status == "exited"
    row = sop_performance(scope=Scope(user=data.admin), period=MARCH_P, now=NOW,
                          sop=data.sop)["results"][0]
    assert (row["treatment"], row["control"]) == (4, 4)


def test_two_proportion_p_value_edges():
    assert two_proportion_p_value(0, 0, 1, 4) is None         # an empty group
    assert two_proportion_p_value(0, 5, 0, 5) is None         # nobody converted: no variance
    assert two_proportion_p_value(5, 5, 5, 5) is None         # everyone did
    assert two_proportion_p_value(50, 100, 50, 100) == 1.0    # identical rates
    # 60/100 vs 40/100: pooled 0.5, se = √(0.25 × 0.02) = 0.070711, z = 2.828427,
    # p = erfc(2) = 0.004678
    assert two_proportion_p_value(60, 100, 40, 100) == pytest.approx(0.004678, abs=1e-6)


# --- Campaigns ----------------------------------------------------------------------------

@pytest.mark.both_dbs
def test_campaign_performance_hand_computed(data, django_assert_max_num_queries):
    # role, campaigns, policy, messages and those converted, blocked; skipped, the treated and
    # the control group
    with django_assert_max_num_queries(9):
        report = campaign_performance(scope=Scope(user=data.admin), period=MARCH_P)
    assert [r["name"] for r in report["results"]] == ["Spring sale"]    # not Winter, Draft
    row = report["results"][0]
    # No holdout: no control group, no uplift to report.
    assert (row.pop("holdout_percent"), row.pop("control")) == (0, 0)
    conversion = row.pop("conversion")
    assert conversion["control"] == {"size": 0, "count": 0, "rate": None}
    assert conversion["uplift_pp"] is None and conversion["p_value"] is None
    assert row == {
        "id": data.campaign.pk, "name": "Spring sale", "status": "done", "channel": "wecom",
        "category": "promotional", "started_at": K, "finished_at": K + HOUR,
        "audience": 5, "sent": 3,              # sent, delivered, read
        "delivered": 2, "read": 1, "replied": 0, "failed": 1, "pending": 0,
        "skipped": 1, "skipped_by_reason": {"opted_out": 1},
        "converted": 1,                        # g1 at exactly 7 d; not g2 (+1 s), g3 (refund)
        "blocked": 1,                          # g2 at 48 h − 1 s; not g3 at exactly 48 h
        "delivery_rate": pytest.approx(2 / 3), "read_rate": pytest.approx(1 / 3),
        "reply_rate": 0.0, "conversion_rate": pytest.approx(1 / 3),      # 2, 1, 0, 1 ÷ 3
        "block_rate": pytest.approx(1 / 3),                               # 1 ÷ 3
    }


@pytest.mark.both_dbs
def test_campaign_performance_for_an_operator_and_filters(data):
    mine = campaign_performance(scope=Scope(user=data.op_a), period=MARCH_P)["results"][0]
    # g2 is op-b's: 4 in the audience, 2 sent (g1, g3), nobody blocked.
    assert (mine["audience"], mine["sent"], mine["blocked"], mine["converted"]) == (4, 2, 0, 1)
    assert mine["conversion_rate"] == 0.5
    assert campaign_performance(scope=Scope(user=data.admin), period=MARCH_P,
                                campaign=data.campaign)["results"][0]["audience"] == 5
    april = Period(date(2026, 4, 1), date(2026, 4, 30))
    assert campaign_performance(scope=Scope(user=data.admin), period=april)["results"] == []


# --- The API ------------------------------------------------------------------------------

@pytest.mark.both_dbs
def test_api_sops_shape(data, api_client_for):
    response = api_client_for(data.admin).get(SOPS_URL, {**MARCH, "sop": data.sop.pk})
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"start", "end", "computed_at", "results"}
    (row,) = body["results"]
    assert set(row) == {"id", "name", "model", "stage", "active", "holdout_percent", "enrolled",
                        "treatment", "control", "messages", "conversion", "advancement",
                        "steps"}
    assert row["conversion"]["uplift_pp"] == 25.0
    assert row["conversion"]["treatment"] == {"size": 4, "count": 2, "rate": 0.5}
    assert row["messages"]["skipped_by_reason"] == {"deleted_us": 1, "frequency_cap": 1}
    assert [s["order"] for s in row["steps"]] == [1, 2]


@pytest.mark.both_dbs
def test_api_campaigns_shape_and_operator_scope(data, api_client_for):
    body = api_client_for(data.op_a).get(CAMPAIGNS_URL, MARCH).json()
    (row,) = body["results"]
    assert (row["id"], row["audience"], row["sent"]) == (data.campaign.pk, 4, 2)
    assert row["started_at"] == "2026-03-15T10:00:00+08:00"         # the system time zone
    admin = api_client_for(data.admin).get(CAMPAIGNS_URL, MARCH).json()
    assert admin["results"][0]["audience"] == 5           # not the operator's cached answer


@pytest.mark.both_dbs
@pytest.mark.parametrize(("url", "params", "message"), [
    (SOPS_URL, {"sop": "abc"}, "sop: no SOP with id 'abc'"),
    (SOPS_URL, {"sop": "999999"}, "sop: no SOP with id '999999'"),
    (SOPS_URL, {"start": "2026-02-30"}, "start: "),
    (SOPS_URL, {"owner": "ghost"}, "owner: "),
    (CAMPAIGNS_URL, {"campaign": "-1"}, "campaign: no campaign with id '-1'"),
    (CAMPAIGNS_URL, {"campaign": "999999"}, "campaign: no campaign with id '999999'"),
    (CAMPAIGNS_URL, {"start": "2026-03-02", "end": "2026-03-01"}, "end: "),
    (CAMPAIGNS_URL, {"channel": "nope"}, "channel: "),
])
def test_api_rejects_bad_parameters_naming_them(db, admin_user, api_client_for, url, params,
                                                message):
    response = api_client_for(admin_user).get(url, params)
    assert response.status_code == 400
    assert response.json()["message"].startswith(message)   # the period's: see test_attribution
    assert response.json()["extra"] == {"parameter": message.split(":")[0]}
