"""The Metrics page in a real browser: headless Chromium (Playwright) against a live server.

An operator signs in, opens Metrics from the navigation, sets the range to the hand-built data
set's ten days (tests/metrics/handbuilt.py) and the value lifecycle, and reads the funnel and
the revenue section. Screenshots land in $SCREENSHOT_DIR (/tmp).
"""


from pathlib import Path

import pytest
from django.core.cache import cache
from playwright import sync_api

from tests.e2e.conftest import SCREENSHOT_DIR
from tests.factories import PASSWORD, UserFactory
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


DRAWN_PIXELS = """(el) => {
  const canvas = el.querySelector('canvas');
  if (!canvas) return 0;
  const ctx = canvas.getContext('2d');
  const {data} = ctx.getImageData(0, 0, canvas.width, canvas.height);
  let drawn = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) drawn++;
  return drawn;
}"""


@pytest.mark.django_db(transaction=True)
def test_an_admin_sees_the_figures_as_charts_and_downloads_a_table(page, live_server, data):
    UserFactory(username="chief", is_superuser=True, is_staff=True)
    page.goto("/login/?next=/metrics/")
    page.fill("input[name=username]", "chief")
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    page.goto("/metrics/?start=2024-03-01&end=2024-03-10&model=value")
    page.click(".lang-switch button[value=en]")

    # Every chart with data is drawn on a canvas with pixels on it: the day-by-day lines, the
    # revenue waterfall, both funnels, the Sankey of moves, channels and the cohort heatmap.
    for kind in ("daily", "revenue", "funnel", "aipl", "flows", "channels", "cohorts"):
        chart = page.locator(f"[data-source=chart-{kind}]")
        expect(chart).to_have_attribute("data-drawn", "true")
        assert chart.evaluate(DRAWN_PIXELS) > 500, kind
    shot(page, "charts")

    with page.expect_download() as download:
        page.click("[data-export-csv=funnel]")
    assert download.value.suggested_filename == "funnel_2024-03-01_2024-03-10.csv"
    csv = Path(download.value.path()).read_text(encoding="utf-8-sig").splitlines()
    assert csv[0] == "Stage,Customers,Reach,Rate to next,Entered,Median days"
    assert len(csv) == 1 + 5                       # the header and the value model's 5 stages
