"""Migrations that run outside a transaction: dirty while they run, ``migsync repair`` after a crash.

A migration marked ``.autocommit`` (or a section marked ``transaction:false``)
cannot run in a transaction (``CREATE INDEX CONCURRENTLY``). The processor
records it dirty before it starts and clean after; if it stops half-way the
database stays dirty, nothing later runs, and a person resolves it with
``migsync repair --db URL NAME (--applied | --not-applied)``. A backend without
transactional DDL runs every migration that way.

Most tests run the real console script on both built-in backends (``any_url``).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from conftest import write_migrations
from dbtools import (
    is_sqlite,
    kill,
    long_statement,
    query,
    run,
    start,
    status_json,
    tables,
    wait_until_long_statement_runs,
    wait_until_sessions_gone,
)

from migsync import Client
from migsync.backends.sqlite import SQLiteBackend
from migsync.core.backend import TRANSACTIONAL_DDL
from migsync.core.events import Event, MigrationDirty, MigrationRepaired
from migsync.core.hookspecs import hookimpl
from migsync.core.migration import ANY_DIALECT, Migration, Script
from migsync.core.plugins import make_plugins
from migsync.core.sources import load_directory
from migsync.core.specs import BackendSpec

#: How long the long statement of the crash test runs (the process is killed well before).
#: How long 0002 of the crash test would run: it is killed in the middle, never waited for, so
#: this costs nothing and leaves any machine, however loaded, time enough to kill it mid-way.
SLEEP = 60.0


# -- helpers ------------------------------------------------------------------------------------


def apply(directory: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run("apply", "--migrations", str(directory), "--db", url, *extra)


def indexes(url: str) -> set[str]:
    if is_sqlite(url):
        sql = "SELECT name FROM sqlite_master WHERE type = 'index'"
    else:
        sql = "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
    return {name for (name,) in query(url, sql)} & {"idx", "idx2"}


def states(url: str) -> dict[str, str]:
    return {r["name"]: r["state"] for r in status_json(url)}


def dirty_flags(url: str) -> dict[str, bool]:
    rows = query(url, "SELECT migration_name, dirty FROM client_migration_status")
    return {name: bool(dirty) for name, dirty in rows}


def changes(url: str) -> list[tuple[str, str, bool, int]]:
    """(migration_name, operation, processed, attempts) of every queue row, in seq order."""
    rows = query(
        url, "SELECT migration_name, operation, processed, attempts FROM migration_changes ORDER BY seq"
    )
    return [(name, op, bool(processed), int(attempts)) for name, op, processed, attempts in rows]


def one_line(text: str) -> str:
    """``text`` with its whitespace runs (rich wraps tables and notes) as single spaces."""
    return " ".join(text.split())


# -- 1. Postgres: CREATE INDEX CONCURRENTLY -------------------------------------------------------

TABLE_T = {"0001_t.sql": "-- migrate:up\nCREATE TABLE t (x INTEGER);\n-- migrate:down\nDROP TABLE t;\n"}


def test_postgres_concurrent_index_in_an_autocommit_migration_applies(tmp_path: Path, pg_url: str) -> None:
    migrations = write_migrations(
        tmp_path / "m", {**TABLE_T, "0002_idx.autocommit.up.sql": "CREATE INDEX CONCURRENTLY idx ON t (x);\n"}
    )
    result = apply(migrations, pg_url)
    assert result.returncode == 0, result.stderr
    assert "applied 2 migrations (0001_t .. 0002_idx)" in result.stdout
    valid = query(
        pg_url,
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'idx'",
    )
    assert valid == [(True,)], "the concurrent index is missing or invalid"
    rows = status_json(pg_url)
    assert [(r["name"], r["state"], r["attempts"], r["error"]) for r in rows] == [
        ("0001_t", "applied", 1, None),
        ("0002_idx", "applied", 1, None),
    ]
    assert dirty_flags(pg_url) == {"0001_t": False, "0002_idx": False}
    assert changes(pg_url) == [("0001_t", "apply", True, 1), ("0002_idx", "apply", True, 1)]


def test_postgres_concurrent_index_not_marked_autocommit_is_refused_by_the_loader(
    tmp_path: Path, pg_url: str
) -> None:
    migrations = write_migrations(
        tmp_path / "m", {**TABLE_T, "0002_idx.up.sql": "CREATE INDEX CONCURRENTLY idx ON t (x);\n"}
    )
    result = apply(migrations, pg_url)
    assert result.returncode == 2
    assert "0002_idx.up.sql:1: CREATE ... CONCURRENTLY cannot run inside a transaction" in result.stderr
    assert ".autocommit" in result.stderr and "transaction:false" in result.stderr
    assert tables(pg_url, bookkeeping=False) == set()  # nothing ran, not even 0001


def test_postgres_concurrent_index_from_elsewhere_is_an_ordinary_failure(tmp_path: Path, pg_url: str) -> None:
    """A migration that did not come through the loader: Postgres refuses it in its own words, and
    the failure is an ordinary one (counted, retried with backoff), never dirty."""
    migrations = write_migrations(tmp_path / "m", TABLE_T)
    assert apply(migrations, pg_url).returncode == 0
    before = time.time()

    async def apply_unchecked() -> None:
        index = Migration(2, "0002_idx", up={ANY_DIALECT: Script("CREATE INDEX CONCURRENTLY idx ON t (x)")})
        async with Client.connect(pg_url) as client:
            result = await client.apply([*load_directory(migrations), index])
            assert result.failure is not None and not result.failure.dead and not result.failure.dirty

    asyncio.run(apply_unchecked())
    rows = status_json(pg_url)
    assert [r["state"] for r in rows] == ["applied", "failed"]
    failed = rows[1]
    assert "cannot run inside a transaction block" in failed["error"] and "0002_idx" in failed["error"]
    assert failed["queued"] == "apply" and failed["attempts"] == 1
    # An ordinary failure retries with backoff: a retry time in the future, not dirty.
    [(next_at,)] = query(
        pg_url, "SELECT next_attempt_at FROM migration_changes WHERE migration_name = '0002_idx'"
    )
    assert next_at > before
    assert failed["next_attempt_at"] is not None
    assert dirty_flags(pg_url).get("0002_idx", False) is False
    assert indexes(pg_url) == set()
    # It is retried (the backoff ignored), fails the same way, and counts the attempt.
    again = run("process", "--db", pg_url, "--retry-now")
    assert again.returncode == 1 and "failed: apply 0002_idx (attempt 2 of 3)" in again.stderr, again.stderr
    assert states(pg_url)["0002_idx"] == "failed"


# -- 2. a later statement fails: dirty, then repair ------------------------------------------------

HALF = {
    **TABLE_T,
    "0002_half.autocommit.up.sql": "CREATE TABLE half (x INTEGER);\n"
    "INSERT INTO half (x) VALUES (1);\n"
    "INSERT INTO nowhere (x) VALUES (1);\n",
    "0003_after_half.sql": "-- migrate:up\nCREATE TABLE after_half (x INTEGER);\n",
}


@pytest.mark.parametrize("outcome", ["applied", "not-applied"])
def test_a_later_statement_failing_leaves_the_database_dirty_until_repaired(
    tmp_path: Path, any_url: str, outcome: str
) -> None:
    migrations = write_migrations(tmp_path / "m", HALF)
    result = apply(migrations, any_url)
    assert result.returncode == 1
    assert "applied 1 migration (0001_t)" in result.stdout
    assert "dirty: apply 0002_half stopped half-way" in result.stderr, result.stderr
    assert "statements 1-2 had already committed" in result.stderr
    assert "nowhere" in result.stderr
    rows = status_json(any_url)
    assert [(r["name"], r["state"]) for r in rows] == [
        ("0001_t", "applied"),
        ("0002_half", "dirty"),
        ("0003_after_half", "pending"),
    ]
    assert rows[1]["queued"] == "apply" and "nowhere" in rows[1]["error"]
    assert rows[1]["next_attempt_at"] is None  # no retry by backoff: it waits for a person
    # The statements before the failing one committed; nothing after the migration ran.
    assert tables(any_url, bookkeeping=False) == {"t", "half"}
    assert query(any_url, "SELECT x FROM half") == [(1,)]
    assert dirty_flags(any_url)["0002_half"] is True

    # A dirty migration is not retried by backoff: nothing runs, however often one asks.
    again = apply(migrations, any_url, "--retry-now")
    assert again.returncode == 1
    assert "the database is dirty: migration 0002_half" in again.stderr, again.stderr
    assert tables(any_url, bookkeeping=False) == {"t", "half"}
    status = run("status", "--db", any_url)
    assert status.returncode == 0, status.stderr
    text = one_line(status.stdout)
    assert "0002_half is dirty" in text
    assert "migsync repair --db URL 0002_half --applied" in text and "--not-applied" in text

    if outcome == "applied":
        query(any_url, "CREATE TABLE nowhere (x INTEGER)")  # finish by hand what it left undone
        query(any_url, "INSERT INTO nowhere (x) VALUES (1)")
        repaired = run("repair", "--db", any_url, "0002_half", "--applied")
        assert repaired.returncode == 0, repaired.stderr
        assert "repaired: 0002_half is now applied" in repaired.stdout
    else:
        query(any_url, "DROP TABLE half")  # undo by hand what did commit, and fix the cause
        query(any_url, "CREATE TABLE nowhere (x INTEGER)")
        repaired = run("repair", "--db", any_url, "half", "--not-applied")
        assert repaired.returncode == 0, repaired.stderr
        assert "repaired: 0002_half is now pending" in repaired.stdout
        assert states(any_url)["0002_half"] == "pending"
    assert dirty_flags(any_url)["0002_half"] is False

    after = apply(migrations, any_url)
    assert after.returncode == 0, after.stderr
    assert states(any_url) == dict.fromkeys(("0001_t", "0002_half", "0003_after_half"), "applied")
    assert tables(any_url, bookkeeping=False) == {"t", "half", "nowhere", "after_half"}
    # Exactly once: repaired as applied it never ran again; as not applied it ran in full once more.
    assert query(any_url, "SELECT x FROM half") == [(1,)]
    assert query(any_url, "SELECT x FROM nowhere") == [(1,)]
    if outcome == "applied":
        assert "applied 1 migration (0003_after_half)" in after.stdout
    else:
        assert "applied 2 migrations (0002_half .. 0003_after_half)" in after.stdout
    assert [(name, processed) for name, _, processed, _ in changes(any_url)] == [
        ("0001_t", True),
        ("0002_half", True),
        ("0003_after_half", True),
    ]
    assert all(not flag for flag in dirty_flags(any_url).values())


def test_a_dirty_migration_at_its_last_attempt_is_reported_dirty_not_dead(
    tmp_path: Path, any_url: str
) -> None:
    # With one attempt allowed, the attempt that left it dirty was its last; it is still
    # dirty (a person must repair it), not dead (which 'migsync queue' would revive).
    migrations = write_migrations(tmp_path / "m", HALF)
    first = apply(migrations, any_url, "--max-attempts", "1")
    assert first.returncode == 1
    assert "dirty: apply 0002_half stopped half-way" in first.stderr, first.stderr
    assert states(any_url)["0002_half"] == "dirty"
    again = apply(migrations, any_url, "--max-attempts", "1")
    assert again.returncode == 1
    assert "dead:" not in again.stderr and "migsync queue" not in again.stderr, again.stderr
    assert "the database is dirty: migration 0002_half" in again.stderr, again.stderr
    assert "migsync repair" in again.stderr
    assert states(any_url)["0002_half"] == "dirty"


def test_repair_refuses_a_migration_that_is_not_dirty(tmp_path: Path, any_url: str) -> None:
    migrations = write_migrations(tmp_path / "m", TABLE_T)
    assert apply(migrations, any_url).returncode == 0
    refused = run("repair", "--db", any_url, "0001_t", "--not-applied")
    assert refused.returncode == 2 and "is not dirty (applied)" in refused.stderr, refused.stderr
    assert states(any_url) == {"0001_t": "applied"}


# -- 3. killed mid-migration -----------------------------------------------------------------------


def crash_migrations(directory: Path, url: str) -> Path:
    """0002 runs outside a transaction: it makes ``b``, runs about SLEEP seconds, then makes ``c``."""
    pause = long_statement(url, SLEEP)
    return write_migrations(
        directory,
        {
            "0001_a.sql": "-- migrate:up\nCREATE TABLE a (x INTEGER);\n",
            "0002_b.autocommit.up.sql": "CREATE TABLE b (x INTEGER);\n"
            f"{pause};\n"
            "CREATE TABLE c (x INTEGER);\n",
            "0003_d.sql": "-- migrate:up\nCREATE TABLE d (x INTEGER);\n",
        },
    )


def wait_until_the_long_statement_runs(url: str, proc: subprocess.Popen[str]) -> None:
    """Until the process is inside 0002, in its long statement."""
    # SQLite: the first statement commits on its own: once ``b`` is there, the long one has begun.
    wait_until_long_statement_runs(
        url,
        proc,
        sqlite_began=lambda: "b" in tables(url),
        sqlite_what="0002's first statement to commit",
        settle=0.3,
    )


def test_a_process_killed_mid_autocommit_migration_leaves_it_dirty(tmp_path: Path, any_url: str) -> None:
    migrations = crash_migrations(tmp_path / "m", any_url)
    proc = start("apply", "--migrations", str(migrations), "--db", any_url)
    try:
        wait_until_the_long_statement_runs(any_url, proc)
        kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    wait_until_sessions_gone(any_url, timeout=SLEEP + 10)

    # The first statement committed; the migration is recorded in progress.
    assert tables(any_url, bookkeeping=False) == {"a", "b"}
    rows = status_json(any_url)
    assert [(r["name"], r["state"]) for r in rows] == [
        ("0001_a", "applied"),
        ("0002_b", "dirty"),
        ("0003_d", "pending"),
    ]
    assert rows[1]["queued"] == "apply"
    queue_before = changes(any_url)
    assert [(name, processed) for name, _, processed, _ in queue_before] == [
        ("0001_a", True),
        ("0002_b", False),
        ("0003_d", False),
    ]
    assert queue_before[2][3] == 0
    status = run("status", "--db", any_url)
    assert "0002_b is dirty" in one_line(status.stdout) and "migsync repair" in status.stdout

    # Nothing runs while it is dirty, and no attempt is counted for the refusal.
    began = time.monotonic()
    again = apply(migrations, any_url)
    assert again.returncode == 1
    assert "the database is dirty: migration 0002_b" in again.stderr, again.stderr
    assert "migsync repair" in again.stderr
    assert time.monotonic() - began < 20
    assert tables(any_url, bookkeeping=False) == {"a", "b"}
    assert changes(any_url) == queue_before, "the refused run counted an attempt or changed the queue"
    assert states(any_url)["0002_b"] == "dirty"
    process = run("process", "--db", any_url)
    assert process.returncode == 1 and "dirty" in process.stderr
    assert changes(any_url) == queue_before

    # The operator finishes the migration by hand and says so.
    query(any_url, "CREATE TABLE c (x INTEGER)")
    repaired = run("repair", "--db", any_url, "0002_b", "--applied")
    assert repaired.returncode == 0, repaired.stderr
    assert "repaired: 0002_b is now applied" in repaired.stdout
    after = apply(migrations, any_url)
    assert after.returncode == 0, after.stderr
    assert "applied 1 migration (0003_d)" in after.stdout
    assert tables(any_url, bookkeeping=False) == {"a", "b", "c", "d"}
    assert states(any_url) == {"0001_a": "applied", "0002_b": "applied", "0003_d": "applied"}
    assert all(processed for _, _, processed, _ in changes(any_url))
    assert not any(dirty_flags(any_url).values())


# -- 4. revert outside a transaction ---------------------------------------------------------------


def revert_migrations(directory: Path, url: str) -> Path:
    concurrently = "" if is_sqlite(url) else " CONCURRENTLY"
    return write_migrations(
        directory,
        {
            **TABLE_T,
            "0002_idx.sql": "-- migrate:up transaction:false\n"
            f"CREATE INDEX{concurrently} idx ON t (x);\n"
            "-- migrate:down transaction:false\n"
            f"DROP INDEX{concurrently} idx;\n",
            "0003_idx2.sql": "-- migrate:up transaction:false\n"
            f"CREATE INDEX{concurrently} idx2 ON t (x);\n"
            "CREATE TABLE keep (x INTEGER);\n"
            "-- migrate:down transaction:false\n"
            f"DROP INDEX{concurrently} idx2;\n"
            "DROP TABLE nowhere;\n"
            "DROP TABLE keep;\n",
        },
    )


def test_revert_outside_a_transaction_and_repairing_a_half_failed_one(tmp_path: Path, any_url: str) -> None:
    migrations = revert_migrations(tmp_path / "m", any_url)
    applied = apply(migrations, any_url)
    assert applied.returncode == 0, applied.stderr
    assert indexes(any_url) == {"idx", "idx2"} and "keep" in tables(any_url)

    # 0003's down script fails at its second statement, after the first committed.
    half = run("revert", "--db", any_url, "0003_idx2")
    assert half.returncode == 1
    assert "dirty: revert 0003_idx2 stopped half-way" in half.stderr, half.stderr
    rows = status_json(any_url)
    assert [(r["name"], r["state"], r["queued"]) for r in rows] == [
        ("0001_t", "applied", None),
        ("0002_idx", "applied", None),
        ("0003_idx2", "dirty", "revert"),
    ]
    assert indexes(any_url) == {"idx"} and "keep" in tables(any_url)
    # Nothing more may be asked of a dirty database: a person repairs it first.
    refused = run("revert", "--db", any_url, "0002_idx")
    assert refused.returncode == 2
    assert "the database is dirty: migration 0003_idx2" in refused.stderr, refused.stderr
    assert indexes(any_url) == {"idx"}, "a revert ran while the database was dirty"
    queue_refused = run("queue", "--db", any_url, "0003_idx2")
    assert queue_refused.returncode == 2 and "the database is dirty" in queue_refused.stderr

    # The operator finishes the revert by hand: it took effect, so 0003 is no longer applied.
    query(any_url, "DROP TABLE keep")
    repaired = run("repair", "--db", any_url, "0003_idx2", "--applied")
    assert repaired.returncode == 0, repaired.stderr
    assert "repaired: 0003_idx2 is now pending" in repaired.stdout
    rows = status_json(any_url)
    assert [(r["name"], r["state"], r["queued"], r["applied_at"]) for r in rows] == [
        ("0001_t", "applied", None, rows[0]["applied_at"]),
        ("0002_idx", "applied", None, rows[1]["applied_at"]),
        ("0003_idx2", "pending", None, None),
    ]
    assert [(name, op) for name, op, processed, _ in changes(any_url) if not processed] == []

    # Now the revert of 0002 runs, outside a transaction (DROP INDEX CONCURRENTLY on Postgres).
    reverted = run("revert", "--db", any_url, "0002_idx")
    assert reverted.returncode == 0, reverted.stderr
    assert "reverted 1 migration (0002_idx)" in reverted.stdout
    assert indexes(any_url) == set()
    assert states(any_url) == {"0001_t": "applied", "0002_idx": "pending", "0003_idx2": "pending"}
    assert not any(dirty_flags(any_url).values())

    # Both apply again, outside a transaction.
    again = apply(migrations, any_url)
    assert again.returncode == 0, again.stderr
    assert "applied 2 migrations (0002_idx .. 0003_idx2)" in again.stdout
    assert indexes(any_url) == {"idx", "idx2"} and "keep" in tables(any_url)
    assert set(states(any_url).values()) == {"applied"}


def test_repair_not_applied_for_a_revert_runs_the_revert_again(tmp_path: Path, any_url: str) -> None:
    migrations = revert_migrations(tmp_path / "m", any_url)
    assert apply(migrations, any_url).returncode == 0
    assert run("revert", "--db", any_url, "0003_idx2").returncode == 1
    assert states(any_url)["0003_idx2"] == "dirty"
    # Undo by hand what did commit, fix the cause, and have the revert run again.
    concurrently = "" if is_sqlite(any_url) else " CONCURRENTLY"
    query(any_url, f"CREATE INDEX{concurrently} idx2 ON t (x)")
    query(any_url, "CREATE TABLE nowhere (x INTEGER)")
    repaired = run("repair", "--db", any_url, "0003_idx2", "--not-applied")
    assert repaired.returncode == 0, repaired.stderr
    assert "repaired: 0003_idx2 is now applied" in repaired.stdout
    assert [(r["state"], r["queued"]) for r in status_json(any_url)][2] == ("applied", "revert")
    processed = run("process", "--db", any_url)
    assert processed.returncode == 0, processed.stderr
    assert "processed 1 migration (0003_idx2)" in processed.stdout
    assert indexes(any_url) == {"idx"} and tables(any_url, bookkeeping=False) == {"t"}
    assert states(any_url)["0003_idx2"] == "pending"


# -- 5. a backend without transactional DDL -----------------------------------------------------------


class NoDDLBackend(SQLiteBackend):
    """SQLite that claims no transactional DDL, served at ``nodl:///path``."""

    name: ClassVar[str] = "nodl"
    capabilities: ClassVar[frozenset[str]] = SQLiteBackend.capabilities - {TRANSACTIONAL_DDL}

    def __init__(self, url: str, **options: Any):
        assert url.startswith("nodl:")
        super().__init__("sqlite:" + url[len("nodl:") :], **options)


