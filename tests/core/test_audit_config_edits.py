"""The audit log's entries for shared configuration edited through the API and the dashboard:
segments and channels (saved, deleted) — one entry per change, naming who made it, written
with the change and rolled back with a refused one. (QR codes: tests/wecom/test_audit_qr_codes.)"""

import json

import pytest

from campaigns.models import Campaign
from core.models import AuditEntry
from crm.models import Channel
from tagging.models import Segment

pytestmark = pytest.mark.django_db

SHANGHAI = {"field": "city", "op": "eq", "value": "上海"}


def _only(action):
    (entry,) = AuditEntry.objects.filter(action=action)
    return entry


def _fresh():
    AuditEntry.objects.all().delete()


# --- Segments ------------------------------------------------------------------------------

def test_segments_through_the_api(op_api, operator):
    created = op_api.post("/api/v1/segments/", {"name": "上海客户", "condition": SHANGHAI},
                          format="json")
    assert created.status_code == 201, created.json()
    segment = Segment.objects.get()
    entry = _only("segment.save")
    assert (entry.actor, entry.summary, entry.target_id) == (operator, "上海客户", str(segment.pk))

    _fresh()
    url = f"/api/v1/segments/{segment.pk}/"
    assert op_api.patch(url, {"name": "沪上客户"}, format="json").status_code == 200
    assert (_only("segment.save").actor, _only("segment.save").summary) == (operator, "沪上客户")

    _fresh()
    assert op_api.delete(url).status_code == 204
    entry = _only("segment.delete")
    assert (entry.actor, entry.target_id, entry.data["condition"]) == (operator, str(segment.pk),
                                                                        SHANGHAI)
    assert AuditEntry.objects.count() == 1


def test_segments_on_the_dashboard(client, operator):
    client.force_login(operator)
    response = client.post("/segments/new/", {"name": "上海客户", "description": "",
                                              "condition": json.dumps(SHANGHAI)})
    assert response.status_code == 302
    segment = Segment.objects.get()
    assert _only("segment.save").actor == operator

    _fresh()
    client.post(f"/segments/{segment.pk}/", {"name": "沪上客户", "description": "",
                                             "condition": json.dumps(SHANGHAI)})
    assert _only("segment.save").actor == operator

    _fresh()
    assert client.post(f"/segments/{segment.pk}/delete/").status_code == 302
    assert not Segment.objects.exists()
    assert _only("segment.delete").actor == operator
    assert AuditEntry.objects.count() == 1


def test_a_refused_segment_change_leaves_no_entry(client, op_api, operator, admin_user):
    segment = Segment.objects.create(name="上海", condition=SHANGHAI)
    Campaign.objects.create(name="618", segment=segment, template="hi")
    bad = op_api.post("/api/v1/segments/", {"name": "x", "condition": {"field": "nope"}},
                      format="json")
    assert bad.status_code == 400
    client.force_login(operator)
    client.post(f"/segments/{segment.pk}/delete/")          # the campaign's audience: kept

    assert Segment.objects.filter(pk=segment.pk).exists()
    assert not AuditEntry.objects.filter(action__startswith="segment.").exists()


# --- Channels ------------------------------------------------------------------------------

def test_channels_through_the_api(admin_api, admin_user):
    created = admin_api.post("/api/v1/channels/", {"code": "store-hz", "name": "杭州门店",
                                                   "kind": "store"}, format="json")
    assert created.status_code == 201, created.json()
    channel = Channel.objects.get()
    entry = _only("channel.save")
    assert (entry.actor, entry.summary) == (admin_user, "杭州门店 (store-hz)")

    _fresh()
    url = f"/api/v1/channels/{channel.pk}/"
    assert admin_api.patch(url, {"cost": "120.00"}, format="json").status_code == 200
    assert _only("channel.save").data == {"fields": ["cost"]}

    _fresh()
    assert admin_api.delete(url).status_code == 204
    assert not Channel.objects.exists()
    entry = _only("channel.delete")
    assert (entry.actor, entry.target_id, entry.data) == (admin_user, str(channel.pk),
                                                         {"code": "store-hz"})
    assert AuditEntry.objects.count() == 1


def test_an_operator_changing_a_channel_is_refused_and_not_recorded(op_api):
    channel = Channel.objects.create(code="c1", name="C1")
    assert op_api.delete(f"/api/v1/channels/{channel.pk}/").status_code == 403
    assert not AuditEntry.objects.exists()


def test_channels_in_the_django_admin(client, admin_user):
    client.force_login(admin_user)
    response = client.post("/admin/crm/channel/add/", {
        "code": "poster", "name": "海报", "kind": "other", "cost": "5", "description": "",
        "active": "on"})
    assert response.status_code == 302
    channel = Channel.objects.get()
    assert _only("channel.save").actor == admin_user          # the dry run left nothing

    _fresh()
    response = client.post(f"/admin/crm/channel/{channel.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not Channel.objects.exists()
    assert _only("channel.delete").actor == admin_user
