"""The KPIs' one definition: name, formula and where its figures are in the overview, read by
the dashboard's cards, the API's description of `metrics/overview/` and docs/METRICS.md's table
(`manage.py kpi_reference --write`); docs/DOMAIN.md says why these KPIs."""

from __future__ import annotations

from dataclasses import dataclass

from django.utils.functional import lazy
from django.utils.translation import gettext_lazy as _


@dataclass(frozen=True)
class Kpi:
    key: str
    section: str            # where in the overview: a relationship stage, or "lifecycle"
    numerator: str          # the figures of the section the rate divides
    denominator: str
    label: str
    chinese: str            # the seeds' own term
    formula: str            # the rate in words, exactly as computed
    multiplier: bool = False    # a ratio that may exceed 1 (shown as ×, not %)


KPIS: tuple[Kpi, ...] = (
    Kpi("friend_loss_rate", "acquaintance", "deleted_within_7_days", "joined",
        _("Friend loss rate"), "好友流失率",
        _("Customers who joined in the range and deleted us (friend_deleted) within 7 days of "
          "joining ÷ customers who joined in the range.")),
    Kpi("group_join_rate", "acquaintance", "joined_group", "joined",
        _("Group join rate"), "进群率",
        _("Customers who joined in the range and joined a group after joining and before the "
          "range ended ÷ customers who joined in the range.")),
    Kpi("interaction_rate", "interaction", "interacting", "customers",
        _("Interaction rate"), "互动率",
        _("Customers in the private domain during the range (joined by its end, not gone "
          "before its start) with an inbound event in it ÷ customers in the domain.")),
    Kpi("retention_rate", "interaction", "retained", "active_previous",
        _("Retention"), "留存",
        _("Customers active (an inbound event or a paid order) in both the range and the "
          "preceding range of equal length ÷ customers active in the preceding range.")),
    Kpi("conversion_rate", "purchase", "first_time_buyers", "never_bought_before",
        _("Conversion"), "转化率",
        _("Customers in the domain whose first paid order falls in the range ÷ customers in "
          "the domain without a paid order before it.")),
    Kpi("repurchase_rate", "purchase", "repeat_buyers", "buyers",
        _("Repurchase"), "复购率",
        _("Buyers with 2 or more paid orders in the range ÷ buyers in the range.")),
    Kpi("fission_multiplier", "alliance", "referred_customers", "referrers",
        _("Fission multiplier"), "裂变倍率",
        _("Customers who joined in the range through a referral ÷ distinct referrers among "
          "them."), multiplier=True),
    Kpi("churn_rate", "lifecycle", "entered", "not_in_stage_at_start",
        _("Churn"), "流失率",
        _("Customers moving into the value lifecycle's churn stage in the range (a first "
          "placement there is not a move) ÷ customers with a stage in it other than churn at "
          "the range's start.")),
    Kpi("win_back_rate", "lifecycle", "win_backs", "in_stages_at_start",
        _("Win-back"), "回流率",
        _("Win-back transitions in the range (out of dormant or churn into a stage that is "
          "not) ÷ customers in dormant or churn at the range's start.")),
)
BY_KEY = {kpi.key: kpi for kpi in KPIS}
LIFECYCLE_PARTS = {"churn_rate": "churn", "win_back_rate": "win_back"}  # in `lifecycle`


def figures(kpi: Kpi, overview: dict) -> tuple[float | None, int | None, int | None]:
    """The KPI's (rate, numerator, denominator) in an `overview_report` answer; Nones where the
    overview has no such part (no value lifecycle)."""
    if kpi.section == "lifecycle":
        part = (overview.get("lifecycle") or {}).get(LIFECYCLE_PARTS[kpi.key])
        if not part:
            return None, None, None
        return part["rate"], part[kpi.numerator], part[kpi.denominator]
    part = overview["relationship"][kpi.section]
    return part[kpi.key], part[kpi.numerator], part[kpi.denominator]


# "key = formula …" of every KPI, in the language of the moment.
formulas = lazy(lambda: " ".join(f"{kpi.key} = {kpi.formula}" for kpi in KPIS), str)


def reference() -> str:
    """The table of docs/METRICS.md (call in English, the document's language)."""
    rows = [f"| {kpi.section} | `{kpi.key}` ({kpi.chinese}) | {kpi.formula} "
            f"(`{kpi.numerator}` ÷ `{kpi.denominator}`) |" for kpi in KPIS]
    return "\n".join(["| section | KPI | formula (numerator ÷ denominator) |", "|---|---|---|",
                      *rows]) + "\n"
