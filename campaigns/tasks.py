"""Celery entry points of outreach (queue `dispatch`); each calls one service."""

from celery import shared_task

from campaigns import services


@shared_task(acks_late=True)
def dispatch_messages() -> dict:
    """Send everything due (beat every 15 s, and right after new messages are queued)."""
    return services.messages_dispatch().as_dict()


@shared_task(acks_late=True)
def sweep_messages() -> int:
    """Return messages stuck in `sending` after a worker died to the queue."""
    return services.messages_sweep()


@shared_task(acks_late=True)
def start_due_campaigns() -> int:
    started = services.campaigns_start_due()
    services.campaigns_finish()
    return started


@shared_task(acks_late=True)
def check_harassment() -> list[int]:
    """Pause SOP steps whose block rate is too high and alert the admins."""
    return services.harassment_check()
