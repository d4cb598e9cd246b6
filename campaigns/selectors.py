"""Reads of outreach data."""

from django.db.models import Count, Q, QuerySet

from campaigns.models import Campaign, Message

PROGRESS_STATES = ("queued", "sending", "sent", "delivered", "read", "replied", "failed",
                   "skipped")


def campaign_list() -> QuerySet[Campaign]:
    """Campaigns with their messages counted by status in the same query (progress)."""
    return Campaign.objects.select_related("segment").annotate(**{
        f"n_{state}": Count("messages", filter=Q(messages__status=state))
        for state in PROGRESS_STATES})


def campaign_progress(*, campaign: Campaign) -> dict[str, int]:
    if hasattr(campaign, "n_queued"):
        counts = {state: getattr(campaign, f"n_{state}") for state in PROGRESS_STATES}
    else:
        found = dict(Message.objects.filter(campaign=campaign).values_list("status")
                     .annotate(n=Count("id")))
        counts = {state: found.get(state, 0) for state in PROGRESS_STATES}
    counts["total"] = sum(counts.values())
    return counts
