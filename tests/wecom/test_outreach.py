"""WeCom as an outreach channel, against the fake server: mass sends chunked at the platform's
limit, messages `submitted` until the staff member confirms, WeCom's per-recipient results
mapped onto the outbox, the daily quota in the frequency guard; group sends and moments; staff
reminders as application messages."""

import itertools
from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns.models import Message, OperatorTask
from campaigns.services import messages_dispatch
from core import access
from crm.models import Customer, Group
from tagging.models import Tag
from tests.factories import UserFactory
from wecom import backends, mass_sends, reminders, selectors
from wecom.accounts import staff_users_ensure
from wecom.models import MassSend, Reminder
from wecom.sync import tags_pull

pytestmark = pytest.mark.django_db
_keys = itertools.count(1)


@pytest.fixture
def staff(fake, settings):
    settings.OUTREACH_QUIET_HOURS = ""
    for userid in ("zhangsan", "lisi"):
        fake.add_staff(userid)
    ids = staff_users_ensure(["zhangsan", "lisi"])
    return {name: Customer.owner.field.related_model.objects.get(pk=pk)
            for name, pk in ids.items()}


def _customers(fake, owner, n, *, follow=True, prefix="wm"):
    made = []
    for _ in range(n):
        ext = f"{prefix}{next(_keys):04d}"
        if follow:
            fake.add_contact(ext, name=ext, follow=[{"userid": owner.username}])
        made.append(Customer.objects.create(external_id=ext, name=ext, owner=owner,
                                            joined_at=timezone.now() - timedelta(days=30)))
    return made


def _queue(customers, content="新品上市", category="content"):
    now = timezone.now()
    return [Message.objects.create(customer=c, channel="wecom", category=category,
                                   content=content, due_at=now - timedelta(minutes=1),
                                   dedupe_key=f"t:{next(_keys)}") for c in customers]


def _statuses():
    return dict(Message.objects.values_list("customer__external_id", "status"))


def test_messages_go_out_as_mass_sends_chunked_at_the_platforms_limit(fake, staff,
                                                                      monkeypatch):
    monkeypatch.setattr(backends, "RECIPIENTS_PER_CALL", 2)
    _queue(_customers(fake, staff["zhangsan"], 5))
    result = messages_dispatch()
    assert result.submitted == 5 and result.sent == 0
    calls = [c for c in fake.calls if c[0] == "externalcontact/add_msg_template"]
    assert [len(c[2]["external_userid"]) for c in calls] == [2, 2, 1]
    assert {c[2]["sender"] for c in calls} == {"zhangsan"}
    assert set(_statuses().values()) == {"submitted"}
    assert MassSend.objects.count() == 3
    assert set(Message.objects.values_list("provider_id", flat=True)) == set(
        MassSend.objects.values_list("msgid", flat=True))


def test_one_mass_send_per_owner_and_text(fake, staff):
    _queue(_customers(fake, staff["zhangsan"], 2), content="A")
    _queue(_customers(fake, staff["zhangsan"], 1), content="B")
    _queue(_customers(fake, staff["lisi"], 2), content="A")
    messages_dispatch()
    sends = sorted((m.sender, m.content, m.recipients) for m in MassSend.objects.all())
    assert sends == [("lisi", "A", 2), ("zhangsan", "A", 2), ("zhangsan", "B", 1)]


def test_confirmed_sends_become_sent_or_skipped_with_wecoms_reason(fake, staff):
    owner = staff["zhangsan"]
    ok, gone, had_one = _customers(fake, owner, 3)
    _queue([ok, gone, had_one])
    messages_dispatch()
    msgid = MassSend.objects.get().msgid
    fake.remove_follow(gone.external_id, "zhangsan")        # deleted us meanwhile
    fake.mark_mass_received(had_one.external_id)             # another corp send today
    mass_sends.mass_sends_poll()
    assert MassSend.objects.get().status == "waiting"      # not confirmed yet
    assert set(_statuses().values()) == {"submitted"}
    fake.confirm(msgid)
    counts = mass_sends.mass_sends_poll()
    assert counts == {"sent": 1}
    rows = {m.customer_id: m for m in Message.objects.all()}
    assert (rows[ok.pk].status, rows[ok.pk].sent_at is not None) == ("sent", True)
    assert (rows[gone.pk].status, rows[gone.pk].skip_reason) == ("skipped", "not_a_friend")
    assert (rows[had_one.pk].status, rows[had_one.pk].skip_reason) == ("skipped",
                                                                       "platform_quota")
    mass = MassSend.objects.get()
    assert mass.results == {"sent": 1, "not_a_friend": 1, "quota": 1}
    assert mass_sends.mass_sends_poll() == {}        # done: read once


