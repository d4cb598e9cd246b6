"""The import pages: upload a CSV, watch the job, read its figures and rejected rows, download
them; who may do what; an operator's imports are their own; bounded queries."""

import csv
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from crm import services, tasks
from crm.models import Customer, CustomerImport
from tests.factories import CustomerFactory, UserFactory

pytestmark = pytest.mark.django_db

CONTENT = ("external_id,name,gender,city\n"
           "wm-1,张伟,male,上海\n"
           "wm-2,李娜,robot,杭州\n"            # row 3: bad gender
           "wm-1,张伟again,,\n"                # row 4: duplicate
           "wm-3,王芳,female,\n").encode()

PAGES = ["/imports/", "/imports/sample.csv", "/imports/{pk}/", "/imports/{pk}/progress/",
         "/imports/{pk}/errors.csv"]


def job_of(user, content: bytes = CONTENT, name: str = "客户.csv") -> CustomerImport:
    return services.customer_import_start(actor=user, name=name, content=content)


def upload(client, content: bytes = CONTENT, name: str = "客户.csv"):
    return client.post("/imports/", {"file": SimpleUploadedFile(name, content, "text/csv")})


@pytest.fixture
def job(operator):
    return job_of(operator)


# --- Who may do what ------------------------------------------------------------------------

@pytest.mark.parametrize("path", PAGES)
def test_anonymous_readers_are_sent_to_sign_in(client, job, path):
    for method in ("get", "post"):
        response = getattr(client, method)(path.format(pk=job.pk))
        assert response.status_code == 302 and response["Location"].startswith("/login/")


@pytest.mark.parametrize("role", ["analyst", "none"])
@pytest.mark.parametrize("path", PAGES)
def test_analysts_and_users_without_a_role_get_403(reader, job, role, path):
    client = reader(UserFactory(username=f"user-{role}", roles=[role] if role != "none" else None))
    for method in ("get", "post"):
        assert getattr(client, method)(path.format(pk=job.pk)).status_code == 403
    assert upload(client).status_code == 403
    assert CustomerImport.objects.count() == 1


@pytest.mark.parametrize("role", ["operator", "admin_user"])
def test_admins_and_operators_use_every_page(reader, request, job, role):
    user = request.getfixturevalue(role)
    client = reader(user)
    for path in PAGES:
        assert client.get(path.format(pk=job.pk)).status_code == 200, path
    for path in PAGES[1:]:                       # only the list takes a POST (the upload)
        assert client.post(path.format(pk=job.pk)).status_code == 405, path


def test_the_pages_render_in_chinese(reader, operator, job):
    services.customer_import_run(import_id=job.pk)
    client = reader(operator, language="zh-hans")
    for path in PAGES:
        response = client.get(path.format(pk=job.pk))
        assert response.status_code == 200, path
        assert response["Content-Language"] == "zh-hans"


def test_an_operator_sees_only_their_own_imports(reader, job, other_operator, admin_user):
    theirs = reader(other_operator)
    for path in PAGES[2:]:
        assert theirs.get(path.format(pk=job.pk)).status_code == 404, path
    assert "客户.csv" not in theirs.get("/imports/").content.decode()
    assert "My imports" in theirs.get("/imports/").content.decode()

    boss = reader(admin_user)
    listing = boss.get("/imports/").content.decode()
    assert "客户.csv" in listing and "op-a" in listing      # with who uploaded it
    assert boss.get(f"/imports/{job.pk}/").status_code == 200


# --- Upload, run, results ---------------------------------------------------------------------

def test_an_upload_queues_a_job_and_its_page_shows_the_results(
        reader, operator, django_capture_on_commit_callbacks, monkeypatch):
    queued = []
    monkeypatch.setattr(tasks.run_customer_import, "delay", queued.append)
    client = reader(operator)
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(client)

    job = CustomerImport.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/imports/{job.pk}/"
    assert queued == [job.pk]
    page = client.get(response["Location"]).content.decode()
    assert "“客户.csv” uploaded: 4 rows are being imported." in page
    assert f'hx-get="/imports/{job.pk}/progress/"' in page and 'hx-trigger="every 1s"' in page
    assert "Queued" in page and "Rejected rows" not in page

    tasks.run_customer_import.apply(args=[job.pk])         # the worker's part, inline

    page = client.get(f"/imports/{job.pk}/").content.decode()
    assert "hx-get" not in page                             # finished: no more polling
    assert figure(page, "rows") == "4"
    assert figure(page, "accepted") == "2"
    assert figure(page, "duplicates") == "1"
    assert figure(page, "rejected") == "1"
    assert 'data-row="3"' in page and "gender: must be one of male, female, unknown" in page
    assert "robot" in page and "杭州" in page
    assert f'href="/imports/{job.pk}/errors.csv"' in page
    assert sorted(Customer.objects.values_list("external_id", "owner")) == [
        ("wm-1", operator.pk), ("wm-3", operator.pk)]

    listing = client.get("/imports/").content.decode()
    assert f'data-import="{job.pk}"' in listing and "Done" in listing


