"""The customer list's filter bar: pickers for stages (by model, by name), tags (any / all /
none), segment, joined range and an advanced condition, all as one condition; and its total,
answered without a COUNT(*) over every customer (segment index, exact when small, else the
planner's estimate) and labelled so."""

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from crm import selectors
from crm.models import Customer
from lifecycle.models import CustomerStage, Stage, StageModel
from tagging import segment_index
from tagging.models import CustomerTag, Segment, Tag, TagGroup
from tests.factories import ChannelFactory, CustomerFactory, UserFactory

pytestmark = pytest.mark.django_db

URL = "/customers/"


def names(response) -> list[str]:
    return sorted(row["customer"].name for row in response.context["rows"])


def place(customer, model_key: str, stage_key: str) -> None:
    model = StageModel.objects.get(key=model_key)
    CustomerStage.objects.update_or_create(
        customer=customer, model=model,
        defaults={"stage": Stage.objects.get(model=model, key=stage_key),
                  "entered_at": timezone.now(), "source": "rule"})


def tag(customer, *tags: Tag) -> None:
    for item in tags:
        CustomerTag.objects.create(customer=customer, tag=item, source="manual",
                                   added_at=timezone.now())


@pytest.fixture
def catalogue():
    interest = TagGroup.objects.create(name="兴趣")
    level = TagGroup.objects.create(name="等级")
    return {"美妆": Tag.objects.create(group=interest, name="美妆", color="#d9488b"),
            "母婴": Tag.objects.create(group=interest, name="母婴", color="#2f7de1"),
            "VIP": Tag.objects.create(group=level, name="VIP", color="#b7791f")}


@pytest.fixture
def shop(wang, catalogue):
    """Five customers of 王芳's, one of another operator's."""
    now = timezone.now()
    people = {name: CustomerFactory(owner=wang, name=name, joined_at=now - timedelta(days=days))
              for name, days in (("安", 40), ("博", 20), ("晨", 10), ("丁", 5), ("恩", 1))}
    place(people["安"], "value", "dormant")
    place(people["博"], "value", "growth")
    place(people["晨"], "value", "dormant")
    place(people["晨"], "journey", "trust")
    place(people["丁"], "journey", "trust")
    tag(people["安"], catalogue["美妆"], catalogue["VIP"])
    tag(people["博"], catalogue["美妆"])
    tag(people["晨"], catalogue["母婴"])
    stranger = CustomerFactory(owner=UserFactory(roles=["operator"]), name="外人")
    place(stranger, "value", "dormant")
    tag(stranger, catalogue["美妆"])
    return people


@pytest.mark.parametrize(("params", "expected"), [
    ({"stage": "value:dormant"}, ["安", "晨"]),
    ({"stage": ["value:dormant", "value:growth"]}, ["博", "安", "晨"]),    # any within a model
    ({"stage": ["value:dormant", "journey:trust"]}, ["晨"]),              # all across models
    ({"stage": "value:dormant,growth"}, ["博", "安", "晨"]),                # the link form
    ({"stage": "journey:trust"}, ["丁", "晨"]),
])
def test_the_stage_picker_narrows_per_model(reader, wang, shop, params, expected):
    assert names(reader(wang).get(URL, params)) == sorted(expected)


def test_tags_match_any_all_or_none(reader, wang, shop, catalogue):
    client = reader(wang)
    beauty, vip = str(catalogue["美妆"].pk), str(catalogue["VIP"].pk)

    assert names(client.get(URL, {"tag": [beauty, vip]})) == sorted(["安", "博"])
    assert names(client.get(URL, {"tag": [beauty, vip], "tag_mode": "any"})) == sorted(["安", "博"])
    assert names(client.get(URL, {"tag": [beauty, vip], "tag_mode": "all"})) == ["安"]
    assert names(client.get(URL, {"tag": [beauty], "tag_mode": "none"})) == sorted(["丁", "恩", "晨"])
    # The tags page links by name; the picker shows it chosen (by id).
    by_name = client.get(URL, {"tag": "美妆"})
    assert names(by_name) == sorted(["安", "博"])
    assert f'value="{beauty}" data-color="#d9488b" selected' in by_name.content.decode()


