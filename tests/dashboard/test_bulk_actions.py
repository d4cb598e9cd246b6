"""Bulk actions of the customer list — tags, stage with a reason, campaign, CSV export — on
the selected rows or on every customer the filter matches; small sets at once, large ones as
background jobs with a progress page; always within what the user may see."""

import csv
import io
import json
from urllib.parse import parse_qs, urlparse

import pytest
from django.utils import timezone

from crm import services as crm_services
from crm.models import CustomerExport
from crm.tasks import run_customer_export
from lifecycle import services as lifecycle_services
from lifecycle.models import BulkStageJob, CustomerStage, Stage, StageModel, StageTransition
from lifecycle.tasks import run_bulk_stage_job
from tagging import services as tagging_services
from tagging.models import BulkTagJob, CustomerTag, Tag, TagGroup
from tagging.tasks import run_bulk_tag_job
from tests.factories import ChannelFactory, CustomerFactory, UserFactory

pytestmark = pytest.mark.django_db

BULK = "/customers/bulk/"
LIST = "/customers/"


def held(customer) -> set[str]:
    return set(CustomerTag.objects.filter(customer=customer).values_list("tag__name", flat=True))


def stage_of(customer, model_key: str) -> str | None:
    place = CustomerStage.objects.filter(customer=customer, model__key=model_key).first()
    return place.stage.key if place else None


def place(customer, model_key: str, stage_key: str) -> None:
    model = StageModel.objects.get(key=model_key)
    CustomerStage.objects.update_or_create(
        customer=customer, model=model,
        defaults={"stage": Stage.objects.get(model=model, key=stage_key),
                  "entered_at": timezone.now(), "source": "rule"})


@pytest.fixture
def vip():
    return Tag.objects.create(group=TagGroup.objects.create(name="等级"), name="VIP",
                              color="#b7791f")


@pytest.fixture
def crowd(wang):
    store = ChannelFactory(code="store-sh", name="上海门店")
    mine = [CustomerFactory(owner=wang, name=f"客{n}", city="上海" if n < 3 else "北京",
                            channel=store) for n in range(5)]
    theirs = CustomerFactory(owner=UserFactory(roles=["operator"]), name="外人", city="上海")
    return mine, theirs


SHANGHAI = json.dumps({"field": "city", "op": "eq", "value": "上海"})


# --- Tags ------------------------------------------------------------------------------------

def test_tags_on_the_selected_rows_never_reach_anothers_customer(reader, wang, crowd, vip):
    mine, theirs = crowd
    client = reader(wang)

    response = client.post(BULK, {"action": "tags", "scope": "selected", "add": [vip.pk],
                                  "ids": [mine[0].pk, mine[1].pk, theirs.pk],
                                  "next": "/customers/?city=x"})

    assert response.status_code == 302 and response["Location"] == "/customers/?city=x"
    assert [held(c) for c in mine] == [{"VIP"}, {"VIP"}, set(), set(), set()]
    assert held(theirs) == set()
    page = client.get(LIST).content.decode()
    assert "2 tags added, 0 removed for 2 customers" in page


def test_tags_on_all_matching_then_removed(reader, wang, crowd, vip):
    mine, theirs = crowd
    client = reader(wang)

    client.post(BULK, {"action": "tags", "scope": "all", "condition": SHANGHAI,
                       "add": [vip.pk]})
    assert [c.name for c in mine if held(c)] == ["客0", "客1", "客2"]
    assert held(theirs) == set()

    client.post(BULK, {"action": "tags", "scope": "all", "condition": SHANGHAI,
                       "remove": [vip.pk]})
    assert not CustomerTag.objects.exists()


def test_a_large_tag_job_runs_in_the_background_with_a_progress_page(
        reader, wang, crowd, vip, monkeypatch, django_capture_on_commit_callbacks,
        django_assert_max_num_queries):
    monkeypatch.setattr(tagging_services, "SYNC_BATCH", 2)
    client = reader(wang)

    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(BULK, {"action": "tags", "scope": "all", "condition": "",
                                      "add": [vip.pk]})

    job = BulkTagJob.objects.get()
    assert response["Location"] == f"/customers/jobs/tags/{job.pk}/"
    assert len(callbacks) == 1 and job.total == 5 and not CustomerTag.objects.exists()
    page = client.get(response["Location"])
    assert 'hx-trigger="every 1s"' in page.content.decode()
    assert page.context["progress"].percent == 0

    run_bulk_tag_job.apply(args=[job.pk])

    with django_assert_max_num_queries(6):
        fragment = client.get(f"/customers/jobs/tags/{job.pk}/progress/")
    text = fragment.content.decode()
    assert "100%" in text and "every 1s" not in text        # done: polling stops
    assert "5 tags added, 0 removed for 5 customers" in text
    assert all(held(c) == {"VIP"} for c in crowd[0]) and held(crowd[1]) == set()


