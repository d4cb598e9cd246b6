"""The three built-in stage models of DESIGN §2 — decision journey (seed 000), value lifecycle
(seed 001) and AIPL (seed 003) — as editable data. Thresholds live in each model and the stage
conditions refer to them, so no number is in code."""

from django.db import migrations

INBOUND = ["message_in", "moments_interaction", "link_clicked", "coupon_redeemed",
           "survey_answered"]
PAID_SINCE_JOINING = {"field": "order", "op": "count_gte", "value": 1, "since_joined": True}


def silent_for(days_threshold):
    """last_active_at (or joined_at when there is none) at least N days ago."""
    days = {"threshold": days_threshold}
    return {"any": [
        {"field": "last_active_at", "op": "older_than_days", "value": days},
        {"all": [{"field": "last_active_at", "op": "is_null", "value": True},
                 {"field": "joined_at", "op": "older_than_days", "value": days}]},
    ]}


MODELS = [
    {
        "key": "journey", "name": "决策旅程", "order": 0, "monotonic": True,
        "description": "Decision journey (seed 000): interest → trust → purchase → advocacy. "
                       "Only what happens after joining counts; customers only move forward.",
        "thresholds": {"trust_interactions": 3, "advocacy_referrals": 1},
        "stages": [
            ("interest", "兴趣", 0, 100, "#60a5fa", None, False),
            ("trust", "信任", 1, 30, "#34d399", {"any": [
                {"field": "group", "op": "in", "value": [], "ever": True, "since_joined": True},
                {"field": "event", "type": INBOUND, "op": "count_gte",
                 "value": {"threshold": "trust_interactions"}, "since_joined": True},
            ]}, False),
            ("purchase", "购买", 2, 20, "#f59e0b", PAID_SINCE_JOINING, False),
            ("advocacy", "口碑", 3, 10, "#a855f7", {"all": [
                PAID_SINCE_JOINING,
                {"field": "event", "type": "referral", "op": "count_gte",
                 "value": {"threshold": "advocacy_referrals"}, "since_joined": True},
            ]}, False),
        ],
    },
    {
        "key": "value", "name": "价值生命周期", "order": 1, "monotonic": False,
        "description": "Value lifecycle (seed 001): intro → growth → mature → dormant → churn. "
                       "Dormant and silent-churned customers who come back are a win-back (回流).",
        "thresholds": {"mature_orders": 3, "mature_window_days": 180, "dormant_days": 30,
                       "churn_days": 90},
        "stages": [
            ("intro", "引入期", 0, 100, "#60a5fa", None, False),
            ("growth", "成长期", 1, 40, "#34d399", PAID_SINCE_JOINING, False),
            ("mature", "成熟期", 2, 30, "#16a34a", {
                "field": "order", "op": "count_gte", "value": {"threshold": "mature_orders"},
                "within_days": {"threshold": "mature_window_days"}, "since_joined": True},
             False),
            ("dormant", "休眠期", 3, 20, "#f59e0b", silent_for("dormant_days"), True),
            ("churn", "流失期", 4, 10, "#dc2626", {"any": [
                {"field": "status", "op": "eq", "value": "deleted_us"},
                silent_for("churn_days"),
            ]}, True),
        ],
    },
    {
        "key": "aipl", "name": "AIPL", "order": 2, "monotonic": False,
        "description": "AIPL (seed 003): awareness (a friend) → interest (in a group now) → "
                       "purchase (a paid order) → loyalty (lifetime spend at the threshold).",
        "thresholds": {"loyalty_spend": 2000},
        "stages": [
            ("awareness", "认知 A", 0, 100, "#60a5fa", None, False),
            ("interest", "兴趣 I", 1, 30, "#34d399", {"field": "group", "op": "in", "value": []},
             False),
            ("purchase", "购买 P", 2, 20, "#f59e0b",
             {"field": "order", "op": "count_gte", "value": 1}, False),
            ("loyalty", "忠诚 L", 3, 10, "#a855f7",
             {"field": "total_spent", "op": "gte", "value": {"threshold": "loyalty_spend"}},
             False),
        ],
    },
]


def create(apps, schema_editor):
    StageModel = apps.get_model("lifecycle", "StageModel")
    Stage = apps.get_model("lifecycle", "Stage")
    for spec in MODELS:
        model, created = StageModel.objects.get_or_create(key=spec["key"], defaults={
            "name": spec["name"], "order": spec["order"], "monotonic": spec["monotonic"],
            "description": spec["description"], "thresholds": spec["thresholds"],
            "built_in": True, "lock_days": 7, "interval_minutes": 15})
        if not created:
            continue
        for key, name, position, precedence, color, condition, win_back in spec["stages"]:
            Stage.objects.create(model=model, key=key, name=name, position=position,
                                 precedence=precedence, color=color, condition=condition,
                                 win_back_from=win_back)


def drop(apps, schema_editor):
    apps.get_model("lifecycle", "StageModel").objects.filter(
        key__in=[m["key"] for m in MODELS]).delete()


class Migration(migrations.Migration):
    dependencies = [("lifecycle", "0001_initial")]
    operations = [migrations.RunPython(create, drop)]
