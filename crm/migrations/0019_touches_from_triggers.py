"""Touches written by the database: statement triggers on the tables whose rows the condition
language reads queue a touch of the changed customers for every consumer (crm.hooks), so that
rules, stage models and the segment index hear of every change, whoever made it."""

from django.db import migrations

from core.db import customer_change_triggers

FUNCTION = """
CREATE OR REPLACE FUNCTION crm_customers_touched() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- TG_ARGV[0]: the customer id of a row of the transition table `changed_rows` (alias r);
    -- TG_ARGV[1]: the consumer that wrote the rows itself, not told ('' for none).
    EXECUTE format('INSERT INTO crm_customertouch (consumer, customer_id, at) '
                   'SELECT c.consumer, s.x, now() '
                   'FROM (SELECT DISTINCT %s AS x FROM changed_rows r) s '
                   'CROSS JOIN crm_touchconsumer c WHERE s.x IS NOT NULL AND c.consumer <> %L',
                   TG_ARGV[0], TG_ARGV[1]);
    RETURN NULL;
END $$
"""
TABLES = [("crm_customer", "r.id"), ("crm_order", "r.customer_id"),
          ("crm_orderitem", "(SELECT o.customer_id FROM crm_order o WHERE o.id = r.order_id)"),
          ("crm_groupmembership", "r.customer_id"), ("crm_eventcount", "r.customer_id")]


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(FUNCTION, None)
    for table, customer in TABLES:
        for statement in customer_change_triggers(table, customer):
            schema_editor.execute(statement, None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP FUNCTION IF EXISTS crm_customers_touched() CASCADE", None)


class Migration(migrations.Migration):

    dependencies = [("crm", "0018_export_full_phone")]

    operations = [migrations.RunPython(forwards, backwards)]
