"""Access control proven for every route: the URL configuration is walked and each route asked
with each method by someone anonymous, an analyst, an operator and an admin, against real
objects (the operator's); who is let in must be exactly what config/route_access.py says."""

import pytest

from config.route_access import ROUTE_ACCESS
from tests.factories import UserFactory
from tests.route_walk import observe, routes, world

pytestmark = pytest.mark.django_db


def test_every_route_lets_in_exactly_whom_the_table_says(client, walk_settings):
    users = {role: UserFactory(username=f"walk-{role}", roles=[role])
             for role in ("analyst", "operator", "admin")}
    paths = routes(world(users))
    missing = sorted(set(paths) - set(ROUTE_ACCESS))
    assert not missing, f"routes without a rule in config/route_access.py: {missing}"
    stale = sorted(set(ROUTE_ACCESS) - set(paths))
    assert not stale, f"rules for routes that no longer exist: {stale}"
    wrong = {}
    for name, path in sorted(paths.items()):
        seen = observe(client, users, path)
        if seen != ROUTE_ACCESS[name]:
            wrong[name] = {"path": path, "table": ROUTE_ACCESS[name], "seen": seen}
    assert not wrong, wrong
