"""The metrics API (DESIGN §4: `metrics/overview/`, `funnel/`, `stages/`, `flows/`, `channels/`,
`sops/`, `revenue/`), plus cohorts and campaigns."""

from django.urls import path

from metrics import api

urlpatterns = [
    path("overview/", api.OverviewView.as_view(), name="metrics-overview"),
    path("funnel/", api.FunnelView.as_view(), name="metrics-funnel"),
    path("stages/", api.StagesView.as_view(), name="metrics-stages"),
    path("flows/", api.FlowsView.as_view(), name="metrics-flows"),
    path("revenue/", api.RevenueView.as_view(), name="metrics-revenue"),
    path("cohorts/", api.CohortsView.as_view(), name="metrics-cohorts"),
    path("channels/", api.ChannelsView.as_view(), name="metrics-channels"),
    path("sops/", api.SopsView.as_view(), name="metrics-sops"),
    path("campaigns/", api.CampaignsView.as_view(), name="metrics-campaigns"),
]
