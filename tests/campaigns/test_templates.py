"""Message templates: plain text, refused at save time when they could exhaust a worker, bounded
when they render, and the templates written in Django's syntax rewritten (campaigns 0005)."""

import importlib
from datetime import timedelta

import pytest
from django.apps import apps as django_apps
from django.template import Context, Engine

from campaigns import services, templates
from campaigns.models import Campaign, Message, Sop, SopStep
from crm.models import Customer
from tests.campaigns.conftest import NOW, next_local_noon, place

SIX_LOOPS = "{% for a in name %}" * 6 + "x" + "{% endfor %}" * 6


def _preview(api, template, customer=None):
    return api.post("/api/v1/templates/preview/",
                    {"template": template, **({"customer": customer.pk} if customer else {})},
                    format="json")


# --- Refused at save time -------------------------------------------------------------------

@pytest.mark.parametrize("template, reason", [
    (SIX_LOOPS, "loops nest at most 2 deep"),
    ("{% lorem 100000 w %}", "Encountered unknown tag 'lorem'"),
    ("{{ lipsum(100000) }}", "calling a function or method is not allowed"),
    ("{% for i in range(100000) %}x{% endfor %}", "calling a function or method"),
    ("{{ name.upper() }}", "calling a function or method"),
    ("{% set a = name ~ name %}{{ a }}", "{% set %} is not allowed"),
    ("{% macro m() %}x{% endmacro %}", "{% macro %} is not allowed"),
    ("{{ 9 ** 9 ** 9 }}", "** is not allowed"),
    ("{{ name|center(1000000000) }}", "the filter “center” is not allowed"),
    ("{{ name * 100000000 }}", "“*” repeats text or lists"),
    ("{{ '%0999999999d' % 1 }}", "“%” formats text"),
    ("{{ name|replace('', 'x' ~ 'xxxxxxxxxx' ~ 'x') }}" * 1, None),
])
def test_templates_that_could_exhaust_a_worker_are_refused_with_the_reason(
        op_api, template, reason):
    response = _preview(op_api, template)
    if reason is None:      # bounded and harmless: accepted
        assert response.status_code == 200, response.json()
        return
    assert response.status_code == 400, response.json()
    assert response.json()["message"].startswith("template: ")
    assert reason in response.json()["message"]


def test_a_nested_loop_bomb_is_refused_when_an_sop_or_campaign_is_saved(admin_api,
                                                                        builtin_models):
    sop = admin_api.post("/api/v1/sops/", {"name": "炸弹", "model": "value", "stage": "growth",
                                           "steps": [{"order": 1, "channel": "wecom",
                                                      "category": "service",
                                                      "template": SIX_LOOPS}]}, format="json")
    assert sop.status_code == 400
    assert sop.json()["message"] == (
        "steps[0].template: loops nest at most 2 deep in a message template")
    campaign = admin_api.post("/api/v1/campaigns/", {
        "name": "炸弹", "condition": {"field": "city", "op": "eq", "value": "杭州"},
        "channel": "wecom", "category": "content",
        "template": "{% lorem 100000 w %}"}, format="json")
    assert campaign.status_code == 400
    assert campaign.json()["message"].startswith("template: the template does not compile")
    assert not Sop.objects.filter(name="炸弹").exists()
    assert not Campaign.objects.exists()


def test_a_template_in_djangos_syntax_is_answered_with_its_new_form(op_api):
    response = _preview(op_api, "{{ name }}，看您喜欢{{ categories|join:'、' }}")
    assert response.status_code == 400
    assert response.json()["message"].endswith(
        "Message templates use Jinja2's syntax now; this one reads: "
        "{{ name }}，看您喜欢{{ categories|join('、') }}")


# --- Bounded when rendered for a real customer ------------------------------------------------

@pytest.fixture
def hoarder(operator):
    """A customer whose data would take a loop a long way."""
    return Customer.objects.create(
        external_id="hoarder", name="Hoarder", owner=operator,
        attributes={"items": [f"item-{i}" for i in range(5000)], "note": "y" * 3000})


