"""Segment previews from the segment index (tagging.segment_index): the answer says where it
comes from and as of when; it is the build's data until the next build; a leaf the index
cannot answer, an index too old, or `exact` are counted in SQL; scopes hold; builds are one at
a time, due by the interval, the two newest kept (with the full build they update); a new build is swapped in once loaded.

Which customers each leaf selects is held equal to SQL case by case in tests/core
(`test_the_segment_index_gives_the_same_customers`)."""

from datetime import datetime, timedelta
from unittest import mock

import psycopg2
import pytest
from django.db import connection
from django.utils import timezone

from crm.models import Customer
from tagging import segment_index, services
from tagging.models import CustomerTag, SegmentIndex, Tag, TagGroup
from tests.factories import CustomerFactory

pytestmark = [pytest.mark.django_db, pytest.mark.postgres_only]

PREVIEW = "/api/v1/segments/preview/"
SHANGHAI = {"field": "city", "op": "eq", "value": "上海"}


@pytest.fixture(autouse=True)
def _fresh_process():
    segment_index.forget()
    yield
    segment_index.forget()


@pytest.fixture
def crowd(operator, other_operator):
    mine = [CustomerFactory(external_id=f"m{n}", owner=operator,
                            city="上海" if n < 3 else "北京") for n in range(5)]
    theirs = [CustomerFactory(external_id=f"t{n}", owner=other_operator, city="上海")
              for n in range(2)]
    return mine, theirs


def ids_of(body) -> list[str]:
    return [c["external_id"] for c in body["sample"]]


def test_a_preview_reads_the_index_and_says_as_of_when(op_api, crowd):
    index = segment_index.build()

    body = op_api.post(PREVIEW, {"condition": SHANGHAI}, format="json").json()
    exact = op_api.post(PREVIEW, {"condition": SHANGHAI, "exact": True}, format="json").json()

    assert body["source"] == "index"
    assert datetime.fromisoformat(body["as_of"]) == index.built_at
    assert (body["count"], ids_of(body)) == (3, ["m2", "m1", "m0"])
    assert exact["source"] == "live"
    assert (exact["count"], ids_of(exact)) == (3, ["m2", "m1", "m0"])


def test_the_index_is_the_builds_data_until_the_next_build(op_api, operator, crowd, tags):
    segment_index.build()
    CustomerFactory(external_id="new", owner=operator, city="上海")
    services.customers_tags_change(customers=Customer.objects.filter(external_id="m0"),
                                   add=[tags["美妆"]], remove=[], actor=operator)
    tagged = {"field": "tag", "op": "any", "value": ["美妆"]}

    assert op_api.post(PREVIEW, {"condition": SHANGHAI}, format="json").json()["count"] == 3
    assert op_api.post(PREVIEW, {"condition": tagged}, format="json").json()["count"] == 0

    segment_index.build()
    # (a process keeps answering from the first build while it loads the second in the
    # background — test_a_new_build_is_swapped_in_once_its_parts_are_loaded; this one starts
    # from the second)
    segment_index.forget()

    body = op_api.post(PREVIEW, {"condition": SHANGHAI}, format="json").json()
    assert (body["source"], body["count"], ids_of(body)[0]) == ("index", 4, "new")
    assert op_api.post(PREVIEW, {"condition": tagged}, format="json").json()["count"] == 1


def test_only_the_two_newest_builds_and_their_full_build_are_kept(crowd):
    builds = [segment_index.build() for _n in range(4)]
    # The first is a full build; the others update it (nothing changed: nobody re-read).
    assert builds[0].base_id is None
    assert [b.base_id for b in builds[1:]] == [builds[0].pk] * 3
    assert [b.changed for b in builds[1:]] == [0, 0, 0]
    assert set(SegmentIndex.objects.values_list("pk", flat=True)) == {
        builds[0].pk, builds[2].pk, builds[3].pk}
    assert builds[-1].customers == 7
    assert builds[-1].size_bytes > 0
    # A full build: the older ones go once two newer ones stand.
    full = [segment_index.build(full=True), segment_index.build()]
    assert set(SegmentIndex.objects.values_list("pk", flat=True)) == {b.pk for b in full}


