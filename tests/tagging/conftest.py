"""Fixtures of the condition-language tests: API clients that ask for English messages."""

import pytest


@pytest.fixture(autouse=True)
def _english(english):
    """Messages are compared word for word (see `english` in tests/conftest.py)."""


@pytest.fixture
def tags(db):
    """Two groups: 兴趣 (interests, any number) and 会员等级 (membership level, exclusive)."""
    from tagging.models import Tag, TagGroup

    interest = TagGroup.objects.create(name="兴趣", order=1)
    level = TagGroup.objects.create(name="会员等级", exclusive=True, order=2)
    return {
        "interest": interest, "level": level,
        "美妆": Tag.objects.create(group=interest, name="美妆", order=1),
        "护肤": Tag.objects.create(group=interest, name="护肤", order=2),
        "银卡": Tag.objects.create(group=level, name="银卡", order=1),
        "金卡": Tag.objects.create(group=level, name="金卡", order=2),
    }


def held(customer) -> set[str]:
    """Names of the tags the customer holds now."""
    from tagging.models import CustomerTag

    return set(CustomerTag.objects.filter(customer=customer).values_list("tag__name", flat=True))


def history(customer) -> list[tuple[str, str]]:
    """(action, tag name) of the customer's tag changes, oldest first."""
    from tagging.models import TagChange

    return list(TagChange.objects.filter(customer=customer).order_by("at", "id")
                .values_list("action", "tag_name"))