def figure(page: str, name: str) -> str:
    start = page.index(f'data-result="{name}"')
    value = page.index('class="figure-value">', start) + len('class="figure-value">')
    return page[value:page.index("<", value)]


def test_the_progress_fragment_stops_polling_once_the_job_is_done(reader, operator, job):
    client = reader(operator)
    polling = client.get(f"/imports/{job.pk}/progress/", HTTP_HX_REQUEST="true")
    assert 'hx-trigger="every 1s"' in polling.content.decode()
    assert "HX-Refresh" not in polling
    assert 'data-progress-percent>0%' in polling.content.decode()

    services.customer_import_run(import_id=job.pk)

    done = client.get(f"/imports/{job.pk}/progress/", HTTP_HX_REQUEST="true")
    assert "hx-get" not in done.content.decode()
    assert 'data-progress-percent>100%' in done.content.decode()
    assert done["HX-Refresh"] == "true"           # the page reloads once, with the results


def test_the_rejected_rows_download_as_csv_that_excel_reads(reader, operator, job):
    services.customer_import_run(import_id=job.pk)

    response = reader(operator).get(f"/imports/{job.pk}/errors.csv")

    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in response["Content-Disposition"]
    assert "errors.csv" in response["Content-Disposition"]
    body = response.content.decode("utf-8")
    assert body.startswith("\ufeff")
    assert list(csv.reader(io.StringIO(body[1:]))) == [
        ["Row", "Message", "external_id", "name", "gender", "city"],
        ["3", "gender: must be one of male, female, unknown", "wm-2", "李娜", "robot", "杭州"]]


def test_the_sample_csv_imports_cleanly(reader, operator):
    response = reader(operator).get("/imports/sample.csv")
    assert response.content.startswith(b"\xef\xbb\xbf")
    report = services.customers_import(content=response.content, actor=operator)
    assert (report.accepted, report.rejected) == (3, [])


@pytest.mark.parametrize(("content", "message"), [
    (b"external_id,nickname\nx,y\n", "Unknown column(s) &#x27;nickname&#x27;"),
    ("external_id\n张伟\n".encode("gbk"), "The file is not UTF-8 text"),
    (b"external_id\n", "no customers under it"),
])
def test_a_bad_file_is_refused_next_to_the_field(reader, operator, content, message):
    response = upload(reader(operator), content)

    assert response.status_code == 400
    assert message in response.content.decode()
    assert not CustomerImport.objects.exists()


def test_posting_without_a_file_asks_for_one(reader, operator):
    response = reader(operator).post("/imports/", {})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()


def test_an_operator_imports_customers_for_themselves_only(reader, operator, other_operator):
    CustomerFactory(external_id="theirs", owner=other_operator)
    job = job_of(operator, b"external_id,owner\nmine,\nhis,op-b\ntheirs,\n")
    services.customer_import_run(import_id=job.pk)

    page = reader(operator).get(f"/imports/{job.pk}/").content.decode()
    assert "owner: operators can only import customers they own" in page
    assert "external_id &#x27;theirs&#x27; belongs to another owner&#x27;s customer" in page
    assert list(Customer.objects.filter(owner=operator).values_list("external_id", flat=True)) \
        == ["mine"]


def test_the_rejected_rows_are_paged(reader, operator, monkeypatch):
    from crm import views_imports

    monkeypatch.setattr(views_imports, "ERRORS_PAGE_SIZE", 2)
    job = job_of(operator, b"external_id,gender\na,x\nb,x\nc,x\n")
    services.customer_import_run(import_id=job.pk)
    client = reader(operator)

    first = client.get(f"/imports/{job.pk}/").content.decode()
    second = client.get(f"/imports/{job.pk}/?page=2").content.decode()
    assert 'data-row="2"' in first and 'data-row="3"' in first and 'data-row="4"' not in first
    assert 'data-row="4"' in second and 'data-row="2"' not in second


# --- Bounded queries ------------------------------------------------------------------------

def test_the_list_and_the_job_page_take_a_bounded_number_of_queries(
        reader, admin_user, django_assert_max_num_queries):
    for index in range(12):
        user = UserFactory(username=f"op-{index}", roles=["operator"])
        job = job_of(user, CONTENT, name=f"f{index}.csv")
        services.customer_import_run(import_id=job.pk)
    client = reader(admin_user)
    client.get("/imports/")                                 # session, role: warmed up

    with django_assert_max_num_queries(8):
        assert client.get("/imports/").status_code == 200
    with django_assert_max_num_queries(8):
        assert client.get(f"/imports/{job.pk}/").status_code == 200
    with django_assert_max_num_queries(8):
        assert client.get(f"/imports/{job.pk}/progress/").status_code == 200
    with django_assert_max_num_queries(8):
        assert client.get(f"/imports/{job.pk}/errors.csv").status_code == 200
