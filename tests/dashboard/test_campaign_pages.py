"""The campaign pages: compose (audience with its count, template with its preview), start,
progress, results with the uplift, cancel; who may do what; never a server error."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from campaigns import services
from campaigns.models import Campaign, CampaignControl, Message
from crm import services as crm_services
from tagging.models import Segment
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db

SHANGHAI = {"field": "city", "op": "eq", "value": "上海"}


@pytest.fixture(autouse=True)
def sends_at_any_hour(settings):
    """Messages go out whatever the hour the suite runs at (no quiet hours), to the console."""
    from campaigns import backends

    settings.OUTREACH_QUIET_HOURS = ""
    settings.OUTREACH_BACKENDS = {channel: "campaigns.backends.ConsoleBackend" for channel in
                                  ("console", "email", "sms", "webhook", "wecom")}
    backends.reset_backends()
    yield
    backends.reset_backends()


def _compose(**fields):
    data = {"name": "双十二预热", "audience": "condition", "segment": "",
            "condition": json.dumps(SHANGHAI), "channel": "console", "category": "content",
            "template": "{{ name }}，双十二见", "send_at": "", "holdout_percent": "0"}
    data.update(fields)
    return data


@pytest.fixture
def draft(admin_user):
    return Campaign.objects.create(name="草稿", condition=SHANGHAI, template="hi",
                                   channel="console", category="content", created_by=admin_user)


@pytest.mark.parametrize("method, path", [
    ("get", "/campaigns/"), ("get", "/campaigns/new/"), ("post", "/campaigns/audience/"),
    ("post", "/templates/preview/"), ("get", "/campaigns/{pk}/"),
    ("get", "/campaigns/{pk}/progress/"), ("post", "/campaigns/{pk}/start/"),
])
def test_anonymous_readers_are_sent_to_sign_in(client, draft, method, path):
    response = getattr(client, method)(path.format(pk=draft.pk))
    assert response.status_code == 302 and response["Location"].startswith("/login/")


@pytest.mark.parametrize("role", ["operator", "analyst"])
def test_only_admins_compose_start_or_cancel(reader, request, draft, role):
    client = reader(request.getfixturevalue(role))
    assert client.get("/campaigns/").status_code == 200          # every role reads
    assert client.get(f"/campaigns/{draft.pk}/").status_code == 200
    assert client.get("/campaigns/new/").status_code == 403
    assert client.post("/campaigns/new/", _compose()).status_code == 403
    for action in ("start", "cancel", "delete"):
        assert client.post(f"/campaigns/{draft.pk}/{action}/").status_code == 403
    assert Campaign.objects.get(pk=draft.pk).status == "draft"
    assert "New campaign" not in client.get("/campaigns/").content.decode()


def test_an_admin_composes_and_starts_a_campaign(reader, admin_user):
    for name in ("沪一", "沪二"):
        CustomerFactory(owner=admin_user, city="上海", name=name)
    CustomerFactory(owner=admin_user, city="杭州")
    client = reader(admin_user)
    response = client.post("/campaigns/new/", _compose(start="1"))
    campaign = Campaign.objects.get(name="双十二预热")
    assert response.status_code == 302 and response["Location"] == f"/campaigns/{campaign.pk}/"
    assert campaign.status == "sending" and campaign.audience_size == 2
    assert sorted(Message.objects.filter(campaign=campaign).values_list("content", flat=True)) \
        == ["沪一，双十二见", "沪二，双十二见"]
    page = client.get(response["Location"]).content.decode()
    assert "Sending started to 2 customers." in page
    assert 'hx-trigger="every 2s"' in page                      # the bar polls while sending


def test_a_draft_is_saved_and_a_send_time_schedules_it(reader, admin_user):
    client = reader(admin_user)
    client.post("/campaigns/new/", _compose(name="草稿一"))
    assert Campaign.objects.get(name="草稿一").status == "draft"
    later = (timezone.localtime() + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    client.post("/campaigns/new/", _compose(name="定时", send_at=later, start="1"))
    scheduled = Campaign.objects.get(name="定时")
    assert scheduled.status == "scheduled" and scheduled.send_at > timezone.now()


def test_a_saved_segment_is_the_audience(reader, admin_user):
    segment = Segment.objects.create(name="上海客户", condition=SHANGHAI)
    client = reader(admin_user)
    page = client.get(f"/campaigns/new/?segment={segment.pk}").content.decode()
    assert f'<option value="{segment.pk}" selected>上海客户</option>' in page
    client.post("/campaigns/new/", _compose(audience="segment", segment=str(segment.pk),
                                            condition=""))
    campaign = Campaign.objects.get(name="双十二预热")
    assert campaign.segment == segment and campaign.condition is None


@pytest.mark.parametrize("fields, message", [
    ({"condition": ""}, "audience: add at least one condition"),
    ({"condition": "{"}, "audience: the condition is not valid JSON"),
    ({"audience": "segment", "segment": ""}, "audience: choose a saved segment"),
    ({"template": "{% for x in y %}"}, "template"),
    ({"holdout_percent": "80"}, "holdout_percent: between 0 and 50"),
    ({"send_at": "明天"}, "send at: a date and time"),
])
def test_a_refused_campaign_is_shown_with_what_was_typed(reader, admin_user, fields, message):
    response = reader(admin_user).post("/campaigns/new/", _compose(name="坏的", **fields))
    assert response.status_code == 400
    page = response.content.decode()
    assert message in page and 'value="坏的"' in page
    assert not Campaign.objects.filter(name="坏的").exists()


def test_the_stage_guard_refusal_is_shown_and_an_admin_may_override(reader, admin_user):
    import importlib

    from django.apps import apps as django_apps

    from lifecycle.models import CustomerStage, Stage

    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(django_apps, None)
    intro = Stage.objects.get(model__key="value", key="intro")
    customer = CustomerFactory(owner=admin_user, city="上海")
    CustomerStage.objects.create(customer=customer, model=intro.model, stage=intro,
                                 entered_at=timezone.now(), source="rule")
    client = reader(admin_user)
    refused = client.post("/campaigns/new/", _compose(name="促销", category="promotional"))
    assert refused.status_code == 400 and "promotional" in refused.content.decode().lower()
    client.post("/campaigns/new/", _compose(name="促销", category="promotional",
                                            override_stage_guard="1"))
    campaign = Campaign.objects.get(name="促销")
    assert campaign.override_stage_guard and campaign.overridden_by == admin_user
    assert "The stage guard was overridden by" in client.get(
        f"/campaigns/{campaign.pk}/").content.decode()


def test_the_audience_fragment_counts_within_what_the_reader_may_see(reader, operator,
                                                                     other_operator):
    CustomerFactory(owner=operator, city="上海")
    CustomerFactory(owner=other_operator, city="上海")
    page = reader(operator).post("/campaigns/audience/", {
        "audience": "condition", "condition": json.dumps(SHANGHAI)}).content.decode()
    assert "data-audience-count>1<" in page
    bad = reader(operator).post("/campaigns/audience/", {
        "audience": "condition", "condition": json.dumps({"field": "x", "op": "eq"})})
    assert "unknown field" in bad.content.decode()


def test_the_template_preview_for_a_chosen_customer(reader, operator, other_operator):
    CustomerFactory(owner=operator, name="王芳", external_id="wm-wf")
    CustomerFactory(owner=other_operator, name="李雷", external_id="wm-ll")
    client = reader(operator)
    mine = client.post("/templates/preview/", {"template": "{{ name }}，您好 & <3",
                                               "customer": "王芳"}).content.decode()
    assert "As 王芳 reads it:" in mine and "王芳，您好 &amp; &lt;3" in mine
    theirs = client.post("/templates/preview/", {"template": "{{ name }}", "customer": "李雷"})
    assert "No customer of yours matches" in theirs.content.decode()
    sample = client.post("/templates/preview/", {"template": "{{ name }}好"}).content.decode()
    assert "As a sample customer reads it:" in sample
    bomb = client.post("/templates/preview/", {"template": "{{ range(10) }}"}).content.decode()
    assert "data-preview-error" in bomb


def test_progress_reaches_done_and_stops_polling(reader, admin_user):
    CustomerFactory(owner=admin_user, city="上海")
    client = reader(admin_user)
    client.post("/campaigns/new/", _compose(start="1"))
    campaign = Campaign.objects.get(name="双十二预热")
    assert 'data-progress-percent>0%' in client.get(
        f"/campaigns/{campaign.pk}/progress/").content.decode()
    services.messages_dispatch()
    services.campaigns_finish()
    page = client.get(f"/campaigns/{campaign.pk}/progress/").content.decode()
    assert "data-progress-percent>100%" in page and "every 2s" not in page
    assert 'data-campaign-status>Done' in page


def test_results_show_the_funnel_skips_and_uplift(reader, admin_user):
    for index in range(20):
        CustomerFactory(owner=admin_user, city="上海", external_id=f"sh-{index}")
    CustomerFactory(owner=admin_user, city="上海", external_id="sh-out", opted_out=True)
    client = reader(admin_user)
    client.post("/campaigns/new/", _compose(holdout_percent="30", start="1"))
    campaign = Campaign.objects.get(name="双十二预热")
    services.messages_dispatch()
    services.campaigns_finish()
    sent = Message.objects.filter(campaign=campaign, status="sent").select_related("customer")
    crm_services.orders_ingest(actor=admin_user, items=[{
        "customer": sent[0].customer.external_id, "source": "store", "external_id": "o-1",
        "amount": "99.00", "placed_at": timezone.now().isoformat()}])
    page = client.get(f"/campaigns/{campaign.pk}/").content.decode()
    assert "Results" in page and "Uplift over the control group" in page
    assert 'data-result="converted"' in page
    # The holdout draw hashes the campaign's and the customer's ids: the opted-out customer
    # may be in the control group (sent nothing, so not skipped either).
    held_out = CampaignControl.objects.filter(campaign=campaign,
                                              customer__external_id="sh-out").exists()
    assert ("Opted out" in page) != held_out                       # skipped, by reason


def test_cancel_stops_the_unsent_rest(reader, admin_user):
    CustomerFactory(owner=admin_user, city="上海")
    client = reader(admin_user)
    client.post("/campaigns/new/", _compose(start="1"))
    campaign = Campaign.objects.get(name="双十二预热")
    page = client.post(f"/campaigns/{campaign.pk}/cancel/", follow=True).content.decode()
    assert "Cancelled: 1 message will not be sent." in page
    assert Message.objects.get(campaign=campaign).skip_reason == "cancelled"


def test_the_list_costs_a_fixed_number_of_queries(reader, admin_user,
                                                  django_assert_max_num_queries):
    for index in range(15):
        Campaign.objects.create(name=f"活动{index}", condition=SHANGHAI, template="hi")
    client = reader(admin_user)
    client.get("/campaigns/")
    with django_assert_max_num_queries(6):
        page = client.get("/campaigns/").content.decode()
    assert "活动14" in page


def test_the_campaign_page_costs_a_fixed_number_of_queries(reader, admin_user,
                                                          django_assert_max_num_queries):
    for index in range(10):
        CustomerFactory(owner=admin_user, city="上海", external_id=f"q-{index}")
    client = reader(admin_user)
    client.post("/campaigns/new/", _compose(holdout_percent="20", start="1"))
    campaign = Campaign.objects.get(name="双十二预热")
    services.messages_dispatch()
    client.get(f"/campaigns/{campaign.pk}/")
    with django_assert_max_num_queries(16):
        client.get(f"/campaigns/{campaign.pk}/")
