"""Every WeCom event's effect on the CRM, read back from the database, with the fake WeCom
server answering the API calls the handlers make; the same callback twice has one effect."""

import time

import pytest

from crm.models import Channel, Customer, CustomerNote, Event, Group, GroupMembership
from crm.services import channel_save
from tagging.models import Tag, TagGroup
from tests.factories import CustomerFactory
from tests.wecom.test_callback import post, signed
from wecom import services
from wecom.accounts import staff_users_ensure
from wecom.models import Callback, ContactWay, TagLink
from wecom.sync import tags_pull

pytestmark = pytest.mark.django_db


@pytest.fixture
def deliver(client, fake, django_capture_on_commit_callbacks):
    """POST the event as WeCom would and process it as the task does; returns the row."""
    def send(fields, *, created=None, times=1):
        xml = fake.callback_xml({**fields, "CreateTime": created or int(time.time())})
        request = signed(xml, nonce=f"n{time.monotonic_ns()}")
        for _ in range(times):      # WeCom's retry is the very same request
            with django_capture_on_commit_callbacks(execute=False):
                response = post(client, *request)
            assert response.status_code == 200, response.content
        for row in Callback.objects.filter(status="received"):
            services.callback_process(callback_id=row.pk)
        return Callback.objects.order_by("-pk").first()
    return send


def _added(staff="zhangsan", external="wmNEW", state="spring", code="CODE1"):
    fields = {"Event": "change_external_contact", "ChangeType": "add_external_contact",
              "UserID": staff, "ExternalUserID": external, "State": state}
    if code:
        fields["WelcomeCode"] = code
    return fields


def _qr(fake, *, code="spring", welcome="{{ name }}，欢迎！"):
    fake.add_staff("zhangsan")
    staff_users_ensure(["zhangsan"])
    group = TagGroup.objects.create(name="来源")
    tag = Tag.objects.create(group=group, name="春季活动")
    channel = channel_save(channel=None, code=code, name="春季海报", kind="qr_code")
    way = ContactWay.objects.create(channel=channel, staff=["zhangsan"],
                                    welcome_message=welcome, config_id="cfg1")
    way.tags.set([tag])
    return way, tag


# --- Contacts --------------------------------------------------------------------------------

def test_a_contact_added_through_a_qr_code_gets_channel_tags_and_welcome(fake, deliver):
    way, tag = _qr(fake)
    fake.add_contact("wmNEW", name="林小姐", follow=[{"userid": "zhangsan", "state": "spring"}])
    code = fake.issue_welcome_code("zhangsan", "wmNEW")
    row = deliver(_added(code=code))
    customer = Customer.objects.select_related("owner", "channel").get(external_id="wmNEW")
    assert (customer.owner.username, customer.channel.code) == ("zhangsan", "spring")
    assert list(customer.customer_tags.values_list("tag__name", flat=True)) == ["春季活动"]
    assert Event.objects.get(customer=customer).type == "friend_added"
    (welcome,) = fake.welcome_sent
    assert welcome["welcome_code"] == code
    # The profile is read from WeCom first, so the welcome can say the name.
    assert welcome["text"]["content"] == "林小姐，欢迎！"
    assert customer.name == "林小姐"
    assert row.status == "processed" and row.error


def test_the_same_add_callback_twice_has_one_effect(fake, deliver):
    _qr(fake)
    code = fake.issue_welcome_code("zhangsan", "wmNEW")
    deliver(_added(code=code), times=2)             # WeCom's retry: the same request
    assert Event.objects.count() == 1 and Callback.objects.count() == 1
    assert len(fake.welcome_sent) == 1


def test_a_welcome_code_too_old_is_not_used(fake, deliver):
    _qr(fake)
    row = deliver(_added(), created=int(time.time()) - 60)
    assert fake.welcome_sent == []
    assert row.status == "processed" and Customer.objects.filter(external_id="wmNEW").exists()


def test_no_welcome_without_a_code_or_a_message(fake, deliver):
    _qr(fake, welcome="")
    deliver(_added())
    deliver(_added(external="wmNEW2", code=None))
    assert fake.welcome_sent == []
    assert Customer.objects.count() == 2


def test_an_edited_contact_is_refreshed_from_wecom(fake, deliver):
    fake.add_staff("zhangsan")
    fake.add_tag_group("兴趣", tags=["茶", "咖啡"])
    tags_pull(api=services.client())
    tea, coffee = Tag.objects.get(name="茶"), Tag.objects.get(name="咖啡")
    fake.add_contact("wmE", name="老名字", gender=1, follow=[
        {"userid": "zhangsan", "tag_ids": [tea.wecom_link.wecom_id]}])
    deliver(_added(external="wmE", code=None, state=""))
    customer = Customer.objects.get(external_id="wmE")
    from tagging.services import customers_tags_change
    from wecom.accounts import system_user
    customers_tags_change(customers=Customer.objects.filter(pk=customer.pk), add=[tea],
                          remove=[], actor=system_user(), source="sync")
    fake.add_contact("wmE", name="新名字", gender=2, follow=[
        {"userid": "zhangsan", "tag_ids": [coffee.wecom_link.wecom_id]}])
    row = deliver({"Event": "change_external_contact", "ChangeType": "edit_external_contact",
                   "UserID": "zhangsan", "ExternalUserID": "wmE"})
    customer.refresh_from_db()
    assert (customer.name, customer.gender) == ("新名字", "female")
    assert list(customer.customer_tags.values_list("tag__name", flat=True)) == ["咖啡"]
    assert row.status == "processed"


