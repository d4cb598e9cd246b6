"""The outbox in a real browser: an admin filters the failed messages, ticks one and queues it
again; an operator sees their messages without the retry controls. The page fits a 1280-pixel
window."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright import sync_api

from campaigns.models import Campaign, Message
from tests.e2e.conftest import SCREENSHOT_DIR
from tests.factories import PASSWORD, CustomerFactory, UserFactory

expect = sync_api.expect

pytestmark = pytest.mark.browser

# Does anything stick out of the window or out of the table's scroll box?
OVERFLOW = ("document.documentElement.scrollWidth > window.innerWidth || "
            "[...document.querySelectorAll('.table-wrap')]"
            ".some(e => e.scrollWidth > e.clientWidth)")


@pytest.fixture
def outbox(transactional_db, monkeypatch):
    """An admin, operator 周店长 with a sent and two failed messages (one with a long error and
    long names), another operator's failed message; the dispatcher's wake-up is recorded."""
    kicks = []
    monkeypatch.setattr("campaigns.services._kick_dispatch", lambda: kicks.append(1))
    UserFactory(username="boss.e2e", is_superuser=True, is_staff=True)
    operator = UserFactory(username="zhou.e2e", first_name="周店长", roles=["operator"])
    other = UserFactory(username="qian.e2e", roles=["operator"])
    sale = Campaign.objects.create(name="双十一会员日限时满减活动（第二波提醒）",
                                   condition={"all": []}, template="x", status="sending")
    mine = CustomerFactory(owner=operator, name="周女士")
    long_name = CustomerFactory(owner=operator, name="欧阳" + "长名字" * 12)
    theirs = CustomerFactory(owner=other, name="钱先生")
    now = timezone.now()

    def message(customer, key, **fields):
        return Message.objects.create(customer=customer, category="promotional", campaign=sale,
                                      content="x", dedupe_key=key, **fields)

    rows = {
        "sent": message(mine, "e2e-sent", channel="wecom", status="sent", sent_at=now,
                        due_at=now - timedelta(hours=3)),
        "failed": message(mine, "e2e-failed", channel="sms", status="failed", attempts=3,
                          last_error="SMS gateway: number unreachable",
                          due_at=now - timedelta(hours=1)),
        "long": message(long_name, "e2e-long", channel="manual", status="failed", attempts=5,
                        last_error="webhook answered HTTP 502 Bad Gateway " * 8,
                        due_at=now - timedelta(hours=2)),
        "skipped": message(long_name, "e2e-skipped", channel="webhook", status="skipped",
                           skip_reason="template_error", due_at=now - timedelta(hours=4)),
        "theirs": message(theirs, "e2e-theirs", channel="wecom", status="failed", attempts=3,
                          last_error="timeout", due_at=now - timedelta(hours=1)),
    }
    return {"rows": rows, "kicks": kicks}


def sign_in(page, username: str) -> None:
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto("/login/?next=/outbox/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    expect(page.locator("h1")).to_have_text("Outbox")


def row(page, message):
    return page.locator(f"tr[data-message='{message.pk}']")


@pytest.mark.django_db(transaction=True)
def test_an_admin_retries_a_failed_message(page, live_server, outbox):
    rows = outbox["rows"]
    sign_in(page, "boss.e2e")
    expect(page.locator(".table-outbox tbody tr")).to_have_count(5)
    assert page.evaluate(OVERFLOW) is False
    page.screenshot(path=str(SCREENSHOT_DIR / "outbox-admin.png"), full_page=True)

    page.select_option(".filters select[name=status]", "failed")     # applies at once
    expect(page).to_have_url(re.compile(r"/outbox/\?status=failed"))
    expect(page.locator(".table-outbox tbody tr")).to_have_count(3)
    expect(page.locator(".outbox-tab.active")).to_contain_text("Failed 3")
    assert page.evaluate(OVERFLOW) is False

    row(page, rows["failed"]).locator("input[name=ids]").check()
    page.click("button[name=selected]")
    expect(page.locator(".flash")).to_contain_text("1 failed message queued again.")
    expect(page).to_have_url(re.compile(r"/outbox/\?status=failed"))      # back where it was
    expect(page.locator(".table-outbox tbody tr")).to_have_count(2)
    expect(row(page, rows["failed"])).to_have_count(0)

    page.click(".outbox-tab[data-status=queued]")
    expect(row(page, rows["failed"]).locator(".msg-status")).to_have_text("Queued")
    expect(row(page, rows["failed"])).to_contain_text("—")           # the error cleared
    assert Message.objects.get(pk=rows["long"].pk).status == "failed"
    assert Message.objects.get(pk=rows["sent"].pk).status == "sent"
    assert outbox["kicks"] == [1]


@pytest.mark.django_db(transaction=True)
def test_an_operator_sees_own_messages_without_retry(page, live_server, outbox):
    rows = outbox["rows"]
    sign_in(page, "zhou.e2e")
    expect(page.locator(".table-outbox tbody tr")).to_have_count(4)
    expect(row(page, rows["theirs"])).to_have_count(0)
    expect(page.locator("input[name=ids]")).to_have_count(0)
    expect(page.locator("button[name=selected]")).to_have_count(0)
    expect(page.locator("button[name=all_failed]")).to_have_count(0)
    expect(row(page, rows["skipped"])).to_contain_text("The template failed for this customer")
    assert page.evaluate(OVERFLOW) is False
    page.screenshot(path=str(SCREENSHOT_DIR / "outbox-operator.png"), full_page=True)

    page.click(".lang-switch button[value=zh-hans]")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    expect(page.locator(".table-outbox tbody tr")).to_have_count(4)
    assert page.evaluate(OVERFLOW) is False
