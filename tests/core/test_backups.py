"""Backups are taken from one snapshot with their row counts, and restore — into a fresh
database, with every count the same — by the commands an operator runs."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import translation

from crm import services
from tests.factories import CustomerFactory


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_backup_restores_with_every_count(tmp_path, admin_user, capsys):
    customer = CustomerFactory(owner=admin_user)
    services.events_ingest(actor=admin_user, items=[
        {"customer": customer.external_id, "type": "message_in", "idempotency_key": f"k{i}"}
        for i in range(5)])
    target = tmp_path / "crm.backup"
    call_command("backup_database", "--output", str(target))
    assert target.exists() and (tmp_path / "crm.backup.counts.json").exists()
    with translation.override("en"):
        call_command("restore_check", str(target))
    assert "every count matches" in capsys.readouterr().out


def test_the_embedded_default_backs_up_and_restores(tmp_path):
    """SQLite's backup API and the check, on a database of its own (a child process with the
    embedded default), so the shared test database is left as it is."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update(DATA_DIR=str(tmp_path), SQLITE_PATH=str(tmp_path / "crm.sqlite3"),
               LANGUAGE="en")

    def manage(*args):
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=root, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    manage("migrate", "--no-input", "-v0")
    target = tmp_path / "copy.sqlite3"
    manage("backup_database", "--output", str(target))
    out = manage("restore_check", str(target))
    assert (tmp_path / "copy.sqlite3.counts.json").exists()
    assert "行数全部一致" in out or "every count matches" in out


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_copy_that_lost_rows_is_refused(tmp_path, admin_user):
    import json

    CustomerFactory(owner=admin_user)
    target = tmp_path / "crm.backup"
    call_command("backup_database", "--output", str(target))
    meta_path = tmp_path / "crm.backup.counts.json"
    meta = json.loads(meta_path.read_text())
    meta["counts"]["crm_customer"] += 1           # as if a row had not made it into the copy
    meta_path.write_text(json.dumps(meta))
    with translation.override("en"), pytest.raises(CommandError, match="differs"):
        call_command("restore_check", str(target))


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_plain_pg_dump_is_checked_for_every_table(tmp_path, capsys):
    import subprocess

    from django.db import connection

    from core.backups import _pg_env

    target = tmp_path / "plain.dump"
    subprocess.run(["pg_dump", "--format=custom", "--file", str(target),
                    connection.settings_dict["NAME"]], env=_pg_env(connection.settings_dict),
                   check=True)
    with translation.override("en"):
        call_command("restore_check", str(target))
    assert "every table is there" in capsys.readouterr().out
