"""Every KPI on the hand-built data set (tests/metrics/handbuilt.py), expected values worked
out by hand in the asserts. R = 2024-03-01 … 03-10, P = 2024-02-20 … 02-29."""

import math
from datetime import date, timedelta
from decimal import Decimal

import pytest

from crm.models import Customer
from lifecycle.models import StageModel
from metrics import selectors
from metrics.decomposition import Factors, decompose
from metrics.periods import Period, Scope, day_start
from tests.metrics.handbuilt import build, mar, moves

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]

R = Period(date(2024, 3, 1), date(2024, 3, 10))
P = Period(date(2024, 2, 20), date(2024, 2, 29))


@pytest.fixture
def data(db):
    return build()


def test_the_preceding_range_has_equal_length():
    assert R.previous() == P
    assert R.days == P.days == 10


def test_relationship_kpis(data):
    k = selectors.relationship_kpis(scope=Scope(), period=R)
    # Acquaintance. Joined in R: c1 (03-01 00:30 local, still Feb 29 in UTC), c2, c3, c4 —
    # not c8 (03-11 00:10).
    assert k["joined"] == 4
    # c2 deleted us 4 days after joining; c4 only after 7.5 days.
    assert k["deleted_within_7_days"] == 1
    assert k["friend_loss_rate"] == 1 / 4
    # c1 (03-03) and c3 (03-04) joined a group; c2 did so only on 03-11, after R.
    assert k["joined_group"] == 2
    assert k["group_join_rate"] == 2 / 4
    # Interaction. In the domain during R: c1 c2 c3 c4 c5 c6 (c2 and c4 deleted us during or
    # after R); not c7 (removed 02-10) nor c8 (joined after R).
    assert k["customers"] == 6
    # Inbound in R: c1 (message), c3 (group join), c5 (link, referrals). c7's message does not
    # count (not in the domain); c3's message_out is ours, c2's friend_deleted is not inbound.
    assert k["interacting"] == 3
    assert k["interaction_rate"] == 3 / 6
    # Active (inbound or paid order) in R: c1 c3 c5 c7; in P: c5 (message 02-25) and c6
    # (order 02-29 23:30 local). Both: c5.
    assert k["active"] == 4
    assert k["active_previous"] == 2
    assert k["retained"] == 1
    assert k["retention_rate"] == 1 / 2
    # Purchase. No paid order before R among the domain: c1 c2 c3 (refunded only) c4; c5 and
    # c6 bought before. First paid order in R: c1.
    assert k["never_bought_before"] == 4
    assert k["first_time_buyers"] == 1
    assert k["conversion_rate"] == 1 / 4
    # Buyers in R: c1 (2 orders) and c5 (1); c3's order was refunded.
    assert k["buyers"] == 2
    assert k["repeat_buyers"] == 1
    assert k["repurchase_rate"] == 1 / 2
    # Alliance: c3 and c4 were referred, both by c5; c5 sent two referral events in R.
    assert k["referred_customers"] == 2
    assert k["referrers"] == 1
    assert k["referral_events"] == 2
    assert k["fission_multiplier"] == 2 / 1


def test_relationship_kpis_of_one_operator(data):
    k = selectors.relationship_kpis(scope=Scope(user=data.op_a), period=R)
    # op-a owns c1 c2 c5 c7: joined c1 c2, c2 deleted us, c1 joined a group.
    assert (k["joined"], k["friend_loss_rate"], k["group_join_rate"]) == (2, 1 / 2, 1 / 2)
    # Domain c1 c2 c5; inbound c1 c5.
    assert (k["customers"], k["interaction_rate"]) == (3, 2 / 3)
    # Active in R c1 c5 c7; in P c5.
    assert (k["active"], k["active_previous"], k["retained"]) == (3, 1, 1)
    assert (k["buyers"], k["repeat_buyers"]) == (2, 1)
    # c3 and c4 (referred) belong to op-b.
    assert (k["referred_customers"], k["fission_multiplier"]) == (0, None)


def test_channel_and_owner_filters(data):
    k = selectors.relationship_kpis(scope=Scope(channel=data.store), period=R)
    assert k["joined"] == 2                            # c3, c4
    assert k["referred_customers"] == 2
    k = selectors.relationship_kpis(scope=Scope(owner=data.op_b, channel=data.qr), period=R)
    assert k["joined"] == 0 and k["friend_loss_rate"] is None


