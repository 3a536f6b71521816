"""The Postgres backend against a real server: URLs, errors, locks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from conftest import MIGSYNC

from migsync import Client
from migsync.backends.postgres import PostgresBackend, lock_key, parse_url, where
from migsync.core.errors import BackendError, ConfigError, ConnectError, LockTimeout
from migsync.core.plugins import make_plugins
from migsync.core.work import Begin, Commit, Execute, Work
from migsync.testing import FakeClock
from migsync.testing.backend_suite import THREE, migration

# -- URLs and options (no server needed) -----------------------------------------------------


def test_parse_url_strips_our_options_and_keeps_asyncpg_params() -> None:
    dsn, ours = parse_url(
        "postgres://app:secret@db.example:5433/shop?schema=ms&sslmode=require"
        "&pool_max=3&lock_timeout=2.5&application_name=x"
    )
    assert dsn == "postgresql://app:secret@db.example:5433/shop?sslmode=require&application_name=x"
    assert ours == {"schema": "ms", "pool_max": "3", "lock_timeout": "2.5"}
    assert parse_url("postgresql://h/db") == ("postgresql://h/db", {})
    with pytest.raises(ConfigError, match="not a postgres URL"):
        parse_url("mysql://h/db")


def test_where_names_host_port_database_never_the_password() -> None:
    assert where("postgresql://app:secret@db.example:5433/shop?sslmode=require") == "db.example:5433/shop"
    assert where("postgresql://app@db.example/") == "db.example:5432/app"
    assert where("postgresql:///shop") == "localhost:5432/shop"
    assert "secret" not in where("postgresql://app:secret@h/db")


def test_options_reach_the_backend() -> None:
    backend = PostgresBackend("postgresql://h/db?schema=ms&pool_max=3&lock_timeout=2.5&sslmode=disable")
    assert (backend.schema, backend.pool_max, backend.lock_timeout) == ("ms", 3, 2.5)
    assert backend.dsn == "postgresql://h/db?sslmode=disable"
    assert backend.tables.queue == '"ms".migration_changes'
    assert PostgresBackend("postgresql://h/db").tables.queue == '"public".migration_changes'


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://h/db?schema=bad-name", r"schema name 'bad-name' is not a plain SQL identifier"),
        ('postgresql://h/db?schema=x";drop', r"is not a plain SQL identifier"),
        ("postgresql://h/db?pool_max=1", r"pool_max must be at least 2"),
        ("postgresql://h/db?pool_max=many", r"h:5432/db: invalid literal"),
        ("postgresql://h/db?lock_timeout=soon", r"h:5432/db: could not convert"),
        ("postgresql://h:port/db", r"[Pp]ort"),
    ],
)
def test_bad_options_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PostgresBackend(url)


def test_lock_key_is_stable_and_per_schema() -> None:
    assert lock_key("public", "write") == lock_key("public", "write")
    assert lock_key("public", "write") != lock_key("other", "write")
    assert -(2**63) <= lock_key("public", "migration_changes") < 2**63


# -- connecting ---------------------------------------------------------------------------------


def test_cli_unreachable_server_is_one_line() -> None:
    result = subprocess.run(
        [MIGSYNC, "status", "--db", "postgresql://postgres@127.0.0.1:5999/x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "127.0.0.1:5999/x" in lines[0]
    assert lines[0].startswith("error: cannot connect to Postgres")
    assert "Traceback" not in result.stderr


async def test_missing_database_is_a_connect_error(postgres_server: str) -> None:
    parts = urlsplit(postgres_server)
    url = f"postgresql://{parts.netloc}/migsync_no_such_database"
    with pytest.raises(ConnectError, match=r":\d+/migsync_no_such_database: .*does not exist"):
        async with PostgresBackend(url):
            pass


async def test_lost_connection_is_a_connect_error(pg_url: str) -> None:
    async with PostgresBackend(pg_url) as backend:
        with pytest.raises(ConnectError, match=r"127\.0\.0\.1:5432/"):
            async with backend.transaction() as tx:
                pid = (await tx.fetch("SELECT pg_backend_pid() AS pid"))[0]["pid"]
                admin = await asyncpg.connect(pg_url)
                try:
                    await admin.execute("SELECT pg_terminate_backend($1)", pid)
                finally:
                    await admin.close()
                await tx.execute("SELECT 1")
        assert await backend.fetch("SELECT 1 AS one") == [{"one": 1}]  # the pool recovers


# -- migrations: errors and no-ops --------------------------------------------------------------


def client(url: str) -> Client:
    return Client.connect(url, plugins=make_plugins(autoload=False), sinks=[], clock=FakeClock())


async def test_sql_error_names_migration_statement_line_and_message(pg_url: str) -> None:
    broken = migration(
        1,
        "0001_broken",
        "CREATE TABLE a (x INTEGER);\n-- then\nINSERT INTO a VALUES (1);\n"
        "\nINSERT INTO\n  missing VALUES (1);",
    )
    async with client(pg_url) as c:
        result = await c.apply([broken])
    assert result.failure is not None
    error = result.failure.error or ""
    # The position Postgres reports points at "missing", on line 6 of the script.
    assert error.startswith("migration 0001_broken, statement 3 (line 6 of the script): UndefinedTableError")
    assert 'relation "missing" does not exist' in error


async def test_unique_violation_carries_postgres_detail_on_one_line(pg_url: str) -> None:
    migrations = [
        migration(1, "0001_table", "CREATE TABLE u (x INTEGER PRIMARY KEY);\nINSERT INTO u VALUES (1)"),
        migration(2, "0002_duplicate", "INSERT INTO u VALUES (1)"),
    ]
    async with client(pg_url) as c:
        result = await c.apply(migrations)
        states = await c.status()
    assert result.failure is not None
    error = result.failure.error or ""
    assert error.startswith(
        "migration 0002_duplicate, statement 1 (line 1 of the script): UniqueViolationError"
    )
    assert "(detail: Key (x)=(1) already exists.)" in error
    assert "\n" not in error and error.count("already exists") == 1
    assert [s.state for s in states] == ["applied", "failed"]
    assert states[1].error == error


async def test_comment_only_migration_is_a_no_op(pg_url: str) -> None:
    notes = migration(1, "0001_notes", "-- nothing for Postgres yet\n/* see 0002 */", "-- nor here")
    async with client(pg_url) as c:
        result = await c.apply([notes])
        assert result.ok and [o.label for o in result.processed] == ["apply 0001_notes"]
        assert [s.state for s in await c.status()] == ["applied"]


# -- locks --------------------------------------------------------------------------------------


@pytest.fixture
async def holder(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """Another session, named so that a LockTimeout can say who holds the lock."""
    conn = await asyncpg.connect(pg_url, server_settings={"application_name": "suite-holder"})
    yield conn
    await conn.close()


async def test_write_lock_held_elsewhere_is_a_lock_timeout(pg_url: str, holder: asyncpg.Connection) -> None:
    await holder.execute("BEGIN")
    await holder.execute("SELECT pg_advisory_xact_lock($1)", lock_key("public", "write"))
    pid = holder.get_server_pid()
    async with PostgresBackend(f"{pg_url}?lock_timeout=0.5") as backend:
        started = time.monotonic()
        with pytest.raises(LockTimeout) as caught:
            async with backend.transaction() as tx:
                await tx.execute("SELECT 1")
        elapsed = time.monotonic() - started
        assert 0.4 <= elapsed < 30, elapsed  # it waited for the timeout, and not forever
        message = str(caught.value)
        assert "write lock was held for over 0.5s" in message
        assert f"held by pid {pid}, suite-holder" in message
        await holder.execute("ROLLBACK")
        async with backend.transaction() as tx:  # free again
            assert await tx.execute("SELECT 1") == 1


async def test_write_lock_timeout_in_a_program_with_a_small_pool(
    pg_url: str, holder: asyncpg.Connection
) -> None:
    # The processor lock holds one connection and the program another: naming
    # the lock's holder must not wait for a third from a pool of two.
    await holder.execute("BEGIN")
    await holder.execute("SELECT pg_advisory_xact_lock($1)", lock_key("public", "write"))

    def program() -> Work[None]:
        yield Begin()
        yield Execute("SELECT 1")
        yield Commit()

    async with PostgresBackend(f"{pg_url}?lock_timeout=0.3&pool_max=2") as backend:
        started = time.monotonic()
        with pytest.raises(LockTimeout, match=r"suite-holder"):
            async with backend.processor_lock("q", 1):
                await backend.run(program())
        assert time.monotonic() - started < 30  # never stuck waiting for a third connection
        await holder.execute("ROLLBACK")
        async with backend.processor_lock("q", 1):
            await backend.run(program())  # and the pool is whole again


async def _waits_on_a_lock(holder: asyncpg.Connection, running: asyncio.Task[Any]) -> None:
    """Until a migsync session of this database waits on a lock (asked again and again, no clock)."""
    # pg_locks alone: pg_stat_activity is read once per transaction, and the holder is in one.
    sql = (
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    while not await holder.fetchval(sql):
        if running.done():  # it did not wait: say how it ended
            raise AssertionError(f"the pass ended without waiting for the lock: {running.result()!r}")


async def test_a_migration_that_finds_the_write_lock_busy_waits_for_it(
    pg_url: str, holder: asyncpg.Connection
) -> None:
    # A migration's BEGIN goes with its script in one message, trying the write lock without
    # waiting; another holder makes it begin again the waiting way, then run as usual.
    async with client(pg_url) as c:
        await c.ledger.record(THREE[:1])
        await c.ledger.queue_pending()
        await holder.execute("BEGIN")
        await holder.execute("SELECT pg_advisory_xact_lock($1)", lock_key("public", "write"))
        running = asyncio.create_task(c.process())
        await _waits_on_a_lock(holder, running)
        assert not running.done()
        await holder.execute("ROLLBACK")
        result = await running
        assert result.ok and [(o.label, o.attempts) for o in result.processed] == [("apply 0001_one", 1)]
        assert [s.state for s in await c.status()] == ["applied"]
        assert await holder.fetchval("SELECT count(*) FROM t1") == 0


async def test_a_busy_write_lock_at_a_migration_counts_no_attempt(
    pg_url: str, holder: asyncpg.Connection
) -> None:
    async with Client.connect(
        f"{pg_url}?lock_timeout=0.3", plugins=make_plugins(autoload=False), sinks=[], clock=FakeClock()
    ) as c:
        await c.ledger.record(THREE[:1])
        await c.ledger.queue_pending()
        await holder.execute("BEGIN")
        await holder.execute("SELECT pg_advisory_xact_lock($1)", lock_key("public", "write"))
        with pytest.raises(LockTimeout, match=r"write lock was held for over 0\.3s.*suite-holder"):
            await c.process()
        await holder.execute("ROLLBACK")
        # Nothing ran and nothing was counted: the change is as it was queued.
        row = await holder.fetchrow("SELECT processed, attempts, error FROM migration_changes")
        assert tuple(row) == (False, 0, None)
        assert await holder.fetchval("SELECT to_regclass('t1')") is None
        result = await c.process()
        assert result.ok and [(o.label, o.attempts) for o in result.processed] == [("apply 0001_one", 1)]


async def test_processor_lock_held_elsewhere_names_the_holder(
    pg_url: str, holder: asyncpg.Connection
) -> None:
    await holder.execute("SELECT pg_advisory_lock($1)", lock_key("custom", "migration_changes"))
    pid = holder.get_server_pid()
    async with PostgresBackend(f"{pg_url}?schema=custom") as backend:
        started = time.monotonic()
        with pytest.raises(LockTimeout) as caught:
            async with backend.processor_lock("migration_changes", 0.3):
                pass
        assert 0.25 <= time.monotonic() - started < 30  # it waited for the timeout, and not forever
        assert "processor lock 'migration_changes' not free after 0.3s" in str(caught.value)
        assert f"held by pid {pid}, suite-holder" in str(caught.value)
        async with backend.processor_lock("other", 0.3):  # another name is another lock
            pass
        await holder.execute("SELECT pg_advisory_unlock($1)", lock_key("custom", "migration_changes"))
        async with backend.processor_lock("migration_changes", 1):
            pass


async def test_closed_backend_says_so(pg_url: str) -> None:
    backend = PostgresBackend(pg_url)
    with pytest.raises(BackendError, match=r"127\.0\.0\.1:5432/migsync_test_\w+ is not open"):
        await backend.fetch("SELECT 1")


def test_a_killed_client_does_not_leave_its_statement_running(tmp_path: Path, pg_url: str) -> None:
    # client_connection_check_interval: the server notices the dead client and
    # aborts its statement (releasing migsync's locks) instead of finishing it.
    migrations = tmp_path / "m"
    migrations.mkdir()
    (migrations / "0001_sleep.sql").write_text("-- migrate:up\nSELECT pg_sleep(60);\n")
    env = {**os.environ, "MIGSYNC_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.Popen(
        [MIGSYNC, "apply", "--migrations", str(migrations), "--db", pg_url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    database = pg_url.rsplit("/", 1)[1]

    async def sleeping() -> int:
        conn = await asyncpg.connect(pg_url.rsplit("/", 1)[0] + "/postgres")
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                    "AND query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()",
                    database,
                )
            )
        finally:
            await conn.close()

    deadline = time.monotonic() + 20
    while asyncio.run(sleeping()) == 0:
        assert time.monotonic() < deadline, "the migration never started"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    killed_at = time.monotonic()
    while asyncio.run(sleeping()):
        # Well before pg_sleep(60) ends by itself: the server noticed that its client died.
        assert time.monotonic() - killed_at < 30, "the dead client's statement kept running"
        time.sleep(0.1)
