"""The SOP editor in a real browser: a promotional step at the value model's intro stage is
refused with the guard's reason, shown inline; the admin overrides it and the override shows."""

import importlib

import pytest
from django.apps import apps as django_apps
from playwright import sync_api

from campaigns.models import Sop
from tests.e2e.conftest import SCREENSHOT_DIR
from tests.factories import PASSWORD, UserFactory

expect = sync_api.expect

pytestmark = pytest.mark.browser


@pytest.fixture
def admin(db):
    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(django_apps, None)
    return UserFactory(username="boss", roles=["admin"])


def test_a_promotional_step_at_intro_meets_the_stage_guard(page, live_server, admin):
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto("/login/?next=/sops/new/")
    page.fill("input[name=username]", "boss")
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    expect(page.locator("h1")).to_have_text("New SOP")

    page.fill("input[name=name]", "新人促销")
    page.select_option("select[name=stage]", "value:intro")
    page.fill("input[name=step-0-delay]", "1")
    page.select_option("select[name=step-0-category]", "promotional")
    page.fill("textarea[name=step-0-template]", "{{ name }}，新人券今天到期")
    # The preview follows the typing (no click needed).
    expect(page.locator("[data-preview-content]")).to_contain_text("，新人券今天到期")
    page.click("text=Save SOP")

    expect(page.locator("[data-form-error]")).to_contain_text(
        "promotional messages to customers in value:intro are refused")
    expect(page.locator("input[name=name]")).to_have_value("新人促销")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    page.screenshot(path=str(SCREENSHOT_DIR / "e2e-sop-guard.png"), full_page=True)

    page.check("input[name=override_stage_guard]")
    page.click("text=Save SOP")
    expect(page.locator(".flash")).to_contain_text("SOP “新人促销” saved.")
    expect(page.locator("[data-guard-override]")).to_contain_text("The stage guard is overridden")
    assert Sop.objects.get(name="新人促销").overridden_by == admin
