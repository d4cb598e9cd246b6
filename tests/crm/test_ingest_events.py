"""POST /api/v1/events/: one event or a batch, stored once per idempotency key, with effects."""

import json
from datetime import datetime, timedelta

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from crm.models import Channel, Customer, Event, Group, GroupMembership
from tests.factories import CustomerFactory, EventFactory, UserFactory
from tests.threads import run_at_once

pytestmark = pytest.mark.django_db

URL = "/api/v1/events/"
REPORT_KEYS = {"accepted", "duplicates", "rejected"}


def at(day: int, hour: int = 9) -> str:
    """An ISO 8601 time in January 2026, China time."""
    return f"2026-01-{day:02d}T{hour:02d}:00:00+08:00"


def when(day: int, hour: int = 9) -> datetime:
    return parse_datetime(at(day, hour))


def post(client, body):
    return client.post(URL, body, format="json")


def event(customer, type_="message_in", key=None, **extra):
    ext = customer if isinstance(customer, str) else customer.external_id
    return {"customer": ext, "type": type_, "idempotency_key": key or f"{ext}-{type_}",
            **extra}


@pytest.fixture
def client(operator, api_client_for):
    return api_client_for(operator)


@pytest.fixture
def mine(operator):
    return CustomerFactory(external_id="wm-mine", owner=operator)


def rejection_for(response, index=0):
    rejected = {r["index"]: r["message"] for r in response.json()["rejected"]}
    return rejected[index]


# --- Shape and idempotency ----------------------------------------------------------------

def test_single_event_is_stored_and_reported(client, mine):
    response = post(client, event(mine, key="k1", occurred_at=at(3), data={"text": "hi"}))

    assert response.status_code == 200, response.json()
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    stored = Event.objects.get(idempotency_key="k1")
    assert (stored.customer, stored.type, stored.data) == (mine, "message_in", {"text": "hi"})
    assert stored.occurred_at == when(3)


def test_list_of_events_is_stored(client, mine):
    response = post(client, [event(mine, key=f"k{n}") for n in range(3)])

    assert response.status_code == 200
    assert response.json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    assert Event.objects.filter(customer=mine).count() == 3


def test_occurred_at_defaults_to_now(client, mine):
    post(client, event(mine, key="now"))
    stored = Event.objects.get(idempotency_key="now")
    assert abs(stored.occurred_at - stored.received_at) < timedelta(seconds=5)


def test_repeated_key_within_a_batch_is_stored_once(client, mine):
    response = post(client, [event(mine, key="same"), event(mine, key="same"),
                             event(mine, key="other")])

    assert response.json() == {"accepted": 2, "duplicates": 1, "rejected": []}
    assert Event.objects.filter(idempotency_key="same").count() == 1


def test_repeated_key_across_requests_is_a_duplicate(client, mine):
    post(client, [event(mine, key="a"), event(mine, key="b")])
    response = post(client, [event(mine, key="a"), event(mine, key="b"), event(mine, key="c")])

    assert response.status_code == 200
    assert response.json() == {"accepted": 1, "duplicates": 2, "rejected": []}
    assert Event.objects.count() == 3


def test_a_resent_single_event_is_a_200_duplicate(client, mine):
    post(client, event(mine, key="once"))
    response = post(client, event(mine, key="once"))

    assert response.status_code == 200
    assert response.json() == {"accepted": 0, "duplicates": 1, "rejected": []}


