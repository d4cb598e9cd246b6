"""Bulk tagging by ids or by condition (in the request, or as a background job with progress),
saved segments, segment previews and the customers list `?segment=` filter."""

import pytest

from crm.models import Customer
from tagging import services
from tagging.models import BulkTagJob, CustomerTag, Segment, TagChange
from tagging.tasks import run_bulk_tag_job
from tests.factories import CustomerFactory
from tests.tagging.conftest import held

pytestmark = [pytest.mark.django_db, pytest.mark.both_dbs]

BULK = "/api/v1/customers/bulk-tag/"
PREVIEW = "/api/v1/segments/preview/"
SHANGHAI = {"field": "city", "op": "eq", "value": "上海"}


@pytest.fixture
def crowd(operator, other_operator):
    """Five of the operator's customers (three in 上海) and two of another operator's."""
    mine = [CustomerFactory(external_id=f"m{n}", owner=operator,
                            city="上海" if n < 3 else "北京") for n in range(5)]
    theirs = [CustomerFactory(external_id=f"t{n}", owner=other_operator, city="上海")
              for n in range(2)]
    return mine, theirs


def holders(tag_name) -> set[str]:
    return set(CustomerTag.objects.filter(tag__name=tag_name)
               .values_list("customer__external_id", flat=True))


# --- Bulk tagging ---------------------------------------------------------------------------

def test_bulk_tag_by_ids_runs_at_once(op_api, crowd, tags):
    mine, _theirs = crowd
    response = op_api.post(BULK, {"ids": [c.pk for c in mine[:2]], "add": ["美妆", "金卡"]},
                           format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["status"], body["total"], body["processed"], body["added"], body["removed"]) == (
        "done", 2, 2, 4, 0)
    assert holders("美妆") == holders("金卡") == {"m0", "m1"}
    assert op_api.get(f"/api/v1/bulk-tag-jobs/{body['id']}/").json()["status"] == "done"


def test_bulk_tag_by_condition_touches_only_the_operators_customers(op_api, crowd, tags):
    response = op_api.post(BULK, {"condition": SHANGHAI, "add": ["护肤"]}, format="json")

    assert response.status_code == 200, response.json()
    assert (response.json()["total"], response.json()["added"]) == (3, 3)
    assert holders("护肤") == {"m0", "m1", "m2"}


def test_bulk_tag_by_ids_ignores_ids_the_operator_may_not_see(op_api, crowd, tags):
    mine, theirs = crowd
    response = op_api.post(BULK, {"ids": [mine[0].pk, theirs[0].pk], "add": ["护肤"]},
                           format="json")

    assert response.status_code == 200
    assert response.json()["total"] == 1
    assert holders("护肤") == {"m0"}


def test_admin_bulk_tags_everyone_matching(admin_api, crowd, tags):
    response = admin_api.post(BULK, {"condition": SHANGHAI, "add": ["护肤"]}, format="json")
    assert response.json()["added"] == 5
    assert holders("护肤") == {"m0", "m1", "m2", "t0", "t1"}


def test_bulk_remove_and_exclusive_replacement(op_api, crowd, tags):
    mine, _theirs = crowd
    ids = [c.pk for c in mine]
    op_api.post(BULK, {"ids": ids, "add": ["银卡", "美妆"]}, format="json")

    response = op_api.post(BULK, {"ids": ids, "add": ["金卡"], "remove": ["美妆"]},
                           format="json")

    assert (response.json()["added"], response.json()["removed"]) == (5, 5)
    assert holders("金卡") == {c.external_id for c in mine}
    assert holders("银卡") == holders("美妆") == set()
    assert TagChange.objects.filter(action="replaced", tag_name="银卡").count() == 5


@pytest.mark.parametrize(("body", "message"), [
    ({"add": ["美妆"]}, "give either ids or condition"),
    ({"ids": [1], "condition": SHANGHAI, "add": ["美妆"]}, "give either ids or condition"),
    ({"ids": [1]}, "give tags to add or remove"),
    ({"condition": {"field": "city", "op": "equals", "value": "x"}, "add": ["美妆"]},
     "op: unknown operator 'equals'"),
    ({"ids": [1], "add": ["银卡", "金卡"]}, "add: '银卡' and '金卡' are in the exclusive group"),
    ({"ids": [1], "add": ["不存在"]}, "add: unknown tag '不存在'"),
])
def test_bad_bulk_requests_are_400s(op_api, crowd, tags, body, message):
    response = op_api.post(BULK, body, format="json")

    assert response.status_code == 400
    assert message in response.json()["message"]
    assert not CustomerTag.objects.exists()
    assert not BulkTagJob.objects.exists()


