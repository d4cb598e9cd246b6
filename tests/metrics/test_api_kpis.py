"""The KPI endpoints: DESIGN §4 shapes of funnel and revenue, the 400s, operator scoping and the
cache. Data: tests/metrics/handbuilt.py (R = 2024-03-01 … 03-10)."""

from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache

from crm.models import Customer
from metrics.periods import local_today
from tests.factories import UserFactory
from tests.metrics.handbuilt import build, event, mar, moves, order

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]

RANGE = {"start": "2024-03-01", "end": "2024-03-10"}
PERIOD_KEYS = {"revenue", "traffic", "conversion_rate", "average_order_value",
               "purchase_frequency"}


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def data(db):
    return build()


@pytest.fixture
def get(api_client_for, admin_user):
    def request(path, user=None, **params):
        client = api_client_for(user or admin_user)
        return client.get(f"/api/v1/metrics/{path}/", params)
    return request


def test_funnel_shape(data, get):
    response = get("funnel", model="aipl")
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "aipl"
    assert [(s["stage"], s["count"]) for s in body["stages"]] == [
        ("awareness", 3), ("interest", 1), ("purchase", 2), ("loyalty", 1)]
    assert set(body["stages"][0]) == {"stage", "name", "count", "reach", "rate_to_next"}
    assert body["stages"][0]["rate_to_next"] == 4 / 7
    historical = get("funnel", model="aipl", date="2024-03-04").json()
    assert (historical["date"], historical["source"]) == ("2024-03-04", "rebuilt")
    assert [s["count"] for s in historical["stages"]] == [2, 2, 2, 0]


def test_revenue_shape(data, get):
    body = get("revenue", **RANGE).json()
    assert set(body) >= PERIOD_KEYS
    assert set(body["previous"]) >= PERIOD_KEYS
    assert set(body["decomposition"]) == {"traffic", "conversion_rate", "average_order_value",
                                          "purchase_frequency"}
    assert (body["revenue"], body["average_order_value"]) == ("900.00", "300.00")
    assert isinstance(body["traffic"], int) and isinstance(body["conversion_rate"], float)
    assert isinstance(body["purchase_frequency"], float)
    assert body["previous"]["revenue"] == "50.00"                  # default: 02-20 … 02-29
    parts = [Decimal(v) for v in body["decomposition"].values()]
    assert all(v == v.quantize(Decimal("0.01")) for v in parts)
    assert sum(parts) == Decimal(body["revenue"]) - Decimal(body["previous"]["revenue"])
    # An explicit comparison range.
    body = get("revenue", **RANGE, compare_start="2024-01-01", compare_end="2024-01-05").json()
    assert (body["previous"]["start"], body["method"]) == ("2024-01-01", "shapley")
    assert sum(Decimal(v) for v in body["decomposition"].values()) == Decimal("900.00")


def test_overview(data, get):
    body = get("overview", **RANGE).json()
    assert (body["start"], body["end"]) == ("2024-03-01", "2024-03-10")
    assert body["relationship"]["acquaintance"]["friend_loss_rate"] == 1 / 4
    assert body["relationship"]["interaction"]["retention_rate"] == 1 / 2
    assert body["relationship"]["purchase"]["conversion_rate"] == 1 / 4
    assert body["relationship"]["alliance"]["fission_multiplier"] == 2.0
    assert body["lifecycle"]["churn"]["rate"] == 1 / 2
    assert body["lifecycle"]["win_back"]["rate"] == 1 / 2
    assert len(body["series"]) == 10
    assert body["totals"]["revenue"] == "900.00" and body["totals"]["new_customers"] == 4


def test_stages_flows_and_cohorts(data, get):
    stages = get("stages", model="value", **RANGE).json()
    assert [s["stage"] for s in stages["stages"]] == ["intro", "growth", "mature", "dormant",
                                                      "churn"]
    assert stages["stages"][0]["median_days_in_stage"] == 5.25
    flows = get("flows", model="value", **RANGE).json()
    assert {"from": "dormant", "to": "growth", "count": 1, "win_backs": 1} in flows["flows"]
    cohorts = get("cohorts", start="2024-01-01", end="2024-03-31").json()
    assert [c["cohort"] for c in cohorts["cohorts"]] == ["2024-01", "2024-02", "2024-03"]


def test_default_range_is_the_last_30_days(data, get):
    today = local_today()
    body = get("overview").json()
    assert (body["start"], body["end"]) == ((today - timedelta(days=29)).isoformat(),
                                            today.isoformat())
    assert body["series"][-1]["live"] is True
    body = get("revenue", start=(today - timedelta(days=6)).isoformat()).json()
    assert (body["end"], body["previous"]["end"]) == (
        today.isoformat(), (today - timedelta(days=7)).isoformat())