def nodl_plugins() -> Any:
    @hookimpl
    def migsync_register_backends(register: Callable[[BackendSpec], None]) -> None:
        register(BackendSpec("nodl", ("nodl",), NoDDLBackend, "SQLite without transactional DDL"))

    return make_plugins(
        extra=[SimpleNamespace(__name__="nodl-backend", migsync_register_backends=migsync_register_backends)]
    )


TWO_STATEMENTS = {
    "0001_ok.sql": "-- migrate:up\nCREATE TABLE t (x INTEGER);\n",
    "0002_two.sql": "-- migrate:up\nCREATE TABLE first (x INTEGER);\nINSERT INTO nowhere (x) VALUES (1);\n",
    "0003_later.sql": "-- migrate:up\nCREATE TABLE keep (x INTEGER);\n",
}


async def test_a_backend_without_transactional_ddl_runs_every_migration_outside_a_transaction(
    tmp_path: Path,
) -> None:
    migrations = write_migrations(tmp_path / "m", TWO_STATEMENTS)
    plugins = nodl_plugins()
    assert plugins.backend_for_url("nodl:///x.db").name == "nodl"

    nodl_file = tmp_path / "nodl.db"
    async with Client.connect(f"nodl:///{nodl_file}", plugins=plugins, sinks=[]) as client:
        assert isinstance(client.backend, NoDDLBackend)
        assert client.processor.handler.transactional_ddl is False  # type: ignore[attr-defined]
        result = await client.apply(load_directory(migrations))
        status = {s.name: s for s in await client.status()}
    assert [o.label for o in result.processed if o.ok] == ["apply 0001_ok"]
    assert result.failure is not None and result.failure.dirty, result
    assert result.failure.label == "apply 0002_two" and "nowhere" in (result.failure.error or "")
    assert result.failure.next_attempt_at is None
    assert status["0002_two"].state == "dirty" and status["0003_later"].state == "pending"
    nodl_url = f"sqlite:///{nodl_file}"
    # Not marked autocommit, yet its first statement committed on its own.
    assert tables(nodl_url, bookkeeping=False) == {"t", "first"}

    # The same migrations on plain SQLite (transactional DDL): an ordinary failure, rolled back.
    plain_url = f"sqlite:///{tmp_path / 'plain.db'}"
    async with Client.connect(plain_url, plugins=plugins, sinks=[]) as client:
        plain = await client.apply(load_directory(migrations))
        plain_status = {s.name: s.state for s in await client.status()}
    assert plain.failure is not None and not plain.failure.dirty and plain.failure.next_attempt_at
    assert plain_status["0002_two"] == "failed"
    assert tables(plain_url, bookkeeping=False) == {"t"}

    # Repaired, the rest runs on the backend without transactional DDL too.
    query(nodl_url, "DROP TABLE first")
    query(nodl_url, "CREATE TABLE nowhere (x INTEGER)")
    async with Client.connect(f"nodl:///{nodl_file}", plugins=plugins, sinks=[]) as client:
        repaired = await client.ledger.repair("0002_two", applied=False)
        assert repaired.state == "pending"
        after = await client.apply(load_directory(migrations), ignore_backoff=True)
        final = {s.name: s.state for s in await client.status()}
    assert after.ok and [o.label for o in after.processed] == ["apply 0002_two", "apply 0003_later"]
    assert set(final.values()) == {"applied"}
    assert tables(nodl_url, bookkeeping=False) == {"t", "first", "nowhere", "keep"}