@pytest.mark.parametrize("template, reason", [
    ("{% for a in customer.attributes['items'] %}{{ a }}{% endfor %}.",
     "the loops run more than 1000 times in all"),
    ("{% for a in tags %}{% endfor %}{% for a in customer.attributes['items'] %}"
     "{% for b in customer.attributes['items'] %}{% endfor %}{% endfor %}x",
     "the loops run more than 1000 times in all"),
    ("{% for a in customer.attributes['items'][:10] %}{{ customer.attributes.note }}"
     "{% endfor %}.", "the message is longer than 8000 characters"),
    ("{{ name|replace('o', customer.attributes.note ~ customer.attributes.note ~ "
     "customer.attributes.note) }}",
     "the message is longer than 8000 characters"),
])
def test_a_render_that_goes_past_a_limit_stops_with_the_reason(op_api, hoarder, template,
                                                                reason):
    assert _preview(op_api, template).status_code == 200        # the sample customer is fine
    response = _preview(op_api, template, hoarder)
    assert response.status_code == 400
    assert response.json()["message"] == (
        f"template: the template does not render for this customer: {reason}")


def test_a_render_that_takes_too_much_cpu_stops(op_api, hoarder, settings):
    settings.MESSAGE_TEMPLATE_RENDER_SECONDS = 0.01
    template = ("{% for a in customer.attributes['items'][:900] %}"
                "{% if customer.attributes['items']|join(',')|length > 1 %}{% endif %}"
                "{% endfor %}x")
    response = _preview(op_api, template, hoarder)
    assert response.status_code == 400
    assert response.json()["message"] == ("template: the template does not render for this "
                                          "customer: the template takes more than 0.01 s to "
                                          "render")


@pytest.mark.both_dbs
def test_an_sop_message_past_a_limit_is_skipped_with_the_reason_and_others_still_go(
        make_sop, owner):
    sop = make_sop("value", "growth", steps=[{
        "template": "{{ name }}：{% for a in customer.attributes['items'] %}{{ a }}{% endfor %}"}])
    step = sop.steps.get()
    plain = Customer.objects.create(external_id="plain", name="Plain", owner=owner,
                                    joined_at=NOW - timedelta(days=90),
                                    attributes={"items": ["a", "b"]})
    hoarder = Customer.objects.create(external_id="hoard", name="Hoard", owner=owner,
                                      joined_at=NOW - timedelta(days=90),
                                      attributes={"items": list(range(5000))})
    for customer in (plain, hoarder):
        place(customer, "value", "growth")
        Message.objects.create(customer=customer, sop_step=step, channel="console",
                               category="service", due_at=NOW - timedelta(minutes=1),
                               dedupe_key=f"limit:{customer.pk}")
    services.messages_dispatch(now=NOW)
    sent = Message.objects.get(customer=plain)
    skipped = Message.objects.get(customer=hoarder)
    assert (sent.status, sent.content) == ("sent", "Plain：ab")
    assert (skipped.status, skipped.skip_reason) == ("skipped", "template_error")
    assert skipped.last_error == "the loops run more than 1000 times in all"


# --- Plain text -----------------------------------------------------------------------------

TOM = "Tom & Jerry<3 \"quoted\" 'apostrophe'"


def test_a_preview_is_the_text_as_sent_nothing_escaped(op_api, operator):
    customer = Customer.objects.create(external_id="tom", name=TOM, owner=operator,
                                       city="<b>杭州</b>")
    response = _preview(op_api, "{{ name }} @ {{ customer.city }} & co", customer)
    assert response.status_code == 200
    assert response.json() == {"content": f"{TOM} @ <b>杭州</b> & co"}


@pytest.mark.both_dbs
def test_sop_and_campaign_messages_are_sent_as_plain_text(make_sop, owner, admin_api):
    sop = make_sop("value", "growth", steps=[{"template": "{{ name }}，您好 & 欢迎"}])
    customer = Customer.objects.create(external_id="tom", name=TOM, owner=owner, city="杭州",
                                       joined_at=NOW - timedelta(days=90))
    place(customer, "value", "growth")
    Message.objects.create(customer=customer, sop_step=sop.steps.get(), channel="console",
                           category="service", due_at=NOW - timedelta(minutes=1),
                           dedupe_key="plain:sop")
    services.messages_dispatch(now=NOW)
    assert Message.objects.get(dedupe_key="plain:sop").content == f"{TOM}，您好 & 欢迎"

    created = admin_api.post("/api/v1/campaigns/", {
        "name": "纯文本", "condition": {"field": "city", "op": "eq", "value": "杭州"},
        "channel": "console", "category": "content",
        "template": "<{{ name }}> & {{ customer.city }}"}, format="json")
    assert created.status_code == 201, created.json()
    started = admin_api.post(f"/api/v1/campaigns/{created.json()['id']}/schedule/")
    assert started.status_code == 200, started.json()
    message = Message.objects.get(campaign_id=created.json()["id"])
    assert message.content == f"<{TOM}> & 杭州"
    services.messages_dispatch(now=next_local_noon())
    message.refresh_from_db()
    assert (message.status, message.content) == ("sent", f"<{TOM}> & 杭州")