def test_valid_items_are_stored_even_when_others_are_rejected(client, mine):
    response = post(client, [event(mine, key="ok"), event("nobody", key="bad")])

    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["duplicates"]) == (1, 0)
    assert [r["index"] for r in body["rejected"]] == [1]
    assert Event.objects.filter(idempotency_key="ok").exists()


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_posts_of_the_same_keys_store_each_key_once(api_client_for):
    owner = UserFactory(username="racer", roles=["operator"])
    customer = CustomerFactory(external_id="wm-race", owner=owner)
    keys = [f"race-{n}" for n in range(200)]
    body = [event(customer, key=k, occurred_at=at(1 + n % 20)) for n, k in enumerate(keys)]
    clients = [api_client_for(owner) for _ in range(2)]

    def send(client):
        response = post(client, body)
        return response.status_code, response.json()

    reports = run_at_once(*[lambda c=c: send(c) for c in clients])

    assert [status for status, _r in reports] == [200, 200]
    assert sum(r["accepted"] for _s, r in reports) == len(keys)
    assert sum(r["duplicates"] for _s, r in reports) == len(keys)
    assert Event.objects.filter(idempotency_key__in=keys).count() == len(keys)
    customer.refresh_from_db()
    assert customer.last_active_at == when(20)


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_an_ingest_does_not_wait_for_a_worker_writing_rows_that_point_at_the_customer(
        api_client_for):
    """A stage evaluation or an enrolment holds the foreign-key lock (FOR KEY SHARE) of every
    customer it writes rows for until it commits, seconds later under load. Ingest's own row
    lock must not conflict with it: with FOR UPDATE the two waited on each other and
    deadlocked at 1,000 events/s (bench/soak.py)."""
    import threading
    import time

    from django.db import connection, transaction

    from campaigns.models import Message

    owner = UserFactory(username="busy", roles=["operator"])
    customer = CustomerFactory(external_id="wm-busy", owner=owner)
    holding, release = threading.Event(), threading.Event()

    def worker():
        try:
            with transaction.atomic():
                # Inserting a row that references the customer takes FOR KEY SHARE on it.
                Message.objects.create(customer=customer, channel="wecom", category="service",
                                       dedupe_key="busy:1", due_at=timezone.now())
                with connection.cursor() as cursor:
                    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                holding.set()
                release.wait(30)
        finally:
            connection.close()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        response = post(api_client_for(owner), [event(customer, key="busy-1",
                                                      occurred_at=at(3))])
        waited = time.monotonic() - started
    finally:
        release.set()
        thread.join(30)

    assert response.status_code == 200 and response.json()["accepted"] == 1
    assert waited < 5, f"the ingest waited {waited:.1f} s for the worker's transaction"
    customer.refresh_from_db()
    assert customer.last_active_at == when(3)


# --- Per-item rejections ------------------------------------------------------------------

@pytest.mark.parametrize(("item", "field"), [
    ({"customer": "nobody", "type": "message_in", "idempotency_key": "x"}, "customer"),
    ({"customer": "wm-mine", "type": "poke", "idempotency_key": "x"}, "type"),
    ({"customer": "wm-mine", "type": "message_in", "idempotency_key": "x",
      "occurred_at": "yesterday"}, "occurred_at"),
    ({"customer": "wm-mine", "type": "message_in", "idempotency_key": "x",
      "occurred_at": "2026-02-30T10:00:00"}, "occurred_at"),
    ({"customer": "wm-mine", "type": "message_in", "idempotency_key": "x",
      "occurred_at": 1767225600}, "occurred_at"),
    ({"customer": "wm-mine", "type": "message_in"}, "idempotency_key"),
    ({"customer": "wm-mine", "type": "message_in", "idempotency_key": "  "}, "idempotency_key"),
    ({"customer": "wm-mine", "type": "message_in", "idempotency_key": "x",
      "data": ["not", "an", "object"]}, "data"),
    ({"customer": "wm-mine", "type": "message_in", "idempotency_key": "x", "data": "text"},
     "data"),
    ({"customer": "wm-mine", "type": "group_joined", "idempotency_key": "x"}, "data.group"),
    ({"customer": "wm-mine", "type": "group_left", "idempotency_key": "x",
      "data": {"name": "VIP"}}, "data.group"),
    ({"customer": "wm-mine", "type": "referral", "idempotency_key": "x"}, "data.referred"),
    ({"type": "message_in", "idempotency_key": "x"}, "customer"),
    ({"customer": "wm-mine", "idempotency_key": "x"}, "type"),
    ({"customer": "wm-mine", "type": "friend_added", "idempotency_key": "x",
      "data": {"gender": "robot"}}, "data.gender"),
])
def test_an_invalid_item_is_rejected_with_its_index_and_field(client, mine, item, field):
    response = post(client, [event(mine, key="good"), item])

    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 1
    assert len(body["rejected"]) == 1
    assert body["rejected"][0]["index"] == 1
    assert body["rejected"][0]["message"].startswith(f"{field}:"), body["rejected"][0]
    assert Event.objects.count() == 1


