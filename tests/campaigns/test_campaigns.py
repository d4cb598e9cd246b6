"""Campaigns (群发, issue 5 §3) through the API: draft → schedule (now or at a time) → the audience
fixed when sending starts → dispatched → done; cancelling skips the unsent rest; progress is
visible while sending. The stage guard (§7) refuses promotion aimed at newcomers unless an admin
overrides it, and a template that does not render is refused at save time (§4)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns import services
from campaigns.models import Campaign, Message
from crm.models import Customer
from tagging.models import Segment
from tests.campaigns.conftest import next_local_noon, place

pytestmark = [pytest.mark.django_db]

HANGZHOU = {"field": "city", "op": "eq", "value": "杭州"}


@pytest.fixture
def hangzhou(owner):
    """Three customers in Hangzhou and one in Beijing."""
    people = [Customer.objects.create(external_id=f"hz-{i}", name=name, city="杭州",
                                      owner=owner)
              for i, name in enumerate(["林小姐", "王先生", "赵女士"])]
    Customer.objects.create(external_id="bj-0", name="北京客户", city="北京", owner=owner)
    return people


def _create(api, **fields):
    data = {"name": "春季上新", "condition": HANGZHOU, "channel": "wecom", "category": "content",
            "template": "{{ name }}，春季新品到了", **fields}
    return api.post("/api/v1/campaigns/", data, format="json")


def _progress(api, campaign_id) -> dict:
    response = api.get(f"/api/v1/campaigns/{campaign_id}/")
    assert response.status_code == 200, response.json()
    return response.json()


@pytest.mark.both_dbs
def test_draft_schedule_now_dispatch_done(admin_api, hangzhou, owner):
    created = _create(admin_api)
    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["status"], body["audience_size"], body["progress"]["total"]) == ("draft", None,
                                                                                   0)
    assert not Message.objects.exists()

    started = admin_api.post(f"/api/v1/campaigns/{body['id']}/schedule/")

    assert started.status_code == 200, started.json()
    assert (started.json()["status"], started.json()["audience_size"]) == ("sending", 3)
    assert started.json()["started_at"] is not None
    messages = Message.objects.filter(campaign_id=body["id"])
    assert sorted(messages.values_list("content", flat=True)) == sorted(
        f"{c.name}，春季新品到了" for c in hangzhou)
    assert set(messages.values_list("status", "channel", "category")) == {
        ("queued", "wecom", "content")}

    # The audience was fixed when sending started: a newcomer who matches now gets nothing.
    late = Customer.objects.create(external_id="hz-late", name="后来者", city="杭州", owner=owner)

    moment = next_local_noon()
    services.messages_dispatch(now=moment, batch_size=2, max_batches=1)
    progress = _progress(admin_api, body["id"])["progress"]
    assert (progress["queued"], progress["sent"], progress["total"]) == (1, 2, 3)
    assert services.campaigns_finish() == 0                 # one still to send

    services.messages_dispatch(now=moment)
    assert services.campaigns_finish() == 1

    final = _progress(admin_api, body["id"])
    assert final["status"] == "done"
    assert final["finished_at"] is not None
    assert (final["progress"]["sent"], final["progress"]["total"]) == (3, 3)
    assert not Message.objects.filter(customer=late).exists()


@pytest.mark.both_dbs
def test_a_scheduled_campaign_starts_at_its_time(admin_api, hangzhou):
    send_at = timezone.now() + timedelta(days=1)
    body = _create(admin_api, send_at=send_at.isoformat()).json()

    scheduled = admin_api.post(f"/api/v1/campaigns/{body['id']}/schedule/")

    assert scheduled.json()["status"] == "scheduled"
    assert not Message.objects.exists()
    assert services.campaigns_start_due(now=send_at - timedelta(minutes=1)) == 0
    assert services.campaigns_start_due(now=send_at + timedelta(seconds=1)) == 1
    campaign = Campaign.objects.get(pk=body["id"])
    assert (campaign.status, campaign.audience_size) == ("sending", 3)
    assert Message.objects.filter(campaign=campaign, status="queued").count() == 3
    assert services.campaigns_start_due(now=send_at + timedelta(minutes=5)) == 0


@pytest.mark.both_dbs
def test_cancelling_skips_the_unsent_rest(admin_api, hangzhou):
    body = _create(admin_api).json()
    admin_api.post(f"/api/v1/campaigns/{body['id']}/schedule/")
    services.messages_dispatch(now=next_local_noon(), batch_size=1, max_batches=1)
    # One more is in flight (claimed by a dispatcher that dies before sending).
    in_flight = Message.objects.filter(campaign_id=body["id"], status="queued").first()
    Message.objects.filter(pk=in_flight.pk).update(
        status="sending", claimed_at=timezone.now() - timedelta(minutes=10), attempts=1)

    cancelled = admin_api.post(f"/api/v1/campaigns/{body['id']}/cancel/")

    assert cancelled.status_code == 200, cancelled.json()
    assert cancelled.json() == {"skipped": 1}
    assert Campaign.objects.get(pk=body["id"]).status == "cancelled"
    # The in-flight one comes back through the sweeper and is not sent either.
    services.messages_sweep()
    services.messages_dispatch(now=next_local_noon())
    assert sorted(Message.objects.filter(campaign_id=body["id"])
                  .values_list("status", "skip_reason")) == [
        ("sent", ""), ("skipped", "cancelled"), ("skipped", "cancelled")]
    progress = _progress(admin_api, body["id"])["progress"]
    assert (progress["sent"], progress["skipped"], progress["total"]) == (1, 2, 3)

    again = admin_api.post(f"/api/v1/campaigns/{body['id']}/cancel/")
    assert again.status_code == 400
    assert again.json()["message"] == "status: the campaign is Cancelled already"
    restart = admin_api.post(f"/api/v1/campaigns/{body['id']}/schedule/")
    assert restart.status_code == 400


@pytest.mark.both_dbs
def test_a_started_campaign_cannot_be_changed(admin_api, hangzhou):
    body = _create(admin_api).json()
    changed = admin_api.patch(f"/api/v1/campaigns/{body['id']}/", {"name": "renamed"},
                              format="json")
    assert changed.status_code == 200
    admin_api.post(f"/api/v1/campaigns/{body['id']}/schedule/")

    late = admin_api.patch(f"/api/v1/campaigns/{body['id']}/", {"name": "again"}, format="json")

    assert late.status_code == 400
    assert late.json()["message"] == "status: a campaign that has started cannot be changed"
    assert Campaign.objects.get(pk=body["id"]).name == "renamed"


@pytest.mark.both_dbs
def test_only_a_campaign_that_has_not_started_can_be_deleted(admin_api, hangzhou):
    draft = _create(admin_api).json()
    assert admin_api.delete(f"/api/v1/campaigns/{draft['id']}/").status_code == 204
    assert not Campaign.objects.filter(pk=draft["id"]).exists()

    started = _create(admin_api).json()
    admin_api.post(f"/api/v1/campaigns/{started['id']}/schedule/")
    refused = admin_api.delete(f"/api/v1/campaigns/{started['id']}/")

    assert refused.status_code == 400
    assert refused.json()["message"] == ("status: a campaign that has started cannot be "
                                         "deleted; cancel it instead")
    assert Message.objects.filter(campaign_id=started["id"], status="queued").count() == 3


@pytest.mark.both_dbs
def test_a_saved_segment_as_the_audience(admin_api, hangzhou):
    segment = Segment.objects.create(name="杭州客户", condition=HANGZHOU)
    body = _create(admin_api, condition=None, segment=segment.pk).json()
    admin_api.post(f"/api/v1/campaigns/{body['id']}/schedule/")
    assert Message.objects.filter(campaign_id=body["id"]).count() == 3

    both = _create(admin_api, segment=segment.pk)
    neither = _create(admin_api, condition=None)
    for response in (both, neither):
        assert response.status_code == 400
        assert response.json()["message"] == ("condition: give a segment or a condition (one "
                                              "of them)")


@pytest.mark.both_dbs
def test_a_malformed_audience_is_400_naming_the_node(admin_api, hangzhou):
    response = _create(admin_api, condition={"all": [HANGZHOU, {"field": "city",
                                                                "op": "older_than",
                                                                "value": 3}]})
    assert response.status_code == 400
    assert response.json()["message"] == "condition.all[1].op: unknown operator 'older_than'"


@pytest.mark.both_dbs
def test_operators_cannot_write_campaigns(operator, api_client_for, hangzhou):
    response = _create(api_client_for(operator))
    assert response.status_code == 403
    assert api_client_for(operator).get("/api/v1/campaigns/").status_code == 200


# --- The stage guard ------------------------------------------------------------------------

@pytest.fixture
def newcomers(hangzhou, builtin_models):
    """Of the Hangzhou customers: one in value intro, one in journey interest, one in both,
    and the others elsewhere (3 of 3 guarded, plus a trusted, growing fourth)."""
    place(hangzhou[0], "value", "intro")
    place(hangzhou[1], "journey", "interest")
    place(hangzhou[2], "value", "intro")
    place(hangzhou[2], "journey", "interest")
    regular = Customer.objects.create(external_id="hz-regular", name="老客", city="杭州",
                                      owner=hangzhou[0].owner)
    place(regular, "value", "growth")
    place(regular, "journey", "trust")
    return hangzhou, regular


@pytest.mark.both_dbs
def test_a_promotional_campaign_to_newcomers_is_refused(admin_api, newcomers):
    response = _create(admin_api, category="promotional")

    assert response.status_code == 400
    message = response.json()["message"]
    assert message.startswith("condition (3 of the audience): promotional messages to customers "
                              "in journey:interest, value:intro are refused")
    assert "override_stage_guard" in message
    assert not Campaign.objects.exists()


@pytest.mark.both_dbs
def test_content_to_newcomers_is_allowed(admin_api, newcomers):
    for category in ("content", "service"):
        response = _create(admin_api, category=category)
        assert response.status_code == 201, response.json()
        assert (response.json()["override_stage_guard"], response.json()["overridden_by"]) == (
            False, None)


@pytest.mark.both_dbs
def test_promotion_to_customers_outside_the_guarded_stages_is_allowed(admin_api, newcomers):
    regulars = {"field": "stage", "model": "value", "op": "in", "value": ["growth"]}
    response = _create(admin_api, category="promotional", condition=regulars)
    assert response.status_code == 201, response.json()


@pytest.mark.both_dbs
def test_an_admin_may_override_the_stage_guard_and_it_is_recorded(admin_api, admin_user,
                                                                   newcomers):
    response = _create(admin_api, category="promotional", override_stage_guard=True)

    assert response.status_code == 201, response.json()
    assert (response.json()["override_stage_guard"], response.json()["overridden_by"]) == (
        True, admin_user.username)
    campaign = Campaign.objects.get(pk=response.json()["id"])
    assert (campaign.override_stage_guard, campaign.overridden_by) == (True, admin_user)
    admin_api.post(f"/api/v1/campaigns/{campaign.pk}/schedule/")
    assert Message.objects.filter(campaign=campaign).count() == 4


@pytest.mark.both_dbs
def test_the_guard_is_applied_again_when_sending_starts(admin_api, newcomers):
    """Customers who entered a guarded stage after the campaign was saved stay out of it."""
    _guarded, regular = newcomers
    body = _create(admin_api, category="promotional",
                   condition={"field": "external_id", "op": "eq", "value": "hz-regular"}).json()
    assert body.get("id"), body
    place(regular, "value", "intro")                 # e.g. a refund took them back

    admin_api.post(f"/api/v1/campaigns/{body['id']}/schedule/")

    campaign = Campaign.objects.get(pk=body["id"])
    assert (campaign.status, campaign.audience_size) == ("sending", 0)
    assert not Message.objects.filter(campaign=campaign).exists()


@pytest.mark.both_dbs
def test_the_guard_by_the_service_for_a_non_admin(operator, newcomers):
    from core.exceptions import ApplicationError

    with pytest.raises(ApplicationError,
                       match="override_stage_guard: only an admin may override the stage guard"):
        services.campaign_save(campaign=None, actor=operator, name="x", condition=HANGZHOU,
                               channel="wecom", category="promotional", template="hi",
                               override_stage_guard=True)


# --- Templates at save time -----------------------------------------------------------------

@pytest.mark.both_dbs
@pytest.mark.parametrize("template, expected", [
    ("{% if %}hi{% endif %}", "template: the template does not compile: "),
    ("{% for x in %}", "template: the template does not compile: "),
    ("您好 {% url 'nowhere' %}", "template: the template does not compile: "),
    ("您好 {{ 1 / 0 }}", "template: the template does not render: "),
    ("{% if False %}never{% endif %}", "template: the template renders to nothing"),
])
def test_a_template_that_does_not_render_is_refused(admin_api, hangzhou, template, expected):
    response = _create(admin_api, template=template)
    assert response.status_code == 400
    assert response.json()["message"].startswith(expected)
    assert not Campaign.objects.exists()


def test_a_campaign_with_a_holdout_reports_its_uplift_over_the_control_group(
        admin_api, admin_user, bulk_customers):
    from django.core.cache import cache

    from crm.models import Order
    from metrics import reports

    people = bulk_customers(60, "ho", city="杭州")
    body = _create(admin_api, holdout_percent=50, category="content").json()
    assert body["holdout_percent"] == 50
    started = admin_api.post(f"/api/v1/campaigns/{body['id']}/schedule/")
    assert started.status_code == 200, started.json()
    campaign = Campaign.objects.get(pk=body["id"])
    control = set(campaign.controls.values_list("customer_id", flat=True))
    messaged = set(Message.objects.filter(campaign=campaign).values_list("customer_id",
                                                                         flat=True))
    assert control and messaged and not control & messaged
    assert control | messaged == {c.pk for c in people}
    assert started.json()["audience_size"] == len(messaged)
    Message.objects.filter(campaign=campaign).update(status="sent",
                                                     sent_at=campaign.started_at)
    # Every treated customer orders within the week; two of the control group do.
    buyers = sorted(messaged) + sorted(control)[:2]
    Order.objects.bulk_create([
        Order(customer_id=c, source="store", external_id=f"ho-{c}", amount="50.00",
              status="paid", placed_at=campaign.started_at) for c in buyers])

    cache.clear()
    row = reports.campaign_performance(admin_user, {})["results"][0]
    assert (row["holdout_percent"], row["control"]) == (50, len(control))
    conversion = row["conversion"]
    assert conversion["treatment"] == {"size": len(messaged), "count": len(messaged),
                                       "rate": 1.0}
    assert conversion["control"]["count"] == 2
    assert conversion["uplift_pp"] == pytest.approx(100 - 200 / len(control))


def test_a_holdout_over_half_the_audience_is_refused(admin_api, hangzhou):
    response = _create(admin_api, holdout_percent=60)
    assert response.status_code == 400
    assert response.json()["message"] == "holdout_percent: between 0 and 50"
