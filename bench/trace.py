"""The statements migsync sends per migration, on SQLite and on Postgres.

Applies and then reverts N trivial migrations (create table + index; down drops
both) in-process and prints every statement the processor pass sent, the
per-migration ones once (for the third migration) and the counts:

* SQLite: every statement the sqlite3 library runs (``set_trace_callback``),
  the client's own pragmas included.
* Postgres: every message the client sends through asyncpg (one per call:
  a simple query, a prepared statement's execution, an ``executemany``
  batch), which is one round trip each once statements are prepared.

    python bench/trace.py [-n 10] [--backend sqlite|postgresql|all]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from migsync import Client
from migsync.core.plugins import make_plugins
from migsync.core.sources import scan_directory


def generate(directory: Path, n: int) -> None:
    for i in range(1, n + 1):
        (directory / f"{i:05d}_table_{i}.sql").write_text(
            "-- migrate:up\n"
            f"CREATE TABLE t_{i} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, created REAL);\n"
            f"CREATE INDEX ix_t_{i}_name ON t_{i} (name);\n"
            "-- migrate:down\n"
            f"DROP INDEX ix_t_{i}_name;\nDROP TABLE t_{i};\n"
        )


def _short(sql: str) -> str:
    return " ".join(sql.split())[:150]


@contextlib.contextmanager
def asyncpg_calls(sink: Callable[[str], None]) -> Iterator[None]:
    """Every call that sends a message to Postgres, reported to ``sink``."""
    import asyncpg

    names = ("execute", "executemany", "fetch", "fetchrow", "fetchval")
    # The pool hands out proxies whose methods call the connection class's own.
    classes = (asyncpg.Connection, asyncpg.pool.PoolConnectionProxy)
    saved = {(cls, name): getattr(cls, name) for cls in classes for name in names}

    def wrap(cls: type, name: str) -> Any:
        original = saved[cls, name]
        proxy = cls is not asyncpg.Connection

        async def traced(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            if not proxy:  # the proxy forwards to the connection: count once
                many = f" x{len(args[0])}" if name == "executemany" else ""
                sink(f"[{name}{many}] {_short(query)}")
            return await original(self, query, *args, **kwargs)

        return traced

    for cls, name in saved:
        setattr(cls, name, wrap(cls, name))
    try:
        yield
    finally:
        for (cls, name), original in saved.items():
            setattr(cls, name, original)


async def trace(url: str, migrations: Path, n: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"record+queue": [], "apply pass": [], "revert queue": [], "revert pass": []}
    current: list[str] = []
    async with Client.connect(url, plugins=make_plugins(autoload=False), sinks=[]) as client:
        raw = getattr(getattr(client.backend, "_thread", None), "raw", None)
        if raw is not None:
            raw.set_trace_callback(lambda sql: current.append(_short(sql)))
            context: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        else:
            context = asyncpg_calls(lambda sql: current.append(sql))
        with context:
            current = out["record+queue"]
            await client.ledger.record_source(scan_directory(migrations))
            await client.ledger.queue_pending()
            current = out["apply pass"]
            result = await client.process()
            assert result.ok and result.remaining == 0, result
            current = out["revert queue"]
            await client.ledger.revert(everything=True)
            current = out["revert pass"]
            result = await client.process()
            assert result.ok and result.remaining == 0, result
            current = []
        if raw is not None:
            raw.set_trace_callback(None)
    return out


def report(name: str, out: dict[str, list[str]], n: int) -> None:
    print(f"\n== {name}: N={n}")
    for step, statements in out.items():
        print(f"{step}: {len(statements)} statements ({len(statements) / n:.2f} per migration)")
    for step in ("apply pass", "revert pass"):
        # One migration in the middle: from the start of its transaction to the next one's.
        lines = out[step]
        starts = [i for i, s in enumerate(lines) if _starts_transaction(s)]
        # PRAGMA then BEGIN: one (a Postgres migration is one message, each starting with BEGIN)
        starts = [i for i in starts if not (i > 0 and i - 1 in starts and "PRAGMA" in lines[i - 1])]
        if len(starts) < 4:
            continue
        start, stop = starts[2], starts[3]
        print(f"-- {step}, one migration: {stop - start} statements")
        for line in lines[start:stop]:
            print(f"   {line}")


def _starts_transaction(sql: str) -> bool:
    text = sql.split("] ", 1)[-1].upper()
    return text.startswith(("BEGIN", "PRAGMA FOREIGN_KEYS = OFF"))


async def postgres_url() -> tuple[str, Callable[[], Any]]:
    import asyncpg

    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    await admin.execute("DROP DATABASE IF EXISTS migsync_trace WITH (FORCE)")
    await admin.execute("CREATE DATABASE migsync_trace")
    await admin.close()

    async def drop() -> None:
        admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
        await admin.execute("DROP DATABASE IF EXISTS migsync_trace WITH (FORCE)")
        await admin.close()

    return "postgresql://postgres@127.0.0.1:5432/migsync_trace", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10)
    parser.add_argument("--backend", choices=("all", "sqlite", "postgresql"), default="all")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="migsync-trace-") as tmp:
        migrations = Path(tmp) / "migrations"
        migrations.mkdir()
        generate(migrations, args.n)
        if args.backend in ("all", "sqlite"):
            out = asyncio.run(trace(f"sqlite:///{tmp}/trace.db", migrations, args.n))
            report("sqlite", out, args.n)
        if args.backend in ("all", "postgresql"):

            async def pg() -> dict[str, list[str]]:
                url, drop = await postgres_url()
                try:
                    return await trace(url, migrations, args.n)
                finally:
                    await drop()

            report("postgresql", asyncio.run(pg()), args.n)


if __name__ == "__main__":
    main()