@pytest.mark.parametrize("condition", [
    {"field": "phone", "op": "eq", "value": "13800000000"},
    {"all": [SHANGHAI, {"field": "name", "op": "contains", "value": "张"}]},
    {"field": "event", "op": "count_gte", "value": 6, "type": "message_in", "within_days": 7},
])
def test_what_the_index_cannot_answer_is_counted_live(op_api, crowd, condition):
    segment_index.build()
    body = op_api.post(PREVIEW, {"condition": condition}, format="json").json()
    assert body["source"] == "live"


def test_an_index_older_than_the_limit_is_not_used(op_api, crowd, settings):
    index = segment_index.build()
    assert op_api.post(PREVIEW, {"condition": SHANGHAI}, format="json").json()["source"] \
        == "index"

    SegmentIndex.objects.filter(pk=index.pk).update(
        built_at=timezone.now() - timedelta(minutes=settings.SEGMENT_INDEX_MAX_AGE_MINUTES + 1))
    body = op_api.post(PREVIEW, {"condition": SHANGHAI}, format="json").json()
    assert (body["source"], body["count"]) == ("live", 3)

    settings.SEGMENT_INDEX_MINUTES = 0      # switched off
    assert segment_index.build() is None
    assert segment_index.build_due() is None


def test_scopes_hold_for_operators_and_analysts(english_client, other_operator, analyst,
                                                admin_user, crowd):
    segment_index.build()
    theirs = english_client(other_operator).post(PREVIEW, {"condition": SHANGHAI},
                                                 format="json").json()
    counted = english_client(analyst).post(PREVIEW, {"condition": SHANGHAI},
                                           format="json").json()
    everyone = english_client(admin_user).post(PREVIEW, {"condition": SHANGHAI},
                                               format="json").json()

    assert (theirs["source"], theirs["count"], ids_of(theirs)) == ("index", 2, ["t1", "t0"])
    assert (counted["source"], counted["count"], counted["sample"]) == ("index", 5, [])
    assert (everyone["count"], ids_of(everyone)) == (5, ["t1", "t0", "m2", "m1", "m0"])


def test_the_saved_segment_preview_reads_the_index_unless_asked_for_exact(op_api, crowd):
    segment_index.build()
    segment = op_api.post("/api/v1/segments/", {"name": "上海", "condition": SHANGHAI},
                          format="json").json()
    url = f"/api/v1/segments/{segment['id']}/preview/"
    assert op_api.get(url).json()["source"] == "index"
    assert op_api.get(url, {"exact": "1"}).json()["source"] == "live"


def test_a_build_is_due_after_the_interval(crowd, settings):
    first = segment_index.build_due()
    assert first is not None
    assert segment_index.build_due() is None
    later = timezone.now() + timedelta(minutes=settings.SEGMENT_INDEX_MINUTES)
    assert segment_index.build_due(now=later) is not None


def test_a_second_build_while_one_runs_is_skipped(crowd):
    other = psycopg2.connect(dbname=connection.settings_dict["NAME"],
                             user=connection.settings_dict["USER"] or "postgres",
                             host=connection.settings_dict["HOST"] or "127.0.0.1",
                             port=connection.settings_dict["PORT"] or 5432)
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [segment_index.LOCK_KEY])
        assert segment_index.build() is None
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [segment_index.LOCK_KEY])
    finally:
        other.close()
    assert segment_index.build() is not None


def test_tag_rows_of_customers_gone_are_left_out(op_api, operator, crowd, tags):
    """Customer tags have no foreign keys: a row may outlive its customer for a while."""
    mine, _theirs = crowd
    services.customers_tags_change(customers=Customer.objects.filter(pk=mine[0].pk),
                                   add=[tags["美妆"]], remove=[], actor=operator)
    CustomerTag.objects.create(customer_id=mine[-1].pk + 1000, tag=tags["美妆"],
                               added_at=timezone.now())
    CustomerTag.objects.create(customer_id=mine[1].pk, tag=tags["美妆"], added_at=timezone.now())
    Customer.objects.filter(pk=mine[1].pk).delete()
    segment_index.build()

    body = op_api.post(PREVIEW, {"condition": {"field": "tag", "op": "any", "value": ["美妆"]}},
                       format="json").json()
    assert (body["source"], body["count"], ids_of(body)) == ("index", 1, ["m0"])
    none = op_api.post(PREVIEW, {"condition": {"field": "tag", "op": "none",
                                               "value": ["美妆"]}}, format="json").json()
    assert none["count"] == 3


