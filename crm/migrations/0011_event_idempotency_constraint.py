# The events' idempotency key: unique by a named constraint instead of `unique=True`, which on
# PostgreSQL also kept a `varchar_pattern_ops` index for LIKE that nothing uses. On PostgreSQL
# the existing unique index is kept and renamed (no rebuild over millions of events) and the
# LIKE index dropped; elsewhere the schema editor does the usual.

from django.db import migrations, models

NAME = "crm_event_idempotency_once"
OLD_FIELD = models.CharField(max_length=200, unique=True, verbose_name="idempotency key")
NEW_FIELD = models.CharField(max_length=200, verbose_name="idempotency key")
CONSTRAINT = models.UniqueConstraint(fields=("idempotency_key",), name=NAME)


def _fields(Event) -> tuple[models.Field, models.Field]:
    """The key's field before and after, bound to the historical model."""
    old, new = OLD_FIELD.clone(), NEW_FIELD.clone()
    for field in (old, new):
        field.set_attributes_from_name("idempotency_key")
        field.model = Event
    return old, new


def forwards(apps, schema_editor):
    Event = apps.get_model("crm", "Event")
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        old, new = _fields(Event)
        schema_editor.alter_field(Event, old, new)
        schema_editor.add_constraint(Event, CONSTRAINT)
        return
    table = Event._meta.db_table
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, table)
    unique = [name for name, c in found.items()
              if c["columns"] == ["idempotency_key"] and c["unique"]]
    like = [name for name, c in found.items()
            if c["columns"] == ["idempotency_key"] and c["index"] and not c["unique"]
            and name.endswith("_like")]
    quote = schema_editor.quote_name
    for name in like:
        schema_editor.execute(f"DROP INDEX {quote(name)}")
    if unique:
        schema_editor.execute(f"ALTER TABLE {quote(table)} RENAME CONSTRAINT "
                              f"{quote(unique[0])} TO {quote(NAME)}")
        for name in unique[1:]:
            schema_editor.execute(f"ALTER TABLE {quote(table)} DROP CONSTRAINT {quote(name)}")
    else:
        schema_editor.add_constraint(Event, CONSTRAINT)


def backwards(apps, schema_editor):
    Event = apps.get_model("crm", "Event")
    schema_editor.remove_constraint(Event, CONSTRAINT)
    old, new = _fields(Event)
    schema_editor.alter_field(Event, new, old)


class Migration(migrations.Migration):

    dependencies = [
        ("crm", "0010_metrics_bitmap_indexes"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(model_name="event", name="idempotency_key",
                                      field=NEW_FIELD.clone()),
                migrations.AddConstraint(model_name="event", constraint=CONSTRAINT),
            ],
            database_operations=[migrations.RunPython(forwards, backwards)],
        ),
    ]
