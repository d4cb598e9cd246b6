"""The touch queue hands every committed touch to every consumer, whatever the order in which
the ingest transactions commit (PostgreSQL: real concurrent transactions)."""

import threading

import pytest
from django.db import connection, transaction

from crm import hooks, services
from crm.models import CustomerTouch
from tagging.models import CustomerTag, Tag, TagGroup, TagRule
from tagging.tasks import tag_touched_customers
from tests.factories import CustomerFactory, UserFactory


class _Recorder:
    def __init__(self):
        self.batches: list[list[int]] = []

    def __call__(self, ids: list[int]) -> None:
        self.batches.append(ids)


@pytest.fixture
def probe():
    recorder = _Recorder()
    hooks.touch_consumers.register("probe", recorder)
    yield recorder
    hooks.touch_consumers.unregister("probe")


class _LateCommit:
    """A transaction that writes its touch first (taking the lower id) and commits only when
    told to, in a thread of its own."""

    def __init__(self, work):
        self.work = work
        self.written = threading.Event()
        self.release = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self):
        try:
            with transaction.atomic():
                self.work()
                self.written.set()
                assert self.release.wait(20), "never released"
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            self.written.set()
            connection.close()

    def __enter__(self):
        self.thread.start()
        assert self.written.wait(20)
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.thread.join(30)
        assert not self.errors, self.errors


def _in_thread(work) -> None:
    errors = []

    def run():
        try:
            work()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not errors, errors


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_touch_committed_after_a_later_one_is_still_handed_over(probe):
    assert connection.vendor == "postgresql"
    early, late = CustomerFactory(), CustomerFactory()

    with _LateCommit(lambda: hooks.notify_customers_touched([early.pk])):
        # A second transaction takes a higher touch id and commits first.
        _in_thread(lambda: hooks.notify_customers_touched([late.pk]))
        assert hooks.touched_customers_process("probe") == 1
        assert probe.batches == [[late.pk]]
        hooks.touches_prune()
    # Now the first one commits: its touch is still there and goes out on the next run.
    assert CustomerTouch.objects.filter(consumer="probe", customer_id=early.pk).exists()
    assert hooks.touched_customers_process("probe") == 1
    assert probe.batches == [[late.pk], [early.pk]]
    assert hooks.touched_customers_process("probe") == 0


def _held(customer) -> set[str]:
    return set(CustomerTag.objects.filter(customer=customer).values_list("tag__name", flat=True))


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_customer_whose_event_commits_late_is_still_tagged_on_the_next_run():
    operator = UserFactory(username="late-op", roles=["operator"])
    group = TagGroup.objects.create(name="互动")
    tag = Tag.objects.create(group=group, name="聊过")
    TagRule.objects.create(name="聊过", tag=tag, mode="add",
                           condition={"field": "event", "type": "message_in",
                                      "op": "count_gte", "value": 1, "within_days": 7})
    slow = CustomerFactory(external_id="slow", owner=operator)
    fast = CustomerFactory(external_id="fast", owner=operator)

    def message(external_id):
        return lambda: services.events_ingest(items=[{
            "customer": external_id, "type": "message_in",
            "idempotency_key": f"msg-{external_id}"}], actor=operator)

    with _LateCommit(message("slow")):
        _in_thread(message("fast"))
        tag_touched_customers()
        assert _held(fast) == {"聊过"}
    assert _held(slow) == set()
    tag_touched_customers()
    assert _held(slow) == {"聊过"}


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_every_consumer_gets_its_own_touches_and_a_failed_run_keeps_them(probe):
    customers = [CustomerFactory() for _ in range(3)]
    CustomerTouch.objects.all().delete()        # (PostgreSQL's triggers touched them as made)
    hooks.notify_customers_touched([c.pk for c in customers])
    assert CustomerTouch.objects.filter(consumer="probe").count() == 3
    assert CustomerTouch.objects.filter(consumer="tagging").count() == 3

    def failing(ids):
        raise RuntimeError("the handler failed")

    hooks.touch_consumers.register("probe", failing)
    with pytest.raises(RuntimeError):
        hooks.touched_customers_process("probe")
    assert CustomerTouch.objects.filter(consumer="probe").count() == 3   # rolled back

    hooks.touch_consumers.register("probe", probe)
    assert hooks.touched_customers_process("probe", limit=2) == 2
    assert hooks.touched_customers_process("probe", limit=2) == 1
    assert probe.batches == [sorted(c.pk for c in customers[:2]), [customers[2].pk]]
    assert CustomerTouch.objects.filter(consumer="tagging").count() == 3   # not the probe's


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_prune_drops_only_the_touches_of_consumers_no_longer_installed(probe):
    customer = CustomerFactory()
    hooks.notify_customers_touched([customer.pk])
    CustomerTouch.objects.create(consumer="removed-app", customer_id=customer.pk)
    assert hooks.touches_prune() == 1
    # (on PostgreSQL the triggers touched the customer for the segment index too)
    assert set(CustomerTouch.objects.values_list("consumer", flat=True)) == {
        "probe", "tagging", "lifecycle",
        *(["segment_index"] if connection.vendor == "postgresql" else [])}
