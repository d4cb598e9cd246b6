#!/usr/bin/env python
"""Benchmark (not a test) of `seed_demo`: 1M customers on PostgreSQL, 10k on SQLite.

    .venv/bin/python bench/seed.py                       # 1M on PostgreSQL, database crm_bench_seed
    .venv/bin/python bench/seed.py --sqlite --customers 10000

PostgreSQL: creates the database when it is missing (psycopg2, on the server of DATABASE_URL,
default postgres://postgres@127.0.0.1:5432/), runs `migrate` into it, then times
`manage.py seed_demo --customers N --seed S --reset -v2` as a child process: the wall clock a
user sees, start-up included. SQLite: the same on a fresh file in a temporary directory.

The database is emptied and refilled: give it one of its own, not one other benchmarks use.
It prints the machine, the command's own report (counts, phases, each index rebuilt) and the
figure, and refuses a database whose name lacks "bench" unless --force.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from _common import database_url, ensure_database, machine, manage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=None,
                        help="default 1,000,000 on PostgreSQL, 10,000 on SQLite")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--database", default="crm_bench_seed")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--sqlite", action="store_true", help="time the SQLite path instead")
    parser.add_argument("--force", action="store_true")
    opts = parser.parse_args()
    customers = opts.customers or (10_000 if opts.sqlite else 1_000_000)

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SQLITE_PATH")}
    env["LOG_LEVEL"] = "WARNING"
    tmp = None
    if opts.sqlite:
        tmp = tempfile.mkdtemp(prefix="bench-seed-")
        env["SQLITE_PATH"] = str(Path(tmp) / "bench.sqlite3")
        env["DATA_DIR"] = tmp
        where = f"SQLite file {env['SQLITE_PATH']}"
    else:
        if "bench" not in opts.database and not opts.force:
            raise SystemExit(f"refusing database {opts.database!r} (no 'bench' in its name); "
                             "it is emptied and refilled. --force to insist.")
        env["DATABASE_URL"] = database_url(opts.database)
        version = ensure_database(env["DATABASE_URL"])
        where = f"PostgreSQL {version}, database {opts.database}"
    print(f"machine: {machine()}")
    print(f"target:  {where}")
    try:
        migrate_s, _out = manage(["migrate", "--no-input", "-v0"], env)
        print(f"migrate: {migrate_s:.1f} s")
        command = ["seed_demo", "--customers", str(customers), "--seed", str(opts.seed),
                   "--days", str(opts.days), "--reset", "-v2"]
        if opts.workers:
            command += ["--workers", str(opts.workers)]
        figures = []
        for n in range(opts.runs):
            elapsed, out = manage(command, env)
            figures.append(elapsed)
            print(f"\n--- run {n + 1}: manage.py {' '.join(command)}")
            print("\n".join(line for line in out.splitlines() if "…" not in line))
            print(f"wall clock: {elapsed:.1f} s ({customers / elapsed:,.0f} customers/s)")
        best = min(figures)
        print(f"\nseed_demo --customers {customers}: best {best:.1f} s of {len(figures)} "
              f"run(s) [{', '.join(f'{f:.1f}' for f in figures)}]; {machine()}")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
