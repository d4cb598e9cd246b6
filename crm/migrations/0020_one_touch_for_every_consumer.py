"""One touch per changed customer and statement, read by every consumer from where it stands
(crm.hooks), instead of one row per customer and consumer, each claimed and deleted: a third of
the rows for ingest to write. The triggers of 0019 (and tagging 0007, lifecycle 0007) keep
their arguments; their function now writes the new rows."""

from django.db import migrations, models

FUNCTION = """
CREATE OR REPLACE FUNCTION crm_customers_touched() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- TG_ARGV[0]: the customer id of a row of the transition table `changed_rows` (alias r);
    -- TG_ARGV[1]: the consumer that wrote the rows itself and is not told ('' for none).
    EXECUTE format('INSERT INTO crm_customertouch (customer_id, txid, origin, at) '
                   'SELECT s.x, t.id, %L, now() '
                   'FROM (SELECT DISTINCT %s AS x FROM changed_rows r) s, '
                   '(SELECT pg_current_xact_id()::text::bigint AS id) t '
                   'WHERE s.x IS NOT NULL',
                   TG_ARGV[1], TG_ARGV[0]);
    RETURN NULL;
END $$
"""

OLD_FUNCTION = """
CREATE OR REPLACE FUNCTION crm_customers_touched() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('INSERT INTO crm_customertouch (consumer, customer_id, at) '
                   'SELECT c.consumer, s.x, now() '
                   'FROM (SELECT DISTINCT %s AS x FROM changed_rows r) s '
                   'CROSS JOIN crm_touchconsumer c WHERE s.x IS NOT NULL AND c.consumer <> %L',
                   TG_ARGV[0], TG_ARGV[1]);
    RETURN NULL;
END $$
"""


def forwards(apps, schema_editor):
    # The waiting touches, one per customer, read by every consumer from the start.
    if schema_editor.connection.vendor != "postgresql":
        schema_editor.execute("DELETE FROM crm_customertouch WHERE id NOT IN "
                              "(SELECT min(id) FROM crm_customertouch GROUP BY customer_id)")
    else:
        schema_editor.execute("DELETE FROM crm_customertouch a USING crm_customertouch b "
                              "WHERE a.customer_id = b.customer_id AND a.id > b.id", None)
        schema_editor.execute("UPDATE crm_customertouch "
                              "SET txid = pg_current_xact_id()::text::bigint", None)
        schema_editor.execute(FUNCTION, None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DELETE FROM crm_customertouch", None)
        schema_editor.execute(OLD_FUNCTION, None)


class Migration(migrations.Migration):

    dependencies = [("crm", "0019_touches_from_triggers")]

    operations = [
        migrations.RemoveIndex(model_name="customertouch", name="crm_touch_consumer_id"),
        migrations.AddField(
            model_name="customertouch", name="txid",
            field=models.BigIntegerField(blank=True, null=True, verbose_name="transaction")),
        migrations.AddField(
            model_name="customertouch", name="origin",
            field=models.CharField(blank=True, default="", max_length=64,
                                   verbose_name="written by")),
        migrations.AddField(
            model_name="touchconsumer", name="position",
            field=models.TextField(blank=True, default="", verbose_name="position")),
        migrations.RunPython(forwards, backwards),
        migrations.RemoveField(model_name="customertouch", name="consumer"),
        migrations.AddIndex(model_name="customertouch",
                            index=models.Index(fields=["txid"], name="crm_touch_txid")),
    ]
