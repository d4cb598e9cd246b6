"""REST API of channel attribution, SOP performance and campaign performance (DESIGN §4
`metrics/channels/`, `metrics/sops/`, `metrics/campaigns/`): parse the period and filters,
answer from the cache or the selectors. The period, the filters and the cache are those of the
other metrics (metrics.api)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.utils import timezone
from django.utils.text import format_lazy
from django.utils.translation import get_language, gettext_lazy
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from campaigns.models import Campaign, Sop
from metrics import attribution, sops
from metrics.api import FILTER_PARAMETERS, RANGE_PARAMETERS, _bad, _period, _scope, cached

# --- Parameters ----------------------------------------------------------------------------

def _one(query, name: str, model) -> Any:
    """The `sop` / `campaign` filter: an id of an existing row, or None when not given."""
    raw = query.get(name)
    if raw in (None, ""):
        return None
    found = model.objects.filter(pk=int(raw)).first() if raw.isdigit() else None
    if found is None:
        raise _bad(name, _("no %(what)s with id %(id)r") % {"what": model._meta.verbose_name,
                                                            "id": raw})
    return found


def _report(kind: str, request, serializer: type[serializers.Serializer],
            compute: Callable[..., dict[str, Any]], **filters) -> Response:
    """Parse the period and scope, answer the report shaped by its serializer, from the cache
    (5 minutes) or computed now."""
    period, scope = _period(request.query_params), _scope(request)
    key = {**period.as_dict(), **{name: row.pk for name, row in filters.items() if row},
           # "No channel" is translated: one answer per language.
           "language": get_language()}

    def run() -> dict[str, Any]:
        return dict(serializer({**period.as_dict(), "computed_at": timezone.now(),
                                **compute(scope=scope, period=period, **filters)}).data)

    return Response(cached(f"performance:{kind}", scope, key, run))


# --- Response shapes (for the schema) -----------------------------------------------------

RATE = {"allow_null": True}


class ChannelRetentionSerializer(serializers.Serializer):
    eligible = serializers.IntegerField(help_text=gettext_lazy(
        "Acquired customers whose window has elapsed (joined_at + N days ≤ now)."))
    retained = serializers.IntegerField(help_text=gettext_lazy(
        "Of those, the ones who did not delete us within N days of joining."))
    rate = serializers.FloatField(**RATE, help_text=gettext_lazy("retained ÷ eligible"))


class ChannelAttributionTotalsSerializer(serializers.Serializer):
    acquired = serializers.IntegerField()
    buyers = serializers.IntegerField()
    conversion_rate = serializers.FloatField(**RATE)
    revenue = serializers.DecimalField(max_digits=16, decimal_places=2)
    cost = serializers.DecimalField(max_digits=16, decimal_places=2)
    roi = serializers.FloatField(**RATE)
    retention_30d = ChannelRetentionSerializer()
    retention_90d = ChannelRetentionSerializer()


class ChannelAttributionRowSerializer(ChannelAttributionTotalsSerializer):
    channel = serializers.CharField(allow_null=True, help_text=gettext_lazy(
        "Channel code; null for customers without a channel."))
    name = serializers.CharField()
    channel_cost = serializers.DecimalField(max_digits=16, decimal_places=2, allow_null=True)
    customers_to_date = serializers.IntegerField(allow_null=True)
    cost_per_acquisition = serializers.DecimalField(max_digits=16, decimal_places=2,
                                                    allow_null=True)
    cost = serializers.DecimalField(max_digits=16, decimal_places=2, allow_null=True)


class ChannelAttributionReportSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    computed_at = serializers.DateTimeField()
    results = ChannelAttributionRowSerializer(many=True)
    totals = ChannelAttributionTotalsSerializer()


class DeliveryFunnelSerializer(serializers.Serializer):
    sent = serializers.IntegerField()
    delivered = serializers.IntegerField()
    read = serializers.IntegerField()
    replied = serializers.IntegerField()
    failed = serializers.IntegerField()
    pending = serializers.IntegerField()
    skipped = serializers.IntegerField()
    skipped_by_reason = serializers.DictField(child=serializers.IntegerField())
    converted = serializers.IntegerField()
    blocked = serializers.IntegerField()
    delivery_rate = serializers.FloatField(**RATE)
    read_rate = serializers.FloatField(**RATE)
    reply_rate = serializers.FloatField(**RATE)
    conversion_rate = serializers.FloatField(**RATE)
    block_rate = serializers.FloatField(**RATE)


class SopMessagesSerializer(DeliveryFunnelSerializer):
    total = serializers.IntegerField()


class SopStepPerformanceSerializer(SopMessagesSerializer):
    id = serializers.IntegerField()
    order = serializers.IntegerField()
    channel = serializers.CharField()
    category = serializers.CharField()


class HoldoutGroupSerializer(serializers.Serializer):
    size = serializers.IntegerField()
    count = serializers.IntegerField()
    rate = serializers.FloatField(**RATE)


class HoldoutComparisonSerializer(serializers.Serializer):
    treatment = HoldoutGroupSerializer()
    control = HoldoutGroupSerializer()
    uplift_pp = serializers.FloatField(**RATE)
    relative_uplift = serializers.FloatField(**RATE)
    p_value = serializers.FloatField(**RATE)
    window_open = serializers.IntegerField()


class SopPerformanceSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    model = serializers.CharField()
    stage = serializers.CharField()
    active = serializers.BooleanField()
    holdout_percent = serializers.IntegerField()
    enrolled = serializers.IntegerField()
    treatment = serializers.IntegerField()
    control = serializers.IntegerField()
    messages = SopMessagesSerializer()
    conversion = HoldoutComparisonSerializer()
    advancement = HoldoutComparisonSerializer()
    steps = SopStepPerformanceSerializer(many=True)


class SopPerformanceReportSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    computed_at = serializers.DateTimeField()
    results = SopPerformanceSerializer(many=True)


class CampaignPerformanceSerializer(DeliveryFunnelSerializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.CharField()
    channel = serializers.CharField()
    category = serializers.CharField()
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    audience = serializers.IntegerField()


class CampaignPerformanceReportSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    computed_at = serializers.DateTimeField()
    results = CampaignPerformanceSerializer(many=True)


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
    "7 days]), blocked (deleted us in [sent_at, sent_at + 48 h)); every *_rate = count ÷ sent.")


def _description(text):
    return format_lazy("{}\n\n{}", text, COMMON_NOTE)


class ChannelsView(APIView):
    """Channel attribution: acquisition, conversion, revenue, ROI and retention per channel."""

    @extend_schema(parameters=PERIOD_PARAMETERS, responses=ChannelAttributionReportSerializer,
                   description=_description(CHANNELS_DESCRIPTION))
    def get(self, request):
        return _report("channels", request, ChannelAttributionReportSerializer,
                       attribution.channel_attribution)


class SopsView(APIView):
    """SOP performance: funnel per SOP and step, conversion and advancement against control."""

    @extend_schema(parameters=[*PERIOD_PARAMETERS, OpenApiParameter(
        "sop", OpenApiTypes.INT, description=gettext_lazy("Only this SOP (id)."))],
        responses=SopPerformanceReportSerializer, description=_description(SOPS_DESCRIPTION))
    def get(self, request):
        return _report("sops", request, SopPerformanceReportSerializer, sops.sop_performance,
                       sop=_one(request.query_params, "sop", Sop))


class CampaignsView(APIView):
    """Campaign performance: the delivery funnel and its outcomes per campaign."""

    @extend_schema(parameters=[*PERIOD_PARAMETERS, OpenApiParameter(
        "campaign", OpenApiTypes.INT, description=gettext_lazy("Only this campaign (id)."))],
        responses=CampaignPerformanceReportSerializer,
        description=_description(CAMPAIGNS_DESCRIPTION))
    def get(self, request):
        return _report("campaigns", request, CampaignPerformanceReportSerializer,
                       sops.campaign_performance,
                       campaign=_one(request.query_params, "campaign", Campaign))
