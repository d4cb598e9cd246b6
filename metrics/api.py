"""REST API of the metrics (DESIGN §4 `metrics/…`): each view answers its report of
metrics.reports (parameters, scope, cache) and documents it; docs/METRICS.md defines every
figure."""

from __future__ import annotations

from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from metrics import kpis, reports
from metrics import serializers as shapes


def _p(name: str, kind, description) -> OpenApiParameter:
    return OpenApiParameter(name, kind, description=description)


RANGE_PARAMETERS = [
    _p("start", OpenApiTypes.DATE, gettext_lazy(
        "First day (YYYY-MM-DD, system time zone, inclusive); default 29 days before end.")),
    _p("end", OpenApiTypes.DATE, gettext_lazy(
        "Last day (inclusive); default today. At most 366 days from start.")),
]
FILTER_PARAMETERS = [
    _p("channel", OpenApiTypes.STR, gettext_lazy("Only customers of this channel (code).")),
    _p("owner", OpenApiTypes.STR, gettext_lazy("Only customers of this owner (username).")),
]
PERIOD_PARAMETERS = [*RANGE_PARAMETERS, *FILTER_PARAMETERS]
MODEL_PARAMETER = _p("model", OpenApiTypes.STR, gettext_lazy(
    "Stage model key, e.g. journey, value, aipl."))

# The notes the KPI and the performance endpoints' descriptions end with (lazy: translated per
# request).
CACHE_NOTE = gettext_lazy(
    " Answers are cached for 5 minutes per user scope and parameters. Bad input is a 400 whose "
    "message names the parameter.")
COMMON_NOTE = gettext_lazy(
    "Operators see their own customers, admins and analysts all. Answers are cached for five "
    "minutes per scope and parameters (`computed_at` says when). A bad parameter is a 400 whose "
    "message names it. Rates are null when their denominator is 0.")


def _view(name: str, report, *, parameters, description, responses=OpenApiTypes.OBJECT,
          performance: bool = False):
    """An APIView named `name` whose GET answers `report` for the user and the query."""
    def get(self, request):
        return Response(report(request.user, request.query_params))

    described = (format_lazy("{}\n\n{}", description, COMMON_NOTE) if performance
                 else format_lazy("{}{}", description, CACHE_NOTE))
    return type(name, (APIView,), {"get": extend_schema(
        parameters=parameters, responses=responses, description=described)(get)})


# --- KPIs ----------------------------------------------------------------------------------

OverviewView = _view(
    "OverviewView", reports.overview, parameters=PERIOD_PARAMETERS,
    description=format_lazy("{} {} {}", gettext_lazy(
        "The seed-002 KPIs per relationship stage for the range, churn and win-back of the "
        "value lifecycle, totals and a daily series (stored snapshots, today and days not "
        "snapshotted computed live)."), kpis.formulas(), gettext_lazy(
        "Rates are null when the denominator is 0.")))

FunnelView = _view(
    "FunnelView", reports.funnel, responses=shapes.MetricsFunnelSerializer,
    parameters=[MODEL_PARAMETER, _p("date", OpenApiTypes.DATE, gettext_lazy(
        "A past day: counts at its end (from its snapshot, else rebuilt from the stage "
        "transitions). Default: now.")), *FILTER_PARAMETERS],
    description=gettext_lazy(
        "Customers in each stage of the model, in stage order (current counts, or at the "
        "end of `date`). reach = customers at the stage or a later one; rate_to_next = "
        "reach of the next stage ÷ reach of this one (AIPL: A→I, I→P, P→L)."))

StagesView = _view(
    "StagesView", reports.stages, parameters=[MODEL_PARAMETER, *PERIOD_PARAMETERS],
    description=gettext_lazy(
        "Per stage: customers at the end of the range (now when it ends today), reach and "
        "rate_to_next as in the funnel, transitions into (entered) and out of (exited) the "
        "stage in the range, and median_days_in_stage = the median, over exits from the "
        "stage in the range, of the days between entering the stage and leaving it. "
        "churn: customers entering the model's `churn` stage in the range ÷ customers "
        "placed in the model and not in it at the range start; win_back: win-back "
        "transitions in the range ÷ customers in a win-back stage (dormant, churn) at the "
        "range start; null for models without such stages."))

FlowsView = _view(
    "FlowsView", reports.flows, parameters=[MODEL_PARAMETER, *PERIOD_PARAMETERS],
    description=gettext_lazy(
        "flows: transitions from → to in the range (from null = first placement), with "
        "their win-backs. stages: of the customers entering each stage in the range "
        "(their first entry), how many moved next to each other stage (at any time since), "
        "share = those ÷ entered, and the median days from entering to that move; "
        "still_in_stage = entered and not moved since."))

