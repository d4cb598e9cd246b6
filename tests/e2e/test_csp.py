"""The dashboard works under its Content-Security-Policy: every main page loads in a real
browser with no script, style or image refused, and the interactive parts (htmx, ECharts,
tom-select, the condition builder, the API docs) run."""

import importlib

import pytest
from django.apps import apps as django_apps
from playwright import sync_api

from tests.e2e.test_settings import sign_in
from tests.factories import CustomerFactory, UserFactory

expect = sync_api.expect

pytestmark = pytest.mark.browser

PAGES = ["/", "/customers/", "/today/", "/lifecycle/", "/lifecycle/value/board/",
         "/segments/new/", "/tags/", "/tags/rules/", "/sops/", "/campaigns/", "/campaigns/new/",
         "/outbox/", "/imports/", "/metrics/", "/settings/", "/settings/schedules/",
         "/settings/users/", "/api/docs/"]


def test_no_page_breaks_the_content_security_policy(page, live_server, db):
    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(django_apps, None)
    boss = UserFactory(username="boss", roles=["admin"])
    customer = CustomerFactory(owner=boss, name="林小姐")
    refused = []
    page.on("console", lambda m: refused.append(f"{page.url}: {m.text}")
            if "Content Security Policy" in m.text or "Refused to" in m.text else None)
    sign_in(page, "boss", "/")
    expect(page.locator("h1")).to_be_visible()
    for url in [*PAGES, f"/customers/{customer.pk}/"]:
        response = page.goto(url)
        assert response.status == 200, url
        assert "script-src 'self'" in response.headers["content-security-policy"]
        page.wait_for_load_state("networkidle")
    assert refused == []
    # The scripts ran: the metrics page drew its charts, the API docs rendered Swagger UI.
    page.goto("/metrics/")
    expect(page.locator("canvas").first).to_be_visible()
    page.goto("/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Private-domain CRM API")
    assert refused == []
