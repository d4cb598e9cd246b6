"""Fixtures of the outreach tests: a fixed clock, explicit quiet hours and backends, recording
channel backends, SOP / message builders and a `world` that adds customers and facts through
crm's ingest services and runs the real lifecycle evaluation."""

import importlib
import itertools
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.apps import apps as django_apps
from django.utils import timezone, translation

from campaigns import backends
from campaigns.backends import SendResult
from campaigns.models import Message, OutreachPolicy, Sop, SopStep
from crm import services as crm_services
from crm.models import Customer
from lifecycle import services as lifecycle_services
from lifecycle.models import CustomerStage, Stage, StageModel
from tests.factories import UserFactory

# Noon in Asia/Shanghai on a Monday; every evaluation and dispatch is given a moment relative
# to it, so no test depends on the clock.
NOW = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)
CONSOLE = "campaigns.backends.ConsoleBackend"


def local(year, month, day, hour, minute=0, tz=None):
    """An aware moment in the system time zone (or `tz`)."""
    return timezone.make_aware(datetime(year, month, day, hour, minute),
                               tz or timezone.get_current_timezone())


def next_local_noon(after: datetime | None = None) -> datetime:
    """The next noon (system time zone) after `after` (default: the real now) — a dispatch
    moment outside any quiet hours for messages that services stamp with the real now."""
    moment = timezone.localtime(after or timezone.now())
    noon = moment.replace(hour=12, minute=0, second=0, microsecond=0)
    return noon if noon > moment else noon + timedelta(days=1)


# --- Channel backends the tests control ---------------------------------------------------

class RecordingBackend(backends.ChannelBackend):
    """Answers ok and remembers every message it was asked to send (thread-safe)."""

    lock = threading.Lock()
    calls: list[int] = []
    delay = 0.0     # seconds per send, to let two dispatchers interleave

    def send(self, message) -> SendResult:
        with self.lock:
            type(self).calls.append(message.pk)
        if self.delay:
            time.sleep(self.delay)
        return SendResult(ok=True, provider_id=f"rec-{message.pk}")