def test_a_rejected_single_object_is_a_400_that_still_carries_the_report(client, mine):
    response = post(client, event("nobody", key="x"))

    assert response.status_code == 400
    body = response.json()
    assert body.keys() >= REPORT_KEYS
    assert body["accepted"] == 0
    assert body["rejected"] == [{"index": 0, "message": body["rejected"][0]["message"]}]
    assert "customer" in body["message"] and "nobody" in body["message"]
    assert not Event.objects.exists()


def test_an_all_rejected_list_is_a_400_naming_the_first_item(client, mine):
    response = post(client, [{"type": "message_in"}, event(mine, type_="poke")])

    assert response.status_code == 400
    body = response.json()
    assert [r["index"] for r in body["rejected"]] == [0, 1]
    assert body["message"].startswith("item 0: customer:")


# --- Whole-request errors -----------------------------------------------------------------

def test_malformed_json_is_a_400_with_a_message(client, mine):
    response = client.post(URL, data='{"customer": "wm-mine", ', content_type="application/json")

    assert response.status_code == 400
    assert "JSON" in response.json()["message"]


def test_more_than_1000_items_is_a_400(client, mine):
    response = post(client, [event(mine, key=f"k{n}") for n in range(1001)])

    assert response.status_code == 400
    assert "1000" in response.json()["message"]
    assert not Event.objects.exists()


def test_exactly_1000_items_are_accepted(client, mine):
    response = post(client, [event(mine, key=f"k{n}") for n in range(1000)])

    assert response.status_code == 200
    assert response.json()["accepted"] == 1000


@pytest.mark.parametrize("body", [42, "text", True, None, []])
def test_a_body_that_is_neither_an_object_nor_a_list_of_objects_is_a_400(client, body):
    response = client.post(URL, data=json.dumps(body), content_type="application/json")

    assert response.status_code == 400
    assert response.json()["message"]


@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"customer": "wm-mine", "type": "message_in", "idempotency_key": "' + b"\xff\xfe" + b'"}',
    b"1" * 10_000,
    b'{"customer": "wm-mine", "type": "message_in", "idempotency_key": NaN}',
    b'{"customer": "wm-mine", "type": "message_in", "idempotency_key": "\\ud800"}',
    b"",
], ids=["deep-nesting", "invalid-utf8", "huge-number", "nan", "lone-surrogate", "empty"])
def test_garbage_bodies_are_a_400_with_a_message(client, mine, raw):
    response = client.post(URL, data=raw, content_type="application/json")

    assert response.status_code == 400, response.content[:300]
    assert response.json()["message"]


GARBAGE_ITEMS = [
    7, "str", None, [], [[1, 2]], {"a": {"b": [1, {"c": None}]}},
    {"customer": None, "type": None, "idempotency_key": None, "occurred_at": None, "data": None},
    {"customer": 12345, "type": "message_in", "idempotency_key": 1},
    {"customer": ["wm-mine"], "type": "message_in", "idempotency_key": "x"},
    {"customer": {"id": 1}, "type": "message_in", "idempotency_key": "x"},
    {"customer": True, "type": "message_in", "idempotency_key": "x"},
    {"customer": 1.5, "type": "message_in", "idempotency_key": "x"},
    {"customer": "wm-mine", "type": ["message_in"], "idempotency_key": "x"},
    {"customer": "wm-mine", "type": 3, "idempotency_key": "x"},
    {"customer": "wm-mine", "type": "message_in", "idempotency_key": {"k": 1}},
    {"customer": "wm-mine", "type": "message_in", "idempotency_key": "k" * 10_000},
    {"customer": "c" * 100_000, "type": "message_in", "idempotency_key": "x"},
    {"customer": "wm-mine", "type": "t" * 5000, "idempotency_key": "x"},
    {"customer": "wm-mine", "type": "message_in", "idempotency_key": "x", "occurred_at": []},
    {"customer": "wm-mine", "type": "message_in", "idempotency_key": "x", "occurred_at": {}},
    {"customer": "wm-mine", "type": "message_in", "idempotency_key": "x", "occurred_at": True},
    {"customer": "wm-mine", "type": "message_in", "idempotency_key": "x",
     "occurred_at": "2026-01-01T25:61:00"},
    {"customer": "wm-mine", "type": "message_in", "idempotency_key": "x",
     "occurred_at": "9" * 500},
    {"customer": "wm-mine", "type": "message_in", "idempotency_key": "x", "data": 5},
    {"customer": "wm-mine", "type": "message_in", "idempotency_key": "x",
     "data": {"text": "x" * 200_000, "nested": [[[[[]]]]]}},
    {"customer": "wm-mine", "type": "group_joined", "idempotency_key": "x",
     "data": {"group": ["g"]}},
    {"customer": "wm-mine", "type": "group_joined", "idempotency_key": "x",
     "data": {"group": "g" * 1000, "name": "n"}},
    {"customer": "wm-mine", "type": "group_joined", "idempotency_key": "x",
     "data": {"group": "g", "name": {"zh": "群"}}},
    {"customer": "wm-mine", "type": "group_joined", "idempotency_key": "x",
     "data": {"group": "g", "name": "n" * 1000}},
    {"customer": "wm-mine", "type": "referral", "idempotency_key": "x",
     "data": {"referred": 3.25}},
    {"customer": "new-1", "type": "friend_added", "idempotency_key": "x",
     "data": {"owner": 17, "channel": ["qr"], "name": {"first": "A"}}},
    {"customer": "new-2", "type": "friend_added", "idempotency_key": "x",
     "data": {"channel": "c" * 100}},
    {"customer": "new-3", "type": "friend_added", "idempotency_key": "x",
     "data": {"name": "n" * 5000, "city": "c" * 5000, "phone": "1" * 5000}},
    {"customer": "new-4", "type": "friend_added", "idempotency_key": "x",
     "data": {"attributes": ["not", "an", "object"], "gender": 1}},
]


