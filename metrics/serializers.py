"""The shapes of the channel, SOP and campaign reports: metrics.reports serializes its answers
with them, the API's schema documents them."""

from django.utils.translation import gettext_lazy
from rest_framework import serializers


def _ints(*names: str) -> dict:
    return {name: serializers.IntegerField() for name in names}


def _rates(*names: str) -> dict:
    """Rates: null when their denominator is 0."""
    return {name: serializers.FloatField(allow_null=True) for name in names}


def _money(**options) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=16, decimal_places=2, **options)


def _shape(name: str, fields: dict, base=serializers.Serializer) -> type:
    """A serializer class declaring `fields` (in their order), as a class statement would."""
    return type(name, (base,), fields)


def _report(name: str, row: type, **more: type) -> type:
    """A report: its range, when it was computed, its rows (and `more` parts, by name)."""
    return _shape(name, {"start": serializers.DateField(), "end": serializers.DateField(),
                         "computed_at": serializers.DateTimeField(), "results": row(many=True),
                         **{part: shape() for part, shape in more.items()}})


class ChannelRetentionSerializer(serializers.Serializer):
    eligible = serializers.IntegerField(help_text=gettext_lazy(
        "Acquired customers whose window has elapsed (joined_at + N days ≤ now)."))
    retained = serializers.IntegerField(help_text=gettext_lazy(
        "Of those, the ones who did not delete us within N days of joining."))
    rate = serializers.FloatField(allow_null=True, help_text=gettext_lazy("retained ÷ eligible"))


class ChannelAttributionTotalsSerializer(serializers.Serializer):
    acquired = serializers.IntegerField()
    buyers = serializers.IntegerField()
    conversion_rate = serializers.FloatField(allow_null=True)
    revenue = _money()
    cost = _money()
    roi = serializers.FloatField(allow_null=True)
    retention_30d = ChannelRetentionSerializer()
    retention_90d = ChannelRetentionSerializer()


class ChannelAttributionRowSerializer(ChannelAttributionTotalsSerializer):
    channel = serializers.CharField(allow_null=True, help_text=gettext_lazy(
        "Channel code; null for customers without a channel."))
    name = serializers.CharField()
    channel_cost = _money(allow_null=True)
    customers_to_date = serializers.IntegerField(allow_null=True)
    cost_per_acquisition = _money(allow_null=True)
    cost = _money(allow_null=True)


ChannelAttributionReportSerializer = _report(
    "ChannelAttributionReportSerializer", ChannelAttributionRowSerializer,
    totals=ChannelAttributionTotalsSerializer)

DeliveryFunnelSerializer = _shape("DeliveryFunnelSerializer", {
    **_ints("sent", "delivered", "read", "replied", "failed", "pending", "skipped"),
    "skipped_by_reason": serializers.DictField(child=serializers.IntegerField()),
    **_ints("converted", "blocked"),
    **_rates("delivery_rate", "read_rate", "reply_rate", "conversion_rate", "block_rate")})
SopMessagesSerializer = _shape("SopMessagesSerializer", _ints("total"),
                               base=DeliveryFunnelSerializer)
SopStepPerformanceSerializer = _shape("SopStepPerformanceSerializer", {
    **_ints("id", "order"), "channel": serializers.CharField(),
    "category": serializers.CharField()}, base=SopMessagesSerializer)
HoldoutGroupSerializer = _shape("HoldoutGroupSerializer",
                                {**_ints("size", "count"), **_rates("rate")})


class HoldoutComparisonSerializer(serializers.Serializer):
    treatment = HoldoutGroupSerializer()
    control = HoldoutGroupSerializer()
    uplift_pp = serializers.FloatField(allow_null=True)
    relative_uplift = serializers.FloatField(allow_null=True)
    p_value = serializers.FloatField(allow_null=True)
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


SopPerformanceReportSerializer = _report("SopPerformanceReportSerializer",
                                         SopPerformanceSerializer)


class CampaignPerformanceSerializer(DeliveryFunnelSerializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.CharField()
    channel = serializers.CharField()
    category = serializers.CharField()
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    audience = serializers.IntegerField()
    holdout_percent = serializers.IntegerField()
    control = serializers.IntegerField(help_text=gettext_lazy(
        "Customers of the audience kept out as the control group (sent nothing)."))
    conversion = HoldoutComparisonSerializer(help_text=gettext_lazy(
        "Customers sent the campaign against the control group: a paid order within 7 days "
        "of the campaign's start."))


CampaignPerformanceReportSerializer = _report("CampaignPerformanceReportSerializer",
                                              CampaignPerformanceSerializer)
