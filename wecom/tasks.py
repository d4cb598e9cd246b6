"""Celery entry points of wecom; each calls one service."""

from celery import shared_task
from django.db import OperationalError

from wecom import mass_sends, reminders, services, sync
from wecom.client import api_enabled


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True,
             max_retries=5)
def process_callback(callback_id: int) -> str | None:
    """Turn one stored WeCom callback into crm facts (wecom.services.callback_process)."""
    callback = services.callback_process(callback_id=callback_id)
    return callback.status if callback else None


@shared_task(acks_late=True)
def resume_callbacks() -> int:
    """Beat: callbacks whose task was lost are processed (wecom.services.callbacks_resume)."""
    return len(services.callbacks_resume())


@shared_task(acks_late=True)
def run_sync(run_id: int) -> str | None:
    """Advance a sync run to its end (wecom.sync.sync_run)."""
    run = sync.sync_run(run_id=run_id)
    return run.status if run else None


@shared_task(acks_late=True)
def resume_syncs() -> int:
    """Beat: sync runs that stopped making progress continue from their cursor."""
    return len(sync.syncs_resume())


@shared_task(acks_late=True)
def sync_tags() -> int:
    """Beat: tags both ways (a tags run, joined when one is open); nothing when not configured."""
    return len(sync.sync_start(kinds=[sync.SyncRun.Kind.TAGS], trigger="beat")) \
        if api_enabled() else 0


@shared_task(acks_late=True)
def sync_all() -> int:
    """Beat, nightly: contacts, groups and tags from WeCom; nothing when not configured."""
    return len(sync.sync_start(trigger="beat")) if api_enabled() else 0


@shared_task(acks_late=True)
def poll_mass_sends() -> dict:
    """Beat: what staff confirmed of the mass sends, mapped onto the outbox."""
    return mass_sends.mass_sends_poll()


@shared_task(acks_late=True)
def send_reminders() -> dict:
    """Beat: due to-dos to their staff member in WeCom, once each."""
    return reminders.reminders_send()
