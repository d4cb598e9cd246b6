"""The tags pages: tag groups and tags (create, edit, merge, delete with the effect stated) and
tag rules (condition as JSON, run now, last runs) — the same services and permissions as the
REST API: every role reads, only admins write."""

from datetime import timedelta

import pytest
from django.utils import timezone

from crm.models import Customer
from tagging import services
from tagging.models import CustomerTag, Tag, TagChange, TagGroup, TagRule, TagRuleRun
from tests.factories import CustomerFactory, UserFactory

pytestmark = pytest.mark.django_db

SHANGHAI = {"field": "city", "op": "eq", "value": "上海"}


@pytest.fixture
def catalogue(db):
    """Two groups: 兴趣 (any number) with 美妆 and 护肤, and 会员等级 (exclusive) with 金卡."""
    interest = TagGroup.objects.create(name="兴趣", order=1, description="顾客的兴趣")
    level = TagGroup.objects.create(name="会员等级", exclusive=True, order=2)
    return {
        "interest": interest, "level": level,
        "美妆": Tag.objects.create(group=interest, name="美妆", color="#db2777"),
        "护肤": Tag.objects.create(group=interest, name="护肤", color="#2563eb"),
        "金卡": Tag.objects.create(group=level, name="金卡", color="#ca8a04"),
    }


def give(tag: Tag, *customers) -> None:
    services.customers_tags_change(customers=Customer.objects.filter(
        pk__in=[c.pk for c in customers]), add=[tag], remove=[], actor=None)


def held(customer) -> set[str]:
    return set(CustomerTag.objects.filter(customer=customer).values_list("tag__name", flat=True))