def test_recipients_wecom_refuses_at_once_are_skipped(fake, staff):
    friend = _customers(fake, staff["zhangsan"], 1)
    stranger = _customers(fake, staff["zhangsan"], 1, follow=False)
    _queue(friend + stranger)
    result = messages_dispatch()
    assert result.submitted == 1 and result.skipped == {"not_a_friend": 1}
    assert Message.objects.get(customer=stranger[0]).skip_reason == "not_a_friend"


def test_the_daily_quota_holds_back_a_second_send_the_same_day(fake, staff):
    (customer,) = _customers(fake, staff["zhangsan"], 1)
    _queue([customer], content="第一条")
    messages_dispatch()
    _queue([customer], content="第二条")
    result = messages_dispatch()
    assert result.skipped == {"platform_quota": 1}
    assert len([c for c in fake.calls if c[0] == "externalcontact/add_msg_template"]) == 1


def test_a_quota_of_two_lets_the_second_through(fake, staff, settings):
    settings.WECOM_MASS_SEND_DAILY_QUOTA = 2
    (customer,) = _customers(fake, staff["zhangsan"], 1)
    _queue([customer], content="第一条")
    _queue([customer], content="第二条")
    assert messages_dispatch().submitted == 2


def test_wecom_busy_queues_the_messages_again(fake, staff, settings):
    settings.WECOM_BACKOFF_SECONDS = 0
    _queue(_customers(fake, staff["zhangsan"], 2))
    fake.fail_next("externalcontact/add_msg_template", errcode=45009, times=10)
    result = messages_dispatch(max_batches=1)
    assert result.retried == 2 and set(_statuses().values()) == {"queued"}


def test_a_send_never_confirmed_fails_its_messages(fake, staff, settings):
    _queue(_customers(fake, staff["zhangsan"], 2))
    messages_dispatch()
    MassSend.objects.update(created_at=timezone.now() - timedelta(
        days=settings.WECOM_CONFIRM_DAYS, minutes=1))
    mass_sends.mass_sends_poll()
    assert MassSend.objects.get().status == "expired"
    assert set(_statuses().values()) == {"failed"}
    assert "confirmed" in Message.objects.first().last_error


def test_operators_see_what_waits_for_their_confirmation(fake, staff):
    _queue(_customers(fake, staff["zhangsan"], 3))
    messages_dispatch()
    assert selectors.waiting_summary(staff["zhangsan"]) == {"sends": 1, "recipients": 3}
    assert selectors.waiting_summary(staff["lisi"]) == {"sends": 0, "recipients": None}
    assert selectors.mass_sends_for(staff["lisi"]).count() == 0


def test_the_sender_is_reminded_until_they_have_sent(fake, staff):
    from core.exceptions import ApplicationError

    _queue(_customers(fake, staff["zhangsan"], 1))
    messages_dispatch()
    mass = MassSend.objects.get()
    mass_sends.remind(mass=mass)
    assert fake.reminded == [mass.msgid]
    fake.confirm(mass.msgid)
    with pytest.raises(ApplicationError, match="WeCom refused the reminder"):
        mass_sends.remind(mass=mass)


# --- Group sends and moments -----------------------------------------------------------------

