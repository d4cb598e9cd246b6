"""Set-based SQL the ORM cannot say in one statement (why each trick: docs/PERFORMANCE.md)."""

import io
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

from django.db import IntegrityError, connection, models, transaction


def raw_rows(sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[tuple]:
    """Run one raw statement; its rows (none for a statement that returns no rows)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params if params is not None else [])
        return cursor.fetchall() if cursor.description else []


def _columns(model: type[models.Model], fields: Iterable[str]) -> str:
    return ", ".join(connection.ops.quote_name(model._meta.get_field(f).column) for f in fields)


def insert_ignore_returning(
    model: type[models.Model],
    fields: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    returning: Sequence[str] = ("id",),
    batch_size: int = 1000,
) -> list[tuple]:
    """`INSERT … ON CONFLICT DO NOTHING RETURNING …` for many rows (PostgreSQL, SQLite ≥ 3.35):
    only the rows written come back, so the database, not a prior SELECT, decides what is new
    (idempotent under races)."""
    concrete = [model._meta.get_field(name) for name in fields]
    head = (f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} "
            f"({_columns(model, fields)}) VALUES ")
    tail = f" ON CONFLICT DO NOTHING RETURNING {_columns(model, returning)}"
    row_sql = "(" + ", ".join(["%s"] * len(concrete)) + ")"
    # SQLite allows at most 32766 bound parameters in one statement.
    per_batch = max(1, min(batch_size, 30000 // max(1, len(concrete))))
    out: list[tuple] = []
    rows = iter(rows)
    while batch := list(islice(rows, per_batch)):
        params = [f.get_db_prep_save(v, connection)
                  for row in batch for f, v in zip(concrete, row, strict=True)]
        with connection.cursor() as cursor:
            cursor.execute(head + ", ".join([row_sql] * len(batch)) + tail, params)
            out.extend(cursor.fetchall())
    return out


def insert_from_select(
    model: type[models.Model],
    fields: Sequence[str],
    select: models.QuerySet,
    *,
    returning: Sequence[str] = (),
) -> list[tuple]:
    """`INSERT INTO model (fields) SELECT … ON CONFLICT DO NOTHING [RETURNING …]` of a
    `values_list` queryset whose columns line up with `fields`; the rows never travel through
    Python."""
    sql, params = select.query.sql_with_params()
    # "WHERE 1=1" keeps SQLite from reading ON CONFLICT as part of the SELECT's join syntax.
    statement = (f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} "
                 f"({_columns(model, fields)}) SELECT * FROM ({sql}) AS src WHERE 1=1 "
                 f"ON CONFLICT DO NOTHING")
    if returning:
        statement += f" RETURNING {_columns(model, returning)}"
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if returning else []


def execute_insert_skipping_conflicts(statement: str, params: Sequence,
                                      conflict: str = "ON CONFLICT DO NOTHING"
                                      ) -> tuple[int, list[tuple]]:
    """Run an INSERT (containing `conflict` once) whose SELECT already leaves out the existing
    rows first without `conflict` (a third cheaper per row), in a savepoint; only if a racing
    writer makes it hit a unique constraint, run it as written. Returns (rowcount, rows)."""
    for sql in (statement.replace(f" {conflict}", "", 1), statement):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.rowcount, (cursor.fetchall() if cursor.description else [])
        except IntegrityError:
            if sql == statement:
                raise
    raise AssertionError("unreachable")


class Differs(models.Func):
    """`a IS DISTINCT FROM b` (NULL-safe "not equal") as a filter, so that an update writes
    only the rows whose value changes (SQLite spells it `IS NOT`)."""

    arg_joiner = " IS DISTINCT FROM "
    template = "(%(expressions)s)"
    output_field = models.BooleanField()
    conditional = True

    def as_sqlite(self, compiler, connection, **extra):
        return super().as_sql(compiler, connection, arg_joiner=" IS NOT ", **extra)


def pk_ranges(queryset: models.QuerySet, chunk_size: int) -> Iterator[tuple[int, int | None]]:
    """Ranges of `chunk_size` primary keys of the queryset: (exclusive low, inclusive high), the
    last with high None. Each bound is one index-only query."""
    low = 0
    while True:
        bound = list(queryset.filter(pk__gt=low).order_by("pk")
                     .values_list("pk", flat=True)[chunk_size - 1:chunk_size])
        high = bound[0] if bound else None
        yield low, high
        if high is None:
            return
        low = high


def in_pk_range(low: int, high: int | None, field: str = "pk") -> models.Q:
    """The rows of one of `pk_ranges`' ranges."""
    q = models.Q(**{f"{field}__gt": low})
    return q & models.Q(**{f"{field}__lte": high}) if high is not None else q


def delete_returning(queryset: models.QuerySet, returning: Sequence[str]) -> list[tuple]:
    """Delete the queryset's rows in one statement; the given columns of the rows this statement
    deleted (two workers deleting at once never both report the same row)."""
    meta = queryset.model._meta
    sql, params = queryset.values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {connection.ops.quote_name(meta.db_table)} "
                       f"WHERE {connection.ops.quote_name(meta.pk.column)} IN ({sql}) "
                       f"RETURNING {_columns(queryset.model, returning)}", params)
        return cursor.fetchall()


