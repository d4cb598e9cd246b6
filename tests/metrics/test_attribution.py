"""Channel attribution (`metrics/channels/`): a hand-built set of customers, orders and
deletions around March 2026, every figure computed by hand beside its assert; the scope of an
operator, the filters, the 400s and the cache of the API."""

from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.utils import timezone

from crm.models import Channel, Customer, Event, Order
from metrics.attribution import channel_attribution
from metrics.periods import Period, Scope
from tests.factories import UserFactory

URL = "/api/v1/metrics/channels/"


def local(year, month, day, hour=0, minute=0, second=0) -> datetime:
    """An aware moment in the system time zone (Asia/Shanghai)."""
    return timezone.make_aware(datetime(year, month, day, hour, minute, second),
                               timezone.get_default_timezone())


MARCH_P = Period(date(2026, 3, 1), date(2026, 3, 31))     # [Mar 1 00:00, Apr 1 00:00)
NOW = local(2026, 6, 10, 12)


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


class Data:
    """The hand-built data set; attributes name its people."""


@pytest.fixture
def data(db, admin_user, operator, other_operator):
    d = Data()
    d.admin, d.op_a, d.op_b = admin_user, operator, other_operator
    d.qr = Channel.objects.create(code="qr-a", name="A 渠道活码", cost=Decimal("1000.00"))
    d.store = Channel.objects.create(code="store-b", name="B Store", cost=Decimal("0"))
    d.ads = Channel.objects.create(code="ads-c", name="C Ads", cost=Decimal("300.00"))
    seq = iter(range(1, 1000))

    def customer(name, joined_at, channel, owner=operator, **fields):
        return Customer.objects.create(external_id=f"attr-{name}", name=name, channel=channel,
                                       owner=owner, joined_at=joined_at, **fields)

    def order(who, placed_at, amount, status=Order.Status.PAID):
        Order.objects.create(customer=who, source="youzan", external_id=f"attr-o{next(seq)}",
                             amount=Decimal(amount), status=status, placed_at=placed_at)

    def deleted(who, at):
        Event.objects.create(customer=who, type=Event.Type.FRIEND_DELETED, occurred_at=at,
                             idempotency_key=f"attr-e{next(seq)}")

    # Channel A: 5 customers in the period, 3 outside (so 8 to date).
    d.a1 = customer("a1", local(2026, 3, 1), d.qr)                     # first instant: in
    order(d.a1, local(2026, 3, 5), "200.00")
    order(d.a1, local(2026, 3, 6), "500.00", Order.Status.REFUNDED)    # refunded: never counts
    d.a2 = customer("a2", local(2026, 3, 5, 10), d.qr)
    order(d.a2, local(2026, 3, 4), "100.00")                           # before joining: no
    order(d.a2, local(2026, 4, 20), "50.00")                           # after the period: yes
    deleted(d.a2, local(2026, 3, 5, 10) + timedelta(days=30))          # exactly 30 days: lost
    d.a3 = customer("a3", local(2026, 3, 10, 9), d.qr, owner=other_operator)
    order(d.a3, local(2026, 3, 11), "300.00")
    deleted(d.a3, local(2026, 3, 10, 9) + timedelta(days=30, seconds=1))   # kept 30, lost 90
    d.a4 = customer("a4", local(2026, 3, 20, 12), d.qr,                # imported with status
                    status=Customer.Status.DELETED_US, status_changed_at=local(2026, 3, 25))
    d.a5 = customer("a5", local(2026, 3, 31, 23, 59, 59), d.qr)        # last instant: in
    d.a0 = customer("a0", local(2026, 2, 28, 23, 59, 59), d.qr)        # a second early: out
    order(d.a0, local(2026, 3, 10), "1000.00")
    customer("a-feb", local(2026, 2, 10), d.qr)
    customer("a6", local(2026, 4, 1), d.qr)                            # the day after: out
    # Channel B (no cost): 2 customers.
    d.b1 = customer("b1", local(2026, 3, 15), d.store)
    order(d.b1, local(2026, 3, 16), "80.00")
    order(d.b1, local(2026, 3, 17), "60.00", Order.Status.REFUNDED)
    d.b2 = customer("b2", local(2026, 3, 16), d.store)
    # Channel C: one customer, in January.
    customer("c0", local(2026, 1, 5), d.ads)
    # No channel: 1 customer.
    d.n1 = customer("n1", local(2026, 3, 2), None)
    order(d.n1, local(2026, 3, 3), "120.00")
    return d


def _rows(report):
    return {row["channel"]: row for row in report["results"]}


