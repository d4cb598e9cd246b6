"""REST API of the KPIs (DESIGN §4 `metrics/overview/`, `funnel/`, `stages/`, `flows/`,
`revenue/`, plus `cohorts/`): parse the period and filters, answer from the cache or the
selectors. docs/METRICS.md defines every figure."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import date, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import transaction
from django.http import HttpRequest, QueryDict
from django.utils import translation
from django.utils.text import format_lazy
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core import access, moments
from core.db import heavy_statements
from core.exceptions import ApplicationError
from crm.models import Channel
from lifecycle.models import StageModel
from metrics import selectors
from metrics.periods import MAX_RANGE_DAYS, Period, Scope, add_months, local_today, month_start

DEFAULT_DAYS = 30
DEFAULT_CACHE_SECONDS = 300


# --- Parameters ------------------------------------------------------------------------------

def _bad(name: str, message: str) -> ApplicationError:
    return ApplicationError(f"{name}: {message}", extra={"parameter": name})


def _date(query, name: str) -> date | None:
    raw = query.get(name)
    if raw in (None, ""):
        return None
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise _bad(name, _("not a date; expected YYYY-MM-DD, got %(value)r") % {"value": raw})
    try:
        return moments.check_day(day)
    except moments.MomentError as exc:
        raise _bad(name, str(exc))


def _range(query, start_name: str, end_name: str, *, default: Period | None) -> Period | None:
    """Inclusive dates in the system time zone; `default` when neither is given; at most
    366 days, the end not before the start."""
    start, end = _date(query, start_name), _date(query, end_name)
    if start is None and end is None:
        return default
    if default is None and (start is None or end is None):
        missing = start_name if start is None else end_name
        raise _bad(missing, _("required with %(other)s") % {
            "other": end_name if start is None else start_name})
    end = end or max(start, local_today())
    start = start or end - timedelta(days=default.days - 1)
    if end < start:
        raise _bad(end_name, _("%(end)s is before %(start)s") % {"end": end, "start": start})
    if (end - start).days + 1 > MAX_RANGE_DAYS:
        raise _bad(end_name, _("the range is at most %(days)d days, %(start)s to %(end)s is "
                               "%(n)d") % {"days": MAX_RANGE_DAYS, "start": start, "end": end,
                                           "n": (end - start).days + 1})
    return Period(start, end)


def _period(query, *, default_days: int = DEFAULT_DAYS, months: bool = False) -> Period:
    today = local_today()
    first = (add_months(month_start(today), -11) if months
             else today - timedelta(days=default_days - 1))
    return _range(query, "start", "end", default=Period(first, today))


def _scope(request) -> Scope:
    query = request.query_params
    channel = owner = None
    if code := query.get("channel"):
        channel = Channel.objects.filter(code=code).first()
        if channel is None:
            raise _bad("channel", _("unknown channel %(code)r") % {"code": code})
    if username := query.get("owner"):
        owner = get_user_model().objects.filter(username=username).first()
        if owner is None:
            raise _bad("owner", _("unknown user %(name)r") % {"name": username})
    return Scope(user=request.user, channel=channel, owner=owner)


def _model(query) -> StageModel:
    key = query.get("model")
    model = StageModel.objects.filter(key=key).first() if key else None
    if model is None:
        known = ", ".join(StageModel.objects.order_by("order", "key")
                          .values_list("key", flat=True))
        if not key:
            raise _bad("model", _("required: the key of a stage model (%(known)s)")
                       % {"known": known})
        raise _bad("model", _("unknown stage model %(key)r; known: %(known)s")
                   % {"key": key, "known": known})
    return model


# Set while warming the cache: compute every answer afresh and store it.
_recompute: ContextVar[bool] = ContextVar("metrics_recompute", default=False)


def cached(kind: str, scope: Scope, params: dict[str, Any], compute: Callable[[], dict]
           ) -> dict:
    """The answer from Django's cache (Redis in production) for METRICS_CACHE_SECONDS (default
    300), keyed by what the user may see and the parameters."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    key = f"metrics:{kind}:{scope.key}:{digest}"
    if not _recompute.get():
        _note_operator(scope)
    answer = None if _recompute.get() else cache.get(key)
    if answer is None:
        with transaction.atomic():
            heavy_statements()          # room for the big aggregates (PostgreSQL work_mem)
            answer = compute()
        cache.set(key, answer, getattr(settings, "METRICS_CACHE_SECONDS",
                                       DEFAULT_CACHE_SECONDS))
    return answer


