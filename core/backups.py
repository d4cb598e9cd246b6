"""Backups: a consistent copy of the database with the row counts it held, and a check that a
copy restores — into a fresh database, with the same counts — before anyone needs it.

PostgreSQL: `pg_dump --format=custom` (one snapshot, so the copy is consistent while the
workers write) and `pg_restore` into a scratch database that is dropped afterwards. The
embedded SQLite default: SQLite's online backup API. Details and the restore procedure in
docs/OPERATIONS.md."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import connection, transaction

from core.exceptions import ApplicationError


def counted_tables() -> list[str]:
    """Every table of the project's own models (the counts a restore must reproduce)."""
    own = {"core", "crm", "tagging", "lifecycle", "campaigns", "metrics", "wecom"}
    return sorted(m._meta.db_table for m in apps.get_models()
                  if m._meta.app_label in own and m._meta.managed and not m._meta.proxy)


def _counts(cursor, tables: list[str]) -> dict[str, int]:
    counts = {}
    for table in tables:
        try:
            cursor.execute(f'SELECT count(*) FROM "{table}"')  # names from the models: trusted
        except Exception as exc:    # psycopg2, sqlite3 or Django's wrapper: a missing table
            raise ApplicationError(f"{table}: {exc}".strip()[:300] + " — is the database "
                                   "migrated?") from exc
        counts[table] = cursor.fetchone()[0]
    return counts


def _pg_env(db: dict[str, Any]) -> dict[str, str]:
    env = {**os.environ, "PGHOST": db.get("HOST") or "127.0.0.1",
           "PGPORT": str(db.get("PORT") or 5432), "PGUSER": db.get("USER") or "postgres"}
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = db["PASSWORD"]
    return env


def _run(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode:
        raise ApplicationError(f"{args[0]} failed: {done.stderr.strip()[:500]}")


def backup(*, output: Path | None = None) -> dict[str, Any]:
    """Write a backup and, beside it, `<name>.counts.json` with every table's row count in the
    very snapshot the backup holds (PostgreSQL: pg_dump runs on a snapshot exported from the
    transaction that counts), so a restore must reproduce them exactly."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    db = connection.settings_dict
    folder = settings.DATA_DIR / "backups"
    folder.mkdir(parents=True, exist_ok=True)
    tables = counted_tables()
    if connection.vendor == "postgresql":
        output = output or folder / f"crm-{stamp}.dump"
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute("SELECT pg_export_snapshot()")
            snapshot = cursor.fetchone()[0]
            _run(["pg_dump", "--format=custom", "--no-owner", f"--snapshot={snapshot}",
                  "--file", str(output), db["NAME"]], _pg_env(db))
            counts = _counts(cursor, tables)
    else:
        output = output or folder / f"crm-{stamp}.sqlite3"
        source = sqlite3.connect(db["NAME"])
        with sqlite3.connect(output) as target:
            source.backup(target)
        source.close()
        with sqlite3.connect(output) as copy:
            counts = _counts(copy.cursor(), tables)
    meta = {"file": str(output), "engine": connection.vendor, "taken_at": stamp,
            "bytes": Path(output).stat().st_size, "counts": counts}
    Path(f"{output}.counts.json").write_text(json.dumps(meta, indent=1))
    return meta


def restore_check(*, path: Path, keep: bool = False) -> dict[str, Any]:
    """Restore `path` into a fresh database (dropped afterwards unless `keep`) and compare
    every table's row count with the one recorded at backup time: `differences` must be
    empty. A dump without counts (made by pg_dump directly) is checked for every table."""
    counts_file = Path(f"{path}.counts.json")
    if counts_file.exists():
        meta = json.loads(counts_file.read_text())
    else:   # a dump made another way (pg_dump in a container): the tables must be there
        if not Path(path).exists():
            raise ApplicationError(f"{path}: no such file")
        meta = {"engine": "sqlite" if str(path).endswith(".sqlite3") else "postgresql",
                "counts": dict.fromkeys(counted_tables())}
    db = connection.settings_dict
    if meta["engine"] == "postgresql":
        scratch = f"{db['NAME']}_restore_check"
        env = _pg_env(db)
        _run(["dropdb", "--if-exists", scratch], env)
        _run(["createdb", scratch], env)
        try:
            _run(["pg_restore", "--no-owner", "--exit-on-error", "--dbname", scratch, str(path)],
                 env)
            import psycopg2

            conn = psycopg2.connect(dbname=scratch, host=env["PGHOST"], port=env["PGPORT"],
                                    user=env["PGUSER"], password=env.get("PGPASSWORD"))
            with conn, conn.cursor() as cursor:
                restored = _counts(cursor, list(meta["counts"]))
            conn.close()
        finally:
            if not keep:
                _run(["dropdb", "--if-exists", scratch], env)
    else:
        scratch_file = Path(f"{path}.restore-check")
        shutil.copyfile(path, scratch_file)
        try:
            with sqlite3.connect(scratch_file) as conn:
                restored = _counts(conn.cursor(), list(meta["counts"]))
        finally:
            if not keep:
                scratch_file.unlink(missing_ok=True)
    differences = {t: {"counted": n, "restored": restored.get(t)}
                   for t, n in meta["counts"].items()
                   if restored.get(t) is None or (n is not None and restored[t] != n)}
    return {"file": str(path), "tables": len(restored), "rows": sum(restored.values()),
            "differences": differences, "compared": counts_file.exists()}
