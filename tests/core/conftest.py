"""Fixtures of the condition-language tests: API clients that ask for English messages."""

import pytest


@pytest.fixture(autouse=True)
def _english(english):
    """Messages are compared word for word (see `english` in tests/conftest.py)."""


