"""Stateful fuzzing of the REST API: sequences of create → read → change (PUT, PATCH) → action →
delete → read again over every writable resource, with bodies drawn from the OpenAPI schema
(schemathesis' strategy per operation) and run by a Hypothesis state machine, as an admin and
as an operator. Every answer passes the schema checks (no 5xx, a documented status, a
conforming body); an object created answers 200, an object deleted answers 404.

A generated body names other objects by made-up ids; half the time the references are pointed
at real ones (a tag group for a tag, a tag for a rule, a stage for an SOP …) and half the time
a minimal valid body is sent instead, so the sequences get past the create and into the rest.
"""

import importlib
from itertools import count

import pytest
import schemathesis
from django.apps import apps
from django.core.handlers.wsgi import WSGIHandler
from django.db import transaction
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)
from rest_framework.authtoken.models import Token

from config.route_access import ROUTE_ACCESS
from tagging.models import Segment, Tag, TagGroup
from tests.api.fuzzing import CHECKS, EXAMPLES, RAW, SEARCH
from tests.factories import ChannelFactory, CustomerFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.postgres_only,
              pytest.mark.usefixtures("keep_the_test_connection")]

schema = schemathesis.openapi.from_dict(RAW)
schema.app = WSGIHandler()

# resource: (route basename, lookup field, {action: method})
RESOURCES = {
    "customers": ("customer", "id", {"tags": "POST", "stage": "POST", "notes": "POST",
                                     "timeline": "GET", "export": "GET"}),
    "channels": ("channel", "id", {}),
    "groups": ("group", "id", {"members": "GET"}),
    "tag-groups": ("tag-group", "id", {}),
    "tags": ("tag", "id", {"merge": "POST"}),
    "tag-rules": ("tag-rule", "id", {"run": "POST", "runs": "GET"}),
    "segments": ("segment", "id", {"preview": "GET"}),
    "sops": ("sop", "id", {}),
    "campaigns": ("campaign", "id", {"schedule": "POST", "cancel": "POST", "resume": "POST"}),
    "stage-models": ("stage-model", "key", {"simulate": "POST", "evaluate": "POST",
                                            "transitions": "GET"}),
}
CONDITION = {"field": "city", "op": "eq", "value": "杭州"}
_strategies: dict[tuple[str, str], st.SearchStrategy] = {}


def cases(path: str, method: str, **fixed) -> st.SearchStrategy:
    key = (path, method)
    if key not in _strategies:
        operation = schema[path][method]
        _strategies[key] = operation.as_strategy(
            media_type="application/json" if operation.body else None)
    strategy = _strategies[key]
    if not fixed:
        return strategy
    return strategy.map(lambda case: _with(case, **fixed))


def _with(case, **fixed):
    case.path_parameters = {**(case.path_parameters or {}), **fixed}
    return case


def detail(resource: str) -> str:
    return f"/api/v1/{resource}/{{{RESOURCES[resource][1]}}}/"


