"""Beat's schedule in the database (django-celery-beat), seeded from config/beat.py: one row per
default with its schedule, expiry and queue; seeding again changes nothing and keeps an admin's
edit; "reset to default" undoes it; a default taken out of the file takes its row with it."""

from io import StringIO

import pytest
from celery.schedules import crontab
from django.conf import settings
from django.core.management import call_command
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from config.beat import BEAT_SCHEDULE, JOB_TEXTS
from config.celery import app as celery_app
from core import selectors, services
from core.exceptions import ApplicationError

pytestmark = pytest.mark.django_db


def row(name: str) -> PeriodicTask:
    return PeriodicTask.objects.select_related("interval", "crontab").get(name=name)


def snapshot() -> dict:
    return {task.name: (task.task, task.interval_id, task.crontab_id, task.enabled,
                        task.expire_seconds, task.queue, task.description, task.date_changed)
            for task in PeriodicTask.objects.all()}


def test_seeding_creates_one_row_per_default_with_its_schedule_expiry_and_queue():
    report = services.periodic_tasks_sync()

    assert report.created == len(BEAT_SCHEDULE)
    assert set(PeriodicTask.objects.values_list("name", flat=True)) == set(BEAT_SCHEDULE)
    for name, entry in BEAT_SCHEDULE.items():
        task = row(name)
        assert task.task == entry["task"] and task.enabled
        assert task.expire_seconds == entry["options"]["expires"]
        assert task.queue is None      # routed by task_routes, as before
        schedule = entry["schedule"]
        if isinstance(schedule, crontab):
            assert task.interval is None
            for field in services.CRON_FIELDS:
                assert getattr(task.crontab, field) == str(getattr(schedule, f"_orig_{field}"))
            assert str(task.crontab.timezone) == settings.TIME_ZONE
        else:
            assert task.crontab is None
            assert (task.interval.every, task.interval.period) == (int(schedule), "seconds")

    dispatch = row("campaigns-dispatch")
    assert (dispatch.interval.every, dispatch.expire_seconds) == (15, 14)
    nightly = row("metrics-snapshot-nightly")
    assert (nightly.crontab.minute, nightly.crontab.hour) == ("10", "0")
    # The queue a job's message goes to is what it was with the file-based schedule.
    route = celery_app.amqp.router.route({}, dispatch.task)
    assert route["queue"].name == "dispatch"
    queues = {r.task.name: r.queue for r in selectors.periodic_task_rows()}
    assert queues["campaigns-dispatch"] == "dispatch"
    assert queues["metrics-today"] == "metrics"
    assert queues["tagging-segment-index"] == "default"


def test_celery_schedules_nothing_beside_the_rows():
    assert celery_app.conf.beat_schedule == {}
    assert settings.CELERY_BEAT_SCHEDULER == "core.scheduler:SeedingDatabaseScheduler"


def test_every_default_has_a_name_and_a_description_for_the_settings_page():
    assert set(JOB_TEXTS) == set(BEAT_SCHEDULE)


def test_seeding_twice_changes_nothing():
    services.periodic_tasks_sync()
    before = snapshot()
    intervals = IntervalSchedule.objects.count()

    report = services.periodic_tasks_sync()

    assert (report.created, report.updated, report.removed) == (0, 0, 0)
    assert report.unchanged == len(BEAT_SCHEDULE)
    assert snapshot() == before
    assert IntervalSchedule.objects.count() == intervals


def test_an_admins_edit_survives_a_reseed_and_reset_restores_the_default():
    services.periodic_tasks_sync()
    services.periodic_task_update(task=row("campaigns-dispatch"), enabled=True, every=40)
    services.periodic_task_update(task=row("tagging-expire-tags"), enabled=False, every=600)
    services.periodic_task_update(
        task=row("metrics-snapshot-nightly"), enabled=True,
        crontab={"minute": "30", "hour": "1", "day_of_month": "*", "month_of_year": "*",
                 "day_of_week": "*"})

    report = services.periodic_tasks_sync()

    assert report.customised == 3 and report.updated == 0
    assert row("campaigns-dispatch").interval.every == 40
    assert row("campaigns-dispatch").expire_seconds == 14     # still below the interval
    assert not row("tagging-expire-tags").enabled
    assert (row("metrics-snapshot-nightly").crontab.minute,
            row("metrics-snapshot-nightly").crontab.hour) == ("30", "1")
    customised = {r.task.name for r in selectors.periodic_task_rows() if r.customised}
    assert customised == {"campaigns-dispatch", "tagging-expire-tags",
                          "metrics-snapshot-nightly"}

    services.periodic_task_reset(task=row("campaigns-dispatch"))
    services.periodic_task_reset(task=row("tagging-expire-tags"))

    assert row("campaigns-dispatch").interval.every == 15
    assert row("tagging-expire-tags").enabled
    assert services.periodic_tasks_sync().customised == 1      # the nightly one only


