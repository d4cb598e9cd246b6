"""REST API of channel attribution, SOP performance and campaign performance (DESIGN §4
`metrics/channels/`, `metrics/sops/`, `metrics/campaigns/`): parse the period and filters,
answer from the cache or the selectors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.cache import cache
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
from core import access
from core.exceptions import ApplicationError
from crm.models import Channel
from metrics import attribution, sops

DEFAULT_DAYS = 30
MAX_DAYS = 366
CACHE_SECONDS = 300


# --- Parameters ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Params:
    start: date
    end: date
    channel: Channel | None = None
    owner: Any = None
    sop: Sop | None = None
    campaign: Campaign | None = None

    @property
    def since(self) -> datetime:
        return _midnight(self.start)

    @property
    def until(self) -> datetime:
        return _midnight(self.end + timedelta(days=1))

    def cache_key(self, kind: str, user) -> str:
        # Operators see their own customers, admins and analysts everyone: the scope is part of
        # the key, and so is the language ("No channel" is translated).
        scope = "all" if access.user_role(user) in (access.ADMIN, access.ANALYST) else (
            f"u{user.pk}")
        parts = [kind, scope, self.start.isoformat(), self.end.isoformat(),
                 self.channel.pk if self.channel else "", self.owner.pk if self.owner else "",
                 self.sop.pk if self.sop else "", self.campaign.pk if self.campaign else "",
                 get_language() or ""]
        return "metrics:performance:" + ":".join(str(p) for p in parts)


def _midnight(day: date) -> datetime:
    """The start of `day` in the system time zone (settings.TIME_ZONE)."""
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_default_timezone())


def _bad(name: str, message: str) -> ApplicationError:
    return ApplicationError(f"{name}: {message}", extra={"parameter": name})


def _date(query, name: str) -> date | None:
    raw = query.get(name)
    if raw in (None, ""):
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise _bad(name, _("not a date; expected YYYY-MM-DD"))


def _pk(query, name: str) -> int | None:
    raw = query.get(name)
    if raw in (None, ""):
        return None
    if not raw.isdigit():
        raise _bad(name, _("expected an id (a whole number)"))
    return int(raw)


def parse_params(query, *, sop: bool = False, campaign: bool = False) -> Params:
    """`start`/`end` (inclusive dates, default the last 30 days up to today), `channel` (code),
    `owner` (username) and, where the report has them, `sop` / `campaign` ids; any bad one is a
    400 naming the parameter."""
    start, end = _date(query, "start"), _date(query, "end")
    today = timezone.localdate(timezone=timezone.get_default_timezone())
    end = end or (today if start is None else max(start, today))
    start = start or end - timedelta(days=DEFAULT_DAYS - 1)
    if end < start:
        raise _bad("end", _("the end date is before the start date"))
    if (end - start).days + 1 > MAX_DAYS:
        raise _bad("start", _("the range is at most %(days)d days") % {"days": MAX_DAYS})
    params: dict[str, Any] = {"start": start, "end": end}
    if code := query.get("channel"):
        params["channel"] = Channel.objects.filter(code=code).first()
        if params["channel"] is None:
            raise _bad("channel", _("unknown channel %(code)r") % {"code": code})
    if username := query.get("owner"):
        params["owner"] = get_user_model().objects.filter(username=username).first()
        if params["owner"] is None:
            raise _bad("owner", _("unknown user %(name)r") % {"name": username})
    for name, model, wanted in (("sop", Sop, sop), ("campaign", Campaign, campaign)):
        pk = _pk(query, name) if wanted else None
        if pk is not None:
            params[name] = model.objects.filter(pk=pk).first()
            if params[name] is None:
                raise _bad(name, _("no %(what)s with id %(id)d") % {
                    "what": model._meta.verbose_name, "id": pk})
    return Params(**params)


def cached_report(kind: str, request, params: Params,
                  compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The report from the cache (5 minutes) or computed now."""
    key = params.cache_key(kind, request.user)
    data = cache.get(key)
    if data is None:
        data = {"start": params.start, "end": params.end, "computed_at": timezone.now(),
                **compute()}
        cache.set(key, data, CACHE_SECONDS)
    return data


# --- Response shapes (for the schema) -----------------------------------------------------

RATE = {"allow_null": True}


class RetentionSerializer(serializers.Serializer):
    eligible = serializers.IntegerField(help_text=gettext_lazy(
        "Acquired customers whose window has elapsed (joined_at + N days ≤ now)."))
    retained = serializers.IntegerField(help_text=gettext_lazy(
        "Of those, the ones who did not delete us within N days of joining."))
    rate = serializers.FloatField(**RATE, help_text=gettext_lazy("retained ÷ eligible"))


class ChannelTotalsSerializer(serializers.Serializer):
    acquired = serializers.IntegerField()
    buyers = serializers.IntegerField()
    conversion_rate = serializers.FloatField(**RATE)
    revenue = serializers.DecimalField(max_digits=16, decimal_places=2)
    cost = serializers.DecimalField(max_digits=16, decimal_places=2)
    roi = serializers.FloatField(**RATE)
    retention_30d = RetentionSerializer()
    retention_90d = RetentionSerializer()


