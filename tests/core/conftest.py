"""Fixtures of the condition-language tests: API clients that ask for English messages."""

import pytest
from django.utils import translation


@pytest.fixture(autouse=True)
def _english():
    """Messages are compared word for word; the project's default language is Chinese."""
    with translation.override("en"):
        yield


@pytest.fixture
def english_client(api_client_for):
    """`english_client(user)`: an authenticated APIClient sending `Accept-Language: en`."""

    def make(user):
        client = api_client_for(user)
        client.defaults["HTTP_ACCEPT_LANGUAGE"] = "en"
        return client

    return make