def test_empty_range_rates_are_none(data):
    k = selectors.relationship_kpis(scope=Scope(), period=Period(date(2020, 1, 1),
                                                                 date(2020, 1, 2)))
    assert k["joined"] == 0 and k["friend_loss_rate"] is None and k["retention_rate"] is None


def _lmdi(r1, r0, x1, x0):
    weight = (r1 - r0) / (math.log(r1) - math.log(r0))
    return weight * math.log(x1 / x0)


def test_revenue_identity_and_lmdi_decomposition(data):
    report = selectors.revenue_report(scope=Scope(), period=R, compare=P)
    # R: traffic = the 6 domain customers; buyers c1 c5; orders 100 + 300 + 500.
    assert report["revenue"] == "900.00"
    assert report["traffic"] == 6
    assert report["conversion_rate"] == 2 / 6
    assert report["average_order_value"] == "300.00"          # 900 / 3 orders
    assert report["purchase_frequency"] == 3 / 2               # 3 orders / 2 buyers
    product = (report["traffic"] * report["conversion_rate"]
               * float(report["average_order_value"]) * report["purchase_frequency"])
    assert product == pytest.approx(900)
    # P: domain c5 c6 (c7 left 02-10, c1 joined 03-01 local); c6 bought 50.00 on 02-29 23:30.
    prev = report["previous"]
    assert (prev["start"], prev["end"]) == ("2024-02-20", "2024-02-29")
    assert (prev["revenue"], prev["traffic"], prev["conversion_rate"],
            prev["average_order_value"], prev["purchase_frequency"]) == (
        "50.00", 2, 1 / 2, "50.00", 1.0)
    # All eight factors are positive: LMDI, L(900, 50) · ln(x₁/x₀) per factor.
    assert report["method"] == "lmdi"
    parts = report["decomposition"]
    expected = {
        "traffic": _lmdi(900, 50, 6, 2),                       # ≈ 323.08
        "conversion_rate": _lmdi(900, 50, 1 / 3, 1 / 2),       # ≈ -119.24
        "average_order_value": _lmdi(900, 50, 300, 50),        # ≈ 526.92
        "purchase_frequency": _lmdi(900, 50, 1.5, 1),          # ≈ 119.24
    }
    for name, value in expected.items():
        assert abs(Decimal(parts[name]) - Decimal(str(value))) <= Decimal("0.01"), name
    assert report["change"] == "850.00"
    assert sum(Decimal(v) for v in parts.values()) == Decimal("850.00")


def test_revenue_decomposition_with_zeros_is_shapley(data):
    # 2024-01-01 … 01-05: only c7 (removed 02-10) was in the domain; nobody bought.
    before = Period(date(2024, 1, 1), date(2024, 1, 5))
    report = selectors.revenue_report(scope=Scope(), period=R, compare=before)
    assert (report["previous"]["traffic"], report["previous"]["revenue"]) == (1, "0.00")
    assert report["method"] == "shapley"
    # Old factors (1, 0, 0, 0), new (6, 1/3, 300, 1.5). A product is non-zero only once the
    # three zero factors have changed: v({cr, aov, pf}) = 1·⅓·300·1.5 = 150, v(all) = 900.
    # traffic: only the order where it changes last, weight 3!0!/4! = ¼ → ¼ · (900 − 150).
    # conversion (and alike aov, pf): last of the three with traffic unchanged (weight
    # 2!1!/4! = 1/12) → 150/12 = 12.5, or last of all (weight ¼) → 900/4 = 225.
    assert report["decomposition"] == {
        "traffic": "187.50", "conversion_rate": "237.50", "average_order_value": "237.50",
        "purchase_frequency": "237.50"}
    assert sum(Decimal(v) for v in report["decomposition"].values()) == Decimal("900.00")


