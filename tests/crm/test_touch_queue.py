"""The touch queue hands every committed touch to every consumer, whatever the order in which
the ingest transactions commit (PostgreSQL: real concurrent transactions)."""

import threading

import pytest
from django.db import connection, transaction

from crm import hooks, services
from crm.models import Customer, CustomerTouch, TouchConsumer
from metrics import services as metrics_services
from tagging import segment_index
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


def _touch(customer) -> None:
    """Change the customer (PostgreSQL: its table's triggers write the touch)."""
    Customer.objects.filter(pk=customer.pk).update(city=f"城{customer.pk}")


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_touch_committed_after_a_later_one_is_still_handed_over(probe):
    assert connection.vendor == "postgresql"
    early, late = CustomerFactory(), CustomerFactory()
    hooks.touched_customers_process("probe")            # (their creation)
    probe.batches.clear()

    with _LateCommit(lambda: _touch(early)):
        # A second transaction takes a higher id and commits first: it is handed over at once,
        # not held back behind the open one.
        _in_thread(lambda: _touch(late))
        assert hooks.touched_customers_process("probe") == 1
        assert probe.batches == [[late.pk]]
        hooks.touches_prune()
    # Now the first one commits: its touch is still there and goes out on the next run.
    assert hooks.touches_waiting()["probe"] == 1
    assert hooks.touched_customers_process("probe") == 1
    assert probe.batches == [[late.pk], [early.pk]]
    assert hooks.touched_customers_process("probe") == 0


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_what_a_consumer_writes_while_handling_reaches_it_next_time(probe):
    first, second = CustomerFactory(), CustomerFactory()
    hooks.touched_customers_process("probe")
    probe.batches.clear()
    _touch(first)

    def handler(ids):
        probe(ids)
        if first.pk in ids:
            _touch(second)          # as a tag rule writes the tags other rules read
    hooks.touch_consumers.register("probe", handler)
    assert hooks.touched_customers_process("probe") == 1
    assert hooks.touched_customers_process("probe") == 1
    assert probe.batches == [[first.pk], [second.pk]]
    assert hooks.touched_customers_process("probe") == 0


def test_a_position_lists_the_reading_transaction_as_running():
    assert hooks._unseen_own("100:105:101", "103") == "100:105:101,103"
    assert hooks._unseen_own("100:105:", "99") == "99:105:99"
    assert hooks._unseen_own("100:105:101", "105") == "100:105:101"    # not seen anyway
    assert hooks._unseen_own("100:105:101", None) == "100:105:101"


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


def _ingest(customers) -> None:
    report = services.events_ingest(
        items=[{"customer": c.external_id, "type": "message_in",
                "idempotency_key": f"touch-{c.pk}"} for c in customers],
        actor=UserFactory(roles=["admin"]))
    assert report.accepted == len(customers), report.rejected


@pytest.mark.django_db
@pytest.mark.both_dbs
def test_every_consumer_reads_every_touch_and_a_failed_run_keeps_them(probe):
    customers = [CustomerFactory() for _ in range(3)]
    others = [CustomerFactory() for _ in range(15)]
    # (the value-layer rules tag everyone, and a rule run reads the tags it wrote once more)
    for consumer in ("tagging", "tagging", "probe"):
        hooks.touched_customers_process(consumer)
    probe.batches.clear()
    _ingest(customers)
    assert hooks.touches_waiting()["probe"] == 3

    def failing(ids):
        raise RuntimeError("the handler failed")

    hooks.touch_consumers.register("probe", failing)
    with pytest.raises(RuntimeError):
        hooks.touched_customers_process("probe")
    assert hooks.touches_waiting()["probe"] == 3        # rolled back

    hooks.touch_consumers.register("probe", probe)
    assert hooks.touched_customers_process("probe", limit=2) == 3
    assert probe.batches == [sorted(c.pk for c in customers[:2]), [customers[2].pk]]
    assert hooks.touched_customers_process("probe") == 0
    assert hooks.touches_waiting()["tagging"] == 3      # the probe's reading took none away
    assert hooks.touched_customers_process("tagging") == 3
    # Many of the customers touched at once (beyond FULL_SHARE and the limit): everyone, in
    # one pass.
    _ingest(others[:5])                                 # 5 of 18 > FULL_SHARE
    assert hooks.touched_customers_process("probe", limit=2) >= 5
    assert probe.batches[-1] is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.both_dbs
def test_prune_forgets_removed_consumers_and_drops_what_every_consumer_read(probe):
    customer = CustomerFactory()
    TouchConsumer.objects.create(consumer="removed-app")
    _ingest([customer])
    for consumer in ("probe", "tagging"):
        hooks.touched_customers_process(consumer)
    assert hooks.touches_prune() == 0               # lifecycle has not read them yet
    assert not TouchConsumer.objects.filter(consumer="removed-app").exists()
    hooks.touched_customers_process("lifecycle")
    if connection.vendor == "postgresql":
        segment_index.build()                       # the index reads its own
        assert hooks.touches_prune() == 0           # today's stage spells have not yet
        metrics_services.metrics_today()            # (the day's first refresh: all read)
    assert hooks.touches_prune() >= 1
    # What is left was written after the consumers read (the stages lifecycle placed).
    assert not CustomerTouch.objects.filter(origin="").exists()
    _ingest([CustomerFactory()])
    assert hooks.touches_prune() == 0               # not read yet by anyone
    waiting = hooks.touches_waiting()
    # (today's stage spells read only the stages' touches)
    assert all(n for consumer, n in waiting.items() if consumer != "metrics_today"), waiting


@pytest.mark.postgres_only
@pytest.mark.django_db
def test_a_consumer_skips_the_touches_of_tables_its_conditions_do_not_read():
    """A tag written touches the customer for the tag rules (a rule may read tags) but not for
    the stage models while none of their conditions reads tags; a stage written, the other way
    round. Once a condition reads that table, its touches are read again."""
    from lifecycle.models import CustomerStage, Stage, StageModel
    from tagging.services import customers_tags_change

    customer = CustomerFactory()
    operator = UserFactory()
    for _round in range(3):                 # (the value-layer rules tag, the models place)
        for consumer in ("tagging", "lifecycle"):
            hooks.touched_customers_process(consumer)
    group = TagGroup.objects.create(name="运营")
    tag = Tag.objects.create(group=group, name="跟进")
    model = StageModel.objects.filter(active=True).order_by("order").first()
    stage = Stage.objects.filter(model=model).order_by("position").last()
    just = Customer.objects.filter(pk=customer.pk)

    def waiting():
        counts = hooks.touches_waiting()
        return counts["tagging"], counts["lifecycle"]

    assert waiting() == (0, 0)
    customers_tags_change(customers=just, add=[tag], remove=[], actor=operator)
    assert waiting() == (1, 0)
    hooks.touched_customers_process("tagging")
    CustomerStage.objects.filter(customer=customer, model=model).delete()
    assert waiting() == (0, 0)

    # A stage condition reading tags, a rule reading stages: both read both again.
    Stage.objects.filter(pk=stage.pk).update(
        condition={"field": "tag", "op": "any", "value": [tag.name]})
    TagRule.objects.create(name="阶段", tag=tag, mode="add", condition={
        "field": "stage", "model": model.key, "op": "in", "value": [stage.key]})
    customers_tags_change(customers=just, add=[], remove=[tag], actor=operator)
    assert waiting() == (1, 1)
    for consumer in ("tagging", "lifecycle"):
        hooks.touched_customers_process(consumer)
    assert CustomerStage.objects.filter(customer=customer, model=model).exists()
    assert waiting()[0] == 1                # the stage the model just wrote
