"""Fuzzing the REST API from its own OpenAPI schema (schemathesis): every operation, as an admin,
with a bounded number of generated requests each — no 5xx, and every answer conforms to the
schema. A new 500 anywhere in the API fails the build."""

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token

from campaigns.models import Campaign
from crm import services as crm_services
from lifecycle import services as lifecycle_services
from tests.api.fuzzing import CHECKS, EXAMPLES, RAW, SEARCH
from tests.factories import ChannelFactory, CustomerFactory, UserFactory

# The coverage phase sends every boundary case the schema defines; for the bodies holding a
# condition (its JSON Schema has a branch per field) that is ~7,000 requests an operation, so
# those operations are fuzzed with generated examples only.
CONDITION_BODIES = r"^/api/v1/(sops|campaigns|tag-rules|segments|customers/bulk-tag)"
CONFIG = schemathesis.Config.from_dict({"operations": [{
    "include-path-regex": CONDITION_BODIES, "include-method-regex": "^(POST|PUT|PATCH)$",
    "phases": {"coverage": {"enabled": False}}}]})
schema = schemathesis.openapi.from_dict(RAW, config=CONFIG)
schema.app = WSGIHandler()


@pytest.fixture
def token(db):
    """An admin's token, and a little of everything for the answers to show."""
    user = UserFactory(username="fuzz-admin", is_superuser=True, is_staff=True)
    ChannelFactory(code="store-qr")
    CustomerFactory(owner=user, external_id="fuzz-1", referred_by=CustomerFactory(owner=user))
    crm_services.events_ingest(actor=user, items=[
        {"customer": "fuzz-2", "type": "friend_added", "idempotency_key": "f-add",
         "data": {"name": "林", "channel": "store-qr"}},
        {"customer": "fuzz-2", "type": "group_joined", "idempotency_key": "f-join",
         "data": {"group": "chat-1", "name": "会员群"}},
        {"customer": "fuzz-1", "type": "message_in", "idempotency_key": "f-msg"}])
    crm_services.orders_ingest(actor=user, items=[
        {"customer": "fuzz-1", "external_id": "o-1", "source": "youzan", "amount": "99.00",
         "items": [{"sku": "a", "name": "面霜", "category": "护肤", "quantity": 1,
                    "price": "99.00"}]}])
    lifecycle_services.stage_models_evaluate()
    Campaign.objects.create(name="c", condition={"field": "city", "op": "eq", "value": "杭州"},
                            template="{{ name }}")
    return Token.objects.create(user=user).key


@pytest.mark.postgres_only
@pytest.mark.usefixtures("keep_the_test_connection")
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=not SEARCH,
          suppress_health_check=list(HealthCheck))
def test_the_api_never_answers_5xx_and_conforms_to_its_schema(case, token):
    case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=CHECKS)
