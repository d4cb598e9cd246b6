"""The settings pages in a real browser: an admin changes a policy value and a job's schedule;
an operator who types /settings/ gets the 403 page."""

import pytest
from django_celery_beat.models import PeriodicTask
from playwright import sync_api

from campaigns import services as campaign_services
from core import services
from tests.e2e.conftest import SCREENSHOT_DIR
from tests.factories import PASSWORD, UserFactory

expect = sync_api.expect

pytestmark = pytest.mark.browser


def sign_in(page, username: str, next_url: str) -> None:
    page.goto(f"/login/?next={next_url}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")


def test_an_admin_changes_the_policy_and_a_schedule(page, live_server, db):
    UserFactory(username="boss", roles=["admin"])
    services.periodic_tasks_sync()
    page.set_viewport_size({"width": 1280, "height": 900})
    sign_in(page, "boss", "/settings/")
    expect(page.locator("h1")).to_have_text("Settings")
    expect(page.locator("[data-quiet]")).to_have_text("22:00 – 08:00")

    # A bad value: the page says why, nothing is saved.
    page.fill("input[name=promo_max_per_month]", "-2")
    page.click("#policy-form button[type=submit]")
    expect(page.locator("[data-form-error]")).to_contain_text("The policy was not saved")
    expect(page.locator("#policy-form .form-error")).to_have_text(
        "Ensure this value is greater than or equal to 0.")
    assert campaign_services.policy().promo_max_per_month == 4

    page.fill("input[name=promo_max_per_month]", "2")
    page.click("#policy-form button[type=submit]")
    expect(page.locator(".flash")).to_contain_text("Outreach policy saved.")
    expect(page.locator("input[name=promo_max_per_month]")).to_have_value("2")
    assert campaign_services.policy().promo_max_per_month == 2
    page.screenshot(path=str(SCREENSHOT_DIR / "settings-policy.png"), full_page=True)

    page.click(".settings-tabs >> text=Schedules")
    row = page.locator("tr[data-job='campaigns-dispatch']")
    expect(row).to_contain_text("Send due messages")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    row.locator("input[name=every]").fill("0")
    row.locator("button[value=save]").click()
    row = page.locator("tr[data-job='campaigns-dispatch']")
    expect(row.locator(".form-error")).to_have_text("Every: must be at least 1 second.")

    row.locator("input[name=every]").fill("30")
    row.locator("input[name=enabled]").uncheck()
    row.locator("button[value=save]").click()
    expect(page.locator(".flash")).to_contain_text("campaigns-dispatch: saved.")
    row = page.locator("tr[data-job='campaigns-dispatch']")
    expect(row.locator("input[name=every]")).to_have_value("30")
    expect(row.locator("[data-customised]")).to_have_text("Changed")
    dispatch = PeriodicTask.objects.select_related("interval").get(name="campaigns-dispatch")
    assert (dispatch.interval.every, dispatch.enabled) == (30, False)
    page.screenshot(path=str(SCREENSHOT_DIR / "settings-schedules.png"), full_page=True)

    row.locator("button[value=reset]").click()
    row = page.locator("tr[data-job='campaigns-dispatch']")
    expect(row.locator("input[name=every]")).to_have_value("15")
    expect(row.locator("input[name=enabled]")).to_be_checked()

    page.click(".settings-tabs >> text=Users and roles")
    expect(page.locator("tr[data-user='boss']")).to_contain_text("you")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    page.screenshot(path=str(SCREENSHOT_DIR / "settings-users.png"), full_page=True)


def test_an_operator_gets_the_403_page_for_settings(page, live_server, db):
    UserFactory(username="op_wang", roles=["operator"])
    sign_in(page, "op_wang", "/")
    expect(page.locator("h1")).to_be_visible()
    response = page.goto("/settings/")
    assert response.status == 403
    expect(page.locator("h1")).to_have_text("You cannot open this page")
    expect(page.locator(".error-page")).to_contain_text("Only admins can open the settings.")
