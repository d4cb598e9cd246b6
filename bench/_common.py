"""Helpers shared by bench/seed.py and bench/ingest.py (stdlib and psycopg2 only)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if VENV_BIN.exists() else sys.executable


def database_url(name: str) -> str:
    """DATABASE_URL (default: local PostgreSQL as postgres) with the database name replaced."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    return urlunsplit(urlsplit(base)._replace(path="/" + name))


def connect(url: str, dbname: str | None = None):
    import psycopg2

    parts = urlsplit(url)
    conn = psycopg2.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 5432,
                            user=parts.username or "postgres", password=parts.password,
                            dbname=dbname or parts.path[1:])
    conn.autocommit = True          # never sit idle in a transaction, holding locks
    return conn


def ensure_database(url: str) -> str:
    """Create the database if missing; returns the server's version string."""
    admin = connect(url, "postgres")
    name = urlsplit(url).path[1:]
    with admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0]
    admin.close()
    return version


def machine() -> str:
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f", {int(f.readline().split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError):
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores{mem}, Python {platform.python_version()}, load average {load}"


def manage(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run `manage.py ARGS` in a child process; (seconds, stdout); exits on failure."""
    started = time.monotonic()
    done = subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True)
    elapsed = time.monotonic() - started
    if done.returncode:
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        raise SystemExit(f"manage.py {' '.join(args)} failed ({done.returncode})")
    return elapsed, done.stdout
