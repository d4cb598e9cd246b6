"""Fixtures of the API fuzzers."""

import pytest
from django.core import signals
from django.db import close_old_connections


@pytest.fixture
def keep_the_test_connection():
    """Django closes the database connection after each request; the test client stops that
    for its requests, and so must schemathesis' in-process WSGI transport (the test's
    transaction lives on that connection)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)
