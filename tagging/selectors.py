"""Reads of tagging data."""

from typing import Any

from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce

from core import access, conditions
from crm.models import Customer
from crm.selectors import customer_list
from tagging.models import CustomerTag, Tag

SAMPLE_SIZE = 20


def tag_list() -> QuerySet[Tag]:
    """Tags with how many customers hold each (an index-only count per tag)."""
    holders = (CustomerTag.objects.filter(tag=OuterRef("pk")).order_by().values("tag")
               .annotate(n=Count("id")).values("n"))
    return (Tag.objects.select_related("group")
            .annotate(customer_count=Coalesce(Subquery(holders, output_field=IntegerField()), 0))
            .order_by("group__order", "group__name", "order", "name"))


def customer_tags(*, customer_id: int) -> list[dict[str, Any]]:
    rows = (CustomerTag.objects.filter(customer_id=customer_id)
            .select_related("tag__group", "added_by", "rule")
            .order_by("tag__group__order", "tag__order", "tag__name"))
    return [{
        "id": ct.tag_id, "name": ct.tag.name, "group": ct.tag.group.name,
        "group_id": ct.tag.group_id, "color": ct.tag.color, "source": ct.source,
        "rule": ct.rule.name if ct.rule else None,
        "added_by": ct.added_by.username if ct.added_by else None,
        "added_at": ct.added_at, "expires_at": ct.expires_at,
    } for ct in rows]


def segment_preview(*, user, condition: Any) -> dict[str, Any]:
    """How many customers match (within what the user may see) and a sample of the newest.
    Analysts read aggregates only: they get the count over all customers and no sample."""
    q = conditions.compile_condition(condition)
    if access.user_role(user) == access.ANALYST:
        return {"count": Customer.objects.filter(q).count(), "sample": []}
    matching = customer_list(user=user).filter(q)
    return {"count": matching.count(), "sample": list(matching.order_by("-pk")[:SAMPLE_SIZE])}
