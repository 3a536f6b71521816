"""Exactly once under concurrency, and crash safety, with real OS processes on both backends.

Every test here runs the ``migsync`` console script in subprocesses against a
fresh database (``any_url``: SQLite file and Postgres). Processes are killed
with SIGKILL in the middle of a migration's transaction; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from conftest import throwaway_database, write_migrations
from dbtools import (
    is_sqlite,
    kill,
    long_statement,
    migsync_sessions,
    query,
    run,
    sqlite_path,
    start,
    tables,
    wait_for,
    wait_until_long_statement_runs,
    wait_until_sessions_gone,
)

from migsync import Client
from migsync.core.sources import scan_directory
from migsync.core.version import Version

RUNS = 30
#: A generous deadline for what a loaded machine takes its time over; never a measure.
PATIENCE = 60.0


# -- helpers ------------------------------------------------------------------------------------


def statuses(url: str) -> dict[Version, tuple[bool, int]]:
    """version -> (applied, attempts) from ``client_migration_status``."""
    rows = query(url, "SELECT version, applied, attempts FROM client_migration_status")
    return {Version.from_key(v): (bool(applied), int(attempts)) for v, applied, attempts in rows}


def changes(url: str) -> list[tuple[str, bool, int]]:
    """(migration_name, processed, attempts) of every queue row, in seq order."""
    rows = query(url, "SELECT migration_name, processed, attempts FROM migration_changes ORDER BY seq")
    return [(name, bool(processed), int(attempts)) for name, processed, attempts in rows]


def finish(procs: Sequence[subprocess.Popen[str]], timeout: float = 120) -> list[tuple[int, str, str]]:
    """Each process's (returncode, stdout, stderr); kills the lot if any overruns."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def reported_count(stdout: str) -> int:
    """How many migrations a run says it applied or processed (0 for 'nothing to do')."""
    found = re.search(r"\b(?:applied|processed) (\d+) migrations?\b", stdout)
    if found:
        return int(found.group(1))
    assert "nothing to do" in stdout, stdout
    return 0


def record_only(url: str, directory: Path) -> None:
    """Record the migrations of ``directory`` without queueing or applying any."""

    async def go() -> None:
        async with Client.connect(url) as client:
            await client.ledger.record_source(scan_directory(directory))

    asyncio.run(go())


# -- exactly once ---------------------------------------------------------------------------------


def run_migrations(directory: Path) -> Path:
    """0001 makes ``runs``; each migration, 0001 included, appends (its turn, its version).

    ``n`` is the insertion order; a migration run twice leaves its version twice,
    two run at once (unserialized) collide on the primary key, and out-of-order runs
    show as versions out of order when sorted by ``n``.
    """
    files = {
        "0001_runs.sql": "-- migrate:up\n"
        "CREATE TABLE runs (n INTEGER PRIMARY KEY, version INTEGER NOT NULL);\n"
        "INSERT INTO runs (n, version) VALUES (1, 1);\n"
        "-- migrate:down\nDROP TABLE runs;\n"
    }
    files |= {
        f"{i:04d}_m{i}.sql": "-- migrate:up\n"
        f"INSERT INTO runs (n, version) SELECT COALESCE(MAX(n), 0) + 1, {i} FROM runs;\n"
        f"-- migrate:down\nDELETE FROM runs WHERE version = {i};\n"
        for i in range(2, RUNS + 1)
    }
    return write_migrations(directory, files)


def assert_applied_exactly_once(url: str, results: list[tuple[int, str, str]]) -> None:
    assert [code for code, _, _ in results] == [0] * len(results), results
    assert sum(reported_count(out) for _, out, _ in results) == RUNS, results
    versions_in_run_order = [v for _, v in sorted(query(url, "SELECT n, version FROM runs"))]
    assert versions_in_run_order == list(range(1, RUNS + 1)), "a migration ran twice, never or out of order"
    assert statuses(url) == {v: (True, 1) for v in range(1, RUNS + 1)}
    names = [f"{i:04d}_{'runs' if i == 1 else f'm{i}'}" for i in range(1, RUNS + 1)]
    assert changes(url) == [(name, True, 1) for name in names], "queued twice, open or retried"


