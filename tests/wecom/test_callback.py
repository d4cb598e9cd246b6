"""/wecom/callback/: URL verification, signed + encrypted events stored once and turned into crm
facts by the task; everything not authentic, stale or replayed refused with nothing stored."""

import time
from urllib.parse import urlencode

import pytest
from django.contrib.auth import get_user_model

from crm.models import Channel, Customer, Event
from tests.factories import CustomerFactory
from tests.wecom.conftest import AES_KEY, CORP_ID, TOKEN
from tests.wecom.test_crypto import ECHOSTR, GET_NONCE, GET_SIG, GET_TS
from wecom import services
from wecom.crypto import WXBizMsgCrypt
from wecom.models import Callback
from wecom.tasks import process_callback

pytestmark = pytest.mark.django_db

URL = "/wecom/callback/"


def event_xml(change_type="add_external_contact", external="wmEXT001", staff="zhangsan",
              state="store-qr", created=None, **extra):
    fields = {"ToUserName": CORP_ID, "FromUserName": "sys",
              "CreateTime": str(created or int(time.time())), "MsgType": "event",
              "Event": "change_external_contact", "ChangeType": change_type,
              "UserID": staff, "ExternalUserID": external, "State": state,
              "WelcomeCode": "WELCOMECODE", **extra}
    inner = "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in fields.items() if v is not None)
    return f"<xml>{inner}</xml>"


def signed(xml, *, nonce="n-1", timestamp=None, corp_id=CORP_ID, token=TOKEN):
    """The query string and body WeCom would send for `xml`."""
    timestamp = str(timestamp or int(time.time()))
    crypt = WXBizMsgCrypt(token=token, encoding_aes_key=AES_KEY, receive_id=corp_id)
    encrypt, signature = crypt.encrypt_message(xml, timestamp, nonce)
    body = (f"<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]>"
            f"</Encrypt><AgentID><![CDATA[1000002]]></AgentID></xml>")
    query = urlencode({"msg_signature": signature, "timestamp": timestamp, "nonce": nonce})
    return f"{URL}?{query}", body


def post(client, url, body):
    # Refusals are worded in the reader's language; these tests read English.
    return client.post(url, body, content_type="text/xml", HTTP_ACCEPT_LANGUAGE="en")


@pytest.fixture
def deliver(client, wecom_settings, django_capture_on_commit_callbacks):
    """POST a callback; returns (response, the callbacks enqueued after commit)."""
    def send(url, body):
        with django_capture_on_commit_callbacks(execute=False) as enqueued:
            response = post(client, url, body)
        return response, enqueued
    return send


def process_all():
    for pk in Callback.objects.filter(status=Callback.Status.RECEIVED).values_list("pk", flat=True):
        services.callback_process(callback_id=pk)


# --- GET URL verification ------------------------------------------------------------------

def test_get_verification_answers_the_plaintext_exactly(client, wecom_settings):
    query = urlencode({"msg_signature": GET_SIG, "timestamp": GET_TS, "nonce": GET_NONCE,
                       "echostr": ECHOSTR})
    response = client.get(f"{URL}?{query}")
    assert response.status_code == 200
    assert response.content == b"1288432023552776189"
    assert response["Content-Type"].startswith("text/plain")


def test_get_with_bad_signature_is_refused(client, wecom_settings):
    query = urlencode({"msg_signature": "0" * 40, "timestamp": GET_TS, "nonce": GET_NONCE,
                       "echostr": ECHOSTR})
    assert client.get(f"{URL}?{query}").status_code == 403


def test_integration_off_answers_404(client, settings):
    settings.WECOM_CORP_ID = settings.WECOM_TOKEN = settings.WECOM_ENCODING_AES_KEY = ""
    url, body = signed(event_xml())
    assert client.get(url + "&echostr=x").status_code == 404
    assert post(client, url, body).status_code == 404
    assert not Callback.objects.exists()


# --- POST events -------------------------------------------------------------------------

def test_contact_added_becomes_a_customer_with_owner_channel_and_event(deliver):
    url, body = signed(event_xml())
    response, enqueued = deliver(url, body)
    assert response.status_code == 200
    assert response.content == b"success"
    assert len(enqueued) == 1
    row = Callback.objects.get()
    assert (row.status, row.event, row.change_type, row.external_user_id, row.user_id) == (
        "received", "change_external_contact", "add_external_contact", "wmEXT001", "zhangsan")
    assert not Customer.objects.exists()            # nothing processed in the request

    process_callback.apply(args=[row.pk])           # the task, run in-process

    row.refresh_from_db()
    assert row.status == "processed" and row.processed_at is not None
    customer = Customer.objects.get(external_id="wmEXT001")
    assert customer.owner.username == "zhangsan"
    assert customer.owner.groups.filter(name="operator").exists()
    assert not customer.owner.has_usable_password()
    assert customer.channel == Channel.objects.get(code="store-qr")
    assert customer.status == Customer.Status.ACTIVE
    event = Event.objects.get(customer=customer)
    assert event.type == "friend_added"
    assert abs(event.occurred_at.timestamp() - time.time()) < 10