def test_analysts_cannot_bulk_tag(analyst, english_client, crowd, tags):
    response = english_client(analyst).post(BULK, {"condition": SHANGHAI, "add": ["美妆"]},
                                            format="json")
    assert response.status_code == 403
    assert not CustomerTag.objects.exists()


def test_a_large_bulk_job_runs_in_the_background_with_progress(
        op_api, operator, tags, monkeypatch, django_capture_on_commit_callbacks):
    monkeypatch.setattr(services, "SYNC_BATCH", 3)
    customers = [CustomerFactory(owner=operator, city="上海") for _n in range(10)]
    CustomerFactory(city="上海")       # someone else's: not in the job

    with django_capture_on_commit_callbacks() as callbacks:
        response = op_api.post(BULK, {"condition": SHANGHAI, "add": ["美妆"]}, format="json")

    assert response.status_code == 202, response.json()
    job = response.json()
    assert (job["status"], job["total"], job["processed"]) == ("queued", 10, 0)
    assert len(callbacks) == 1             # the job is enqueued once the request commits
    assert not CustomerTag.objects.exists()

    run_bulk_tag_job.apply(args=[job["id"]])

    progress = op_api.get(f"/api/v1/bulk-tag-jobs/{job['id']}/")
    assert progress.status_code == 200
    assert {k: progress.json()[k] for k in ("status", "total", "processed", "added", "removed",
                                            "error")} == {
        "status": "done", "total": 10, "processed": 10, "added": 10, "removed": 0, "error": ""}
    assert all(held(c) == {"美妆"} for c in customers)
    assert CustomerTag.objects.count() == 10
    # Running the job again (a redelivered message) changes nothing.
    run_bulk_tag_job.apply(args=[job["id"]])
    assert BulkTagJob.objects.get(pk=job["id"]).processed == 10
    assert TagChange.objects.count() == 10


def test_a_background_job_resumes_where_it_stopped(operator, tags, monkeypatch):
    monkeypatch.setattr(services, "SYNC_BATCH", 3)
    customers = [CustomerFactory(owner=operator) for _n in range(7)]
    ids = sorted(c.pk for c in customers)
    job = BulkTagJob.objects.create(actor=operator, add=[tags["美妆"].pk], customer_ids=ids,
                                    total=7, status=BulkTagJob.Status.RUNNING, processed=3,
                                    added=3, last_customer_id=ids[2])

    services.bulk_tag_job_run(job_id=job.pk)

    job.refresh_from_db()
    assert (job.status, job.processed, job.added) == ("done", 7, 7)   # 3 before, 4 now
    assert holders("美妆") == {c.external_id for c in customers if c.pk > ids[2]}


def test_bulk_tag_jobs_are_private_to_their_author(op_api, other_operator, english_client,
                                                   admin_api, crowd, tags):
    mine, _theirs = crowd
    job = op_api.post(BULK, {"ids": [mine[0].pk], "add": ["美妆"]}, format="json").json()

    assert english_client(other_operator).get(
        f"/api/v1/bulk-tag-jobs/{job['id']}/").status_code == 404
    assert admin_api.get(f"/api/v1/bulk-tag-jobs/{job['id']}/").status_code == 200
    assert [j["id"] for j in op_api.get("/api/v1/bulk-tag-jobs/").json()["results"]] == [
        job["id"]]


# --- Segments -------------------------------------------------------------------------------

def test_segments_crud(op_api, crowd):
    created = op_api.post("/api/v1/segments/", {"name": "上海客户", "description": "d",
                                                "condition": SHANGHAI}, format="json")
    assert created.status_code == 201, created.json()
    url = f"/api/v1/segments/{created.json()['id']}/"
    assert op_api.get(url).json()["condition"] == SHANGHAI
    assert [s["name"] for s in op_api.get("/api/v1/segments/").json()["results"]] == ["上海客户"]

    bj = {"field": "city", "op": "eq", "value": "北京"}
    patched = op_api.patch(url, {"name": "北京客户", "condition": bj}, format="json")
    assert patched.status_code == 200
    assert Segment.objects.get().condition == bj
    duplicate = op_api.post("/api/v1/segments/", {"name": "北京客户", "condition": bj},
                            format="json")
    assert duplicate.status_code == 400

    assert op_api.delete(url).status_code == 204
    assert not Segment.objects.exists()