@pytest.mark.both_dbs
def test_channel_attribution_hand_computed(data, django_assert_max_num_queries):
    with django_assert_max_num_queries(4):       # the user's role, customers, orders, channels
        report = channel_attribution(scope=Scope(user=data.admin), period=MARCH_P, now=NOW)
    assert [r["channel"] for r in report["results"]] == ["qr-a", "store-b", "ads-c", None]
    a, b, c, none = (_rows(report)[k] for k in ("qr-a", "store-b", "ads-c", None))

    assert a == {
        "channel": "qr-a", "name": "A 渠道活码",
        "acquired": 5,                         # a1 a2 a3 a4 a5 (a0, a-feb, a6 outside)
        "buyers": 3,                           # a1, a2 (the April order), a3
        "conversion_rate": 0.6,                # 3 ÷ 5
        "revenue": "550.00",                   # 200 (a1) + 50 (a2) + 300 (a3)
        "channel_cost": "1000.00",
        "customers_to_date": 8,                # 5 + a0 + a-feb + a6
        "cost_per_acquisition": "125.00",      # 1000 ÷ 8
        "cost": "625.00",                      # 125 × 5
        "roi": -0.12,                          # (550 − 625) ÷ 625
        # 30 days: everyone's window is over by June 10 (a5: Mar 31 + 30 d = Apr 30);
        # a2 deleted us exactly at 30 d, a4 has the deleted_us status from Mar 25 → 3 of 5.
        "retention_30d": {"eligible": 5, "retained": 3, "rate": 0.6},
        # 90 days: over for a1 (May 30), a2 (Jun 3), a3 (Jun 8), not a4 (Jun 18), a5 (Jun 29);
        # a2 lost, a3 deleted us at 30 d + 1 s → only a1: 1 ÷ 3.
        "retention_90d": {"eligible": 3, "retained": 1, "rate": pytest.approx(1 / 3)},
    }
    assert b == {
        "channel": "store-b", "name": "B Store", "acquired": 2,
        "buyers": 1, "conversion_rate": 0.5,   # b1 ÷ 2
        "revenue": "80.00",                    # the refunded 60 does not count
        "channel_cost": "0.00", "customers_to_date": 2, "cost_per_acquisition": "0.00",
        "cost": "0.00", "roi": None,           # no cost, no ROI
        "retention_30d": {"eligible": 2, "retained": 2, "rate": 1.0},
        # b1 Mar 15 + 90 d = Jun 13, b2 Jun 14: both after June 10 → nobody to count
        "retention_90d": {"eligible": 0, "retained": 0, "rate": None},
    }
    assert c == {
        "channel": "ads-c", "name": "C Ads", "acquired": 0, "buyers": 0,
        "conversion_rate": None, "revenue": "0.00", "channel_cost": "300.00",
        "customers_to_date": 1, "cost_per_acquisition": "300.00",    # 300 ÷ 1
        "cost": "0.00", "roi": None,           # 300 × 0 acquired
        "retention_30d": {"eligible": 0, "retained": 0, "rate": None},
        "retention_90d": {"eligible": 0, "retained": 0, "rate": None},
    }
    assert none == {
        "channel": None, "name": "No channel", "acquired": 1, "buyers": 1,
        "conversion_rate": 1.0, "revenue": "120.00", "channel_cost": None,
        "customers_to_date": None, "cost_per_acquisition": None, "cost": None, "roi": None,
        "retention_30d": {"eligible": 1, "retained": 1, "rate": 1.0},
        "retention_90d": {"eligible": 1, "retained": 1, "rate": 1.0},   # Mar 2 + 90 d = May 31
    }
    assert report["totals"] == {
        "acquired": 8,                         # 5 + 2 + 0 + 1
        "buyers": 5,                           # 3 + 1 + 0 + 1
        "conversion_rate": 0.625,              # 5 ÷ 8
        "revenue": "750.00",                   # 550 + 80 + 120
        "cost": "625.00",                      # 625 + 0 + 0 (the no-channel row has none)
        "roi": pytest.approx(0.008),           # (550 + 80 + 0 − 625) ÷ 625
        "retention_30d": {"eligible": 8, "retained": 6, "rate": 0.75},    # 3+2+0+1 of 5+2+0+1
        "retention_90d": {"eligible": 4, "retained": 2, "rate": 0.5},     # 1+0+0+1 of 3+0+0+1
    }


@pytest.mark.both_dbs
def test_an_operator_sees_only_their_customers_and_their_share_of_the_cost(data):
    a = _rows(channel_attribution(scope=Scope(user=data.op_a), period=MARCH_P, now=NOW))["qr-a"]
    # a3 belongs to op-b: a1 a2 a4 a5 remain.
    assert (a["acquired"], a["buyers"], a["revenue"]) == (4, 2, "250.00")   # 200 + 50
    assert a["customers_to_date"] == 8                 # the spend is per customer of anyone
    assert (a["cost_per_acquisition"], a["cost"]) == ("125.00", "500.00")   # 125 × 4
    assert a["roi"] == -0.5                            # (250 − 500) ÷ 500
    assert a["retention_30d"] == {"eligible": 4, "retained": 2, "rate": 0.5}   # a1, a5
    assert a["retention_90d"] == {"eligible": 2, "retained": 1, "rate": 0.5}   # a1 of a1, a2

    theirs = _rows(channel_attribution(scope=Scope(user=data.op_b), period=MARCH_P, now=NOW))
    assert theirs["qr-a"]["acquired"] == 1 and theirs["store-b"]["acquired"] == 0
    assert theirs[None]["acquired"] == 0


