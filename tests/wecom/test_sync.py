"""The WeCom client and the syncs, against the fake WeCom server over real HTTP: the token
cached and refreshed, backoff on 45009, contacts page by page with their cursor, resumable
runs, per-item failures recorded, groups with their members, tags both ways."""

from datetime import UTC, datetime

import pytest
from django.core.management import call_command

from crm.models import Channel, Customer, Event, Group, GroupMembership
from tagging.models import CustomerTag, Tag, TagGroup, TagSource
from tagging.services import customers_tags_change, tag_delete, tag_save
from tests.factories import CustomerFactory
from wecom import sync
from wecom.accounts import staff_users_ensure, system_user
from wecom.client import WeComError, client, connection_state
from wecom.models import SyncRun, TagLink

pytestmark = pytest.mark.django_db


def _calls(fake, path):
    return [c for c in fake.calls if c[0] == path]


# --- The client ------------------------------------------------------------------------------

def test_the_token_is_fetched_once_and_cached(fake):
    fake.add_staff("zhangsan")
    api = client()
    api.get("externalcontact/get_follow_user_list")
    client().get("externalcontact/get_follow_user_list")      # a new client, the same cache
    assert fake.tokens_issued == 1
    assert connection_state()["token_at"]


def test_an_expired_token_is_refreshed_once_and_the_call_repeated(fake):
    fake.add_staff("zhangsan")
    api = client()
    api.get("externalcontact/get_follow_user_list")
    fake.expire_token()
    answer = api.get("externalcontact/get_follow_user_list")
    assert answer["follow_user"] == ["zhangsan"] and fake.tokens_issued == 2


def test_frequency_limits_are_retried_with_backoff(fake):
    fake.add_staff("zhangsan")
    waits = []
    api = client()
    api.sleep = waits.append
    api.backoff_seconds = 1.0
    fake.fail_next("externalcontact/get_follow_user_list", errcode=45009, times=3)
    assert api.get("externalcontact/get_follow_user_list")["follow_user"] == ["zhangsan"]
    assert waits == [1.0, 2.0, 4.0]


def test_a_limit_that_does_not_lift_is_an_error_with_wecoms_message(fake):
    api = client()
    api.max_retries = 2
    fake.fail_next("externalcontact/get_follow_user_list", errcode=45009, times=5)
    with pytest.raises(WeComError) as caught:
        api.get("externalcontact/get_follow_user_list")
    assert caught.value.errcode == 45009
    assert connection_state()["last_error"]["code"] == 45009


def test_a_wrong_secret_is_an_error_not_a_loop(fake, settings):
    settings.WECOM_SECRET = "wrong"
    with pytest.raises(WeComError) as caught:
        client().get("externalcontact/get_follow_user_list")
    assert caught.value.errcode == 40001


# --- Contacts --------------------------------------------------------------------------------

def _two_staff_contacts(fake):
    fake.add_staff("zhangsan", name="张三")
    fake.add_staff("lisi", name="李四")
    group = fake.add_tag_group("会员等级", tags=["金卡", "银卡"])
    gold = group["tag"][0]["id"]
    fake.add_contact("wmA", name="王女士", gender=2, follow=[
        {"userid": "zhangsan", "createtime": 1_700_000_000, "state": "spring", "tag_ids": [gold]},
        {"userid": "lisi", "createtime": 1_700_100_000, "state": "store"}])
    fake.add_contact("wmB", name="赵先生", gender=1, follow=[
        {"userid": "lisi", "createtime": 1_700_200_000, "state": "store"}])
    return gold


def test_contacts_sync_creates_customers_with_owner_channel_joining_time_and_tags(fake):
    _two_staff_contacts(fake)
    call_command("wecom_sync", "--tags")
    call_command("wecom_sync", "--contacts")
    a = Customer.objects.select_related("owner", "channel").get(external_id="wmA")
    # The first staff member who added them owns them; their channel is that add's state.
    assert (a.name, a.gender, a.owner.username, a.channel.code) == (
        "王女士", "female", "zhangsan", "spring")
    assert a.joined_at == datetime.fromtimestamp(1_700_000_000, tz=UTC)
    assert list(a.customer_tags.values_list("tag__name", "source")) == [("金卡", "sync")]
    b = Customer.objects.get(external_id="wmB")
    assert (b.owner.username, b.gender) == ("lisi", "male")
    run = SyncRun.objects.get(kind="contacts")
    assert (run.status, run.created, run.failed) == ("done", 2, 0)