@pytest.mark.parametrize("item", GARBAGE_ITEMS, ids=range(len(GARBAGE_ITEMS)))
def test_garbage_items_never_cause_a_server_error(client, mine, item):
    for body in (item, [item], [event(mine, key="fine"), item]):
        response = post(client, body)
        assert response.status_code in (200, 400), (body, response.content[:300])
        data = response.json()
        assert "message" in data or data.keys() >= REPORT_KEYS
    # Whatever was stored must read back through the API.
    assert client.get(URL).status_code == 200
    assert client.get("/api/v1/customers/").status_code == 200


@pytest.mark.parametrize("occurred_at", ["0001-01-01T00:00:00", "9999-12-31T23:59:59-14:00"])
def test_timestamps_at_the_edge_of_the_calendar_never_cause_a_server_error(
        client, mine, occurred_at):
    response = post(client, event(mine, key="edge", occurred_at=occurred_at))

    assert response.status_code in (200, 400)
    assert client.get(URL).status_code == 200
    assert client.get(f"/api/v1/customers/{mine.pk}/").status_code == 200
    assert client.get(f"/api/v1/customers/{mine.pk}/timeline/").status_code == 200


def test_nul_characters_never_cause_a_server_error(client, mine):
    for body in (event("wm-\u0000", key="nul-1"),
                 event(mine, key="nul-\u0000"),
                 event(mine, key="nul-2", data={"text": "a\u0000b"}),
                 event("new-nul", type_="friend_added", key="nul-3", data={"name": "\u0000"})):
        response = post(client, body)
        assert response.status_code in (200, 400), (body, response.content[:300])


# --- friend_added / friend_deleted / opted_out --------------------------------------------

def test_friend_added_creates_the_customer_from_its_data(client, operator):
    response = post(client, event("wm-new", "friend_added", occurred_at=at(5), data={
        "name": "王小姐", "owner": operator.username, "channel": "store-qr-9",
        "city": "杭州", "phone": "13800000000", "gender": "female"}))

    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    created = Customer.objects.get(external_id="wm-new")
    assert (created.name, created.owner, created.city, created.phone, created.gender) == (
        "王小姐", operator, "杭州", "13800000000", "female")
    assert created.joined_at == when(5)
    assert created.status == Customer.Status.ACTIVE
    # An unknown channel code is a new WeCom `state`: the channel is created.
    assert created.channel == Channel.objects.get(code="store-qr-9")


def test_friend_added_without_owner_belongs_to_the_sender(client, operator):
    post(client, event("wm-new", "friend_added"))
    assert Customer.objects.get(external_id="wm-new").owner == operator


