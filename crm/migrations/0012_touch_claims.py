"""The touch queue becomes per-consumer rows that consumers claim and delete (crm.hooks): a
cursor into one shared sequence skipped the touches of transactions that committed late.

Touches not yet read by a consumer (id above its cursor) are copied into that consumer's rows;
the consumers of this version that never ran get every touch."""

from django.db import migrations, models

CONSUMERS = ("tagging", "lifecycle")


def split_by_consumer(apps, schema_editor):
    cursors = apps.get_model("crm", "TouchConsumer")
    touch = apps.get_model("crm", "CustomerTouch")
    positions = dict(cursors.objects.values_list("consumer", "position"))
    for consumer in CONSUMERS:
        positions.setdefault(consumer, 0)
    table = schema_editor.quote_name(touch._meta.db_table)
    for consumer, position in positions.items():
        schema_editor.execute(
            f"INSERT INTO {table} (consumer, customer_id, at) SELECT %s, customer_id, at "
            f"FROM {table} WHERE consumer = '' AND id > %s ORDER BY id", [consumer, position])
    schema_editor.execute(f"DELETE FROM {table} WHERE consumer = ''")


class Migration(migrations.Migration):

    dependencies = [
        ("crm", "0011_event_idempotency_constraint"),
    ]

    operations = [
        migrations.RenameModel("TouchCursor", "TouchConsumer"),
        migrations.AddField(
            model_name="customertouch",
            name="consumer",
            field=models.CharField(default="", max_length=64, verbose_name="consumer"),
            preserve_default=False,
        ),
        migrations.RunPython(split_by_consumer, migrations.RunPython.noop),
        migrations.RemoveField(model_name="touchconsumer", name="position"),
        migrations.AlterField(
            model_name="touchconsumer",
            name="updated_at",
            field=models.DateTimeField(auto_now=True, verbose_name="last run"),
        ),
        migrations.AlterModelOptions(
            name="touchconsumer",
            options={"verbose_name": "touch consumer", "verbose_name_plural": "touch consumers"},
        ),
        migrations.AddIndex(
            model_name="customertouch",
            index=models.Index(fields=["consumer", "id"], name="crm_touch_consumer_id"),
        ),
    ]
