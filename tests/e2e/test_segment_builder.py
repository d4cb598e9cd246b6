"""The segment builder in a real browser: conditions put together with the mouse, the live
count following each change, saving, and opening the segment as a customer list."""

import importlib
import json

import pytest
from django.apps import apps as django_apps
from django.utils import timezone
from playwright import sync_api

from lifecycle.models import CustomerStage, Stage, StageModel
from tagging.models import Segment
from tests.e2e.conftest import SCREENSHOT_DIR
from tests.factories import PASSWORD, CustomerFactory, UserFactory

expect = sync_api.expect

pytestmark = pytest.mark.browser


@pytest.fixture
def shop(db):
    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(django_apps, None)
    admin = UserFactory(username="boss", roles=["admin"])
    value = StageModel.objects.get(key="value")
    dormant = Stage.objects.get(model=value, key="dormant")
    for index, city in enumerate(["上海", "上海", "上海", "杭州", "杭州"]):
        customer = CustomerFactory(owner=admin, city=city, name=f"{city}客{index}")
        if index in (0, 3):
            CustomerStage.objects.create(customer=customer, model=value, stage=dormant,
                                         entered_at=timezone.now(), source="rule")
    return {"admin": admin, "dormant": dormant}


def count(page):
    return page.locator("[data-preview-count]")


def test_an_admin_builds_a_segment_watches_the_count_and_saves_it(page, live_server, shop):
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto("/login/?next=/segments/new/")
    page.fill("input[name=username]", "boss")
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    expect(page.locator("h1")).to_have_text("New segment")
    expect(page.locator(".cb-empty")).to_have_text("No condition yet: add one.")
    expect(page.locator("[data-preview-error]")).to_contain_text("The condition is empty")

    # City is 上海: three of the five.
    page.click(".cb-actions >> text=+ Condition")
    page.select_option("[data-cb-key='root.0.field']", "city")
    page.fill("[data-cb-key='root.0.value']", "上海")
    page.press("[data-cb-key='root.0.value']", "Tab")
    expect(count(page)).to_have_text("3")

    # …and dormant in the value lifecycle: one of them.
    page.click(".cb-actions >> text=+ Condition")
    page.select_option("[data-cb-key='root.1.field']", "stage")
    page.select_option("[data-cb-key='root.1.p.model']", "value")
    page.select_option("[data-cb-key='root.1.op']", "in")
    page.locator(".cb-leaf").nth(1).locator(".ts-control").click()
    page.locator(".ts-dropdown .option", has_text=shop["dormant"].name).click()
    page.keyboard.press("Escape")
    expect(count(page)).to_have_text("1")

    # "not" on the stage condition: the other two.
    page.check("[data-cb-key='root.1.not']")
    expect(count(page)).to_have_text("2")
    expect(page.locator("#segment-preview")).to_contain_text("上海客1")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    page.screenshot(path=str(SCREENSHOT_DIR / "e2e-segment-builder.png"), full_page=True)

    page.fill("input[name=name]", "上海未沉睡")
    page.click("text=Save as a segment")
    expect(page.locator(".flash")).to_contain_text("Segment “上海未沉睡” saved.")
    segment = Segment.objects.get(name="上海未沉睡")
    assert segment.condition == {"all": [
        {"field": "city", "op": "eq", "value": "上海"},
        {"not": {"field": "stage", "op": "in", "value": ["dormant"], "model": "value"}}]}

    # Reopened, the builder shows the saved tree; JSON editing is one click away.
    expect(page.locator("[data-cb-key='root.1.not']")).to_be_checked()
    expect(count(page)).to_have_text("2")
    page.click("text=Edit as JSON")
    assert json.loads(page.input_value("textarea[name=condition]")) == segment.condition

    page.click("text=Open as customer list")
    rows = page.locator("table.table-customers tbody tr")
    expect(rows).to_have_count(2)


def test_a_campaign_started_from_a_segment_shows_its_progress_until_done(
        page, live_server, shop, settings):
    from campaigns import backends, services

    settings.OUTREACH_QUIET_HOURS = ""           # whatever the hour the suite runs at
    backends.reset_backends()
    segment = Segment.objects.create(name="上海客户", condition={
        "field": "city", "op": "eq", "value": "上海"})
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"/login/?next=/segments/{segment.pk}/")
    page.fill("input[name=username]", "boss")
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    page.click("text=Start a campaign")

    expect(page.locator("h1")).to_have_text("New campaign")
    expect(page.locator("select[name=segment]")).to_have_value(str(segment.pk))
    expect(page.locator("[data-audience-count]")).to_have_text("3")
    page.fill("input[name=name]", "上海双十二")
    page.select_option("select[name=channel]", "console")
    page.fill("textarea[name=template]", "{{ name }}，双十二见 & 满减")
    expect(page.locator("[data-preview-content]")).to_contain_text("，双十二见 & 满减")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    page.screenshot(path=str(SCREENSHOT_DIR / "e2e-campaign-compose.png"), full_page=True)
    page.click("text=Save and start")

    expect(page.locator(".flash")).to_contain_text("Sending started to 3 customers.")
    expect(page.locator("[data-campaign-status]")).to_have_text("Sending")
    # The worker's part, done here: send what is due, then close the finished campaign.
    services.messages_dispatch()
    services.campaigns_finish()
    expect(page.locator("[data-progress-percent]")).to_have_text("100%", timeout=10_000)
    expect(page.locator("[data-campaign-status]")).to_have_text("Done")
    expect(page.locator("[data-result=sent] .figure-value")).to_have_text("3")  # after reload
