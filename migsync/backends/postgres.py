"""The Postgres backend (asyncpg).

``postgresql://user:password@host:5432/dbname`` (or ``postgres://``). Options
in the query string, removed before the URL reaches asyncpg (whose own
parameters, such as ``sslmode``, pass through):

``schema``
    the schema of the bookkeeping tables (default ``public``; created if
    missing). Migrations themselves run with the connection's normal
    ``search_path``: only migsync's own tables are qualified.
``pool_max``
    the most connections the pool opens (default 4).
``lock_timeout``
    seconds to wait for migsync's write lock before :class:`LockTimeout`
    (default 60).
``migration_lock_timeout``, ``migration_statement_timeout``
    Postgres's ``lock_timeout`` and ``statement_timeout``, in seconds, for a
    migration's statements (default 0: none). A migration that times out
    fails like any other: counted, retried with backoff.
``lock_wait_report``
    seconds after which a migration that waits on a lock says who holds it,
    on the log and as a ``migration_waiting`` event, and again as often while
    the wait lasts (default 5; 0: never). See :mod:`migsync.backends.postgres_waits`.

Units of work:

* One pool acquire per unit of work; a connection is never shared between
  tasks.
* Every write transaction begins by taking a transaction-level advisory lock
  (``pg_advisory_xact_lock``) keyed by the bookkeeping schema: migsync's
  writers on one database take turns, as SQLite's write lock makes them.
  The processor lock is a session-level advisory lock held for a whole pass.
* A migration's script is sent whole inside the open transaction (Postgres
  runs a multi-statement simple query as one implicit block, and within ours
  it is simply part of the transaction), together with the migration's
  bookkeeping, the ``COMMIT`` and the ``BEGIN`` before it (with the write lock
  tried, not waited for): one round trip for the migration
  (:mod:`migsync.backends.postgres_batch`). A blank or comment-only script
  never reaches the driver. If the script ended that transaction after all,
  the message fails and so does the script, with
  :class:`~migsync.core.errors.TransactionLost`.
* Driver errors are mapped here, once: a failing statement names the
  statement's position and line in the script and carries Postgres's
  message, detail and hint.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from migsync.backends import postgres_batch
from migsync.backends.postgres_batch import Pending
from migsync.backends.postgres_waits import WaitListener, watching
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
    LockTimeout,
    StatementError,
    TransactionLost,
    WriteLockTimeout,
)
from migsync.core.schema import Tables
from migsync.core.splitter import is_blank, split
from migsync.core.work import (
    Begin,
    Commit,
    Execute,
    Flush,
    Request,
    Rollback,
    Script,
    Work,
    drive_async,
    perform_async,
)

T = TypeVar("T")
log = logging.getLogger("migsync.postgres")

_OUR_OPTIONS = frozenset(
    {
        "schema",
        "pool_max",
        "lock_timeout",
        "migration_lock_timeout",
        "migration_statement_timeout",
        "lock_wait_report",
    }
)


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """The DSN for asyncpg (our options removed) and our options."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigError(f"not a postgres URL: {url!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OUR_OPTIONS}
    rest = [(k, v) for k, v in query if k not in _OUR_OPTIONS]
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), parts.fragment))
    return dsn, ours


def _seconds(options: dict[str, str], name: str, given: float | None, default: float) -> float:
    """A non-negative number of seconds from a keyword argument, else the URL, else ``default``."""
    raw = given if given is not None else options.get(name, default)
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"postgres option {name}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ConfigError(f"postgres option {name}={raw!r} must not be negative (0: none)")
    return value


