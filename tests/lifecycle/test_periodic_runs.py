"""A periodic evaluation reads every customer once a day (the nightly safety net); the other
runs read only the customers a condition may have changed for with time alone — the silence
reaching 30 days, a manual lock expiring — since what is written about a customer reaches the
models through the touches (crm 0019's triggers). PostgreSQL: the triggers are its."""

from datetime import timedelta

import pytest

from crm.models import Customer, CustomerTouch
from lifecycle import services
from lifecycle.models import CustomerStage, Stage, StageModel
from tests.lifecycle.conftest import NOW, World, ago

pytestmark = [pytest.mark.django_db, pytest.mark.postgres_only]


def test_between_full_runs_only_who_crossed_a_boundary_is_read(world):
    drifting = world.add("drift", joined_at=ago(100))
    world.event(drifting, "message_in", NOW - timedelta(days=30) + timedelta(minutes=10))
    quiet = world.add("quiet", joined_at=ago(10))
    locked = world.add("locked", joined_at=ago(200))
    services.stage_models_evaluate(due_only=True, now=NOW)          # the day's first: full
    value = StageModel.objects.get(key="value")
    assert value.last_full_evaluated_at == value.last_evaluated_at == NOW
    assert (World.stage(drifting, "value"), World.stage(quiet, "value"),
            World.stage(locked, "value")) == ("intro", "intro", "churn")
    # A manual move locks the customer where put, until the lock expires.
    CustomerStage.objects.filter(customer=locked, model=value).update(
        stage=Stage.objects.get(model=value, key="growth"),
        locked_until=NOW + timedelta(minutes=5))
    # A change no touch announces (the touch path would have read it): a partial run does not.
    Customer.objects.filter(pk=quiet.pk).update(joined_at=ago(200))
    CustomerTouch.objects.all().delete()

    later = NOW + timedelta(minutes=20)
    services.stage_models_evaluate(due_only=True, now=later)
    value.refresh_from_db()
    assert (value.last_evaluated_at, value.last_full_evaluated_at) == (later, NOW)
    assert World.stage(drifting, "value") == "dormant"      # 30 days silent since 12:10
    assert World.stage(locked, "value") == "churn"          # its lock expired at 12:05
    assert World.stage(quiet, "value") == "intro"           # not read

    services.stage_models_evaluate(due_only=True, now=NOW + timedelta(days=1))   # full again
    assert World.stage(quiet, "value") == "churn"


def test_an_explicit_run_is_a_full_one(world):
    quiet = world.add("quiet", joined_at=ago(10))
    services.stage_models_evaluate(due_only=True, now=NOW)
    Customer.objects.filter(pk=quiet.pk).update(joined_at=ago(200))
    services.stage_models_evaluate(keys=["value"], now=NOW + timedelta(minutes=1))
    assert World.stage(quiet, "value") == "churn"