def _rows_source(meta, targets: Sequence[models.Field], chunk: list[tuple[Any, Sequence[Any]]]
                 ) -> tuple[str, list, str]:
    """The rows (pk, values of `targets`…) of `chunk` as a FROM source `v`, its parameters and
    the name pattern of its columns ("…{}", 1 the key, 2… the targets)."""
    rows = [[meta.pk.get_db_prep_value(key, connection) for key, _v in chunk],
            *([field.get_db_prep_save(values[i], connection) for _k, values in chunk]
              for i, field in enumerate(targets))]
    if connection.vendor == "postgresql":
        types = [meta.pk.rel_db_type(connection), *(f.db_type(connection) for f in targets)]
        arrays = ", ".join(f"%s::{kind}[]" for kind in types)
        names = ", ".join(f"c{i + 1}" for i in range(len(rows)))
        return f"UNNEST({arrays}) AS v({names})", rows, "v.c{}"
    # SQLite (≥ 3.33): a VALUES list; its columns are column1, column2, …
    row = "(" + ", ".join(["%s"] * len(rows)) + ")"
    return ("(VALUES " + ", ".join([row] * len(chunk)) + ") AS v",
            [value for each in zip(*rows, strict=True) for value in each], "v.column{}")


def _update_from_rows(model: type[models.Model], fields: Sequence[str],
                      values: dict[Any, Sequence[Any]], assign, *, also: dict[str, Any],
                      batch_size: int) -> int:
    """UPDATE … FROM the rows (pk, values…) in batches; `assign(column, value)` is the SQL a
    field's column is set to from its stored value and the row's."""
    meta = model._meta
    qn = connection.ops.quote_name
    targets = [meta.get_field(name) for name in fields]
    constants = [f"{qn(meta.get_field(name).column)} = %s" for name in also]
    constant_params = [meta.get_field(name).get_db_prep_save(value, connection)
                       for name, value in also.items()]
    items = list(values.items())
    updated = 0
    for start in range(0, len(items), batch_size):
        source, params, column = _rows_source(meta, targets, items[start:start + batch_size])
        sets = [f"{qn(field.column)} = {assign(f't.{qn(field.column)}', column.format(i + 2))}"
                for i, field in enumerate(targets)]
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {qn(meta.db_table)} AS t SET {', '.join(sets + constants)} "
                           f"FROM {source} WHERE t.{qn(meta.pk.column)} = {column.format(1)}",
                           [*constant_params, *params])
            updated += cursor.rowcount
    return updated


def update_to_later(model: type[models.Model], field: str, values: dict[Any, Any], *,
                    also: dict[str, Any] | None = None, batch_size: int = 5000) -> int:
    """Per primary key, set `field` to the later of its stored value and the given one, and the
    `also` fields to constants: one statement joining the (pk, value) pairs (a `CASE` would cost
    a comparison per pair for every row)."""
    later = "GREATEST" if connection.vendor == "postgresql" else "MAX"
    return _update_from_rows(
        model, [field], {key: (value,) for key, value in values.items()},
        lambda stored, new: f"{later}(COALESCE({stored}, {new}), {new})", also=also or {},
        batch_size=batch_size)


def update_from_values(model: type[models.Model], fields: Sequence[str],
                       values: dict[Any, Sequence[Any]], *, batch_size: int = 5000) -> int:
    """Per primary key, set `fields` to that key's values: one statement joining the rows
    (pk, values…), where `bulk_update` builds a CASE per field with a branch per row — in
    Python, most of a dispatcher batch's time."""
    return _update_from_rows(model, fields, values, lambda _stored, new: new, also={},
                             batch_size=batch_size)


# Below this many customers a transaction keeps the default work_mem (JIT still off).
HEAVY_MIN_ROWS = 20_000


def heavy_statements(rows: int | None = None) -> None:
    """Room for big hash joins and aggregates (`DB_HEAVY_WORK_MEM`) and no JIT for the rest of
    the current transaction (PostgreSQL, in a transaction; else a no-op): below that the planner
    re-runs a subquery per row, and JIT costs seconds per statement that runs once. `rows`, the
    customers it reads when known: below HEAVY_MIN_ROWS the default stays, where the planner
    probes an index for the few rows it needs instead of hashing a whole subquery."""
    if connection.vendor != "postgresql" or not connection.in_atomic_block:
        return
    from django.conf import settings

    work_mem = (settings.DB_HEAVY_WORK_MEM if rows is None or rows >= HEAVY_MIN_ROWS
                else "4MB")
    with connection.cursor() as cursor:
        # (JIT measured: 3.0 s of a 4.9 s chunk of a rule's evaluation.)
        cursor.execute("SELECT set_config('work_mem', %s, true), set_config('jit', 'off', true)",
                       [work_mem])