def test_analysts_read_segments_but_do_not_write_them(analyst, english_client, op_api):
    op_api.post("/api/v1/segments/", {"name": "s", "condition": SHANGHAI}, format="json")
    client = english_client(analyst)

    assert client.get("/api/v1/segments/").json()["count"] == 1
    assert client.post("/api/v1/segments/", {"name": "x", "condition": SHANGHAI},
                       format="json").status_code == 403


def test_preview_counts_and_samples_in_the_customer_shape(op_api, operator, other_operator,
                                                         tags):
    for n in range(25):
        CustomerFactory(external_id=f"sh-{n:02d}", owner=operator, city="上海")
    CustomerFactory(external_id="bj", owner=operator, city="北京")
    CustomerFactory(external_id="theirs", owner=other_operator, city="上海")
    services.customers_tags_change(customers=Customer.objects.filter(external_id="sh-24"),
                                   add=[tags["美妆"]], remove=[], actor=operator)

    response = op_api.post(PREVIEW, {"condition": SHANGHAI}, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert set(body) == {"count", "sample", "as_of", "source"}
    assert body["source"] == "live"     # no segment index built
    assert body["count"] == 25
    assert len(body["sample"]) == 20
    sample = body["sample"][0]
    assert {"id", "external_id", "name", "city", "channel", "owner", "tags", "stages",
            "total_spent", "last_active_at", "attributes"} <= set(sample)
    assert (sample["external_id"], sample["tags"]) == ("sh-24", ["美妆"])
    assert {c["external_id"] for c in body["sample"]} <= {f"sh-{n:02d}" for n in range(25)}
    assert {c["owner"] for c in body["sample"]} == {"op-a"}


def test_analysts_get_a_count_over_everyone_and_no_sample(analyst, english_client, crowd):
    response = english_client(analyst).post(PREVIEW, {"condition": SHANGHAI}, format="json")

    assert response.status_code == 200
    assert (response.json()["count"], response.json()["sample"]) == (5, [])


def test_analysts_cannot_count_by_name_phone_or_external_id(analyst, english_client, crowd,
                                                            admin_api):
    """A count by a phone prefix would reveal the numbers an analyst may not read."""
    by_phone = {"all": [SHANGHAI, {"any": [
        {"field": "phone", "op": "contains", "value": "138"},
        {"not": {"field": "name", "op": "eq", "value": "张三"}}]}]}
    response = english_client(analyst).post(PREVIEW, {"condition": by_phone}, format="json")

    assert response.status_code == 400
    assert "cannot filter by name, phone" in str(response.json())
    assert admin_api.post(PREVIEW, {"condition": by_phone}, format="json").status_code == 200


def test_admin_preview_sees_everyone(admin_api, crowd):
    body = admin_api.post(PREVIEW, {"condition": SHANGHAI}, format="json").json()
    assert body["count"] == 5
    assert {c["external_id"] for c in body["sample"]} == {"m0", "m1", "m2", "t0", "t1"}


def test_preview_of_a_saved_segment(op_api, crowd):
    segment = op_api.post("/api/v1/segments/", {"name": "s", "condition": SHANGHAI},
                          format="json").json()
    body = op_api.get(f"/api/v1/segments/{segment['id']}/preview/").json()
    assert body["count"] == 3
    assert {c["external_id"] for c in body["sample"]} == {"m0", "m1", "m2"}


def test_customers_list_filtered_by_a_segment(op_api, crowd, tags):
    mine, _theirs = crowd
    services.customers_tags_change(customers=Customer.objects.filter(pk=mine[0].pk),
                                   add=[tags["美妆"]], remove=[], actor=None)
    shanghai = Segment.objects.create(name="上海", condition=SHANGHAI)
    beauty = Segment.objects.create(name="美妆", condition={
        "field": "tag", "op": "any", "value": ["美妆"]})

    def ids(query):
        response = op_api.get(f"/api/v1/customers/?{query}")
        assert response.status_code == 200, response.json()
        return {c["external_id"] for c in response.json()["results"]}

    assert ids(f"segment={shanghai.pk}") == {"m0", "m1", "m2"}
    assert ids(f"segment={shanghai.pk}&segment={beauty.pk}") == {"m0"}
    assert ids(f"segment={shanghai.pk}&city=北京") == set()
    unknown = op_api.get("/api/v1/customers/?segment=999999")
    assert unknown.status_code == 400
    assert unknown.json()["message"] == "segment: unknown segment '999999'"