@contextlib.contextmanager
def another_database(url: str, tag: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database on the same backend as ``url``, dropped afterwards."""
    if is_sqlite(url):
        yield f"sqlite:///{tmp_path / f'{tag}.db'}"
        return
    with throwaway_database() as other:
        parts, fresh = urlsplit(url), urlsplit(other)
        yield urlunsplit((parts.scheme, parts.netloc, fresh.path, parts.query, ""))


def test_concurrent_applies_on_a_fresh_database_apply_each_migration_once_in_order(
    tmp_path: Path, any_url: str
) -> None:
    migrations = run_migrations(tmp_path / "m")
    for round_ in range(3):
        with contextlib.ExitStack() as stack:
            url = (
                any_url
                if round_ == 0
                else stack.enter_context(another_database(any_url, f"r{round_}", tmp_path))
            )
            procs = [start("apply", "--migrations", str(migrations), "--db", url) for _ in range(5)]
            assert_applied_exactly_once(url, finish(procs))


def test_concurrent_processes_and_applies_work_a_queue_once_in_order(tmp_path: Path, any_url: str) -> None:
    migrations = run_migrations(tmp_path / "m")
    record_only(any_url, migrations)
    queued = run("queue", "--db", any_url, str(RUNS))
    assert queued.returncode == 0, queued.stderr
    assert [p for _, p, _ in changes(any_url)] == [False] * RUNS
    procs = [
        start("process", "--db", any_url),
        start("apply", "--migrations", str(migrations), "--db", any_url),
        start("process", "--db", any_url),
        start("apply", "--migrations", str(migrations), "--db", any_url),
        start("process", "--db", any_url),
    ]
    assert_applied_exactly_once(any_url, finish(procs))


#: How many times the outside-a-transaction race is run: with the old per-process lock, SQLite
#: lost it in 9 trials of 10 in issue 14, and in 10 of 10 here.
TRIALS = 10
PROCESSES = 4


def outside_transaction_migrations(directory: Path, url: str) -> Path:
    """0002 runs outside a transaction (dirty while it runs) and takes a moment; each
    migration appends its version to ``runs``, so one run twice shows twice."""
    slow = long_statement(url, 0.5)
    return write_migrations(
        directory,
        {
            "0001_runs.sql": "-- migrate:up\nCREATE TABLE runs (version INTEGER NOT NULL);\n"
            "INSERT INTO runs (version) VALUES (1);\n",
            "0002_slow.sql": "-- migrate:up transaction:false\n"
            f"{slow};\nINSERT INTO runs (version) VALUES (2);\n",
            "0003_after.sql": "-- migrate:up\nINSERT INTO runs (version) VALUES (3);\n",
        },
    )


def test_concurrent_applies_wait_for_a_migration_outside_a_transaction(tmp_path: Path, any_url: str) -> None:
    """Every process exits 0: the ones that come while 0002 runs (dirty) wait for the
    processor lock, then find the work done; none reports the database dirty."""
    migrations = outside_transaction_migrations(tmp_path / "m", any_url)
    for trial in range(TRIALS):
        with another_database(any_url, f"t{trial}", tmp_path) as url:
            procs = [start("apply", "--migrations", str(migrations), "--db", url) for _ in range(PROCESSES)]
            results = finish(procs)
            assert [code for code, _, _ in results] == [0] * PROCESSES, (trial, results)
            assert sum(reported_count(out) for _, out, _ in results) == 3, (trial, results)
            assert sorted(v for (v,) in query(url, "SELECT version FROM runs")) == [1, 2, 3]
            assert statuses(url) == {1: (True, 1), 2: (True, 1), 3: (True, 1)}
            names = ["0001_runs", "0002_slow", "0003_after"]
            assert changes(url) == [(name, True, 1) for name in names], "queued twice, open or retried"


# -- crash safety ---------------------------------------------------------------------------------


def gated_pause(url: str) -> str:
    """A statement that runs as long as table ``gate`` says: for hours while it is closed (the
    process is killed in it, never waited for), at once when it is open. No clock decides
    whether a process is still inside it when the test kills it, however loaded the machine."""
    if is_sqlite(url):
        return (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
            "WHERE x < (SELECT n FROM gate)) SELECT count(*) FROM c"
        )
    return "SELECT pg_sleep(n) FROM gate"


def close_gate(url: str) -> None:
    """Make table ``gate`` closed: the pause in 0002 runs for hours (SQLite: 10**12 steps)."""
    query(url, "CREATE TABLE gate (n BIGINT NOT NULL)")
    query(url, f"INSERT INTO gate (n) VALUES ({10**12 if is_sqlite(url) else 3600})")


def open_gate(url: str) -> None:
    """From now on, the pause in 0002 takes no time (who runs it next finishes at once)."""
    query(url, "UPDATE gate SET n = 0")


def crash_migrations(directory: Path, url: str) -> Path:
    """0002 writes, then holds its transaction open while the gate is closed, then writes more."""
    close_gate(url)
    pause = gated_pause(url)
    return write_migrations(
        directory,
        {
            "0001_a.sql": "-- migrate:up\nCREATE TABLE a (note TEXT);\n-- migrate:down\nDROP TABLE a;\n",
            "0002_b.sql": "-- migrate:up\n"
            "CREATE TABLE b (x INTEGER);\n"
            "INSERT INTO a (note) VALUES ('from 0002');\n"
            f"{pause};\n"
            "CREATE TABLE c (x INTEGER);\n"
            "-- migrate:down\nDROP TABLE c;\nDROP TABLE b;\nDELETE FROM a;\n",
            "0003_d.sql": "-- migrate:up\nCREATE TABLE d (x INTEGER);\n-- migrate:down\nDROP TABLE d;\n",
        },
    )


def wait_until_0002_is_running(url: str, proc: subprocess.Popen[str]) -> None:
    """Until the process is inside 0002's transaction, in its long statement."""
    # SQLite: 0001's commit is visible to other connections (WAL); 0002 begins right after it.
    wait_until_long_statement_runs(
        url,
        proc,
        sqlite_began=lambda: statuses(url).get(1) == (True, 1),
        sqlite_what="0001 to be applied",
        settle=0.5,
    )


def wait_until_session_gone(url: str) -> None:
    """On Postgres, until the killed process's sessions are gone (a backend runs out its
    statement before it notices its client died); then no advisory lock may remain."""
    wait_until_sessions_gone(url, timeout=PATIENCE)
    if is_sqlite(url):
        return
    locks = query(
        url,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    assert locks == [(0,)], "an advisory lock outlived the killed process"


def assert_as_if_0002_never_started(url: str) -> None:
    assert tables(url, bookkeeping=False) == {"gate", "a"}, "0002's tables survived the kill"
    assert query(url, "SELECT count(*) FROM a") == [(0,)], "0002's row survived the kill"
    status = statuses(url)
    assert status[1] == (True, 1)
    assert status.get(2, (False, 0)) == (False, 0), "0002's attempt counted though it never finished"
    assert 3 not in status or status[3] == (False, 0)
    assert changes(url) == [("0001_a", True, 1), ("0002_b", False, 0), ("0003_d", False, 0)]
    assert query(url, "SELECT error FROM migration_changes WHERE migration_name = '0002_b'") == [(None,)]


def assert_all_applied_once(url: str) -> None:
    assert tables(url, bookkeeping=False) == {"gate", "a", "b", "c", "d"}
    assert query(url, "SELECT note FROM a") == [("from 0002",)]
    assert statuses(url) == {1: (True, 1), 2: (True, 1), 3: (True, 1)}
    assert changes(url) == [("0001_a", True, 1), ("0002_b", True, 1), ("0003_d", True, 1)]
    assert query(url, "SELECT count(*) FROM migration_changes WHERE error IS NOT NULL") == [(0,)]


def assert_write_lock_free(url: str) -> None:
    """Nobody holds the database's write lock (SQLite: a BEGIN IMMEDIATE that does not wait)."""
    if not is_sqlite(url):
        return
    conn = sqlite3.connect(sqlite_path(url), timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def test_a_process_killed_mid_migration_leaves_it_as_if_never_started(tmp_path: Path, any_url: str) -> None:
    migrations = crash_migrations(tmp_path / "m", any_url)
    proc = start("apply", "--migrations", str(migrations), "--db", any_url)
    wait_until_0002_is_running(any_url, proc)
    kill(proc)

    assert_as_if_0002_never_started(any_url)
    wait_until_session_gone(any_url)
    assert_write_lock_free(any_url)
    assert_as_if_0002_never_started(any_url)
    state = run("status", "--db", any_url, "--json")
    assert state.returncode == 0, state.stderr
    assert '"state": "pending"' in state.stdout

    open_gate(any_url)
    again = run("apply", "--migrations", str(migrations), "--db", any_url, timeout=PATIENCE)
    assert again.returncode == 0, again.stderr
    assert "applied 2 migrations (0002_b .. 0003_d)" in again.stdout
    assert_all_applied_once(any_url)


def has_open(pid: int, path: str) -> bool:
    """Whether process ``pid`` has ``path`` open (Linux /proc)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(fd) == path for fd in fds.iterdir())
    except (FileNotFoundError, PermissionError):
        return False


def test_a_process_waiting_on_a_killed_ones_lock_finishes_everything_once(
    tmp_path: Path, any_url: str
) -> None:
    migrations = crash_migrations(tmp_path / "m", any_url)
    first = start("apply", "--migrations", str(migrations), "--db", any_url)
    second: subprocess.Popen[str] | None = None
    try:
        wait_until_0002_is_running(any_url, first)
        first_sessions = migsync_sessions(any_url)
        second = start("apply", "--migrations", str(migrations), "--db", any_url)
        waiting_proc = second

        def second_waits() -> bool:
            if waiting_proc.poll() is not None:
                raise AssertionError(f"the second process ended early: {waiting_proc.communicate()}")
            if is_sqlite(any_url):
                # Once it has the file open, everything it does next needs the write lock.
                return has_open(waiting_proc.pid, os.path.realpath(sqlite_path(any_url)))
            # A session of the second process waits for the write lock (a lock not
            # granted) or polls for the processor lock (pg_try_advisory_lock).
            sql = (
                "SELECT s.pid, s.query, EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = s.pid "
                "AND NOT l.granted) FROM pg_stat_activity s WHERE s.datname = current_database() "
                "AND s.application_name = 'migsync'"
            )
            return any(
                pid not in first_sessions and (blocked or "pg_try_advisory_lock" in text)
                for pid, text, blocked in query(any_url, sql)
            )

        if is_sqlite(any_url) and not Path("/proc/self/fd").is_dir():
            time.sleep(1.0)  # no /proc: give it time to start and block
        else:
            wait_for("the second process to wait for the lock", second_waits, timeout=PATIENCE)
            time.sleep(0.3)
        # The second process is stopped while the first dies and the test opens the gate, so
        # that it cannot take the lock first (on SQLite, opening the gate needs the write lock).
        os.kill(second.pid, signal.SIGSTOP)
        try:
            kill(first)
            open_gate(any_url)
        finally:
            os.kill(second.pid, signal.SIGCONT)
        [(code, out, err)] = finish([second], timeout=PATIENCE)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert code == 0, err
    assert "applied 2 migrations (0002_b .. 0003_d)" in out, (out, err)
    assert_all_applied_once(any_url)