def test_a_new_build_is_swapped_in_once_its_parts_are_loaded(op_api, crowd):
    first = segment_index.build()
    op_api.post(PREVIEW, {"condition": SHANGHAI}, format="json")     # loads "customers"
    second = segment_index.build()

    with mock.patch.object(segment_index.threading, "Thread") as thread:
        answering = segment_index.current()
    # the previous build keeps answering while the new one loads in the background
    assert answering.index_id == first.pk
    target, (snapshot, names) = (thread.call_args.kwargs["target"],
                                 thread.call_args.kwargs["args"])
    assert target is segment_index._swap
    assert (snapshot.index_id, names) == (second.pk, ["customers"])
    assert thread.return_value.start.called

    assert segment_index.load_and_swap(snapshot, names)
    assert segment_index.current().index_id == second.pk
    assert snapshot.loaded_parts == ["customers"]


def test_attribute_keys_of_any_script_and_odd_attributes(op_api, operator):
    """A Chinese key is indexed; a customer whose attributes are not an object (the admin's
    JSON field accepts any JSON) does not stop the build; a key of digits, which Django's JSON
    lookups read as a position in a list, is refused with its path."""
    CustomerFactory(external_id="gold", owner=operator, attributes={"等级": "金卡", "2024": "x"})
    CustomerFactory(external_id="silver", owner=operator, attributes={"等级": "银卡"})
    CustomerFactory(external_id="odd", owner=operator, attributes=["等级"])
    assert segment_index.build() is not None

    def preview(condition):
        return op_api.post(PREVIEW, {"condition": condition}, format="json").json()

    gold = preview({"field": "attributes.等级", "op": "eq", "value": "金卡"})
    assert (gold["source"], ids_of(gold)) == ("index", ["gold"])
    unset = preview({"field": "attributes.等级", "op": "is_null", "value": True})
    assert (unset["source"], ids_of(unset)) == ("index", ["odd"])
    digits = op_api.post(PREVIEW, {"condition": {"field": "attributes.2024", "op": "eq",
                                                  "value": "x"}}, format="json")
    assert digits.status_code == 400
    assert "field: an attribute key of digits only cannot be used" in str(digits.json())


def test_exact_on_a_saved_segment_takes_a_yes_or_no(op_api, crowd):
    segment = op_api.post("/api/v1/segments/", {"name": "上海", "condition": SHANGHAI},
                          format="json").json()
    response = op_api.get(f"/api/v1/segments/{segment['id']}/preview/", {"exact": "maybe"})
    assert response.status_code == 400
    assert response.json()["message"] == "exact: Must be a valid boolean."


def test_the_preview_answer_keeps_the_existing_schema_names(admin_api):
    """`source` of the preview has its own enum; the transitions' `SourceEnum` keeps its name
    (generated clients use it)."""
    schemas = admin_api.get("/api/schema/", {"format": "json"}).json()["components"]["schemas"]
    assert "SourceEnum" in schemas
    assert "SegmentPreviewSourceEnum" in schemas


STAGE_TREES = [
    {"field": "stage", "model": "value", "op": "in", "value": ["dormant", "churn"]},
    {"field": "stage", "model": "value", "op": "eq", "value": "mature"},
    {"field": "stage", "model": "value", "op": "not_in", "value": ["dormant"]},
    {"field": "stage", "model": "value", "op": "ne", "value": "mature"},
    {"field": "stage", "model": "journey", "op": "in", "value": ["trust"]},
    {"all": [SHANGHAI, {"not": {"field": "stage", "model": "value", "op": "in",
                                "value": ["dormant"]}}]},
    {"any": [{"field": "stage", "model": "aipl", "op": "eq", "value": "loyalty"},
             {"field": "stage", "model": "value", "op": "eq", "value": "churn"}]},
]


