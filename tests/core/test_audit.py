"""The audit log: who did what and when, written with the change (and not without it), for API
token users and dashboard sessions alike; readable by admins only, through `audit/` and the
Settings › Audit log page, filterable by person, action and customer."""

import pytest

from campaigns import services as campaign_services
from core.audit import ACTIONS, acting_as, record
from core.models import AuditEntry
from lifecycle.models import Stage
from tagging.models import Tag, TagGroup
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def models(db):
    import importlib

    from django.apps import apps

    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(apps, None)


def _entries(action=None):
    entries = AuditEntry.objects.all()
    return list(entries.filter(action=action) if action else entries)


def test_a_stage_move_through_the_api_is_recorded_with_its_token_user(op_api, operator, models):
    customer = CustomerFactory(owner=operator)
    response = op_api.post(f"/api/v1/customers/{customer.pk}/stage/",
                           {"model": "value", "stage": "mature", "reason": "VIP 客户"},
                           format="json")
    assert response.status_code == 201, response.json()
    (entry,) = _entries("stage.move")
    assert (entry.actor, entry.actor_name, entry.customer_id) == (operator, operator.username,
                                                                  customer.pk)
    assert entry.data["to"] == "mature" and entry.data["reason"] == "VIP 客户"


def test_a_refused_change_leaves_no_entry(op_api, operator, models):
    customer = CustomerFactory(owner=operator)
    response = op_api.post(f"/api/v1/customers/{customer.pk}/stage/",
                           {"model": "value", "stage": "mature", "reason": ""}, format="json")
    assert response.status_code == 400
    assert _entries() == []


def test_tag_changes_by_hand_are_recorded_for_the_customer(op_api, operator):
    customer = CustomerFactory(owner=operator)
    tag = Tag.objects.create(group=TagGroup.objects.create(name="兴趣"), name="茶")
    response = op_api.post(f"/api/v1/customers/{customer.pk}/tags/", {"add": [tag.pk]},
                           format="json")
    assert response.status_code == 200, response.json()
    (entry,) = _entries("tags.change")
    assert (entry.actor, entry.customer_id, entry.summary) == (operator, customer.pk, "+茶")


def test_an_sop_saved_with_the_stage_guard_overridden_is_recorded_twice(admin_api, admin_user,
                                                                        models):
    intro = Stage.objects.get(model__key="value", key="intro")
    response = admin_api.post("/api/v1/sops/", {
        "name": "新客促销", "model": "value", "stage": intro.key, "override_stage_guard": True,
        "steps": [{"order": 1, "delay_minutes": 0, "channel": "wecom",
                   "category": "promotional", "template": "限时优惠"}]}, format="json")
    assert response.status_code == 201, response.json()
    assert [e.action for e in _entries()] == ["stage_guard.override", "sop.save"]
    assert {e.actor for e in _entries()} == {admin_user}


def test_a_setting_changed_on_the_dashboard_names_the_signed_in_admin(client, admin_user):
    client.force_login(admin_user)
    policy = campaign_services.policy()
    response = client.post("/settings/", {
        "promo_min_days_between": 5, "promo_max_per_month": 2, "block_rate_pause": "0.03",
        "block_min_sends": 100, "block_window_hours": 24, "max_attempts": 4})
    assert response.status_code == 302
    (entry,) = _entries("settings.policy")
    assert entry.actor == admin_user
    assert entry.data["before"]["promo_max_per_month"] == policy.promo_max_per_month
    assert entry.data["after"]["promo_max_per_month"] == 2


def test_a_job_without_a_person_is_the_system(db):
    entry = record("tag.save", summary="x")
    assert entry.actor is None and entry.actor_name == ""
    with pytest.raises(ValueError):
        record("no.such.action")


def test_acting_as_names_the_person_a_job_works_for(admin_user):
    with acting_as(admin_user):
        entry = record("tag.save", summary="x")
    assert entry.actor == admin_user
    assert record("tag.save").actor is None


def test_the_api_lists_the_log_to_admins_only_and_filters_it(admin_api, op_api, api_client_for,
                                                             analyst, admin_user, operator):
    customer = CustomerFactory(owner=operator)
    record("stage.move", actor=operator, customer=customer, summary="a")
    record("settings.policy", actor=admin_user, summary="b")
    record("tags.change", actor=operator, customer=customer, summary="c")
    assert op_api.get("/api/v1/audit/").status_code == 403
    assert api_client_for(analyst).get("/api/v1/audit/").status_code == 403
    everything = admin_api.get("/api/v1/audit/").json()["results"]
    assert [e["summary"] for e in everything] == ["c", "b", "a"]          # newest first
    assert everything[0]["action_label"] and everything[0]["actor"] == operator.username
    assert [e["summary"] for e in admin_api.get(
        "/api/v1/audit/", {"action": "stage.move"}).json()["results"]] == ["a"]
    assert [e["summary"] for e in admin_api.get(
        "/api/v1/audit/", {"actor": admin_user.username}).json()["results"]] == ["b"]
    assert [e["summary"] for e in admin_api.get(
        "/api/v1/audit/", {"customer": customer.pk}).json()["results"]] == ["c", "a"]


def test_the_settings_page_shows_the_log_to_admins(client, admin_user, operator):
    record("campaign.cancel", actor=admin_user, summary="618 大促")
    record("sop.save", actor=operator, summary="新客欢迎")
    client.force_login(admin_user)
    page = client.get("/settings/audit/", {"action": "campaign.cancel"},
                      HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "618 大促" in page and "新客欢迎" not in page
    assert str(ACTIONS["campaign.cancel"]) in page
    client.force_login(operator)
    assert client.get("/settings/audit/").status_code == 403