@pytest.mark.both_dbs
def test_analysts_read_every_customer_in_aggregate(data, analyst):
    report = channel_attribution(scope=Scope(user=analyst), period=MARCH_P, now=NOW)
    assert report["totals"]["acquired"] == 8


@pytest.mark.both_dbs
def test_channel_and_owner_filters(data):
    only_b = channel_attribution(scope=Scope(user=data.admin, channel=data.store),
                                 period=MARCH_P, now=NOW)
    assert [r["channel"] for r in only_b["results"]] == ["store-b"]      # no "no channel" row
    assert only_b["totals"]["acquired"] == 2

    by_b = _rows(channel_attribution(scope=Scope(user=data.admin, owner=data.op_b),
                                     period=MARCH_P, now=NOW))
    a = by_b["qr-a"]
    assert (a["acquired"], a["revenue"], a["cost"]) == (1, "300.00", "125.00")
    assert a["roi"] == 1.4                             # (300 − 125) ÷ 125


# --- The API ------------------------------------------------------------------------------

@pytest.mark.both_dbs
def test_api_answers_the_report_for_the_period(data, api_client_for):
    response = api_client_for(data.admin).get(URL, {"start": "2026-03-01", "end": "2026-03-31"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"start", "end", "computed_at", "results", "totals"}
    assert (body["start"], body["end"]) == ("2026-03-01", "2026-03-31")
    rows = _rows(body)
    # Figures that do not depend on today: the same as computed by hand above.
    assert (rows["qr-a"]["acquired"], rows["qr-a"]["revenue"], rows["qr-a"]["roi"]) == (
        5, "550.00", -0.12)
    assert rows["store-b"]["conversion_rate"] == 0.5
    assert set(rows["qr-a"]["retention_30d"]) == {"eligible", "retained", "rate"}


@pytest.mark.both_dbs
def test_api_scopes_operators_and_caches_per_scope(data, api_client_for):
    params = {"start": "2026-03-01", "end": "2026-03-31"}
    mine = api_client_for(data.op_a).get(URL, params).json()
    theirs = api_client_for(data.op_b).get(URL, params).json()
    assert _rows(mine)["qr-a"]["acquired"] == 4
    assert _rows(theirs)["qr-a"]["acquired"] == 1      # not op-a's cached answer

    # A repeated load within five minutes is the cached answer, new facts or not.
    Customer.objects.create(external_id="attr-late", channel=data.qr, owner=data.op_a,
                            joined_at=local(2026, 3, 3))
    again = api_client_for(data.op_a).get(URL, params).json()
    assert again == mine
    cache.clear()
    assert _rows(api_client_for(data.op_a).get(URL, params).json())["qr-a"]["acquired"] == 5


@pytest.mark.both_dbs
def test_api_defaults_to_the_last_30_days(db, admin_user, api_client_for):
    today = timezone.localdate(timezone=timezone.get_default_timezone())
    body = api_client_for(admin_user).get(URL).json()
    assert body["end"] == today.isoformat()
    assert body["start"] == (today - timedelta(days=29)).isoformat()
    assert body["results"][-1]["channel"] is None


@pytest.mark.both_dbs
@pytest.mark.parametrize(("params", "parameter"), [
    ({"start": "2026-13-01"}, "start"),
    ({"end": "yesterday"}, "end"),
    ({"start": "2026-03-10", "end": "2026-03-09"}, "end"),          # reversed
    # 2025-03-01 … 2026-03-01 is 366 days; one more is too many
    ({"start": "2025-03-01", "end": "2026-03-02"}, "end"),
    ({"channel": "nope"}, "channel"),
    ({"owner": "nobody"}, "owner"),
])
def test_api_rejects_bad_parameters_naming_them(db, admin_user, api_client_for, params,
                                                parameter):
    response = api_client_for(admin_user).get(URL, params)
    assert response.status_code == 400
    body = response.json()
    assert body["message"].startswith(f"{parameter}: ")
    assert body["extra"] == {"parameter": parameter}


@pytest.mark.both_dbs
def test_api_allows_a_full_year_of_366_days(db, admin_user, api_client_for):
    # 2024-03-01 … 2025-02-28 is 365 days; 2024-02-29 … 2025-02-28 is 366 (leap year).
    response = api_client_for(admin_user).get(URL, {"start": "2024-02-29", "end": "2025-02-28"})
    assert response.status_code == 200
    assert date.fromisoformat(response.json()["start"]) == date(2024, 2, 29)


@pytest.mark.both_dbs
def test_api_needs_a_role(db, api_client_for):
    assert api_client_for(None).get(URL).status_code == 401
    assert api_client_for(UserFactory(username="nobody-role")).get(URL).status_code == 403
