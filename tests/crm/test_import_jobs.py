"""CSV imports in the background: the chunked job gives what the synchronous import gives,
shows its progress after every chunk, never applies a chunk twice (run again, run by two
workers at once, resumed after its worker died), and refuses a file it cannot read up front."""

import time

import pytest
from django.db import transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.translation import override

from core.exceptions import ApplicationError
from crm import services, tasks
from crm.models import Customer, CustomerImport
from tests.factories import CustomerFactory
from tests.threads import run_at_once

HEADER = "external_id,name,city,gender,owner,attributes.level\n"
# Four chunks of three rows (chunk size 3): good rows, a duplicate in a later chunk, bad cells,
# a row for another operator's customer, and a row fixing an id whose first row was refused.
MIXED = (HEADER
         + "a1,A1,上海,male,,gold\n"        # row 2: new
         + "a2,A2,,robot,,\n"              # row 3: bad gender
         + "known,Known New,,,,\n"         # row 4: updates the operator's customer
         + "a1,A1 again,,,,\n"             # row 5: duplicate of row 2
         + "theirs,X,,,,\n"                # row 6: another operator's customer
         + "a3,A3,杭州,,op-b,\n"            # row 7: an operator may not name another owner
         + ",NoId,,,,\n"                   # row 8: no external_id
         + "a2,A2 fixed,,female,,\n"       # row 9: new (row 3 was refused, so not a duplicate)
         + "theirs,Y,,,,\n"                # row 10: duplicate of row 6
         + "a4,A4,,,,\n").encode()         # row 11: new


class Rollback(Exception):
    pass


def customers() -> list[tuple]:
    return sorted(Customer.objects.values_list("external_id", "name", "city", "gender",
                                               "owner_id", "attributes"))


def synchronous(content: bytes, actor) -> tuple[dict, list[tuple]]:
    """What customers_import answers and stores for the file — then undone."""
    try:
        with transaction.atomic():
            report = services.customers_import(content=content, actor=actor).as_dict()
            stored = customers()
            raise Rollback
    except Rollback:
        return report, stored


@pytest.fixture
def chunk_of(monkeypatch):
    def set_size(rows: int) -> None:
        monkeypatch.setattr(services, "IMPORT_CHUNK_ROWS", rows)
    return set_size


@pytest.fixture
def setting(operator, other_operator):
    CustomerFactory(external_id="known", owner=operator, name="Known Old", city="北京")
    CustomerFactory(external_id="theirs", owner=other_operator, name="Theirs")


def start(actor, content: bytes, name: str = "customers.csv") -> CustomerImport:
    with override("en"):
        return services.customer_import_start(actor=actor, name=name, content=content)


def figures(job: CustomerImport) -> tuple:
    job.refresh_from_db()
    return (job.status, job.next_row, job.accepted, job.created, job.updated, job.duplicates,
            job.rejected)


# --- Same answer as the synchronous import ------------------------------------------------

@pytest.mark.django_db
def test_the_chunked_job_imports_what_the_synchronous_import_imports(
        operator, setting, chunk_of):
    chunk_of(3)
    with override("en"):
        report, stored = synchronous(MIXED, operator)
    assert (report["accepted"], report["duplicates"], len(report["rejected"])) == (4, 2, 4)

    job = start(operator, MIXED)
    services.customer_import_run(import_id=job.pk)

    assert figures(job) == ("done", 10, 4, 3, 1, 2, 4)
    assert customers() == stored
    assert [f"line {r['row']}: {r['message']}" for r in job.rejected_rows] == [
        r["message"] for r in report["rejected"]]
    assert [r["row"] for r in job.rejected_rows] == [3, 6, 7, 8]
    assert job.rejected_rows[0] == {"row": 3, "message": "gender: must be one of male, "
                                    "female, unknown", "values": ["a2", "A2", "", "robot", "",
                                                                  ""]}
    assert job.started_at <= job.finished_at
    assert Customer.objects.get(external_id="a1").name == "A1"          # the first row won
    assert Customer.objects.get(external_id="theirs").name == "Theirs"  # not the operator's


@pytest.mark.django_db
def test_the_api_keeps_its_answer(api_client_for, operator, setting):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = api_client_for(operator).post(
        "/api/v1/customers/import/",
        {"file": SimpleUploadedFile("c.csv", MIXED, "text/csv")}, format="multipart")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert {k: body[k] for k in ("accepted", "duplicates", "created", "updated")} == {
        "accepted": 4, "duplicates": 2, "created": 3, "updated": 1}
    assert [(r["index"], r["message"]) for r in body["rejected"]] == [
        (1, "line 3: gender: must be one of male, female, unknown"),
        (4, "line 6: external_id 'theirs' belongs to another owner's customer"),
        (5, "line 7: owner: operators can only import customers they own"),
        (6, "line 8: external_id: this field is required")]
    assert not CustomerImport.objects.exists()


