"""Set-based SQL the ORM cannot say in one statement."""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from django.db import IntegrityError, connection, models, transaction


def raw_rows(sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[tuple]:
    """Run one raw statement; its rows (none for a statement that returns no rows)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params if params is not None else [])
        return cursor.fetchall() if cursor.description else []


def insert_ignore_returning(
    model: type[models.Model],
    fields: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    returning: Sequence[str] = ("id",),
    batch_size: int = 1000,
) -> list[tuple]:
    """`INSERT … ON CONFLICT DO NOTHING RETURNING …` for many rows at once.

    Rows that hit any unique constraint (including one inserted by a concurrent transaction a
    moment ago) are skipped, and only the rows actually written come back. That is what makes
    ingestion idempotent under races: the database, not a prior SELECT, decides what is new.
    Works on PostgreSQL and SQLite (≥ 3.35).
    """
    meta = model._meta
    concrete = [meta.get_field(name) for name in fields]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in concrete)
    ret = ", ".join(connection.ops.quote_name(meta.get_field(name).column) for name in returning)
    table = connection.ops.quote_name(meta.db_table)
    row_sql = "(" + ", ".join(["%s"] * len(concrete)) + ")"
    out: list[tuple] = []
    batch: list[Sequence[Any]] = []

    def flush() -> None:
        if not batch:
            return
        params: list[Any] = []
        for row in batch:
            params.extend(f.get_db_prep_save(v, connection) for f, v in zip(concrete, row, strict=True))
        sql = (
            f"INSERT INTO {table} ({columns}) VALUES {', '.join([row_sql] * len(batch))} "
            f"ON CONFLICT DO NOTHING RETURNING {ret}"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            out.extend(cursor.fetchall())
        batch.clear()

    # SQLite allows at most 32766 bound parameters in one statement.
    per_batch = max(1, min(batch_size, 30000 // max(1, len(concrete))))
    for row in rows:
        batch.append(row)
        if len(batch) >= per_batch:
            flush()
    flush()
    return out


def insert_from_select(
    model: type[models.Model],
    fields: Sequence[str],
    select: models.QuerySet,
    *,
    returning: Sequence[str] = (),
) -> list[tuple]:
    """`INSERT INTO model (fields) SELECT … ON CONFLICT DO NOTHING [RETURNING …]`.

    `select` is a `values_list(...)` queryset whose columns line up with `fields` (constants via
    `annotate(x=Value(...))`). The rows never travel through Python; conflicts with any unique
    constraint are skipped, so concurrent writers cannot duplicate a row.
    """
    meta = model._meta
    columns = ", ".join(connection.ops.quote_name(meta.get_field(f).column) for f in fields)
    table = connection.ops.quote_name(meta.db_table)
    sql, params = select.query.sql_with_params()
    # "WHERE 1=1" keeps SQLite from reading ON CONFLICT as part of the SELECT's join syntax.
    statement = (f"INSERT INTO {table} ({columns}) SELECT * FROM ({sql}) AS src WHERE 1=1 "
                 f"ON CONFLICT DO NOTHING")
    if returning:
        statement += " RETURNING " + ", ".join(
            connection.ops.quote_name(meta.get_field(f).column) for f in returning)
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if returning else []


def execute_insert_skipping_conflicts(statement: str, params: Sequence,
                                      conflict: str = "ON CONFLICT DO NOTHING"
                                      ) -> tuple[int, list[tuple]]:
    """Run an INSERT whose SELECT already leaves out the rows that exist, first without its
    `conflict` clause (a plain INSERT costs a third less per row than one with ON CONFLICT at
    hundreds of thousands of rows), in a savepoint; only when a writer racing this one made it
    hit a unique constraint, run it again as written, skipping the conflicts. `statement`
    contains `conflict` once. Returns (rowcount, the rows it returns). Call in a transaction."""
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
    """`a IS DISTINCT FROM b` — NULL-safe "not equal" — as a filter: an update that writes only
    the rows whose value changes (SQLite spells it `IS NOT`)."""

    arg_joiner = " IS DISTINCT FROM "
    template = "(%(expressions)s)"
    output_field = models.BooleanField()
    conditional = True

    def as_sqlite(self, compiler, connection, **extra):
        return super().as_sql(compiler, connection, arg_joiner=" IS NOT ", **extra)


def pk_ranges(queryset: models.QuerySet, chunk_size: int) -> Iterator[tuple[int, int | None]]:
    """Split the queryset's rows into ranges of `chunk_size` primary keys: (exclusive low,
    inclusive high), the last with high None. Each bound is one index-only query."""
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
    """Delete the rows of `queryset` in one statement and answer the given columns of each.

    Only what this statement deleted comes back, so two workers deleting at once never both
    report (and record) the same row.
    """
    meta = queryset.model._meta
    table = connection.ops.quote_name(meta.db_table)
    pk = connection.ops.quote_name(meta.pk.column)
    sql, params = queryset.values("pk").query.sql_with_params()
    cols = ", ".join(connection.ops.quote_name(meta.get_field(f).column) for f in returning)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE {pk} IN ({sql}) RETURNING {cols}", params)
        return cursor.fetchall()


def update_to_later(
    model: type[models.Model],
    field: str,
    values: dict[Any, Any],
    *,
    also: dict[str, Any] | None = None,
    batch_size: int = 5000,
) -> int:
    """Per primary key, set `field` to the later of its stored value and the given one (the
    given one where nothing is stored), and the `also` fields to constants; one statement
    joining the (pk, value) pairs, where a `CASE WHEN pk = … THEN …` would grow with the batch
    and cost the ORM and the database a comparison per pair for every row.
    """
    if not values:
        return 0
    meta = model._meta
    qn = connection.ops.quote_name
    target = meta.get_field(field)
    table, pk, col = qn(meta.db_table), qn(meta.pk.column), qn(target.column)
    also = also or {}
    sets = [f"{qn(meta.get_field(name).column)} = %s" for name in also]
    set_params = [meta.get_field(name).get_db_prep_save(value, connection)
                  for name, value in also.items()]
    items = list(values.items())
    updated = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        keys = [meta.pk.get_db_prep_value(k, connection) for k, _v in chunk]
        new = [target.get_db_prep_value(v, connection) for _k, v in chunk]
        if connection.vendor == "postgresql":
            later = f"GREATEST(COALESCE(t.{col}, v.val), v.val)"
            source = (f"UNNEST(%s::{meta.pk.rel_db_type(connection)}[], "
                      f"%s::{target.db_type(connection)}[]) AS v(key, val)")
            params = [keys, new]
        else:   # SQLite (≥ 3.33): a VALUES list; its columns are column1, column2
            later = f"MAX(COALESCE(t.{col}, v.column2), v.column2)"
            source = "(VALUES " + ", ".join(["(%s, %s)"] * len(chunk)) + ") AS v"
            params = [p for pair in zip(keys, new, strict=True) for p in pair]
        key = "v.key" if connection.vendor == "postgresql" else "v.column1"
        sql = (f"UPDATE {table} AS t SET {', '.join([f'{col} = {later}', *sets])} "
               f"FROM {source} WHERE t.{pk} = {key}")
        with connection.cursor() as cursor:
            cursor.execute(sql, [*set_params, *params])
            updated += cursor.rowcount
    return updated


# Below this many customers a transaction keeps the default work_mem (JIT still off).
HEAVY_MIN_ROWS = 20_000


def heavy_statements(rows: int | None = None) -> None:
    """Give the rest of the current transaction room for big hash joins and aggregates, and
    no JIT compilation; `rows`: the customers it reads, when known.

    PostgreSQL's default `work_mem` (4 MB) is sized for many small concurrent queries. A rule
    or stage evaluation over a million customers hashes a few hundred thousand ids, and below
    that size the planner gives up the hashed `IN (…)` / anti-join and re-runs a subquery per
    row — minutes instead of seconds. A few hundred customers (a handler's run) keep the
    default: with room to spare the planner hashes a whole subquery it needs a few rows of
    (every order item of a category, 290k rows, 0.25 s) instead of probing an index. `SET
    LOCAL` ends with the transaction; a no-op elsewhere.
    """
    if connection.vendor != "postgresql" or not connection.in_atomic_block:
        return
    from django.conf import settings

    work_mem = (settings.DB_HEAVY_WORK_MEM if rows is None or rows >= HEAVY_MIN_ROWS
                else "4MB")
    with connection.cursor() as cursor:
        # JIT compiles each of these big CASE / FILTER statements anew: seconds of LLVM work
        # per chunk for statements that run once (measured: 3.0 s of a 4.9 s chunk).
        cursor.execute("SELECT set_config('work_mem', %s, true), set_config('jit', 'off', true)",
                       [work_mem])


def materialize_ids(name: str, queryset: models.QuerySet, *, indexed: bool = True) -> int | None:
    """Store the primary keys a queryset selects in a temporary table `name` (PostgreSQL:
    dropped at commit, with a primary key and fresh statistics), so that later statements join
    a small indexed table instead of evaluating the queryset's conditions again.

    Returns the number of ids, or None where there are no such tables (SQLite keeps the
    caller's plain queryset path). `indexed=False` skips the key and statistics, for a caller
    that only reads the table once. Call inside a transaction.
    """
    if connection.vendor != "postgresql":
        return None
    select, params = queryset.order_by().values("pk").query.sql_with_params()
    table = connection.ops.quote_name(name)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
        cursor.execute(f"CREATE TEMPORARY TABLE {table} ON COMMIT DROP AS "
                       f"SELECT s.id FROM ({select}) AS s(id)", params)
        count = cursor.rowcount
        if indexed:
            cursor.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
            cursor.execute(f"ANALYZE {table}")
    return count


def materialize_rows(name: str, rows: models.QuerySet | tuple[str, Sequence],
                    columns: Sequence[str], *, keep: bool = False, key: int = 1) -> int:
    """Store what a values() queryset — or an `(sql, params)` statement — selects in a
    temporary table `name` with the given column names, keyed by the first `key` of them
    (PostgreSQL; analyzed). Dropped at COMMIT — or with `keep`, kept for the session until the
    caller drops it. Call inside a transaction."""
    select, params = rows if isinstance(rows, tuple) else rows.query.sql_with_params()
    table = connection.ops.quote_name(name)
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
        cursor.execute(f"CREATE TEMPORARY TABLE {table} {'' if keep else 'ON COMMIT DROP'} AS "
                       f"SELECT * FROM ({select}) AS s({names})", params)
        count = cursor.rowcount
        cursor.execute(f"ALTER TABLE {table} ADD PRIMARY KEY "
                       f"({', '.join(connection.ops.quote_name(c) for c in columns[:key])})")
        cursor.execute(f"ANALYZE {table}")
    return count


# wire type → native type; a timestamptz travels as microseconds since 2000-01-01 UTC
# (-infinity and infinity as the smallest and largest int64).
_COPY_TYPES = {"bool": (">?", "?"), "int2": (">i2", "<i2"), "int4": (">i4", "<i4"),
               "int8": (">i8", "<i8"), "timestamptz": (">i8", "<i8")}
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def copy_columns(sql: str, params: Sequence[Any], types: Sequence[str]) -> list:
    """Run a SELECT through `COPY … TO STDOUT (FORMAT BINARY)` and return its columns as numpy
    arrays (PostgreSQL only): a million rows arrive as one stream, not a million Python tuples.

    The SELECT must give exactly `types` (bool, int2, int4, int8 or timestamptz — the latter as
    int64 microseconds since 2000-01-01 UTC) and never NULL (COALESCE to a sentinel; for a
    timestamptz, '-infinity'): every row then has the same width and the stream is read as one
    structured array."""
    import io

    import numpy as np

    fields = [("n", ">i2")]
    for i, kind in enumerate(types):
        fields += [(f"l{i}", ">i4"), (f"c{i}", _COPY_TYPES[kind][0])]
    with connection.cursor() as cursor:
        statement = cursor.mogrify(sql, params).decode()
        buffer = io.BytesIO()
        cursor.copy_expert(f"COPY ({statement}) TO STDOUT (FORMAT BINARY)", buffer)
    data = buffer.getbuffer()
    if bytes(data[:11]) != _COPY_SIGNATURE:
        raise ValueError("not a binary COPY stream")
    start = 19 + int.from_bytes(data[15:19], "big")     # after the header extension
    try:
        rows = np.frombuffer(data[start:len(data) - 2], dtype=np.dtype(fields))
    except ValueError:
        # a NULL (no bytes) or a wider value makes its row shorter or longer than the rest
        raise ValueError("rows of unequal width: a column holds NULL or is not of its type "
                         "in `types`; COALESCE and cast it in the SELECT") from None
    if len(rows) and (rows["n"] != len(types)).any():
        raise ValueError("the SELECT gives other columns than `types`")
    for i, kind in enumerate(types):
        width = np.dtype(_COPY_TYPES[kind][0]).itemsize
        if len(rows) and (rows[f"l{i}"] != width).any():
            raise ValueError(f"column {i} is not {kind} or holds NULL: COALESCE and cast it "
                             "in the SELECT")
    return [rows[f"c{i}"].astype(_COPY_TYPES[kind][1]) for i, kind in enumerate(types)]


def planner_statistics_refresh(*, scheduled: bool = False) -> str | None:
    """Refresh the query planner's statistics (ANALYZE); answers what ran, or None.

    SQLite keeps none until told: without them its planner picks the (model, at) index for the
    per-customer anti-join of `metrics.selectors.latest_transitions` and reads every transition
    once per customer — 14 s of `metrics_today`, all of it holding SQLite's one write lock, in
    the 5,000-customer demo (0.16 s with statistics). The embedded default therefore analyzes
    on a schedule (`scheduled`) and after loading demo data. PostgreSQL's autovacuum keeps its
    own statistics, so a scheduled run is skipped there; a run by hand analyzes it too.
    """
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
    """DDL (PostgreSQL) for statement triggers that queue a touch (crm.hooks) of the customers
    whose rows in `table` were inserted, updated or deleted — whatever wrote them —, with the
    origin `own` (the app whose table it is; a consumer may skip the touches of the tables its
    conditions do not read: crm.hooks.touch_skips).
    `customer` is the customer id of a row of the transition table (alias r); rows never move
    to another customer, so an update's new rows name it."""
    quoted = "'" + customer.replace("'", "''") + "'"
    return [f"CREATE TRIGGER crm_touch_{event.lower()} AFTER {event} ON {table} "
            f"REFERENCING {rows} TABLE AS changed_rows FOR EACH STATEMENT "
            f"EXECUTE FUNCTION crm_customers_touched({quoted}, '{own}')"
            for event, rows in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD"))]
