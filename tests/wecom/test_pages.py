"""The WeCom pages: Settings › WeCom (connection, syncs, sync now), channel QR codes (made in
WeCom, image shown and downloaded), mass sends (what waits for the operator's confirmation,
group sends and moments); invisible while WeCom is not configured; roles checked."""

from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.models import Message
from campaigns.services import messages_dispatch
from crm.models import Channel, Customer
from tagging.models import Tag, TagGroup
from tests.factories import UserFactory
from wecom.accounts import staff_users_ensure
from wecom.models import ContactWay, MassSend, SyncRun

pytestmark = pytest.mark.django_db
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def _get(client, url, **extra):
    return client.get(url, HTTP_ACCEPT_LANGUAGE="en", **extra)


def _post(client, url, data):
    return client.post(url, data, HTTP_ACCEPT_LANGUAGE="en")


@pytest.mark.parametrize("url", ["/settings/wecom/", "/wecom/qr-codes/", "/wecom/mass-sends/"])
def test_pages_do_not_exist_without_wecom(admin_client, settings, url):
    settings.WECOM_CORP_ID = settings.WECOM_SECRET = settings.WECOM_TOKEN = ""
    assert _get(admin_client, url).status_code == 404
    home = _get(admin_client, "/settings/").content.decode()
    assert "/settings/wecom/" not in home and "/wecom/mass-sends/" not in home


def test_settings_page_shows_the_connection_and_starts_a_sync(admin_client, fake,
                                                              django_capture_on_commit_callbacks):
    fake.add_staff("zhangsan")
    page = _get(admin_client, "/settings/wecom/").content.decode()
    assert "Not configured" not in page and "/wecom/callback/" in page
    assert "No sync has run yet." in page
    with django_capture_on_commit_callbacks(execute=False) as enqueued:
        response = _post(admin_client, "/settings/wecom/", {"kind": "contacts"})
    assert response.status_code == 302 and len(enqueued) == 1
    run = SyncRun.objects.get()
    assert (run.kind, run.trigger, run.status) == ("contacts", "dashboard", "queued")
    fragment = _get(admin_client, "/settings/wecom/runs/").content.decode()
    assert 'hx-trigger="every 2s"' in fragment and 'data-status="queued"' in fragment


def test_the_sync_buttons_read_as_sentences(admin_client, fake):
    page = _get(admin_client, "/settings/wecom/").content.decode()
    for label in ("Sync contacts", "Sync customer groups", "Sync tags", "Sync everything"):
        assert f">{label}</button>" in page
    assert "Sync Contacts" not in page and "Sync Customer groups" not in page


def test_settings_page_reports_wecoms_last_error(admin_client, fake, settings):
    from wecom.client import WeComError, client

    settings.WECOM_SECRET = "wrong"
    with pytest.raises(WeComError):
        client().get("externalcontact/get_follow_user_list")
    page = _get(admin_client, "/settings/wecom/").content.decode()
    assert "40001" in page and "data-wecom-error" in page


@pytest.mark.parametrize("url", ["/settings/wecom/", "/wecom/qr-codes/", "/wecom/qr-codes/new/"])
def test_operators_may_not_manage_the_connection_or_qr_codes(client, fake, operator, url):
    client.force_login(operator)
    assert _get(client, url).status_code == 403


def test_analysts_see_no_mass_sends(client, fake, analyst):
    client.force_login(analyst)
    assert _get(client, "/wecom/mass-sends/").status_code == 403


def test_an_admin_makes_a_qr_code_and_downloads_it(admin_client, fake):
    fake.add_staff("zhangsan")
    staff_users_ensure(["zhangsan"])
    tag = Tag.objects.create(group=TagGroup.objects.create(name="来源"), name="海报")
    response = _post(admin_client, "/wecom/qr-codes/new/", {
        "new_code": "poster-2026", "new_name": "春季海报", "cost": "500", "staff": ["zhangsan"],
        "skip_verify": "on", "tags": [str(tag.pk)], "welcome_message": "{{ name }}，你好"})
    assert response.status_code == 302, response.content.decode()
    way = ContactWay.objects.select_related("channel").get()
    assert (way.channel.code, way.channel.kind, str(way.channel.cost)) == (
        "poster-2026", "qr_code", "500.00")
    config = fake.contact_ways[way.config_id]
    assert (config["state"], config["user"], config["type"]) == ("poster-2026", ["zhangsan"], 1)
    assert bytes(way.qr_code).startswith(PNG)
    assert list(way.tags.all()) == [tag] and way.welcome_message == "{{ name }}，你好"
    page = _get(admin_client, f"/wecom/qr-codes/{way.pk}/").content.decode()
    assert f"/wecom/qr-codes/{way.pk}/qr.png" in page and "海报" in page
    image = _get(admin_client, f"/wecom/qr-codes/{way.pk}/qr.png", data={"download": "1"})
    assert image["Content-Type"] == "image/png" and image.content.startswith(PNG)
    assert "attachment" in image["Content-Disposition"]
    listing = _get(admin_client, "/wecom/qr-codes/").content.decode()
    assert "春季海报" in listing and "poster-2026" in listing


