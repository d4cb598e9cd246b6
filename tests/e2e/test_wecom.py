"""The WeCom pages in a real browser, against the fake WeCom server: an admin makes a channel QR
code (staff and tags picked in the searchable pickers) and sees the QR image WeCom made; an
operator sees the mass send that waits for their confirmation, checks it after confirming in
"WeCom", and the message is sent."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright import sync_api

from campaigns.models import Message
from campaigns.services import messages_dispatch
from crm.models import Customer
from tagging.models import Tag, TagGroup
from tests.e2e.conftest import SCREENSHOT_DIR
from tests.e2e.test_settings import sign_in
from tests.factories import UserFactory
from tests.wecom.conftest import fake  # noqa: F401  (the fake WeCom server fixture)
from wecom.models import ContactWay, MassSend

expect = sync_api.expect

pytestmark = pytest.mark.browser


def test_an_admin_makes_a_channel_qr_code(page, live_server, fake):  # noqa: F811
    UserFactory(username="boss", roles=["admin"])
    for userid, name in (("zhangsan", "张三"), ("lisi", "李四")):
        fake.add_staff(userid)
        UserFactory(username=userid, first_name=name, roles=["operator"])
    Tag.objects.create(group=TagGroup.objects.create(name="来源"), name="春季海报")
    page.set_viewport_size({"width": 1280, "height": 900})
    sign_in(page, "boss", "/wecom/qr-codes/")
    expect(page.locator("h1")).to_have_text("Channel QR codes")
    page.click("[data-new-way]")
    page.fill("input[name=new_code]", "spring-poster")
    page.fill("input[name=new_name]", "春季海报")
    page.fill("input[name=cost]", "800")
    for name, typed, option in (("staff", "zhang", "张三 (zhangsan)"), ("tags", "春季", "春季海报")):
        page.locator(f"select[name={name}] + .ts-wrapper input").fill(typed)
        expect(page.locator(f"select[name={name}] + .ts-wrapper .option.active")).to_have_text(
            option)
        page.keyboard.press("Enter")
        page.keyboard.press("Escape")
    page.fill("textarea[name=welcome_message]", "{{ name }}，欢迎关注！")
    page.click("#way-form button[value=save]")
    expect(page.locator(".flash")).to_contain_text("saved")
    image = page.locator("img[data-qr]")
    expect(image).to_be_visible()
    # Polled from here: wait_for_function's string predicate is an eval, which the CSP refuses
    # once it has to poll (the image not loaded at the first look).
    deadline = time.monotonic() + 15
    while image.evaluate("img => img.naturalWidth") <= 100:
        assert time.monotonic() < deadline, "the QR code image did not load"
        page.wait_for_timeout(100)
    way = ContactWay.objects.select_related("channel").get()
    assert way.staff == ["zhangsan"] and list(way.tags.values_list("name", flat=True)) == [
        "春季海报"]
    assert fake.contact_ways[way.config_id]["state"] == "spring-poster"
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    page.screenshot(path=str(SCREENSHOT_DIR / "wecom-qr-code.png"), full_page=True)
    page.goto("/wecom/qr-codes/")
    expect(page.locator("tr[data-code='spring-poster']")).to_contain_text("春季海报")


def test_an_operator_confirms_a_mass_send(page, live_server, fake, settings):  # noqa: F811
    settings.OUTREACH_QUIET_HOURS = ""
    fake.add_staff("zhangsan")
    owner = UserFactory(username="zhangsan", first_name="张三", roles=["operator"])
    fake.add_contact("wmLIN", name="林小姐", follow=[{"userid": "zhangsan"}])
    customer = Customer.objects.create(external_id="wmLIN", name="林小姐", owner=owner,
                                       joined_at=timezone.now())
    Message.objects.create(customer=customer, channel="wecom", category="content",
                           content="春茶上新，老客专享价", dedupe_key="e2e-wecom",
                           due_at=timezone.now() - timedelta(minutes=1))
    messages_dispatch()
    page.set_viewport_size({"width": 1280, "height": 900})
    sign_in(page, "zhangsan", "/")
    expect(page.locator("[data-alert=awaiting_confirmation]")).to_contain_text(
        "1 message waits for its sender to confirm it in WeCom")
    page.click("[data-alert=awaiting_confirmation] a")
    expect(page.locator("[data-waiting]")).to_contain_text(
        "1 mass send waits for your confirmation (recipients: 1).")
    page.screenshot(path=str(SCREENSHOT_DIR / "wecom-mass-sends.png"), full_page=True)
    fake.confirm(MassSend.objects.get().msgid)
    page.click("tr[data-status=waiting] button[value=check]")
    expect(page.locator(".flash")).to_contain_text("Checked: Sent.")
    expect(page.locator("tr[data-send]")).to_have_attribute("data-status", "sent")
    assert Message.objects.get().status == "sent"
