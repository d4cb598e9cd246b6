"""A CSV import in a real browser: upload a file with a bad row, watch the progress bar move
while the worker imports it chunk by chunk, read the rejected row and download it as CSV."""

import csv
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.db import connection
from playwright import sync_api

from crm import services, tasks
from crm.models import Customer, CustomerImport
from tests.e2e.conftest import SCREENSHOT_DIR
from tests.factories import PASSWORD, UserFactory

expect = sync_api.expect

pytestmark = pytest.mark.browser

CONTENT = ("external_id,name,gender,city\n"
           "wm-1,张伟,male,上海\n"
           "wm-2,李娜,robot,杭州\n"
           "wm-3,王芳,female,北京\n"
           "wm-4,赵强,,深圳\n").encode()


def test_an_operator_uploads_a_csv_and_watches_it_import(page, live_server, monkeypatch, tmp_path):
    operator = UserFactory(username="op_wang", roles=["operator"], first_name="芳",
                           last_name="王")
    # The broker's part: the upload enqueues the job id; the test runs it as the worker would.
    queued = []
    monkeypatch.setattr(tasks, "run_customer_import", SimpleNamespace(delay=queued.append))
    monkeypatch.setattr(services, "IMPORT_CHUNK_ROWS", 2)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto("/login/?next=/imports/")
    page.fill("input[name=username]", "op_wang")
    page.fill("input[name=password]", PASSWORD)
    page.click("main form button[type=submit]")
    expect(page.locator("h1")).to_have_text("Imports")
    expect(page.locator("[data-table=import-columns]")).to_contain_text("external_id")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280

    source = tmp_path / "客户名单.csv"
    source.write_bytes(CONTENT)
    page.set_input_files("input[type=file]", str(source))
    page.click("[data-upload]")

    expect(page.locator("h1")).to_have_text("客户名单.csv")
    expect(page.locator("[data-import-status]")).to_have_text("Queued")
    expect(page.locator("[data-progress-percent]")).to_have_text("0%")
    assert len(queued) == 1

    # The worker: the first chunk commits, the second waits until the page has shown 50 %.
    halfway, write, calls = threading.Event(), services._import_write, []

    def paced(chunk, *, actor):
        calls.append(1)
        if len(calls) == 2:
            assert halfway.wait(20), "the page never showed the first chunk"
        write(chunk, actor=actor)

    monkeypatch.setattr(services, "_import_write", paced)

    def work():
        try:
            services.customer_import_run(import_id=queued[0])
        finally:
            connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    try:
        expect(page.locator("[data-progress-percent]")).to_have_text("50%", timeout=10_000)
        expect(page.locator("[data-import-status]")).to_have_text("Running")
        expect(page.locator("[data-result=accepted] .figure-value")).to_have_text("1")
        page.screenshot(path=str(SCREENSHOT_DIR / "e2e-import-running.png"), full_page=True)
    finally:
        halfway.set()
        worker.join(30)
    assert CustomerImport.objects.get().status == "done"

    # Finished: the polling stops and the page, loaded once more, shows the results.
    expect(page.locator("[data-import-status]")).to_have_text("Done", timeout=10_000)
    expect(page.locator("[data-progress-percent]")).to_have_text("100%")
    expect(page.locator("[data-result=accepted] .figure-value")).to_have_text("3")
    expect(page.locator("[data-result=rejected] .figure-value")).to_have_text("1")
    row = page.locator("[data-table=import-errors] tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("gender: must be one of male, female, unknown")
    expect(row).to_contain_text("robot")
    expect(row.locator("td").first).to_have_text("3")
    assert page.locator("#import-progress[hx-get]").count() == 0
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    page.screenshot(path=str(SCREENSHOT_DIR / "e2e-import-done.png"), full_page=True)

    with page.expect_download() as download:
        page.click("[data-errors-csv]")
    assert download.value.suggested_filename == "客户名单-errors.csv"
    raw = Path(download.value.path()).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    assert list(csv.reader(raw.decode("utf-8-sig").splitlines())) == [
        ["Row", "Message", "external_id", "name", "gender", "city"],
        ["3", "gender: must be one of male, female, unknown", "wm-2", "李娜", "robot", "杭州"]]
    assert sorted(Customer.objects.filter(owner=operator).values_list("external_id", flat=True)) \
        == ["wm-1", "wm-3", "wm-4"]

    page.goto("/imports/")
    expect(page.locator("[data-table=imports] tbody tr")).to_have_count(1)
    expect(page.locator("[data-table=imports] tbody tr")).to_contain_text("Done")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    page.screenshot(path=str(SCREENSHOT_DIR / "e2e-imports.png"), full_page=True)
