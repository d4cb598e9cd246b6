"""Fixtures of the dashboard page tests."""

import pytest

from tests.factories import UserFactory


@pytest.fixture
def reader(client):
    """`reader(user, language="en")`: the test client signed in as the user, reading pages in
    that language."""
    def sign_in(user, language="en"):
        client.force_login(user)
        client.defaults["HTTP_ACCEPT_LANGUAGE"] = language
        return client
    return sign_in


@pytest.fixture
def wang(db):
    """An operator with a Chinese name: 王 (family name) 芳."""
    return UserFactory(username="op_wang", roles=["operator"], first_name="芳", last_name="王")
