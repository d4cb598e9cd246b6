"""Shared fixtures: users in each role, token-authenticated API clients, customers.

The suite is meant to run on PostgreSQL (DESIGN §3); with `REQUIRE_POSTGRES=1` in the
environment it refuses to start on anything else rather than pass on SQLite.
"""

import os

import pytest
from django.utils import translation
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from tests.factories import CustomerFactory, UserFactory


def pytest_sessionstart(session):
    from django.conf import settings
    from django.test.utils import override_settings

    # Hashing a password the production way takes most of a test's set-up time.
    override_settings(
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]).enable()
    if os.environ.get("REQUIRE_POSTGRES") != "1":
        return
    engine = settings.DATABASES["default"]["ENGINE"]
    if "postgresql" not in engine:
        pytest.exit(
            f"REQUIRE_POSTGRES=1 but the configured database engine is {engine!r}; set "
            "DATABASE_URL=postgres://… to run the suite on PostgreSQL.",
            returncode=3,
        )


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Every test starts from an empty cache: the home page and the metrics answer from it,
    and an answer cached by an earlier test (same user id, same range) would be stale."""
    from django.core.cache import caches

    for cache in caches.all():
        cache.clear()


@pytest.fixture
def admin_user(db):
    return UserFactory(username="boss", is_superuser=True, is_staff=True)


@pytest.fixture
def operator(db):
    return UserFactory(username="op-a", roles=["operator"])


@pytest.fixture
def other_operator(db):
    return UserFactory(username="op-b", roles=["operator"])


@pytest.fixture
def analyst(db):
    return UserFactory(username="analyst", roles=["analyst"])


@pytest.fixture
def api_client_for(db):
    """`api_client_for(user)`: an APIClient sending `Authorization: Token <key>`;
    `api_client_for(None)` is an anonymous client."""

    def make(user=None) -> APIClient:
        # The product speaks Chinese by default; the tests read its English messages.
        client = APIClient(HTTP_ACCEPT_LANGUAGE="en")
        if user is not None:
            token, _created = Token.objects.get_or_create(user=user)
            client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client

    return make


@pytest.fixture
def customer(db):
    """`customer(**fields)`: a customer; owned by a new operator unless `owner=` is given."""

    def make(**fields):
        return CustomerFactory(**fields)

    return make


@pytest.fixture
def english():
    """Django's translations in English for the test (the product's default is Chinese)."""
    with translation.override("en"):
        yield


@pytest.fixture
def admin_api(admin_user, api_client_for):
    return api_client_for(admin_user)


@pytest.fixture
def op_api(operator, api_client_for):
    return api_client_for(operator)


@pytest.fixture
def english_client(api_client_for):
    """`english_client(user)`: an authenticated APIClient asking for English messages."""
    return api_client_for


@pytest.fixture
def walk_settings(settings, monkeypatch):
    """WeCom configured (else its pages are 404 for everyone) and no throttling."""
    settings.WECOM_CORP_ID, settings.WECOM_SECRET, settings.WECOM_TOKEN = "ww1", "s", "t"
    settings.WECOM_ENCODING_AES_KEY = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"
    settings.WECOM_API_BASE = "http://127.0.0.1:9/cgi-bin/"
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES",
                        dict.fromkeys(SimpleRateThrottle.THROTTLE_RATES, "100000/min"))
