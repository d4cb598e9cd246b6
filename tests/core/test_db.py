"""core.db.heavy_statements: room for the big set-based statements, and not for a handful of
customers; and no JIT on any connection (PostgreSQL)."""

import pytest
from django.db import connection, transaction

from core.db import HEAVY_MIN_ROWS, heavy_statements

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres_only]


def _settings() -> tuple[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('work_mem'), current_setting('jit')")
        return cursor.fetchone()


@pytest.mark.parametrize("rows, work_mem", [(None, "64MB"), (HEAVY_MIN_ROWS, "64MB"),
                                            (333, "4MB")])
def test_a_transaction_gets_work_mem_by_the_customers_it_reads_and_never_jit(
        settings, rows, work_mem):
    """A full run hashes hundreds of thousands of ids and needs the room; a handler's few
    hundred customers keep the default, where the planner probes the indexes for the rows it
    needs instead of hashing a whole table's subquery (0.25 s a run at 1M customers)."""
    settings.DB_HEAVY_WORK_MEM = "64MB"
    with transaction.atomic():
        heavy_statements(rows)
        assert _settings() == (work_mem, "off")
    assert _settings()[0] == "4MB"          # SET LOCAL: gone with the transaction


def test_every_connection_runs_without_jit():
    """A report's statement of a few tens of thousands of rows crosses the server's JIT cost
    threshold and spent half its time compiling (a SOP report: 84 → 42 ms); no statement of
    the application gains from it, so each connection turns it off (DB_JIT, README)."""
    assert _settings()[1] == "off"