RevenueView = _view(
    "RevenueView", reports.revenue, responses=shapes.MetricsRevenueSerializer,
    parameters=[*RANGE_PARAMETERS,
                _p("compare_start", OpenApiTypes.DATE, gettext_lazy(
                    "First day of the comparison range; default: the range of equal "
                    "length before start.")),
                _p("compare_end", OpenApiTypes.DATE, gettext_lazy(
                    "Last day of the comparison range.")),
                *FILTER_PARAMETERS],
    description=gettext_lazy(
        "Seed 004: revenue = traffic × conversion_rate × average_order_value × "
        "purchase_frequency, with revenue = paid orders placed in the range (refunded "
        "orders excluded), traffic = customers in the private domain during the range "
        "(plus any buyer of the range who was not), conversion_rate = buyers ÷ traffic, "
        "average_order_value = revenue ÷ paid orders, purchase_frequency = paid orders ÷ "
        "buyers. decomposition splits revenue − previous revenue into the four factors by "
        "LMDI (logarithmic mean Divisia: L(R, R₀)·ln(x/x₀)) when every factor is positive "
        "in both ranges, else by Shapley values (averaged over the 24 orders of changing "
        "the factors); the parts add up exactly to `change`, the rounding remainder in "
        "the largest part. Money in CNY as strings with 2 decimals."))

CohortsView = _view(
    "CohortsView", reports.cohorts, parameters=PERIOD_PARAMETERS,
    description=gettext_lazy(
        "Cohort retention: customers grouped by the month they joined (the months from "
        "start to end; default the last 12 months), and for each month since joining up "
        "to the current one the active customers (an inbound event or a paid order in that "
        "month) and rate = active ÷ cohort size; the last cell of each cohort is the "
        "current month so far (partial: true). Complete months come from the table the "
        "nightly job refreshes, the current month is computed live."))

# --- Performance (docs/METRICS.md, "Channel attribution", "SOP and campaign performance") ---

ChannelsView = _view(
    "ChannelsView", reports.channels, parameters=PERIOD_PARAMETERS, performance=True,
    responses=shapes.ChannelAttributionReportSerializer, description=gettext_lazy(
        "Per acquisition channel, plus a row for customers without one, for the customers "
        "acquired in the period (joined_at in [start 00:00, end + 1 day 00:00)).\n\n"
        "- acquired = customers acquired in the period\n"
        "- buyers = acquired customers with ≥ 1 paid (not refunded) order placed at or after "
        "joined_at, up to now; conversion_rate = buyers ÷ acquired\n"
        "- revenue = Σ amount of those paid orders (refunded orders never count)\n"
        "- channel_cost = the channel's recorded total spend; customers_to_date = every "
        "customer the channel ever brought (any owner, any date); cost_per_acquisition = "
        "channel_cost ÷ customers_to_date; cost = cost_per_acquisition × acquired (the "
        "period's share of the spend)\n"
        "- roi = (revenue − cost) ÷ cost; null when cost is 0 and for the no-channel row\n"
        "- retention_Nd (N = 30, 90): eligible = acquired customers with joined_at + N days ≤ "
        "now; retained = those without a friend_deleted event (or a deleted_us status change) "
        "in [joined_at, joined_at + N days]; rate = retained ÷ eligible\n"
        "- totals: the rows summed; cost and roi over the rows with a cost."))

SopsView = _view(
    "SopsView", reports.sop_performance, performance=True, responses=shapes.SopPerformanceReportSerializer,
    parameters=[*PERIOD_PARAMETERS, _p("sop", OpenApiTypes.INT, gettext_lazy(
        "Only this SOP (id)."))],
    description=gettext_lazy(
        "Per SOP and per step, for the enrolments that entered the SOP in the period and their "
        "messages.\n\n"
        "- enrolled = enrolments with entered_at in the period; control = those held out "
        "(holdout, sent nothing); treatment = enrolled − control\n"
        "- conversion: an enrolment converted when its customer placed a paid order in "
        "[entered_at, entered_at + 7 days]; rate = converted ÷ group size, for treatment and "
        "control alike\n"
        "- advancement: an enrolment advanced when its customer had a non-backward transition "
        "in the SOP's model to a stage of higher position than the SOP's stage in (entered_at, "
        "entered_at + 30 days]\n"
        "- uplift_pp = (treatment rate − control rate) × 100; relative_uplift = (treatment "
        "rate − control rate) ÷ control rate; p_value = two-sided pooled two-proportion "
        "z-test; window_open = enrolments whose 7- (30-) day window has not ended yet\n"
        "- messages (per SOP and per step): sent = status sent, delivered, read or replied; "
        "delivered = delivered, read or replied; read = read or replied; replied; failed; "
        "pending = queued or sending; skipped and skipped_by_reason; converted = sent "
        "messages whose customer placed a paid order in [sent_at, sent_at + 7 days]; blocked "
        "= sent messages whose customer deleted us in [sent_at, sent_at + 48 h) (the outreach "
        "policy's block window); every *_rate = count ÷ sent."))

CampaignsView = _view(
    "CampaignsView", reports.campaign_performance, performance=True,
    responses=shapes.CampaignPerformanceReportSerializer,
    parameters=[*PERIOD_PARAMETERS, _p("campaign", OpenApiTypes.INT, gettext_lazy(
        "Only this campaign (id)."))],
    description=gettext_lazy(
        "Per campaign started in the period (started_at in it): audience = its messages to the "
        "customers in scope, and the same delivery funnel as SOP messages — sent, delivered, "
        "read, replied, failed, pending, skipped by reason, converted (paid order in [sent_at, "
        "sent_at + 7 days]), blocked (deleted us in [sent_at, sent_at + 48 h)); every *_rate = "
        "count ÷ sent. With a holdout: control = the audience kept out, and conversion "
        "compares the customers sent it with them (a paid order within 7 days of the "
        "campaign's start), with uplift_pp, relative_uplift and p_value as for SOPs."))