def test_a_group_send_goes_to_the_senders_groups_and_reports_back(fake, staff):
    owner = staff["zhangsan"]
    fake.add_group("wrA", name="A", owner="zhangsan")
    fake.add_group("wrB", name="B", owner="lisi")
    Group.objects.create(chat_id="wrA", name="A", owner=owner)
    Group.objects.create(chat_id="wrB", name="B", owner=staff["lisi"])
    mass = mass_sends.group_send_create(actor=owner, sender="ignored for operators",
                                        chat_ids=["wrA", "wrB"], content="群公告")
    assert (mass.kind, mass.sender, mass.targets) == ("group", "zhangsan", ["wrA"])
    fake.confirm(mass.msgid)
    mass = mass_sends.mass_send_poll(mass=mass)
    assert (mass.status, mass.results) == ("sent", {"sent": 1})


def test_a_moment_is_posted_for_customers_with_chosen_tags(fake, staff, admin_user):
    fake.add_tag_group("兴趣", tags=["茶"])
    tags_pull(api=mass_sends.client())
    tea = Tag.objects.get(name="茶")
    mass = mass_sends.moment_create(actor=admin_user, senders=["zhangsan", "lisi"], tags=[tea],
                                    content="春茶上新")
    body = fake.moments[mass.msgid]
    assert body["visible_range"]["sender_list"]["user_list"] == ["lisi", "zhangsan"]
    assert body["visible_range"]["external_contact_list"]["tag_list"] == [
        tea.wecom_link.wecom_id]
    mass = mass_sends.mass_send_poll(mass=mass)
    assert mass.status == "sent" and mass.results["moment_id"]


def test_a_moment_for_tags_wecom_does_not_know_is_refused(fake, staff, admin_user):
    from core.exceptions import ApplicationError
    from tagging.models import TagGroup

    local = Tag.objects.create(group=TagGroup.objects.create(name="本地"), name="只在这里")
    with pytest.raises(ApplicationError, match="tag"):
        mass_sends.moment_create(actor=admin_user, senders=["zhangsan"], tags=[local],
                                 content="x")


# --- Reminders -------------------------------------------------------------------------------

def _task(user, title, *, due=None, kind="follow_up"):
    return OperatorTask.objects.create(assignee=user, kind=kind, title=title,
                                       due_at=due or timezone.now() - timedelta(minutes=5),
                                       dedupe_key=f"task:{next(_keys)}")


def test_due_todos_reach_each_staff_member_once_in_one_message(fake, staff, settings):
    settings.WECOM_STAFF_QUIET_HOURS = ""
    _task(staff["zhangsan"], "回访王女士")
    _task(staff["zhangsan"], "流失预警：赵先生", kind="churn_warning")
    _task(staff["lisi"], "SOP 步骤已暂停", kind="alert")
    _task(staff["lisi"], "明天再说", due=timezone.now() + timedelta(days=1))
    counts = reminders.reminders_send()
    assert counts == {"people": 2, "tasks": 3, "unknown": 0}
    by_user = {m["touser"]: m["text"]["content"] for m in fake.app_messages}
    assert set(by_user) == {"zhangsan", "lisi"}
    assert "回访王女士" in by_user["zhangsan"] and "流失预警：赵先生" in by_user["zhangsan"]
    assert all(m["agentid"] == "1000002" for m in fake.app_messages)
    assert reminders.reminders_send() == {"people": 0, "tasks": 0, "unknown": 0}
    assert len(fake.app_messages) == 2


def test_no_reminders_in_the_staffs_quiet_hours(fake, staff, settings):
    settings.WECOM_STAFF_QUIET_HOURS = "00:00-23:59"
    _task(staff["zhangsan"], "回访")
    assert reminders.reminders_send() == {"quiet": 1}
    assert fake.app_messages == [] and not Reminder.objects.exists()


def test_a_staff_member_wecom_does_not_know_is_recorded_not_retried(fake, staff, settings):
    settings.WECOM_STAFF_QUIET_HOURS = ""
    outsider = UserFactory(username="not_in_wecom", roles=[access.OPERATOR])
    _task(outsider, "回访")
    assert reminders.reminders_send()["unknown"] == 1
    assert Reminder.objects.get().delivered is False
    assert reminders.reminders_send()["tasks"] == 0


def test_reminders_are_off_without_an_agent(fake, staff, settings):
    settings.WECOM_AGENT_ID = ""
    _task(staff["zhangsan"], "回访")
    assert reminders.reminders_send() == {}