def flashes(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# --- Who may do what --------------------------------------------------------------------------

READ, WRITE = "read", "write"
ROLE_FIXTURES = {"analyst": "analyst", "operator": "operator", "admin": "admin_user"}

# (method, path, what it is): reads are open to every role, writes to admins only.
PAGES = [
    ("get", "/tags/", READ),
    ("post", "/tags/new/", WRITE),
    ("post", "/tags/groups/new/", WRITE),
    ("get", "/tags/groups/{group}/", WRITE),
    ("post", "/tags/groups/{group}/", WRITE),
    ("get", "/tags/{tag}/", WRITE),
    ("post", "/tags/{tag}/", WRITE),
    ("post", "/tags/{tag}/merge/", WRITE),
    ("post", "/tags/{tag}/delete/", WRITE),
    ("get", "/tags/rules/", READ),
    ("get", "/tags/rules/new/", WRITE),
    ("post", "/tags/rules/new/", WRITE),
    ("get", "/tags/rules/{rule}/", READ),
    ("post", "/tags/rules/{rule}/", WRITE),
    ("post", "/tags/rules/{rule}/run/", WRITE),
]


def _payload(path: str, catalogue, rule) -> dict:
    if path.endswith("/merge/"):
        return {"into": catalogue["护肤"].pk, "confirm": "1"}
    if path.startswith("/tags/rules/"):
        return {"name": "上海", "tag": catalogue["美妆"].pk, "mode": "add", "active": "on",
                "priority": 100, "interval_minutes": 60, "condition": '{"field": "city", '
                '"op": "eq", "value": "上海"}'}
    if path.startswith("/tags/groups/"):
        return {"name": "渠道", "order": 3}
    return {"name": "彩妆", "group": catalogue["interest"].pk, "color": "#111111", "order": 0}


@pytest.fixture
def page_args(catalogue):
    rule = TagRule.objects.create(name="上海客户", tag=catalogue["美妆"], condition=SHANGHAI)
    return {"group": catalogue["interest"].pk, "tag": catalogue["美妆"].pk,
            "rule": rule.pk}, rule


@pytest.mark.parametrize(("method", "path", "kind"), PAGES)
def test_anonymous_visitors_are_sent_to_sign_in(client, page_args, method, path, kind):
    url = path.format(**page_args[0])
    response = getattr(client, method)(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("role", ["analyst", "operator", "admin"])
@pytest.mark.parametrize(("method", "path", "kind"), PAGES)
def test_every_role_reads_and_only_admins_write(request, reader, page_args, catalogue, role,
                                                method, path, kind):
    client = reader(request.getfixturevalue(ROLE_FIXTURES[role]))
    args, rule = page_args
    url = path.format(**args)
    before = (Tag.objects.count(), TagGroup.objects.count(), TagRule.objects.count(),
              TagRuleRun.objects.count())
    data = _payload(path, catalogue, rule) if method == "post" else None
    response = getattr(client, method)(url, data) if data else getattr(client, method)(url)

    if kind == READ or role == "admin":
        assert response.status_code in (200, 302), response.content.decode()[:500]
    else:
        assert response.status_code == 403
        assert "Only admins may change tags and tag rules." in response.content.decode()
        after = (Tag.objects.count(), TagGroup.objects.count(), TagRule.objects.count(),
                 TagRuleRun.objects.count())
        assert after == before


def test_a_user_without_a_role_gets_403(reader, catalogue):
    client = reader(UserFactory(username="nobody"))
    assert client.get("/tags/").status_code == 403
    assert client.get("/tags/rules/").status_code == 403


def test_readers_see_counts_without_edit_controls(reader, analyst, operator, catalogue):
    give(catalogue["美妆"], CustomerFactory(owner=operator), CustomerFactory(owner=operator))
    page = reader(analyst).get("/tags/").content.decode()
    assert "美妆" in page and "New tag" not in page and "/tags/new/" not in page
    assert "/customers/?tag=" not in page      # analysts have no customer list to go to
    operator_page = reader(operator).get("/tags/").content.decode()
    assert "/customers/?tag=%E7%BE%8E%E5%A6%86" in operator_page
    assert "/tags/new/" not in operator_page


# --- Tag groups and tags ----------------------------------------------------------------------

def test_the_tags_page_shows_groups_chips_and_counts(reader, admin_user, catalogue):
    give(catalogue["美妆"], *[CustomerFactory() for _n in range(3)])
    response = reader(admin_user).get("/tags/")
    page = response.content.decode()
    groups = {g.name: g for g in response.context["groups"]}
    assert {t.name: t.customer_count for t in groups["兴趣"].tag_rows} == {"美妆": 3, "护肤": 0}
    assert "顾客的兴趣" in page and "Exclusive" in page
    assert 'style="background: #db27771f; border-color: #db277755; color: #db2777"' in page
    assert 'href="/customers/?tag=%E7%BE%8E%E5%A6%86"' in page     # by name


def test_a_name_two_groups_share_links_the_customer_list_by_id(reader, admin_user, catalogue):
    twin = Tag.objects.create(group=catalogue["level"], name="美妆")
    page = reader(admin_user).get("/tags/").content.decode()
    assert f'href="/customers/?tag={twin.pk}"' in page
    assert f'href="/customers/?tag={catalogue["美妆"].pk}"' in page


def test_admin_creates_a_group_and_a_tag_with_a_colour(reader, admin_user):
    client = reader(admin_user)
    response = client.post("/tags/groups/new/", {"name": "渠道", "exclusive": "on",
                                                 "description": "从哪里来", "order": 5})
    group = TagGroup.objects.get(name="渠道")
    assert response.status_code == 302 and response["Location"] == f"/tags/#group-{group.pk}"
    assert group.exclusive and group.description == "从哪里来" and group.order == 5

    response = client.post("/tags/new/", {"name": "直播", "group": group.pk, "color": "#0EA5E9",
                                          "description": "直播间", "order": 0}, follow=True)
    tag = Tag.objects.get(name="直播")
    assert (tag.group, tag.color, tag.description) == (group, "#0EA5E9", "直播间")
    assert flashes(response)[-1] == "Tag “直播” created."
    assert "color: #0EA5E9" in response.content.decode()


def test_a_duplicate_tag_name_in_a_group_is_shown_not_a_500(reader, admin_user, catalogue):
    response = reader(admin_user).post("/tags/new/", {
        "name": "美妆", "group": catalogue["interest"].pk, "color": "#000000", "order": 0})
    assert response.status_code == 400
    assert "Tag with this Tag group and Name already exists." in response.content.decode()
    assert Tag.objects.filter(name="美妆").count() == 1


def test_a_duplicate_group_name_is_shown(reader, admin_user, catalogue):
    response = reader(admin_user).post("/tags/groups/new/", {"name": "兴趣", "order": 0})
    assert response.status_code == 400
    assert "Tag group with this Name already exists." in response.content.decode()


def test_admin_edits_a_tag_and_moves_it_to_another_group(reader, admin_user, catalogue):
    client = reader(admin_user)
    editor = client.get(f"/tags/{catalogue['护肤'].pk}/", HTTP_HX_REQUEST="true")
    assert editor.status_code == 200
    assert "<html" not in editor.content.decode()           # the fragment for the side panel
    assert 'type="color"' in editor.content.decode()

    response = client.post(f"/tags/{catalogue['护肤'].pk}/", {
        "name": "护肤品", "group": catalogue["level"].pk, "color": "#16a34a",
        "description": "", "order": 2})
    assert response.status_code == 302
    tag = Tag.objects.get(pk=catalogue["护肤"].pk)
    assert (tag.name, tag.group, tag.color, tag.order) == ("护肤品", catalogue["level"],
                                                          "#16a34a", 2)


def test_moving_a_tag_into_an_exclusive_group_the_service_refuses_is_shown(
        reader, admin_user, catalogue):
    customer = CustomerFactory()
    give(catalogue["护肤"], customer)
    give(catalogue["金卡"], customer)
    response = reader(admin_user).post(f"/tags/{catalogue['护肤'].pk}/", {
        "name": "护肤", "group": catalogue["level"].pk, "color": "#2563eb", "order": 0})
    assert response.status_code == 400
    assert ("some customers holding this tag already hold another tag of the exclusive group "
            "&#x27;会员等级&#x27;") in response.content.decode()
    assert Tag.objects.get(pk=catalogue["护肤"].pk).group == catalogue["interest"]


def test_making_a_group_exclusive_while_customers_hold_two_is_refused(
        reader, admin_user, catalogue):
    customer = CustomerFactory()
    give(catalogue["美妆"], customer)
    give(catalogue["护肤"], customer)
    response = reader(admin_user).post(f"/tags/groups/{catalogue['interest'].pk}/", {
        "name": "兴趣", "exclusive": "on", "order": 1})
    assert response.status_code == 400
    assert "some customers hold several tags of this group" in response.content.decode()
    assert not TagGroup.objects.get(pk=catalogue["interest"].pk).exclusive


def test_merge_states_its_effect_then_moves_the_holders(reader, admin_user, catalogue):
    only_source, both = CustomerFactory(), CustomerFactory()
    give(catalogue["美妆"], only_source, both)
    give(catalogue["护肤"], both)
    rule = TagRule.objects.create(name="上海客户", tag=catalogue["美妆"], condition=SHANGHAI)
    client = reader(admin_user)
    source_pk = catalogue["美妆"].pk

    confirm = client.post(f"/tags/{source_pk}/merge/", {"into": catalogue["护肤"].pk})
    page = confirm.content.decode()
    assert confirm.status_code == 200
    assert "2 customers move to “护肤”; “美妆” is deleted." in page
    assert "1 of them already holds “护肤”." in page
    assert "1 rule now adds “护肤” instead: 上海客户" in page
    assert Tag.objects.filter(pk=source_pk).exists()         # nothing done yet

    response = client.post(f"/tags/{source_pk}/merge/",
                           {"into": catalogue["护肤"].pk, "confirm": "1"}, follow=True)
    assert not Tag.objects.filter(pk=source_pk).exists()
    assert held(only_source) == held(both) == {"护肤"}
    rule.refresh_from_db()
    assert rule.tag == catalogue["护肤"]
    assert flashes(response) == ["“美妆” merged into “护肤”: 1 customers gained “护肤”, 2 lost "
                                 "“美妆”, which is deleted."]


@pytest.mark.parametrize("confirm", ["1", ""])
def test_merging_a_tag_into_itself_is_refused_with_the_services_message(
        reader, admin_user, catalogue, confirm):
    response = reader(admin_user).post(f"/tags/{catalogue['美妆'].pk}/merge/", {
        "into": catalogue["美妆"].pk, "confirm": confirm}, follow=True)
    assert response.redirect_chain[-1][0] == f"/tags/{catalogue['美妆'].pk}/"
    assert flashes(response) == ["into: a tag cannot be merged into itself."]
    assert Tag.objects.filter(pk=catalogue["美妆"].pk).exists()


def test_delete_states_the_effect_and_holders_lose_the_tag(reader, admin_user, catalogue):
    holders = [CustomerFactory() for _n in range(3)]
    give(catalogue["美妆"], *holders)
    TagRule.objects.create(name="上海客户", tag=catalogue["美妆"], condition=SHANGHAI)
    client = reader(admin_user)

    editor = client.get(f"/tags/{catalogue['美妆'].pk}/").content.decode()
    assert "Deleting “美妆” removes it from 3 customers" in editor
    assert "The 1 rule that adds it is deleted too, with its runs:" in editor
    assert "上海客户" in editor

    response = client.post(f"/tags/{catalogue['美妆'].pk}/delete/", follow=True)
    assert flashes(response) == ["Tag “美妆” deleted: removed from 3 customers; 1 rules that "
                                 "added it deleted."]
    assert not Tag.objects.filter(name="美妆").exists()
    assert not TagRule.objects.filter(name="上海客户").exists()
    assert all(held(c) == set() for c in holders)
    assert TagChange.objects.filter(tag_name="美妆", action="deleted").count() == 3


def test_the_tags_page_queries_are_bounded(reader, admin_user, django_assert_max_num_queries):
    customers = [CustomerFactory() for _n in range(5)]
    for g in range(4):
        group = TagGroup.objects.create(name=f"组{g}", exclusive=g == 0)
        for t in range(6):
            tag = Tag.objects.create(group=group, name=f"标签{g}-{t}")
            give(tag, *customers[: t % 3 + (0 if g == 0 else 1)])
            TagRule.objects.create(name=f"规则{g}-{t}", tag=tag, condition=SHANGHAI)
    client = reader(admin_user)
    # Session, user, the groups, their tags with holder and rule counts.
    with django_assert_max_num_queries(5):
        response = client.get("/tags/")
    assert response.status_code == 200
    assert sum(len(g.tag_rows) for g in response.context["groups"]) >= 24


# --- Tag rules --------------------------------------------------------------------------------

def _rule_form(catalogue, **fields) -> dict:
    return {"name": "上海客户", "tag": catalogue["美妆"].pk, "mode": "sync", "active": "on",
            "priority": 50, "interval_minutes": 30,
            "condition": '{"all": [{"field": "city", "op": "eq", "value": "上海"}]}', **fields}


def test_admin_creates_a_rule_with_a_condition(reader, admin_user, catalogue):
    client = reader(admin_user)
    form = client.get("/tags/rules/new/").content.decode()
    assert '<textarea id="rule-condition" name="condition" rows="12" spellcheck="false" ' \
           'data-condition-builder>' in form

    response = client.post("/tags/rules/new/", _rule_form(catalogue))
    rule = TagRule.objects.get(name="上海客户")
    assert response.status_code == 302 and response["Location"] == f"/tags/rules/{rule.pk}/"
    assert rule.condition == {"all": [SHANGHAI]}
    assert (rule.tag, rule.mode, rule.active, rule.priority, rule.interval_minutes) == (
        catalogue["美妆"], "sync", True, 50, 30)

    page = client.get(f"/tags/rules/{rule.pk}/").content.decode()
    assert "&quot;field&quot;: &quot;city&quot;" in page        # pretty JSON in the textarea
    assert '\n  "all": [' in page.replace("&quot;", '"')


def test_invalid_json_is_a_400_naming_the_problem_with_the_typed_values_kept(
        reader, admin_user, catalogue):
    response = reader(admin_user).post("/tags/rules/new/", _rule_form(
        catalogue, name="半截", condition='{"field": "city", "op": "eq",'))
    page = response.content.decode()
    assert response.status_code == 400
    assert "The condition is not valid JSON: Expecting property name enclosed in double " \
           "quotes (line 1, column 30)." in page
    assert 'value="半截"' in page
    assert "{&quot;field&quot;: &quot;city&quot;, &quot;op&quot;: &quot;eq&quot;,</textarea>" \
        in page
    assert not TagRule.objects.filter(name__in=["上海客户", "半截"]).exists()


def test_a_condition_the_compiler_refuses_is_a_400_with_its_message(
        reader, admin_user, catalogue):
    response = reader(admin_user).post("/tags/rules/new/", _rule_form(
        catalogue, condition='{"field": "shoe_size", "op": "eq", "value": 42}'))
    page = response.content.decode()
    assert response.status_code == 400
    assert "condition.field: unknown field &#x27;shoe_size&#x27;; known: " in page
    assert "shoe_size&quot;, &quot;op&quot;" in page        # what was typed, kept
    assert not TagRule.objects.filter(name__in=["上海客户", "半截"]).exists()


def test_editing_a_rule_keeps_it_when_the_condition_is_refused(reader, admin_user, catalogue):
    rule = TagRule.objects.create(name="上海客户", tag=catalogue["美妆"], condition=SHANGHAI)
    client = reader(admin_user)
    response = client.post(f"/tags/rules/{rule.pk}/", _rule_form(
        catalogue, name="改名", condition='{"field": "city", "op": "older_than", "value": 1}'))
    assert response.status_code == 400
    assert "unknown operator" in response.content.decode()
    rule.refresh_from_db()
    assert (rule.name, rule.condition) == ("上海客户", SHANGHAI)

    response = client.post(f"/tags/rules/{rule.pk}/", _rule_form(catalogue, name="改名",
                                                                 active=""))
    assert response.status_code == 302
    rule.refresh_from_db()
    assert (rule.name, rule.active) == ("改名", False)


def test_readers_see_a_rule_without_its_form(reader, operator, catalogue):
    rule = TagRule.objects.create(name="上海客户", tag=catalogue["美妆"], condition=SHANGHAI)
    page = reader(operator).get(f"/tags/rules/{rule.pk}/").content.decode()
    assert "上海客户" in page and "&quot;上海&quot;" in page
    assert "<textarea" not in page and "Run now" not in page


def test_run_now_runs_the_rule_and_flashes_its_figures(reader, admin_user, catalogue):
    for city in ("上海", "上海", "北京"):
        CustomerFactory(city=city)
    rule = TagRule.objects.create(name="上海客户", tag=catalogue["美妆"], condition=SHANGHAI)
    client = reader(admin_user)

    response = client.post(f"/tags/rules/{rule.pk}/run/",
                           {"next": f"/tags/rules/{rule.pk}/"}, follow=True)

    run = TagRuleRun.objects.get(rule=rule)
    assert (run.trigger, run.matched, run.added, run.removed) == ("manual", 2, 2, 0)
    assert response.redirect_chain[-1][0] == f"/tags/rules/{rule.pk}/"
    assert flashes(response) == [f"“上海客户” ran: 2 matched, 2 added, 0 removed, in "
                                 f"{run.duration_ms} ms."]
    row = response.content.decode().split(f'data-run="{run.pk}"')[1].split("</tr>")[0]
    assert "On demand" in row and '"matched">2<' in row and '"added">+2<' in row


def test_run_now_goes_back_only_to_this_site(reader, admin_user, catalogue):
    rule = TagRule.objects.create(name="r", tag=catalogue["美妆"], condition=SHANGHAI)
    response = reader(admin_user).post(f"/tags/rules/{rule.pk}/run/",
                                       {"next": "https://evil.example/"})
    assert response["Location"] == "/tags/rules/"


def test_the_rules_list_shows_each_rules_last_run(reader, operator, catalogue):
    rule = TagRule.objects.create(name="上海客户", tag=catalogue["美妆"], condition=SHANGHAI,
                                  interval_minutes=45)
    never = TagRule.objects.create(name="从未运行", tag=catalogue["护肤"], condition=SHANGHAI,
                                   mode="sync", active=False)
    now = timezone.now()
    TagRuleRun.objects.create(rule=rule, trigger="schedule", started_at=now - timedelta(hours=2),
                              matched=9, added=9, removed=0, duration_ms=40)
    TagRuleRun.objects.create(rule=rule, trigger="manual", started_at=now - timedelta(hours=1),
                              matched=7, added=1, removed=3, duration_ms=1234)
    response = reader(operator).get("/tags/rules/")
    page = response.content.decode()
    row = page.split(f'id="rule-{rule.pk}"')[1].split("</tr>")[0]
    assert "every 45 minutes" in row and "Add only" in row and "On demand" in row
    assert '"matched">7<' in row and '"added">+1<' in row and '"removed">−3<' in row
    assert "1234 ms" in row
    other = page.split(f'id="rule-{never.pk}"')[1].split("</tr>")[0]
    assert "Not run yet" in other and "Paused" in other and "Sync" in other
    assert "Run now" not in page                      # operators read, admins run

    only = reader(operator).get(f"/tags/rules/?tag={catalogue['护肤'].pk}")
    assert [r.name for r in only.context["rules"]] == ["从未运行"]


def test_the_rules_page_queries_are_bounded(reader, admin_user, catalogue,
                                            django_assert_max_num_queries):
    now = timezone.now()
    for n in range(12):
        rule = TagRule.objects.create(name=f"规则{n}", tag=catalogue["美妆" if n % 2 else "金卡"],
                                      condition=SHANGHAI)
        for k in range(3):
            TagRuleRun.objects.create(rule=rule, trigger="schedule", matched=n, added=k,
                                      started_at=now - timedelta(hours=k))
    client = reader(admin_user)
    # Session, user, the rules with their tags, their latest runs.
    with django_assert_max_num_queries(5):
        response = client.get("/tags/rules/")
    assert response.status_code == 200
    mine = [r for r in response.context["rules"] if r.name.startswith("规则")]
    assert len(mine) == 12 and all(r.last_run.added == 0 for r in mine)   # the newest run
    rule = mine[0]
    with django_assert_max_num_queries(7):
        assert client.get(f"/tags/rules/{rule.pk}/").status_code == 200