def answer(view: type[APIView], user, params: dict[str, str]) -> dict:
    """What the endpoint `view` (of this module or metrics.api_performance) answers `user` for
    the query `params`, without HTTP: the same parsing, errors (an ApplicationError whose
    message names the parameter), cache and selectors — the dashboard's Metrics page shows
    exactly what the API returns. The caller checks the user's role (HasRole)."""
    http = HttpRequest()
    http.method = "GET"
    http.GET = QueryDict(mutable=True)
    http.GET.update({name: value for name, value in params.items() if value not in (None, "")})
    request = Request(http)
    request.user = user
    return view().get(request).data


def dashboard_loads() -> list[tuple[type[APIView], dict[str, str]]]:
    """The requests the dashboard's Metrics page makes by default (the last 30 days, every
    customer, its default stage model): what `warm` keeps in the cache."""
    from metrics import api_performance, views

    return [(OverviewView, {}), (RevenueView, {}), (CohortsView, {}),
            (FunnelView, {"model": views.AIPL_MODEL}),
            (StagesView, {"model": views.DEFAULT_MODEL}),
            (FlowsView, {"model": views.DEFAULT_MODEL}),
            (api_performance.ChannelsView, {}), (api_performance.SopsView, {})]


RECENT_OPERATORS = "metrics:recent-operators"


def _recent_seconds() -> int:
    return int(getattr(settings, "METRICS_WARM_RECENT_SECONDS", 3600))


def _note_operator(scope: Scope) -> None:
    """Remember (for METRICS_WARM_RECENT_SECONDS, default an hour) that an operator asked for
    metrics, so that `warm` keeps their default answers too. Best effort, at most once a
    minute per operator."""
    user = scope.user
    if user is None or access.user_role(user) != access.OPERATOR:
        return
    now = time.time()
    seen = cache.get(RECENT_OPERATORS) or {}
    if now - seen.get(user.pk, 0) < 60:
        return
    seen = {pk: at for pk, at in seen.items() if now - at < _recent_seconds()}
    seen[user.pk] = now
    cache.set(RECENT_OPERATORS, seen, _recent_seconds())


