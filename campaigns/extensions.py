"""Extension points of the campaign pages (an upper app, metrics, adds what it measures about a
campaign without campaigns importing it), and what outreach holds about a customer for
personal-data requests."""

from collections.abc import Callable

from core.registry import Registry
from crm.extensions import PersonalData

# (request, campaign) -> HTML of a panel on the campaign's page.
CampaignPanel = Callable[..., str]
campaign_panels: Registry[CampaignPanel] = Registry("campaign_panels")


def _outreach_export(customer) -> dict:
    from campaigns.models import Message, OperatorTask

    return {
        "messages": list(Message.objects.filter(customer=customer).order_by("due_at").values(
            "channel", "category", "content", "status", "skip_reason", "due_at", "sent_at",
            "delivered_at", "read_at", "replied_at")),
        "tasks": list(OperatorTask.objects.filter(customer=customer).order_by("due_at").values(
            "kind", "title", "body", "status", "due_at", "closed_note")),
    }


def _outreach_erase(customer) -> dict[str, int]:
    """Message texts and to-do texts name the customer: blanked, the rows (and so the figures
    of sends and replies) kept."""
    from django.utils.translation import gettext as _

    from campaigns.models import Message, OperatorTask

    return {
        "messages": Message.objects.filter(customer=customer).exclude(content="").update(
            content=""),
        "tasks": OperatorTask.objects.filter(customer=customer).update(
            title=_("(erased on request)"), body="", closed_note=""),
    }


PERSONAL_DATA = PersonalData("outreach", _outreach_export, _outreach_erase)