def test_decomposition_rounding_remainder_goes_to_the_largest_part():
    current = Factors(traffic=7, buyers=3, paid_orders=5, revenue=Decimal("1000.01"))
    previous = Factors(traffic=11, buyers=2, paid_orders=3, revenue=Decimal("333.33"))
    method, parts = decompose(current=current, previous=previous)
    assert method == "lmdi"
    assert sum(parts.values()) == Decimal("666.68")
    # Everything to zero, and zero to zero.
    zero = Factors(traffic=4, buyers=0, paid_orders=0, revenue=Decimal("0"))
    method, parts = decompose(current=zero, previous=current)
    assert method == "shapley"
    assert sum(parts.values()) == Decimal("-1000.01")
    method, parts = decompose(current=zero, previous=zero)
    assert set(parts.values()) == {Decimal("0.00")}


def test_decomposition_exact_for_random_pairs():
    import random

    rng = random.Random(7)
    for _ in range(200):
        factors = []
        for _side in range(2):
            traffic = rng.randint(0, 50)
            buyers = rng.randint(0, traffic)
            orders = rng.randint(buyers, buyers * 3) if buyers else 0
            revenue = Decimal(rng.randint(0, 10**6)) / 100 if orders else Decimal("0")
            factors.append(Factors(traffic, buyers, orders, revenue))
        _method, parts = decompose(current=factors[0], previous=factors[1])
        assert sum(parts.values()) == factors[0].revenue - factors[1].revenue


def test_aipl_funnel_now(data):
    model = StageModel.objects.get(key="aipl")
    report = selectors.funnel_report(scope=Scope(), model=model, day=None)
    # awareness c2 c4 c7, interest c3, purchase c1 c6, loyalty c5 (c8 is not placed).
    rows = {r["stage"]: r for r in report["stages"]}
    assert [r["stage"] for r in report["stages"]] == ["awareness", "interest", "purchase",
                                                      "loyalty"]
    assert [r["count"] for r in report["stages"]] == [3, 1, 2, 1]
    # reach = at the stage or beyond: A 7, I 4, P 3, L 1.
    assert [r["reach"] for r in report["stages"]] == [7, 4, 3, 1]
    assert rows["awareness"]["rate_to_next"] == 4 / 7          # A → I
    assert rows["interest"]["rate_to_next"] == 3 / 4           # I → P
    assert rows["purchase"]["rate_to_next"] == 1 / 3           # P → L
    assert rows["loyalty"]["rate_to_next"] is None


def test_aipl_funnel_of_a_past_day_is_rebuilt_from_transitions(data):
    model = StageModel.objects.get(key="aipl")
    report = selectors.funnel_report(scope=Scope(), model=model, day=date(2024, 3, 4))
    # At the end of 03-04: c5 and c6 in purchase (c5's loyalty is 03-07), c1 interest (its
    # purchase is 03-05), c3 interest (03-04 10:00), c2 and c7 awareness; c4 not yet placed.
    assert report["source"] == "rebuilt"
    assert {r["stage"]: r["count"] for r in report["stages"]} == {
        "awareness": 2, "interest": 2, "purchase": 2, "loyalty": 0}


def test_a_past_days_counts_equal_each_customers_last_transition_before_its_end(data):
    """Not snapshotted: the current stages less the moves since — the same counts as each
    customer's last transition before the day ended, for every model, day and scope."""
    scopes = [Scope(), Scope(user=data.op_a), Scope(channel=data.store), Scope(owner=data.op_b)]
    for model in StageModel.objects.all():
        for offset in range(45):
            day = date(2024, 1, 26) + timedelta(days=offset)
            for scope in scopes:
                counts, source = selectors.stage_counts_on(scope=scope, model=model, day=day)
                expected: dict = {}
                for row in selectors.stage_counts_at(
                        scope=scope, at=day_start(day + timedelta(days=1)),
                        model_ids=[model.pk]):
                    expected[row["stage_key"]] = (expected.get(row["stage_key"], 0)
                                                  + row["customers"])
                assert (source, counts) == ("rebuilt", expected), (model.key, day, scope)