def test_segment_and_joined_range(reader, wang, shop):
    client = reader(wang)
    segment = Segment.objects.create(name="沉睡", condition={
        "field": "stage", "model": "value", "op": "in", "value": ["dormant"]})
    today = timezone.localdate()

    assert names(client.get(URL, {"segment": segment.pk})) == sorted(["安", "晨"])
    assert names(client.get(URL, {"joined_from": (today - timedelta(days=15)).isoformat()})) \
        == sorted(["丁", "恩", "晨"])
    assert names(client.get(URL, {"joined_from": (today - timedelta(days=25)).isoformat(),
                                  "joined_to": (today - timedelta(days=5)).isoformat()})) \
        == sorted(["丁", "博", "晨"])
    assert names(client.get(URL, {"segment": segment.pk, "joined_to":
                                  (today - timedelta(days=30)).isoformat()})) == ["安"]
    unknown = client.get(URL, {"segment": "999999"})      # a stale link: ignored by the form
    assert unknown.status_code == 200


def test_the_advanced_condition_is_anded_with_the_filters(reader, wang, shop):
    advanced = {"field": "joined_at", "op": "within_days", "value": 15}

    response = reader(wang).get(URL, {"stage": "journey:trust",
                                      "condition": json.dumps(advanced)})

    assert names(response) == sorted(["丁", "晨"])
    assert "data-condition-builder" in response.content.decode()
    # …and its condition is what "all matching" and a campaign receive.
    assert response.context["condition"] == {"all": [
        {"field": "stage", "model": "journey", "op": "in", "value": ["trust"]}, advanced]}


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "Advanced condition: not valid JSON"),
    (json.dumps({"field": "joined_at", "op": "older_than"}),
     "Advanced condition: op: unknown operator 'older_than'"),
    (json.dumps({"all": [{"field": "nope", "op": "eq", "value": 1}]}),
     "Advanced condition: all[0].field: unknown field 'nope'"),
])
def test_a_bad_advanced_condition_is_a_clear_error(reader, wang, shop, text, message):
    response = reader(wang).get(URL, {"condition": text})

    assert response.status_code == 200
    assert response.context["error"].startswith(message)
    assert response.context["rows"] == []
    assert "data-filter-error" in response.content.decode()


def test_a_tag_name_two_groups_share_asks_for_the_id(reader, wang, shop, catalogue):
    Tag.objects.create(group=TagGroup.objects.get(name="等级"), name="美妆")

    response = reader(wang).get(URL, {"tag": "美妆"})

    assert response.status_code == 200
    assert "name the tag by its id" in response.context["error"]


def test_operators_never_see_others_customers_whatever_the_filter(reader, wang, shop):
    stranger = Customer.objects.get(name="外人")
    client = reader(wang)
    for params in ({"stage": "value:dormant"}, {"tag": "美妆"}, {"q": "外"},
                   {"condition": json.dumps({"field": "owner", "op": "eq",
                                             "value": stranger.owner.username})}):
        assert "外人" not in names(client.get(URL, params)), params
    assert "owner" not in client.get(URL).context["form"].fields


def test_pickers_show_names_and_colours_not_keys(reader, wang, shop):
    page = reader(wang).get(URL, {"stage": "value:dormant"}).content.decode()

    dormant = Stage.objects.get(model__key="value", key="dormant")
    assert (f'<option value="value:dormant" data-color="{dormant.color}" '
            f'data-model="价值生命周期" selected>{dormant.name}</option>') in page
    assert '<optgroup label="价值生命周期">' in page and '<optgroup label="兴趣">' in page
    assert 'data-color="#d9488b"' in page
    assert "customers.js" in page


def test_filters_stay_in_the_links_of_pages_and_sorting(reader, wang):
    for n in range(53):
        CustomerFactory(owner=wang, name=f"客{n:02d}")
    page = reader(wang).get(URL, {"q": "客", "sort": "name"}).content.decode()

    assert 'href="?q=%E5%AE%A2&amp;sort=name&amp;page=2"' in page
    assert 'href="?q=%E5%AE%A2&amp;sort=-name"' in page


