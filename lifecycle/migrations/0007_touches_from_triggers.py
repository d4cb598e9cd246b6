"""The customers' stages queue touches (crm 0019) for the other consumers — tag rules and the
segment index read stages — but not for lifecycle itself, which wrote them; a periodic run
reads every customer once a day (`last_full_evaluated_at`), the rest only those whose
conditions may have changed with time."""

from django.db import migrations, models

from core.db import customer_change_triggers


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for statement in customer_change_triggers("lifecycle_customerstage", "r.customer_id",
                                              own="lifecycle"):
        schema_editor.execute(statement, None)
    apps.get_model("crm", "TouchConsumer").objects.get_or_create(consumer="lifecycle")


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for event in ("insert", "update", "delete"):
            schema_editor.execute(f"DROP TRIGGER IF EXISTS crm_touch_{event} "
                                  "ON lifecycle_customerstage", None)


class Migration(migrations.Migration):

    dependencies = [
        ('crm', '0019_touches_from_triggers'),
        ('lifecycle', '0006_board_and_log_indexes'),
    ]

    operations = [
        migrations.AddField(
            model_name='stagemodel',
            name='last_full_evaluated_at',
            field=models.DateTimeField(blank=True, help_text='A periodic run reads every customer once a day; the others only those whose conditions may have changed with time (docs/DOMAIN.md).', null=True, verbose_name='last evaluated in full at'),
        ),
        migrations.RunPython(forwards, backwards),
    ]