def test_friend_added_by_an_admin_can_name_any_owner(admin_user, operator, api_client_for):
    post(api_client_for(admin_user),
         event("wm-new", "friend_added", data={"owner": operator.username}))
    assert Customer.objects.get(external_id="wm-new").owner == operator


def test_friend_added_with_an_unknown_owner_is_rejected(client):
    response = post(client, event("wm-new", "friend_added", data={"owner": "ghost"}))

    assert response.status_code == 400
    assert rejection_for(response).startswith("data.owner:")
    assert "ghost" in rejection_for(response)
    assert not Customer.objects.filter(external_id="wm-new").exists()


def test_an_operator_cannot_add_a_customer_for_another_operator(client, other_operator):
    response = post(client, event("wm-new", "friend_added",
                                  data={"owner": other_operator.username}))

    assert response.status_code == 400
    assert rejection_for(response).startswith("data.owner:")
    assert not Customer.objects.filter(external_id="wm-new").exists()


def test_friend_added_then_other_events_in_one_batch(client):
    response = post(client, [
        event("wm-new", "message_in", key="m", occurred_at=at(6)),
        event("wm-new", "friend_added", key="f", occurred_at=at(5), data={"name": "A"}),
    ])

    assert response.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    created = Customer.objects.get(external_id="wm-new")
    assert created.last_active_at == when(6)
    assert created.events.count() == 2


def test_friend_added_for_someone_elses_customer_does_not_take_it_over(client, other_operator):
    theirs = CustomerFactory(external_id="wm-theirs", owner=other_operator, name="Theirs")
    response = post(client, event(theirs, "friend_added", data={"name": "Mine now"}))

    assert response.status_code == 400
    theirs.refresh_from_db()
    assert (theirs.owner, theirs.name) == (other_operator, "Theirs")
    assert not Event.objects.exists()


def test_friend_deleted_then_friend_added_sets_the_status(client, mine):
    post(client, event(mine, "friend_deleted", key="del", occurred_at=at(2)))
    mine.refresh_from_db()
    assert mine.status == Customer.Status.DELETED_US

    post(client, event(mine, "friend_added", key="add", occurred_at=at(3)))
    mine.refresh_from_db()
    assert mine.status == Customer.Status.ACTIVE


def test_an_older_friend_added_arriving_late_does_not_undo_a_deletion(client, mine):
    post(client, event(mine, "friend_deleted", key="del", occurred_at=at(10)))
    post(client, event(mine, "friend_added", key="add", occurred_at=at(4)))

    mine.refresh_from_db()
    assert mine.status == Customer.Status.DELETED_US


def test_the_latest_status_event_of_a_batch_wins_whatever_the_order(client, mine):
    post(client, [event(mine, "friend_deleted", key="del", occurred_at=at(9)),
                  event(mine, "friend_added", key="add", occurred_at=at(8))])
    mine.refresh_from_db()
    assert mine.status == Customer.Status.DELETED_US


def test_opted_out(client, mine):
    post(client, event(mine, "opted_out"))
    mine.refresh_from_db()
    assert mine.opted_out is True


# --- Groups and referrals -----------------------------------------------------------------

def test_group_joined_creates_the_group_and_an_open_membership(client, mine):
    post(client, event(mine, "group_joined", occurred_at=at(2),
                       data={"group": "wr-vip", "name": "VIP 群"}))

    group = Group.objects.get(chat_id="wr-vip")
    assert group.name == "VIP 群"
    membership = GroupMembership.objects.get(group=group, customer=mine)
    assert (membership.joined_at, membership.left_at) == (when(2), None)


def _history(customer):
    return [(m.joined_at, m.left_at) for m in
            GroupMembership.objects.filter(customer=customer).order_by("joined_at")]


def test_join_leave_rejoin_across_requests_keeps_the_history(client, mine):
    for n, (kind, day) in enumerate([("group_joined", 1), ("group_left", 2),
                                     ("group_joined", 3)]):
        post(client, event(mine, kind, key=f"g{n}", occurred_at=at(day), data={"group": "wr-1"}))

    assert _history(mine) == [(when(1), when(2)), (when(3), None)]