@pytest.mark.parametrize("tree", STAGE_TREES)
def test_stage_leaves_are_answered_from_the_index_as_sql_answers_them(crowd, tree):
    """lifecycle's `stages` part (crm.extensions.segment_index_parts): each customer's stage
    per model; customers not placed in a model count as "not in" its stages, as in SQL."""
    import importlib

    from django.apps import apps as django_apps

    from core import conditions
    from lifecycle.models import CustomerStage, Stage

    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(django_apps,
                                                                              None)
    mine, theirs = crowd
    places = {0: ("value", "dormant"), 1: ("value", "mature"), 2: ("value", "churn"),
              3: ("journey", "trust"), 5: ("aipl", "loyalty"), 6: ("value", "dormant")}
    customers = [*mine, *theirs]
    for index, (model, key) in places.items():
        stage = Stage.objects.get(model__key=model, key=key)
        CustomerStage.objects.create(customer=customers[index], model=stage.model, stage=stage,
                                     entered_at=timezone.now(), source="rule")
    index = segment_index.build()
    found = segment_index.evaluate(conditions.validate(tree), segment_index.Snapshot(index))
    assert found is not None                          # answered from the index
    expected = set(Customer.objects.filter(conditions.compile_condition(tree))
                   .values_list("pk", flat=True))
    assert {int(pk) for pk in found.nonzero()[0]} == expected


# --- Updates: the customers changed since the full build, read again -------------------------

def _placed(customer, model_key, stage_key):
    from lifecycle.models import CustomerStage, Stage

    stage = Stage.objects.get(model__key=model_key, key=stage_key)
    CustomerStage.objects.update_or_create(
        customer=customer, model=stage.model,
        defaults={"stage": stage, "entered_at": timezone.now(), "source": "rule"})


def _ids(snapshot, tree) -> set[int]:
    from core import conditions

    found = segment_index.evaluate(conditions.validate(tree), snapshot)
    assert found is not None
    return {int(pk) for pk in found.nonzero()[0]}


def test_an_update_follows_every_write_and_a_process_lays_each_over_the_last(crowd, settings):
    """Whatever writes the rows — the ORM, a bulk update, raw SQL — the triggers note the
    customers, and an update reads just them again. A process holding one update's parts lays
    the next one over them (updates are cumulative), and answers as a full build would."""
    import importlib

    from django.apps import apps as django_apps

    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(django_apps,
                                                                              None)
    settings.SEGMENT_INDEX_FULL_SHARE = 1
    mine, theirs = crowd
    full = segment_index.build()
    assert full.base_id is None
    first = segment_index.Snapshot(full)
    assert _ids(first, SHANGHAI) == {c.pk for c in (*mine[:3], *theirs)}

    Customer.objects.filter(pk=mine[3].pk).update(city="上海")          # a bulk update
    _placed(mine[0], "value", "dormant")                                # lifecycle's table
    with connection.cursor() as cursor:                                 # raw SQL
        cursor.execute("UPDATE crm_customer SET city = '广州' WHERE id = %s", [theirs[0].pk])
    update = segment_index.build()
    assert (update.base_id, update.changed) == (full.pk, 3)
    second = segment_index.Snapshot(update, first)
    dormant = {"field": "stage", "model": "value", "op": "eq", "value": "dormant"}
    assert _ids(second, SHANGHAI) == {mine[0].pk, mine[1].pk, mine[2].pk, mine[3].pk,
                                      theirs[1].pk}
    assert _ids(second, dormant) == {mine[0].pk}

    newcomer = CustomerFactory(external_id="n0", owner=mine[0].owner, city="上海")
    Customer.objects.filter(pk=mine[1].pk).delete()
    later = segment_index.build()
    assert (later.base_id, later.changed) == (full.pk, 5)     # cumulative: 3 + 2
    third = segment_index.Snapshot(later, second)             # over the second's parts
    expected = {mine[0].pk, mine[2].pk, mine[3].pk, theirs[1].pk, newcomer.pk}
    assert _ids(third, SHANGHAI) == expected
    assert _ids(segment_index.Snapshot(later), SHANGHAI) == expected     # over the full build
    assert _ids(segment_index.Snapshot(segment_index.build(full=True)), SHANGHAI) == expected
    assert _ids(third, dormant) == {mine[0].pk}


