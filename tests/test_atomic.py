"""``apply --atomic``: every pending migration in one transaction, all or nothing (issue 18)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from conftest import write_migrations
from dbtools import query, run, tables

from migsync import Client, load_directory
from migsync.core.errors import MigrationError
from migsync.core.plugins import make_plugins


def folder(directory: Path, n: int, *, broken: int | None = None, autocommit: int | None = None) -> Path:
    files = {}
    for i in range(1, n + 1):
        up = f"CREATE TABLE t{i} (id INTEGER PRIMARY KEY);\nINSERT INTO t{i} VALUES ({i});\n"
        if i == broken:
            up = f"CREATE TABLE t{i} (id INTEGER PRIMARY KEY);\nINSERT INTO nowhere VALUES (1);\n"
        header = "-- migrate:up transaction:false" if i == autocommit else "-- migrate:up"
        files[f"{i:04d}_t{i}.sql"] = f"{header}\n{up}-- migrate:down\nDROP TABLE t{i};\n"
    return write_migrations(directory, files)


def connect(url: str) -> Client:
    return Client.connect(url, plugins=make_plugins(autoload=False), sinks=[])


def history(url: str) -> list[tuple[Any, ...]]:
    """The history rows, without times and ids: what must be the same however it was applied."""
    status = query(
        url,
        "SELECT migration_name, version, applied, applied_checksum, error, attempts, dirty "
        "FROM client_migration_status ORDER BY version",
    )
    changes = query(
        url,
        "SELECT seq, migration_name, operation, processed, error, attempts, max_attempts "
        "FROM migration_changes ORDER BY seq",
    )
    return [*status, *changes]


async def test_atomic_apply_leaves_the_same_history_as_a_pass(any_url: str, tmp_path: Path) -> None:
    migrations = folder(tmp_path / "m", 4)
    async with connect(any_url) as client:
        result = await client.apply(load_directory(migrations), atomic=True)
        assert result.ok and result.remaining == 0
        assert [o.label for o in result.processed] == [f"apply {i:04d}_t{i}" for i in range(1, 5)]
        assert all(o.ok and o.attempts == 1 for o in result.processed)
        assert [s.state for s in await client.status()] == ["applied"] * 4
    atomic = await asyncio.to_thread(history, any_url)
    assert await asyncio.to_thread(tables, any_url, bookkeeping=False) == {"t1", "t2", "t3", "t4"}
    # The same migrations applied change by change, on a fresh database of the same kind.
    async with connect(any_url) as client:
        await client.ledger.revert(everything=True)
        assert (await client.process()).ok
    await asyncio.to_thread(_reset, any_url)
    async with connect(any_url) as client:
        assert (await client.apply(load_directory(migrations))).ok
    assert await asyncio.to_thread(history, any_url) == atomic


def _reset(url: str) -> None:
    for table in ("client_migration_status", "migration_changes"):
        query(url, f"DELETE FROM {table}")


async def test_one_failure_leaves_the_database_as_it_was(any_url: str, tmp_path: Path) -> None:
    migrations = folder(tmp_path / "m", 4, broken=3)
    async with connect(any_url) as client:
        result = await client.apply(load_directory(migrations), atomic=True)
        assert not result.ok and result.failure is not None
        assert result.failure.label == "apply 0003_t3" and result.failure.attempts == 1
        assert "0003_t3.sql:3" in (result.failure.error or "")  # the file and line of the statement
        states = [(s.name, s.state, s.attempts) for s in await client.status()]
        assert states == [
            ("0001_t1", "pending", 0),
            ("0002_t2", "pending", 0),
            ("0003_t3", "failed", 1),
            ("0004_t4", "pending", 0),
        ]
    assert await asyncio.to_thread(tables, any_url, bookkeeping=False) == set()
    # Fixed, the next atomic apply takes them all.
    folder(tmp_path / "m", 4)
    async with connect(any_url) as client:
        result = await client.apply(load_directory(migrations), atomic=True, ignore_backoff=True)
        assert result.ok and len(result.processed) == 4
    assert await asyncio.to_thread(tables, any_url, bookkeeping=False) == {"t1", "t2", "t3", "t4"}


async def test_a_migration_outside_a_transaction_is_refused_before_anything_runs(
    any_url: str, tmp_path: Path
) -> None:
    migrations = folder(tmp_path / "m", 3, autocommit=2)
    async with connect(any_url) as client:
        with pytest.raises(MigrationError, match=r"--atomic .* apply 0002_t2 cannot run in one"):
            await client.apply(load_directory(migrations), atomic=True)
        assert [(s.state, s.attempts) for s in await client.status()] == [("pending", 0)] * 3
    assert await asyncio.to_thread(tables, any_url, bookkeeping=False) == set()


async def test_sqlite_atomic_apply_is_one_transaction(tmp_path: Path) -> None:
    migrations = folder(tmp_path / "m", 5)
    async with connect(f"sqlite:///{tmp_path}/db.sqlite") as client:
        await client.ledger.record(load_directory(migrations))
        await client.ledger.queue_pending()
        seen: list[str] = []
        raw = client.backend._thread.raw  # type: ignore[attr-defined]
        raw.set_trace_callback(seen.append)
        try:
            assert (await client.process(atomic=True)).ok
        finally:
            raw.set_trace_callback(None)
    assert [s for s in seen if s.split()[0] in ("BEGIN", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]


def test_cli_apply_atomic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    refused = run(
        "apply", "--atomic", "--migrations", str(folder(tmp_path / "a", 2, autocommit=1)), "--db", url
    )
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith("error: --atomic runs every pending migration in one transaction")
    other = f"sqlite:///{tmp_path}/other.sqlite"
    done = run("apply", "--atomic", "--migrations", str(folder(tmp_path / "b", 3)), "--db", other)
    assert done.returncode == 0, done.stderr
    assert "applied 3 migrations" in done.stdout