class ApiSequences(RuleBasedStateMachine):
    """Set up by the test: `role`, `headers` (its token), `refs` (real objects to point at)."""

    role = "admin"
    headers: dict = {}
    refs: dict = {}
    resources: tuple[str, ...] = ()
    serial = count()

    def __init__(self):
        super().__init__()
        self.atomic = transaction.atomic()
        self.atomic.__enter__()
        self.live: list[tuple[str, object]] = []
        self.gone: list[tuple[str, object]] = []

    def teardown(self):
        transaction.set_rollback(True)
        self.atomic.__exit__(None, None, None)

    # --- helpers ---

    def send(self, case, body=None):
        if body is not None:
            case.body, case.media_type = body, "application/json"
        response = case.call(headers=self.headers)
        case.validate_response(response, checks=CHECKS)
        return response

    def read(self, resource: str, lookup) -> int:
        key = RESOURCES[resource][1]
        return self.send(schema[detail(resource)]["GET"].Case(
            path_parameters={key: lookup})).status_code

    def minimal(self, resource: str) -> dict:
        n = next(self.serial)
        refs = self.refs
        return {
            "customers": {"external_id": f"fz-{n}", "name": f"客户{n}"},
            "channels": {"code": f"fz-{n}", "name": f"渠道{n}"},
            "groups": {"chat_id": f"wr-fz-{n}", "name": f"群{n}"},
            "tag-groups": {"name": f"组{n}"},
            "tags": {"group": refs["tag_group"], "name": f"标签{n}"},
            "tag-rules": {"name": f"规则{n}", "tag": refs["tag"], "condition": CONDITION},
            "segments": {"name": f"人群{n}", "condition": CONDITION},
            "sops": {"name": f"SOP{n}", "model": "journey", "stage": "trust", "steps": [
                {"order": 1, "delay_minutes": 0, "channel": "console", "category": "service",
                 "template": "您好 {{ name }}"}]},
            "campaigns": {"name": f"活动{n}", "condition": CONDITION, "template": "{{ name }}"},
            "stage-models": {"key": f"fz{n}", "name": f"模型{n}", "stages": [
                {"key": "a", "name": "A", "position": 0},
                {"key": "b", "name": "B", "position": 1}]},
        }[resource]

    def point_at_real_objects(self, resource: str, body, partial: bool = False):
        """The references a generated body makes, pointed at real objects."""
        if not isinstance(body, dict):
            return body
        real = {
            "customers": {"owner": self.refs["username"], "channel": self.refs["channel"]},
            "groups": {"owner": self.refs["username"]},
            "tags": {"group": self.refs["tag_group"]},
            "tag-rules": {"tag": self.refs["tag"]},
            "sops": {"model": "journey", "stage": "trust"},
            "campaigns": {"segment": self.refs["segment"]},
        }.get(resource, {})
        for field, value in real.items():
            if field in body or not partial:
                body[field] = value
        return body

    # --- rules ---

    @rule(data=st.data())
    def create(self, data):
        resource = data.draw(st.sampled_from(self.resources), label="resource")
        case = data.draw(cases(f"/api/v1/{resource}/", "POST"), label="create")
        if data.draw(st.booleans(), label="minimal body"):
            body = self.minimal(resource)
        else:
            body = self.point_at_real_objects(resource, case.body)
        response = self.send(case, body)
        if response.status_code == 201:
            lookup = response.json()[RESOURCES[resource][1]]
            assert self.read(resource, lookup) == 200, f"{resource} {lookup} created, not found"
            self.live.append((resource, lookup))

    def _pick(self, data):
        return data.draw(st.sampled_from(self.live), label="object")

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def get(self, data):
        resource, lookup = self._pick(data)
        assert self.read(resource, lookup) == 200

    @precondition(lambda self: self.live)
    @rule(data=st.data(), method=st.sampled_from(["PUT", "PATCH"]))
    def change(self, data, method):
        resource, lookup = self._pick(data)
        key = RESOURCES[resource][1]
        case = data.draw(cases(detail(resource), method, **{key: lookup}), label=method.lower())
        body = self.point_at_real_objects(resource, case.body, partial=method == "PATCH")
        if method == "PUT" and isinstance(body, dict) and data.draw(st.booleans(),
                                                                    label="mostly valid"):
            # A valid whole body with some of the generated fields in it.
            kept = data.draw(st.sets(st.sampled_from(sorted(body))), label="generated") \
                if body else set()
            body = self.minimal(resource) | {k: body[k] for k in kept}
        response = self.send(case, body)
        if response.status_code == 200 and key != "id":
            # A stage model is addressed by its key, which a change may rename.
            new = response.json()[key]
            self.live[self.live.index((resource, lookup))] = (resource, new)
            lookup = new
        if response.status_code == 200:
            assert self.read(resource, lookup) == 200

    @precondition(lambda self: any(RESOURCES[r][2] for r, _lookup in self.live))
    @rule(data=st.data())
    def act(self, data):
        resource, lookup = data.draw(st.sampled_from(
            [(r, k) for r, k in self.live if RESOURCES[r][2]]), label="object")
        actions = RESOURCES[resource][2]
        action = data.draw(st.sampled_from(sorted(actions)), label="action")
        key = RESOURCES[resource][1]
        path = f"{detail(resource)}{action}/"
        case = data.draw(cases(path, actions[action], **{key: lookup}), label=action)
        if resource == "tags" and action == "merge" and isinstance(case.body, dict) and \
                data.draw(st.booleans(), label="merge into a real tag"):
            case.body["into"] = self.refs["tag"]
        response = self.send(case)
        if action == "merge" and response.status_code == 200:
            # The merged tag is gone (its customers moved to the other).
            self.live.remove((resource, lookup))
            self.gone.append((resource, lookup))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def delete(self, data):
        resource, lookup = self._pick(data)
        key = RESOURCES[resource][1]
        response = self.send(schema[detail(resource)]["DELETE"].Case(
            path_parameters={key: lookup}))
        if response.status_code == 204:
            self.live.remove((resource, lookup))
            self.gone.append((resource, lookup))
            assert self.read(resource, lookup) == 404, f"{resource} {lookup} deleted, still there"

    @precondition(lambda self: self.gone)
    @rule(data=st.data(), method=st.sampled_from(["GET", "PATCH", "DELETE"]))
    def touch_the_deleted(self, data, method):
        resource, lookup = data.draw(st.sampled_from(self.gone), label="deleted")
        key = RESOURCES[resource][1]
        response = self.send(schema[detail(resource)][method].Case(
            path_parameters={key: lookup},
            **({"body": {}, "media_type": "application/json"} if method == "PATCH" else {})))
        assert response.status_code == 404, (resource, lookup, method, response.status_code)


def writable_by(role: str) -> tuple[str, ...]:
    return tuple(resource for resource, (basename, *_rest) in RESOURCES.items()
                 if role in ROUTE_ACCESS[f"{basename}-list"].get("post", ()))


@pytest.mark.parametrize("role", ["admin", "operator"])
def test_create_change_act_delete_sequences_never_answer_5xx(role):
    importlib.import_module("lifecycle.migrations.0002_builtin_models").create(apps, None)
    user = UserFactory(username=f"fuzz-{role}", roles=[role])
    group = TagGroup.objects.create(name="fuzz")
    refs = {"username": user.username, "channel": ChannelFactory(code="fuzz-qr").code,
            "tag_group": group.pk, "tag": Tag.objects.create(group=group, name="fuzz").pk,
            "segment": Segment.objects.create(name="fuzz", condition=CONDITION,
                                              created_by=user).pk}
    CustomerFactory(owner=user, external_id="fuzz-1")
    machine = type(f"{role.title()}Sequences", (ApiSequences,), {
        "role": role, "headers": {"Authorization": f"Token {Token.objects.create(user=user).key}",
                                  "Accept-Language": "en"},
        "refs": refs, "resources": writable_by(role)})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=20, deadline=None,
        derandomize=not SEARCH, database=None, suppress_health_check=list(HealthCheck),
        # Shrinking a failed sequence takes minutes; the failing steps are printed as found.
        phases=[phase for phase in Phase if phase not in (Phase.shrink, Phase.explain)]))