class ChannelRowSerializer(ChannelTotalsSerializer):
    channel = serializers.CharField(allow_null=True, help_text=gettext_lazy(
        "Channel code; null for customers without a channel."))
    name = serializers.CharField()
    channel_cost = serializers.DecimalField(max_digits=16, decimal_places=2, allow_null=True)
    customers_to_date = serializers.IntegerField(allow_null=True)
    cost_per_acquisition = serializers.DecimalField(max_digits=16, decimal_places=2,
                                                    allow_null=True)
    cost = serializers.DecimalField(max_digits=16, decimal_places=2, allow_null=True)


class ChannelsSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    computed_at = serializers.DateTimeField()
    results = ChannelRowSerializer(many=True)
    totals = ChannelTotalsSerializer()


class FunnelSerializer(serializers.Serializer):
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


class MessageFunnelSerializer(FunnelSerializer):
    total = serializers.IntegerField()


class StepFunnelSerializer(MessageFunnelSerializer):
    id = serializers.IntegerField()
    order = serializers.IntegerField()
    channel = serializers.CharField()
    category = serializers.CharField()


class GroupSerializer(serializers.Serializer):
    size = serializers.IntegerField()
    count = serializers.IntegerField()
    rate = serializers.FloatField(**RATE)


class ComparisonSerializer(serializers.Serializer):
    treatment = GroupSerializer()
    control = GroupSerializer()
    uplift_pp = serializers.FloatField(**RATE)
    relative_uplift = serializers.FloatField(**RATE)
    p_value = serializers.FloatField(**RATE)
    window_open = serializers.IntegerField()


class SopRowSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    model = serializers.CharField()
    stage = serializers.CharField()
    active = serializers.BooleanField()
    holdout_percent = serializers.IntegerField()
    enrolled = serializers.IntegerField()
    treatment = serializers.IntegerField()
    control = serializers.IntegerField()
    messages = MessageFunnelSerializer()
    conversion = ComparisonSerializer()
    advancement = ComparisonSerializer()
    steps = StepFunnelSerializer(many=True)


class SopsSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    computed_at = serializers.DateTimeField()
    results = SopRowSerializer(many=True)


class CampaignRowSerializer(FunnelSerializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.CharField()
    channel = serializers.CharField()
    category = serializers.CharField()
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    audience = serializers.IntegerField()


class CampaignsSerializer(serializers.Serializer):
    start = serializers.DateField()
    end = serializers.DateField()
    computed_at = serializers.DateTimeField()
    results = CampaignRowSerializer(many=True)


# --- Views ---------------------------------------------------------------------------------

PERIOD_PARAMETERS = [
    OpenApiParameter("start", OpenApiTypes.DATE, description=gettext_lazy(
        "First day (inclusive, system time zone); default 29 days before `end`.")),
    OpenApiParameter("end", OpenApiTypes.DATE, description=gettext_lazy(
        "Last day (inclusive); default today. At most 366 days from `start`.")),
    OpenApiParameter("channel", OpenApiTypes.STR, description=gettext_lazy(
        "Only customers of this channel (code).")),
    OpenApiParameter("owner", OpenApiTypes.STR, description=gettext_lazy(
        "Only customers of this staff member (username).")),
]
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

    @extend_schema(parameters=PERIOD_PARAMETERS, responses=ChannelsSerializer,
                   description=_description(CHANNELS_DESCRIPTION))
    def get(self, request):
        params = parse_params(request.query_params)
        return Response(cached_report("channels", request, params, lambda: (
            attribution.channel_attribution(user=request.user, since=params.since,
                                            until=params.until, channel=params.channel,
                                            owner=params.owner))))


class SopsView(APIView):
    """SOP performance: funnel per SOP and step, conversion and advancement against control."""

    @extend_schema(parameters=[*PERIOD_PARAMETERS, OpenApiParameter(
        "sop", OpenApiTypes.INT, description=gettext_lazy("Only this SOP (id)."))],
        responses=SopsSerializer, description=_description(SOPS_DESCRIPTION))
    def get(self, request):
        params = parse_params(request.query_params, sop=True)
        return Response(cached_report("sops", request, params, lambda: sops.sop_performance(
            user=request.user, since=params.since, until=params.until, channel=params.channel,
            owner=params.owner, sop=params.sop)))


class CampaignsView(APIView):
    """Campaign performance: the delivery funnel and its outcomes per campaign."""

    @extend_schema(parameters=[*PERIOD_PARAMETERS, OpenApiParameter(
        "campaign", OpenApiTypes.INT, description=gettext_lazy("Only this campaign (id)."))],
        responses=CampaignsSerializer, description=_description(CAMPAIGNS_DESCRIPTION))
    def get(self, request):
        params = parse_params(request.query_params, campaign=True)
        return Response(cached_report("campaigns", request, params, lambda: (
            sops.campaign_performance(user=request.user, since=params.since,
                                      until=params.until, channel=params.channel,
                                      owner=params.owner, campaign=params.campaign))))