def test_a_tag_action_without_tags_is_refused(reader, wang, crowd):
    client = reader(wang)
    client.post(BULK, {"action": "tags", "scope": "selected", "ids": [crowd[0][0].pk]})
    assert "choose a tag to add or to remove" in client.get(LIST).content.decode()


# --- Stages ----------------------------------------------------------------------------------

def test_stage_move_of_the_selection_writes_a_reason_per_customer(reader, wang, crowd):
    mine, theirs = crowd
    place(mine[0], "value", "intro")
    client = reader(wang)

    client.post(BULK, {"action": "stage", "scope": "selected", "target": "value:mature",
                       "reason": "复购三次", "ids": [mine[0].pk, mine[1].pk, theirs.pk]})

    assert [stage_of(c, "value") for c in mine[:3]] == ["mature", "mature", None]
    assert stage_of(theirs, "value") is None
    moves = StageTransition.objects.filter(model__key="value").order_by("customer_id")
    assert [(t.customer_id, t.from_key, t.to_key, t.reason, t.actor, t.source)
            for t in moves] == [(mine[0].pk, "intro", "mature", "复购三次", wang, "manual"),
                                (mine[1].pk, "", "mature", "复购三次", wang, "manual")]
    lock = CustomerStage.objects.get(customer=mine[0], model__key="value").locked_until
    assert lock is not None and lock > timezone.now()
    assert "2 moved to 成熟期 (价值生命周期)" in client.get(LIST).content.decode()


def test_a_stage_move_needs_a_reason(reader, wang, crowd):
    client = reader(wang)
    client.post(BULK, {"action": "stage", "scope": "all", "target": "value:mature",
                       "reason": "  "})
    assert "reason: say why the customers are moved" in client.get(LIST).content.decode()
    assert not StageTransition.objects.exists()


def test_monotonic_models_move_back_only_for_admins(reader, wang, admin_user, crowd):
    mine, _theirs = crowd
    for customer in mine[:2]:
        place(customer, "journey", "purchase")
    place(mine[2], "journey", "interest")
    ids = [c.pk for c in mine[:3]]

    client = reader(wang)
    client.post(BULK, {"action": "stage", "scope": "selected", "target": "journey:trust",
                       "reason": "退款", "ids": ids})
    assert [stage_of(c, "journey") for c in mine[:3]] == ["purchase", "purchase", "trust"]
    trust = Stage.objects.get(model__key="journey", key="trust").name
    assert (f"1 moved to {trust} (决策旅程); 2 not moved: in 决策旅程 only an admin moves "
            "customers back") in client.get(LIST).content.decode()

    reader(admin_user).post(BULK, {"action": "stage", "scope": "selected",
                                   "target": "journey:trust", "reason": "退款", "ids": ids})
    assert [stage_of(c, "journey") for c in mine[:3]] == ["trust", "trust", "trust"]
    assert StageTransition.objects.filter(backward=True, actor=admin_user).count() == 2


def test_the_refusal_is_reported(wang, crowd):
    mine, _theirs = crowd
    place(mine[0], "journey", "purchase")
    model = StageModel.objects.get(key="journey")
    result = lifecycle_services.customers_stage_move_bulk(
        actor=wang, customers=mine[0].__class__.objects.filter(pk__in=[mine[0].pk, mine[1].pk]),
        model=model, stage=Stage.objects.get(model=model, key="trust"), reason="x")
    assert (result.moved, result.refused) == (1, 1)


def test_a_bulk_move_is_idempotent(wang, crowd):
    mine, _theirs = crowd
    model = StageModel.objects.get(key="value")
    stage = Stage.objects.get(model=model, key="growth")
    customers = mine[0].__class__.objects.filter(owner=wang)

    first = lifecycle_services.customers_stage_move_bulk(actor=wang, customers=customers,
                                                         model=model, stage=stage, reason="a")
    again = lifecycle_services.customers_stage_move_bulk(actor=wang, customers=customers,
                                                         model=model, stage=stage, reason="a")

    assert (first.moved, again.moved) == (5, 0)
    assert StageTransition.objects.filter(model=model).count() == 5


