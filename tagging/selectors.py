"""Reads of tagging data."""

from typing import Any

from django.db import transaction
from django.db.models import Count, IntegerField, OuterRef, Prefetch, QuerySet, Subquery
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext as _

from core import access, conditions
from core.db import heavy_statements, materialize_ids
from core.exceptions import ApplicationError
from crm.models import Customer
from crm.selectors import customer_list
from tagging import segment_index
from tagging.models import CustomerTag, Tag, TagGroup, TagRule, TagRuleRun

SAMPLE_SIZE = 20
# The condition fields that name a person: not for analysts, who read aggregates only.
IDENTIFYING_FIELDS = frozenset({"external_id", "name", "phone"})
PREVIEW_TABLE = "tagging_preview_match"   # temporary, per preview


def tag_list() -> QuerySet[Tag]:
    """Tags with how many customers hold each (an index-only count per tag)."""
    holders = (CustomerTag.objects.filter(tag=OuterRef("pk")).order_by().values("tag")
               .annotate(n=Count("id")).values("n"))
    return (Tag.objects.select_related("group")
            .annotate(customer_count=Coalesce(Subquery(holders, output_field=IntegerField()), 0))
            .order_by("group__order", "group__name", "order", "name"))


def tag_groups_with_tags() -> list[TagGroup]:
    """Every tag group, each with its tags (`group.tag_rows`) from `tag_list` — customer counts
    included — and how many rules add each tag (`rule_count`): two queries in all."""
    rules = (TagRule.objects.filter(tag=OuterRef("pk")).order_by().values("tag")
             .annotate(n=Count("id")).values("n"))
    tags = tag_list().annotate(
        rule_count=Coalesce(Subquery(rules, output_field=IntegerField()), 0))
    return list(TagGroup.objects.order_by("order", "name").prefetch_related(
        Prefetch("tags", queryset=tags, to_attr="tag_rows")))


def tag_rule_list(*, tag_id: int | None = None) -> list[TagRule]:
    """Rules (those adding `tag_id`, when given) with their tag and group, each with its latest
    run (`rule.last_run`, or None): two queries whatever the number of rules."""
    latest = (TagRuleRun.objects.filter(rule=OuterRef("pk")).order_by("-started_at", "-id")
              .values("id")[:1])
    rules = TagRule.objects.select_related("tag__group").annotate(last_run_id=Subquery(latest))
    if tag_id is not None:
        rules = rules.filter(tag_id=tag_id)
    rules = list(rules)
    runs = TagRuleRun.objects.in_bulk([r.last_run_id for r in rules if r.last_run_id])
    for rule in rules:
        rule.last_run = runs.get(rule.last_run_id)
    return rules


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


def segment_preview(*, user, condition: Any, exact: bool = False) -> dict[str, Any]:
    """How many customers match (within what the user may see) and a sample of the newest.
    Analysts read aggregates only: they get the count over all customers and no sample.

    Answered from the segment index when it can (`tagging.segment_index`: data as of its last
    build, a few minutes old; `as_of` says when), else — or with `exact` — in SQL now."""
    conditions.validate(condition)
    analyst = access.user_role(user) == access.ANALYST
    if analyst and (named := conditions.field_names(condition) & IDENTIFYING_FIELDS):
        # A count by name, phone or external id (or a prefix of one) would tell an analyst
        # who a customer is or what their number is: the personal data they may not read.
        raise ApplicationError(_("Analysts read aggregates only and cannot filter by %(fields)s: "
                                 "counts by them would reveal personal data.")
                               % {"fields": ", ".join(sorted(named))})
    if not exact:
        answer = segment_index.preview(condition, user=user, sample_size=SAMPLE_SIZE)
        if answer is not None:
            sample = [] if analyst else list(customer_list(user=user).filter(
                pk__in=answer.newest).order_by("-pk"))
            return {"count": answer.count, "sample": sample, "as_of": answer.as_of,
                    "source": "index"}
    now = timezone.now()
    q = conditions.compile_condition(condition, now=now)
    matching = Customer.objects.filter(q) if analyst else customer_list(user=user).filter(q)
    with transaction.atomic():
        # PostgreSQL: the condition is evaluated once, set-based, into a temporary table; the
        # count is its size and the sample its newest ids. (Asking for the newest 20 directly
        # lets the planner walk the customers newest first, testing the condition row by row.)
        heavy_statements()
        count = materialize_ids(PREVIEW_TABLE, matching.order_by(), indexed=False)
        if count is None:
            count = matching.count()
            sample = [] if analyst else list(matching.order_by("-pk")[:SAMPLE_SIZE])
        else:
            newest = RawSQL(f"SELECT id FROM {PREVIEW_TABLE} ORDER BY id DESC LIMIT %s",
                            (SAMPLE_SIZE,))
            sample = [] if analyst else list(customer_list(user=user).filter(pk__in=newest)
                                             .order_by("-pk"))
    return {"count": count, "sample": sample, "as_of": now, "source": "live"}


def tag_holders_of_both(*, source: Tag, target: Tag) -> int:
    """How many holders of `source` hold `target` already (a merge adds it to the others)."""
    return CustomerTag.objects.filter(
        tag=source, customer_id__in=CustomerTag.objects.filter(tag=target).values("customer_id")
    ).count()
