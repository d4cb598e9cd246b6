"""Extension points of the campaign pages: an upper app (metrics) adds what it measures about a
campaign — its results and uplift — without campaigns importing it."""

from collections.abc import Callable

from core.registry import Registry

# (request, campaign) -> HTML of a panel on the campaign's page.
CampaignPanel = Callable[..., str]
campaign_panels: Registry[CampaignPanel] = Registry("campaign_panels")
