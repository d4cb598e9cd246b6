"""The shapes of the channel, SOP and campaign reports (metrics.reports serializes its answers
with them; the API's schema documents them)."""

from django.utils.translation import gettext_lazy
from rest_framework import serializers

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
    holdout_percent = serializers.IntegerField()
    control = serializers.IntegerField(help_text=gettext_lazy(
        "Customers of the audience kept out as the control group (sent nothing)."))
    conversion = HoldoutComparisonSerializer(help_text=gettext_lazy(
        "Customers sent the campaign against the control group: a paid order within 7 days "
        "of the campaign's start."))


class CampaignPerformanceReportSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    computed_at = serializers.DateTimeField()
    results = CampaignPerformanceSerializer(many=True)