@pytest.mark.django_db
def test_progress_is_committed_after_every_chunk(operator, setting, chunk_of, monkeypatch):
    chunk_of(3)
    job = start(operator, MIXED)
    seen = []
    write = services._import_write

    def watching(chunk, *, actor):
        seen.append(figures(job))       # what a page reading now would show
        write(chunk, actor=actor)

    monkeypatch.setattr(services, "_import_write", watching)
    services.customer_import_run(import_id=job.pk)

    assert seen == [("queued", 0, 0, 0, 0, 0, 0),
                    ("running", 3, 2, 1, 1, 0, 1),
                    ("running", 6, 2, 1, 1, 1, 3),
                    ("running", 9, 3, 2, 1, 2, 4)]
    assert figures(job) == ("done", 10, 4, 3, 1, 2, 4)
    assert job.percent == 100


# --- Never twice ----------------------------------------------------------------------------

@pytest.mark.django_db
def test_running_a_finished_job_again_changes_nothing(operator, setting, chunk_of):
    chunk_of(3)
    job = start(operator, MIXED)
    tasks.run_customer_import.apply(args=[job.pk])
    before = customers()

    with CaptureQueriesContext(transaction.get_connection()) as queries:
        tasks.run_customer_import.apply(args=[job.pk])        # a redelivered message

    assert figures(job) == ("done", 10, 4, 3, 1, 2, 4)
    assert customers() == before
    assert len(queries) == 1


class WorkerKilled(BaseException):
    """The worker process dying mid-chunk: nothing of the chunk commits, no handler runs."""


@pytest.mark.django_db
def test_a_job_whose_worker_died_resumes_at_its_cursor(operator, setting, chunk_of,
                                                       monkeypatch):
    chunk_of(3)
    job = start(operator, MIXED)
    write, calls = services._import_write, []

    def dies_in_the_third_chunk(chunk, *, actor):
        calls.append(1)
        write(chunk, actor=actor)
        if len(calls) == 3:
            raise WorkerKilled

    monkeypatch.setattr(services, "_import_write", dies_in_the_third_chunk)
    with pytest.raises(WorkerKilled):
        services.customer_import_run(import_id=job.pk)
    assert figures(job) == ("running", 6, 2, 1, 1, 1, 3)     # two chunks kept, not the third
    assert not Customer.objects.filter(external_id="a2").exists()

    # The sweeper finds it once it has made no progress for a while, and the job goes on.
    assert services.customer_imports_resume() == []
    CustomerImport.objects.filter(pk=job.pk).update(
        updated_at=timezone.now() - timezone.timedelta(minutes=10))
    assert services.customer_imports_resume() == [job.pk]
    monkeypatch.setattr(services, "_import_write", write)
    services.customer_import_run(import_id=job.pk)

    assert figures(job) == ("done", 10, 4, 3, 1, 2, 4)
    assert [r["row"] for r in job.rejected_rows] == [3, 6, 7, 8]
    assert Customer.objects.filter(external_id__in=["a1", "a2", "a4"]).count() == 3
    assert services.customer_imports_resume() == []


@pytest.mark.django_db
def test_the_sweeper_enqueues_stale_jobs_again(operator, monkeypatch):
    job = start(operator, b"external_id\nx-1\n")
    CustomerImport.objects.filter(pk=job.pk).update(
        updated_at=timezone.now() - timezone.timedelta(minutes=10))
    queued = []
    monkeypatch.setattr(tasks.run_customer_import, "delay", queued.append)

    assert tasks.resume_customer_imports.apply().get() == 1
    assert queued == [job.pk]


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres_only
def test_two_workers_at_once_import_each_row_once(operator, other_operator, chunk_of,
                                                  monkeypatch):
    CustomerFactory(external_id="known", owner=operator, name="Known Old", city="北京")
    CustomerFactory(external_id="theirs", owner=other_operator, name="Theirs")
    chunk_of(2)
    write = services._import_write

    def slow(chunk, *, actor):       # long enough for the two workers to interleave
        time.sleep(0.02)
        write(chunk, actor=actor)

    monkeypatch.setattr(services, "_import_write", slow)
    monkeypatch.setattr(tasks.run_customer_import, "delay", lambda import_id: None)  # no broker
    job = start(operator, MIXED)

    run_at_once(lambda: services.customer_import_run(import_id=job.pk),
                lambda: services.customer_import_run(import_id=job.pk))
    # A run that found the job held by the other stopped early; a third finishes what is left.
    services.customer_import_run(import_id=job.pk)

    assert figures(job) == ("done", 10, 4, 3, 1, 2, 4)
    assert [r["row"] for r in job.rejected_rows] == [3, 6, 7, 8]
    assert Customer.objects.count() == 2 + 3


