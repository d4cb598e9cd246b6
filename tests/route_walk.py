"""Walking the URL configuration for the access test: every named route, a path to it that
reaches real objects (one of each kind, made by `world`), and how each role fares there."""

import importlib
from datetime import timedelta

from django.apps import apps
from django.db import transaction
from django.urls import URLResolver, get_resolver, reverse
from django.utils import timezone

METHODS = ("get", "post", "put", "patch", "delete")
ROLES = ("anonymous", "analyst", "operator", "admin")

# Which object a route's `pk` names, by the start of the route's name (first match wins).
PK_OBJECTS = [
    (("dashboard:customer-export",), "export"), (("dashboard:customer-job",), "bulk_tag_job"),
    (("dashboard:import",), "import"),
    (("customer-", "dashboard:customer-", "tagging-dashboard:customer-",
      "lifecycle-dashboard:customer-"), "customer"),
    (("order-",), "order"), (("channel-",), "channel"), (("group-",), "group"),
    (("tag-group-", "tagging-dashboard:group-"), "tag_group"),
    (("tag-rule-", "tagging-dashboard:rule-"), "rule"),
    (("tag-", "tagging-dashboard:tag-"), "tag"),
    (("segment", "segments:"), "segment"), (("bulk-tag-job",), "bulk_tag_job"),
    (("outreach:sop-step",), "step"), (("sop-", "outreach:sop"), "sop"),
    (("campaign-", "outreach:campaign"), "campaign"), (("message-",), "message"),
    (("task-", "outreach:task"), "task"), (("wecom:contact-way",), "contact_way"),
]
OTHER_KWARGS = {"key": "value", "stage_key": "intro", "kind": "tags", "action": "cancel"}


def world(users):
    """One object of each kind the routes name, belonging to the operator where it matters."""
    from campaigns.models import Campaign, Message, OperatorTask, Sop, SopStep
    from crm.models import Channel, CustomerExport, CustomerImport, Group, Order
    from crm.services import channel_save
    from lifecycle.models import Stage
    from tagging.models import BulkTagJob, Segment, Tag, TagGroup, TagRule
    from tests.factories import CustomerFactory
    from wecom.models import ContactWay

    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(apps, None)
    operator = users["operator"]
    customer = CustomerFactory(owner=operator)
    group = TagGroup.objects.create(name="walk")
    tag = Tag.objects.create(group=group, name="walk")
    intro = Stage.objects.get(model__key="value", key="intro")
    sop = Sop.objects.create(name="walk", model=intro.model, stage=intro)
    now = timezone.now()
    return {
        "customer": customer, "tag_group": group, "tag": tag, "sop": sop,
        "order": Order.objects.create(customer=customer, source="store", external_id="o1",
                                      amount="1.00", placed_at=now),
        "channel": Channel.objects.create(code="walk", name="walk"),
        "group": Group.objects.create(chat_id="wr-walk", name="walk", owner=operator),
        "rule": TagRule.objects.create(name="walk", tag=tag, condition={
            "field": "city", "op": "eq", "value": "x"}),
        "segment": Segment.objects.create(name="walk", condition={
            "field": "city", "op": "eq", "value": "x"}, created_by=operator),
        "bulk_tag_job": BulkTagJob.objects.create(actor=operator, add=[tag.pk], total=0),
        "step": SopStep.objects.create(sop=sop, order=1, delay_minutes=0, channel="console",
                                       category="service", template="hi"),
        "campaign": Campaign.objects.create(name="walk", condition={
            "field": "city", "op": "eq", "value": "x"}, template="hi", created_by=operator),
        "message": Message.objects.create(customer=customer, channel="console",
                                          category="service", content="hi", due_at=now,
                                          dedupe_key="walk"),
        "task": OperatorTask.objects.create(assignee=operator, customer=customer,
                                            kind="follow_up", title="walk",
                                            due_at=now + timedelta(days=1), dedupe_key="walk"),
        "import": CustomerImport.objects.create(actor=operator, name="walk.csv", content=b""),
        "export": CustomerExport.objects.create(actor=operator),
        "contact_way": ContactWay.objects.create(
            channel=channel_save(channel=None, code="walk-qr", name="walk qr"),
            staff=[operator.username], config_id="cfg-walk"),
    }


def routes(objects):
    """{name: path} of every named, non-admin route (the format-suffix twins of API routes
    left out: same view, same rules)."""
    found = {}

    def walk(patterns, namespace=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                inner = (f"{namespace}:{pattern.namespace}" if namespace else pattern.namespace
                         ) if pattern.namespace else namespace
                walk(pattern.url_patterns, inner)
                continue
            if not pattern.name:
                continue
            name = f"{namespace}:{pattern.name}" if namespace else pattern.name
            regex = pattern.pattern.regex
            if name.startswith("admin:") or "format" in regex.groupindex or name in found:
                continue
            kwargs = {k: _value(name, k, objects) for k in regex.groupindex}
            found[name] = reverse(name, kwargs=kwargs)

    walk(get_resolver().url_patterns)
    return found


def _value(name: str, kwarg: str, objects) -> str:
    if kwarg != "pk":
        return OTHER_KWARGS[kwarg]
    for prefixes, kind in PK_OBJECTS:
        if name.startswith(prefixes):
            return str(objects[kind].pk)
    raise AssertionError(f"route {name!r}: say in PK_OBJECTS which object its pk names")


def outcome(response) -> str:
    """'out' when the role was refused (401, 403, or sent to the login page), 'none' when the
    route has no such method (405), else 'in'."""
    if response.status_code in (401, 403):
        return "out"
    if response.status_code in (301, 302) and "/login/" in response.get("Location", ""):
        return "out"
    if response.status_code == 405:
        return "none"
    return "in"


def observe(client, users, path: str) -> dict[str, tuple[str, ...]]:
    """{method: roles let in} for the methods some role gets into; each request is rolled back,
    so a delete or a run changes nothing for the next."""
    seen = {}
    for method in METHODS:
        results = []
        for role in ROLES:
            client.logout()
            if role != "anonymous":
                client.force_login(users[role])
            with transaction.atomic():
                response = getattr(client, method)(path, HTTP_ACCEPT_LANGUAGE="en")
                transaction.set_rollback(True)
            results.append(outcome(response))
        allowed = tuple(role for role, result in zip(ROLES, results, strict=True)
                        if result == "in")
        if allowed:
            seen[method] = allowed
    return seen