def test_churn_and_win_back(data):
    model = StageModel.objects.get(key="value")
    result = selectors.churn_and_win_back(scope=Scope(), model=model,
                                          stages=selectors.model_stages(model), period=R)
    # At 03-01 00:00 the placed customers stood: c5 dormant, c6 growth, c7 churn.
    # Entering churn in R: c2 (03-08). Not in churn at the start: c5, c6.
    assert result["churn"] == {"stage": "churn", "entered": 1, "not_in_stage_at_start": 2,
                               "rate": 1 / 2}
    # Win-backs in R: c5 dormant → growth (03-04). In dormant/churn at the start: c5, c7.
    assert result["win_back"] == {"from_stages": ["dormant", "churn"], "win_backs": 1,
                                  "in_stages_at_start": 2, "rate": 1 / 2}
    aipl = StageModel.objects.get(key="aipl")
    assert selectors.churn_and_win_back(scope=Scope(), model=aipl,
                                        stages=selectors.model_stages(aipl), period=R) == {
        "churn": None, "win_back": None}


def test_a_first_placement_into_churn_is_not_a_move_into_it(data):
    """A customer placed straight into churn (say, imported long silent) did not churn in the
    range: only moves from another stage count."""
    late = Customer.objects.create(external_id="c9", name="c9", joined_at=mar(4, 9),
                                   owner=data.op_a, channel=data.qr)
    moves(late, "value", ("churn", mar(4, 12)))
    model = StageModel.objects.get(key="value")
    result = selectors.churn_and_win_back(scope=Scope(), model=model,
                                          stages=selectors.model_stages(model), period=R)
    assert result["churn"]["entered"] == 1                     # c2 only, as before
    assert result["churn"]["not_in_stage_at_start"] == 2


def test_median_days_in_stage(data):
    model = StageModel.objects.get(key="value")
    medians = selectors.median_days_in_stage(scope=Scope(), model=model, period=R)
    # Exits from intro in R: c1 after 4 days (03-01 01:00 → 03-05 01:00), c2 after 6.5
    # (03-02 10:00 → 03-08 22:00): median of two = (4 + 6.5) / 2.
    assert medians["intro"] == {"exits": 2, "median_days": 5.25}
    # From growth: c1 5 days (03-05 01:00 → 03-10 01:00), c5 6 (03-04 12:00 → 03-10 12:00),
    # c6 14 (02-22 → 03-07 across Feb 29): median of [5, 6, 14] = 6.
    assert medians["growth"] == {"exits": 3, "median_days": 6.0}
    # From dormant: c5, 02-20 12:00 → 03-04 12:00 = 13 days.
    assert medians["dormant"] == {"exits": 1, "median_days": 13.0}
    assert "mature" not in medians and "churn" not in medians
    # op-b's customers: only c6 left a stage in R.
    medians = selectors.median_days_in_stage(scope=Scope(user=data.op_b), model=model, period=R)
    assert medians == {"growth": {"exits": 1, "median_days": 14.0}}


def test_flows_and_stage_to_stage_conversion(data):
    model = StageModel.objects.get(key="value")
    report = selectors.flows_report(scope=Scope(), model=model, period=R)
    flows = {(f["from"], f["to"]): (f["count"], f["win_backs"]) for f in report["flows"]}
    assert flows == {
        (None, "intro"): (4, 0),                 # c1 c2 c3 c4 placed
        ("intro", "growth"): (1, 0),             # c1
        ("intro", "churn"): (1, 0),              # c2
        ("dormant", "growth"): (1, 1),           # c5, a win-back
        ("growth", "mature"): (3, 0),            # c1 c5 c6
    }
    stages = {s["stage"]: s for s in report["stages"]}
    # Entered intro in R: c1 c2 c3 c4; next c1 → growth after 4 days, c2 → churn after 6.5.
    assert stages["intro"]["entered"] == 4
    assert stages["intro"]["still_in_stage"] == 2
    assert stages["intro"]["next"] == [
        {"stage": "growth", "name": "成长期", "customers": 1, "share": 1 / 4,
         "median_days": 4.0},
        {"stage": "churn", "name": "流失期", "customers": 1, "share": 1 / 4,
         "median_days": 6.5},
    ]
    # Entered growth in R: c5 (03-04 12:00) and c1 (03-05 01:00); both → mature after 6 and
    # 5 days: median 5.5. c6 entered growth before R.
    assert stages["growth"]["entered"] == 2
    assert stages["growth"]["next"] == [{"stage": "mature", "name": "成熟期", "customers": 2,
                                         "share": 1.0, "median_days": 5.5}]
    assert stages["mature"]["entered"] == 3 and stages["mature"]["next"] == []
    assert stages["dormant"]["entered"] == 0


