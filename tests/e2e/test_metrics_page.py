"""The Metrics page in a real browser: headless Chromium (Playwright) against a live server.

An operator signs in, opens Metrics from the navigation, sets the range to the hand-built data
set's ten days (tests/metrics/handbuilt.py) and the value lifecycle, and reads the funnel and
the revenue section. Screenshots land in $SCREENSHOT_DIR (/tmp).
"""


import pytest
from django.core.cache import cache
from playwright import sync_api

from tests.e2e.conftest import SCREENSHOT_DIR
from tests.factories import PASSWORD
from tests.metrics.handbuilt import build

expect = sync_api.expect

pytestmark = pytest.mark.browser


@pytest.fixture
def data(transactional_db):
    cache.clear()
    yield build()
    cache.clear()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOT_DIR / f"metrics-{name}.png"), full_page=True)


@pytest.mark.django_db(transaction=True)
def test_an_operator_reads_the_funnel_and_revenue_of_a_range(page, live_server, data):
    page.goto("/login/?next=/")
    page.fill("input[name=username]", "op-a")
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    expect(page).to_have_url(f"{live_server.url}/")
    # The page answers in English for the test; the product's default is Chinese.
    page.click(".lang-switch button[value=en]")

    page.click("nav a[href='/metrics/']")
    expect(page).to_have_url(f"{live_server.url}/metrics/")
    expect(page.locator("nav a[href='/metrics/']")).to_have_class("active")
    expect(page.locator("h1")).to_have_text("Metrics")
    expect(page.locator("[data-kpi]")).to_have_count(9)
    # The last 30 days hold none of the data set's orders.
    expect(page.locator("#revenue")).to_contain_text("No paid orders in these ranges")

    page.fill("input[name=start]", "2024-03-01")
    page.fill("input[name=end]", "2024-03-10")
    page.click(".filters button[type=submit]")
    expect(page).to_have_url(f"{live_server.url}/metrics/?start=2024-03-01&end=2024-03-10"
                             "&channel=&model=journey")
    page.select_option("select[name=model]", "value")      # applies at once (data-autosubmit)
    expect(page).to_have_url(f"{live_server.url}/metrics/?start=2024-03-01&end=2024-03-10"
                             "&channel=&model=value")

    # op-a's customers: c1 c2 c5 c7. Revenue ¥900.00 (c1 100 + 300, c5 500) against ¥0.00.
    revenue = page.locator("#revenue")
    expect(revenue.locator("[data-revenue=current]")).to_have_text("¥900.00")
    expect(revenue.locator("[data-revenue=previous]")).to_have_text("¥0.00")
    expect(revenue.locator("[data-revenue=change]")).to_have_text("+¥900.00")
    expect(revenue.locator("tbody tr")).to_have_count(4)
    # The value lifecycle's funnel at the end of 03-10: c1 c5 mature, c2 c7 churn.
    funnel = page.locator("#funnel")
    expect(funnel.locator("h2")).to_contain_text("价值生命周期")
    expect(funnel.locator("tbody tr")).to_have_count(5)
    expect(funnel.locator("tr[data-stage=mature] [data-count]")).to_have_text("2")
    expect(funnel.locator("tr[data-stage=churn] [data-count]")).to_have_text("2")
    expect(page.locator("#aipl tr[data-stage=awareness] [data-count]")).to_have_text("2")
    expect(page.locator("[data-kpi=friend_loss_rate] .figure-value")).to_have_text("50.0%")
    shot(page, "range")

    page.fill("input[name=start]", "2024-03-10")
    page.fill("input[name=end]", "2024-03-01")
    page.click(".filters button[type=submit]")
    expect(page.locator("[data-error]")).to_have_text("end: 2024-03-01 is before 2024-03-10")
    expect(page.locator("#revenue")).to_have_count(0)
