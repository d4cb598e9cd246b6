"""Celery entry points of wecom; each calls one service."""

from celery import shared_task
from django.db import OperationalError

from wecom import services


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