# -- 6. events ---------------------------------------------------------------------------------------


async def test_dirty_and_repaired_events_reach_a_sink(tmp_path: Path, any_url: str) -> None:
    migrations = write_migrations(tmp_path / "m", HALF)
    seen: list[Event] = []
    async with Client.connect(any_url, sinks=[]) as client:
        client.bus.subscribe(seen.append, "migration_dirty", "migration_repaired")
        result = await client.apply(load_directory(migrations))
        assert result.failure is not None and result.failure.dirty
        blocked = await client.process(ignore_backoff=True)
        assert blocked.blocked is not None and blocked.blocked.dirty and not blocked.processed
        await client.ledger.repair("0002_half", applied=True)
    # Closing the client delivered what was queued to the sinks.
    assert [type(e) for e in seen] == [MigrationDirty, MigrationRepaired], seen
    dirty, repaired = seen
    assert isinstance(dirty, MigrationDirty) and isinstance(repaired, MigrationRepaired)
    assert (dirty.name, dirty.version, dirty.operation, dirty.attempts) == ("0002_half", 2, "apply", 1)
    assert "nowhere" in dirty.error and "migsync repair" in dirty.error
    assert (repaired.name, repaired.version, repaired.applied) == ("0002_half", 2, True)
    assert states(any_url)["0002_half"] == "applied"