def test_a_large_stage_move_is_a_job_that_resumes(reader, wang, crowd, monkeypatch,
                                                 django_capture_on_commit_callbacks):
    monkeypatch.setattr(lifecycle_services, "BULK_STAGE_SYNC", 2)
    client = reader(wang)

    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(BULK, {"action": "stage", "scope": "all", "condition": "",
                                      "target": "value:dormant", "reason": "一个月没回复"})

    job = BulkStageJob.objects.get()
    assert response["Location"] == f"/customers/jobs/stage/{job.pk}/"
    assert len(callbacks) == 1 and job.status == "queued" and job.total == 5
    run_bulk_stage_job.apply(args=[job.pk])
    run_bulk_stage_job.apply(args=[job.pk])       # a redelivered message changes nothing

    job.refresh_from_db()
    assert (job.status, job.processed, job.moved) == ("done", 5, 5)
    assert all(stage_of(c, "value") == "dormant" for c in crowd[0])
    assert stage_of(crowd[1], "value") is None
    assert StageTransition.objects.filter(reason="一个月没回复").count() == 5
    text = client.get(f"/customers/jobs/stage/{job.pk}/").content.decode()
    assert "5 moved to 休眠期 (价值生命周期)" in text and "100%" in text


# --- Export ----------------------------------------------------------------------------------

def _rows(content: bytes) -> list[list[str]]:
    assert content.startswith("\ufeff".encode())
    return list(csv.reader(io.StringIO(content.decode("utf-8-sig"))))


def test_a_small_export_streams_names_not_keys(reader, wang, crowd, vip):
    mine, _theirs = crowd
    place(mine[0], "value", "growth")
    tagging_services.customers_tags_change(customers=mine[0].__class__.objects.filter(
        pk=mine[0].pk), add=[vip], remove=[], actor=wang)

    response = reader(wang).post(BULK, {"action": "export", "scope": "all",
                                        "condition": SHANGHAI})

    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in response["Content-Disposition"]
    rows = _rows(b"".join(response.streaming_content))
    header = rows[0]
    assert header[:8] == ["Name", "External ID", "Phone", "City", "Channel", "Owner", "Status",
                          "Tags"]
    assert "价值生命周期" in header and "决策旅程" in header
    assert [r[0] for r in rows[1:]] == ["客0", "客1", "客2"]
    first = dict(zip(header, rows[1], strict=True))
    assert (first["Channel"], first["Owner"], first["Status"], first["Tags"],
            first["价值生命周期"]) == ("上海门店", "王芳", "Active", "VIP", "成长期")
    assert "growth" not in rows[1] and "store-sh" not in rows[1]


def test_a_large_export_is_written_in_the_background_and_downloaded(
        reader, wang, crowd, monkeypatch, settings, tmp_path, other_operator,
        django_capture_on_commit_callbacks):
    settings.DATA_DIR = tmp_path
    monkeypatch.setattr(crm_services, "EXPORT_STREAM_LIMIT", 1)
    monkeypatch.setattr(crm_services, "EXPORT_CHUNK", 2)
    client = reader(wang)

    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(BULK, {"action": "export", "scope": "selected",
                                      "ids": [c.pk for c in crowd[0]] + [crowd[1].pk]})

    export = CustomerExport.objects.get()
    assert response["Location"] == f"/customers/jobs/export/{export.pk}/"
    assert len(callbacks) == 1 and export.total == 5
    assert client.get(f"/customers/exports/{export.pk}/download/").status_code == 404  # not yet

    run_customer_export.apply(args=[export.pk])

    export.refresh_from_db()
    assert (export.status, export.processed) == ("done", 5)
    page = client.get(f"/customers/jobs/export/{export.pk}/").content.decode()
    assert f"/customers/exports/{export.pk}/download/" in page
    download = client.get(f"/customers/exports/{export.pk}/download/")
    rows = _rows(b"".join(download.streaming_content))
    assert [r[0] for r in rows[1:]] == ["客0", "客1", "客2", "客3", "客4"]
    assert reader(other_operator).get(f"/customers/exports/{export.pk}/download/"
                                      ).status_code == 404


