"""Who may see and change what: operators their own customers, admins all, analysts no
individual customers, no role nothing, anonymous nothing (DESIGN §1, §4)."""

import re

import pytest
from django.urls import URLResolver, get_resolver, resolve
from django.urls.resolvers import RoutePattern

from crm.models import Customer, Group
from tests.factories import (
    PASSWORD,
    ChannelFactory,
    CustomerFactory,
    EventFactory,
    GroupFactory,
    OrderFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

URL = "/api/v1/customers/"


@pytest.fixture
def theirs(other_operator):
    return CustomerFactory(external_id="wm-theirs", owner=other_operator, name="Theirs")


@pytest.fixture
def mine(operator, customer):
    return customer(external_id="wm-mine", owner=operator, name="Mine")


# --- Operators ----------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "suffix"), [
    ("get", ""), ("patch", ""), ("put", ""), ("delete", ""), ("get", "timeline/"),
])
def test_an_operator_gets_404_on_another_operators_customer(
        operator, theirs, api_client_for, method, suffix):
    client = api_client_for(operator)
    response = getattr(client, method)(f"{URL}{theirs.pk}/{suffix}",
                                       {"external_id": "wm-theirs", "name": "Hijacked"},
                                       format="json")

    assert response.status_code == 404
    assert response.json()["message"]
    theirs.refresh_from_db()
    assert (theirs.name, theirs.owner.username) == ("Theirs", "op-b")


def test_an_operator_lists_only_own_customers_events_and_orders(operator, mine, theirs,
                                                                api_client_for):
    for customer in (mine, theirs):
        EventFactory(customer=customer)
        OrderFactory(customer=customer)
    client = api_client_for(operator)

    customers = client.get(URL).json()
    assert [c["external_id"] for c in customers["results"]] == ["wm-mine"]
    assert customers["count"] == 1
    assert [e["customer"] for e in client.get("/api/v1/events/").json()["results"]] == [
        "wm-mine"]
    assert [o["customer"] for o in client.get("/api/v1/orders/").json()["results"]] == [
        "wm-mine"]
    assert client.get(URL, {"search": "wm-theirs"}).json()["count"] == 0


def test_an_operator_cannot_read_another_operators_order(operator, theirs, api_client_for):
    their_order = OrderFactory(customer=theirs)
    response = api_client_for(operator).get(f"/api/v1/orders/{their_order.pk}/")
    assert response.status_code == 404


def test_an_operator_cannot_create_a_customer_owned_by_someone_else(operator, other_operator,
                                                                    api_client_for):
    response = api_client_for(operator).post(URL, {"external_id": "wm-x", "owner": "op-b"},
                                             format="json")

    assert response.status_code == 400
    assert response.json()["message"].startswith("owner:")
    assert not Customer.objects.exists()


def test_an_operator_cannot_hand_a_customer_to_someone_else(operator, other_operator, mine,
                                                            api_client_for):
    response = api_client_for(operator).patch(f"{URL}{mine.pk}/", {"owner": "op-b"},
                                              format="json")

    assert response.status_code == 400
    assert response.json()["message"].startswith("owner:")
    mine.refresh_from_db()
    assert mine.owner == operator


def test_an_operator_may_name_themselves_as_owner(operator, api_client_for):
    response = api_client_for(operator).post(URL, {"external_id": "wm-x", "owner": "op-a"},
                                             format="json")
    assert response.status_code == 201


def test_an_operator_cannot_change_another_operators_group(operator, other_operator, mine,
                                                           api_client_for):
    group = GroupFactory(owner=other_operator, name="Their group")
    group.memberships.create(customer=mine, joined_at=group.created_at)
    client = api_client_for(operator)

    assert client.get(f"/api/v1/groups/{group.pk}/").status_code == 200  # a member is mine
    response = client.patch(f"/api/v1/groups/{group.pk}/", {"name": "Mine now"}, format="json")

    assert response.status_code in (400, 403)
    assert response.json()["message"]
    assert Group.objects.get(pk=group.pk).name == "Their group"


def test_an_operator_does_not_see_unrelated_groups(operator, other_operator, api_client_for):
    GroupFactory(owner=other_operator)
    own = GroupFactory(owner=operator)

    results = api_client_for(operator).get("/api/v1/groups/").json()["results"]
    assert [g["id"] for g in results] == [own.pk]


def test_channels_are_read_by_everyone_and_changed_by_admins(operator, admin_user, analyst,
                                                             api_client_for):
    channel = ChannelFactory(code="qr-1")
    for user in (operator, analyst):
        client = api_client_for(user)
        assert client.get("/api/v1/channels/").json()["count"] == 1
        response = client.patch(f"/api/v1/channels/{channel.pk}/", {"name": "x"}, format="json")
        assert response.status_code == 403
        assert response.json()["message"]
    response = api_client_for(admin_user).patch(f"/api/v1/channels/{channel.pk}/",
                                                {"name": "Renamed"}, format="json")
    assert response.status_code == 200
    assert response.json()["name"] == "Renamed"


# --- Admins -------------------------------------------------------------------------------

def test_an_admin_sees_and_changes_every_customer(admin_user, mine, theirs, api_client_for):
    client = api_client_for(admin_user)

    assert {c["external_id"] for c in client.get(URL).json()["results"]} == {
        "wm-mine", "wm-theirs"}
    assert client.get(f"{URL}{theirs.pk}/timeline/").status_code == 200
    response = client.patch(f"{URL}{theirs.pk}/", {"owner": "op-a"}, format="json")
    assert response.status_code == 200
    theirs.refresh_from_db()
    assert theirs.owner.username == "op-a"