@pytest.mark.parametrize("path, params, parameter", [
    ("overview", {"start": "2024-02-30"}, "start"),
    ("overview", {"start": "yesterday"}, "start"),
    ("overview", {"start": "2024-03-10", "end": "2024-03-01"}, "end"),
    ("overview", {"start": "2023-01-01", "end": "2024-03-01"}, "end"),
    ("revenue", {**RANGE, "compare_start": "2024-01-01"}, "compare_end"),
    ("revenue", {**RANGE, "compare_start": "2024-01-05", "compare_end": "2024-01-01"},
     "compare_end"),
    ("funnel", {}, "model"),
    ("funnel", {"model": "nope"}, "model"),
    ("funnel", {"model": "aipl", "date": "2999-01-01"}, "date"),
    ("stages", {"model": "nope"}, "model"),
    ("flows", {"model": "value", "channel": "nope"}, "channel"),
    ("cohorts", {"owner": "nobody"}, "owner"),
    ("overview", {"channel": "nope"}, "channel"),
])
def test_bad_input_is_a_400_naming_the_parameter(data, get, path, params, parameter):
    response = get(path, **params)
    assert response.status_code == 400
    body = response.json()
    assert body["message"].startswith(f"{parameter}: ")
    assert body["extra"] == {"parameter": parameter}


def test_a_full_year_is_allowed(data, get):
    assert get("overview", start="2023-03-11", end="2024-03-10").status_code == 200  # 366 days


def test_operators_see_their_own_customers_only(data, get, analyst):
    def funnel(user):
        return [s["count"] for s in get("funnel", user, model="aipl").json()["stages"]]

    # op-a: c2 c7 awareness, c1 purchase, c5 loyalty; op-b: c4, c3, c6.
    assert funnel(data.op_a) == [2, 0, 1, 1]
    assert funnel(data.op_b) == [1, 1, 1, 0]
    assert funnel(analyst) == [3, 1, 2, 1]
    revenue = get("revenue", data.op_a, **RANGE).json()
    # op-a: domain c1 c2 c5, orders of c1 and c5; before: c5 only, who bought nothing in P.
    assert (revenue["revenue"], revenue["traffic"]) == ("900.00", 3)
    assert (revenue["previous"]["revenue"], revenue["previous"]["traffic"]) == ("0.00", 1)
    overview = get("overview", data.op_b, **RANGE).json()
    assert overview["relationship"]["acquaintance"]["joined"] == 2               # c3, c4
    assert overview["totals"]["revenue"] == "0.00"
    # An operator asking for another owner's customers gets nothing of theirs.
    assert get("funnel", data.op_b, model="aipl", owner="op-a").json()["stages"][0]["count"] == 0


def test_roles(data, api_client_for):
    assert api_client_for(None).get("/api/v1/metrics/overview/").status_code == 401
    nobody = UserFactory(username="no-role")
    assert api_client_for(nobody).get("/api/v1/metrics/overview/").status_code == 403


def test_answers_are_cached_per_scope_and_parameters(data, get, django_assert_max_num_queries):
    first = get("overview", **RANGE).json()
    assert first["relationship"]["acquaintance"]["joined"] == 4
    Customer.objects.create(external_id="late", joined_at=mar(5), owner=data.op_a)
    with django_assert_max_num_queries(3):          # the token, the user's role; no metrics
        again = get("overview", **RANGE).json()
    assert again == first
    # Other parameters, another scope: computed afresh.
    assert get("overview", start="2024-03-01", end="2024-03-09").json()[
        "relationship"]["acquaintance"]["joined"] == 5          # c1 … c4 + the late one
    assert get("overview", data.op_a, **RANGE).json()[
        "relationship"]["acquaintance"]["joined"] == 3          # c1 c2 + the late one
    cache.clear()
    assert get("overview", **RANGE).json()["relationship"]["acquaintance"]["joined"] == 5
    get("funnel", model="aipl")
    with django_assert_max_num_queries(4):          # … and the stage model
        assert get("funnel", model="aipl").status_code == 200


def test_the_number_of_queries_does_not_grow_with_the_customers(data, get):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries(path, **params):
        cache.clear()
        with CaptureQueriesContext(connection) as ctx:
            assert get(path, **params).status_code == 200
        return len(ctx.captured_queries)

    paths = [("overview", RANGE), ("stages", {"model": "value", **RANGE}),
             ("flows", {"model": "value", **RANGE}), ("revenue", RANGE),
             ("cohorts", {"start": "2024-01-01", "end": "2024-03-31"}),
             ("funnel", {"model": "aipl"})]
    get("funnel", model="aipl")                     # the token is made on the first request
    before = [queries(path, **params) for path, params in paths]
    for n in range(30):
        extra = Customer.objects.create(external_id=f"more-{n}", joined_at=mar(1 + n % 10),
                                        owner=data.op_a, channel=data.qr)
        event(extra, "message_in", mar(2 + n % 9))
        order(extra, "10.00", mar(3 + n % 8))
        moves(extra, "value", ("intro", mar(1 + n % 10, 12)), ("growth", mar(10, 20)))
    assert [queries(path, **params) for path, params in paths] == before


