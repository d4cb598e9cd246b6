"""The shapes of the metrics reports: the API's schema documents them, and metrics.reports
serializes the channel, SOP and campaign reports with theirs. Each is declared as a serializer
class would be, its fields in order (`_rates`: null when their denominator is 0)."""

from django.utils.translation import gettext_lazy
from rest_framework import serializers


def _shape(name: str, fields: dict, base: type = serializers.Serializer) -> type:
    return type(name, (base,), fields)


def _ints(*names: str) -> dict:
    return {name: serializers.IntegerField() for name in names}


def _texts(*names: str) -> dict:
    return {name: serializers.CharField() for name in names}


def _rates(*names: str) -> dict:
    return {name: serializers.FloatField(allow_null=True) for name in names}


def _money(**options) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=16, decimal_places=2, **options)


def _report(name: str, row: type, **more: type) -> type:
    """A report: its range, when it was computed, its rows (and `more` parts, by name)."""
    return _shape(name, {"start": serializers.DateField(), "end": serializers.DateField(),
                         "computed_at": serializers.DateTimeField(), "results": row(many=True),
                         **{part: shape() for part, shape in more.items()}})


ChannelRetentionSerializer = _shape("ChannelRetentionSerializer", {
    "eligible": serializers.IntegerField(help_text=gettext_lazy(
        "Acquired customers whose window has elapsed (joined_at + N days ≤ now).")),
    "retained": serializers.IntegerField(help_text=gettext_lazy(
        "Of those, the ones who did not delete us within N days of joining.")),
    "rate": serializers.FloatField(allow_null=True, help_text=gettext_lazy(
        "retained ÷ eligible"))})
ChannelAttributionTotalsSerializer = _shape("ChannelAttributionTotalsSerializer", {
    **_ints("acquired", "buyers"), **_rates("conversion_rate"), "revenue": _money(),
    "cost": _money(), **_rates("roi"), "retention_30d": ChannelRetentionSerializer(),
    "retention_90d": ChannelRetentionSerializer()})
ChannelAttributionRowSerializer = _shape("ChannelAttributionRowSerializer", {
    "channel": serializers.CharField(allow_null=True, help_text=gettext_lazy(
        "Channel code; null for customers without a channel.")),
    "name": serializers.CharField(), "channel_cost": _money(allow_null=True),
    "customers_to_date": serializers.IntegerField(allow_null=True),
    "cost_per_acquisition": _money(allow_null=True), "cost": _money(allow_null=True),
}, base=ChannelAttributionTotalsSerializer)
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
    **_ints("id", "order"), **_texts("channel", "category")}, base=SopMessagesSerializer)
HoldoutGroupSerializer = _shape("HoldoutGroupSerializer",
                                {**_ints("size", "count"), **_rates("rate")})
HoldoutComparisonSerializer = _shape("HoldoutComparisonSerializer", {
    "treatment": HoldoutGroupSerializer(), "control": HoldoutGroupSerializer(),
    **_rates("uplift_pp", "relative_uplift", "p_value"), **_ints("window_open")})
SopPerformanceSerializer = _shape("SopPerformanceSerializer", {
    **_ints("id"), **_texts("name", "model", "stage"), "active": serializers.BooleanField(),
    **_ints("holdout_percent", "enrolled", "treatment", "control"),
    "messages": SopMessagesSerializer(), "conversion": HoldoutComparisonSerializer(),
    "advancement": HoldoutComparisonSerializer(),
    "steps": SopStepPerformanceSerializer(many=True)})
SopPerformanceReportSerializer = _report("SopPerformanceReportSerializer",
                                         SopPerformanceSerializer)

CampaignPerformanceSerializer = _shape("CampaignPerformanceSerializer", {
    **_ints("id"), **_texts("name", "status", "channel", "category"),
    "started_at": serializers.DateTimeField(),
    "finished_at": serializers.DateTimeField(allow_null=True),
    **_ints("audience", "holdout_percent"),
    "control": serializers.IntegerField(help_text=gettext_lazy(
        "Customers of the audience kept out as the control group (sent nothing).")),
    "conversion": HoldoutComparisonSerializer(help_text=gettext_lazy(
        "Customers sent the campaign against the control group: a paid order within 7 days "
        "of the campaign's start."))}, base=DeliveryFunnelSerializer)
CampaignPerformanceReportSerializer = _report("CampaignPerformanceReportSerializer",
                                              CampaignPerformanceSerializer)

MetricsFunnelSerializer = _shape("MetricsFunnel", {
    **_texts("model"), "date": serializers.DateField(allow_null=True), **_texts("source"),
    "stages": serializers.ListField(child=_shape("MetricsFunnelStage", {
        **_texts("stage", "name"), **_ints("count", "reach"), **_rates("rate_to_next")})())})
_REVENUE_FIGURES = {
    "start": serializers.DateField(), "end": serializers.DateField(), "revenue": _money(),
    **_ints("traffic"), "conversion_rate": serializers.FloatField(),
    "average_order_value": _money(), "purchase_frequency": serializers.FloatField(),
    **_ints("buyers", "paid_orders")}
MetricsRevenueSerializer = _shape("MetricsRevenue", {
    **_REVENUE_FIGURES, "previous": _shape("MetricsRevenuePeriod", _REVENUE_FIGURES)(),
    "change": _money(), "method": serializers.ChoiceField(choices=["lmdi", "shapley"]),
    "decomposition": _shape("MetricsRevenueDecomposition", {name: _money() for name in (
        "traffic", "conversion_rate", "average_order_value", "purchase_frequency")})()})
