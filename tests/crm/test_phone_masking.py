"""Phone numbers in exports of the customer list: masked (138****5678) unless the person who
asked may export them in full — the admin role, a superuser, or someone an admin ticked on
Settings › Users; the background export masks by its requester's permission."""

import csv
import io

import pytest

from core import access
from core.models import AuditEntry
from crm import services
from crm.models import CustomerExport
from crm.tasks import run_customer_export
from tests.factories import CustomerFactory, UserFactory

pytestmark = pytest.mark.django_db

BULK = "/customers/bulk/"


@pytest.mark.parametrize(("phone", "shown"), [
    ("13812345678", "138****5678"),
    ("", ""),
    ("   ", ""),
    (" 13812345678 ", "138****5678"),
    ("138-1234-5678", "138-****-5678"),
    ("+86 138 1234 5678", "+86 1** **** 5678"),      # 13 digits: the first 3 are 8, 6, 1
    ("123456789012", "123*****9012"),
    ("1234567890", "********90"),                    # shorter than a mobile number
    ("0571-8888", "****-**88"),
    ("12345", "***45"),
    ("12", "12"),
    ("7", "7"),
    ("n/a", "***"),                                  # no digit: masked whole
])
def test_the_mask(phone, shown):
    assert services.phone_mask(phone) == shown


@pytest.fixture
def ops():
    return UserFactory(username="op-mask", roles=["operator"])


@pytest.fixture
def phones(ops):
    return [CustomerFactory(owner=ops, name="林", phone="13812345678"),
            CustomerFactory(owner=ops, name="周", phone="057188881234"),
            CustomerFactory(owner=ops, name="吴", phone="")]


def _export(client, user, customers) -> list[dict[str, str]]:
    client.force_login(user)
    response = client.post(BULK, {"action": "export", "scope": "selected",
                                  "ids": [c.pk for c in customers]},
                           HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 200
    return _read(b"".join(response.streaming_content))


def _read(content: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(content.decode("utf-8-sig"))))


def _phones(rows) -> list[str]:
    return [row["Phone"] for row in rows]


def _full_phone_permission():
    from django.contrib.auth.models import Permission

    app_label, codename = access.FULL_PHONE_PERMISSION.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


def test_an_operators_export_masks_phones(client, ops, phones):
    rows = _export(client, ops, phones)

    assert _phones(rows) == ["138****5678", "057*****1234", ""]
    (entry,) = AuditEntry.objects.filter(action="customers.export")
    assert entry.actor == ops and entry.data["full_phone"] is False


@pytest.mark.parametrize("who", ["superuser", "admin role"])
def test_an_admins_export_shows_them_whole(client, phones, who):
    admin = (UserFactory(username="root", is_superuser=True) if who == "superuser"
             else UserFactory(username="adm", roles=["admin"]))    # the group got it from 0018

    assert _phones(_export(client, admin, phones)) == ["13812345678", "057188881234", ""]


def test_an_operator_an_admin_allows_gets_full_phones_until_it_is_taken_back(client, ops,
                                                                            phones):
    admin = UserFactory(username="adm", roles=["admin"])
    client.force_login(admin)
    response = client.post("/settings/users/", {"action": "update", "user": ops.pk,
                                                "role": "operator", "is_active": "1",
                                                "full_phone": "1"})
    assert response.status_code == 302
    entry = AuditEntry.objects.filter(action="settings.user").latest("pk")
    assert (entry.actor, entry.data["full_phone"]) == (admin, True)
    page = client.get("/settings/users/").content.decode()
    assert 'data-full-phone="own"' in page and 'data-full-phone="role"' in page

    assert _phones(_export(client, ops, phones)) == ["13812345678", "057188881234", ""]

    client.force_login(admin)
    client.post("/settings/users/", {"action": "update", "user": ops.pk, "role": "operator",
                                     "is_active": "1"})
    assert not access.can_export_full_phone(type(ops).objects.get(pk=ops.pk))
    assert _phones(_export(client, ops, phones))[0] == "138****5678"


def test_the_background_export_masks_by_who_asked(client, ops, phones, monkeypatch, settings,
                                                  tmp_path, django_capture_on_commit_callbacks):
    settings.DATA_DIR = tmp_path
    monkeypatch.setattr(services, "EXPORT_STREAM_LIMIT", 1)
    monkeypatch.setattr(services, "EXPORT_CHUNK", 2)
    admin = UserFactory(username="adm", roles=["admin"])
    files = {}
    for user in (ops, admin):
        client.force_login(user)
        with django_capture_on_commit_callbacks():
            response = client.post(BULK, {"action": "export", "scope": "selected",
                                          "ids": [c.pk for c in phones]},
                                   HTTP_ACCEPT_LANGUAGE="en")     # the file's language
        export = CustomerExport.objects.filter(actor=user).get()
        assert response["Location"] == f"/customers/jobs/export/{export.pk}/"
        run_customer_export.apply(args=[export.pk])          # as a worker runs it
        download = client.get(f"/customers/exports/{export.pk}/download/")
        files[user.username] = _read(b"".join(download.streaming_content))

    assert _phones(files["op-mask"]) == ["138****5678", "057*****1234", ""]
    assert _phones(files["adm"]) == ["13812345678", "057188881234", ""]


def test_the_worker_asks_the_requesters_permission_when_it_writes(ops, phones, settings,
                                                                  tmp_path):
    settings.DATA_DIR = tmp_path
    export = CustomerExport.objects.create(actor=ops, total=3)
    ops.user_permissions.add(_full_phone_permission())   # after it was asked for

    services.customer_export_run(export_id=export.pk)

    rows = _read(services.customer_export_path(export).read_bytes())
    assert _phones(rows) == ["13812345678", "057188881234", ""]


def test_analysts_and_inactive_users_never_hold_it(analyst):
    gone = UserFactory(username="gone", roles=["admin"], is_active=False)
    assert not access.can_export_full_phone(analyst)
    assert not access.can_export_full_phone(gone)
    assert not access.can_export_full_phone(None)
