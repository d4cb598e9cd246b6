"""What tagging adds to crm's customer resource: the `tags` field, the `?tag=` and
`?segment=` filters, and tag changes in the timeline."""

from collections import defaultdict

from django.db.models import Prefetch
from django.utils.translation import gettext as _

from core import conditions
from core.exceptions import ApplicationError
from crm.extensions import FieldExtension, FilterExtension, PersonalData
from crm.timeline import TimelineSource


def _prepare(queryset):
    from tagging.models import CustomerTag

    return queryset.prefetch_related(Prefetch(
        "customer_tags",
        queryset=CustomerTag.objects.select_related("tag__group").order_by("tag__group__order",
                                                                     "tag__order", "tag__name"),
        to_attr="_tags"))


def _value(customer) -> list[str]:
    return [ct.tag.name for ct in getattr(customer, "_tags", [])]


def _chips(customer) -> list[dict[str, str]]:
    return [{"label": ct.tag.name, "color": ct.tag.color, "title": ct.tag.group.name}
            for ct in getattr(customer, "_tags", [])]


def _many(customer_ids: list[int]) -> dict[int, list[str]]:
    from tagging.models import CustomerTag

    found: dict[int, list[str]] = defaultdict(list)
    for customer_id, name in (CustomerTag.objects.filter(customer_id__in=customer_ids)
                              .order_by("tag__group__order", "tag__order", "tag__name")
                              .values_list("customer_id", "tag__name")):
        found[customer_id].append(name)
    return found


TAGS_FIELD = FieldExtension("tags", _prepare, _value, list, _chips, _many)


def _filter_tags(queryset, values: list[str]):
    from tagging.conditions import holds
    from tagging.services import tags_resolve

    refs = [int(v) if v.isdigit() else v for v in values]
    ctx = conditions.Context()
    for tag in tags_resolve(refs, path="tag"):
        queryset = queryset.filter(holds([tag.pk], ctx))
    return queryset


def _filter_segment(queryset, values: list[str]):
    from tagging.models import Segment

    for value in values:
        segment = Segment.objects.filter(pk=int(value)).first() if value.isdigit() else None
        if segment is None:
            raise ApplicationError(_("segment: unknown segment %(id)r") % {"id": value})
        queryset = queryset.filter(conditions.compile_condition(segment.condition))
    return queryset


TAG_FILTER = FilterExtension("tag", _filter_tags,
                             "Tag id or name (repeatable; the customer holds all of them).")
SEGMENT_FILTER = FilterExtension("segment", _filter_segment, "Saved segment id.")


def _change_detail(change) -> str:
    """Who made a tag change, in a sentence: a person, a rule, expiry, an import."""
    from core.people import staff_name
    from tagging.models import TagSource

    group = _("group %(group)s") % {"group": change.group_name}
    if change.rule is not None:
        return _("By the rule “%(rule)s”; %(group)s.") % {"rule": change.rule.name,
                                                          "group": group}
    if change.actor is not None:
        return _("By %(person)s; %(group)s.") % {"person": staff_name(change.actor),
                                                 "group": group}
    if change.action == change.Action.EXPIRED:
        return _("It expired; %(group)s.") % {"group": group}
    return _("%(source)s; %(group)s.") % {"source": TagSource(change.source).label,
                                           "group": group}


def _timeline_entries(customer_id: int, limit: int):
    from tagging.models import TagChange

    rows = (TagChange.objects.filter(customer_id=customer_id).select_related("actor", "rule")
            .order_by("-at", "-id")[:limit])
    return [{
        "at": c.at, "kind": "tag", "type": c.action,
        "title": _("Tag %(action)s: %(tag)s") % {"action": c.get_action_display(),
                                                 "tag": c.tag_name},
        "detail": _change_detail(c),
        "data": {"tag": c.tag_name, "tag_id": c.tag_id, "group": c.group_name,
                 "source": c.source, "rule": c.rule.name if c.rule else None,
                 "by": c.actor.username if c.actor else None},
    } for c in rows]


def _timeline_count(customer_id: int) -> int:
    from tagging.models import TagChange

    return TagChange.objects.filter(customer_id=customer_id).count()


TIMELINE = TimelineSource("tag", _timeline_entries, _timeline_count)


def _tags_export(customer) -> dict:
    from tagging.models import CustomerTag, TagChange

    return {
        "held": list(CustomerTag.objects.filter(customer=customer).order_by("added_at").values(
            "tag__name", "tag__group__name", "source", "added_at", "expires_at")),
        "history": list(TagChange.objects.filter(customer=customer).order_by("at").values(
            "tag_name", "group_name", "action", "source", "at")),
    }


# Tags are labels, not free text: an erasure keeps them (anonymous once the profile is gone).
PERSONAL_DATA = PersonalData("tags", _tags_export, lambda customer: {})