# --- The total ---------------------------------------------------------------------------------

def test_a_small_set_is_counted_exactly(reader, wang, shop):
    response = reader(wang).get(URL, {"stage": "value:dormant"})

    assert response.context["total"] == selectors.CustomerCount(2, "exact")
    assert "2 customers" in response.content.decode()


def test_past_the_exact_limit_the_total_is_the_planners_estimate(reader, wang, shop,
                                                                  monkeypatch):
    monkeypatch.setattr(selectors, "EXACT_COUNT_LIMIT", 2)

    response = reader(wang).get(URL, {"q": "", "status": "active"})

    total = response.context["total"]
    assert total.kind == "estimate" and total.value >= 3
    assert f"about {total.value} customers" in response.content.decode()
    # A page past the estimate's end is the last page, not an error.
    assert reader(wang).get(URL, {"status": "active", "page": 99}).status_code == 200


def test_an_admins_whole_list_at_a_million_runs_no_count(reader, admin_user, shop, monkeypatch):
    monkeypatch.setattr(selectors, "_table_estimate", lambda: 1_000_000)
    client = reader(admin_user)

    with CaptureQueriesContext(connection) as queries:
        response = client.get(URL)

    assert not [q for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert response.context["total"] == selectors.CustomerCount(1_000_000, "estimate")
    assert "about 1,000,000 customers" in response.content.decode()
    assert response.context["page_obj"].paginator.num_pages == 20_000
    assert len(response.context["rows"]) == 6
    assert client.get(URL, {"page": 20_000}).status_code == 200     # empty, never a 500


@pytest.mark.postgres_only
def test_the_segment_index_answers_with_as_of(reader, wang, shop, catalogue):
    segment_index.forget()
    index = segment_index.build()
    try:
        client = reader(wang)
        tagged = client.get(URL, {"tag": str(catalogue["美妆"].pk)})
        staged = client.get(URL, {"stage": "value:dormant"})     # lifecycle's index part
        whole = client.get(URL)
    finally:
        segment_index.forget()

    assert tagged.context["total"] == selectors.CustomerCount(2, "index", index.built_at)
    when = timezone.localtime(index.built_at).strftime("%H:%M")
    assert f"2 customers as of {when}" in tagged.content.decode()
    assert staged.context["total"] == selectors.CustomerCount(2, "index", index.built_at)
    assert whole.context["total"] == selectors.CustomerCount(5, "index", index.built_at)


# --- Roles and cost --------------------------------------------------------------------------

def test_role_matrix(client, reader, analyst, admin_user, wang, shop):
    assert client.get(URL)["Location"] == "/login/?next=/customers/"
    assert reader(analyst).get(URL).status_code == 403
    assert reader(wang).get(URL).status_code == 200
    admin = reader(admin_user).get(URL)
    assert admin.status_code == 200 and "owner" in admin.context["form"].fields
    assert names(reader(admin_user).get(URL, {"owner": "op_wang"})) == sorted(shop)


def test_fifty_rows_with_filters_cost_a_fixed_number_of_queries(
        reader, wang, catalogue, django_assert_max_num_queries):
    channel = ChannelFactory()
    for n in range(60):
        customer = CustomerFactory(owner=wang, channel=channel, name=f"客{n}")
        place(customer, "value", "growth")
        tag(customer, catalogue["美妆"], catalogue["VIP"])
    client = reader(wang)
    client.get(URL)      # the session and the role, once

    # Fixed: session, user, role; the pickers' choices (channels, stage models, stages, tags,
    # segments); compiling the condition resolves the tags and the stage model it names (core
    # validates the tree, then each leaf again as it compiles it); the segment index's
    # newest build; the capped count; the page with its tags and stages. None per row.
    with django_assert_max_num_queries(19):
        response = client.get(URL, {"stage": "value:growth", "tag": "美妆",
                                    "channel": channel.code})

    assert len(response.context["rows"]) == 50
