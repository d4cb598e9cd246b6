"""The value layers of seed 001 (新客户 / 活跃客户 / 高价值客户 / 潜在流失客户), built in as an
exclusive tag group whose rules are ordinary, editable tag rules."""

from django.db import migrations

LAYERS = [
    # key, name, colour, priority, condition, description
    ("high_value", "高价值客户", "#b45309", 10,
     {"field": "total_spent", "op": "gte", "value": 2000},
     "Lifetime paid spend at or above 2000 CNY: one-to-one service, regular follow-up."),
    ("at_risk", "潜在流失客户", "#dc2626", 20,
     {"field": "last_active_at", "op": "older_than_days", "value": 21},
     "Was active, silent for 21 days or more: find out why, win back with care or offers."),
    ("new", "新客户", "#2563eb", 30,
     {"field": "joined_at", "op": "within_days", "value": 14},
     "Joined in the last 14 days: first experience, newcomer benefits, guidance."),
    ("active", "活跃客户", "#16a34a", 40,
     {"field": "last_active_at", "op": "within_days", "value": 30},
     "Interaction or paid order in the last 30 days: personalised recommendations."),
]


def create(apps, schema_editor):
    TagGroup = apps.get_model("tagging", "TagGroup")
    Tag = apps.get_model("tagging", "Tag")
    TagRule = apps.get_model("tagging", "TagRule")
    group, _ = TagGroup.objects.get_or_create(
        key="value_layer",
        defaults={"name": "价值分层", "exclusive": True, "order": 0,
                  "description": "Value layers (seed 001): each customer is in at most one."})
    for order, (key, name, color, priority, condition, description) in enumerate(LAYERS):
        tag, _ = Tag.objects.get_or_create(group=group, key=key, defaults={
            "name": name, "color": color, "order": order, "description": description})
        TagRule.objects.get_or_create(tag=tag, defaults={
            "name": f"价值分层：{name}", "condition": condition, "mode": "sync",
            "priority": priority, "interval_minutes": 60, "active": True})


def drop(apps, schema_editor):
    apps.get_model("tagging", "TagGroup").objects.filter(key="value_layer").delete()


class Migration(migrations.Migration):
    dependencies = [("tagging", "0001_initial")]
    operations = [migrations.RunPython(create, drop)]