def test_join_leave_rejoin_in_one_batch_keeps_the_history(client, mine):
    post(client, [
        event(mine, "group_joined", key="g3", occurred_at=at(3), data={"group": "wr-1"}),
        event(mine, "group_left", key="g2", occurred_at=at(2), data={"group": "wr-1"}),
        event(mine, "group_joined", key="g1", occurred_at=at(1), data={"group": "wr-1"}),
    ])

    assert _history(mine) == [(when(1), when(2)), (when(3), None)]


@pytest.mark.parametrize("batched", [False, True], ids=["separate", "one-batch"])
def test_a_repeated_join_then_a_leave_closes_the_membership(client, mine, batched):
    """WeCom re-sends a join (new key) while the customer is in the group; the leave that
    follows must end the stay, whether the two arrive together or apart."""
    post(client, event(mine, "group_joined", key="g1", occurred_at=at(1),
                       data={"group": "wr-1"}))
    later = [event(mine, "group_joined", key="g2", occurred_at=at(2), data={"group": "wr-1"}),
             event(mine, "group_left", key="g3", occurred_at=at(3), data={"group": "wr-1"})]
    if batched:
        post(client, later)
    else:
        for item in later:
            post(client, item)

    assert not GroupMembership.objects.filter(customer=mine, left_at__isnull=True).exists()
    assert _history(mine) == [(when(1), when(3))]


def test_a_repeated_join_does_not_open_a_second_stay(client, mine):
    for n in range(2):
        post(client, event(mine, "group_joined", key=f"g{n}", occurred_at=at(1 + n),
                           data={"group": "wr-1"}))
    assert _history(mine) == [(when(1), None)]


def test_a_leave_older_than_the_join_does_not_close_it(client, mine):
    post(client, event(mine, "group_joined", key="j", occurred_at=at(5), data={"group": "wr-1"}))
    response = post(client, event(mine, "group_left", key="l", occurred_at=at(4),
                                  data={"group": "wr-1"}))

    assert response.status_code == 200
    assert _history(mine) == [(when(5), None)]


def test_referral_sets_referred_by(client, mine, operator):
    friend = CustomerFactory(external_id="wm-friend", owner=operator)
    post(client, event(mine, "referral", data={"referred": "wm-friend"}))

    friend.refresh_from_db()
    assert friend.referred_by == mine
    response = client.get(f"/api/v1/customers/{friend.pk}/")
    assert response.json()["referred_by"] == "wm-mine"


def test_a_later_referral_does_not_steal_the_referred_customer(client, mine, operator):
    first = CustomerFactory(external_id="wm-first", owner=operator)
    friend = CustomerFactory(external_id="wm-friend", owner=operator)
    post(client, event(first, "referral", key="r1", data={"referred": "wm-friend"}))
    post(client, event(mine, "referral", key="r2", data={"referred": "wm-friend"}))

    friend.refresh_from_db()
    assert friend.referred_by == first


# --- last_active_at -----------------------------------------------------------------------

def test_last_active_at_moves_for_inbound_events_only_and_never_backwards(client, mine):
    post(client, event(mine, "message_in", key="in", occurred_at=at(10)))
    mine.refresh_from_db()
    assert mine.last_active_at == when(10)

    post(client, event(mine, "message_out", key="out", occurred_at=at(20)))
    post(client, event(mine, "friend_added", key="add", occurred_at=at(21)))
    mine.refresh_from_db()
    assert mine.last_active_at == when(10)

    post(client, event(mine, "link_clicked", key="old", occurred_at=at(5)))
    mine.refresh_from_db()
    assert mine.last_active_at == when(10)

    post(client, event(mine, "moments_interaction", key="new", occurred_at=at(12)))
    mine.refresh_from_db()
    assert mine.last_active_at == when(12)


def test_message_out_alone_leaves_last_active_at_empty(client, mine):
    post(client, event(mine, "message_out", occurred_at=at(3)))
    mine.refresh_from_db()
    assert mine.last_active_at is None


def test_a_duplicate_event_has_no_second_effect(client, mine):
    EventFactory(customer=mine, idempotency_key="seen", type="message_in",
                 occurred_at=when(1))
    post(client, event(mine, "message_in", key="seen", occurred_at=at(20)))

    mine.refresh_from_db()
    assert mine.last_active_at is None
    assert Event.objects.get(idempotency_key="seen").occurred_at == when(1)