def test_an_edit_without_the_api_is_noted_not_failed(fake, deliver, settings):
    settings.WECOM_SECRET = ""
    CustomerFactory(external_id="wmE")
    row = deliver({"Event": "change_external_contact", "ChangeType": "edit_external_contact",
                   "UserID": "zhangsan", "ExternalUserID": "wmE"})
    assert row.status == "processed" and "API" in row.error


def test_a_failed_transfer_is_a_note_on_the_customer(fake, deliver, english):
    customer = CustomerFactory(external_id="wmT")
    deliver({"Event": "change_external_contact", "ChangeType": "transfer_fail",
             "UserID": "lisi", "ExternalUserID": "wmT", "FailReason": "customer_refused"})
    note = CustomerNote.objects.get(customer=customer)
    assert "lisi" in note.text and note.author.username == "@wecom"


# --- Groups ----------------------------------------------------------------------------------

def _customers(*ids):
    return [CustomerFactory(external_id=i) for i in ids]


def test_a_new_group_is_read_from_wecom_with_its_members(fake, deliver):
    fake.add_staff("zhangsan")
    _customers("wmA", "wmB")
    fake.add_group("wrNEW", name="新品群", owner="zhangsan", members=["wmA", "wmB"])
    deliver({"Event": "change_external_chat", "ChatId": "wrNEW", "ChangeType": "create"})
    group = Group.objects.get(chat_id="wrNEW")
    assert group.name == "新品群" and group.owner.username == "zhangsan"
    assert GroupMembership.objects.filter(group=group, left_at=None).count() == 2


def test_members_joining_and_leaving_become_group_events(fake, deliver):
    fake.add_staff("zhangsan")
    _customers("wmA", "wmB", "wmC")
    fake.add_group("wrG", name="会员群", owner="zhangsan", members=["wmA"])
    deliver({"Event": "change_external_chat", "ChatId": "wrG", "ChangeType": "create"})
    joined = {"Event": "change_external_chat", "ChatId": "wrG", "ChangeType": "update",
              "UpdateDetail": "add_member", "JoinScene": "3", "MemChangeCnt": "3",
              "MemChangeList": ["wmB", "wmC", "wmSTRANGER"]}
    deliver(joined, times=2)                        # a retry: no second effect
    assert set(GroupMembership.objects.filter(left_at=None).values_list(
        "customer__external_id", flat=True)) == {"wmA", "wmB", "wmC"}
    assert Event.objects.filter(type="group_joined").count() == 3
    deliver({"Event": "change_external_chat", "ChatId": "wrG", "ChangeType": "update",
             "UpdateDetail": "del_member", "QuitScene": "0", "MemChangeList": ["wmB"]})
    assert list(Event.objects.filter(type="group_left").values_list(
        "customer__external_id", flat=True)) == ["wmB"]
    deliver({"Event": "change_external_chat", "ChatId": "wrG", "ChangeType": "dismiss"})
    assert not GroupMembership.objects.filter(left_at=None).exists()
    assert Event.objects.filter(type="group_left").count() == 3


def test_a_join_to_a_group_never_seen_reads_the_group_first(fake, deliver):
    fake.add_staff("zhangsan")
    _customers("wmA")
    fake.add_group("wrLATE", name="迟到的群", owner="zhangsan", members=["wmA"])
    deliver({"Event": "change_external_chat", "ChatId": "wrLATE", "ChangeType": "update",
             "UpdateDetail": "add_member", "MemChangeList": ["wmA"]})
    assert Group.objects.get(chat_id="wrLATE").name == "迟到的群"
    assert GroupMembership.objects.filter(left_at=None).count() == 1


def test_a_renamed_group_is_read_again(fake, deliver):
    fake.add_staff("zhangsan")
    fake.add_group("wrR", name="旧名", owner="zhangsan")
    deliver({"Event": "change_external_chat", "ChatId": "wrR", "ChangeType": "create"})
    fake.groups["wrR"]["name"] = "新名"
    deliver({"Event": "change_external_chat", "ChatId": "wrR", "ChangeType": "update",
             "UpdateDetail": "change_name"})
    assert Group.objects.get(chat_id="wrR").name == "新名"


# --- Tags ------------------------------------------------------------------------------------

def test_a_tag_change_in_wecom_is_read(fake, deliver):
    group = fake.add_tag_group("渠道", tags=["抖音"])
    row = deliver({"Event": "change_external_tag", "Id": group["tag"][0]["id"],
                   "TagType": "tag", "ChangeType": "create"})
    assert Tag.objects.filter(group__name="渠道", name="抖音").exists()
    assert TagLink.objects.filter(wecom_id=group["tag"][0]["id"]).exists()
    assert row.status == "processed"


def test_unknown_events_are_stored_and_noted(fake, deliver):
    row = deliver({"Event": "change_external_contact", "ChangeType": "something_new",
                   "UserID": "zhangsan", "ExternalUserID": "wmX"})
    assert row.status == "processed" and "something_new" in row.error
    assert not Channel.objects.exists() and not Customer.objects.exists()
