"""The dashboard's workbench (home), Metrics page and a campaign's results panel: the reports of
metrics.reports (the API's own: same parameters, scope, cache and messages) as cards, tables,
CSS bars and chart data (docs/METRICS.md)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from campaigns import selectors as outreach
from campaigns.models import Message
from core import access
from core.exceptions import ApplicationError
from crm import selectors as crm_selectors
from crm import timeline
from crm.models import Channel
from lifecycle.models import Stage, StageModel
from metrics import kpis, reports
from metrics.periods import add_months, local_today, month_start
from metrics.templatetags.metrics_format import count, decimal2, money, percent

TOP_FLOWS = 10
COHORT_MONTHS = 12
RECENT_EVENTS = 12
FILTERS = ("start", "end", "channel", "owner")
REVENUE_FACTORS = [  # (key, label, format)
    ("traffic", gettext_lazy("Traffic"), count),
    ("conversion_rate", gettext_lazy("Conversion rate"), percent),
    ("average_order_value", gettext_lazy("Average order value"), money),
    ("purchase_frequency", gettext_lazy("Purchase frequency"), decimal2),
]
REVENUE_METHODS = {
    "lmdi": gettext_lazy("Split by LMDI (logarithmic mean Divisia); the parts add up to the "
                         "change."),
    "shapley": gettext_lazy("Split by Shapley values (a factor was 0 in one range); the parts "
                            "add up to the change."),
}
DAILY_LINES = [("new_customers", gettext_lazy("New customers")),
               ("active_customers", gettext_lazy("Active customers")),
               ("deleted_us", gettext_lazy("Deleted us")),
               ("paid_orders", gettext_lazy("Paid orders"))]


def _width(value, largest) -> str:
    """A bar's CSS width in percent of the largest value ("." as decimal point)."""
    value, largest = abs(Decimal(str(value or 0))), abs(Decimal(str(largest or 0)))
    return f"{min(Decimal(100), value * 100 / largest):.1f}" if largest else "0"


def _kpi_cards(overview: dict[str, Any]) -> list[dict[str, Any]]:
    """One card per KPI of the registry (metrics.kpis): label, rate, its figures and formula."""
    cards = []
    for kpi in kpis.KPIS:
        value, numerator, denominator = kpis.figures(kpi, overview)
        if numerator is None or denominator is None:
            detail = None
        elif kpi.multiplier:
            detail = _("%(referred)s referred · %(referrers)s referrers") % {
                "referred": count(numerator), "referrers": count(denominator)}
        elif not denominator and kpi.section == "lifecycle":
            # No one had a stage before the range (a new install, a new model).
            detail = (_("No stage history before this range; %(n)s moved in it") % {
                "n": count(numerator)} if numerator else _("No stage history before this range"))
        else:
            detail = _("%(n)s of %(d)s") % {"n": count(numerator), "d": count(denominator)}
        cards.append({"key": kpi.key, "label": kpi.label, "definition": kpi.formula,
                      "value": value, "multiplier": kpi.multiplier,
                      "warn": kpi.key == "churn_rate", "detail": detail})
    return cards


def _revenue(report: dict[str, Any]) -> dict[str, Any]:
    previous, parts = report["previous"], report["decomposition"]
    largest = max([abs(Decimal(v)) for v in parts.values()] + [Decimal(0)])
    factors = [{
        "key": key, "label": label, "current": fmt(report[key]),
        "previous": fmt(previous[key]), "part": parts[key],
        "width": _width(parts[key], largest), "negative": Decimal(parts[key]) < 0,
    } for key, label, fmt in REVENUE_FACTORS]
    top = max(Decimal(report["revenue"]), Decimal(previous["revenue"]))
    empty = not (report["paid_orders"] or previous["paid_orders"])
    # The chart: a waterfall from the earlier range through each factor's part to this range.
    chart = None if empty else {
        "start": {"name": f"{previous['start']} – {previous['end']}",
                  "value": float(previous["revenue"])},
        "steps": [{"name": str(factor["label"]), "value": float(factor["part"])}
                  for factor in factors],
        "end": {"name": f"{report['start']} – {report['end']}", "value": float(report["revenue"])}}
    return {**report, "factors": factors, "method_note": REVENUE_METHODS.get(report["method"], ""),
            "width": _width(report["revenue"], top),
            "previous_width": _width(previous["revenue"], top), "empty": empty, "chart": chart}


