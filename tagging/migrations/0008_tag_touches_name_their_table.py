"""The customers' tags' touches carry the origin "tagging", so that a consumer none of whose
conditions read tags may skip them (crm.hooks.touch_skips): the stage models, when no stage's
condition has a `tag` leaf. The tag rules still read them (a rule may read tags)."""

from django.db import migrations

from core.db import customer_change_triggers

TABLE = "tagging_customertag"


def _replace(schema_editor, own: str) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for event in ("insert", "update", "delete"):
        schema_editor.execute(f"DROP TRIGGER IF EXISTS crm_touch_{event} ON {TABLE}", None)
    for statement in customer_change_triggers(TABLE, "r.customer_id", own=own):
        schema_editor.execute(statement, None)


def forwards(apps, schema_editor):
    _replace(schema_editor, "tagging")


def backwards(apps, schema_editor):
    _replace(schema_editor, "")


class Migration(migrations.Migration):

    dependencies = [
        ("crm", "0020_one_touch_for_every_consumer"),
        ("tagging", "0007_segment_index_updates"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
