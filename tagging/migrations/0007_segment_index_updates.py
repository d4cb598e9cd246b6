"""Segment index updates: a build may re-read only the customers changed since the last full
build (`base`). It hears of them as the touches of consumer `segment_index`, which the
database's triggers write (crm 0019; the customer tags' own here). A scheduled tag rule run
reads every customer once a day (`last_full_run_at`), the rest only those whose condition may
have changed with time."""

import django.db.models.deletion
from django.db import migrations, models

from core.db import customer_change_triggers


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for statement in customer_change_triggers("tagging_customertag", "r.customer_id"):
        schema_editor.execute(statement, None)
    consumers = apps.get_model("crm", "TouchConsumer")
    for name in ("tagging", "segment_index"):
        consumers.objects.get_or_create(consumer=name)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for event in ("insert", "update", "delete"):
            schema_editor.execute(f"DROP TRIGGER IF EXISTS crm_touch_{event} "
                                  "ON tagging_customertag", None)


class Migration(migrations.Migration):

    dependencies = [
        ('crm', '0019_touches_from_triggers'),
        ('tagging', '0006_segment_index'),
    ]

    operations = [
        migrations.AddField(
            model_name='segmentindex',
            name='base',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='updates', to='tagging.segmentindex', verbose_name='full build'),
        ),
        migrations.AddField(
            model_name='segmentindex',
            name='changed',
            field=models.PositiveIntegerField(default=0, help_text='An update: the customers changed since its full build, read again.', verbose_name='customers re-read'),
        ),
        migrations.AddField(
            model_name='segmentindex',
            name='signature',
            field=models.CharField(blank=True, help_text='What the parts hold (stage models, event types); another shape takes a full build.', max_length=500, verbose_name='shape'),
        ),
        migrations.AddField(
            model_name='tagrule',
            name='last_full_run_at',
            field=models.DateTimeField(blank=True, help_text='A scheduled run reads every customer once a day; the others only those whose condition may have changed with time (docs/DOMAIN.md).', null=True, verbose_name='last run in full at'),
        ),
        migrations.RunPython(forwards, backwards),
    ]