def where(url: str) -> str:
    """``host:port/database`` of a URL, for messages (never the password)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    try:
        port = parts.port or 5432
    except ValueError as exc:  # urllib's own check of the port
        raise ConfigError(f"postgres URL: {exc}") from None
    database = parts.path.lstrip("/") or parts.username or "postgres"
    return f"{host}:{port}/{database}"


def lock_key(namespace: str, name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``namespace.name``."""
    digest = hashlib.sha256(f"migsync:{namespace}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


#: The connection is gone, or the driver lost track of it: a ConnectError, never a SQL error.
_LOST: tuple[type[Exception], ...] = (
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    OSError,
)


def _rowcount(status: str) -> int:
    # asyncpg returns the command tag, e.g. "UPDATE 3" or "INSERT 0 1".
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


def _describe(exc: asyncpg.PostgresError) -> str:
    # ``str(exc)`` appends DETAIL and HINT on lines of their own; we add them inline, once.
    text = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
    detail = getattr(exc, "detail", None)
    hint = getattr(exc, "hint", None)
    if detail:
        text += f" (detail: {detail})"
    if hint:
        text += f" (hint: {hint})"
    return text


def _statement_error(exc: asyncpg.PostgresError, script: str, at: int | None = None) -> StatementError:
    """Which statement of ``script`` failed, from the error's character position.

    ``at``: that position in ``script``, when the script was sent after something else.
    """
    position = at if at is not None else getattr(exc, "position", None)
    statements = split(script, "postgresql")
    if not position or not str(position).isdigit():
        only = statements[0] if len(statements) == 1 else None
        return StatementError(
            _describe(exc),
            statement=only.sql if only else None,
            index=0 if only else None,
            line=only.line if only else None,
        )
    offset = max(int(position) - 1, 0)
    line = script.count("\n", 0, offset) + 1
    # By character offset, not line: several statements may share a line.
    index = 0
    for i, statement in enumerate(statements):
        if statement.start > offset:
            break
        index = i
    return StatementError(_describe(exc), statement=statements[index].sql, index=index, line=line)


@contextlib.contextmanager
def _mapped(where: str, doing: str = "") -> Iterator[None]:
    """Driver errors of migsync's own calls on a raw connection, as ours."""
    try:
        yield
    except _LOST as exc:
        raise ConnectError(f"lost the connection to Postgres at {where}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise BackendError(f"{where}: {doing}{_describe(exc)}") from exc


class PostgresConnection(BaseConnection):
    dialect: ClassVar[str] = "postgresql"

    def __init__(self, conn: asyncpg.Connection, where: str):
        self._conn = conn
        self._where = where

    async def execute(self, sql: str, params: Params = ()) -> int:
        with _mapped(self._where):
            return _rowcount(await self._conn.execute(sql, *params))

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        with _mapped(self._where):
            return [dict(record) for record in await self._conn.fetch(sql, *params)]

    async def execute_batch(self, statements: Sequence[tuple[str, Params]]) -> None:
        """Runs of the same statement go as one ``executemany`` (one round trip for all their rows)."""
        index = 0
        while index < len(statements):
            sql, params = statements[index]
            end = index + 1
            while end < len(statements) and statements[end][0] == sql:
                end += 1
            with _mapped(self._where):
                if end - index > 1 and params:
                    await self._conn.executemany(sql, [p for _, p in statements[index:end]])
                else:
                    await self._conn.execute(sql, *params)
                    end = index + 1
            index = end

    async def run_script(self, sql: str, *, each_commits: bool = False) -> None:
        if is_blank(sql, "postgresql"):
            return  # asyncpg rejects an empty query
        if each_commits:
            await self._run_each(sql)
            return
        owned = self._conn.is_in_transaction()
        try:
            await self._conn.execute(sql)
        except _LOST as exc:
            raise ConnectError(f"{self._where}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise _statement_error(exc, sql) from exc
        if owned and not self._conn.is_in_transaction():
            raise TransactionLost(
                "the script ended the transaction migsync opened for it (a COMMIT or ROLLBACK); "
                "what ran before that committed without the migration's bookkeeping"
            )

    async def _run_each(self, sql: str) -> None:
        """One statement at a time with no transaction open, so each commits by itself.

        A multi-statement query is one implicit transaction block, in which CREATE INDEX
        CONCURRENTLY and friends refuse to run. A transaction the script opens itself and
        does not finish (it failed inside it, or has no COMMIT) is rolled back; the error
        says how many statements had committed.
        """
        committed = 0
        statements = split(sql, "postgresql")
        for index, statement in enumerate(statements):
            try:
                await self._conn.execute(statement.sql)
            except _LOST as exc:
                raise ConnectError(f"{self._where}: {exc}") from exc
            except asyncpg.PostgresError as exc:
                error = StatementError(
                    _describe(exc),
                    statement=statement.sql,
                    index=index,
                    line=statement.line,
                    committed=committed,
                )
                await self._roll_back_leftover(error)
                raise error from exc
            if not self._conn.is_in_transaction():
                committed = index + 1
        if self._conn.is_in_transaction():
            last = statements[-1]
            error = StatementError(
                "the script left a transaction open (a BEGIN without its COMMIT); it was rolled back",
                statement=last.sql,
                index=len(statements) - 1,
                line=last.line,
                committed=committed,
            )
            await self._roll_back_leftover(error)
            raise error

    async def _roll_back_leftover(self, error: StatementError) -> None:
        if self._conn.is_in_transaction():
            try:
                await self._conn.execute("ROLLBACK")
            except (*_LOST, asyncpg.PostgresError) as exc:
                error.add_note(f"rolling back the script's own transaction failed too: {exc}")


async def _init_connection(conn: asyncpg.Connection) -> None:
    # If this process dies mid-migration, have the server notice within a
    # second and abort the running statement, instead of finishing it (and
    # holding migsync's locks) for nobody. Postgres 14+; older servers skip it.
    if conn.get_server_version().major >= 14:
        await conn.execute("SET client_connection_check_interval = 1000")


class PostgresBackend(BaseBackend):
    name: ClassVar[str] = "postgresql"
    dialect: ClassVar[str] = "postgresql"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {TRANSACTIONAL_DDL, SAVEPOINTS, MULTI_PROCESS, PROCESS_WIDE_LOCK}
    )

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_max: int | None = None,
        lock_timeout: float | None = None,
        migration_lock_timeout: float | None = None,
        migration_statement_timeout: float | None = None,
        lock_wait_report: float | None = None,
        create: bool = True,
        read_only: bool = False,
    ):
        super().__init__(url)
        del create  # a Postgres database is made by its administrator, never by migsync
        #: Every transaction read-only (``default_transaction_read_only``): Postgres itself
        #: refuses a write, whatever the caller tries (``migsync status``, ``apply --dry-run``).
        self.read_only = read_only
        self.dsn, options = parse_url(url)
        self.where = where(url)
        self.schema = schema or options.get("schema") or "public"
        self.tables = Tables(self.schema)
        try:
            self.pool_max = int(pool_max if pool_max is not None else options.get("pool_max", 4))
            self.lock_timeout = float(
                lock_timeout if lock_timeout is not None else options.get("lock_timeout", 60)
            )
        except ValueError as exc:
            raise ConfigError(f"postgres URL {self.where}: {exc}") from None
        self.migration_lock_timeout = _seconds(options, "migration_lock_timeout", migration_lock_timeout, 0)
        self.migration_statement_timeout = _seconds(
            options, "migration_statement_timeout", migration_statement_timeout, 0
        )
        self.lock_wait_report = _seconds(options, "lock_wait_report", lock_wait_report, 5)
        #: Called with each :class:`~migsync.backends.postgres_waits.LockWait` (the client's events).
        self.wait_listener: WaitListener | None = None
        if self.pool_max < 2:
            raise ConfigError("postgres pool_max must be at least 2 (the processor lock holds one)")
        self._write_key = lock_key(self.schema, "write")
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_max,
                server_settings={
                    "application_name": "migsync",
                    **({"default_transaction_read_only": "on"} if self.read_only else {}),
                },
                timeout=10,
                init=_init_connection,
            )
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            reason = str(exc) or type(exc).__name__
            raise ConnectError(f"cannot connect to Postgres at {self.where}: {reason}") from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _require(self) -> asyncpg.Pool:
        if self._pool is None:
            raise BackendError(f"Postgres database {self.where} is not open (use 'async with backend:')")
        return self._pool

    def schema_statements(self, from_version: int | None = None) -> list[str]:
        return self._create_schema() + super().schema_statements(from_version)

    def schema_prelude(self) -> list[str]:
        return self._create_schema() + super().schema_prelude()

    def _create_schema(self) -> list[str]:
        return [] if self.schema == "public" else [f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"']

    # -- units of work ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        # Only acquire and release are mapped here: an exception from the
        # caller's block (a TimeoutError of its own, say) passes through as it is.
        pool = self._require()
        with _mapped(self.where):
            conn = await pool.acquire()
        try:
            yield conn
        finally:
            with _mapped(self.where):
                await pool.release(conn)

    def _settings(self, schema_change: bool) -> str:
        """What a transaction sets once it holds the write lock; for a migration, its timeouts."""
        if schema_change:
            return f"{self._timeouts('SET LOCAL')}; SET LOCAL {postgres_batch.TX_SETTING} = 'on'"
        return "SET LOCAL lock_timeout = 0"

    async def _begin(self, conn: asyncpg.Connection, schema_change: bool = False) -> None:
        """BEGIN and take migsync's write lock, in one round trip; for a migration, its timeouts too."""
        millis = int(self.lock_timeout * 1000)
        try:
            await conn.execute(
                f"BEGIN; SET LOCAL lock_timeout = {millis}; "
                f"SELECT pg_advisory_xact_lock({self._write_key}); {self._settings(schema_change)}"
            )
        except asyncpg.LockNotAvailableError as exc:
            # Ask on this connection: the pool may have none to spare (deadlock).
            with contextlib.suppress(*_LOST, asyncpg.PostgresError):
                await conn.execute("ROLLBACK")
            holder = await self._lock_holder(conn, self._write_key)
            raise LockTimeout(
                f"{self.where}: migsync's write lock was held for over {self.lock_timeout:g}s{holder}"
            ) from exc
        except _LOST as exc:
            raise ConnectError(f"lost the connection to Postgres at {self.where}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise BackendError(f"{self.where}: {_describe(exc)}") from exc

    def _fast_begin(self) -> str:
        """A migration's BEGIN, to send in one message with its work: the write lock is tried,
        not waited for (see :meth:`_send`), so a busy lock cannot be mistaken for the script's."""
        return f"BEGIN; {postgres_batch.try_lock(self._write_key)}; {self._settings(True)}"

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresConnection]:
        async with self._connection() as conn:
            await self._begin(conn)
            try:
                yield PostgresConnection(conn, self.where)
            except BaseException:
                with contextlib.suppress(*_LOST, asyncpg.PostgresError):
                    await conn.execute("ROLLBACK")
                raise
            with _mapped(self.where, "commit failed: "):
                await conn.execute("COMMIT")

    @contextlib.asynccontextmanager
    async def autocommit(self) -> AsyncIterator[PostgresConnection]:
        async with self._connection() as conn:
            yield PostgresConnection(conn, self.where)

    def _timeouts(self, verb: str) -> str:
        """The statements that set a migration's timeouts (``SET LOCAL`` in its transaction)."""
        lock, statement = (
            int(t * 1000) for t in (self.migration_lock_timeout, self.migration_statement_timeout)
        )
        return f"{verb} lock_timeout = {lock}; {verb} statement_timeout = {statement}"

    async def _script(
        self,
        connection: PostgresConnection,
        conn: asyncpg.Connection,
        script: Script,
        pending: Pending | None = None,
        commit: bool = False,
    ) -> None:
        """A migration's script, watched while it waits on locks (and timed out, if asked).

        With ``pending``: the script with the bookkeeping after it (and the ``COMMIT``), in one
        message (:mod:`migsync.backends.postgres_batch`).
        """
        outside = script.each_commits and (self.migration_lock_timeout or self.migration_statement_timeout)
        async with watching(
            self.dsn, conn.get_server_pid(), script.label, self.lock_wait_report, self.wait_listener
        ) as watch:
            try:
                if outside:
                    await connection.execute(self._timeouts("SET"))
                if pending is not None:
                    await self._send(conn, pending, commit)
                else:
                    await connection.run_script(script.sql, each_commits=script.each_commits)
            except StatementError as exc:
                if watch is not None and watch.last is not None:
                    raise exc.amended(f"{exc.driver_message}; {watch.last.describe()}") from exc
                raise
            finally:
                if outside:
                    with contextlib.suppress(*_LOST, asyncpg.PostgresError):
                        await conn.execute("RESET lock_timeout; RESET statement_timeout")

    async def _send(self, conn: asyncpg.Connection, pending: Pending, commit: bool) -> None:
        """Send the kept requests as one message; map its failure to the request it belongs to.

        A message that begins the transaction tries the write lock without waiting; when another
        process holds it, nothing after the ``BEGIN`` ran: the transaction is begun again the
        waiting way (:meth:`_begin`) and the rest sent after it.
        """
        message = pending.message(commit)
        try:
            await conn.execute(message)
        except _LOST as exc:
            raise ConnectError(f"lost the connection to Postgres at {self.where}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            text = str(getattr(exc, "message", "") or exc)
            if pending.begin is not None and postgres_batch.LOCK_BUSY in text:
                with _mapped(self.where):
                    await conn.execute("ROLLBACK")
                try:
                    await self._begin(conn, schema_change=True)
                except LockTimeout as busy:
                    raise WriteLockTimeout(str(busy)) from busy
                pending.begin = None
                if pending:
                    await self._send(conn, pending, commit)
                elif commit:
                    with _mapped(self.where, "commit failed: "):
                        await conn.execute("COMMIT")
                return
            if postgres_batch.CLAIM_LOST in text:
                raise ClaimLost(f"{self.where}: the change was no longer as read ({text})") from exc
            if postgres_batch.TX_LOST in text:
                raise TransactionLost(
                    "the script ended the transaction migsync opened for it (a COMMIT or ROLLBACK); "
                    "what ran before that committed without the migration's bookkeeping"
                ) from exc
            script = pending.script
            position = getattr(exc, "position", None)
            # The error's position is the message's; the script starts after the BEGIN, if sent.
            at = int(position) - pending.script_offset if position and str(position).isdigit() else None
            ours = at is not None and script is not None and not 0 < at <= len(script.sql)
            if script is None or ours:
                doing = "commit failed: " if commit and not pending.statements else ""
                raise BackendError(f"{self.where}: {doing}{_describe(exc)}") from exc
            raise _statement_error(exc, script.sql, at) from exc

    async def run(self, work: Work[T]) -> T:
        async with self._connection() as conn:
            connection = PostgresConnection(conn, self.where)
            # A migration's transaction (Begin(schema_change=True)): its script and bookkeeping
            # are kept and sent with the COMMIT, in one message.
            pending: Pending | None = None

            async def flush(commit: bool = False) -> None:
                nonlocal pending
                kept, pending = pending, None
                if kept and kept.script is not None:
                    await self._script(connection, conn, kept.script, kept, commit)
                elif kept:
                    await self._send(conn, kept, commit)
                elif commit:
                    with _mapped(self.where, "commit failed: "):
                        await conn.execute("COMMIT")
                if not commit:  # still in the migration's transaction: keep on keeping
                    pending = Pending()

            async def perform(request: Request) -> Any:
                nonlocal pending
                if pending is not None:
                    if isinstance(request, Execute):
                        return pending.add(request)
                    keep = isinstance(request, Script) and not request.each_commits
                    if keep and pending.add_script(request):  # type: ignore[arg-type]
                        return None
                    if isinstance(request, Commit):
                        return await flush(commit=True)
                    if isinstance(request, Flush):
                        return await flush()
                    if isinstance(request, Rollback):
                        pending = None
                        return await rollback()
                    await flush()
                if isinstance(request, Begin):
                    if request.schema_change:
                        # Sent with the script and bookkeeping: one round trip for the migration.
                        pending = Pending(begin=self._fast_begin())
                    else:
                        await self._begin(conn)
                    return None
                if isinstance(request, Rollback):
                    return await rollback()
                if isinstance(request, Script):
                    return await self._script(connection, conn, request)
                return await perform_async(connection, request)

            async def rollback() -> None:
                # Outside a transaction (a script's error ended it, or a failed COMMIT did)
                # there is nothing to undo; ROLLBACK would only warn.
                if conn.is_in_transaction():
                    with _mapped(self.where):
                        await conn.execute("ROLLBACK")

            return await drive_async(work, perform, rollback)

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._connection() as conn:
            return await PostgresConnection(conn, self.where).fetch(sql, params)

    # -- the processor lock ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def processor_lock(self, name: str, timeout: float) -> AsyncIterator[None]:
        key = lock_key(self.schema, name)
        async with self._connection() as conn:
            deadline = time.monotonic() + timeout
            delay = 0.02
            while True:
                with _mapped(self.where):
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                        break
                if time.monotonic() >= deadline:
                    holder = await self._lock_holder(conn, key)
                    raise LockTimeout(
                        f"{self.where}: processor lock {name!r} not free after {timeout:g}s{holder}"
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
            try:
                yield
            finally:
                with contextlib.suppress(*_LOST, asyncpg.PostgresError):
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)

    async def _lock_holder(self, conn: asyncpg.Connection, key: int) -> str:
        """Who holds advisory lock ``key``, as far as Postgres tells: for error messages."""
        sql = (
            "SELECT a.pid, a.application_name, a.client_addr::text AS addr, a.state, "
            "now() - a.xact_start AS held FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted "
            # Advisory locks are per database: the same key elsewhere is someone else's.
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint) = $1 "
            "LIMIT 1"
        )
        try:
            row = await conn.fetchrow(sql, key, timeout=5)
        except Exception:  # a message helper must not hide the error it decorates
            return ""
        if row is None:
            return ""
        app = row["application_name"] or "?"
        return f" (held by pid {row['pid']}, {app} from {row['addr'] or 'local socket'}, {row['state']})"


__all__ = ["PostgresBackend", "PostgresConnection", "lock_key", "parse_url"]