# --- Refused up front -----------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize(("content", "words"), [
    (b"external_id,nickname\nx,y\n", "Unknown column(s) 'nickname'"),
    (b"name\nx\n", "no external_id column"),
    ("external_id,name\nwm-1,张伟\n".encode("gbk"), "not UTF-8"),
    (b"", "The file is empty"),
    (b"external_id,name\n", "no customers under it"),
    (b"external_id\n" + b"x" * 200_000 + b"\n", "not valid CSV after line 1: field larger than field limit"),
], ids=["unknown-column", "no-external-id", "gbk", "empty", "header-only", "huge-cell"])
def test_a_file_that_cannot_be_imported_is_refused_with_the_reason(operator, content, words):
    with pytest.raises(ApplicationError) as refused:
        start(operator, content)

    assert words in refused.value.message
    assert not CustomerImport.objects.exists()


@pytest.mark.django_db
def test_a_file_too_large_or_too_long_is_refused(operator, monkeypatch):
    monkeypatch.setattr(services, "IMPORT_MAX_BYTES", 2 * 1024 * 1024)
    with pytest.raises(ApplicationError) as too_large:
        start(operator, b"external_id\n" + b"x\n" * (1024 * 1024 + 1))
    assert too_large.value.message == "The file is too large: at most 2 MB, got 2.0 MB."

    monkeypatch.setattr(services, "IMPORT_MAX_ROWS", 2)
    with pytest.raises(ApplicationError) as too_long:
        start(operator, b"external_id\na\nb\nc\n")
    assert too_long.value.message == "Too many rows: at most 2 per file, got 3."
    assert not CustomerImport.objects.exists()


@pytest.mark.django_db
def test_the_job_is_enqueued_once_the_upload_commits(operator, django_capture_on_commit_callbacks,
                                                     monkeypatch):
    queued = []
    monkeypatch.setattr(tasks.run_customer_import, "delay", queued.append)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        job = start(operator, "\ufeffexternal_id,name\nwm-1,张伟\n".encode(), name="客户.csv")
        assert queued == []

    assert len(callbacks) == 1 and queued == [job.pk]
    assert (job.status, job.total_rows, job.name, job.columns, job.language) == (
        "queued", 1, "客户.csv", ["external_id", "name"], "en")
    assert bytes(CustomerImport.objects.get(pk=job.pk).content).startswith(b"\xef\xbb\xbf")


# --- Failures and limits --------------------------------------------------------------------

@pytest.mark.django_db
def test_an_unexpected_error_fails_the_job_with_its_message(operator, monkeypatch):
    job = start(operator, b"external_id\nx-1\n")

    def broken(chunk, *, actor):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(services, "_import_write", broken)
    with pytest.raises(RuntimeError):
        services.customer_import_run(import_id=job.pk)

    job.refresh_from_db()
    assert (job.status, job.error, job.next_row) == ("failed", "disk on fire", 0)
    assert job.finished_at is not None
    assert services.customer_imports_resume() == []


@pytest.mark.django_db
def test_only_the_first_rejected_rows_are_kept_but_all_are_counted(operator, chunk_of,
                                                                  monkeypatch):
    chunk_of(2)
    monkeypatch.setattr(services, "IMPORT_ERRORS_KEPT", 3)
    job = start(operator, b"external_id,gender\nb1,x\nb2,x\nok,male\nb3,x\nb4,x\nb5,x\n")

    services.customer_import_run(import_id=job.pk)

    assert figures(job) == ("done", 6, 1, 1, 0, 0, 5)
    assert [r["row"] for r in job.rejected_rows] == [2, 3, 5]


@pytest.mark.django_db
def test_extra_and_missing_cells_are_kept_as_they_were(operator):
    job = start(operator, b"external_id,gender,city\nx-1,robot,a,extra\nx-2,robot\n")

    services.customer_import_run(import_id=job.pk)

    job.refresh_from_db()
    assert [r["values"] for r in job.rejected_rows] == [["x-1", "robot", "a", "extra"],
                                                       ["x-2", "robot", ""]]
