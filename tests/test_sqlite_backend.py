"""The SQLite backend against real files: URLs, pragmas, locking, error mapping."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from migsync.backends.sqlite import SQLiteBackend, parse_url
from migsync.core.backend import TRANSACTIONAL_DDL, Backend
from migsync.core.errors import BackendError, ConfigError, ConnectError, LockTimeout, StatementError
from migsync.core.work import Begin, Commit, Execute, Fetch, Script


def test_url_forms() -> None:
    assert parse_url("sqlite:///app.db") == ("app.db", {})
    assert parse_url("sqlite:////var/lib/app.db") == ("/var/lib/app.db", {})
    assert parse_url("sqlite:///:memory:") == (":memory:", {})
    assert parse_url("sqlite:///a.db?busy_timeout=2&synchronous=normal") == (
        "a.db",
        {"busy_timeout": "2", "synchronous": "normal"},
    )
    with pytest.raises(ConfigError, match="has a host part"):
        parse_url("sqlite://host/app.db")
    with pytest.raises(ConfigError, match="names no file"):
        parse_url("sqlite://")
    with pytest.raises(ConfigError, match="synchronous='SOMETIMES'"):
        SQLiteBackend("sqlite:///a.db?synchronous=sometimes")


async def test_pragmas_and_schema(tmp_path: Path) -> None:
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'x.db'}?busy_timeout=2")
    assert isinstance(backend, Backend)
    assert TRANSACTIONAL_DDL in backend.capabilities
    async with backend:
        await backend.ensure_schema()
        await backend.ensure_schema()  # idempotent
        rows = await backend.fetch("PRAGMA journal_mode")
        assert rows == [{"journal_mode": "wal"}]
        assert (await backend.fetch("PRAGMA busy_timeout"))[0]["timeout"] == 2000
        assert (await backend.fetch("PRAGMA synchronous"))[0]["synchronous"] == 2  # FULL
        names = {r["name"] for r in await backend.fetch("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"client_migration", "client_migration_status", "migration_changes", "migsync_meta"} <= names


async def test_memory_database(tmp_path: Path) -> None:
    async with SQLiteBackend("sqlite:///:memory:") as backend:
        await backend.ensure_schema()
        async with backend.transaction() as tx:
            await tx.execute("CREATE TABLE t (x)")
            await tx.execute("INSERT INTO t VALUES ($1)", (41,))
        assert await backend.fetch("SELECT x + $1 AS y FROM t", (1,)) == [{"y": 42}]


async def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    async with SQLiteBackend(f"sqlite:///{tmp_path / 'x.db'}") as backend:
        with pytest.raises(RuntimeError):
            async with backend.transaction() as tx:
                await tx.execute("CREATE TABLE t (x)")
                raise RuntimeError("boom")
        assert await backend.fetch("SELECT name FROM sqlite_master WHERE name = 't'") == []


async def test_script_error_names_statement_and_line(tmp_path: Path) -> None:
    async with SQLiteBackend(f"sqlite:///{tmp_path / 'x.db'}") as backend:
        with pytest.raises(StatementError) as caught:
            async with backend.transaction() as tx:
                await tx.run_script("CREATE TABLE a (x);\n\n-- note\nCREATE TABLE a (y);")
        assert caught.value.index == 1 and caught.value.line == 4
        assert "table a already exists" in str(caught.value)
        assert not isinstance(caught.value, sqlite3.Error)


async def test_unit_of_work_runs_in_one_program(tmp_path: Path) -> None:
    def program():  # type: ignore[no-untyped-def]
        yield Begin()
        yield Execute("CREATE TABLE t (x)")
        yield Execute("INSERT INTO t VALUES ($1), ($2)", (1, 2))
        rows = yield Fetch("SELECT sum(x) AS s FROM t")
        try:
            yield Script("INSERT INTO nope VALUES (1)")
        except StatementError as exc:
            error = str(exc)
        yield Commit()
        return rows[0]["s"], error

    async with SQLiteBackend(f"sqlite:///{tmp_path / 'x.db'}") as backend:
        total, error = await backend.run(program())
        assert total == 3 and "no such table: nope" in error


async def test_unit_of_work_left_open_is_rolled_back(tmp_path: Path) -> None:
    def program():  # type: ignore[no-untyped-def]
        yield Begin()
        yield Execute("CREATE TABLE t (x)")
        raise ValueError("stop half-way")

    async with SQLiteBackend(f"sqlite:///{tmp_path / 'x.db'}") as backend:
        with pytest.raises(ValueError, match="half-way"):
            await backend.run(program())
        assert await backend.fetch("SELECT name FROM sqlite_master WHERE name = 't'") == []


async def test_not_a_database_is_a_connect_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConnectError, match=r"junk\.db"):
        async with SQLiteBackend(f"sqlite:///{junk}"):
            pass
    with pytest.raises(ConnectError, match="does not exist"):
        async with SQLiteBackend(f"sqlite:///{tmp_path / 'missing' / 'x.db'}"):
            pass


async def test_write_lock_held_elsewhere_is_a_lock_timeout(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    async with SQLiteBackend(f"sqlite:///{path}?busy_timeout=0.2") as backend:
        await backend.ensure_schema()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(LockTimeout, match=r"held the write lock for over 0\.2s"):
                async with backend.transaction():
                    pass
        finally:
            other.execute("ROLLBACK")
            other.close()
        async with backend.transaction() as tx:  # usable again once the lock is free
            await tx.execute("CREATE TABLE ok (x)")


async def test_closed_backend_says_so(tmp_path: Path) -> None:
    backend = SQLiteBackend(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(BackendError, match="is not open"):
        await backend.fetch("SELECT 1")
