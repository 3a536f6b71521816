"""One transaction per migration, really: foreign keys, transaction control, errors never hidden.

Each test runs the real ``migsync`` console script (or the ``Client`` API) on real SQLite
files and, where the backend matters, a real Postgres database, and compares with what the
plain driver makes of the same files.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path

import asyncpg
import pytest
from conftest import write_migrations
from dbtools import is_sqlite, query, run, sqlite_path, status_json, tables

from migsync import Client
from migsync.core.errors import TransactionLost
from migsync.core.events import BaseEventSink, Event, MigrationWaiting
from migsync.core.migration import ANY_DIALECT, Migration, Script
from migsync.core.work import Begin, Commit, Execute, Work
from migsync.core.work import Script as RunScript


def apply(directory: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run("apply", "--migrations", str(directory), "--db", url, *extra)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``error:`` line a refused command printed (no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- SQLite: a table rebuild keeps the children's rows ---------------------------------------------

PARENT_CHILD = (
    "-- migrate:up\n"
    "CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);\n"
    "CREATE TABLE child (id INTEGER PRIMARY KEY,\n"
    "    parent_id INTEGER REFERENCES parent(id) ON DELETE CASCADE);\n"
    "INSERT INTO parent VALUES (1, 'a'), (2, 'b');\n"
    "INSERT INTO child VALUES (10, 1), (20, 2);\n"
    "-- migrate:down\nDROP TABLE child;\nDROP TABLE parent;\n"
)

# SQLite's own procedure (sqlite.org/lang_altertable.html), as users write it.
REBUILD_PARENT = (
    "-- migrate:up\n"
    "PRAGMA foreign_keys=OFF;\n"
    "CREATE TABLE parent_new (id INTEGER PRIMARY KEY, name TEXT NOT NULL DEFAULT '');\n"
    "INSERT INTO parent_new (id, name) SELECT id, name FROM parent;\n"
    "DROP TABLE parent;\n"
    "ALTER TABLE parent_new RENAME TO parent;\n"
    "PRAGMA foreign_key_check;\n"
    "PRAGMA foreign_keys=ON;\n"
    "-- migrate:down\n"
)


def plain_sqlite(directory: Path, db: Path) -> None:
    """What the plain driver (sqlite3, foreign keys at their default) makes of the up scripts."""
    conn = sqlite3.connect(db)
    try:
        for path in sorted(directory.iterdir()):
            text = path.read_text()
            conn.executescript(text.split("-- migrate:down")[0].replace("-- migrate:up", ""))
    finally:
        conn.close()


def test_sqlite_table_rebuild_keeps_the_children(tmp_path: Path) -> None:
    directory = write_migrations(
        tmp_path / "m", {"0001_init.sql": PARENT_CHILD, "0002_rebuild.sql": REBUILD_PARENT}
    )
    url = f"sqlite:///{tmp_path / 'app.db'}"
    result = apply(directory, url)
    assert result.returncode == 0, result.stderr
    plain = tmp_path / "plain.db"
    plain_sqlite(directory, plain)
    for db in (sqlite_path(url), str(plain)):
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("SELECT id, parent_id FROM child ORDER BY id").fetchall() == [
                (10, 1),
                (20, 2),
            ]
            assert conn.execute("SELECT id, name FROM parent ORDER BY id").fetchall() == [(1, "a"), (2, "b")]
        finally:
            conn.close()
    assert [m["state"] for m in status_json(url)] == ["applied", "applied"]


async def test_enforcement_is_back_on_after_a_migration(tmp_path: Path) -> None:
    directory = write_migrations(
        tmp_path / "m", {"0001_init.sql": PARENT_CHILD, "0002_rebuild.sql": REBUILD_PARENT}
    )
    from migsync import load_directory

    async with Client.connect(f"sqlite:///{tmp_path / 'app.db'}") as client:
        assert (await client.apply(load_directory(directory))).ok
        assert await client.backend.fetch("PRAGMA foreign_keys") == [{"foreign_keys": 1}]
        with pytest.raises(Exception, match="FOREIGN KEY constraint failed"):
            async with client.changes() as rec:
                await rec.execute("INSERT INTO child VALUES (30, 99)")
        async with client.changes() as rec:  # and cascades fire again in the application
            await rec.execute("DELETE FROM parent WHERE id = 1")
        assert await client.backend.fetch("SELECT id FROM child") == [{"id": 20}]


ORPHANING = (
    "-- migrate:up\n"
    "CREATE TABLE audit (id INTEGER PRIMARY KEY);\n"
    "DELETE FROM parent WHERE id = 2;\n"
    "-- migrate:down\nDROP TABLE audit;\n"
)


def test_sqlite_violation_left_by_a_migration_fails_it_and_names_the_row(tmp_path: Path) -> None:
    directory = write_migrations(
        tmp_path / "m", {"0001_init.sql": PARENT_CHILD, "0002_orphan.sql": ORPHANING}
    )
    url = f"sqlite:///{tmp_path / 'app.db'}"
    result = apply(directory, url)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "foreign key violation left by the migration: child rowid 20 (parent_id -> id)" in output
    assert "references parent" in output
    states = status_json(url)
    assert [m["state"] for m in states] == ["applied", "failed"]
    assert states[1]["attempts"] == 1
    # Rolled back whole: the parent row and the new table are still as they were.
    assert query(url, "SELECT id FROM parent ORDER BY id") == [(1,), (2,)]
    assert "audit" not in tables(url)


def test_violations_that_were_there_before_do_not_fail_a_migration(tmp_path: Path) -> None:
    directory = write_migrations(tmp_path / "m", {"0001_init.sql": PARENT_CHILD})
    url = f"sqlite:///{tmp_path / 'app.db'}"
    assert apply(directory, url).returncode == 0
    conn = sqlite3.connect(sqlite_path(url))  # an orphan made by the application, long ago
    conn.execute("INSERT INTO child VALUES (99, 12345)")
    conn.commit()
    conn.close()
    write_migrations(
        directory,
        {"0002_more.sql": "-- migrate:up\nINSERT INTO parent VALUES (3, 'c');\n-- migrate:down\n"},
    )
    result = apply(directory, url)
    assert result.returncode == 0, result.stdout + result.stderr


def test_enforcement_can_stay_on_during_migrations(tmp_path: Path) -> None:
    directory = write_migrations(
        tmp_path / "m", {"0001_init.sql": PARENT_CHILD, "0002_rebuild.sql": REBUILD_PARENT}
    )
    url = f"sqlite:///{tmp_path / 'app.db'}"
    result = apply(directory, f"{url}?migration_foreign_keys=on")
    assert result.returncode == 0, result.stderr
    assert query(url, "SELECT count(*) FROM child") == [(0,)]  # the cascade fired, as asked
    bad = apply(directory, f"{url}?migration_foreign_keys=maybe")
    assert "migration_foreign_keys='maybe'; valid: check, on" in one_error_line(bad)
    assert bad.returncode == 2


# -- transaction control inside a migration ------------------------------------------------------


WRAPPED_UP = (
    "BEGIN;\nCREATE TABLE wrapped (id INTEGER PRIMARY KEY);\nINSERT INTO wrapped VALUES (1);\nCOMMIT;\n"
)
WRAPPED_DOWN = "BEGIN;\nDROP TABLE wrapped;\nCOMMIT;\n"


def test_a_begin_commit_wrapper_runs_inside_migsyncs_transaction(tmp_path: Path, any_url: str) -> None:
    directory = write_migrations(
        tmp_path / "m", {"0001_wrapped.up.sql": WRAPPED_UP, "0001_wrapped.down.sql": WRAPPED_DOWN}
    )
    result = apply(directory, any_url)
    assert result.returncode == 0, result.stderr
    assert query(any_url, "SELECT id FROM wrapped") == [(1,)]
    assert run("revert", "--db", any_url, "1").returncode == 0
    assert "wrapped" not in tables(any_url)


def test_a_wrapped_migration_that_fails_leaves_nothing(tmp_path: Path, any_url: str) -> None:
    up = "START TRANSACTION;\nCREATE TABLE wrapped (id INTEGER);\nINSERT INTO nowhere VALUES (1);\nEND;\n"
    directory = write_migrations(tmp_path / "m", {"0001_wrapped.up.sql": up})
    result = apply(directory, any_url)
    assert result.returncode == 1
    assert "0001_wrapped.up.sql:3" in result.stderr  # the line in the file, the wrapper counted
    assert "wrapped" not in tables(any_url, bookkeeping=False)
    assert [(m["state"], m["attempts"]) for m in status_json(any_url)] == [("failed", 1)]


@pytest.mark.parametrize(
    ("script", "line", "what"),
    [
        ("BEGIN;\nINSERT INTO t VALUES (1);\nCOMMIT;\nINSERT INTO t VALUES (2);\n", 1, "'BEGIN'"),
        ("CREATE TABLE r1 (x INTEGER);\nROLLBACK;\nCREATE TABLE r2 (x INTEGER);\n", 2, "'ROLLBACK'"),
        (
            "INSERT INTO t VALUES (1);\nSAVEPOINT a;\nINSERT INTO t VALUES (2);\nRELEASE a;\n",
            2,
            "'SAVEPOINT a'",
        ),
        ("INSERT INTO t VALUES (1);\n\nCOMMIT;\n", 3, "'COMMIT'"),
        ("CREATE TABLE x (y INTEGER);\nVACUUM;\n", 2, "VACUUM cannot run inside a transaction"),
    ],
)
def test_other_transaction_control_is_refused_before_anything_runs(
    tmp_path: Path, script: str, line: int, what: str
) -> None:
    directory = write_migrations(
        tmp_path / "m",
        {"0001_t.sql": "-- migrate:up\nCREATE TABLE t (x INTEGER);\n", "0002_bad.up.sql": script},
    )
    url = f"sqlite:///{tmp_path / 'app.db'}"
    result = apply(directory, url)
    assert result.returncode == 2
    message = one_error_line(result)
    assert f"0002_bad.up.sql:{line}: {what}" in message
    assert "transaction:false" in message and ".autocommit" in message
    assert "t" not in tables(url)  # refused as a whole: not even 0001 ran


def test_postgres_transaction_control_that_committed_early_is_refused(tmp_path: Path, pg_url: str) -> None:
    # The shape golang-migrate users write by hand, with a statement after the COMMIT.
    directory = write_migrations(
        tmp_path / "m",
        {
            "0001_a.up.sql": "CREATE TABLE a (id int);\n",
            "0002_b.up.sql": "BEGIN;\nINSERT INTO a VALUES (1);\nCOMMIT;\nSELECT * FROM nowhere;\n",
        },
    )
    result = apply(directory, pg_url)
    assert result.returncode == 2
    assert "0002_b.up.sql:1: 'BEGIN' is transaction control" in one_error_line(result)
    assert "a" not in tables(pg_url)


def test_a_script_for_outside_a_transaction_keeps_its_own_control(tmp_path: Path, any_url: str) -> None:
    up = "BEGIN;\nCREATE TABLE own (id INTEGER);\nINSERT INTO own VALUES (1);\nCOMMIT;\n"
    directory = write_migrations(tmp_path / "m", {"0001_own.autocommit.up.sql": up})
    result = apply(directory, any_url)
    assert result.returncode == 0, result.stderr
    assert query(any_url, "SELECT id FROM own") == [(1,)]


def test_generic_sqlite_trigger_bodies_are_not_transaction_control(tmp_path: Path) -> None:
    trigger = (
        "CREATE TABLE t (x INTEGER);\nCREATE TABLE log (x INTEGER);\n"
        "CREATE TRIGGER t_log AFTER INSERT ON t BEGIN\n  INSERT INTO log VALUES (new.x);\nEND;\n"
        "INSERT INTO t VALUES (7);\n"
    )
    directory = write_migrations(tmp_path / "m", {"0001_t.up.sql": trigger})
    url = f"sqlite:///{tmp_path / 'app.db'}"
    assert apply(directory, url).returncode == 0
    assert query(url, "SELECT x FROM log") == [(7,)]


def test_postgres_begin_atomic_function_bodies_are_not_transaction_control(
    tmp_path: Path, pg_url: str
) -> None:
    function = (
        "CREATE FUNCTION answer() RETURNS int LANGUAGE sql\n"
        "BEGIN ATOMIC\n  SELECT CASE WHEN true THEN 42 END;\nEND;\n"
        "CREATE TABLE t AS SELECT answer() AS x;\n"
    )
    directory = write_migrations(tmp_path / "m", {"0001_f.postgres.up.sql": function})
    result = apply(directory, pg_url)
    assert result.returncode == 0, result.stderr
    assert query(pg_url, "SELECT x FROM t") == [(42,)]


async def test_a_migration_from_elsewhere_is_checked_before_it_runs(tmp_path: Path, any_url: str) -> None:
    """A migration that did not pass the loader (a bundle from an older publisher) is refused
    at once, dead, nothing of it run."""
    bad = Migration(
        1, "0001_bad", up={ANY_DIALECT: Script("CREATE TABLE early (x INTEGER);\nCOMMIT;\nSELECT 1;")}
    )
    async with Client.connect(any_url) as client:
        result = await client.apply([bad])
        assert result.failure is not None and result.failure.dead
        assert "migration 0001_bad, line 2: 'COMMIT' is transaction control" in (result.failure.error or "")
    assert "early" not in await asyncio.to_thread(tables, any_url)


async def test_a_script_that_ends_migsyncs_transaction_is_caught_when_it_runs(any_url: str) -> None:
    """Past the check (the backend's own contract): the driver's transaction status tells."""

    def program() -> Work[None]:
        yield Begin()
        yield Execute("CREATE TABLE kept (x INTEGER)")
        yield RunScript("INSERT INTO kept VALUES (1);\nCOMMIT;\nINSERT INTO kept VALUES (2);")
        yield Commit()

    async with Client.connect(any_url) as client:
        with pytest.raises(TransactionLost, match="ended the transaction migsync opened"):
            await client.backend.run(program())


# -- a migration's own error is never hidden ------------------------------------------------------


def test_postgres_syntax_error_is_recorded_counted_and_located(tmp_path: Path, pg_url: str) -> None:
    directory = write_migrations(
        tmp_path / "m",
        {"0001_a.up.sql": "CREATE TABLE a (id int);\n", "0002_b.up.sql": "CREATE TABLE b (id int,;\n"},
    )
    result = apply(directory, pg_url)
    assert result.returncode == 1
    assert "savepoint" not in (result.stdout + result.stderr).lower()
    states = status_json(pg_url)
    assert [(m["state"], m["attempts"]) for m in states] == [("applied", 1), ("failed", 1)]
    assert "PostgresSyntaxError" in states[1]["error"] and "0002_b.up.sql:1" in states[1]["error"]
    assert "a" in tables(pg_url)


def test_postgres_error_after_earlier_statements_leaves_nothing(tmp_path: Path, pg_url: str) -> None:
    script = "CREATE TABLE b (id int PRIMARY KEY);\nINSERT INTO b VALUES (1);\nINSERT INTO b VALUES (1);\n"
    directory = write_migrations(tmp_path / "m", {"0001_b.up.sql": script})
    result = apply(directory, pg_url)
    assert result.returncode == 1
    (state,) = status_json(pg_url)
    assert (state["state"], state["attempts"]) == ("failed", 1)
    assert "UniqueViolationError" in state["error"] and "0001_b.up.sql" in state["error"]
    assert "b" not in tables(pg_url)


def test_sqlite_full_disk_says_so(tmp_path: Path) -> None:
    # max_page_count caps the file for this connection: SQLite then answers SQLITE_FULL and
    # rolls the transaction back by itself, as it does when the disk really is full.
    filler = (
        "PRAGMA max_page_count = 40;\nCREATE TABLE big (x TEXT);\n"
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 5000)\n"
        "INSERT INTO big SELECT hex(randomblob(200)) FROM c;\n"
    )
    directory = write_migrations(tmp_path / "m", {"0001_fill.up.sql": filler})
    url = f"sqlite:///{tmp_path / 'app.db'}"
    result = apply(directory, url)
    output = result.stdout + result.stderr
    assert result.returncode in (1, 2)
    assert "database or disk is full" in output
    assert "no transaction is active" not in output
    assert "Traceback" not in output
    assert "big" not in tables(url)


# -- scripts outside a transaction that open one of their own -----------------------------------


def test_outside_script_failing_inside_its_own_transaction_is_rolled_back_not_dirty(
    tmp_path: Path, any_url: str
) -> None:
    up = "BEGIN;\nCREATE TABLE own (id INTEGER);\nINSERT INTO nowhere VALUES (1);\nCOMMIT;\n"
    directory = write_migrations(
        tmp_path / "m",
        {"0001_own.autocommit.up.sql": up, "0002_next.up.sql": "CREATE TABLE next (id INTEGER);\n"},
    )
    result = apply(directory, any_url)
    assert result.returncode == 1
    (own, following) = status_json(any_url)
    assert own["state"] == "failed" and own["attempts"] == 1  # nothing had committed: retry it
    assert "nowhere" in own["error"] and "0001_own.autocommit.up.sql:3" in own["error"]
    assert following["state"] == "pending"
    assert tables(any_url, bookkeeping=False) == set()
    # The connection was left clean: the fixed file applies in a new run with the next one.
    write_migrations(directory, {"0001_own.autocommit.up.sql": up.replace("nowhere", "own")})
    assert apply(directory, any_url).returncode == 0
    assert tables(any_url, bookkeeping=False) == {"own", "next"}


def test_outside_script_failing_after_a_commit_is_dirty_with_its_error(tmp_path: Path, any_url: str) -> None:
    up = "CREATE TABLE first (id INTEGER);\nBEGIN;\nINSERT INTO nowhere VALUES (1);\nCOMMIT;\n"
    directory = write_migrations(tmp_path / "m", {"0001_own.autocommit.up.sql": up})
    result = apply(directory, any_url)
    assert result.returncode == 1
    (own,) = status_json(any_url)
    assert own["state"] == "dirty"
    assert own["error"] and "nowhere" in own["error"] and "statement 1 had already committed" in own["error"]
    assert tables(any_url, bookkeeping=False) == {"first"}


def test_outside_script_that_leaves_a_transaction_open_fails(tmp_path: Path, any_url: str) -> None:
    up = "BEGIN;\nCREATE TABLE never (id INTEGER);\n"
    directory = write_migrations(tmp_path / "m", {"0001_open.autocommit.up.sql": up})
    result = apply(directory, any_url)
    assert result.returncode == 1
    (state,) = status_json(any_url)
    assert state["state"] == "failed"
    assert "left a transaction open" in state["error"]
    assert "never" not in tables(any_url)
    if is_sqlite(any_url):  # the file is not left locked by an open write transaction
        conn = sqlite3.connect(sqlite_path(any_url), timeout=0)
        conn.execute("BEGIN IMMEDIATE")
        conn.rollback()
        conn.close()


# -- Postgres: a migration waiting on a lock ----------------------------------------------------


class Waits(BaseEventSink):
    def __init__(self) -> None:
        self.seen: list[MigrationWaiting] = []

    async def emit(self, event: Event) -> None:
        if isinstance(event, MigrationWaiting):
            self.seen.append(event)


async def hold_table_lock(url: str) -> asyncpg.Connection:
    """A session of the test's own, idle in a transaction that holds ``t`` exclusively."""
    holder = await asyncpg.connect(url, server_settings={"application_name": "the-blocker"})
    await holder.execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    return holder


ADD_COLUMN = [
    Migration(1, "0001_t", up={ANY_DIALECT: Script("CREATE TABLE t (x int)")}),
    Migration(2, "0002_y", up={ANY_DIALECT: Script("ALTER TABLE t ADD COLUMN y int")}),
]


async def test_postgres_migration_waiting_on_a_lock_says_who_holds_it(pg_url: str) -> None:
    waits = Waits()
    async with Client.connect(pg_url, backend_options={"lock_wait_report": 0.2}) as client:
        client.events.add(waits)
        assert (await client.apply(ADD_COLUMN[:1])).ok
        holder = await hold_table_lock(pg_url)
        try:
            applying = asyncio.create_task(client.apply(ADD_COLUMN))
            for _ in range(600):  # until the first report (the test fails if none ever comes)
                if waits.seen or applying.done():
                    break
                await asyncio.sleep(0.05)
            assert waits.seen, "no migration_waiting event"
            event = waits.seen[0]
            assert event.label == "apply 0002_y"
            assert event.pids == [holder.get_server_pid()]
            assert "the-blocker" in event.blocked_by[0] and "LOCK TABLE t" in event.blocked_by[0]
            assert "idle in transaction" in event.blocked_by[0]
        finally:
            await holder.execute("ROLLBACK")
            await holder.close()
        assert (await applying).ok  # once the lock is gone, the migration goes through


def test_postgres_migration_lock_timeout_is_an_ordinary_failure(tmp_path: Path, pg_url: str) -> None:
    directory = write_migrations(tmp_path / "m", {"0001_t.up.sql": "CREATE TABLE t (x int);\n"})
    assert apply(directory, pg_url).returncode == 0
    write_migrations(directory, {"0002_y.up.sql": "ALTER TABLE t ADD COLUMN y int;\n"})

    async def blocked_apply() -> subprocess.CompletedProcess[str]:
        holder = await hold_table_lock(pg_url)
        try:
            url = f"{pg_url}?migration_lock_timeout=0.5&lock_wait_report=0.1"
            return await asyncio.to_thread(apply, directory, url)
        finally:
            await holder.close()

    result = asyncio.run(blocked_apply())
    assert result.returncode == 1
    (_, waiting) = status_json(pg_url)
    assert (waiting["state"], waiting["attempts"]) == ("failed", 1)
    assert "LockNotAvailableError" in waiting["error"] and "lock timeout" in waiting["error"]
    assert "0002_y.up.sql:1" in waiting["error"]
    assert apply(directory, pg_url, "--retry-now").returncode == 0  # no lock now: it applies


def test_postgres_timeouts_must_be_seconds(tmp_path: Path, pg_url: str) -> None:
    directory = write_migrations(tmp_path / "m", {"0001_t.up.sql": "CREATE TABLE t (x int);\n"})
    for option, message in [
        ("migration_lock_timeout=soon", "migration_lock_timeout='soon' is not a number of seconds"),
        ("migration_statement_timeout=-1", "migration_statement_timeout='-1' must not be negative"),
    ]:
        result = apply(directory, f"{pg_url}?{option}")
        assert result.returncode == 2 and message in one_error_line(result)


def test_postgres_statement_timeout_stops_a_long_migration(tmp_path: Path, pg_url: str) -> None:
    directory = write_migrations(tmp_path / "m", {"0001_slow.up.sql": "SELECT pg_sleep(30);\n"})
    result = apply(directory, f"{pg_url}?migration_statement_timeout=0.3")
    assert result.returncode == 1
    (state,) = status_json(pg_url)
    assert state["state"] == "failed" and "statement timeout" in state["error"]
