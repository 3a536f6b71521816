"""Helpers that tests share: the ``migsync`` console script in subprocesses, and a look at its database.

Every helper takes a database URL (``sqlite:///path`` or ``postgresql://...``) and works on
both built-in backends. The database is always read on a connection of the test's own,
never one of migsync's.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
from conftest import MIGSYNC, REPO
from forkserver import run_forked

from migsync.core.migration import Migration, Script
from migsync.core.schema import ACTIONS, CHANGES, META, MIGRATIONS, QUEUE, REPORTS, STATUS

#: migsync's own bookkeeping tables (see ``migsync.core.schema``).
BOOKKEEPING_TABLES = frozenset({META, MIGRATIONS, STATUS, QUEUE, REPORTS, CHANGES, ACTIONS})

#: Every Postgres session of a migsync process in the current database (migsync names its sessions).
MIGSYNC_SESSIONS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'migsync'"
)


# -- the database --------------------------------------------------------------------------------


def is_sqlite(url: str) -> bool:
    """Whether ``url`` is a SQLite database's."""
    return url.startswith("sqlite:")


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///path`` URL."""
    assert url.startswith("sqlite:///")
    return url[len("sqlite:///") :]


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on a connection of the test's own (autocommit: each statement commits)."""
    if is_sqlite(url):
        conn = sqlite3.connect(sqlite_path(url), timeout=10, isolation_level=None)
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


async def aquery(url: str, sql: str) -> list[tuple[Any, ...]]:
    """:func:`query` from inside a running event loop (it runs one of its own)."""
    return await asyncio.to_thread(query, url, sql)


def tables(url: str, *, bookkeeping: bool = True) -> set[str]:
    """The names of the database's tables (SQLite's internal ``sqlite_*`` ones never).

    With ``bookkeeping=False`` migsync's own tables are left out: what is left is what
    migrations (or the test) made.
    """
    if is_sqlite(url):
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    else:
        sql = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    names = {name for (name,) in query(url, sql) if not (is_sqlite(url) and name.startswith("sqlite_"))}
    return names if bookkeeping else names - BOOKKEEPING_TABLES


def migsync_sessions(url: str) -> set[int]:
    """The server pids of every migsync session on the database (none on SQLite)."""
    if is_sqlite(url):
        return set()
    return {pid for (pid,) in query(url, MIGSYNC_SESSIONS)}


# -- the migsync console script ------------------------------------------------------------------


def migsync_env() -> dict[str, str]:
    """The environment of a migsync subprocess: this one's, plugin autoload off, and this
    checkout's ``migsync`` first on the path.

    The console script imports whatever ``migsync`` the virtualenv has installed, which,
    from a second git worktree sharing that virtualenv, is another checkout's code.
    """
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "MIGSYNC_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": path}