def test_existing_staff_user_is_the_owner(deliver):
    staff = get_user_model().objects.create_user(username="lisi", password="x")
    url, body = signed(event_xml("add_half_external_contact", staff="lisi", state=None))
    deliver(url, body)
    process_all()
    customer = Customer.objects.get(external_id="wmEXT001")
    assert customer.owner == staff and customer.channel is None
    assert get_user_model().objects.filter(username="lisi").count() == 1


def test_the_same_callback_twice_is_one_row_and_one_event(deliver):
    url, body = signed(event_xml())
    first, enqueued_first = deliver(url, body)
    again, enqueued_again = deliver(url, body)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.content == b"success"
    assert Callback.objects.count() == 1
    assert (len(enqueued_first), len(enqueued_again)) == (1, 0)
    pk = Callback.objects.get().pk
    services.callback_process(callback_id=pk)
    assert services.callback_process(callback_id=pk) is None     # already processed
    assert Event.objects.count() == 1


def test_the_same_change_delivered_anew_is_one_event(deliver):
    """A second delivery of the same change (new nonce) is stored, but crm records it once."""
    xml = event_xml(created=int(time.time()) - 5)
    deliver(*signed(xml, nonce="n-a"))
    deliver(*signed(xml, nonce="n-b"))
    process_all()
    assert Callback.objects.count() == 2
    assert Event.objects.count() == 1
    assert set(Callback.objects.values_list("status", flat=True)) == {"processed"}


def test_del_follow_user_marks_the_customer_deleted_us(deliver):
    customer = CustomerFactory(external_id="wmEXT001")
    deliver(*signed(event_xml("del_follow_user", state=None, WelcomeCode=None)))
    process_all()
    customer.refresh_from_db()
    assert customer.status == Customer.Status.DELETED_US
    assert Event.objects.get(customer=customer).type == "friend_deleted"


def test_del_external_contact_marks_the_customer_removed(deliver):
    customer = CustomerFactory(external_id="wmEXT001")
    deliver(*signed(event_xml("del_external_contact", state=None, WelcomeCode=None,
                              Source="DELETE_BY_TRANSFER")))
    process_all()
    customer.refresh_from_db()
    assert customer.status == Customer.Status.REMOVED
    assert Event.objects.get(customer=customer).type == "friend_removed"


def test_deletion_of_an_unknown_customer_is_recorded_as_failed(deliver):
    deliver(*signed(event_xml("del_follow_user", external="wmNOBODY")))
    process_all()
    row = Callback.objects.get()
    assert row.status == "failed" and "wmNOBODY" in row.error
    assert not Event.objects.exists()


# --- Refused: 403, nothing stored -----------------------------------------------------------

def _refused(deliver, url, body, status=403):
    response, enqueued = deliver(url, body)
    assert response.status_code == status
    assert not enqueued
    return response


def test_bad_signature_is_refused(deliver):
    url, body = signed(event_xml(), token="another-token")
    _refused(deliver, url, body)
    assert not Callback.objects.exists()


def test_wrong_corp_id_is_refused(deliver):
    url, body = signed(event_xml(), corp_id="wwsomeoneelse")
    _refused(deliver, url, body)
    assert not Callback.objects.exists()


@pytest.mark.parametrize("offset", [-301, 400])
def test_stale_or_future_timestamp_is_refused(deliver, offset):
    url, body = signed(event_xml(), timestamp=int(time.time()) + offset)
    _refused(deliver, url, body)
    assert not Callback.objects.exists()


def test_replayed_nonce_is_refused(deliver):
    deliver(*signed(event_xml(), nonce="same"))
    url, body = signed(event_xml(external="wmEXT002"), nonce="same",
                       timestamp=int(time.time()) - 1)
    response = _refused(deliver, url, body)
    assert b"nonce was seen before" in response.content
    assert list(Callback.objects.values_list("external_user_id", flat=True)) == ["wmEXT001"]


@pytest.mark.parametrize("body", [
    "not xml",
    "<xml><ToUserName>x</ToUserName></xml>",
    '<!DOCTYPE x [<!ENTITY a "aaaa">]><xml><Encrypt>&a;</Encrypt></xml>',
])
def test_malformed_bodies_are_refused(deliver, body):
    url, _ = signed(event_xml())
    _refused(deliver, url, body, status=400)
    assert not Callback.objects.exists()


def test_missing_parameters_and_oversized_bodies(deliver):
    assert deliver(URL, "<xml/>")[0].status_code == 400
    url, _ = signed(event_xml())
    _refused(deliver, url, "<xml>" + "a" * (services.MAX_BODY_BYTES + 1) + "</xml>", 413)


def test_a_callback_whose_task_was_lost_is_processed_by_the_sweeper(deliver):
    from datetime import timedelta

    from django.utils import timezone

    from wecom import services
    from wecom.tasks import resume_callbacks

    url, body = signed(event_xml())
    deliver(url, body)                                   # the task is never run
    row = Callback.objects.get()
    assert services.callbacks_resume() == []             # a fresh one may still be on its way
    Callback.objects.filter(pk=row.pk).update(received_at=timezone.now() - timedelta(minutes=5))

    assert resume_callbacks.apply().get() == 1
    row.refresh_from_db()
    assert row.status == "processed"
    assert Customer.objects.filter(external_id="wmEXT001").count() == 1
    assert services.callbacks_resume() == []             # nothing left to do
