"""The dashboard's Metrics page (/metrics/): every role sees it, operators their own customers'
figures, bad input shows the API's message (naming the parameter) with a 400, and the figures
are the API's. Data: tests/metrics/handbuilt.py (R = 2024-03-01 … 03-10)."""

import re
from datetime import timedelta
from html import unescape

import pytest
from django.core.cache import cache
from django.test import Client

from campaigns.models import Enrollment, Sop
from lifecycle.models import StageModel
from metrics.periods import local_today
from tests.factories import UserFactory
from tests.metrics.handbuilt import build, mar

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]

URL = "/metrics/"
RANGE = {"start": "2024-03-01", "end": "2024-03-10"}


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def data(db):
    d = build()
    # A SOP on the value model's intro stage, half held out: c1 (treatment) entered 03-01 and
    # paid on 03-05, within 7 days; c2 (control) never paid. Uplift: 100 % − 0 % = +100 pp.
    value = StageModel.objects.get(key="value")
    d.sop = Sop.objects.create(name="Welcome test", model=value,
                               stage=value.stages.get(key="intro"), holdout_percent=50)
    Enrollment.objects.create(sop=d.sop, customer=d.c[1], entered_at=mar(1, 2))
    Enrollment.objects.create(sop=d.sop, customer=d.c[2], entered_at=mar(2, 11),
                              status=Enrollment.Status.HOLDOUT)
    return d


@pytest.fixture
def browser_for():
    def make(user) -> Client:
        client = Client(HTTP_ACCEPT_LANGUAGE="en")
        if user is not None:
            client.force_login(user)
        return client

    return make


def page(client: Client, status: int = 200, **params) -> str:
    response = client.get(URL, params)
    assert response.status_code == status, response.content.decode()[:2000]
    return response.content.decode()


def text(html: str) -> str:
    """The page's text, tags dropped and whitespace collapsed, entities decoded."""
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


def kpi(html: str, key: str) -> str:
    match = re.search(rf'data-kpi="{key}".*?<div class="figure-value">(.*?)</div>', html, re.S)
    assert match, key
    return unescape(match.group(1))


def section(html: str, name: str) -> str:
    match = re.search(rf'<section class="panel" id="{name}">(.*?)</section>', html, re.S)
    assert match, name
    return match.group(1)


def stage_counts(html: str, name: str) -> list[int]:
    return [int(n.replace(",", "")) for n in
            re.findall(r'<td class="num" data-count>([\d,]+)</td>', section(html, name))]


def test_an_admin_sees_every_section_with_the_hand_computed_figures(data, admin_user,
                                                                    browser_for):
    html = page(browser_for(admin_user), **RANGE, model="value")
    # Seed 002 (test_kpis has the arithmetic): 1 of 4 joined deleted us within 7 days, …
    assert kpi(html, "friend_loss_rate") == "25.0%"
    assert kpi(html, "retention_rate") == "50.0%"
    assert kpi(html, "conversion_rate") == "25.0%"
    assert kpi(html, "fission_multiplier") == "2.00×"         # c3, c4 ÷ referrer c5
    assert kpi(html, "churn_rate") == "50.0%"
    assert kpi(html, "win_back_rate") == "50.0%"
    assert len(re.findall(r'data-kpi="', html)) == 9
    # Every card says what it counts.
    assert ("deleted us (friend_deleted) within 7 days of joining ÷ customers who joined in the "
            "range") in unescape(html)
    # Seed 004: ¥900.00 in R against ¥50.00 in the ten days before.
    revenue = text(section(html, "revenue"))
    assert "¥900.00" in revenue and "¥50.00" in revenue and "+¥850.00" in revenue
    assert "2024-02-20 – 2024-02-29" in revenue
    assert len(re.findall(r'data-factor="', section(html, "revenue"))) == 4
    # The value model's funnel with its stages, AIPL, flows, channels, SOPs, cohorts.
    funnel = text(section(html, "funnel"))
    assert "引入期" in funnel and "流失期" in funnel
    assert stage_counts(html, "aipl") == [3, 1, 2, 1]
    assert "休眠期" in text(section(html, "flows"))          # dormant → growth, a win-back
    channels = text(section(html, "channels"))
    assert "QR A" in channels and "Store" in channels
    sops = section(html, "sops")
    assert re.findall(r'data-sop="(\d+)"', sops) == [str(data.sop.pk)]   # only SOPs with figures
    assert "Welcome test" in sops and "+100.0 pp" in text(sops) and "50% holdout" in text(sops)
    assert "价值生命周期 · 引入期" in text(sops) and "value · intro" not in text(sops)  # names
    assert 'data-cohort="2024-03"' in section(html, "cohorts")
    assert 'name="owner"' in html                             # admins filter by owner
    assert 'style="width: 100.0%' in html                     # bars drawn with CSS widths


