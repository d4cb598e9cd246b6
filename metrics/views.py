"""The dashboard's Metrics page: the figures of the metrics API (docs/METRICS.md) for a date
range, a channel and an owner, as cards, tables and bars drawn with CSS widths.

Every figure is what the API answers for the same user and parameters: both call the report
functions of metrics.reports (parsing, scope, cache, selectors), so the page and the API agree,
and bad input shows the same message, which names the parameter.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from core import access
from core.exceptions import ApplicationError
from crm.models import Channel
from lifecycle.models import Stage, StageModel
from metrics import kpis, reports
from metrics.periods import add_months, local_today, month_start
from metrics.templatetags.metrics_format import count, decimal2, money, percent

TOP_FLOWS = 10
COHORT_MONTHS = 12
FILTERS = ("start", "end", "channel", "owner")

REVENUE_FACTORS = [
    # (key, label, format)
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


# --- Helpers -------------------------------------------------------------------------------

def _width(value, largest) -> str:
    """A bar's CSS width in percent of the largest value, "." as decimal point in any
    language."""
    value, largest = abs(Decimal(str(value or 0))), abs(Decimal(str(largest or 0)))
    if not largest:
        return "0"
    return f"{min(Decimal(100), value * 100 / largest):.1f}"


def _owner_choices() -> list[tuple[str, str]]:
    """Staff who own customers or hold the operator role (the owner filter's choices)."""
    from crm.selectors import staff_owner_choices

    return staff_owner_choices()


def _kpi_cards(overview: dict[str, Any]) -> list[dict[str, Any]]:
    """One card per KPI of the registry (metrics.kpis): label, rate, its figures and formula."""
    cards = []
    for kpi in kpis.KPIS:
        value, numerator, denominator = kpis.figures(kpi, overview)
        card = {"key": kpi.key, "label": kpi.label, "definition": kpi.formula, "value": value,
                "multiplier": kpi.multiplier, "warn": kpi.key == "churn_rate",
                "numerator": numerator, "denominator": denominator}
        if numerator is None or denominator is None:
            pass
        elif kpi.multiplier:
            card["detail"] = _("%(referred)s referred · %(referrers)s referrers") % {
                "referred": count(numerator), "referrers": count(denominator)}
        elif not denominator and kpi.section == "lifecycle":
            # No one had a stage before the range (a new install, a new model): nothing to
            # measure against yet.
            card["detail"] = (_("No stage history before this range; %(n)s moved in it") % {
                "n": count(numerator)} if numerator
                else _("No stage history before this range"))
        else:
            card["detail"] = _("%(n)s of %(d)s") % {"n": count(numerator),
                                                    "d": count(denominator)}
        cards.append(card)
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
    return {
        **report, "factors": factors, "method_note": REVENUE_METHODS.get(report["method"], ""),
        "width": _width(report["revenue"], top),
        "previous_width": _width(previous["revenue"], top),
        "empty": not (report["paid_orders"] or previous["paid_orders"]),
    }


def _stage_colors(model_key: str) -> dict[str, str]:
    return dict(Stage.objects.filter(model__key=model_key).values_list("key", "color"))


def _funnel(report: dict[str, Any], colors: dict[str, str] | None = None) -> dict[str, Any]:
    stages = report["stages"]
    top = max([s["reach"] for s in stages] + [0])
    colors = _stage_colors(report["model"]) if colors is None else colors
    rows = []
    for i, stage in enumerate(stages):
        following = stages[i + 1]["name"] if i + 1 < len(stages) else None
        rows.append({**stage, "width": _width(stage["reach"], top), "next_name": following,
                     "color": colors.get(stage["stage"], "")})
    return {**report, "rows": rows, "empty": top == 0}


def _flows(report: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    flows = report["flows"][:TOP_FLOWS]
    top = max([f["count"] for f in flows] + [0])
    return {**report, "total": len(report["flows"]), "rows": [
        {**flow, "from_name": names.get(flow["from"], flow["from"]) if flow["from"] else None,
         "to_name": names.get(flow["to"], flow["to"]), "width": _width(flow["count"], top)}
        for flow in flows]}


def _sops(report: dict[str, Any]) -> dict[str, Any]:
    """The SOPs that enrolled someone in the range (or messaged them); the rest have no
    figures to show. Their model and stage by name (the report gives keys)."""
    rows = [dict(sop) for sop in report["results"]
            if sop["enrolled"] or sop["messages"]["total"]]
    names = {(model, key): (model_name, name) for model, model_name, key, name in
             Stage.objects.filter(model__key__in={r["model"] for r in rows})
             .values_list("model__key", "model__name", "key", "name")}
    for sop in rows:
        sop["model_name"], sop["stage_name"] = names.get((sop["model"], sop["stage"]),
                                                         (sop["model"], sop["stage"]))
    return {**report, "rows": rows}


def _cohorts(report: dict[str, Any]) -> dict[str, Any]:
    cohorts = report["cohorts"]
    months = max([len(c["retention"]) for c in cohorts] + [0])
    rows = []
    for cohort in cohorts:
        cells = []
        for offset in range(months):
            cell = cohort["retention"][offset] if offset < len(cohort["retention"]) else None
            if cell is not None and cell["rate"] is not None:
                # Background opacity by rate (at least a tint, so 0 % still reads as a cell).
                cell = {**cell, "alpha": f"{0.06 + 0.84 * cell['rate']:.2f}",
                        "dark": cell["rate"] >= 0.5}
            cells.append(cell)
        rows.append({**cohort, "cells": cells})
    return {**report, "months": range(months), "rows": rows,
            "empty": not any(c["customers"] for c in cohorts)}


def _reports(user, filters: dict[str, str], model_key: str | None,
             aipl: bool) -> dict[str, Any]:
    """Every section's figures, from the reports; raises a report's ApplicationError."""
    overview = reports.overview(user, filters)
    end = date.fromisoformat(overview["end"])
    scope = {"channel": filters["channel"], "owner": filters["owner"]}
    # Stage counts at the end of the range (now when it ends today or later).
    day = end.isoformat() if end < local_today() else ""
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
        stages = _funnel(reports.stages(user, {**filters, "model": model_key}))
        names = {row["stage"]: row["name"] for row in stages["rows"]}
        context["funnel"] = stages
        context["flows"] = _flows(reports.flows(user, {**filters, "model": model_key}), names)
    if aipl:
        context["aipl"] = _funnel(reports.funnel(user, {"model": reports.AIPL_MODEL,
                                                         "date": day, **scope}))
    return context


# --- Charts ---------------------------------------------------------------------------------
# Each chart's data, embedded with json_script and drawn by static/dashboard/charts.js (ECharts);
# labels come translated from here, so the script holds no words of its own.

DAILY_LINES = [("new_customers", gettext_lazy("New customers")),
               ("active_customers", gettext_lazy("Active customers")),
               ("deleted_us", gettext_lazy("Deleted us")),
               ("paid_orders", gettext_lazy("Paid orders"))]


def _daily_chart(overview: dict[str, Any]) -> dict[str, Any]:
    series = overview["series"]
    return {"dates": [day["date"] for day in series],
            "lines": [{"name": str(label), "data": [day[key] for day in series]}
                      for key, label in DAILY_LINES],
            "money": {"name": str(_("Revenue")),
                      "data": [float(day["revenue"]) for day in series]}}


def _funnel_chart(funnel: dict[str, Any] | None) -> dict[str, Any] | None:
    if not funnel or funnel["empty"]:
        return None
    return {"stages": [{"name": row["name"], "value": row["reach"], "color": row["color"]}
                       for row in funnel["rows"]]}


def _flows_chart(flows: dict[str, Any] | None, names: dict[str, str]) -> dict[str, Any] | None:
    """A Sankey of the moves: stages on the left are where customers came from, on the right
    where they went (two columns, so a move back and forth still draws)."""
    if not flows or not flows["flows"]:
        return None
    first = str(_("First placement"))
    nodes, links = {}, []
    for flow in flows["flows"]:
        source = f"from:{flow['from'] or ''}"
        target = f"to:{flow['to']}"
        nodes[source] = names.get(flow["from"], flow["from"]) if flow["from"] else first
        nodes[target] = names.get(flow["to"], flow["to"])
        links.append({"source": source, "target": target, "value": flow["count"]})
    return {"nodes": [{"name": key, "label": label} for key, label in nodes.items()],
            "links": links}


def _revenue_chart(revenue: dict[str, Any]) -> dict[str, Any] | None:
    """The change in revenue as a waterfall: the earlier range, each factor's part, this
    range."""
    if revenue["empty"]:
        return None
    steps = [{"name": str(factor["label"]), "value": float(factor["part"])}
             for factor in revenue["factors"]]
    return {"start": {"name": f"{revenue['previous']['start']} – {revenue['previous']['end']}",
                      "value": float(revenue["previous"]["revenue"])},
            "steps": steps,
            "end": {"name": f"{revenue['start']} – {revenue['end']}",
                    "value": float(revenue["revenue"])}}


def _channels_chart(channels: dict[str, Any]) -> dict[str, Any] | None:
    rows = [row for row in channels["results"] if row["acquired"]]
    if not rows:
        return None
    return {"channels": [row["name"] for row in rows],
            "bars": [{"name": str(_("Revenue")), "data": [float(r["revenue"]) for r in rows]},
                     {"name": str(_("Cost")),
                      "data": [float(r["cost"]) if r["cost"] is not None else None
                               for r in rows]}]}


def _cohorts_chart(cohorts: dict[str, Any]) -> dict[str, Any] | None:
    if cohorts["empty"]:
        return None
    months = list(cohorts["months"])
    return {"months": [str(_("M%(n)s") % {"n": m}) for m in months],
            "cohorts": [c["cohort"] for c in cohorts["rows"]],
            "cells": [[x, y, round(cell["rate"] * 100, 1)]
                      for y, cohort in enumerate(cohorts["rows"])
                      for x, cell in enumerate(cohort["cells"])
                      if cell is not None and cell["rate"] is not None]}


def _charts(context: dict[str, Any]) -> dict[str, Any]:
    names = {row["stage"]: row["name"] for row in (context["funnel"] or {}).get("rows", [])}
    return {"daily": _daily_chart(context["overview"]),
            "funnel": _funnel_chart(context["funnel"]),
            "aipl": _funnel_chart(context["aipl"]),
            "flows": _flows_chart(context["flows"], names),
            "revenue": _revenue_chart(context["revenue"]),
            "channels": _channels_chart(context["channels"]),
            "cohorts": _cohorts_chart(context["cohorts"])}


# --- The page ------------------------------------------------------------------------------

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
        "owner_choices": _owner_choices() if role in (access.ADMIN, access.ANALYST) else [],
        "model_choices": models,
        "error": "",
    }
    status = 200
    try:
        context.update(_reports(user, filters, model_key, reports.AIPL_MODEL in keys))
    except ApplicationError as exc:
        context["error"] = exc.message
        status = 400
    else:
        context["charts"] = _charts(context)
        # The range the figures are for (the defaults filled in).
        context["values"].update(start=context["overview"]["start"],
                                 end=context["overview"]["end"])
    return render(request, "metrics/dashboard.html", context, status=status)


def campaign_results_panel(request, campaign) -> str:
    """The results panel of a campaign's page (campaigns.extensions): its delivery funnel,
    skips by reason and, with a holdout, the uplift over the control group — the metrics API's
    `campaigns/` report for the day it started, within what the reader may see."""
    from django.template.loader import render_to_string

    from campaigns.models import Message

    if campaign.started_at is None:
        return ""
    day = timezone.localtime(campaign.started_at).date().isoformat()
    try:
        report = reports.campaign_performance(request.user, {"campaign": str(campaign.pk),
                                                             "start": day, "end": day},
                                              fresh=True)
    except ApplicationError as exc:
        return render_to_string("metrics/_campaign_results.html", {"error": exc.message},
                                request=request)
    row = report["results"][0] if report["results"] else None
    reasons = dict(Message.SkipReason.choices)
    skipped = ([{"reason": reasons.get(key, key), "count": n}
                for key, n in row["skipped_by_reason"].items()] if row else [])
    return render_to_string("metrics/_campaign_results.html", {
        "row": row, "skipped": skipped, "computed_at": report.get("computed_at")},
        request=request)


# --- The workbench (home) --------------------------------------------------------------------

RECENT_EVENTS = 12


@login_required
def workbench(request):
    """The home page: the user's figures for the last 30 days with their trend, what needs
    attention (paused steps and campaigns, churn warnings, failed sends, bulk jobs), the to-dos
    due, one funnel per active stage model and the latest activity. The figures are the
    Metrics page's own (the `overview` and `funnel` reports, same parameters, same cache), so
    a number never differs between the two pages."""
    from campaigns import selectors as outreach
    from crm import selectors as crm_selectors
    from crm import timeline

    user = request.user
    role = access.user_role(user)
    context: dict[str, Any] = {"error": ""}
    if role is None:
        return render(request, "metrics/workbench.html", context)
    try:
        overview = reports.overview(user, {})
        models = list(StageModel.objects.filter(active=True).order_by("order", "key"))
        colors: dict[str, dict[str, str]] = {}
        for model_key, key, color in Stage.objects.filter(model__in=models).values_list(
                "model__key", "key", "color"):
            colors.setdefault(model_key, {})[key] = color
        funnels = []
        for model in models:
            funnel = _funnel(reports.funnel(user, {"model": model.key}), colors.get(model.key, {}))
            funnels.append({"model": model, "chart": _funnel_chart(funnel), "rows": funnel["rows"],
                            "empty": funnel["empty"]})
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