def test_a_resumed_export_cuts_back_what_was_not_committed(wang, crowd, settings, tmp_path,
                                                          monkeypatch):
    settings.DATA_DIR = tmp_path
    monkeypatch.setattr(crm_services, "EXPORT_CHUNK", 2)
    export = CustomerExport.objects.create(actor=wang, total=5)
    crm_services.customer_export_run(export_id=export.pk)
    whole = crm_services.customer_export_path(export).read_bytes()
    # A worker that died after writing its third chunk but before committing it:
    CustomerExport.objects.filter(pk=export.pk).update(
        status="running", processed=4, last_customer_id=crowd[0][3].pk,
        bytes_written=len(whole) - len(whole.split(b"\r\n")[-2]) - 2)
    with open(crm_services.customer_export_path(export), "ab") as handle:
        handle.write(b"half a row")

    crm_services.customer_export_run(export_id=export.pk)

    assert crm_services.customer_export_path(export).read_bytes() == whole


# --- Campaign --------------------------------------------------------------------------------

def test_admins_start_a_campaign_from_the_filter_operators_may_not(reader, admin_user, wang,
                                                                  crowd):
    response = reader(admin_user).post(BULK, {"action": "campaign", "scope": "all",
                                              "condition": SHANGHAI})
    assert response.status_code == 302
    url = urlparse(response["Location"])
    assert url.path == "/campaigns/new/"
    assert json.loads(parse_qs(url.query)["condition"][0]) == json.loads(SHANGHAI)
    composer = reader(admin_user).get(response["Location"])
    assert json.loads(composer.context["form"]["condition"]) == json.loads(SHANGHAI)
    assert "上海" in composer.content.decode()

    selected = reader(admin_user).post(BULK, {"action": "campaign", "scope": "selected",
                                              "ids": [crowd[0][0].pk]})
    condition = json.loads(parse_qs(urlparse(selected["Location"]).query)["condition"][0])
    assert condition == {"field": "external_id", "op": "in",
                         "value": [crowd[0][0].external_id]}

    assert reader(wang).post(BULK, {"action": "campaign", "scope": "all"}).status_code == 403


# --- Roles -----------------------------------------------------------------------------------

def test_role_matrix_of_every_new_url(client, reader, analyst, admin_user, wang, other_operator,
                                      crowd, vip, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    tag_job = BulkTagJob.objects.create(actor=wang, add=[vip.pk], total=1)
    model = StageModel.objects.get(key="value")
    stage_job = BulkStageJob.objects.create(actor=wang, model=model, reason="r",
                                            stage=Stage.objects.get(model=model, key="growth"))
    export = CustomerExport.objects.create(actor=wang, total=0)
    crm_services.customer_export_run(export_id=export.pk)
    pages = [f"/customers/jobs/tags/{tag_job.pk}/", f"/customers/jobs/stage/{stage_job.pk}/",
             f"/customers/jobs/export/{export.pk}/",
             f"/customers/jobs/tags/{tag_job.pk}/progress/",
             f"/customers/exports/{export.pk}/download/"]
    post = {"action": "tags", "scope": "selected", "ids": [crowd[0][0].pk], "add": [vip.pk]}

    assert client.post(BULK, post)["Location"].startswith("/login/?next=")
    for url in pages:
        assert client.get(url)["Location"].startswith("/login/?next="), url
    assert reader(analyst).post(BULK, post).status_code == 403
    for url in pages:
        assert reader(analyst).get(url).status_code == 403, url
        assert reader(other_operator).get(url).status_code == 404, url   # not their job
        assert reader(wang).get(url).status_code == 200, url
        assert reader(admin_user).get(url).status_code == 200, url
    assert reader(wang).get(BULK).status_code == 405
    assert reader(wang).post(BULK, post).status_code == 302
    assert reader(admin_user).post(BULK, post).status_code == 302
    assert reader(wang).get("/customers/jobs/nope/1/").status_code == 404


def test_the_job_page_costs_a_fixed_number_of_queries(reader, wang, vip,
                                                      django_assert_max_num_queries):
    job = BulkTagJob.objects.create(actor=wang, add=[vip.pk], total=10, processed=4)
    client = reader(wang)
    client.get(f"/customers/jobs/tags/{job.pk}/")

    with django_assert_max_num_queries(6):
        response = client.get(f"/customers/jobs/tags/{job.pk}/")

    assert response.context["progress"].percent == 40


def test_exported_text_never_runs_as_a_formula(reader, wang):
    risky = CustomerFactory(owner=wang, name="=HYPERLINK(\"http://x\")", city="@杭州")

    response = reader(wang).post(BULK, {"action": "export", "scope": "selected",
                                        "ids": [risky.pk]})

    row = _rows(b"".join(response.streaming_content))[1]
    assert row[0] == "'=HYPERLINK(\"http://x\")" and row[3] == "'@杭州"
