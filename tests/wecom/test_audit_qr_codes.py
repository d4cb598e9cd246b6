"""The audit log's entries for channel QR codes (渠道活码) made, changed and deleted on the
dashboard: one per change, naming the admin; a QR code WeCom refuses leaves none."""

import pytest

from core.models import AuditEntry
from wecom.accounts import staff_users_ensure
from wecom.models import ContactWay

pytestmark = pytest.mark.django_db


def _actions():
    return list(AuditEntry.objects.order_by("pk").values_list("action", "actor__username"))


def test_qr_codes_on_the_dashboard(client, admin_user, fake):
    for userid in ("zhangsan", "lisi"):
        fake.add_staff(userid)
    staff_users_ensure(["zhangsan", "lisi"])
    AuditEntry.objects.all().delete()         # the staff users' creation
    client.force_login(admin_user)

    response = client.post("/wecom/qr-codes/new/", {"new_code": "store", "new_name": "门店",
                                                    "staff": ["zhangsan"]})
    assert response.status_code == 302
    way = ContactWay.objects.select_related("channel").get()
    # The new channel the code is made for is recorded too, in the same transaction.
    assert _actions() == [("channel.save", "boss"), ("contact_way.save", "boss")]
    entry = AuditEntry.objects.get(action="contact_way.save")
    assert (entry.target_id, entry.summary, entry.data["created"], entry.data["staff"]) == (
        str(way.pk), "门店", True, ["zhangsan"])

    AuditEntry.objects.all().delete()
    response = client.post(f"/wecom/qr-codes/{way.pk}/", {
        "channel": way.channel_id, "staff": ["zhangsan", "lisi"]})
    assert response.status_code == 302
    assert _actions() == [("contact_way.save", "boss")]
    assert AuditEntry.objects.get().data["created"] is False

    AuditEntry.objects.all().delete()
    response = client.post(f"/wecom/qr-codes/{way.pk}/", {"action": "delete"})
    assert response.status_code == 302 and not ContactWay.objects.exists()
    assert _actions() == [("contact_way.delete", "boss")]
    assert AuditEntry.objects.get().target_id == str(way.pk)


def test_a_qr_code_wecom_refuses_leaves_no_entry(client, admin_user, fake):
    staff_users_ensure(["ghost"])             # known here, not a WeCom staff member
    AuditEntry.objects.all().delete()
    client.force_login(admin_user)
    response = client.post("/wecom/qr-codes/new/", {"new_code": "x1", "new_name": "X",
                                                    "staff": ["ghost"]})
    assert response.status_code == 400
    assert not AuditEntry.objects.exists()