# --- Templates written in Django's syntax ---------------------------------------------------

DJANGO_TEMPLATES = [
    "{{ name }}您好，我是{{ owner.name }}",
    "{{ name }}，{% if categories %}看您喜欢{{ categories|join:'、' }}，{% endif %}新品",
    '{{ customer.city|default:"未知" }} {{ customer.joined_at|date:"Y-m-d" }} '
    "{{ customer.total_spent|floatformat:0 }} {{ customer.phone|default_if_none:'-' }}",
    "{% for t in tags %}{{ forloop.counter }}:{{ t|upper }}{% if not forloop.last %},"
    "{% endif %}{% empty %}none{% endfor %}",
    "{% if customer.orders_count >= 2 and stages.value == 'growth' %}老客"
    "{% elif customer.city is None %}?{% else %}新客{% endif %}",
    "{# a note #}{% comment %}not sent {{ x }}{% endcomment %}{% firstof customer.nothing name %}"
    " {% now 'Y' %}",
    "{{ customer.attributes.level|upper }} {{ tags.0 }} {{ customer.joined_at }} "
    "{{ customer.total_spent }} {{ customer.opted_out|yesno:'是,否' }}",
    "{% verbatim %}{{ not a tag }}{% endverbatim %} {{ name|truncatechars:3 }}",
    "{% for key, value in stages.items %}{{ key }}={{ value }};{% endfor %}",
    "{% autoescape off %}{{ name|safe }}{% endautoescape %} {{ tags|length }}",
]


@pytest.mark.parametrize("source", DJANGO_TEMPLATES)
def test_a_template_in_djangos_syntax_renders_the_same_after_its_rewrite(source):
    context = templates.sample_context()
    django = Engine(loaders=[], autoescape=False, libraries={}).from_string(source)
    before = django.render(Context(context, autoescape=False)).strip()
    after = templates.render(templates.compile_template(templates.from_django_syntax(source)),
                             context)
    assert after == before
    assert after


@pytest.mark.parametrize("source, reason", [
    ("{% lorem 3 w %}", "{% lorem %} has no equivalent"),
    ("{% cycle 'a' 'b' %}", "{% cycle %} has no equivalent"),
    ("{{ name|center:30 }}", "the filter “center” has no equivalent"),
    ("{{ forloop.parentloop.counter }}", "“forloop.parentloop.counter” has no equivalent"),
])
def test_what_has_no_equivalent_is_named(source, reason):
    with pytest.raises(templates.ConversionError, match=reason):
        templates.from_django_syntax(source)


@pytest.mark.both_dbs
def test_the_migration_rewrites_stored_templates_and_stops_what_it_cannot(make_sop, db):
    sop = make_sop("value", "growth", steps=[
        {"template": "{{ name }}，看您喜欢{{ categories|join:'、' }}"},
        {"template": "{% cycle 'a' 'b' %}"}])
    draft = Campaign.objects.create(name="d", condition={"all": []}, status="scheduled",
                                    template="{% lorem %}")
    done = Campaign.objects.create(name="old", condition={"all": []}, status="done",
                                   template="{{ name|default:'您' }}好")

    importlib.import_module("campaigns.migrations.0005_jinja_templates").rewrite(
        django_apps, None)

    first, second = SopStep.objects.filter(sop=sop).order_by("order")
    assert (first.template, first.paused) == ("{{ name }}，看您喜欢{{ categories|join('、') }}",
                                              False)
    assert second.paused and second.template == "{% cycle 'a' 'b' %}"
    assert "{% cycle %} has no equivalent" in second.paused_reason
    draft.refresh_from_db()
    assert (draft.status, draft.template) == ("draft", "{% lorem %}")
    assert "{% lorem %} has no equivalent" in draft.paused_reason
    done.refresh_from_db()
    assert done.template == "{{ name|default('您', true) }}好"
