"""The metrics as report functions, a user and query parameters in, the answer out, that the API,
the dashboard's pages and the cache warmer share: each parses its parameters (a bad one is an
ApplicationError naming it), scopes the figures to the user and caches the answer
(docs/METRICS.md, "Ground rules" and "Caching")."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import date, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from campaigns.models import Campaign, Sop
from core import access, moments
from core.db import heavy_statements
from core.exceptions import ApplicationError
from crm.models import Channel
from lifecycle.models import StageModel
from metrics import attribution, selectors, sops
from metrics.periods import MAX_RANGE_DAYS, Period, Scope, add_months, local_today, month_start
from metrics.serializers import (
    CampaignPerformanceReportSerializer,
    ChannelAttributionReportSerializer,
    SopPerformanceReportSerializer,
)

Params = Mapping[str, str]
DEFAULT_DAYS = 30
DEFAULT_CACHE_SECONDS = 300
DEFAULT_MODEL = "journey"       # the models the dashboard's Metrics page shows first
AIPL_MODEL = "aipl"
RECENT_OPERATORS = "metrics:recent-operators"
# While warming the cache: compute every answer afresh, and each performance report's figures
# once by what they depend on (not the language) to shape them in each language.
_recompute: ContextVar[bool] = ContextVar("metrics_recompute", default=False)
_computed: ContextVar[dict | None] = ContextVar("metrics_computed", default=None)


def _bad(name: str, message: str) -> ApplicationError:
    return ApplicationError(f"{name}: {message}", extra={"parameter": name})


def _date(query: Params, name: str) -> date | None:
    raw = query.get(name)
    if raw in (None, ""):
        return None
    try:
        return moments.check_day(date.fromisoformat(raw))
    except moments.MomentError as exc:
        raise _bad(name, str(exc))
    except ValueError:
        raise _bad(name, _("not a date; expected YYYY-MM-DD, got %(value)r") % {"value": raw})


def _range(query: Params, start_name: str, end_name: str, *,
           default: Period | None) -> Period | None:
    """The days from one parameter to the other (`default` when neither is given)."""
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


def _period(query: Params, *, months: bool = False) -> Period:
    today = local_today()
    first = (add_months(month_start(today), -11) if months
             else today - timedelta(days=DEFAULT_DAYS - 1))
    return _range(query, "start", "end", default=Period(first, today))


def _scope(user, query: Params) -> Scope:
    channel = owner = None
    if code := query.get("channel"):
        channel = Channel.objects.filter(code=code).first()
        if channel is None:
            raise _bad("channel", _("unknown channel %(code)r") % {"code": code})
    if username := query.get("owner"):
        owner = get_user_model().objects.filter(username=username).first()
        if owner is None:
            raise _bad("owner", _("unknown user %(name)r") % {"name": username})
    return Scope(user=user, channel=channel, owner=owner)


def _model(query: Params) -> StageModel:
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


def _one(query: Params, name: str, model) -> Any:
    """The `sop` / `campaign` filter: an existing row by id, or None when not given."""
    raw = query.get(name)
    if raw in (None, ""):
        return None
    found = (model.objects.filter(pk=int(raw)).first()
             if raw.isascii() and raw.isdigit() and len(raw) < 19 else None)
    if found is None:
        raise _bad(name, _("no %(what)s with id %(id)r") % {"what": model._meta.verbose_name,
                                                            "id": raw})
    return found


# --- The cache -------------------------------------------------------------------------------

def cached(kind: str, scope: Scope, params: dict[str, Any], compute: Callable[[], dict],
           *, fresh: bool = False) -> dict:
    """The answer from the cache for METRICS_CACHE_SECONDS, by what the user may see and the
    parameters; `fresh` computes it anew (and stores that)."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode(),
                          usedforsecurity=False).hexdigest()
    key = f"metrics:{kind}:{scope.key}:{digest}"
    if not _recompute.get():
        _note_operator(scope)
    answer = None if _recompute.get() or fresh else cache.get(key)
    if answer is None:
        with transaction.atomic():
            heavy_statements()          # room for the big aggregates (PostgreSQL work_mem)
            answer = compute()
        cache.set(key, answer, getattr(settings, "METRICS_CACHE_SECONDS",
                                       DEFAULT_CACHE_SECONDS))
    return answer


def _recent_seconds() -> int:
    return int(getattr(settings, "METRICS_WARM_RECENT_SECONDS", 3600))


def _note_operator(scope: Scope) -> None:
    """Remember that an operator asked for metrics, so that `warm` keeps their answers too
    (best effort, at most once a minute per operator)."""
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


# --- The reports -----------------------------------------------------------------------------

def overview(user, params: Params) -> dict:
    period, scope = _period(params), _scope(user, params)
    return cached("overview", scope, period.as_dict(),
                  lambda: selectors.overview_report(scope=scope, period=period))


def funnel(user, params: Params) -> dict:
    model, scope = _model(params), _scope(user, params)
    day = _date(params, "date")
    if day is not None and day > local_today():
        raise _bad("date", _("%(day)s is in the future") % {"day": day})
    return cached("funnel", scope, {"model": model.key, "date": day},
                  lambda: selectors.funnel_report(scope=scope, model=model, day=day))