def test_an_analyst_sees_the_same_figures_and_the_owner_filter(data, analyst, admin_user,
                                                               browser_for):
    mine = page(browser_for(analyst), **RANGE)
    assert kpi(mine, "friend_loss_rate") == "25.0%"
    assert "¥900.00" in text(section(mine, "revenue"))
    assert 'name="owner"' in mine and '<option value="op-a"' in mine
    assert stage_counts(mine, "aipl") == stage_counts(page(browser_for(admin_user), **RANGE),
                                                      "aipl")


def test_an_operator_sees_only_their_own_customers(data, browser_for):
    a = page(browser_for(data.op_a), **RANGE)
    b = page(browser_for(data.op_b), **RANGE)
    assert "The customers you own." in text(a)
    assert 'name="owner"' not in a                            # no owner filter for operators
    # op-a: c2 c7 awareness, c1 purchase, c5 loyalty; op-b: c4, c3, c6.
    assert stage_counts(a, "aipl") == [2, 0, 1, 1]
    assert stage_counts(b, "aipl") == [1, 1, 1, 0]
    # op-a: orders of c1 and c5 in R; op-b's c3 refunded, c6 bought in the range before.
    assert "¥900.00" in text(section(a, "revenue"))
    revenue_b = text(section(b, "revenue"))
    assert "¥900.00" not in revenue_b and "¥50.00" in revenue_b and "−¥50.00" in revenue_b
    # op-b's two customers who joined in R: c3 (store) and c4 (store).
    assert 'data-channel="store"' in b and 'data-channel="qr-a"' not in b


def test_filters_narrow_the_figures_like_the_api(data, admin_user, browser_for, api_client_for):
    client = browser_for(admin_user)
    html = page(client, **RANGE, channel="store", owner="op-b")
    assert stage_counts(html, "aipl") == [1, 1, 0, 0]         # c4 awareness, c3 interest
    assert '<option value="store" selected>' in html
    assert "No paid orders in these ranges." in text(section(html, "revenue"))  # c3 refunded
    html = page(client, **RANGE, channel="qr-a", owner="op-a")
    api = api_client_for(admin_user).get("/api/v1/metrics/revenue/", {
        **RANGE, "channel": "qr-a", "owner": "op-a"}).json()
    traffic = re.search(r'data-factor="traffic">.*?<td class="num">(\d+)</td>',
                        section(html, "revenue"), re.S).group(1)
    assert (api["revenue"], api["traffic"]) == ("900.00", 3)
    assert f"¥{api['revenue']}" in text(section(html, "revenue")) and traffic == "3"


@pytest.mark.parametrize("params, parameter", [
    ({"start": "2024-02-30"}, "start"),
    ({"start": "yesterday"}, "start"),
    ({"start": "2024-03-10", "end": "2024-03-01"}, "end"),
    ({"model": "nope"}, "model"),
    ({"channel": "nope"}, "channel"),
    ({"owner": "nobody"}, "owner"),
])
def test_bad_input_is_a_400_with_the_api_message(data, admin_user, browser_for, api_client_for,
                                                 params, parameter):
    html = page(browser_for(admin_user), 400, **params)
    endpoint = "stages" if parameter == "model" else "overview"
    body = api_client_for(admin_user).get(f"/api/v1/metrics/{endpoint}/",
                                          {"model": "journey", **params}).json()
    assert body["message"].startswith(f"{parameter}: ")
    alert = re.search(r'<div class="alert alert-error" role="alert" data-error>(.*?)</div>', html,
                      re.S)
    assert alert and unescape(alert.group(1)) == body["message"]
    assert 'id="revenue"' not in html                         # no figures, but the form
    assert f'value="{params.get("start", "")}"' in html


def test_the_default_range_is_the_last_30_days(data, operator, browser_for):
    html = page(browser_for(operator))
    today = local_today()
    assert f'name="start" value="{(today - timedelta(days=29)).isoformat()}"' in html
    assert f'name="end" value="{today.isoformat()}"' in html
    assert '<option value="journey" selected>' in html


def test_empty_states(db, admin_user, browser_for):
    html = text(page(browser_for(admin_user), **RANGE))
    assert kpi(page(browser_for(admin_user), **RANGE), "friend_loss_rate") == "—"
    for message in ("No customers in the private domain in this range.",
                    "No paid orders in these ranges.",
                    "No customer joined in this range.",
                    "No SOP enrolled anyone in this range.",
                    "No customer joined in these months."):
        assert message in html


def test_who_may_open_the_page(data, browser_for):
    response = browser_for(None).get(URL)
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={URL}"
    assert browser_for(UserFactory(username="no-role")).get(URL).status_code == 403


@pytest.mark.parametrize("who", ["admin_user", "analyst", "operator"])
def test_the_nav_links_to_the_page(db, browser_for, request, who):
    client = browser_for(request.getfixturevalue(who))
    home = client.get("/").content.decode()
    assert re.search(r'<a href="/metrics/" class="">Metrics</a>', home)
    here = client.get(URL).content.decode()
    assert re.search(r'<a href="/metrics/" class="active">Metrics</a>', here)