def _stage_colors(model_keys) -> dict[str, dict[str, str]]:
    """Each model's stage colours by stage key."""
    colors: dict[str, dict[str, str]] = {}
    for model, key, color in Stage.objects.filter(model__key__in=model_keys).values_list(
            "model__key", "key", "color"):
        colors.setdefault(model, {})[key] = color
    return colors


def _funnel(report: dict[str, Any], colors: dict[str, str]) -> dict[str, Any]:
    stages = report["stages"]
    top = max([s["reach"] for s in stages] + [0])
    following = [s["name"] for s in stages[1:]] + [None]
    rows = [{**stage, "width": _width(stage["reach"], top), "next_name": next_name,
             "color": colors.get(stage["stage"], "")}
            for stage, next_name in zip(stages, following, strict=True)]
    chart = {"stages": [{"name": row["name"], "value": row["reach"], "color": row["color"]}
                        for row in rows]} if top else None
    return {**report, "rows": rows, "empty": top == 0, "chart": chart}


def _flows(report: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """The top flows as bars, and all in a Sankey chart: where customers came from on the left,
    where they went on the right (so a move back and forth still draws)."""
    flows = report["flows"]
    top = max([f["count"] for f in flows[:TOP_FLOWS]] + [0])
    rows = [{**flow, "from_name": names.get(flow["from"], flow["from"]) if flow["from"] else None,
             "to_name": names.get(flow["to"], flow["to"]), "width": _width(flow["count"], top)}
            for flow in flows]
    nodes = {}
    for row in rows:
        nodes[f"from:{row['from'] or ''}"] = row["from_name"] or str(_("First placement"))
        nodes[f"to:{row['to']}"] = row["to_name"]
    chart = {"nodes": [{"name": key, "label": label} for key, label in nodes.items()],
             "links": [{"source": f"from:{row['from'] or ''}", "target": f"to:{row['to']}",
                        "value": row["count"]} for row in rows]} if rows else None
    return {**report, "total": len(flows), "rows": rows[:TOP_FLOWS], "chart": chart}


def _sops(report: dict[str, Any]) -> dict[str, Any]:
    """The SOPs that enrolled or messaged someone in the range, their model and stage named."""
    rows = [dict(sop) for sop in report["results"]
            if sop["enrolled"] or sop["messages"]["total"]]
    names = {(model, key): (model_name, name) for model, model_name, key, name in
             Stage.objects.filter(model__key__in={r["model"] for r in rows})
             .values_list("model__key", "model__name", "key", "name")}
    for sop in rows:
        sop["model_name"], sop["stage_name"] = names.get((sop["model"], sop["stage"]),
                                                         (sop["model"], sop["stage"]))
    return {**report, "rows": rows}


def _cohort_cell(cell: dict[str, Any] | None) -> dict[str, Any] | None:
    """A cell shaded by its rate (at least a tint, so 0 % still reads as a cell)."""
    if cell is None or cell["rate"] is None:
        return cell
    return {**cell, "alpha": f"{0.06 + 0.84 * cell['rate']:.2f}", "dark": cell["rate"] >= 0.5}


def _cohorts(report: dict[str, Any]) -> dict[str, Any]:
    cohorts = report["cohorts"]
    months = max([len(c["retention"]) for c in cohorts] + [0])
    rows = [{**cohort, "cells": [_cohort_cell(cell) for cell in cohort["retention"]]
             + [None] * (months - len(cohort["retention"]))} for cohort in cohorts]
    empty = not any(c["customers"] for c in cohorts)
    chart = None if empty else {
        "months": [str(_("M%(n)s") % {"n": m}) for m in range(months)],
        "cohorts": [c["cohort"] for c in rows],
        "cells": [[x, y, round(cell["rate"] * 100, 1)] for y, cohort in enumerate(rows)
                  for x, cell in enumerate(cohort["cells"])
                  if cell is not None and cell["rate"] is not None]}
    return {**report, "months": range(months), "rows": rows, "empty": empty, "chart": chart}


def _reports(user, filters: dict[str, str], model_key: str | None,
             aipl: bool) -> dict[str, Any]:
    """Every section's figures, from the reports; raises a report's ApplicationError."""
    overview = reports.overview(user, filters)
    end = date.fromisoformat(overview["end"])
    scope = {"channel": filters["channel"], "owner": filters["owner"]}
    colors = _stage_colors([model_key, reports.AIPL_MODEL])
    context: dict[str, Any] = {
        "overview": overview, "cards": _kpi_cards(overview),
        "overview_empty": not (overview["relationship"]["interaction"]["customers"]
                               or overview["relationship"]["acquaintance"]["joined"]),
        "revenue": _revenue(reports.revenue(user, filters)),
        "channels": reports.channels(user, filters),
        "sops": _sops(reports.sop_performance(user, filters)),
        "cohorts": _cohorts(reports.cohorts(user, {
            "start": add_months(month_start(end), 1 - COHORT_MONTHS).isoformat(),
            "end": end.isoformat(), **scope})),
        "funnel": None, "flows": None, "aipl": None,
    }
    if model_key:
        stages = _funnel(reports.stages(user, {**filters, "model": model_key}),
                         colors.get(model_key, {}))
        names = {row["stage"]: row["name"] for row in stages["rows"]}
        context["funnel"] = stages
        context["flows"] = _flows(reports.flows(user, {**filters, "model": model_key}), names)
    if aipl:
        # Stage counts at the end of the range (now when it ends today or later).
        day = end.isoformat() if end < local_today() else ""
        context["aipl"] = _funnel(reports.funnel(user, {"model": reports.AIPL_MODEL,
                                                         "date": day, **scope}),
                                  colors.get(reports.AIPL_MODEL, {}))
    return context


# The charts' data goes to static/dashboard/charts.js by json_script, its labels translated here.

def _daily_chart(overview: dict[str, Any]) -> dict[str, Any]:
    series = overview["series"]
    return {"dates": [day["date"] for day in series],
            "lines": [{"name": str(label), "data": [day[key] for day in series]}
                      for key, label in DAILY_LINES],
            "money": {"name": str(_("Revenue")),
                      "data": [float(day["revenue"]) for day in series]}}


def _channels_chart(channels: dict[str, Any]) -> dict[str, Any] | None:
    rows = [row for row in channels["results"] if row["acquired"]]
    if not rows:
        return None
    return {"channels": [row["name"] for row in rows],
            "bars": [{"name": str(_("Revenue")), "data": [float(r["revenue"]) for r in rows]},
                     {"name": str(_("Cost")),
                      "data": [float(r["cost"]) if r["cost"] is not None else None
                               for r in rows]}]}


def _charts(context: dict[str, Any]) -> dict[str, Any]:
    return {"daily": _daily_chart(context["overview"]),
            "channels": _channels_chart(context["channels"]),
            **{name: (context[name] or {}).get("chart")
               for name in ("funnel", "aipl", "flows", "revenue", "cohorts")}}


@login_required
def dashboard(request):
    user = request.user
    role = access.require_role(user)
    query = request.GET
    models = list(StageModel.objects.order_by("order", "key").values_list("key", "name"))
    keys = [key for key, _name in models]
    model_key = query.get("model") or (reports.DEFAULT_MODEL if reports.DEFAULT_MODEL in keys
                                       else keys[0] if keys else "")
    filters = {name: query.get(name, "").strip() for name in FILTERS}
    context: dict[str, Any] = {
        "values": {**filters, "model": model_key},
        "channel_choices": list(Channel.objects.order_by("name", "code")
                                .values_list("code", "name")),
        "owner_choices": (crm_selectors.staff_owner_choices()
                          if role in (access.ADMIN, access.ANALYST) else []),
        "model_choices": models,
        "error": "",
    }
    try:
        context.update(_reports(user, filters, model_key, reports.AIPL_MODEL in keys))
    except ApplicationError as exc:
        context["error"] = exc.message
        return render(request, "metrics/dashboard.html", context, status=400)
    context["charts"] = _charts(context)
    # The range the figures are for (the defaults filled in).
    context["values"].update(start=context["overview"]["start"], end=context["overview"]["end"])
    return render(request, "metrics/dashboard.html", context)


def campaign_results_panel(request, campaign) -> str:
    """A campaign page's results panel (campaigns.extensions): the `campaigns/` report of the
    day it started, within what the reader may see."""
    if campaign.started_at is None:
        return ""
    day = timezone.localtime(campaign.started_at).date().isoformat()
    try:
        report = reports.campaign_performance(
            request.user, {"campaign": str(campaign.pk), "start": day, "end": day}, fresh=True)
    except ApplicationError as exc:
        context: dict[str, Any] = {"error": exc.message}
    else:
        row = report["results"][0] if report["results"] else None
        reasons = dict(Message.SkipReason.choices)
        context = {"row": row, "computed_at": report.get("computed_at"), "skipped": [
            {"reason": reasons.get(key, key), "count": n}
            for key, n in (row["skipped_by_reason"].items() if row else ())]}
    return render_to_string("metrics/_campaign_results.html", context, request=request)


@login_required
def workbench(request):
    """The home page: the user's figures of the last 30 days, what needs attention, the to-dos
    due, a funnel per active stage model and the latest activity — the Metrics page's reports
    (same parameters, same cache), so a number never differs between the two pages."""
    user = request.user
    context: dict[str, Any] = {"error": ""}
    if access.user_role(user) is None:
        return render(request, "metrics/workbench.html", context)
    try:
        overview = reports.overview(user, {})
        models = list(StageModel.objects.filter(active=True).order_by("order", "key"))
        colors = _stage_colors([model.key for model in models])
        funnels = [{**_funnel(reports.funnel(user, {"model": model.key}),
                              colors.get(model.key, {})), "model": model} for model in models]
    except ApplicationError as exc:
        context["error"] = exc.message
        return render(request, "metrics/workbench.html", context, status=400)
    totals = overview["totals"]
    interaction = overview["relationship"]["interaction"]
    orders, revenue = totals["paid_orders"], Decimal(str(totals["revenue"]))
    context.update(
        overview=overview, trend=_daily_chart(overview), funnels=funnels,
        figures={"customers": interaction["customers"], "new": totals["new_customers"],
                 "active": interaction["interacting"],
                 "active_rate": interaction["interaction_rate"],
                 "active_kpi": kpis.BY_KEY["interaction_rate"],
                 "deleted_us": totals["deleted_us"], "orders": orders, "revenue": revenue,
                 "average_order": (revenue / orders).quantize(Decimal("0.01"))
                 if orders else None},
        alerts=outreach.workbench_alerts(user=user))
    if access.can_see_customers(user):
        recent = crm_selectors.dashboard_recent_events(user=user, limit=RECENT_EVENTS)
        summaries = timeline.event_summaries(recent)
        context.update(todos=outreach.due_todos(user=user),
                       events=[{"event": e, "summary": summaries[e.pk]} for e in recent])
    return render(request, "metrics/workbench.html", context)