def test_a_qr_code_wecom_refuses_is_a_400_with_its_message(admin_client, fake):
    staff_users_ensure(["ghost"])             # known here, not a WeCom staff member
    response = _post(admin_client, "/wecom/qr-codes/new/", {
        "new_code": "x1", "new_name": "X", "staff": ["ghost"]})
    assert response.status_code == 400
    assert "WeCom refused the QR code" in response.content.decode()
    assert not ContactWay.objects.exists()


def test_a_state_longer_than_wecom_takes_is_refused(admin_client, fake):
    staff_users_ensure(["zhangsan"])
    channel = Channel.objects.create(code="c" * 40, name="long")
    response = _post(admin_client, "/wecom/qr-codes/new/", {
        "channel": channel.pk, "staff": ["zhangsan"]})
    assert response.status_code == 400 and "at most 30" in response.content.decode()


def test_editing_and_deleting_a_qr_code(admin_client, fake):
    for userid in ("zhangsan", "lisi"):
        fake.add_staff(userid)
    staff_users_ensure(["zhangsan", "lisi"])
    _post(admin_client, "/wecom/qr-codes/new/", {"new_code": "store", "new_name": "门店",
                                                 "staff": ["zhangsan"]})
    way = ContactWay.objects.get()
    response = _post(admin_client, f"/wecom/qr-codes/{way.pk}/", {
        "channel": way.channel_id, "staff": ["zhangsan", "lisi"], "welcome_message": "欢迎"})
    assert response.status_code == 302
    assert fake.contact_ways[way.config_id]["user"] == ["zhangsan", "lisi"]
    response = _post(admin_client, f"/wecom/qr-codes/{way.pk}/", {"action": "delete"})
    assert response.status_code == 302 and not ContactWay.objects.exists()
    assert way.config_id not in fake.contact_ways
    assert Channel.objects.filter(code="store").exists()


def test_the_operator_sees_their_sends_waiting_for_confirmation(client, fake, settings):
    settings.OUTREACH_QUIET_HOURS = ""
    fake.add_staff("zhangsan")
    staff_users_ensure(["zhangsan"])
    owner = Customer.owner.field.related_model.objects.get(username="zhangsan")
    for i in range(2):
        fake.add_contact(f"wm{i}", follow=[{"userid": "zhangsan"}])
        customer = Customer.objects.create(external_id=f"wm{i}", owner=owner,
                                           joined_at=timezone.now())
        Message.objects.create(customer=customer, channel="wecom", category="content",
                               content="上新", due_at=timezone.now() - timedelta(minutes=1),
                               dedupe_key=f"p{i}")
    messages_dispatch()
    client.force_login(owner)
    page = _get(client, "/wecom/mass-sends/").content.decode()
    assert "1 mass send waits for your confirmation (recipients: 2)." in page
    assert 'data-status="waiting"' in page
    home = _get(client, "/").content.decode()
    assert 'data-alert="awaiting_confirmation"' in home
    assert "2 messages wait for their senders to confirm them in WeCom" in home
    mass = MassSend.objects.get()
    fake.confirm(mass.msgid)
    response = _post(client, "/wecom/mass-sends/", {"action": "check", "send": mass.pk})
    assert response.status_code == 302
    assert set(Message.objects.values_list("status", flat=True)) == {"sent"}
    other = UserFactory(roles=["operator"])
    client.force_login(other)
    assert 'data-send=' not in _get(client, "/wecom/mass-sends/").content.decode()
    response = _post(client, "/wecom/mass-sends/", {"action": "remind", "send": mass.pk})
    assert response.status_code == 404


def test_a_group_send_from_the_page(client, fake):
    fake.add_staff("zhangsan")
    staff_users_ensure(["zhangsan"])
    owner = Customer.owner.field.related_model.objects.get(username="zhangsan")
    owner.groups.add(*__import__("django.contrib.auth.models", fromlist=["Group"]).Group
                     .objects.filter(name="operator"))
    from crm.models import Group

    fake.add_group("wrA", name="A 群", owner="zhangsan")
    Group.objects.create(chat_id="wrA", name="A 群", owner=owner)
    client.force_login(owner)
    page = _get(client, "/wecom/mass-sends/").content.decode()
    assert "A 群" in page
    response = _post(client, "/wecom/mass-sends/", {"action": "group", "groups": ["wrA"],
                                                    "content": "今晚直播"})
    assert response.status_code == 302
    mass = MassSend.objects.get()
    assert (mass.kind, mass.sender, mass.targets) == ("group", "zhangsan", ["wrA"])
    response = _post(client, "/wecom/mass-sends/", {"action": "group", "groups": ["wrA"],
                                                    "content": ""})
    assert response.status_code == 400


def test_the_navigation_shows_wecom_when_configured(client, fake, operator):
    client.force_login(operator)
    assert "/wecom/mass-sends/" in _get(client, "/").content.decode()
