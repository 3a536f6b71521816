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
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from conftest import MIGSYNC, PG_DSN, write_migrations

from migsync import Client
from migsync.core.sources import scan_directory

ENV = {**os.environ, "MIGSYNC_DISABLE_PLUGIN_AUTOLOAD": "1"}
RUNS = 30
#: How long migration 0002 of the crash tests keeps its transaction open.
SLEEP = 3.0


# -- helpers ------------------------------------------------------------------------------------


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def sqlite_path(url: str) -> str:
    assert url.startswith("sqlite:///")
    return url[len("sqlite:///") :]


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` read from a connection of the test's own (never migsync's)."""
    if is_sqlite(url):
        conn = sqlite3.connect(sqlite_path(url), timeout=10)
        try:
            return [tuple(row) for row in conn.execute(sql).fetchall()]
        finally:
            conn.close()

    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return [tuple(record) for record in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def user_tables(url: str) -> set[str]:
    if is_sqlite(url):
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    return {name for (name,) in query(url, sql)} & {"a", "b", "c", "d", "runs"}


def statuses(url: str) -> dict[int, tuple[bool, int]]:
    """version -> (applied, attempts) from ``client_migration_status``."""
    rows = query(url, "SELECT version, applied, attempts FROM client_migration_status")
    return {int(v): (bool(applied), int(attempts)) for v, applied, attempts in rows}


def changes(url: str) -> list[tuple[str, bool, int]]:
    """(migration_name, processed, attempts) of every queue row, in seq order."""
    rows = query(url, "SELECT migration_name, processed, attempts FROM migration_changes ORDER BY seq")
    return [(name, bool(processed), int(attempts)) for name, processed, attempts in rows]


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [MIGSYNC, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MIGSYNC, *args], capture_output=True, text=True, env=ENV, timeout=timeout, check=False
    )


def wait_for(what: str, condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


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


def kill(proc: subprocess.Popen[str]) -> None:
    assert proc.poll() is None, f"the process ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


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
    name = f"migsync_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(url)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_DSN, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


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


# -- crash safety ---------------------------------------------------------------------------------


def sqlite_busy_loop(seconds: float) -> str:
    """A SQLite statement that runs about ``seconds`` here (calibrated, same library)."""
    sql = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) SELECT count(*) FROM c"
    )
    conn = sqlite3.connect(":memory:")
    try:
        n = 500_000
        while True:
            began = time.perf_counter()
            conn.execute(sql.format(n=n)).fetchone()
            took = time.perf_counter() - began
            if took > 0.2:
                break
            n *= 4
    finally:
        conn.close()
    return sql.format(n=int(n * seconds / took))


def crash_migrations(directory: Path, url: str) -> Path:
    """0002 writes, then holds its transaction open for about SLEEP seconds, then writes more."""
    pause = f"SELECT pg_sleep({SLEEP:g})" if not is_sqlite(url) else sqlite_busy_loop(SLEEP)
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

    def alive() -> None:
        if proc.poll() is not None:
            raise AssertionError(f"migsync ended early: {proc.communicate()}")

    if is_sqlite(url):
        # 0001's commit is visible to other connections (WAL); 0002 begins right after it.
        def first_applied() -> bool:
            alive()
            try:
                return statuses(url).get(1) == (True, 1)
            except sqlite3.OperationalError:  # the bookkeeping tables are not there yet
                return False

        wait_for("0001 to be applied", first_applied, timeout=30)
        time.sleep(0.5)
        alive()
        return

    def sleeping() -> bool:
        alive()
        rows = query(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'migsync' AND state = 'active' AND query LIKE '%pg_sleep%'",
        )
        return bool(rows[0][0])

    wait_for("0002's pg_sleep to be running", sleeping, timeout=30)


def wait_until_session_gone(url: str) -> None:
    """On Postgres, until the killed process's sessions are gone (a backend runs out its
    statement before it notices its client died); then no advisory lock may remain."""
    if is_sqlite(url):
        return

    def gone() -> bool:
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'migsync'"
        )
        return query(url, sql) == [(0,)]

    wait_for("the killed process's Postgres sessions to end", gone, timeout=SLEEP + 15)
    locks = query(
        url,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    assert locks == [(0,)], "an advisory lock outlived the killed process"


def assert_as_if_0002_never_started(url: str) -> None:
    assert user_tables(url) == {"a"}, "0002's tables survived the kill"
    assert query(url, "SELECT count(*) FROM a") == [(0,)], "0002's row survived the kill"
    status = statuses(url)
    assert status[1] == (True, 1)
    assert status.get(2, (False, 0)) == (False, 0), "0002's attempt counted though it never finished"
    assert 3 not in status or status[3] == (False, 0)
    assert changes(url) == [("0001_a", True, 1), ("0002_b", False, 0), ("0003_d", False, 0)]
    assert query(url, "SELECT error FROM migration_changes WHERE migration_name = '0002_b'") == [(None,)]


def assert_all_applied_once(url: str) -> None:
    assert user_tables(url) == {"a", "b", "c", "d"}
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

    began = time.monotonic()
    again = run("apply", "--migrations", str(migrations), "--db", any_url)
    assert again.returncode == 0, again.stderr
    assert "applied 2 migrations (0002_b .. 0003_d)" in again.stdout
    assert time.monotonic() - began < SLEEP + 20
    assert_all_applied_once(any_url)


MIGSYNC_SESSIONS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'migsync'"
)


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
        began = time.monotonic()
        first_sessions = set() if is_sqlite(any_url) else {pid for (pid,) in query(any_url, MIGSYNC_SESSIONS)}
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
            wait_for("the second process to wait for the lock", second_waits, timeout=SLEEP - 0.7)
            time.sleep(0.3)
        assert time.monotonic() - began < SLEEP, "too slow to kill the first process mid-migration"
        kill(first)
        [(code, out, err)] = finish([second], timeout=SLEEP + 60)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert code == 0, err
    assert "applied 2 migrations (0002_b .. 0003_d)" in out, (out, err)
    assert_all_applied_once(any_url)
