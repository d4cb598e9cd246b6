"""A customer's timeline: entries from every app, newest first.

crm contributes events and orders; later apps (tag changes, stage transitions, messages)
register their own source in `AppConfig.ready()`. A source answers the newest `limit` entries
of one customer and how many it has in all, each entry a dict with `at`, `kind`, `title` (what
happened, in a few words of the user's language), `detail` (who, why, what it said — a sentence
for people, may be empty) and `data` (the facts, for programs).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.utils.text import Truncator
from django.utils.translation import gettext as _

from core.registry import Registry

Entry = dict[str, Any]


@dataclass(frozen=True)
class TimelineSource:
    kind: str
    entries: Callable[[int, int], list[Entry]]  # (customer_id, limit) -> newest first
    count: Callable[[int], int]


sources: Registry[TimelineSource] = Registry("timeline_sources")


# Keys of an event's data that say in a few words what happened, in order of preference.
SUMMARY_KEYS = ("content", "text", "title", "name", "group", "url", "referred", "answer", "coupon")


def summary(data: dict) -> str:
    """What an event's data says, in a few words (its text, the group, the link …)."""
    for key in SUMMARY_KEYS:
        value = data.get(key)
        if value not in (None, "", [], {}):
            return Truncator(str(value)).chars(80)
    return ""


def event_summaries(events) -> dict[int, str]:
    """What each event says, in a few words (`summary`); a group event names its group, not
    its chat id (one query for all the events)."""
    from crm.models import Group

    data = {e.pk: (e.data if isinstance(e.data, dict) else {}) for e in events}
    chat_ids = {str(d["group"]) for d in data.values() if d.get("group") and not d.get("name")}
    names = dict(Group.objects.filter(chat_id__in=chat_ids).exclude(name="")
                 .values_list("chat_id", "name")) if chat_ids else {}

    def say(d: dict) -> str:
        group = str(d.get("group") or "")
        return names[group] if group in names and not d.get("name") else summary(d)

    return {pk: say(d) for pk, d in data.items()}


def _event_entries(customer_id: int, limit: int) -> list[Entry]:
    from crm.models import Event

    rows = list(Event.objects.filter(customer_id=customer_id)
                .order_by("-occurred_at", "-id")[:limit])
    details = event_summaries(rows)
    return [
        {"at": e.occurred_at, "kind": "event", "type": e.type, "title": e.get_type_display(),
         "detail": details[e.pk], "data": {"id": e.id, **(e.data or {})}}
        for e in rows
    ]


def _event_count(customer_id: int) -> int:
    from crm.models import Event

    return Event.objects.filter(customer_id=customer_id).count()


def _order_entries(customer_id: int, limit: int) -> list[Entry]:
    from crm.models import Order

    rows = (Order.objects.filter(customer_id=customer_id).prefetch_related("items")
            .order_by("-placed_at", "-id")[:limit])
    out = []
    for o in rows:
        title = _("Order %(amount)s CNY (%(status)s)") % {
            "amount": o.amount, "status": o.get_status_display()}
        out.append({
            "at": o.placed_at, "kind": "order", "type": o.status, "title": title,
            "detail": _("%(source)s order %(number)s") % {"source": o.source,
                                                           "number": o.external_id},
            "data": {"id": o.id, "source": o.source, "external_id": o.external_id,
                     "amount": str(o.amount), "status": o.status,
                     "items": [{"sku": i.sku, "name": i.name, "category": i.category,
                                "quantity": i.quantity, "price": str(i.price)}
                               for i in o.items.all()]},
        })
    return out


def _order_count(customer_id: int) -> int:
    from crm.models import Order

    return Order.objects.filter(customer_id=customer_id).count()


def _note_entries(customer_id: int, limit: int) -> list[Entry]:
    from core.people import staff_name
    from crm.models import CustomerNote

    rows = (CustomerNote.objects.filter(customer_id=customer_id).select_related("author")
            .order_by("-created_at", "-id")[:limit])
    return [{
        "at": n.created_at, "kind": "note", "type": "note",
        "title": (_("Note by %(person)s") % {"person": staff_name(n.author)} if n.author
                  else _("Note")),
        "detail": n.text,
        "data": {"id": n.id, "text": n.text, "by": n.author.username if n.author else None},
    } for n in rows]


def _note_count(customer_id: int) -> int:
    from crm.models import CustomerNote

    return CustomerNote.objects.filter(customer_id=customer_id).count()


def register_builtin_sources() -> None:
    sources.register("event", TimelineSource("event", _event_entries, _event_count))
    sources.register("order", TimelineSource("order", _order_entries, _order_count))
    sources.register("note", TimelineSource("note", _note_entries, _note_count))
