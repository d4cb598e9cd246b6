"""The channel cells now hold a cell of the customers who joined outside the channel days (the
count of each channel's customers to date): cells stored without it are not used until the
next refresh rebuilds them (the next frequent refresh runs the nightly job for them)."""

from django.db import migrations


def forget_channel_cells(apps, schema_editor):
    apps.get_model("metrics", "FactsTable").objects.update(channels_as_of=None)


class Migration(migrations.Migration):
    dependencies = [("metrics", "0014_drop_standard_range_spell_cells")]
    operations = [migrations.RunPython(forget_channel_cells, migrations.RunPython.noop)]