def stages(user, params: Params) -> dict:
    model, period, scope = _model(params), _period(params), _scope(user, params)
    return cached("stages", scope, {"model": model.key, **period.as_dict()},
                  lambda: selectors.stages_report(scope=scope, model=model, period=period))


def flows(user, params: Params) -> dict:
    model, period, scope = _model(params), _period(params), _scope(user, params)
    return cached("flows", scope, {"model": model.key, **period.as_dict()},
                  lambda: selectors.flows_report(scope=scope, model=model, period=period))


def revenue(user, params: Params) -> dict:
    period, scope = _period(params), _scope(user, params)
    compare = _range(params, "compare_start", "compare_end", default=None) or period.previous()
    return cached("revenue", scope, {**period.as_dict(), "compare": compare.as_dict()},
                  lambda: selectors.revenue_report(scope=scope, period=period,
                                                   compare=compare))


def cohorts(user, params: Params) -> dict:
    period, scope = _period(params, months=True), _scope(user, params)
    return cached("cohorts", scope, period.as_dict(),
                  lambda: selectors.cohort_retention(scope=scope, period=period))


def _performance(kind: str, user, params: Params, serializer, compute, *, fresh: bool = False,
                 per_language: bool = False, **filters) -> dict:
    """A performance report shaped by its serializer; `per_language`: cached per language (it
    names something in the user's language: "no channel")."""
    period, scope = _period(params), _scope(user, params)
    key = {**period.as_dict(), **{name: row.pk for name, row in filters.items() if row}}
    shared = (kind, scope.key, json.dumps(key, sort_keys=True, default=str))
    if per_language:
        key["language"] = translation.get_language()

    def run() -> dict[str, Any]:
        computed = _computed.get()
        figures = computed.get(shared) if computed is not None else None
        if figures is None:
            figures = compute(scope=scope, period=period, **filters)
            if computed is not None:
                computed[shared] = figures
        return dict(serializer({**period.as_dict(), "computed_at": timezone.now(),
                                **figures}).data)

    return cached(f"performance:{kind}", scope, key, run, fresh=fresh)


def channels(user, params: Params) -> dict:
    return _performance("channels", user, params, ChannelAttributionReportSerializer,
                        attribution.channel_attribution, per_language=True)


def sop_performance(user, params: Params) -> dict:
    return _performance("sops", user, params, SopPerformanceReportSerializer,
                        sops.sop_performance, sop=_one(params, "sop", Sop))


def campaign_performance(user, params: Params, *, fresh: bool = False) -> dict:
    """`fresh`: not from the cache (a campaign's own page, while its results come in)."""
    return _performance("campaigns", user, params, CampaignPerformanceReportSerializer,
                        sops.campaign_performance, fresh=fresh,
                        campaign=_one(params, "campaign", Campaign))


PER_LANGUAGE = {channels}       # the reports whose answers are cached per language


# --- Warming the cache -------------------------------------------------------------------------

def dashboard_loads() -> list[tuple[Callable[..., dict], dict[str, str]]]:
    """The reports the Metrics page and the workbench ask for by default (a funnel of every
    active model, and the AIPL one): what `warm` keeps in the cache."""
    keys = list(StageModel.objects.filter(active=True).order_by("order", "key")
                .values_list("key", flat=True))
    if AIPL_MODEL not in keys and StageModel.objects.filter(key=AIPL_MODEL).exists():
        keys.append(AIPL_MODEL)
    return [(overview, {}), (revenue, {}), (cohorts, {}), *[(funnel, {"model": k}) for k in keys],
            (stages, {"model": DEFAULT_MODEL}), (flows, {"model": DEFAULT_MODEL}),
            (channels, {}), (sop_performance, {})]


def warm(loads=None) -> int:
    """Compute the dashboard's default answers afresh into the cache, for admins and analysts
    and each operator who asked lately, in every site language for PER_LANGUAGE reports
    (docs/METRICS.md, "Caching"). Returns the number of answers stored."""
    users = [get_user_model()(username="metrics-warm", is_superuser=True, is_active=True)]
    now = time.time()
    recent = [pk for pk, at in (cache.get(RECENT_OPERATORS) or {}).items()
              if now - at < _recent_seconds()]
    users += [user for user in get_user_model().objects.filter(pk__in=recent, is_active=True)
              if access.user_role(user) == access.OPERATOR]
    token, computed = _recompute.set(True), _computed.set({})
    stored = 0
    try:
        for report, params in (loads or dashboard_loads()):
            if "model" in params and not StageModel.objects.filter(key=params["model"]).exists():
                continue
            for language in ([code for code, _name in settings.LANGUAGES]
                             if report in PER_LANGUAGE else [settings.LANGUAGE_CODE]):
                with translation.override(language):
                    for user in users:
                        report(user, params)
                        stored += 1
    finally:
        _recompute.reset(token)
        _computed.reset(computed)
    return stored
