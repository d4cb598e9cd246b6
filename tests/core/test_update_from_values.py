"""core.db.update_from_values: each row gets its own values in one statement, on both
databases — what the dispatcher writes for a batch of sent messages (their provider ids and
texts)."""

import pytest

from core.db import update_from_values
from crm.models import Customer
from tests.factories import CustomerFactory

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]


def test_each_row_gets_its_own_values_and_the_others_are_left_alone():
    a, b, c = (CustomerFactory(name=f"n{i}", city="杭州") for i in range(3))
    updated = update_from_values(Customer, ["name", "city"], {
        a.pk: ("林小姐 'quoted'", ""), b.pk: ("", "上海")}, batch_size=1)
    assert updated == 2
    assert {x.pk: (x.name, x.city) for x in Customer.objects.all()} == {
        a.pk: ("林小姐 'quoted'", ""), b.pk: ("", "上海"), c.pk: ("n2", "杭州")}
    assert update_from_values(Customer, ["name"], {}) == 0