def test_future_end_is_answered_up_to_today(data, get):
    today = local_today()
    body = get("overview", start=today.isoformat(),
               end=(today + timedelta(days=3)).isoformat()).json()
    assert [d["date"] for d in body["series"]] == [today.isoformat()]
    assert date.fromisoformat(body["end"]) == today + timedelta(days=3)


def test_warming_caches_the_dashboards_default_answers(data, get, analyst,
                                                       django_assert_max_num_queries):
    from django.conf import settings

    from metrics import reports

    get("funnel", model="aipl")                     # the token is made on the first request
    cache.clear()
    # Eight loads, and the workbench's funnel of each other active model (journey, value);
    # channel attribution once per language (SOP performance names nothing in it).
    assert reports.warm() == 8 + 2 + (len(settings.LANGUAGES) - 1)
    for path, params, most in [("overview", {}, 3), ("revenue", {}, 3), ("cohorts", {}, 3),
                               ("channels", {}, 3), ("sops", {}, 3),
                               ("stages", {"model": "journey"}, 4),
                               ("flows", {"model": "journey"}, 4),
                               ("funnel", {"model": "aipl"}, 4),
                               ("funnel", {"model": "value"}, 4)]:
        with django_assert_max_num_queries(most):           # the token, the role (the model)
            assert get(path, **params).status_code == 200, path
    # Analysts share the admins' answers; warming again computes them afresh.
    joined = get("overview", analyst).json()["relationship"]["acquaintance"]["joined"]
    Customer.objects.create(external_id="today", owner=data.op_a)      # joins now
    assert get("overview").json()["relationship"]["acquaintance"]["joined"] == joined
    reports.warm()
    assert get("overview").json()["relationship"]["acquaintance"]["joined"] == joined + 1
    # An operator who asked for metrics lately is warmed too (their own scope).
    get("sops", data.op_a)
    assert reports.warm() == 2 * (8 + 2 + (len(settings.LANGUAGES) - 1))
    with django_assert_max_num_queries(4):
        assert get("flows", data.op_a, model="journey").status_code == 200


def test_warming_computes_the_channel_report_once_and_names_it_in_each_language(
        data, admin_user, monkeypatch):
    from django.utils import translation

    from metrics import attribution, reports

    calls = []
    compute = attribution.channel_attribution
    monkeypatch.setattr(attribution, "channel_attribution",
                        lambda **kwargs: calls.append(1) or compute(**kwargs))
    cache.clear()
    reports.warm(loads=[(reports.channels, {})])
    assert len(calls) == 1                  # one computation for both languages
    names = {}
    for language in ("en", "zh-hans"):
        with translation.override(language):
            answer = reports.channels(admin_user, {})
        names[language] = answer["results"][-1]["name"]
    assert len(calls) == 1                  # both answered from the cache
    assert names == {"en": "No channel", "zh-hans": "无渠道"}


def test_every_report_is_a_plain_function_whose_answer_the_api_returns(data, get, admin_user):
    """The API views, the dashboard and the cache warmer call the same report functions: user
    and parameters in, the answer out — no request object, one parsing, one cache."""
    import json

    from rest_framework.renderers import JSONRenderer

    from core.exceptions import ApplicationError
    from metrics import reports

    for path, report, params in [
            ("overview", reports.overview, RANGE), ("revenue", reports.revenue, RANGE),
            ("stages", reports.stages, {**RANGE, "model": "value"}),
            ("flows", reports.flows, {**RANGE, "model": "value"}),
            ("funnel", reports.funnel, {"model": "aipl"}), ("cohorts", reports.cohorts, RANGE),
            ("channels", reports.channels, RANGE), ("sops", reports.sop_performance, RANGE),
            ("campaigns", reports.campaign_performance, RANGE)]:
        answer = json.loads(JSONRenderer().render(report(admin_user, params)))
        assert answer == get(path, **params).json(), path
    with pytest.raises(ApplicationError, match="^end: 2024-03-01 is before 2024-03-10$"):
        reports.overview(admin_user, {"start": "2024-03-10", "end": "2024-03-01"})


def test_the_current_month_of_every_cohort_is_marked_as_so_far(data, get, admin_user, client):
    cohorts = get("cohorts", **RANGE).json()["cohorts"]
    assert cohorts
    for cohort in cohorts:
        flags = [cell["partial"] for cell in cohort["retention"]]
        assert flags == [False] * (len(flags) - 1) + [True], cohort["cohort"]
    client.force_login(admin_user)
    page = client.get("/metrics/", {**RANGE}, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "* this month so far" in page