def test_a_user_in_the_admin_group_counts_as_admin(mine, theirs, api_client_for):
    manager = UserFactory(username="manager", roles=["admin"])
    assert api_client_for(manager).get(URL).json()["count"] == 2


# --- Analysts and users without a role -----------------------------------------------------

@pytest.mark.parametrize("role", ["analyst", "none"])
@pytest.mark.parametrize(("method", "path"), [
    ("get", "customers/"), ("post", "customers/"), ("get", "customers/{pk}/"),
    ("get", "customers/{pk}/timeline/"), ("post", "customers/import/"),
    ("get", "events/"), ("post", "events/"), ("get", "orders/"), ("post", "orders/"),
    ("get", "groups/"), ("post", "groups/"),
])
def test_analysts_and_users_without_a_role_get_403_on_customer_data(
        mine, api_client_for, role, method, path):
    user = UserFactory(username=f"user-{role}", roles=[role] if role != "none" else None)
    url = "/api/v1/" + path.format(pk=mine.pk)
    response = getattr(api_client_for(user), method)(url, {}, format="json")

    assert response.status_code == 403
    assert response.json()["message"]


def test_a_user_without_a_role_is_told_to_ask_for_one(api_client_for):
    response = api_client_for(UserFactory(username="nobody")).get("/api/v1/channels/")
    assert response.status_code == 403
    assert "admin" in response.json()["message"]


# --- Anonymous ----------------------------------------------------------------------------

def _sample(name: str, regex: str) -> str:
    """A value for URL parameter `name` that its regex accepts: an id, or a format suffix."""
    candidates = ("json", ".json") if name == "format" else ("1", "x")
    value = next((v for v in candidates if re.fullmatch(regex, v)), None)
    assert value is not None, f"no sample value for URL parameter {name} ({regex!r})"
    return value


def _concrete(pattern) -> str:
    """A URL part matching a route or regex pattern, with a sample value for each parameter."""
    text = str(pattern)
    if isinstance(pattern, RoutePattern):
        return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: _sample(
            m.group(1), pattern.converters[m.group(1)].regex), text)
    text = re.sub(r"\(\?P<(\w+)>([^)]*)\)", lambda m: _sample(m.group(1), m.group(2)), text)
    return text.replace("^", "").replace("$", "").replace("/?", "/").replace("\\.", ".")


API = "api/v1/"


def api_routes() -> list[tuple[str, list[str]]]:
    """Every (url, methods) the URL resolver serves under /api/v1/."""
    found = []

    def walk(patterns, prefix):
        for entry in patterns:
            start = prefix + str(entry.pattern).lstrip("^")
            if isinstance(entry, URLResolver):
                if start.startswith(API) or API.startswith(start):
                    walk(entry.url_patterns, prefix + _concrete(entry.pattern))
                continue
            if not start.startswith(API) or start == f"{API}auth/token/":
                continue
            callback = entry.callback
            actions = getattr(callback, "actions", None)
            if actions:
                methods = list(actions)
            else:
                view = getattr(callback, "view_class", None) or callback.cls
                methods = [m for m in ("get", "post", "put", "patch", "delete")
                           if hasattr(view, m)]
            found.append(("/" + prefix + _concrete(entry.pattern), methods))

    walk(get_resolver().url_patterns, "")
    return found


ROUTES = api_routes()


def test_the_route_list_covers_the_api():
    urls = {url for url, _m in ROUTES}
    assert {"/api/v1/", "/api/v1/customers/", "/api/v1/customers/1/",
            "/api/v1/customers/1/timeline/", "/api/v1/customers/import/", "/api/v1/events/",
            "/api/v1/orders/", "/api/v1/orders/1/", "/api/v1/channels/", "/api/v1/groups/1/",
            "/api/v1/groups/1/members/"} <= urls
    for url, _methods in ROUTES:
        resolve(url)  # every sample URL really is served


@pytest.mark.parametrize(("url", "methods"), ROUTES, ids=[url for url, _m in ROUTES])
def test_every_api_route_refuses_anonymous_requests_with_401(url, methods, api_client_for):
    client = api_client_for(None)
    for method in methods:
        response = getattr(client, method)(url, {}, format="json")
        assert response.status_code == 401, (method, url, response.status_code)
        assert response.json()["message"]


def test_a_wrong_token_is_a_401(api_client_for):
    client = api_client_for(None)
    client.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef")
    response = client.get(URL)

    assert response.status_code == 401
    assert response.json()["message"]


# --- Token endpoint -----------------------------------------------------------------------

TOKEN = "/api/v1/auth/token/"


def test_good_credentials_get_a_token_that_works(operator, mine, api_client_for):
    client = api_client_for(None)
    response = client.post(TOKEN, {"username": "op-a", "password": PASSWORD}, format="json")

    assert response.status_code == 200
    token = response.json()["token"]
    again = client.post(TOKEN, {"username": "op-a", "password": PASSWORD}, format="json")
    assert again.json()["token"] == token
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get(URL).json()["count"] == 1


@pytest.mark.parametrize("body", [
    {"username": "op-a", "password": "wrong"},
    {"username": "ghost", "password": PASSWORD},
    {"username": "op-a"},
    {},
])
def test_bad_credentials_are_a_400_with_a_message(operator, api_client_for, body):
    response = api_client_for(None).post(TOKEN, body, format="json")

    assert response.status_code == 400
    assert response.json()["message"]
    assert "token" not in response.json()


def test_an_inactive_user_gets_no_token(api_client_for):
    UserFactory(username="gone", is_active=False, roles=["operator"])
    response = api_client_for(None).post(TOKEN, {"username": "gone", "password": PASSWORD},
                                         format="json")
    assert response.status_code == 400
