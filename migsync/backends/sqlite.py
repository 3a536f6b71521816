"""The SQLite backend (aiosqlite).

``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or
``sqlite:///:memory:``. Options go in the query string:
``?busy_timeout=5&synchronous=FULL``.

* WAL journal, ``synchronous=FULL`` by default (a committed migration
  survives a power cut), and a busy timeout so that processes sharing the
  file wait for each other instead of failing at once.
* One connection, used by one unit of work at a time; write transactions
  start with ``BEGIN IMMEDIATE`` so the write lock is taken up front and
  two processes never deadlock upgrading a read lock.
* Each unit of SQL runs in aiosqlite's worker thread in a single hop: a
  migration script is split and executed by one function call in that
  thread, not one round trip per statement.
* The processor lock is a lock file beside the database, one per queue
  (:mod:`migsync.backends.filelock`): a pass excludes every other process
  and backend instance, also while a migration runs outside a transaction,
  when no write lock is held. Each change is still claimed inside its
  ``BEGIN IMMEDIATE`` transaction. A ``:memory:`` database (no other process
  can open it), or a platform without ``flock``, has an in-process lock only.
* ``read_only=True`` (``migsync status``, ``apply --dry-run``) opens the file
  with ``mode=ro``: a missing file is an error, not a new database, and no
  pragma that writes the file (``journal_mode``) is sent.
* Plugins' SQL functions and collations (``sqlite_functions``, set by
  ``Client.connect``) are installed on the connection as it opens
  (:mod:`migsync.backends.sqlite_functions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit

import aiosqlite

from migsync.backends import filelock
from migsync.backends.sqlite_functions import FunctionsConnection, Loaded, explain, install, load
from migsync.backends.sqlite_keys import ForeignKeyGuard, parse_mode
from migsync.core.backend import (
    MULTI_PROCESS,
    PROCESS_WIDE_LOCK,
    SAVEPOINTS,
    TRANSACTIONAL_DDL,
    BaseBackend,
    BaseConnection,
    Params,
    Row,
)
from migsync.core.errors import (
    BackendError,
    ClaimLost,
    ConfigError,
    ConnectError,
    DatabaseMissing,
    LockTimeout,
    StatementError,
    TransactionLost,
)
from migsync.core.files import kind_of, reason
from migsync.core.specs import SQLiteSpec
from migsync.core.splitter import Statement, split
from migsync.core.work import (
    Await,
    Begin,
    Commit,
    Execute,
    Fetch,
    Flush,
    Release,
    Request,
    Rollback,
    RollbackTo,
    Savepoint,
    Script,
    Work,
    await_from_thread,
    drive_sync,
)

T = TypeVar("T")

#: rows aiosqlite fetches per hop when iterating a cursor (its own default)
_ITER_CHUNK_SIZE = 64
_URL_OPTIONS = frozenset({"busy_timeout", "synchronous", "journal_mode", "migration_foreign_keys"})
_SYNCHRONOUS = {"OFF", "NORMAL", "FULL", "EXTRA"}
_JOURNAL = {"WAL", "DELETE", "TRUNCATE", "PERSIST", "MEMORY", "OFF"}


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """migsync's ``$1`` placeholders in SQLite's spelling (``?1``)."""
    return re.sub(r"\$(\d+)", r"?\1", sql)


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """The database path (or ``:memory:``) and options of a ``sqlite://`` URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigError(f"not a sqlite URL: {url!r}")
    if parts.netloc:
        raise ConfigError(
            f"sqlite URL {url!r} has a host part; use sqlite:///relative.db or sqlite:////abs/path.db"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise ConfigError(f"sqlite URL {url!r} names no file; e.g. sqlite:///app.db")
    return path, dict(parse_qsl(parts.query))


def _map_error(exc: sqlite3.Error, where: str, conn: sqlite3.Connection | None = None) -> BackendError:
    message = explain(exc, conn)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in message:
        return LockTimeout(f"{where}: the database is locked by another connection ({message})")
    return BackendError(f"{where}: {message}")


class _Thread:
    """Runs functions on the aiosqlite worker thread, mapping driver errors once."""

    def __init__(self, db: aiosqlite.Connection, path: str):
        self.db = db
        self.path = path

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            # aiosqlite's own dispatch: one queue hop runs ``fn`` next to the connection.
            return await self.db._execute(fn, *args)  # type: ignore[no-any-return,no-untyped-call]
        except sqlite3.Error as exc:
            # _connection, not _conn: that raises once the connection has closed.
            raise _map_error(exc, self.path, self.db._connection) from exc

    @property
    def raw(self) -> sqlite3.Connection:
        return self.db._conn


def _fetch_sync(conn: sqlite3.Connection, sql: str, params: Params) -> list[Row]:
    cursor = conn.execute(_placeholders(sql), params)
    if cursor.description is None:
        return []
    columns = [c[0] for c in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def _execute_sync(conn: sqlite3.Connection, sql: str, params: Params) -> int:
    return conn.execute(_placeholders(sql), params).rowcount


def _batch_sync(conn: sqlite3.Connection, statements: Sequence[tuple[str, Params]]) -> None:
    for sql, params in statements:
        conn.execute(_placeholders(sql), params)


def _script_sync(
    conn: sqlite3.Connection, statements: list[Statement], guard: ForeignKeyGuard | None = None
) -> None:
    """Run a script's statements in order.

    Inside a transaction (migsync's), every statement must leave it open: one that ends it
    raises :class:`TransactionLost`. Outside one, each statement commits by itself, unless the
    script opens a transaction of its own; a failure rolls back whatever the script left open,
    and the error says how many statements had committed.
    """
    owned = conn.in_transaction
    if guard is not None:
        guard.before(statements)
    committed = 0
    for index, statement in enumerate(statements):
        try:
            conn.execute(statement.sql)
        except sqlite3.Error as exc:
            error = StatementError(
                f"{type(exc).__name__}: {explain(exc, conn)}",
                statement=statement.sql,
                index=index,
                line=statement.line,
                committed=None if owned else committed,
            )
            if not owned:
                _roll_back_leftover(conn, error)
            raise error from exc
        if owned and not conn.in_transaction:
            raise TransactionLost(
                "this statement ended the transaction migsync opened for the script; what ran before "
                "it committed without the migration's bookkeeping",
                statement=statement.sql,
                index=index,
                line=statement.line,
            )
        if not conn.in_transaction:
            committed = index + 1
    if not owned and conn.in_transaction:
        last = statements[-1]
        error = StatementError(
            "the script left a transaction open (a BEGIN without its COMMIT); it was rolled back",
            statement=last.sql,
            index=len(statements) - 1,
            line=last.line,
            committed=committed,
        )
        _roll_back_leftover(conn, error)
        raise error


def _roll_back_leftover(conn: sqlite3.Connection, error: StatementError) -> None:
    """Undo a transaction a script opened and did not end, keeping ``error`` the one reported."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            error.add_note(f"rolling back the script's own transaction failed too: {exc}")


class _Session:
    """One unit-of-work program's requests, performed on the worker thread.

    Foreign-key enforcement, turned off for a migration's transaction, stays off
    from one migration's transaction to the next (two statements less for each):
    it is turned back on before anything else could write (a transaction that is
    not a migration's, a script outside a transaction, a write outside a
    transaction) and when the program ends.
    """

    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop, foreign_keys: str):
        self.conn = conn
        self.loop = loop
        self.foreign_keys = foreign_keys
        self.guard: ForeignKeyGuard | None = None
        self.keys_off = False

    def perform(self, request: Request) -> Any:
        conn = self.conn
        if isinstance(request, Await):
            return await_from_thread(self.loop, request)
        if isinstance(request, Script):
            statements = split(request.sql, "sqlite")
            if not statements:
                return None
            if not conn.in_transaction:
                self.keys_on()
            return _script_sync(conn, statements, self.guard)
        try:
            match request:  # the requests of every migration first: a pass asks for thousands
                case Execute(sql, params, expect):
                    if not conn.in_transaction:
                        self.keys_on()
                    count = _execute_sync(conn, sql, params)
                    if expect is not None and count != expect:
                        raise ClaimLost(f"expected {expect} row(s) changed, not {count}: {sql.split()[0]}")
                    return count
                case Begin(schema_change):
                    return self._begin(schema_change)
                case Commit():
                    if self.guard is not None:
                        self.guard.verify()
                    conn.execute("COMMIT")
                    self.guard = None
                    return None
                case Fetch(sql, params):
                    return _fetch_sync(conn, sql, params)
                case Rollback():
                    return self.rollback()
                case Flush():
                    return None  # nothing is kept back: each request ran when it came
                case Savepoint(name):
                    return conn.execute(f"SAVEPOINT {name}")
                case Release(name):
                    return conn.execute(f"RELEASE SAVEPOINT {name}")
                case RollbackTo(name):
                    conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                    return conn.execute(f"RELEASE SAVEPOINT {name}")
        except sqlite3.Error as exc:
            # Say which request failed: "database is locked" from a BEGIN and from a COMMIT
            # call for different answers.
            raise _map_error(exc, f"sqlite {type(request).__name__.lower()}", conn) from exc
        raise TypeError(f"not a unit-of-work request: {request!r}")

    def _begin(self, schema_change: bool) -> None:
        if schema_change and self.foreign_keys == "check":
            if not self.keys_off:
                ForeignKeyGuard.turn_off(self.conn)
                self.keys_off = True
            self.guard = ForeignKeyGuard(self.conn)
        else:
            self.keys_on()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.guard = None
            self.keys_on()
            raise

    def rollback(self) -> None:
        """End the open transaction, if the database has not ended it already (a full disk)."""
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        finally:
            self.guard = None

    def keys_on(self) -> None:
        """Foreign-key enforcement back on, if a migration's transaction turned it off."""
        if self.keys_off:
            self.keys_off = False
            ForeignKeyGuard.turn_on(self.conn)

    def end(self) -> None:
        """After the program: no transaction left open, enforcement as the connection had it."""
        try:
            self.rollback()
        finally:
            self.keys_on()


def _drive_sync(
    conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop, foreign_keys: str, work: Work[T]
) -> T:
    session = _Session(conn, loop, foreign_keys)
    try:
        return drive_sync(work, session.perform, session.rollback)
    finally:
        session.end()  # a program that failed at its Begin or Commit leaves nothing behind


class SQLiteConnection(BaseConnection):
    dialect: ClassVar[str] = "sqlite"

    def __init__(self, thread: _Thread):
        self._thread = thread

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._thread.run(_execute_sync, self._thread.raw, sql, params)

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._thread.run(_fetch_sync, self._thread.raw, sql, params)

    async def execute_batch(self, statements: Sequence[tuple[str, Params]]) -> None:
        await self._thread.run(_batch_sync, self._thread.raw, statements)

    async def run_script(self, sql: str, *, each_commits: bool = False) -> None:
        # One statement at a time either way: outside a transaction each commits.
        statements = split(sql, "sqlite")
        if statements:
            await self._thread.run(_script_sync, self._thread.raw, statements)


class SQLiteBackend(BaseBackend):
    name: ClassVar[str] = "sqlite"
    dialect: ClassVar[str] = "sqlite"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {TRANSACTIONAL_DDL, SAVEPOINTS, MULTI_PROCESS, *([PROCESS_WIDE_LOCK] if filelock.AVAILABLE else [])}
    )

    def __init__(
        self,
        url: str,
        *,
        busy_timeout: float | None = None,
        synchronous: str | None = None,
        journal_mode: str | None = None,
        migration_foreign_keys: str | None = None,
        create: bool = True,
        read_only: bool = False,
    ):
        super().__init__(url)
        self.path, options = parse_url(url)
        unknown = sorted(set(options) - _URL_OPTIONS)
        if unknown:
            raise ConfigError(
                f"sqlite URL {url!r}: unknown option(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(_URL_OPTIONS))}"
            )
        #: Opened with ``mode=ro``: nothing is written, and a missing file is not created.
        self.read_only = read_only
        self.create = create and not read_only
        self.memory = self.path == ":memory:"
        self.busy_timeout = float(
            busy_timeout if busy_timeout is not None else options.get("busy_timeout", 30)
        )
        self.synchronous = (synchronous or options.get("synchronous", "FULL")).upper()
        self.journal_mode = (journal_mode or options.get("journal_mode", "WAL")).upper()
        if self.synchronous not in _SYNCHRONOUS:
            raise ConfigError(f"sqlite synchronous={self.synchronous!r}; valid: {sorted(_SYNCHRONOUS)}")
        if self.journal_mode not in _JOURNAL:
            raise ConfigError(f"sqlite journal_mode={self.journal_mode!r}; valid: {sorted(_JOURNAL)}")
        #: foreign keys while a migration runs (:mod:`migsync.backends.sqlite_keys`)
        self.migration_foreign_keys = parse_mode(
            migration_foreign_keys or options.get("migration_foreign_keys", "check")
        )
        #: Plugins' functions and collations, installed on the connection when it opens.
        #: ``Client.connect`` sets them from the plugins' ``migsync_register_sqlite_functions``.
        self.sqlite_functions: tuple[SQLiteSpec, ...] = ()
        self._thread: _Thread | None = None
        self._lock = asyncio.Lock()  # one unit of work at a time on the one connection
        self._processor_locks: dict[str, asyncio.Lock] = {}

    @property
    def pragmas(self) -> dict[str, str]:
        """The pragmas set on open (benchmarks use the same ones for raw sqlite3)."""
        return {"journal_mode": self.journal_mode, "synchronous": self.synchronous}

    async def open(self) -> None:
        if self._thread is not None:
            return
        if not self.memory:
            self._check_path()
        functions = load(self.sqlite_functions)  # a plugin's import error, before a thread starts
        try:
            # Opened here, not by aiosqlite.connect: when that fails, its worker thread is
            # left to stop after the event loop has closed, and prints a traceback.
            raw = await asyncio.to_thread(
                sqlite3.connect,
                self._target(),
                isolation_level=None,
                check_same_thread=False,
                factory=FunctionsConnection,
                uri=self.read_only and not self.memory,
            )
        except sqlite3.Error as exc:
            raise ConnectError(f"cannot open SQLite database {self.path}: {exc}") from exc
        db = await aiosqlite.Connection(lambda: raw, _ITER_CHUNK_SIZE)
        thread = _Thread(db, self.path)
        try:
            await thread.run(self._configure, thread.raw, functions)
        except BackendError as exc:
            await db.close()
            raise ConnectError(f"cannot open SQLite database {self.path}: {exc}") from exc
        self._thread = thread

    def _target(self) -> str:
        """What ``sqlite3.connect`` opens: the path, or a ``mode=ro`` URI for a read-only open."""
        if not self.read_only or self.memory:
            return self.path
        return f"file:{quote(str(Path(self.path).absolute()))}?mode=ro"

    def _check_path(self) -> None:
        """A database file must be a regular file in a folder that is there (SQLite would say
        only "unable to open database file", or "disk I/O error" on a FIFO)."""
        path, cannot = Path(self.path), f"cannot open SQLite database {self.path}"
        if not path.parent.is_dir():
            raise ConnectError(f"{cannot}: folder {path.parent} does not exist")
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            if not self.create:
                raise DatabaseMissing(f"SQLite database {self.path} does not exist") from None
            return
        except OSError as exc:
            raise ConnectError(f"{cannot}: {reason(exc)}") from None
        if not stat.S_ISREG(mode):
            raise ConnectError(f"{cannot}: not a regular file ({kind_of(mode)})")

    def _configure(self, conn: sqlite3.Connection, functions: Loaded) -> None:
        assert isinstance(conn, FunctionsConnection)  # open() asks sqlite3 for one
        install(conn, functions)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        if not self.memory and not self.read_only:  # journal_mode writes the file's header
            conn.execute(f"PRAGMA journal_mode = {self.journal_mode}")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        # Reading the schema proves the file is a database and not something else.
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()

    async def close(self) -> None:
        if self._thread is None:
            return
        thread, self._thread = self._thread, None
        async with self._lock:
            await thread.db.close()

    def _require(self) -> _Thread:
        if self._thread is None:
            raise BackendError(f"SQLite database {self.path} is not open (use 'async with backend:')")
        return self._thread

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SQLiteConnection]:
        thread = self._require()
        async with self._lock:
            try:
                await thread.run(thread.raw.execute, "BEGIN IMMEDIATE")
            except LockTimeout as exc:
                raise LockTimeout(
                    f"{self.path}: another process held the write lock for over "
                    f"{self.busy_timeout:g}s (busy_timeout)"
                ) from exc
            try:
                yield SQLiteConnection(thread)
            except BaseException:
                if thread.raw.in_transaction:
                    await thread.run(thread.raw.execute, "ROLLBACK")
                raise
            await thread.run(thread.raw.execute, "COMMIT")

    @contextlib.asynccontextmanager
    async def autocommit(self) -> AsyncIterator[SQLiteConnection]:
        thread = self._require()
        async with self._lock:
            yield SQLiteConnection(thread)

    @contextlib.asynccontextmanager
    async def processor_lock(self, name: str, timeout: float) -> AsyncIterator[None]:
        # This instance's passes on one queue take turns on an asyncio.Lock (no polling);
        # then the lock file excludes other processes and instances.
        deadline = time.monotonic() + timeout
        timed_out = f"{self.path}: processor lock {name!r} not free after {timeout:g}s"
        lock = self._processor_locks.setdefault(name, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), timeout)
        except TimeoutError:
            raise LockTimeout(timed_out) from None
        try:
            if self.memory or not filelock.AVAILABLE:
                yield
            else:
                async with filelock.hold(filelock.lock_path(self.path, name), deadline, timed_out):
                    yield
        finally:
            lock.release()

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        thread = self._require()
        async with self._lock:
            return await thread.run(_fetch_sync, thread.raw, sql, params)

    async def run(self, work: Work[T]) -> T:
        # The whole program runs on the worker thread: one hand-off, not one per statement.
        thread = self._require()
        async with self._lock:
            loop = asyncio.get_running_loop()
            return await thread.run(_drive_sync, thread.raw, loop, self.migration_foreign_keys, work)