def test_a_changed_default_reaches_rows_nobody_edited_but_not_edited_ones():
    services.periodic_tasks_sync()
    services.periodic_task_update(task=row("campaigns-sweep"), enabled=True, every=90)
    changed = {**BEAT_SCHEDULE,
               "campaigns-dispatch": {**BEAT_SCHEDULE["campaigns-dispatch"], "schedule": 20.0},
               "campaigns-sweep": {**BEAT_SCHEDULE["campaigns-sweep"], "schedule": 240.0}}

    services.periodic_tasks_sync(schedule=changed)

    assert row("campaigns-dispatch").interval.every == 20
    assert row("campaigns-sweep").interval.every == 90


def test_a_shorter_interval_shortens_the_expiry():
    services.periodic_tasks_sync()
    services.periodic_task_update(task=row("tagging-segment-index"), enabled=True, every=10)
    assert row("tagging-segment-index").expire_seconds == 9


def test_a_removed_default_disappears_but_rows_added_by_hand_stay():
    services.periodic_tasks_sync()
    by_hand = PeriodicTask.objects.create(
        name="my-report", task="metrics.tasks.metrics_today",
        interval=IntervalSchedule.objects.create(every=3600, period="seconds"))
    fewer = {name: entry for name, entry in BEAT_SCHEDULE.items() if name != "crm-prune-touches"}

    report = services.periodic_tasks_sync(schedule=fewer)

    assert report.removed == 1
    assert not PeriodicTask.objects.filter(name="crm-prune-touches").exists()
    assert PeriodicTask.objects.filter(pk=by_hand.pk).exists()
    with pytest.raises(ApplicationError, match="no default"):
        services.periodic_task_reset(task=by_hand)


@pytest.mark.parametrize(("every", "message"), [
    (0, "Every: must be at least 1 second."),
    (-5, "Every: must be at least 1 second."),
    (None, "Every: enter a whole number of seconds."),
    (10**9, "Every: at most"),
])
def test_a_bad_interval_is_refused(every, message):
    services.periodic_tasks_sync()
    with pytest.raises(ApplicationError, match=message):
        services.periodic_task_update(task=row("campaigns-dispatch"), enabled=True, every=every)
    assert row("campaigns-dispatch").interval.every == 15


@pytest.mark.parametrize(("field", "value"), [
    ("minute", "61"), ("hour", "25"), ("day_of_week", "9"), ("minute", "*/0"),
    ("month_of_year", "abc"), ("hour", ""),
])
def test_a_bad_crontab_field_is_refused_with_its_name(field, value):
    services.periodic_tasks_sync()
    fields = {"minute": "10", "hour": "0", "day_of_month": "*", "month_of_year": "*",
              "day_of_week": "*", field: value}
    with pytest.raises(ApplicationError) as caught:
        services.periodic_task_update(task=row("metrics-snapshot-nightly"), enabled=True,
                                      crontab=fields)
    assert caught.value.message.startswith(str(services.CRON_LABELS[field]))
    assert caught.value.extra == {"field": field}
    assert row("metrics-snapshot-nightly").crontab.minute == "10"


def test_the_command_seeds_and_says_what_it_did():
    out = StringIO()
    call_command("seed_periodic_tasks", stdout=out)
    assert f"{len(BEAT_SCHEDULE)} created" in out.getvalue()
    out = StringIO()
    call_command("seed_periodic_tasks", stdout=out)
    assert f"{len(BEAT_SCHEDULE)} unchanged" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_beat_seeds_the_rows_when_it_starts():
    """Beat never starts on an empty table (a fresh machine, a test database). Transactional:
    the scheduler closes connections left in a transaction, as the test's own would be."""
    from core.scheduler import SeedingDatabaseScheduler

    scheduler = SeedingDatabaseScheduler(app=celery_app, lazy=True)
    scheduler.setup_schedule()

    assert set(BEAT_SCHEDULE) <= set(PeriodicTask.objects.values_list("name", flat=True))
    # What beat will run: every interval job (django-celery-beat leaves out crontab jobs whose
    # hour is more than two hours away until it comes near).
    intervals = {name for name, entry in BEAT_SCHEDULE.items()
                 if not isinstance(entry["schedule"], crontab)}
    assert intervals <= set(scheduler.schedule)
    assert scheduler.schedule["campaigns-dispatch"].options["expires"] == 14
