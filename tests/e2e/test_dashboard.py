"""The dashboard in a real browser: headless Chromium (Playwright) against a live server.

An operator signs in through the login form, reads the home figures, searches the customer
list, opens a customer and reads the timeline. Screenshots land in $SCREENSHOT_DIR (/tmp).
"""

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright import sync_api

from crm import services
from tests.e2e.conftest import SCREENSHOT_DIR
from tests.factories import PASSWORD, CustomerFactory, UserFactory

expect = sync_api.expect

pytestmark = pytest.mark.browser


@pytest.fixture
def shop(db):
    """Operator 林店长 with three customers, one of them (林小姐) with a history; another
    operator's customer of the same surname must never show up."""
    now = timezone.now()
    operator = UserFactory(username="lin.ops", first_name="林店长", roles=["operator"])
    other = UserFactory(username="zhou.ops", roles=["operator"])
    CustomerFactory(owner=other, name="林先生", external_id="wm-other-lin")

    def at(days_ago: float) -> str:
        return (now - timedelta(days=days_ago)).isoformat()

    services.events_ingest(actor=operator, items=[
        {"customer": "wm-lin", "type": "friend_added", "idempotency_key": "lin-add",
         "occurred_at": at(6), "data": {"name": "林小姐", "city": "杭州", "gender": "female",
                                        "phone": "13811112222", "channel": "store-hz"}},
        {"customer": "wm-chen", "type": "friend_added", "idempotency_key": "chen-add",
         "occurred_at": at(20), "data": {"name": "陈先生", "city": "上海", "gender": "male",
                                         "channel": "live-618"}},
        {"customer": "wm-wu", "type": "friend_added", "idempotency_key": "wu-add",
         "occurred_at": at(2), "data": {"name": "吴女士", "city": "苏州",
                                        "channel": "store-hz"}},
        {"customer": "wm-lin", "type": "group_joined", "idempotency_key": "lin-join",
         "occurred_at": at(5), "data": {"group": "chat-vip", "name": "VIP 福利群"}},
        {"customer": "wm-lin", "type": "moments_interaction", "idempotency_key": "lin-like",
         "occurred_at": at(4), "data": {"post": "新茶上市", "action": "like"}},
        {"customer": "wm-lin", "type": "message_in", "idempotency_key": "lin-msg",
         "occurred_at": at(1.5), "data": {"text": "龙井礼盒还有货吗？"}},
        {"customer": "wm-lin", "type": "message_out", "idempotency_key": "lin-reply",
         "occurred_at": at(1.4), "data": {"text": "有的，今天下单明天发货。"}},
        {"customer": "wm-chen", "type": "friend_deleted", "idempotency_key": "chen-del",
         "occurred_at": at(3)},
    ])
    services.orders_ingest(actor=operator, items=[
        {"customer": "wm-lin", "source": "youzan", "external_id": "yz-1001", "amount": "536.00",
         "placed_at": at(1), "items": [{"sku": "TEA-LJ", "name": "龙井礼盒", "category": "tea",
                                        "quantity": 2, "price": "268.00"}]},
        {"customer": "wm-wu", "source": "store", "external_id": "hz-77", "amount": "88.00",
         "placed_at": at(0.5)},
    ])
    return operator


def shot(page, name: str) -> Path:
    path = SCREENSHOT_DIR / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.mark.django_db(transaction=True)
