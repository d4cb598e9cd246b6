"""Helpers shared by the benchmarks (stdlib and psycopg2 only)."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if VENV_BIN.exists() else sys.executable


def django_setup(**env: str) -> None:
    """Set Django up in a benchmark's own process: the project on sys.path, the benchmarks'
    defaults (settings module, a secret key — production settings, on plain HTTP: a request
    through the test client is not redirected to HTTPS —, quiet logs) and `env` over them."""
    sys.path.insert(0, str(ROOT))
    for key, value in {"DJANGO_SETTINGS_MODULE": "config.settings", "DJANGO_SECRET_KEY": "bench",
                       "DJANGO_SECURE_COOKIES": "0", "LOG_LEVEL": "WARNING"}.items():
        os.environ.setdefault(key, value)
    os.environ.update(env)
    import django

    django.setup()


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(env: dict[str, str]) -> dict[str, str]:
    """The production settings a benchmark's gunicorn runs with, on plain HTTP over loopback
    (no HTTPS redirect: DJANGO_SECURE_COOKIES=0)."""
    import secrets

    return {**env, "DJANGO_SECRET_KEY": secrets.token_urlsafe(50), "DJANGO_DEBUG": "0",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1", "DJANGO_SECURE_COOKIES": "0"}


def start_gunicorn(env: dict[str, str], *, workers: int, ready_path: str, log: Path,
                   timeout: int = 120) -> tuple[subprocess.Popen, int]:
    """gunicorn `config.wsgi` on a free loopback port, once `ready_path` answers (any status
    below 500); exits with the log's path when it does not come up within 60 s."""
    import http.client

    port = free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "gunicorn"), "config.wsgi", "--workers", str(workers),
         "--bind", f"127.0.0.1:{port}", "--timeout", str(timeout), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited ({proc.returncode}); see {log}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", ready_path)
            if conn.getresponse().status < 500:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"gunicorn did not answer within 60 s; see {log}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started by a benchmark (gunicorn's master stops its workers gracefully)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


# Autovacuum's default rule for a table: vacuum after this many new (or dead) rows plus this
# share of the table.
AUTOVACUUM_THRESHOLD, AUTOVACUUM_SCALE = 1000, 0.2
STALE_TABLES_SQL = """
SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.n_ins_since_vacuum > %(threshold)s + %(scale)s * GREATEST(c.reltuples, 0)
   OR s.n_dead_tup > %(threshold)s + %(scale)s * GREATEST(c.reltuples, 0)
ORDER BY s.relname
"""


def sql(statement: str, params=None) -> list[tuple]:
    """Run a statement on Django's default connection; its rows (none for a command)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


# Autovacuum's default rule for analyzing a table: after this many changed rows plus this share.
AUTOANALYZE_THRESHOLD, AUTOANALYZE_SCALE = 50, 0.1
UNANALYZED_TABLES_SQL = """
SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.n_mod_since_analyze > %(threshold)s + %(scale)s * GREATEST(c.reltuples, 0)
ORDER BY s.relname
"""


def autovacuum_round(execute) -> list[str]:
    """One round of what autovacuum does on a server where it is on (every minute by default):
    VACUUM (ANALYZE) the tables past its vacuum threshold, ANALYZE those past its analyze
    threshold; returns the tables it touched. For a benchmark that runs for a while on a server
    with `autovacuum = off`: without it the tables a job fills through the run keep the
    statistics of their first rows, and the planner's choices drift from a real server's."""
    vacuumed = vacuum_stale_tables(execute)
    analyzed = [row[0] for row in execute(UNANALYZED_TABLES_SQL, {
        "threshold": AUTOANALYZE_THRESHOLD, "scale": AUTOANALYZE_SCALE})]
    for name in analyzed:
        execute(f'ANALYZE "{name}"', None)
    return sorted({*vacuumed, *analyzed})


def vacuum_stale_tables(execute) -> list[str]:
    """VACUUM (ANALYZE) the tables autovacuum would have vacuumed by now, and return them.

    A server running with `autovacuum = off` (this machine's CI configuration does) never
    vacuums the tables `seed_demo` or a benchmark filled: their visibility map stays empty, so
    every index-only scan reads the table as well — two to three times slower than on a
    production server, where autovacuum runs within a minute of a bulk load. `execute(sql,
    params)` runs a statement outside a transaction and returns its rows."""
    stale = [row[0] for row in execute(STALE_TABLES_SQL, {"threshold": AUTOVACUUM_THRESHOLD,
                                                          "scale": AUTOVACUUM_SCALE})]
    for name in stale:
        execute(f'VACUUM (ANALYZE) "{name}"', None)
    return stale


def session_settings(execute, *, jit: str = "server", work_mem: str = "",
                     fk_checks: str = "on") -> None:
    """The benches' session options (`--jit off`, `--work-mem`, `--fk-checks off`), set on the
    current connection through `execute(statement)` and on every connection Django opens
    later (a worker's, a thread's)."""
    from django.db.backends.signals import connection_created

    statements = []
    if jit == "off":
        statements.append("SET jit = off")
    if work_mem:
        statements.append(f"SET work_mem = '{work_mem}'")
    if fk_checks == "off":      # no foreign-key checks at all: to measure what they cost
        statements.append("SET session_replication_role = replica")
    if not statements:
        return

    def apply(sender, connection, **kwargs) -> None:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)

    connection_created.connect(apply, weak=False)
    for statement in statements:
        execute(statement)


# A webhook receiver answering 200 as fast as it can: the outbox's channel in the benchmarks.
# With a file name it appends the `id` of every message it receives, one a line.
WEBHOOK_SINK = textwrap.dedent("""
    import json, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    out = open(sys.argv[2], "a", buffering=1) if len(sys.argv) > 2 else None
    lock = threading.Lock()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if out is not None:
                try:
                    ident = json.loads(body).get("id")
                except ValueError:
                    ident = None
                with lock:
                    out.write(f"{ident}\\n")
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
    server.daemon_threads = True
    server.serve_forever()
""")


def start_sink(port: int, record: Path | None = None) -> subprocess.Popen:
    """The webhook sink on 127.0.0.1:`port`, recording message ids to `record` if given."""
    return subprocess.Popen([PYTHON, "-c", WEBHOOK_SINK, str(port),
                             *([str(record)] if record else [])])
