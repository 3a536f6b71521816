"""What one migration costs the database: the engine's statements, counted (issue 18).

SQLite: every statement the library runs (``set_trace_callback``). Postgres:
every message the client sends (asyncpg calls). A migration in a transaction
costs its script plus three statements on SQLite (status row, the done
statement that is also the claim, and ``BEGIN``/``COMMIT``), and two round
trips on Postgres (``BEGIN`` with the write lock; the script, its
bookkeeping and ``COMMIT`` in one message). A pass of 2N costs exactly N
migrations' worth more than a pass of N: nothing else grows per migration.

Also here: the claim. The processor reads a batch of the queue outside any
transaction; a change someone else finished or cancelled after that read is
neither run twice nor failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import write_migrations
from dbtools import tables

from migsync import Client, load_directory
from migsync.core.handler import MigrationHandler
from migsync.core.plugins import make_plugins
from migsync.core.processor import ChangesProcessor
from migsync.core.work import Await, Work


def migrations(directory: Path, n: int) -> Path:
    return write_migrations(
        directory,
        {
            f"{i:04d}_t{i}.sql": (
                "-- migrate:up\n"
                f"CREATE TABLE t{i} (id INTEGER PRIMARY KEY, name TEXT);\n"
                f"CREATE INDEX ix_t{i} ON t{i} (name);\n"
                "-- migrate:down\n"
                f"DROP INDEX ix_t{i};\nDROP TABLE t{i};\n"
            )
            for i in range(1, n + 1)
        },
    )


def connect(url: str) -> Client:
    return Client.connect(url, plugins=make_plugins(autoload=False), sinks=[])


def first_word(sql: str) -> str:
    words = sql.split()
    return " ".join(words[:2]) if words[0] == "PRAGMA" else words[0]


async def sqlite_pass(tmp_path: Path, n: int, *, revert: bool = False) -> list[str]:
    """The statements of one apply (or revert) pass of ``n`` migrations."""
    folder = migrations(tmp_path / f"m{n}", n)
    async with connect(f"sqlite:///{tmp_path}/db{n}.sqlite") as client:
        await client.ledger.record(load_directory(folder))
        await client.ledger.queue_pending()
        if revert:
            assert (await client.process()).ok
            await client.ledger.revert(everything=True)
        raw = client.backend._thread.raw  # type: ignore[attr-defined]
        seen: list[str] = []
        raw.set_trace_callback(seen.append)
        try:
            result = await client.process()
        finally:
            raw.set_trace_callback(None)
    assert result.ok and len(result.processed) == n and result.remaining == 0
    return seen


def one_migration(seen: list[str], begin: str) -> list[str]:
    starts = [i for i, s in enumerate(seen) if s.startswith(begin)]
    return [first_word(s) for s in seen[starts[1] : starts[2]]]


async def test_sqlite_apply_costs_the_script_and_four_statements(tmp_path: Path) -> None:
    small, large = await sqlite_pass(tmp_path, 4), await sqlite_pass(tmp_path, 8)
    assert one_migration(small, "BEGIN") == ["BEGIN", "CREATE", "CREATE", "INSERT", "UPDATE", "COMMIT"]
    assert len(large) - len(small) == 4 * 6


async def test_sqlite_revert_costs_the_script_and_four_statements_and_the_key_check(
    tmp_path: Path,
) -> None:
    small = await sqlite_pass(tmp_path, 4, revert=True)
    large = await sqlite_pass(tmp_path, 8, revert=True)
    # A DROP could break a foreign key: the keys are checked before it and before the commit.
    check = "PRAGMA foreign_key_check"
    assert one_migration(small, "BEGIN") == [
        "BEGIN",
        check,
        "DROP",
        "DROP",
        "INSERT",
        "UPDATE",
        check,
        "COMMIT",
    ]
    assert len(large) - len(small) == 4 * 8


@contextlib.contextmanager
def asyncpg_messages(seen: list[str]) -> Iterator[None]:
    """Every call that sends a message to Postgres (the pool's proxy forwards to these), made on
    this event loop: other threads of this process send their own meanwhile (conftest's
    ``DatabaseDropper`` drops earlier tests' databases on a loop of its own), and those
    messages are not this pass's."""
    names = ("execute", "executemany", "fetch", "fetchrow", "fetchval")
    saved = {name: getattr(asyncpg.Connection, name) for name in names}
    ours = asyncio.get_running_loop()

    def wrap(name: str) -> Any:
        original = saved[name]

        async def counted(self: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> Any:
            if asyncio.get_running_loop() is ours:
                seen.append(query)
            return await original(self, query, *args, **kwargs)

        return counted

    for name in names:
        setattr(asyncpg.Connection, name, wrap(name))
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(asyncpg.Connection, name, original)


async def postgres_pass(url: str, folder: Path, *, revert: bool = False) -> list[str]:
    async with connect(url) as client:
        await client.ledger.record(load_directory(folder))
        await client.ledger.queue_pending()
        if revert:
            assert (await client.process()).ok
            await client.ledger.revert(everything=True)
        seen: list[str] = []
        with asyncpg_messages(seen):
            result = await client.process()
        assert result.ok and result.remaining == 0
        # Undo, so the next pass of the test starts from an empty database again.
        if not revert:
            await client.ledger.revert(everything=True)
            assert (await client.process()).ok
    return seen


@pytest.mark.parametrize("revert", [False, True], ids=["apply", "revert"])
async def test_postgres_a_migration_is_one_round_trip(pg_url: str, tmp_path: Path, revert: bool) -> None:
    small = await postgres_pass(pg_url, migrations(tmp_path / "a", 4), revert=revert)
    large = await postgres_pass(pg_url, migrations(tmp_path / "b", 8), revert=revert)
    starts = [i for i, s in enumerate(small) if s.startswith("BEGIN")]
    one = small[starts[1] : starts[2]]
    assert len(one) == 1, one
    script = "DROP INDEX" if revert else "CREATE TABLE"
    # BEGIN with the write lock, the script, its bookkeeping and the COMMIT: one message.
    assert script in one[0] and "pg_try_advisory_xact_lock" in one[0] and one[0].rstrip().endswith("COMMIT")
    assert len(large) - len(small) == 4 * 1


class Interfering(MigrationHandler):
    """Between the batch's read and its first change, another writer changes the first change."""

    def __init__(self, interfere: Any, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.interfere = interfere

    def check(self) -> Work[None]:
        yield from super().check()
        if self.interfere is not None:
            interfere, self.interfere = self.interfere, None
            yield Await(interfere)


async def other_writer(url: str, tmp_path: Path, sql: list[str]) -> None:
    if url.startswith("sqlite"):

        def write() -> None:
            conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
            try:
                for statement in sql:
                    conn.execute(statement)
            finally:
                conn.close()

        await asyncio.to_thread(write)
    else:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(";\n".join(sql))
        finally:
            await conn.close()


@pytest.mark.parametrize("outside", [False, True], ids=["in-transaction", "transaction-false"])
@pytest.mark.parametrize("taken", [True, False], ids=["applied-by-another", "cancelled"])
async def test_a_change_changed_after_the_batch_read_it_is_neither_run_nor_failed(
    any_url: str, tmp_path: Path, taken: bool, outside: bool
) -> None:
    folder = migrations(tmp_path / "m", 3)
    if outside:  # claimed before it runs, in a transaction of its own
        first = folder / "0001_t1.sql"
        first.write_text(first.read_text().replace("-- migrate:up", "-- migrate:up transaction:false"))
    sql = ["UPDATE migration_changes SET processed = TRUE, attempts = 1 WHERE seq = 1"]
    if taken:  # another processor applied it: its table is there, a second run would fail
        sql.insert(0, "CREATE TABLE t1 (id INTEGER PRIMARY KEY, name TEXT)")
    async with connect(any_url) as client:
        await client.ledger.record(load_directory(folder))
        await client.ledger.queue_pending()
        handler = Interfering(
            lambda: other_writer(any_url, tmp_path, sql),
            client.backend.dialect,
            client.clock,
            client.backend.tables,
        )
        processor = ChangesProcessor(client.backend, handler, clock=client.clock)
        result = await processor.run_pass()
        assert result.ok and result.failure is None and result.remaining == 0
        assert [o.label for o in result.processed] == ["apply 0002_t2", "apply 0003_t3"]
        rows = await client.backend.fetch("SELECT seq, attempts, error FROM migration_changes ORDER BY seq")
        assert [(r["seq"], r["attempts"], r["error"]) for r in rows] == [
            (1, 1, None),
            (2, 1, None),
            (3, 1, None),
        ]
    # Cancelled: the script ran in the transaction that lost its claim, and was rolled back.
    assert ("t1" in await asyncio.to_thread(tables, any_url, bookkeeping=False)) == taken


async def test_content_recorded_anew_after_the_batch_read_it_runs_new_never_stale(
    any_url: str, tmp_path: Path
) -> None:
    folder = migrations(tmp_path / "m", 2)
    renamed = migrations(tmp_path / "renamed", 2)
    first = renamed / "0001_t1.sql"
    first.write_text(first.read_text().replace("t1", "t1_new"))

    async def record_anew() -> None:  # another process records the changed file
        async with connect(any_url) as other:
            assert (await other.ledger.record(load_directory(renamed))).updated == ["0001_t1"]

    async with connect(any_url) as client:
        await client.ledger.record(load_directory(folder))
        await client.ledger.queue_pending()
        handler = Interfering(record_anew, client.backend.dialect, client.clock, client.backend.tables)
        result = await ChangesProcessor(client.backend, handler, clock=client.clock).run_pass()
        assert result.ok and [o.label for o in result.processed] == ["apply 0001_t1", "apply 0002_t2"]
        assert [(s.name, s.state, s.attempts) for s in await client.status()] == [
            ("0001_t1", "applied", 1),
            ("0002_t2", "applied", 1),
        ]
    made = await asyncio.to_thread(tables, any_url, bookkeeping=False)
    assert made == {"t1_new", "t2"}