def test_a_second_sync_updates_the_profile_and_keeps_owner_and_channel(fake):
    _two_staff_contacts(fake)
    call_command("wecom_sync", "--contacts")
    fake.add_contact("wmA", name="王丽")
    fake.add_contact("wmB", follow=[{"userid": "zhangsan", "createtime": 1_600_000_000,
                                     "state": "other"}])
    call_command("wecom_sync", "--contacts")
    b = Customer.objects.select_related("owner", "channel").get(external_id="wmB")
    assert Customer.objects.get(external_id="wmA").name == "王丽"
    assert (b.owner.username, b.channel.code) == ("lisi", "store")
    assert Customer.objects.count() == 2
    assert SyncRun.objects.filter(kind="contacts").first().updated == 2


def test_contacts_sync_pages_with_the_cursor_and_reads_every_pair_once(fake):
    fake.generate(contacts=450, staff=3, groups=0, tags=0, seed=3)
    pairs = sum(len(c["follow"]) for c in fake.contacts.values())
    call_command("wecom_sync", "--contacts")
    assert Customer.objects.count() == 450
    pages = _calls(fake, "externalcontact/batch/get_by_user")
    assert len(pages) == -(-pairs // sync.CONTACTS_PER_PAGE)
    assert SyncRun.objects.get(kind="contacts").processed >= 450


def test_a_run_stopped_midway_resumes_from_its_cursor(fake):
    fake.generate(contacts=350, staff=2, groups=0, tags=0, seed=4)
    (run,) = sync.sync_start(kinds=["contacts"], enqueue=False)
    sync.sync_run(run_id=run.pk, max_steps=3)          # the list of staff, then two pages
    run.refresh_from_db()
    assert run.status == "running" and run.state["cursor"]
    assert 0 < Customer.objects.count() < 350
    assert run.percent == 0                            # the first of two staff members
    read = len(_calls(fake, "externalcontact/batch/get_by_user"))
    sync.sync_run(run_id=run.pk)                       # e.g. the sweeper's task
    run.refresh_from_db()
    assert run.status == "done" and Customer.objects.count() == 350 and run.percent == 100
    assert len(_calls(fake, "externalcontact/batch/get_by_user")) - read >= 1
    assert sync.syncs_resume(stale_after_seconds=0) == []


def test_token_expiry_in_the_middle_of_a_sync_costs_nothing(fake):
    fake.generate(contacts=300, staff=2, groups=0, tags=0, seed=5)
    (run,) = sync.sync_start(kinds=["contacts"], enqueue=False)
    sync.sync_run(run_id=run.pk, max_steps=2)
    fake.expire_token()
    sync.sync_run(run_id=run.pk)
    run.refresh_from_db()
    assert (run.status, Customer.objects.count(), fake.tokens_issued) == ("done", 300, 2)


def test_wecom_busy_interrupts_the_run_which_the_sweeper_resumes(fake, settings):
    fake.generate(contacts=250, staff=2, groups=0, tags=0, seed=6)
    (run,) = sync.sync_start(kinds=["contacts"], enqueue=False)
    sync.sync_run(run_id=run.pk, max_steps=2)
    fake.fail_next("externalcontact/batch/get_by_user", errcode=45009, times=10)
    sync.sync_run(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == "running" and "45009" in run.error
    before = Customer.objects.count()
    sync.sync_run(run_id=run.pk)
    run.refresh_from_db()
    assert (run.status, run.error) == ("done", "")
    assert Customer.objects.count() == 250 > before


def test_a_staff_member_wecom_refuses_is_recorded_and_the_others_synced(fake):
    _two_staff_contacts(fake)
    fake.fail_user["lisi"] = 60111
    call_command("wecom_sync", "--contacts")
    run = SyncRun.objects.get(kind="contacts")
    assert run.status == "done" and run.failed == 1
    assert "lisi" in run.failures[0]["item"] and run.failures[0]["code"] == 60111
    # wmA came through zhangsan; wmB only follows lisi.
    assert list(Customer.objects.values_list("external_id", flat=True)) == ["wmA"]


def test_a_second_request_joins_the_open_run(fake):
    fake.add_staff("zhangsan")
    first = sync.sync_start(kinds=["contacts"], enqueue=False)
    again = sync.sync_start(kinds=["contacts"], enqueue=False)
    assert [r.pk for r in first] == [r.pk for r in again]


def test_sync_needs_the_api_settings(settings):
    settings.WECOM_CORP_ID = settings.WECOM_SECRET = ""
    with pytest.raises(sync.SyncDisabled):
        sync.sync_start()


# --- Groups ----------------------------------------------------------------------------------

def test_groups_sync_records_the_group_and_its_customers_joining_and_leaving(fake):
    _two_staff_contacts(fake)
    call_command("wecom_sync", "--contacts")
    fake.add_group("wrVIP", name="VIP 群", owner="zhangsan", members=["wmA", "wmB", "lisi",
                                                                    "wmUNKNOWN"],
                   create_time=1_700_300_000)
    call_command("wecom_sync", "--groups")
    group = Group.objects.select_related("owner").get(chat_id="wrVIP")
    assert (group.name, group.owner.username) == ("VIP 群", "zhangsan")
    assert set(GroupMembership.objects.filter(left_at=None).values_list(
        "customer__external_id", flat=True)) == {"wmA", "wmB"}
    assert Event.objects.filter(type="group_joined").count() == 2

    call_command("wecom_sync", "--groups")            # nothing changed: nothing new
    assert Event.objects.filter(type="group_joined").count() == 2

    fake.groups["wrVIP"]["member_list"] = [m for m in fake.groups["wrVIP"]["member_list"]
                                           if m["userid"] != "wmB"]
    call_command("wecom_sync", "--groups")
    assert list(Event.objects.filter(type="group_left").values_list(
        "customer__external_id", flat=True)) == ["wmB"]
    assert GroupMembership.objects.get(customer__external_id="wmB").left_at is not None


def test_a_group_wecom_refuses_is_recorded_and_the_others_synced(fake):
    fake.add_staff("zhangsan")
    fake.add_group("wrOK", name="ok", owner="zhangsan")
    fake.add_group("wrBAD", name="bad", owner="zhangsan")
    fake.item_failures[("externalcontact/groupchat/get", "wrBAD")] = 90501
    call_command("wecom_sync", "--groups")
    run = SyncRun.objects.get(kind="groups")
    assert (run.status, run.processed, run.failed) == ("done", 1, 1)
    assert list(Group.objects.values_list("chat_id", flat=True)) == ["wrOK"]


# --- Tags both ways --------------------------------------------------------------------------

def test_wecom_tags_arrive_as_tag_groups_and_tags(fake):
    fake.add_tag_group("会员等级", tags=["金卡", "银卡"], order=1)
    call_command("wecom_sync", "--tags")
    group = TagGroup.objects.get(name="会员等级")
    assert sorted(group.tags.values_list("name", flat=True)) == ["金卡", "银卡"]
    assert TagLink.objects.filter(wecom_id__in=[group.wecom_link.wecom_id, *(
        t.wecom_link.wecom_id for t in group.tags.all())]).count() == 3


def test_renames_and_deletions_in_wecom_reach_the_tags_here(fake):
    group = fake.add_tag_group("会员等级", tags=["金卡", "银卡"])
    call_command("wecom_sync", "--tags")
    gold, silver = (t["id"] for t in group["tag"])
    api = client()
    api.post("externalcontact/edit_corp_tag", {"id": gold, "name": "黑金卡"})
    api.post("externalcontact/del_corp_tag", {"tag_id": [silver]})
    counts = sync.tags_pull(api=api)
    assert counts == {"created": 0, "renamed": 1, "deleted": 1}
    assert list(Tag.objects.filter(group__name="会员等级").values_list("name", flat=True)) == [
        "黑金卡"]


def test_tags_made_renamed_and_deleted_here_reach_wecom(fake):
    fake.add_tag_group("会员等级", tags=["金卡"])
    call_command("wecom_sync", "--tags")
    local_group = TagGroup.objects.create(name="兴趣")
    tea = Tag.objects.create(group=local_group, name="茶")
    Tag.objects.create(group=local_group, name="咖啡")
    vip = Tag.objects.create(group=TagGroup.objects.get(name="会员等级"), name="VIP")
    tag_save(tag=Tag.objects.get(name="金卡"), name="金卡会员")
    call_command("wecom_sync", "--tags")
    wecom = {g["group_name"]: sorted(fake.tags[t]["name"] for t in g["tag_ids"])
             for g in fake.tag_groups.values()}
    # Every group goes, the built-in value layers too (operators see them in WeCom).
    assert wecom["会员等级"] == ["VIP", "金卡会员"] and wecom["兴趣"] == ["咖啡", "茶"]
    assert set(wecom) == set(TagGroup.objects.values_list("name", flat=True))
    tag_delete(tag=tea, actor=system_user())
    call_command("wecom_sync", "--tags")
    assert sorted(fake.tags[t]["name"] for g in fake.tag_groups.values()
                  if g["group_name"] == "兴趣" for t in g["tag_ids"]) == ["咖啡"]
    assert TagLink.objects.filter(tag=vip).exists()


def test_tags_made_here_or_built_in_survive_wecoms_deletion_and_are_sent_again(fake):
    local = Tag.objects.create(group=TagGroup.objects.create(name="兴趣"), name="茶")
    builtin = Tag.objects.filter(key__isnull=False).first()
    call_command("wecom_sync", "--tags")
    api = client()
    api.post("externalcontact/del_corp_tag", {"tag_id": [local.wecom_link.wecom_id,
                                                         builtin.wecom_link.wecom_id]})
    call_command("wecom_sync", "--tags")         # WeCom lost them: made there again
    assert Tag.objects.filter(pk__in=[local.pk, builtin.pk]).count() == 2
    names = {t["name"] for t in fake.tags.values()}
    assert {"茶", builtin.name} <= names
    local.refresh_from_db()
    assert local.wecom_link.origin == "here"


def test_customers_tag_changes_here_are_marked_in_wecom_and_not_echoed(fake, admin_user):
    _two_staff_contacts(fake)
    call_command("wecom_sync", "--tags")
    call_command("wecom_sync", "--contacts")        # wmA gets 金卡 from WeCom (source sync)
    silver = Tag.objects.get(name="银卡")
    gold = Tag.objects.get(name="金卡")
    wm_a = Customer.objects.filter(external_id="wmA")
    customers_tags_change(customers=wm_a, add=[silver], remove=[gold], actor=admin_user)
    call_command("wecom_sync", "--tags")
    follow = fake.contacts["wmA"]["follow"]["zhangsan"]
    assert follow["tag_ids"] == [silver.wecom_link.wecom_id]
    marks = _calls(fake, "externalcontact/mark_tag")
    assert len(marks) == 1 and marks[0][2]["userid"] == "zhangsan"
    call_command("wecom_sync", "--tags")             # nothing new to mark
    assert len(_calls(fake, "externalcontact/mark_tag")) == 1


def test_a_customer_wecom_refuses_to_tag_is_recorded_and_passed(fake, admin_user):
    fake.add_staff("zhangsan")
    fake.add_tag_group("兴趣", tags=["茶"])
    call_command("wecom_sync", "--tags")
    staff_users_ensure(["zhangsan"])
    owner = system_user().__class__.objects.get(username="zhangsan")
    a, b = CustomerFactory(external_id="wmGONE", owner=owner), CustomerFactory(
        external_id="wmOK", owner=owner)
    fake.add_contact("wmOK", follow=[{"userid": "zhangsan"}])
    customers_tags_change(customers=Customer.objects.filter(pk__in=[a.pk, b.pk]),
                          add=[Tag.objects.get(name="茶")], remove=[], actor=admin_user)
    call_command("wecom_sync", "--tags")
    run = SyncRun.objects.filter(kind="tags").first()
    assert run.status == "done" and run.failed == 1 and run.failures[0]["item"] == "wmGONE"
    assert fake.contacts["wmOK"]["follow"]["zhangsan"]["tag_ids"]


def test_tags_synced_from_wecom_keep_their_source(fake):
    _two_staff_contacts(fake)
    call_command("wecom_sync", "--tags")
    call_command("wecom_sync", "--contacts")
    assert set(CustomerTag.objects.values_list("source", flat=True)) == {TagSource.SYNC}


def test_the_command_says_what_it_did(fake, capsys):
    _two_staff_contacts(fake)
    call_command("wecom_sync")
    out = capsys.readouterr().out
    assert out.count("\n") >= 3 and Channel.objects.filter(code="spring").exists()