def warm(loads=None) -> int:
    """Compute the dashboard's default answers afresh and store them in the cache: for admins
    and analysts (who share one scope), and for each operator who asked for metrics in the last
    METRICS_WARM_RECENT_SECONDS (default an hour) — in every language of the site for the
    reports that name things in it. The frequent refresh calls this, so those loads are
    answered from the cache even where the figure can only be computed (medians, stage-to-stage
    conversion, channel attribution); an answer is then at most METRICS_CACHE_SECONDS old.
    Returns the number of answers stored."""
    users = [get_user_model()(username="metrics-warm", is_superuser=True, is_active=True)]
    now = time.time()
    recent = [pk for pk, at in (cache.get(RECENT_OPERATORS) or {}).items()
              if now - at < _recent_seconds()]
    users += [user for user in get_user_model().objects.filter(pk__in=recent, is_active=True)
              if access.user_role(user) == access.OPERATOR]
    token = _recompute.set(True)
    stored = 0
    try:
        for view, params in (loads or dashboard_loads()):
            if "model" in params and not StageModel.objects.filter(key=params["model"]).exists():
                continue
            # Channel, SOP and campaign reports are cached per language; the others are not.
            per_language = view.__module__ == "metrics.api_performance"
            for language in ([code for code, _name in settings.LANGUAGES] if per_language
                             else [settings.LANGUAGE_CODE]):
                with translation.override(language):
                    for user in users:
                        answer(view, user, params)
                        stored += 1
    finally:
        _recompute.reset(token)
    return stored


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
        description=_with_note(gettext_lazy(
            "The seed-002 KPIs per relationship stage for the range, churn and win-back of the "
            "value lifecycle, totals and a daily series (stored snapshots, today and days not "
            "snapshotted computed live). "
            "friend_loss_rate = joined in range and deleted us (friend_deleted) within 7 days "
            "of joining ÷ joined in range; group_join_rate = of those, joined a group after "
            "joining and before the range ended ÷ joined; interaction_rate = customers in the "
            "private domain during the range (joined by its end, not gone before its start) "
            "with an inbound event in it ÷ customers in the domain; retention_rate = active "
            "(inbound event or paid order) in both the range and the preceding range of equal "
            "length ÷ active in the preceding range; conversion_rate = customers in the domain "
            "whose first paid order falls in the range ÷ customers in the domain without a paid "
            "order before it; repurchase_rate = buyers with ≥ 2 paid orders in the range ÷ "
            "buyers; fission_multiplier = customers joined in the range with a referrer ÷ "
            "distinct referrers; churn rate = customers entering value:churn in the range ÷ "
            "customers placed in the model and not in churn at its start; win-back rate = "
            "win-back transitions in the range ÷ customers in dormant or churn at its start. "
            "Rates are null when the denominator is 0.")))
    def get(self, request):
        period, scope = _period(request.query_params), _scope(request)
        return Response(cached("overview", scope, period.as_dict(),
                               lambda: selectors.overview_report(scope=scope, period=period)))


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
        query = request.query_params
        model, scope = _model(query), _scope(request)
        day = _date(query, "date")
        if day is not None and day > local_today():
            raise _bad("date", _("%(day)s is in the future") % {"day": day})
        return Response(cached("funnel", scope, {"model": model.key, "date": day},
                               lambda: selectors.funnel_report(scope=scope, model=model, day=day)))


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
        query = request.query_params
        model, period, scope = _model(query), _period(query), _scope(request)
        return Response(cached("stages", scope, {"model": model.key, **period.as_dict()},
                               lambda: selectors.stages_report(scope=scope, model=model,
                                                               period=period)))


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
        query = request.query_params
        model, period, scope = _model(query), _period(query), _scope(request)
        return Response(cached("flows", scope, {"model": model.key, **period.as_dict()},
                               lambda: selectors.flows_report(scope=scope, model=model,
                                                              period=period)))


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
        query = request.query_params
        period, scope = _period(query), _scope(request)
        compare = _range(query, "compare_start", "compare_end", default=None) or period.previous()
        return Response(cached("revenue", scope, {**period.as_dict(), "compare":
                                                  compare.as_dict()},
                               lambda: selectors.revenue_report(scope=scope, period=period,
                                                                compare=compare)))


class CohortsView(APIView):
    @extend_schema(
        parameters=[*RANGE_PARAMETERS, *FILTER_PARAMETERS], responses=OpenApiTypes.OBJECT,
        description=_with_note(gettext_lazy(
            "Cohort retention: customers grouped by the month they joined (the months from "
            "start to end; default the last 12 months), and for each month since joining up "
            "to the current one the active customers (an inbound event or a paid order in that "
            "month) and rate = active ÷ cohort size. Complete months come from the table the "
            "nightly job refreshes, the current month is computed live.")))
    def get(self, request):
        period, scope = _period(request.query_params, months=True), _scope(request)
        return Response(cached("cohorts", scope, period.as_dict(),
                               lambda: selectors.cohort_retention(scope=scope, period=period)))