class ScriptedBackend(backends.ChannelBackend):
    """Answers what `script` says, in turn (the last answer repeats); an exception in the
    script is raised (a backend with a bug)."""

    script: list[SendResult | Exception] = [SendResult(ok=True, provider_id="scripted")]
    calls: list[int] = []

    def send(self, message) -> SendResult:
        type(self).calls.append(message.pk)
        answer = self.script[min(len(type(self).calls), len(self.script)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture(autouse=True)
def _english():
    """Messages are compared word for word; the project's default language is Chinese."""
    with translation.override("en"):
        yield


@pytest.fixture(autouse=True)
def outreach_settings(settings):
    """Every test states its quiet hours and backends: the default window, console sends."""
    settings.OUTREACH_QUIET_HOURS = "22:00-08:00"
    settings.OUTREACH_BACKENDS = {channel: CONSOLE for channel in
                                  ("console", "email", "sms", "webhook", "wecom")}
    settings.OUTREACH_FIRST_PLACEMENT_HOURS = 24
    settings.OUTREACH_CHURN_WARNING_STAGES = ["value:dormant"]
    backends.reset_backends()
    RecordingBackend.calls = []
    RecordingBackend.delay = 0.0
    ScriptedBackend.calls = []
    yield settings
    backends.reset_backends()


@pytest.fixture
def use_backend(outreach_settings):
    """`use_backend(path, *channels)`: send these channels (default: all) through `path`."""

    def apply(path: str, *channels: str):
        for channel in channels or ("console", "email", "sms", "webhook", "wecom"):
            outreach_settings.OUTREACH_BACKENDS = {**outreach_settings.OUTREACH_BACKENDS,
                                                   channel: path}
        backends.reset_backends()

    return apply


@pytest.fixture
def recorder(use_backend):
    use_backend("tests.campaigns.conftest.RecordingBackend")
    return RecordingBackend


@pytest.fixture
def scripted(use_backend):
    """`scripted(*answers)`: the backend of every channel answers these in turn."""

    def make(*answers: SendResult | Exception):
        ScriptedBackend.script = list(answers)
        ScriptedBackend.calls = []
        use_backend("tests.campaigns.conftest.ScriptedBackend")
        return ScriptedBackend

    return make


@pytest.fixture
def outreach_policy(db):
    """`outreach_policy(**fields)`: the one policy row with these values."""

    def make(**fields):
        pol = OutreachPolicy.objects.first() or OutreachPolicy()
        for name, value in fields.items():
            setattr(pol, name, value)
        pol.save()
        return pol

    return make


# --- Built-in data (recreated after a transactional test's flush) --------------------------

@pytest.fixture
def builtin_models(db):
    migration = importlib.import_module("lifecycle.migrations.0002_builtin_models")
    migration.create(django_apps, None)
    return {m.key: m for m in StageModel.objects.all()}


@pytest.fixture
def default_sops(builtin_models):
    importlib.import_module("campaigns.migrations.0002_default_sops").create(django_apps, None)
    importlib.import_module("campaigns.migrations.0005_jinja_templates").rewrite(django_apps, None)
    return {(s.model.key, s.stage.key): s for s in
            Sop.objects.filter(built_in=True).select_related("model", "stage")}


def stage(model_key: str, stage_key: str) -> Stage:
    return Stage.objects.select_related("model").get(model__key=model_key, key=stage_key)


def place(customer, model_key: str, stage_key: str, at: datetime = NOW) -> CustomerStage:
    """Put a customer in a stage directly (no hook): for guards that read the current stage."""
    st = stage(model_key, stage_key)
    row, _created = CustomerStage.objects.update_or_create(
        customer=customer, model=st.model,
        defaults={"stage": st, "entered_at": at, "source": "rule"})
    return row


@pytest.fixture
def make_sop(builtin_models):
    """`make_sop(model, stage, steps=[{...}], **fields)`: an SOP written directly."""

    def make(model_key: str, stage_key: str, steps: list[dict] | None = None, **fields):
        st = stage(model_key, stage_key)
        sop = Sop.objects.create(name=fields.pop("name", f"test {model_key}:{stage_key}"),
                                 model=st.model, stage=st, **fields)
        for order, data in enumerate(steps or [{}], start=1):
            SopStep.objects.create(sop=sop, **{
                "order": order, "delay_minutes": 0, "channel": "console",
                "category": "service", "template": "你好 {{ name }}", **data})
        return sop

    return make


@pytest.fixture
def owner(db):
    return UserFactory(username="op-owner", roles=["operator"], first_name="Wang")


_keys = itertools.count(1)


@pytest.fixture
def queue(owner):
    """`queue(customer=None, **fields)`: one outbox row (default: a console service message
    due an hour before NOW for a new active customer of `owner`)."""

    def make(customer=None, **fields):
        if customer is None:
            customer = Customer.objects.create(external_id=f"q-{next(_keys)}", name="Lin",
                                               owner=owner, joined_at=NOW - timedelta(days=90))
        values = {"channel": "console", "category": "service", "content": "hello",
                  "due_at": NOW - timedelta(hours=1), "dedupe_key": f"test:{next(_keys)}",
                  **fields}
        return Message.objects.create(customer=customer, **values)

    return make


@pytest.fixture
def bulk_customers(owner):
    """`bulk_customers(n, prefix, **fields)`: n customers of `owner` in one statement."""

    def make(n: int, prefix: str = "bulk", **fields) -> list[Customer]:
        values = {"joined_at": NOW - timedelta(days=90), **fields}
        Customer.objects.bulk_create([
            Customer(external_id=f"{prefix}-{i:05d}", name=f"{prefix} {i}", owner=owner,
                     **values) for i in range(n)], batch_size=2000)
        return list(Customer.objects.filter(external_id__startswith=f"{prefix}-")
                    .order_by("pk"))

    return make


class World:
    """Customers and their facts through the ingest services, evaluated at chosen moments."""

    def __init__(self, actor) -> None:
        self.actor = actor
        self._seq = itertools.count(1)

    def _events(self, items) -> None:
        report = crm_services.events_ingest(items=items, actor=self.actor)
        assert not report.rejected, report.rejected

    def add(self, external_id: str, *, joined_at: datetime, **profile) -> Customer:
        self._events({"customer": external_id, "type": "friend_added",
                      "idempotency_key": f"add-{external_id}-{next(self._seq)}",
                      "occurred_at": joined_at, "data": profile})
        return Customer.objects.get(external_id=external_id)

    def event(self, customer: Customer, kind: str, at: datetime, **data) -> None:
        self._events({"customer": customer.external_id, "type": kind,
                      "idempotency_key": f"ev-{customer.external_id}-{next(self._seq)}",
                      "occurred_at": at, "data": data})

    def order(self, customer: Customer, at: datetime, amount: str = "100.00",
              status: str = "paid", external_id: str | None = None,
              items: list[dict] | None = None) -> str:
        external_id = external_id or f"o-{customer.external_id}-{next(self._seq)}"
        report = crm_services.orders_ingest(actor=self.actor, items={
            "customer": customer.external_id, "external_id": external_id, "source": "youzan",
            "amount": amount, "status": status, "placed_at": at,
            **({"refunded_at": at} if status == "refunded" else {}),
            "items": items or []})
        assert report.accepted == 1, report.as_dict()
        return external_id

    @staticmethod
    def evaluate(now: datetime, customers=None, keys=None):
        ids = None if customers is None else [c.pk for c in customers]
        return lifecycle_services.stage_models_evaluate(keys=keys, customer_ids=ids, now=now)

    @staticmethod
    def stage(customer: Customer, model_key: str) -> str | None:
        row = CustomerStage.objects.filter(customer=customer, model__key=model_key).first()
        return row.stage.key if row else None


@pytest.fixture
def world(owner, builtin_models) -> World:
    return World(owner)