def test_an_update_reads_every_event_type_of_the_changed_customers_at_once(crowd, admin_user,
                                                                          settings):
    """An update reads the changed customers' counts of every event type in one statement and
    splits them by type: each type's leaf answers as a full build does."""
    from crm.services import events_ingest

    settings.SEGMENT_INDEX_FULL_SHARE = 1
    mine, theirs = crowd
    segment_index.build()
    events_ingest(actor=admin_user, items=[
        {"customer": mine[0].external_id, "type": "message_in", "idempotency_key": "e1"},
        {"customer": mine[0].external_id, "type": "message_in", "idempotency_key": "e2"},
        {"customer": mine[1].external_id, "type": "link_clicked", "idempotency_key": "e3"},
        {"customer": theirs[0].external_id, "type": "message_in", "idempotency_key": "e4"}])
    update = segment_index.build()
    assert update.base_id is not None and update.changed == 3
    twice = {"field": "event", "type": "message_in", "op": "count_gte", "value": 2}
    clicked = {"field": "event", "type": "link_clicked", "op": "count_gte", "value": 1,
               "within_days": 7}
    wrote = {"field": "event", "type": "message_in", "op": "count_gte", "value": 1}
    snapshot = segment_index.Snapshot(update)
    assert _ids(snapshot, twice) == {mine[0].pk}
    assert _ids(snapshot, clicked) == {mine[1].pk}
    assert _ids(snapshot, wrote) == {mine[0].pk, theirs[0].pk}
    full = segment_index.Snapshot(segment_index.build(full=True))
    for tree in (twice, clicked, wrote):
        assert _ids(full, tree) == _ids(snapshot, tree)


def test_a_full_build_comes_nightly_when_the_shape_changes_and_when_many_changed(crowd,
                                                                               settings):
    from lifecycle.models import StageModel

    settings.SEGMENT_INDEX_FULL_SHARE = 0.5
    full = segment_index.build()
    assert segment_index.build().base_id == full.pk              # nothing changed: an update
    Customer.objects.filter(pk__in=[c.pk for c in crowd[0][:3]]).update(city="杭州")
    assert segment_index.build().base_id == full.pk              # 3 of 7: an update
    Customer.objects.filter(pk=crowd[0][3].pk).update(city="杭州")
    assert segment_index.build().base_id is None                 # 4 of 7 > half: full
    StageModel.objects.create(key="custom", name="Custom")
    assert segment_index.build().base_id is None                 # a new model: full
    assert segment_index.build().base_id is not None             # then updates again
    # The first build of a new day is a full one (the nightly safety net).
    SegmentIndex.objects.update(built_at=timezone.now() - timedelta(days=1))
    assert segment_index.build().base_id is None


TOUCHED_TABLES = ["crm_customer", "crm_order", "crm_orderitem", "crm_groupmembership",
                  "crm_eventcount", "tagging_customertag", "lifecycle_customerstage"]


def test_every_table_the_parts_read_queues_touches_for_the_index():
    with connection.cursor() as cursor:
        for table in TOUCHED_TABLES:
            cursor.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass "
                           "AND tgname LIKE 'crm_touch_%%'", [table])
            assert cursor.fetchone()[0] == 3, table
        # one touch per customer and statement, whoever reads it
        customer = CustomerFactory()
        tag = Tag.objects.create(group=TagGroup.objects.create(name="触发"), name="触发")
        CustomerTag.objects.create(customer_id=customer.pk, tag=tag, added_at=timezone.now())
        cursor.execute("SELECT count(*) FROM crm_customertouch WHERE customer_id = %s",
                       [customer.pk])
        assert cursor.fetchone()[0] == 2
