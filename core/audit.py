"""The audit log: `record()` writes who did what in the caller's transaction, so an entry exists
exactly when the change does.

Who: the `actor` given, else the person of the current request or task — set by
`ActorMiddleware` for the dashboard, by `core.access.AuditedTokenAuthentication` for API
tokens, and by `acting_as()` where a job runs on someone's behalf — else the system (None)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.utils.translation import gettext_lazy as _

from core.models import AuditEntry

_actor: ContextVar = ContextVar("audit_actor", default=None)

# Every action the log knows, with what people read for it (filters, the dashboard page).
ACTIONS = {
    "stage.move": _("Stage moved by hand"),
    "stage.move_bulk": _("Stage moved for many customers"),
    "tags.change": _("Tags changed by hand"),
    "tag.save": _("Tag saved"),
    "tag.delete": _("Tag deleted"),
    "tag.merge": _("Tags merged"),
    "tag_group.save": _("Tag group saved"),
    "tag_rule.save": _("Tag rule saved"),
    "segment.save": _("Segment saved"),
    "segment.delete": _("Segment deleted"),
    "channel.save": _("Channel saved"),
    "channel.delete": _("Channel deleted"),
    "contact_way.save": _("QR code saved"),
    "contact_way.delete": _("QR code deleted"),
    "sop.save": _("SOP saved"),
    "sop.delete": _("SOP deleted"),
    "sop_step.resume": _("SOP step resumed"),
    "stage_guard.override": _("Stage guard overridden"),
    "campaign.save": _("Campaign saved"),
    "campaign.schedule": _("Campaign scheduled"),
    "campaign.cancel": _("Campaign cancelled"),
    "campaign.resume": _("Campaign resumed"),
    "campaign.delete": _("Campaign deleted"),
    "stage_model.save": _("Stage model saved"),
    "stage_model.delete": _("Stage model deleted"),
    "settings.policy": _("Outreach policy changed"),
    "settings.schedule": _("Schedule changed"),
    "settings.user": _("User or role changed"),
    "messages.retry": _("Failed messages retried"),
    "customers.export": _("Customers exported"),
    "customer.data_export": _("Personal data exported"),
    "customer.erase": _("Personal data erased"),
}


def current_actor():
    return _actor.get()


def set_actor(user):
    """Make `user` the actor of what follows in this context; returns the token to reset."""
    return _actor.set(user if getattr(user, "is_authenticated", False) else None)


@contextmanager
def acting_as(user) -> Iterator[None]:
    token = set_actor(user)
    try:
        yield
    finally:
        _actor.reset(token)


def record(action: str, *, summary: str = "", target=None, customer=None,
           data: dict[str, Any] | None = None, actor=None) -> AuditEntry:
    """One entry for `action` (a key of ACTIONS) about `target` (a model instance) and, when the
    change concerns one customer, that customer (instance or id)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    actor = actor if actor is not None else current_actor()
    customer_id = getattr(customer, "pk", customer)
    return AuditEntry.objects.create(
        actor=actor if getattr(actor, "pk", None) else None,
        actor_name=actor.get_username() if getattr(actor, "pk", None) else "",
        action=action, summary=str(summary)[:500],
        target_type=target._meta.label_lower if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        customer_id=customer_id, data=data or {})


class ActorMiddleware:
    """The signed-in person is the actor of what a dashboard request changes."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        token = set_actor(getattr(request, "user", None))
        try:
            return self.get_response(request)
        finally:
            _actor.reset(token)
