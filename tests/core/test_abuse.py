"""Abuse limits: sign-in lockout after repeated failures (the token endpoint and the login page,
django-axes), API throttling per user and per address with a tighter rate for tokens and for
ingestion, and request bodies over the limit refused with a clear 400."""

import json

import pytest
from rest_framework.throttling import SimpleRateThrottle

from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db
TOKEN_URL = "/api/v1/auth/token/"


def _token(client, username, password, **extra):
    return client.post(TOKEN_URL, {"username": username, "password": password},
                       content_type="application/json", HTTP_ACCEPT_LANGUAGE="en", **extra)


@pytest.fixture
def rates(monkeypatch):
    """Set throttle rates for one test (DRF reads them once, at import)."""
    def set_rates(**changed):
        monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES",
                            {**SimpleRateThrottle.THROTTLE_RATES, **changed})
    return set_rates


def test_thirty_wrong_passwords_on_the_token_endpoint_end_in_a_lockout(client, settings, rates):
    rates(token="100/min")          # the lockout alone, not the endpoint's throttle
    UserFactory(username="ops", roles=["operator"])
    answers = [_token(client, "ops", f"wrong-{i}") for i in range(30)]
    codes = [a.status_code for a in answers]
    # The failure that reaches the limit is answered with the lockout already.
    allowed = settings.AXES_FAILURE_LIMIT - 1
    assert codes[:allowed] == [400] * allowed and set(codes[allowed:]) == {429}
    locked = answers[allowed]
    assert "Too many failed sign-ins" in locked.json()["message"]
    assert int(locked["Retry-After"]) > 0
    # Even the right password waits out the lockout …
    assert _token(client, "ops", PASSWORD).status_code == 429
    # … which is for this username from this address only.
    UserFactory(username="other", roles=["operator"])
    assert _token(client, "other", PASSWORD).status_code == 200


def test_a_success_resets_the_count(client, settings):
    UserFactory(username="ops", roles=["operator"])
    for _ in range(2):
        for i in range(settings.AXES_FAILURE_LIMIT - 1):
            assert _token(client, "ops", f"wrong-{i}").status_code == 400
        assert _token(client, "ops", PASSWORD).status_code == 200


def test_the_login_page_locks_out_too(client, settings):
    UserFactory(username="ops", roles=["operator"])
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        response = client.post("/login/", {"username": "ops", "password": "nope"},
                               HTTP_ACCEPT_LANGUAGE="en")
        assert response.status_code == 200          # the form again, with its error
    for password in ("nope", PASSWORD):             # the limit reached: refused either way
        response = client.post("/login/", {"username": "ops", "password": password},
                               HTTP_ACCEPT_LANGUAGE="en")
        assert response.status_code == 429
    assert "Too many failed sign-ins" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_the_token_endpoint_is_throttled_per_address(client, rates):
    rates(token="3/min")
    answers = [_token(client, f"nobody-{i}", "x").status_code for i in range(4)]
    assert answers == [400, 400, 400, 429]


def test_api_requests_are_throttled_per_user(admin_api, rates):
    rates(user="3/min")
    codes = [admin_api.get("/api/v1/customers/").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    throttled = admin_api.get("/api/v1/customers/", HTTP_ACCEPT_LANGUAGE="en")
    assert throttled.json()["message"] and int(throttled["Retry-After"]) > 0


def test_ingestion_has_its_own_tighter_rate_and_reads_do_not_count(admin_api, rates):
    rates(ingest="2/min")
    event = {"customer": "wm-1", "type": "friend_added", "data": {}}
    codes = [admin_api.post("/api/v1/events/", {**event, "idempotency_key": f"k{i}"},
                            format="json").status_code for i in range(3)]
    assert codes[:2] in ([200, 200], [201, 201]) and codes[2] == 429
    assert admin_api.get("/api/v1/events/").status_code == 200


def test_anonymous_requests_are_throttled_per_address(client, rates):
    rates(anon="2/min", token="100/min")
    codes = [_token(client, f"nobody-{i}", "x").status_code for i in range(3)]
    assert codes == [400, 400, 429]


def test_a_body_over_the_limit_is_a_clear_400(admin_api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    body = json.dumps([{"customer": "x" * 100, "type": "message_in",
                        "idempotency_key": f"k{i}"} for i in range(200)])
    response = admin_api.post("/api/v1/events/", body, content_type="application/json",
                              HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400
    assert "too large" in response.json()["message"].lower()


def test_a_batch_over_the_cap_is_a_clear_400(admin_api, settings):
    items = [{"customer": "c", "type": "message_in", "idempotency_key": f"k{i}"}
             for i in range(settings.INGEST_MAX_BATCH + 1)]
    response = admin_api.post("/api/v1/events/", items, format="json",
                              HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400
    assert str(settings.INGEST_MAX_BATCH) in response.json()["message"]
