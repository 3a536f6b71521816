"""The SQLite backend against real files: URLs, pragmas, locking, error mapping."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from dbtools import migsync_env

from migsync.backends.sqlite import SQLiteBackend, parse_url
from migsync.core.backend import PROCESS_WIDE_LOCK, TRANSACTIONAL_DDL, Backend
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


# -- the processor lock: a lock file beside the database ----------------------------------------

#: A process that takes the processor lock of ``argv[1]`` (queue ``argv[2]``), says so, and holds
#: it until its stdin closes.
HOLDER = """
import asyncio, sys
from migsync.backends.sqlite import SQLiteBackend

async def main():
    async with SQLiteBackend(sys.argv[1]) as backend:
        async with backend.processor_lock(sys.argv[2], 10):
            print("holding", flush=True)
            await asyncio.to_thread(sys.stdin.read)

asyncio.run(main())
"""


async def test_the_processor_lock_is_a_file_per_queue_beside_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    async with SQLiteBackend(url) as first, SQLiteBackend(url) as second:
        assert PROCESS_WIDE_LOCK in first.capabilities
        async with first.processor_lock("migration_changes", 5):
            lock = tmp_path / "app.db-migsync-migration_changes.lock"
            assert lock.read_text() == f"{os.getpid()}\n"
            with pytest.raises(LockTimeout) as caught:
                async with second.processor_lock("migration_changes", 0.1):
                    pass
            assert str(caught.value) == (
                f"{tmp_path / 'app.db'}: processor lock 'migration_changes' not free after 0.1s "
                f"(held by this process, pid {os.getpid()}; lock file {lock})"
            )
            async with second.processor_lock("changes", 0.1):  # the outbox's queue: not blocked
                assert (tmp_path / "app.db-migsync-changes.lock").is_file()
        async with second.processor_lock("migration_changes", 0.1):
            pass
    # Left in place (deleting one under a running process would split the lock).
    assert sorted(p.name for p in tmp_path.glob("*.lock")) == [
        "app.db-migsync-changes.lock",
        "app.db-migsync-migration_changes.lock",
    ]


async def test_a_symlink_to_the_database_finds_the_same_lock(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "link.db").symlink_to(tmp_path / "data" / "app.db")
    async with (
        SQLiteBackend(f"sqlite:///{tmp_path / 'data' / 'app.db'}") as real,
        SQLiteBackend(f"sqlite:///{tmp_path / 'link.db'}") as link,
        real.processor_lock("q", 5),
    ):
        with pytest.raises(LockTimeout, match=r"data/app\.db-migsync-q\.lock\)$"):
            async with link.processor_lock("q", 0.1):
                pass
    assert [p.name for p in tmp_path.glob("*.lock")] == []


async def test_a_lock_held_by_another_process_names_its_pid_and_frees_when_it_ends(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, "migration_changes"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=migsync_env(),
        cwd=tmp_path,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        async with SQLiteBackend(url) as backend:
            with pytest.raises(LockTimeout, match=rf"\(held by pid {holder.pid}; lock file "):
                async with backend.processor_lock("migration_changes", 0.1):
                    pass
            holder.communicate("", timeout=30)
            assert holder.returncode == 0
            async with backend.processor_lock("migration_changes", 10):
                pass
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate()


async def test_a_lock_file_that_cannot_be_created_is_a_connect_error_naming_it(tmp_path: Path) -> None:
    lock = tmp_path / "app.db-migsync-migration_changes.lock"
    lock.mkdir()  # not a file: opening it fails, as it would in a read-only folder
    async with SQLiteBackend(f"sqlite:///{tmp_path / 'app.db'}") as backend:
        with pytest.raises(ConnectError) as caught:
            async with backend.processor_lock("migration_changes", 1):
                pass
        assert str(caught.value).startswith(f"cannot open the processor lock file {lock}: Is a directory")
        lock.rmdir()
        async with backend.processor_lock("migration_changes", 1):  # the failure left nothing taken
            pass


async def test_a_memory_database_has_no_lock_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with SQLiteBackend("sqlite:///:memory:") as backend, backend.processor_lock("migration_changes", 1):
        with pytest.raises(LockTimeout):  # still exclusive within the instance
            async with backend.processor_lock("migration_changes", 0.05):
                pass
    assert os.listdir(tmp_path) == []


def test_without_fcntl_the_lock_stays_in_process_and_nothing_breaks(tmp_path: Path) -> None:
    probe = """
import asyncio, sys
sys.modules["fcntl"] = None  # as on Windows: import fcntl raises ImportError
from migsync.backends.sqlite import SQLiteBackend
from migsync.core.backend import PROCESS_WIDE_LOCK

async def main():
    async with SQLiteBackend(sys.argv[1]) as backend:
        assert PROCESS_WIDE_LOCK not in backend.capabilities
        async with backend.processor_lock("migration_changes", 1):
            pass

asyncio.run(main())
"""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    result = subprocess.run(
        [sys.executable, "-c", probe, url], capture_output=True, text=True, env=migsync_env(), timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["app.db"]
