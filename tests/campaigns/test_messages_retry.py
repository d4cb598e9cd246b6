"""`POST messages/retry/` and `messages_retry`: admins queue failed messages again, as new —
only failed ones, in one statement — and the dispatcher is woken after commit."""

import pytest
from django.utils import timezone

from campaigns import services
from campaigns.models import Campaign, Message
from core.exceptions import ApplicationError
from crm.models import Customer
from tests.campaigns.conftest import NOW

pytestmark = pytest.mark.django_db

URL = "/api/v1/messages/retry/"


@pytest.fixture
def kicks(monkeypatch):
    calls = []
    monkeypatch.setattr(services, "_kick_dispatch", lambda: calls.append(1))
    return calls


@pytest.fixture
def failures(queue, operator, other_operator):
    mine = Customer.objects.create(external_id="rt-mine", name="Mine", owner=operator)
    theirs = Customer.objects.create(external_id="rt-theirs", name="Theirs", owner=other_operator)
    sale = Campaign.objects.create(name="sale", condition={"all": []}, template="x",
                                   status="sending")
    failed = {"status": "failed", "attempts": 5, "last_error": "HTTP 503",
              "claimed_at": NOW}
    return {
        "campaign": sale,
        "a": queue(mine, campaign=sale, **failed),
        "b": queue(theirs, campaign=sale, **failed),
        "c": queue(mine, **failed),
        "sent": queue(mine, campaign=sale, status="sent", sent_at=NOW, attempts=1),
        "queued": queue(mine, campaign=sale, attempts=1),
    }


def _status(failures, name) -> str:
    return Message.objects.get(pk=failures[name].pk).status


def test_an_admin_retries_messages_by_id(admin_api, failures, kicks,
                                         django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_api.post(URL, {"ids": [failures["a"].pk, failures["b"].pk,
                                                failures["sent"].pk, 987654321]},
                                  format="json")
    assert response.status_code == 200, response.json()
    assert response.json() == {"retried": 2}
    for name in ("a", "b"):
        message = Message.objects.get(pk=failures[name].pk)
        assert (message.status, message.attempts, message.last_error, message.claimed_at) == (
            "queued", 0, "", None)
        assert abs((message.due_at - timezone.now()).total_seconds()) < 60
    assert _status(failures, "c") == "failed"
    sent = Message.objects.get(pk=failures["sent"].pk)
    assert (sent.status, sent.attempts) == ("sent", 1)             # left alone
    assert kicks == [1]


def test_an_admin_retries_all_failed_of_a_campaign(admin_api, failures, kicks):
    response = admin_api.post(URL, {"all_failed": True, "campaign": failures["campaign"].pk},
                              format="json")
    assert response.json() == {"retried": 2}
    assert [_status(failures, n) for n in ("a", "b", "c", "sent", "queued")] == [
        "queued", "queued", "failed", "sent", "queued"]
    assert admin_api.post(URL, {"all_failed": True}, format="json").json() == {"retried": 1}
    assert admin_api.post(URL, {"all_failed": True}, format="json").json() == {"retried": 0}


def test_operators_and_analysts_may_not_retry(op_api, analyst, api_client_for, failures):
    response = op_api.post(URL, {"ids": [failures["a"].pk]}, format="json")
    assert response.status_code == 403
    assert response.json()["message"] == "Only admins may retry failed messages."
    assert api_client_for(analyst).post(URL, {"all_failed": True},
                                        format="json").status_code == 403
    assert api_client_for(None).post(URL, {"all_failed": True},
                                     format="json").status_code in (401, 403)
    assert Message.objects.filter(status="failed").count() == 3


@pytest.mark.parametrize("body, message", [
    ({}, "give ids (a list of message ids) or all_failed: true"),
    ({"all_failed": False}, "give ids (a list of message ids) or all_failed: true"),
    ({"ids": "1,2"}, "ids: Expected a list of items but got type \"str\"."),
    ({"ids": [1, "x"]}, "ids[1]: A valid integer is required."),
    ({"ids": [1, 2.5]}, "ids[1]: A valid integer is required."),
    ({"ids": list(range(1, 10_002))}, "ids: Ensure this field has no more than 10000 elements."),
    ({"ids": [1], "all_failed": True}, "give ids or all_failed, not both"),
    ({"all_failed": True, "campaign": "sale"}, "campaign: A valid integer is required."),
    ([1, 2], "Invalid data. Expected a dictionary, but got list."),
])
def test_bad_input_is_a_400_that_says_why(admin_api, failures, body, message):
    response = admin_api.post(URL, body, format="json")
    assert response.status_code == 400
    assert response.json()["message"] == message
    assert Message.objects.filter(status="failed").count() == 3


def test_the_service_is_for_admins_only(operator, failures):
    with pytest.raises(ApplicationError, match="Only admins"):
        services.messages_retry(actor=operator, ids=[failures["a"].pk])
    assert _status(failures, "a") == "failed"


def test_the_endpoint_is_in_the_schema(admin_api):
    schema = admin_api.get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/v1/messages/retry/"]["post"]
    assert "MessageRetry" in str(operation["requestBody"])
    assert "MessagesRetried" in str(operation["responses"]["200"])
