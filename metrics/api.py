"""REST API of the KPIs (DESIGN §4 `metrics/overview/`, `funnel/`, `stages/`, `flows/`,
`revenue/`, plus `cohorts/`): each view answers its report (metrics.reports: parameters, scope,
cache) and documents it. docs/METRICS.md defines every figure."""

from __future__ import annotations

from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from metrics import kpis, reports

# --- Schema --------------------------------------------------------------------------------

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
MODEL_PARAMETER = _p("model", OpenApiTypes.STR, gettext_lazy(
    "Stage model key, e.g. journey, value, aipl."))

CACHE_NOTE = gettext_lazy(
    " Answers are cached for 5 minutes per user scope and parameters. Bad input is a 400 whose "
    "message names the parameter.")


def _with_note(description):
    """The endpoint's description and the note every metrics endpoint shares, kept lazy so
    the schema is translated per request."""
    return format_lazy("{}{}", description, CACHE_NOTE)


FUNNEL_OUT = inline_serializer("MetricsFunnel", {
    "model": serializers.CharField(),
    "date": serializers.DateField(allow_null=True),
    "source": serializers.CharField(),
    "stages": serializers.ListField(child=inline_serializer("MetricsFunnelStage", {
        "stage": serializers.CharField(), "name": serializers.CharField(),
        "count": serializers.IntegerField(), "reach": serializers.IntegerField(),
        "rate_to_next": serializers.FloatField(allow_null=True)})),
})
_REVENUE_FIELDS = {
    "start": serializers.DateField(), "end": serializers.DateField(),
    "revenue": serializers.DecimalField(max_digits=16, decimal_places=2),
    "traffic": serializers.IntegerField(),
    "conversion_rate": serializers.FloatField(),
    "average_order_value": serializers.DecimalField(max_digits=16, decimal_places=2),
    "purchase_frequency": serializers.FloatField(),
    "buyers": serializers.IntegerField(), "paid_orders": serializers.IntegerField(),
}
REVENUE_OUT = inline_serializer("MetricsRevenue", {
    **_REVENUE_FIELDS,
    "previous": inline_serializer("MetricsRevenuePeriod", _REVENUE_FIELDS),
    "change": serializers.DecimalField(max_digits=16, decimal_places=2),
    "method": serializers.ChoiceField(choices=["lmdi", "shapley"]),
    "decomposition": inline_serializer("MetricsRevenueDecomposition", {
        name: serializers.DecimalField(max_digits=16, decimal_places=2)
        for name in ("traffic", "conversion_rate", "average_order_value",
                     "purchase_frequency")}),
})


# --- Views ---------------------------------------------------------------------------------

class OverviewView(APIView):
    @extend_schema(
        parameters=[*RANGE_PARAMETERS, *FILTER_PARAMETERS], responses=OpenApiTypes.OBJECT,
        description=_with_note(format_lazy("{} {} {}", gettext_lazy(
            "The seed-002 KPIs per relationship stage for the range, churn and win-back of the "
            "value lifecycle, totals and a daily series (stored snapshots, today and days not "
            "snapshotted computed live)."), kpis.formulas(), gettext_lazy(
            "Rates are null when the denominator is 0."))))
    def get(self, request):
        return Response(reports.overview(request.user, request.query_params))


class FunnelView(APIView):
    @extend_schema(
        parameters=[MODEL_PARAMETER, _p("date", OpenApiTypes.DATE, gettext_lazy(
            "A past day: counts at its end (from its snapshot, else rebuilt from the stage "
            "transitions). Default: now.")), *FILTER_PARAMETERS],
        responses=FUNNEL_OUT,
        description=_with_note(gettext_lazy(
            "Customers in each stage of the model, in stage order (current counts, or at the "
            "end of `date`). reach = customers at the stage or a later one; rate_to_next = "
            "reach of the next stage ÷ reach of this one (AIPL: A→I, I→P, P→L).")))
    def get(self, request):
        return Response(reports.funnel(request.user, request.query_params))


class StagesView(APIView):
    @extend_schema(
        parameters=[MODEL_PARAMETER, *RANGE_PARAMETERS, *FILTER_PARAMETERS],
        responses=OpenApiTypes.OBJECT,
        description=_with_note(gettext_lazy(
            "Per stage: customers at the end of the range (now when it ends today), reach and "
            "rate_to_next as in the funnel, transitions into (entered) and out of (exited) the "
            "stage in the range, and median_days_in_stage = the median, over exits from the "
            "stage in the range, of the days between entering the stage and leaving it. "
            "churn: customers entering the model's `churn` stage in the range ÷ customers "
            "placed in the model and not in it at the range start; win_back: win-back "
            "transitions in the range ÷ customers in a win-back stage (dormant, churn) at the "
            "range start; null for models without such stages.")))
    def get(self, request):
        return Response(reports.stages(request.user, request.query_params))


class FlowsView(APIView):
    @extend_schema(
        parameters=[MODEL_PARAMETER, *RANGE_PARAMETERS, *FILTER_PARAMETERS],
        responses=OpenApiTypes.OBJECT,
        description=_with_note(gettext_lazy(
            "flows: transitions from → to in the range (from null = first placement), with "
            "their win-backs. stages: of the customers entering each stage in the range "
            "(their first entry), how many moved next to each other stage (at any time since), "
            "share = those ÷ entered, and the median days from entering to that move; "
            "still_in_stage = entered and not moved since.")))
    def get(self, request):
        return Response(reports.flows(request.user, request.query_params))


class RevenueView(APIView):
    @extend_schema(
        parameters=[*RANGE_PARAMETERS,
                    _p("compare_start", OpenApiTypes.DATE, gettext_lazy(
                        "First day of the comparison range; default: the range of equal "
                        "length before start.")),
                    _p("compare_end", OpenApiTypes.DATE, gettext_lazy(
                        "Last day of the comparison range.")),
                    *FILTER_PARAMETERS],
        responses=REVENUE_OUT,
        description=_with_note(gettext_lazy(
            "Seed 004: revenue = traffic × conversion_rate × average_order_value × "
            "purchase_frequency, with revenue = paid orders placed in the range (refunded "
            "orders excluded), traffic = customers in the private domain during the range "
            "(plus any buyer of the range who was not), conversion_rate = buyers ÷ traffic, "
            "average_order_value = revenue ÷ paid orders, purchase_frequency = paid orders ÷ "
            "buyers. decomposition splits revenue − previous revenue into the four factors by "
            "LMDI (logarithmic mean Divisia: L(R, R₀)·ln(x/x₀)) when every factor is positive "
            "in both ranges, else by Shapley values (averaged over the 24 orders of changing "
            "the factors); the parts add up exactly to `change`, the rounding remainder in "
            "the largest part. Money in CNY as strings with 2 decimals.")))
    def get(self, request):
        return Response(reports.revenue(request.user, request.query_params))


class CohortsView(APIView):
    @extend_schema(
        parameters=[*RANGE_PARAMETERS, *FILTER_PARAMETERS], responses=OpenApiTypes.OBJECT,
        description=_with_note(gettext_lazy(
            "Cohort retention: customers grouped by the month they joined (the months from "
            "start to end; default the last 12 months), and for each month since joining up "
            "to the current one the active customers (an inbound event or a paid order in that "
            "month) and rate = active ÷ cohort size; the last cell of each cohort is the "
            "current month so far (partial: true). Complete months come from the table the "
            "nightly job refreshes, the current month is computed live.")))
    def get(self, request):
        return Response(reports.cohorts(request.user, request.query_params))