def materialize_ids(name: str, queryset: models.QuerySet, *, indexed: bool = True) -> int | None:
    """Store the primary keys a queryset selects in a temporary table `name` (column `id`, as
    `materialize_rows`), for later statements to join instead of evaluating the queryset again;
    the number of ids, or None where there are no such tables (SQLite), or none that would
    outlive the statement (outside a transaction: dropped at its commit)."""
    if connection.vendor != "postgresql" or not connection.in_atomic_block:
        return None
    return materialize_rows(name, queryset.order_by().values("pk"), ["id"], indexed=indexed)


def materialize_rows(name: str, rows: models.QuerySet | tuple[str, Sequence],
                     columns: Sequence[str], *, keep: bool = False, key: int = 1,
                     indexed: bool = True) -> int:
    """Store what a values() queryset or an `(sql, params)` statement selects in a temporary
    table `name` with these column names, keyed by the first `key` of them and analyzed (unless
    not `indexed`: a table read once). Dropped at COMMIT or, with `keep`, by the caller.
    PostgreSQL, in a transaction; the number of rows."""
    select, params = rows if isinstance(rows, tuple) else rows.query.sql_with_params()
    qn = connection.ops.quote_name
    table = qn(name)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
        cursor.execute(f"CREATE TEMPORARY TABLE {table} {'' if keep else 'ON COMMIT DROP'} AS "
                       f"SELECT * FROM ({select}) AS s({', '.join(map(qn, columns))})", params)
        count = cursor.rowcount
        if indexed:
            cursor.execute(f"ALTER TABLE {table} ADD PRIMARY KEY "
                           f"({', '.join(map(qn, columns[:key]))})")
            cursor.execute(f"ANALYZE {table}")
    return count


# The wire type of each type; a timestamptz travels as int64 microseconds since 2000-01-01 UTC.
_COPY_TYPES = {"bool": "?", "int2": "i2", "int4": "i4", "int8": "i8", "timestamptz": "i8"}


def copy_columns(sql: str, params: Sequence[Any], types: Sequence[str]) -> list:
    """A SELECT's columns as numpy arrays through `COPY … TO STDOUT (FORMAT BINARY)`, read as
    one structured array (PostgreSQL). It must give exactly `types` (bool, int2, int4, int8,
    timestamptz as int64 µs since 2000) and never NULL (COALESCE; '-infinity')."""
    import numpy as np

    fields = [("n", ">i2")]
    for i, kind in enumerate(types):
        fields += [(f"l{i}", ">i4"), (f"c{i}", ">" + _COPY_TYPES[kind])]
    with connection.cursor() as cursor:
        buffer = io.BytesIO()
        cursor.copy_expert(f"COPY ({cursor.mogrify(sql, params).decode()}) "
                           "TO STDOUT (FORMAT BINARY)", buffer)
    data = buffer.getbuffer()
    if bytes(data[:11]) != b"PGCOPY\n\xff\r\n\x00":
        raise ValueError("not a binary COPY stream")
    start = 19 + int.from_bytes(data[15:19], "big")     # after the header extension
    try:
        rows = np.frombuffer(data[start:len(data) - 2], dtype=np.dtype(fields))
        fits = (rows["n"] == len(types)).all() and all(
            (rows[f"l{i}"] == np.dtype(_COPY_TYPES[kind]).itemsize).all()
            for i, kind in enumerate(types))
    except ValueError:      # a NULL (no bytes) or a wider value: rows of unequal width
        fits = False
    if not fits:
        raise ValueError(f"the SELECT does not give {list(types)} without NULL: COALESCE and "
                         "cast its columns")
    return [rows[f"c{i}"].astype(_COPY_TYPES[kind]) for i, kind in enumerate(types)]


def planner_statistics_refresh(*, scheduled: bool = False) -> str | None:
    """Refresh the planner's statistics (ANALYZE); what ran, or None. SQLite keeps none until
    told (docs/PERFORMANCE.md, "planner statistics"); PostgreSQL's autovacuum keeps its own, so
    a `scheduled` run skips it."""
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            # Approximate statistics from a sample of each index: milliseconds, not a scan.
            cursor.execute("PRAGMA analysis_limit=1000")
            cursor.execute("ANALYZE")
        return "ANALYZE (SQLite)"
    if scheduled:
        return None
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return f"ANALYZE ({connection.vendor})"


def customer_change_triggers(table: str, customer: str, *, own: str = "") -> list[str]:
    """DDL (PostgreSQL) of statement triggers queueing a touch (crm.hooks) of the customers whose
    rows in `table` were written, from origin `own` (crm.hooks.touch_skips); `customer` is the
    customer id of a transition-table row (alias r; an update's new rows name it)."""
    quoted = "'" + customer.replace("'", "''") + "'"
    return [f"CREATE TRIGGER crm_touch_{event.lower()} AFTER {event} ON {table} "
            f"REFERENCING {rows} TABLE AS changed_rows FOR EACH STATEMENT "
            f"EXECUTE FUNCTION crm_customers_touched({quoted}, '{own}')"
            for event, rows in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD"))]