def run(
    *args: str, timeout: float = 60, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``migsync ARGS`` run to its end, its output captured; never raises on a failing exit code.

    ``env``: variables to set on top of :func:`migsync_env`. The process is a fork of a Python
    that has imported migsync already (:mod:`forkserver`): a process of its own, without the
    start-up. A test about start-up runs :data:`MIGSYNC` with :mod:`subprocess` itself.
    """
    return run_forked(MIGSYNC, args, {**migsync_env(), **(env or {})}, cwd, timeout)


def run_in_clean_env(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``migsync ARGS`` in ``cwd`` with no ``MIGSYNC_*`` setting nor ``DATABASE_URL`` from this
    process's environment (plugin autoload stays off): what a shell without them would run."""
    base = {
        k: v
        for k, v in migsync_env().items()
        if k != "DATABASE_URL" and (not k.startswith("MIGSYNC_") or k == "MIGSYNC_DISABLE_PLUGIN_AUTOLOAD")
    }
    return run_forked(MIGSYNC, args, {**base, **env}, cwd, 60)


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``migsync ARGS`` started in the background, its stdout and stderr piped.

    ``env``: variables to set on top of :func:`migsync_env`.
    """
    return subprocess.Popen(
        [MIGSYNC, *args],
        env={**migsync_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a process that is still running, and wait until it is dead."""
    assert proc.poll() is None, f"the process ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM a background process (SIGKILL if it has not ended 15 s later); its output."""
    proc.terminate()
    try:
        return proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def status_json(url: str) -> list[dict[str, Any]]:
    """The ``migrations`` rows of ``migsync status --json``, which must succeed."""
    result = run("status", "--db", url, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["migrations"]  # type: ignore[no-any-return]


# -- time ----------------------------------------------------------------------------------------


class ClockFile:
    """A fake "now" for ``migsync`` subprocesses: a file that ``MIGSYNC_TEST_CLOCK`` names.

    Pass :attr:`env` to :func:`run` or :func:`start`; time stands still until the test calls
    :meth:`advance` (a ``sleep`` inside migsync moves it on instead of waiting). See
    ``migsync.testing.fileclock``.
    """

    def __init__(self, path: Path, now: float = 1_700_000_000.0) -> None:
        from migsync.testing.fileclock import write_now

        self.path = path
        write_now(path, now)

    @property
    def env(self) -> dict[str, str]:
        from migsync.testing.fileclock import ENV

        return {ENV: str(self.path)}

    def now(self) -> float:
        from migsync.testing.fileclock import read_now

        return read_now(self.path)

    def advance(self, seconds: float) -> None:
        from migsync.testing.fileclock import write_now

        write_now(self.path, self.now() + seconds)


# -- waiting -------------------------------------------------------------------------------------


def wait_for(what: str, condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; an AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


_BUSY_LOOP = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) SELECT count(*) FROM c"
)


@functools.cache
def _sqlite_steps_per_second() -> float:
    """How many steps of :data:`_BUSY_LOOP` this machine's SQLite runs a second (measured once
    per worker: the measuring runs the loop for a fifth of a second or more)."""
    conn = sqlite3.connect(":memory:")
    try:
        n = 500_000
        while True:
            began = time.perf_counter()
            conn.execute(_BUSY_LOOP.format(n=n)).fetchone()
            took = time.perf_counter() - began
            if took > 0.2:
                return n / took
            n *= 4
    finally:
        conn.close()


def sqlite_busy_loop(seconds: float) -> str:
    """A SQLite statement that runs about ``seconds`` here (calibrated, same library)."""
    return _BUSY_LOOP.format(n=int(_sqlite_steps_per_second() * seconds))


def long_statement(url: str, seconds: float) -> str:
    """A statement (no trailing ``;``) that runs about ``seconds`` on ``url``'s backend.

    On Postgres it is a ``pg_sleep``, which :func:`wait_until_long_statement_runs` sees.
    """
    return sqlite_busy_loop(seconds) if is_sqlite(url) else f"SELECT pg_sleep({seconds:g})"


def wait_until_long_statement_runs(
    url: str,
    proc: subprocess.Popen[str],
    *,
    sqlite_began: Callable[[], bool],
    sqlite_what: str,
    settle: float,
) -> None:
    """Until the migsync process ``proc`` runs a migration's :func:`long_statement`.

    On Postgres: one of its sessions runs ``pg_sleep``. SQLite shows no such thing, so
    ``sqlite_began`` says when what comes just before the long statement has committed
    (an ``OperationalError`` from it counts as not yet: migsync's tables may not be there),
    and ``settle`` seconds more let the statement begin. Fails as soon as ``proc`` ends.
    """

    def alive() -> None:
        if proc.poll() is not None:
            raise AssertionError(f"migsync ended early: {proc.communicate()}")

    if is_sqlite(url):

        def began() -> bool:
            alive()
            try:
                return sqlite_began()
            except sqlite3.OperationalError:
                return False

        wait_for(sqlite_what, began, timeout=30)
        time.sleep(settle)
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

    wait_for("the long statement's pg_sleep to be running", sleeping, timeout=30)


def wait_until_sessions_gone(url: str, timeout: float) -> None:
    """On Postgres, until no migsync session is left on the database (a killed process's backend
    runs out its statement before it notices its client died); at once on SQLite."""
    if is_sqlite(url):
        return
    wait_for("the killed process's Postgres sessions to end", lambda: not migsync_sessions(url), timeout)


# -- drop folders ----------------------------------------------------------------------------------


def drop_client_file(folder: Path, client: str, data: bytes, at: int) -> Path:
    """Write a client's file (reports or changes) as a client does:
    ``<folder>/<client>/<at ms>-<digest>.json``."""
    from migsync.transports import dropfiles

    path = folder / client / dropfiles.report_file_name(at, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert dropfiles.write_atomic(path, data)
    return path


def imported_name(path: Path) -> Path:
    """What ``import-reports`` renames a file it imported to."""
    from migsync.transports import dropfiles

    return path.with_name(path.name + dropfiles.IMPORTED_SUFFIX)


#: What undoes each step of the store's layout (``_STORE_DOWNGRADES[n]`` takes ``n + 1`` back to ``n``).
_STORE_DOWNGRADES = {
    9: ["UPDATE store_clients SET change_seq = 0", "DELETE FROM store_meta WHERE key = 'change_seq'"],
    8: [
        "DROP INDEX store_clients_fleet",
        "ALTER TABLE store_clients DROP COLUMN fleet_failing",
        "ALTER TABLE store_clients DROP COLUMN fleet_drift",
        "ALTER TABLE store_clients DROP COLUMN fleet_done",
    ],
    7: ["DROP INDEX store_client_status_version"],
    6: [
        "DROP INDEX store_clients_change_seq",
        "ALTER TABLE store_clients DROP COLUMN change_seq",
        "DELETE FROM store_meta WHERE key = 'change_seq'",
    ],
    5: [
        "DROP TABLE store_status_events",
        "DROP TABLE store_rollout_audit",
        "DROP TABLE store_rollouts",
        "ALTER TABLE store_clients DROP COLUMN app_version",
        "ALTER TABLE store_clients DROP COLUMN labels",
    ],
    # Layout 4 kept versions as integers; its upgrade leaves versions that are keys already alone.
    4: [],
    3: ["DROP TABLE store_actions", "ALTER TABLE store_client_status DROP COLUMN dead"],
    2: ["DROP TABLE store_inbox"],
    1: ["ALTER TABLE store_clients DROP COLUMN status_serial"],
}


async def downgrade_store(url: str, version: int) -> None:
    """Turn a current store into one an earlier migsync wrote, with schema ``version``."""
    from migsync.server.tables import SCHEMA_VERSION

    for step in range(SCHEMA_VERSION - 1, version - 1, -1):
        for statement in _STORE_DOWNGRADES[step]:
            await aquery(url, statement)
    await aquery(url, f"UPDATE store_meta SET value = '{version}' WHERE key = 'schema_version'")


def table_migration(version: int) -> Migration:
    """Migration ``version`` (named ``000N_mN``): creates table ``tN``, and drops it on revert."""
    return Migration(
        version,
        f"{version:04d}_m{version}",
        {"*": Script(f"CREATE TABLE t{version} (x INTEGER)")},
        {"*": Script(f"DROP TABLE t{version}")},
    )


def client_headers(token: str) -> dict[str, str]:
    """The headers of a client's request to the HTTP API: its token, and the wire protocol."""
    from migsync.protocol.wire import PROTOCOL, PROTOCOL_HEADER

    return {"Authorization": f"Bearer {token}", PROTOCOL_HEADER: str(PROTOCOL)}