def test_operator_signs_in_searches_and_reads_a_timeline(page, live_server, shop):
    page.goto("/")
    expect(page).to_have_url(f"{live_server.url}/login/?next=/")
    shot(page, "login")

    page.fill("input[name=username]", "lin.ops")
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")

    expect(page).to_have_url(f"{live_server.url}/")

    def figure(name: str):
        return page.locator(f"[data-figure={name}] .figure-value")

    expect(figure("total")).to_have_text("3")
    expect(figure("new")).to_have_text("3")
    expect(figure("deleted_us")).to_have_text("1")
    expect(figure("orders")).to_have_text("2")
    expect(figure("revenue")).to_contain_text("624.00")
    latest = page.locator(".table-activity tbody tr")
    expect(latest.first).to_contain_text("有的，今天下单明天发货。")   # newest event first
    expect(page.locator(".table-activity")).to_contain_text("龙井礼盒还有货吗？")
    expect(page.locator("body")).not_to_contain_text("林先生")
    shot(page, "home")

    page.click("nav a[href='/customers/']")
    expect(page).to_have_url(f"{live_server.url}/customers/")
    expect(page.locator(".table-customers tbody tr")).to_have_count(3)
    shot(page, "customers")

    page.fill(".filters input[name=q]", "林")
    page.press(".filters input[name=q]", "Enter")
    rows = page.locator(".table-customers tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("林小姐")
    expect(rows.first).to_contain_text("536.00")

    rows.first.locator("a", has_text="林小姐").click()
    expect(page.locator("h1")).to_contain_text("林小姐")
    expect(page.locator(".props")).to_contain_text("13811112222")
    expect(page.locator("#groups .list")).to_contain_text("VIP 福利群")
    expect(page.locator("#orders")).to_contain_text("¥536.00")
    entries = page.locator(".timeline-entry")
    expect(entries).to_have_count(6)
    # Newest first: the order, then the reply we sent, the question, ..., the friend request.
    expect(entries.nth(0)).to_contain_text("龙井礼盒")
    expect(entries.nth(1)).to_contain_text("有的，今天下单明天发货。")
    expect(entries.nth(2)).to_contain_text("龙井礼盒还有货吗？")
    expect(entries.nth(5)).to_have_class("timeline-entry kind-event type-friend_added")
    shot(page, "customer")

    # A note goes in through htmx: the panel is swapped in place, the page is not reloaded.
    page.evaluate("window.__sameDocument = true")
    page.fill("#notes textarea[name=text]", "电话回访：喜欢龙井，下月再联系")
    page.click("#notes button[type=submit]")
    expect(page.locator("#notes li")).to_have_count(1)
    expect(page.locator("#notes li")).to_contain_text("电话回访：喜欢龙井，下月再联系")
    expect(page.locator("#notes li")).to_contain_text("林店长")
    assert page.evaluate("window.__sameDocument") is True
    expect(page.locator("#notes textarea[name=text]")).to_have_value("")

    page.click(".lang-switch button[value=zh-hans]")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    expect(page.locator("h1")).to_contain_text("林小姐")
    shot(page, "customer-zh-hans")

    page.click("form[action='/logout/'] button")
    expect(page).to_have_url(f"{live_server.url}/login/")
    page.goto("/customers/")
    expect(page).to_have_url(f"{live_server.url}/login/?next=/customers/")


@pytest.mark.django_db(transaction=True)
def test_a_big_month_of_revenue_shows_whole_on_a_laptop_screen(page, live_server):
    """¥1,234,567.89 in a month must read in full on a 1280-pixel screen, in both languages —
    not "¥1,234,5…"."""
    operator = UserFactory(username="big.ops", roles=["operator"])
    CustomerFactory(owner=operator, name="大客户", external_id="wm-big")
    services.orders_ingest(actor=operator, items=[
        {"customer": "wm-big", "source": "store", "external_id": "big-1",
         "amount": "1234567.89", "placed_at": timezone.now().isoformat()}])
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto("/login/")
    page.fill("input[name=username]", "big.ops")
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    clipped = "[...document.querySelectorAll('.figure-value')]" \
              ".filter(e => e.scrollWidth > e.clientWidth).map(e => e.textContent)"
    for switch_to, shown in ((None, "1,234,567.89"), ("zh-hans", "1234567.89")):
        if switch_to:
            page.click(f".lang-switch button[value={switch_to}]")
        revenue = page.locator("[data-figure=revenue] .figure-value")
        expect(revenue).to_contain_text(shown)
        assert page.evaluate(clipped) == []
