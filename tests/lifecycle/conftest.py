"""Fixtures of the lifecycle tests: a `world` that creates customers, events and orders through
crm's ingest services (so aggregates such as `last_active_at` and `total_spent` are kept the way
production keeps them) and evaluates stage models at a chosen `now`."""

import importlib
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from django.apps import apps as django_apps

from crm import services as crm_services
from crm.models import Customer
from lifecycle import services
from lifecycle.hooks import StageEntry, stage_entered_hooks
from lifecycle.models import CustomerStage, StageModel, StageTransition

# A fixed moment for evaluations (noon in Asia/Shanghai); customers' facts are placed
# relative to it.
NOW = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)


def ago(days: float = 0, *, hours: float = 0, seconds: float = 0, now: datetime = NOW) -> datetime:
    return now - timedelta(days=days, hours=hours, seconds=seconds)


@pytest.fixture(autouse=True)
def _english(english):
    """Messages are compared word for word (see `english` in tests/conftest.py)."""


@pytest.fixture
def builtin_models(db):
    """The three built-in models of migration 0002. A transactional test's flush deletes what
    migrations created, so tests that need them after such a flush recreate them (the
    migration's own function; it leaves existing models alone)."""
    migration = importlib.import_module("lifecycle.migrations.0002_builtin_models")
    migration.create(django_apps, None)
    return {m.key: m for m in StageModel.objects.all()}


@pytest.fixture
def entered():
    """What the transition hook hears: a handler registered for the test's duration."""
    received: list[StageEntry] = []
    stage_entered_hooks.register("tests.lifecycle", received.append)
    yield received
    stage_entered_hooks.unregister("tests.lifecycle")


class World:
    """Customers and their facts, written through the ingest services as `actor`."""

    def __init__(self, actor) -> None:
        self.actor = actor
        self._seq = itertools.count(1)

    def _events(self, items) -> None:
        report = crm_services.events_ingest(items=items, actor=self.actor)
        assert not report.rejected, report.rejected

    def add(self, external_id: str, *, joined_at: datetime, **profile) -> Customer:
        """A customer who joined (friend_added) at `joined_at`."""
        self._events({"customer": external_id, "type": "friend_added",
                      "idempotency_key": f"add-{external_id}-{next(self._seq)}",
                      "occurred_at": joined_at, "data": profile})
        return Customer.objects.get(external_id=external_id)

    def event(self, customer: Customer, kind: str, at: datetime, **data) -> None:
        self._events({"customer": customer.external_id, "type": kind,
                      "idempotency_key": f"ev-{customer.external_id}-{next(self._seq)}",
                      "occurred_at": at, "data": data})

    def events(self, customer: Customer, kind: str, times: list[datetime], **data) -> None:
        for at in times:
            self.event(customer, kind, at, **data)

    def order(self, customer: Customer, at: datetime, amount: str = "100.00",
              external_id: str | None = None) -> str:
        external_id = external_id or f"o-{customer.external_id}-{next(self._seq)}"
        report = crm_services.orders_ingest(actor=self.actor, items={
            "customer": customer.external_id, "external_id": external_id, "source": "youzan",
            "amount": amount, "status": "paid", "placed_at": at})
        assert report.accepted == 1, report.as_dict()
        return external_id

    def refund(self, customer: Customer, external_id: str, at: datetime) -> None:
        report = crm_services.orders_ingest(actor=self.actor, items={
            "customer": customer.external_id, "external_id": external_id, "source": "youzan",
            "amount": "0", "status": "refunded", "placed_at": at, "refunded_at": at})
        assert report.accepted == 1, report.as_dict()

    # --- evaluation and what it left behind

    @staticmethod
    def evaluate(key: str, now: datetime, **kwargs) -> services.Evaluation:
        result = services.stage_model_evaluate(model=StageModel.objects.get(key=key), now=now,
                                               **kwargs)
        assert result is not None
        return result

    @staticmethod
    def stage(customer: Customer, key: str) -> str | None:
        row = CustomerStage.objects.filter(customer=customer, model__key=key).first()
        return row.stage.key if row else None

    @staticmethod
    def stages_of(customers: dict[str, Customer], key: str) -> dict[str, str | None]:
        return {name: World.stage(c, key) for name, c in customers.items()}

    @staticmethod
    def transitions(customer: Customer, key: str) -> list[StageTransition]:
        return list(StageTransition.objects.filter(customer=customer, model__key=key)
                    .order_by("at", "id"))

    @staticmethod
    def moves(customer: Customer, key: str) -> list[tuple[str, str]]:
        return [(t.from_key, t.to_key) for t in World.transitions(customer, key)]


@pytest.fixture
def world(admin_user, builtin_models) -> World:
    return World(admin_user)