def test_stages_report(data):
    model = StageModel.objects.get(key="value")
    report = selectors.stages_report(scope=Scope(), model=model, period=R)
    rows = {r["stage"]: r for r in report["stages"]}
    # R ended long ago: counts at the end of 03-10, rebuilt (no snapshot): intro c3 c4,
    # mature c1 c5 c6 (c1 and c5 moved on 03-10), churn c2 c7.
    assert report["counts_source"] == "rebuilt"
    assert {k: r["count"] for k, r in rows.items()} == {
        "intro": 2, "growth": 0, "mature": 3, "dormant": 0, "churn": 2}
    assert {k: (r["entered"], r["exited"]) for k, r in rows.items()} == {
        "intro": (4, 2), "growth": (2, 3), "mature": (3, 0), "dormant": (0, 1),
        "churn": (1, 0)}
    assert rows["intro"]["median_days_in_stage"] == 5.25
    assert rows["mature"]["median_days_in_stage"] is None
    assert report["churn"]["rate"] == 1 / 2 and report["win_back"]["rate"] == 1 / 2


def test_cohort_retention_live(data):
    report = selectors.cohort_retention(scope=Scope(), period=Period(date(2023, 12, 1),
                                                                     date(2024, 3, 31)))
    cohorts = {c["cohort"]: c for c in report["cohorts"]}
    assert list(cohorts) == ["2023-12", "2024-01", "2024-02", "2024-03"]
    # 2023-12: c7, active in March (offset 3) only.
    assert cohorts["2023-12"]["customers"] == 1
    assert [m["active"] for m in cohorts["2023-12"]["retention"][:5]] == [0, 0, 0, 1, 0]
    # 2024-01: c5 and c6, both active in February (c5 order 02-01 and message, c6 order),
    # c5 in March.
    assert cohorts["2024-01"]["customers"] == 2
    assert [m["active"] for m in cohorts["2024-01"]["retention"][:4]] == [0, 2, 1, 0]
    assert cohorts["2024-01"]["retention"][1]["rate"] == 2 / 2
    assert cohorts["2024-01"]["retention"][2]["rate"] == 1 / 2
    assert cohorts["2024-02"]["customers"] == 0
    # 2024-03 (c1 joined 03-01 00:30 local, Feb 29 in UTC): c1 c2 c3 c4 c8; active in March
    # c1, c3 and c2 (group join 03-11).
    assert cohorts["2024-03"]["customers"] == 5
    assert cohorts["2024-03"]["retention"][0] == {"month": 0, "active": 3, "rate": 3 / 5,
                                                  "partial": False}


def test_activity_by_day(data):
    rows = selectors.activity_by_day(scope=Scope(), start=date(2024, 3, 1),
                                     end=date(2024, 3, 10))
    totals: dict = {}
    per_day: dict = {}
    for (day, _ch, _ow), values in rows.items():
        for name, value in values.items():
            totals[name] = totals.get(name, 0) + value
            if name == "active_customers" and value:
                per_day[day] = per_day.get(day, 0) + value
    assert totals == {
        "new_customers": 4, "referrals": 2,                     # c1..c4; c3 c4 referred
        "deleted_us": 1, "removed": 0,                          # c2 on 03-06
        "paid_orders": 3, "revenue": Decimal("900.00"),
        "refunds": 1, "refunded_amount": Decimal("200.00"),     # c3's, refunded 03-06
        "buyers": 3,                                            # c1 03-05, c5 03-07, c1 03-08
        "first_time_buyers": 1,                                 # c1
        "active_customers": 10,
        "referral_events": 2,                                   # c5's, 03-03 and 03-09
    }
    # Active per day: 03-02 c1; 03-03 c1 c5; 03-04 c3 c5; 03-05 c1 c7; 03-07 c5; 03-08 c1;
    # 03-09 c5.
    assert per_day == {date(2024, 3, 2): 1, date(2024, 3, 3): 2, date(2024, 3, 4): 2,
                       date(2024, 3, 5): 2, date(2024, 3, 7): 1, date(2024, 3, 8): 1,
                       date(2024, 3, 9): 1}
    # The grain: c1 (qr-a, op-a) on 03-05.
    assert rows[(date(2024, 3, 5), data.qr.pk, data.op_a.pk)]["revenue"] == Decimal("100.00")
