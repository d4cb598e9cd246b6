"""Tags by hand: exclusive groups, names shared by groups, manual add/remove, expiry, renaming,
merging and deleting with history kept, the timeline, the customers list filter and operator
scoping. Everything here but the schema-free helpers runs on PostgreSQL and SQLite."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from core.conditions import compile_condition
from crm.models import Customer
from tagging import services
from tagging.models import CustomerTag, Tag, TagChange, TagRule
from tests.factories import CustomerFactory
from tests.tagging.conftest import held, history

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]


def tag_url(customer) -> str:
    return f"/api/v1/customers/{customer.pk}/tags/"


def change(client, customer, add=(), remove=(), **extra):
    return client.post(tag_url(customer), {"add": list(add), "remove": list(remove), **extra},
                       format="json")


def matching(condition) -> set[str]:
    return set(Customer.objects.filter(compile_condition(condition))
               .values_list("external_id", flat=True))


@pytest.fixture
def mine(operator):
    return CustomerFactory(external_id="mine", owner=operator)


# --- Manual tagging -------------------------------------------------------------------------

def test_manual_add_and_remove_by_name_and_id(op_api, mine, tags, operator):
    response = change(op_api, mine, add=["美妆", tags["护肤"].pk])

    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["added"], body["removed"]) == (2, 0)
    assert [(t["name"], t["group"], t["source"], t["added_by"]) for t in body["tags"]] == [
        ("美妆", "兴趣", "manual", "op-a"), ("护肤", "兴趣", "manual", "op-a")]
    assert op_api.get(f"/api/v1/customers/{mine.pk}/").json()["tags"] == ["美妆", "护肤"]

    response = change(op_api, mine, add=["金卡"], remove=["美妆"])
    assert (response.json()["added"], response.json()["removed"]) == (1, 1)
    assert held(mine) == {"护肤", "金卡"}
    assert op_api.get(tag_url(mine)).json()["tags"][0]["name"] == "护肤"
    assert history(mine) == [("added", "美妆"), ("added", "护肤"), ("removed", "美妆"),
                             ("added", "金卡")]
    assert set(TagChange.objects.filter(customer=mine).values_list("actor__username",
                                                                   flat=True)) == {"op-a"}


def test_adding_a_tag_twice_changes_nothing(op_api, mine, tags):
    change(op_api, mine, add=["美妆"])
    again = change(op_api, mine, add=["美妆"], remove=["护肤"])

    assert again.status_code == 200
    assert (again.json()["added"], again.json()["removed"]) == (0, 0)
    assert history(mine) == [("added", "美妆")]


@pytest.mark.parametrize(("body", "message"), [
    ({"add": ["没有这个"]}, "add: unknown tag '没有这个'"),
    ({"remove": [999999]}, "remove: unknown tag id 999999"),
    ({"add": ["美妆"], "remove": ["美妆"]}, "A tag cannot be added and removed at once."),
    ({"add": "美妆"}, "add: "),
])
def test_bad_manual_changes_are_400s_that_say_why(op_api, mine, tags, body, message):
    response = op_api.post(tag_url(mine), body, format="json")

    assert response.status_code == 400
    assert response.json()["message"].startswith(message)
    assert held(mine) == set()


def test_operator_cannot_tag_another_operators_customer(op_api, tags, other_operator):
    theirs = CustomerFactory(owner=other_operator)

    assert change(op_api, theirs, add=["美妆"]).status_code == 404
    assert op_api.get(tag_url(theirs)).status_code == 404
    assert held(theirs) == set()


def test_analyst_cannot_tag(analyst, english_client, mine, tags):
    assert change(english_client(analyst), mine, add=["美妆"]).status_code == 403
    assert held(mine) == set()


def test_admin_tags_anyones_customer(admin_api, mine, tags):
    assert change(admin_api, mine, add=["美妆"]).status_code == 200
    assert held(mine) == {"美妆"}


# --- Exclusive groups -----------------------------------------------------------------------

def test_setting_another_tag_of_an_exclusive_group_replaces_it(op_api, mine, tags):
    change(op_api, mine, add=["银卡", "美妆"])
    response = change(op_api, mine, add=["金卡"])

    assert response.status_code == 200
    assert held(mine) == {"金卡", "美妆"}
    assert history(mine) == [("added", "银卡"), ("added", "美妆"), ("replaced", "银卡"),
                             ("added", "金卡")]
    assert [t["name"] for t in response.json()["tags"]] == ["美妆", "金卡"]


def test_two_tags_of_one_exclusive_group_at_once_is_a_400(op_api, mine, tags):
    change(op_api, mine, add=["银卡"])
    response = change(op_api, mine, add=["银卡", "金卡"])

    assert response.status_code == 400
    message = response.json()["message"]
    assert "'银卡'" in message and "'金卡'" in message and "'会员等级'" in message
    assert held(mine) == {"银卡"}


def test_non_exclusive_group_holds_several(op_api, mine, tags):
    change(op_api, mine, add=["美妆", "护肤"])
    assert held(mine) == {"美妆", "护肤"}


def test_making_a_group_exclusive_refuses_customers_with_several_of_its_tags(
        admin_api, mine, tags):
    change(admin_api, mine, add=["美妆", "护肤"])
    url = f"/api/v1/tag-groups/{tags['interest'].pk}/"

    refused = admin_api.patch(url, {"exclusive": True}, format="json")
    assert refused.status_code == 400
    assert refused.json()["message"].startswith("exclusive: ")

    change(admin_api, mine, remove=["护肤"])
    assert admin_api.patch(url, {"exclusive": True}, format="json").status_code == 200
    change(admin_api, mine, add=["护肤"])
    assert held(mine) == {"护肤"}
    assert history(mine)[-2:] == [("replaced", "美妆"), ("added", "护肤")]


def test_moving_a_tag_out_of_an_exclusive_group_frees_its_holders(admin_api, mine, tags):
    change(admin_api, mine, add=["金卡"])
    moved = admin_api.patch(f"/api/v1/tags/{tags['金卡'].pk}/",
                            {"group": tags["interest"].pk}, format="json")
    assert moved.status_code == 200, moved.json()

    change(admin_api, mine, add=["银卡"])

    # 金卡 is an interest now: taking 银卡 (membership level) must not take it away.
    assert held(mine) == {"金卡", "银卡"}


def test_moving_a_tag_into_an_exclusive_group_keeps_one_tag_per_customer(admin_api, mine, tags):
    change(admin_api, mine, add=["美妆", "银卡"])
    refused = admin_api.patch(f"/api/v1/tags/{tags['美妆'].pk}/", {"group": tags["level"].pk},
                              format="json")

    assert refused.status_code == 400
    assert refused.json()["message"].startswith("group: ")
    assert CustomerTag.objects.filter(customer=mine, tag__group=tags["level"]).count() == 1

    other = CustomerFactory(owner=mine.owner)
    change(admin_api, other, add=["美妆"])
    change(admin_api, mine, remove=["美妆"])
    moved = admin_api.patch(f"/api/v1/tags/{tags['美妆'].pk}/", {"group": tags["level"].pk},
                            format="json")
    assert moved.status_code == 200
    change(admin_api, other, add=["金卡"])
    assert held(other) == {"金卡"}          # 美妆 is a membership level now: replaced


def test_only_admins_change_tag_groups_and_tags(op_api, tags):
    assert op_api.get("/api/v1/tag-groups/").status_code == 200
    assert op_api.post("/api/v1/tag-groups/", {"name": "x"}, format="json").status_code == 403
    assert op_api.post("/api/v1/tags/", {"name": "x", "group": tags["interest"].pk},
                       format="json").status_code == 403
    assert op_api.delete(f"/api/v1/tags/{tags['美妆'].pk}/").status_code == 403


def test_tag_groups_and_tags_crud(admin_api):
    group = admin_api.post("/api/v1/tag-groups/", {
        "name": "渠道偏好", "exclusive": True, "description": "d", "order": 3}, format="json")
    assert group.status_code == 201, group.json()
    assert {k: group.json()[k] for k in ("name", "exclusive", "description", "order")} == {
        "name": "渠道偏好", "exclusive": True, "description": "d", "order": 3}
    tag = admin_api.post("/api/v1/tags/", {"name": "直播", "group": group.json()["id"],
                                           "color": "#2563eb", "description": "爱看直播"},
                         format="json")
    assert tag.status_code == 201, tag.json()
    assert {k: tag.json()[k] for k in ("name", "group", "color", "description")} == {
        "name": "直播", "group": group.json()["id"], "color": "#2563eb",
        "description": "爱看直播"}
    duplicate = admin_api.post("/api/v1/tags/", {"name": "直播", "group": group.json()["id"]},
                               format="json")
    assert duplicate.status_code == 400
    listed = admin_api.get(f"/api/v1/tags/?group={group.json()['id']}").json()["results"]
    assert [(t["name"], t["customers"]) for t in listed] == [("直播", 0)]


# --- A name two groups share ----------------------------------------------------------------

def test_a_name_two_groups_share_is_a_400_asking_for_the_id(op_api, mine, tags):
    other = Tag.objects.create(group=tags["level"], name="护肤")
    response = change(op_api, mine, add=["护肤"])

    assert response.status_code == 400
    body = response.json()
    assert body["message"].startswith("add: the name '护肤' is used in groups ")
    assert "兴趣" in body["message"] and "会员等级" in body["message"]
    assert "id" in body["message"]
    assert sorted(body["extra"]["ids"]) == sorted([tags["护肤"].pk, other.pk])
    assert held(mine) == set()

    assert change(op_api, mine, add=[other.pk]).status_code == 200
    assert CustomerTag.objects.get(customer=mine).tag == other
    assert op_api.get(f"/api/v1/customers/?tag={other.pk}").json()["count"] == 1
    assert op_api.get("/api/v1/customers/?tag=护肤").status_code == 400


# --- Expiry ---------------------------------------------------------------------------------

def test_an_expired_tag_stops_matching_and_the_sweeper_records_it(op_api, mine, tags):
    soon = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    response = change(op_api, mine, add=["美妆"], expires_at=soon.isoformat())
    assert response.status_code == 200
    assert parse_datetime(response.json()["tags"][0]["expires_at"]) == soon
    assert matching({"field": "tag", "op": "any", "value": ["美妆"]}) == {"mine"}

    CustomerTag.objects.filter(customer=mine).update(
        expires_at=timezone.now() - timedelta(minutes=1))

    assert matching({"field": "tag", "op": "any", "value": ["美妆"]}) == set()
    assert matching({"field": "tag", "op": "none", "value": ["美妆"]}) == {"mine"}
    assert op_api.get("/api/v1/customers/?tag=美妆").json()["count"] == 0
    preview = op_api.post("/api/v1/segments/preview/", {
        "condition": {"field": "tag", "op": "any", "value": ["美妆"]}}, format="json")
    assert preview.json()["count"] == 0

    assert services.tags_expire() == 1
    assert held(mine) == set()
    assert history(mine) == [("added", "美妆"), ("expired", "美妆")]
    assert services.tags_expire() == 0


def test_the_expiry_task_leaves_fresh_tags(op_api, mine, tags):
    from tagging.tasks import expire_tags

    change(op_api, mine, add=["美妆"], expires_at=(timezone.now() + timedelta(days=1)).isoformat())
    change(op_api, mine, add=["护肤"])

    assert expire_tags.apply().get() == 0
    assert held(mine) == {"美妆", "护肤"}


# --- Rename, merge, delete keep the history -------------------------------------------------

def test_rename_keeps_history_under_the_old_name(admin_api, mine, tags):
    change(admin_api, mine, add=["美妆"])
    renamed = admin_api.patch(f"/api/v1/tags/{tags['美妆'].pk}/", {"name": "彩妆"},
                              format="json")
    assert renamed.status_code == 200
    change(admin_api, mine, remove=["彩妆"])

    assert history(mine) == [("added", "美妆"), ("removed", "彩妆")]
    assert set(TagChange.objects.filter(customer=mine).values_list("tag", flat=True)) == {
        tags["美妆"].pk}


def test_rename_shows_the_new_name_on_the_customer(admin_api, mine, tags):
    change(admin_api, mine, add=["美妆"])
    admin_api.patch(f"/api/v1/tags/{tags['美妆'].pk}/", {"name": "彩妆"}, format="json")

    assert admin_api.get(f"/api/v1/customers/{mine.pk}/").json()["tags"] == ["彩妆"]
    assert matching({"field": "tag", "op": "any", "value": ["彩妆"]}) == {"mine"}


def test_merge_moves_holders_and_history_keeps_both(admin_api, operator, tags):
    only_source = CustomerFactory(external_id="a", owner=operator)
    both = CustomerFactory(external_id="b", owner=operator)
    only_target = CustomerFactory(external_id="c", owner=operator)
    change(admin_api, only_source, add=["美妆"])
    change(admin_api, both, add=["美妆", "护肤"])
    change(admin_api, only_target, add=["护肤"])
    rule = TagRule.objects.create(name="r", tag=tags["美妆"],
                                  condition={"field": "city", "op": "eq", "value": "上海"})

    response = admin_api.post(f"/api/v1/tags/{tags['美妆'].pk}/merge/", {"into": "护肤"},
                              format="json")

    assert response.status_code == 200, response.json()
    assert response.json() == {"added": 1, "removed": 2}
    assert not Tag.objects.filter(name="美妆").exists()
    assert (held(only_source), held(both), held(only_target)) == ({"护肤"},) * 3
    assert history(only_source) == [("added", "美妆"), ("added", "护肤"), ("merged", "美妆")]
    assert history(both) == [("added", "美妆"), ("added", "护肤"), ("merged", "美妆")]
    rule.refresh_from_db()
    assert rule.tag == tags["护肤"]
    timeline = admin_api.get(f"/api/v1/customers/{only_source.pk}/timeline/").json()
    assert {e["data"]["tag"] for e in timeline["results"] if e["kind"] == "tag"} == {"美妆",
                                                                                      "护肤"}


@pytest.mark.parametrize(("into", "status"), [("美妆", 400), ("没有", 400), (None, 400)])
def test_bad_merges_are_400s(admin_api, tags, into, status):
    body = {} if into is None else {"into": into}
    response = admin_api.post(f"/api/v1/tags/{tags['美妆'].pk}/merge/", body, format="json")
    assert response.status_code == status
    assert response.json()["message"].startswith("into: ")
    assert Tag.objects.filter(pk=tags["美妆"].pk).exists()


def test_delete_records_deleted_for_each_holder(admin_api, operator, tags):
    holders = [CustomerFactory(owner=operator) for _n in range(3)]
    for customer in holders:
        change(admin_api, customer, add=["美妆"])

    assert admin_api.delete(f"/api/v1/tags/{tags['美妆'].pk}/").status_code == 204

    assert not Tag.objects.filter(pk=tags["美妆"].pk).exists()
    for customer in holders:
        assert held(customer) == set()
        assert history(customer) == [("added", "美妆"), ("deleted", "美妆")]
    assert TagChange.objects.filter(tag_name="美妆", tag__isnull=True).count() == 6


# --- Timeline -------------------------------------------------------------------------------

def test_tag_changes_appear_in_the_timeline_newest_first(op_api, mine, tags):
    change(op_api, mine, add=["银卡"])
    change(op_api, mine, add=["金卡"])
    change(op_api, mine, remove=["金卡"])

    response = op_api.get(f"/api/v1/customers/{mine.pk}/timeline/")

    assert response.status_code == 200
    entries = [e for e in response.json()["results"] if e["kind"] == "tag"]
    assert [(e["type"], e["data"]["tag"]) for e in entries] == [
        ("removed", "金卡"), ("added", "金卡"), ("replaced", "银卡"), ("added", "银卡")]
    assert all(e["data"]["by"] == "op-a" and e["data"]["group"] == "会员等级" for e in entries)
    assert all("金卡" in e["title"] or "银卡" in e["title"] for e in entries)


# --- Customers list: ?tag= and `tags` -------------------------------------------------------

def test_customers_list_filters_by_tags_all_of_them(op_api, operator, other_operator, tags):
    a = CustomerFactory(external_id="a", owner=operator)
    b = CustomerFactory(external_id="b", owner=operator)
    CustomerFactory(external_id="c", owner=operator)
    theirs = CustomerFactory(external_id="theirs", owner=other_operator)
    change(op_api, a, add=["美妆", "护肤", "金卡"])
    change(op_api, b, add=["美妆"])
    services.customers_tags_change(customers=Customer.objects.filter(pk=theirs.pk),
                                   add=[tags["美妆"]], remove=[], actor=other_operator)

    def ids(query):
        response = op_api.get(f"/api/v1/customers/?{query}")
        assert response.status_code == 200, response.json()
        return {c["external_id"] for c in response.json()["results"]}

    assert ids("tag=美妆") == {"a", "b"}
    assert ids("tag=美妆&tag=护肤") == {"a"}
    assert ids(f"tag={tags['金卡'].pk}&tag=美妆") == {"a"}
    assert ids("tag=银卡") == set()
    listed = {c["external_id"]: c["tags"] for c in op_api.get("/api/v1/customers/").json()[
        "results"]}
    assert listed == {"a": ["美妆", "护肤", "金卡"], "b": ["美妆"], "c": []}
    unknown = op_api.get("/api/v1/customers/?tag=没有")
    assert unknown.status_code == 400
    assert unknown.json()["message"] == "tag: unknown tag '没有'"


def test_customers_list_tags_do_not_cost_a_query_per_customer(
        op_api, operator, tags, django_assert_max_num_queries):
    for n in range(15):
        customer = CustomerFactory(owner=operator)
        change(op_api, customer, add=["美妆", "护肤"] if n % 2 else ["金卡"])
    with django_assert_max_num_queries(12):
        response = op_api.get("/api/v1/customers/?page_size=50")
    assert response.status_code == 200
    assert all(c["tags"] for c in response.json()["results"])
