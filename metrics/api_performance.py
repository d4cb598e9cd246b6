"""REST API of channel attribution, SOP performance and campaign performance (DESIGN §4
`metrics/channels/`, `metrics/sops/`, `metrics/campaigns/`): each view answers its report
(metrics.reports) and documents it (docs/METRICS.md, "Channel attribution", "SOP and campaign
performance")."""

from __future__ import annotations

from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from metrics import reports
from metrics.api import FILTER_PARAMETERS, RANGE_PARAMETERS
from metrics.serializers import (
    CampaignPerformanceReportSerializer,
    ChannelAttributionReportSerializer,
    SopPerformanceReportSerializer,
)

# --- Views ---------------------------------------------------------------------------------

PERIOD_PARAMETERS = [*RANGE_PARAMETERS, *FILTER_PARAMETERS]
COMMON_NOTE = gettext_lazy(
    "Operators see their own customers, admins and analysts all. Answers are cached for five "
    "minutes per scope and parameters (`computed_at` says when). A bad parameter is a 400 whose "
    "message names it. Rates are null when their denominator is 0.")

CHANNELS_DESCRIPTION = gettext_lazy(
    "Per acquisition channel, plus a row for customers without one, for the customers acquired "
    "in the period (joined_at in [start 00:00, end + 1 day 00:00)).\n\n"
    "- acquired = customers acquired in the period\n"
    "- buyers = acquired customers with ≥ 1 paid (not refunded) order placed at or after "
    "joined_at, up to now; conversion_rate = buyers ÷ acquired\n"
    "- revenue = Σ amount of those paid orders (refunded orders never count)\n"
    "- channel_cost = the channel's recorded total spend; customers_to_date = every customer "
    "the channel ever brought (any owner, any date); cost_per_acquisition = channel_cost ÷ "
    "customers_to_date; cost = cost_per_acquisition × acquired (the period's share of the "
    "spend)\n"
    "- roi = (revenue − cost) ÷ cost; null when cost is 0 and for the no-channel row\n"
    "- retention_Nd (N = 30, 90): eligible = acquired customers with joined_at + N days ≤ now; "
    "retained = those without a friend_deleted event (or a deleted_us status change) in "
    "[joined_at, joined_at + N days]; rate = retained ÷ eligible\n"
    "- totals: the rows summed; cost and roi over the rows with a cost.")

SOPS_DESCRIPTION = gettext_lazy(
    "Per SOP and per step, for the enrolments that entered the SOP in the period and their "
    "messages.\n\n"
    "- enrolled = enrolments with entered_at in the period; control = those held out "
    "(holdout, sent nothing); treatment = enrolled − control\n"
    "- conversion: an enrolment converted when its customer placed a paid order in "
    "[entered_at, entered_at + 7 days]; rate = converted ÷ group size, for treatment and "
    "control alike\n"
    "- advancement: an enrolment advanced when its customer had a non-backward transition in "
    "the SOP's model to a stage of higher position than the SOP's stage in (entered_at, "
    "entered_at + 30 days]\n"
    "- uplift_pp = (treatment rate − control rate) × 100; relative_uplift = (treatment rate − "
    "control rate) ÷ control rate; p_value = two-sided pooled two-proportion z-test; "
    "window_open = enrolments whose 7- (30-) day window has not ended yet\n"
    "- messages (per SOP and per step): sent = status sent, delivered, read or replied; "
    "delivered = delivered, read or replied; read = read or replied; replied; failed; "
    "pending = queued or sending; skipped and skipped_by_reason; converted = sent messages "
    "whose customer placed a paid order in [sent_at, sent_at + 7 days]; blocked = sent "
    "messages whose customer deleted us in [sent_at, sent_at + 48 h) (the outreach policy's "
    "block window); every *_rate = count ÷ sent.")

CAMPAIGNS_DESCRIPTION = gettext_lazy(
    "Per campaign started in the period (started_at in it): audience = its messages to the "
    "customers in scope, and the same delivery funnel as SOP messages — sent, delivered, read, "
    "replied, failed, pending, skipped by reason, converted (paid order in [sent_at, sent_at + "
    "7 days]), blocked (deleted us in [sent_at, sent_at + 48 h)); every *_rate = count ÷ sent. "
    "With a holdout: control = the audience kept out, and conversion compares the customers "
    "sent it with them (a paid order within 7 days of the campaign's start), with uplift_pp, "
    "relative_uplift and p_value as for SOPs.")


def _description(text):
    return format_lazy("{}\n\n{}", text, COMMON_NOTE)


class ChannelsView(APIView):
    """Channel attribution: acquisition, conversion, revenue, ROI and retention per channel."""

    @extend_schema(parameters=PERIOD_PARAMETERS, responses=ChannelAttributionReportSerializer,
                   description=_description(CHANNELS_DESCRIPTION))
    def get(self, request):
        return Response(reports.channels(request.user, request.query_params))


class SopsView(APIView):
    """SOP performance: funnel per SOP and step, conversion and advancement against control."""

    @extend_schema(parameters=[*PERIOD_PARAMETERS, OpenApiParameter(
        "sop", OpenApiTypes.INT, description=gettext_lazy("Only this SOP (id)."))],
        responses=SopPerformanceReportSerializer, description=_description(SOPS_DESCRIPTION))
    def get(self, request):
        return Response(reports.sop_performance(request.user, request.query_params))


class CampaignsView(APIView):
    """Campaign performance: the delivery funnel and its outcomes per campaign."""

    @extend_schema(parameters=[*PERIOD_PARAMETERS, OpenApiParameter(
        "campaign", OpenApiTypes.INT, description=gettext_lazy("Only this campaign (id)."))],
        responses=CampaignPerformanceReportSerializer,
        description=_description(CAMPAIGNS_DESCRIPTION))
    def get(self, request):
        return Response(reports.campaign_performance(request.user, request.query_params))
