"""The storage backend contract: what the processor needs of a client database.

A backend is opened once per process (``async with backend:``) and hands
out units of work: ``transaction()`` yields a :class:`Connection` inside
one database transaction, ``autocommit()`` one where every statement
commits on its own (for migrations that cannot run in a transaction).

The SQL that migsync itself sends uses ``$1, $2, ...`` placeholders (as
asyncpg does); backends whose driver spells them otherwise translate.

Third-party backends subclass :class:`BaseBackend` and
:class:`BaseConnection`, which supply everything that can be built from a
few primitives, and run the conformance suite in :mod:`migsync.testing`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

import attrs

from migsync.core import schema
from migsync.core.contracts import to_implement
from migsync.core.errors import BackendError
from migsync.core.work import Work, drive_async, perform_async

T = TypeVar("T")

Row = dict[str, Any]
Params = Sequence[Any]

#: Capability flags a backend may declare (tests skip by capability).
TRANSACTIONAL_DDL = "transactional_ddl"
SAVEPOINTS = "savepoints"
MULTI_PROCESS = "multi_process"  # several OS processes may share one database
#: ``processor_lock`` excludes other processes, not only other tasks of this backend
#: instance. Without it, exactly-once rests on each change's claim in a write
#: transaction (SQLite's write lock), which the processor does in any case.
PROCESS_WIDE_LOCK = "process_wide_lock"


@runtime_checkable
class Connection(Protocol):
    """A database session inside one unit of work."""

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; return the number of rows it changed (or -1)."""

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one query; return its rows as dicts."""

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...

    async def execute_batch(self, statements: Sequence[tuple[str, Params]]) -> None:
        """Run several statements in order (one round trip where the driver can)."""

    async def run_script(self, sql: str, *, each_commits: bool = False) -> None:
        """Run a migration script, all its statements in order.

        Raises :class:`~migsync.core.errors.StatementError` naming the failing
        statement's position and line. A blank or comment-only script is a no-op.
        ``each_commits``: no transaction is open; run the statements one at a
        time so that each commits by itself.
        """


# -- what a backend with a ``wait_listener`` reports: a migration waiting on locks --------------


@attrs.frozen
class Blocker:
    """A session that holds a lock a migration waits for."""

    pid: int
    user: str | None
    application: str | None
    client: str | None
    state: str | None
    transaction_seconds: float | None
    query: str | None

    def describe(self) -> str:
        who = f"pid {self.pid} ({self.application or '?'}, user {self.user or '?'}"
        who += f", from {self.client})" if self.client else ", local socket)"
        held = f", in a transaction for {self.transaction_seconds:.0f} s" if self.transaction_seconds else ""
        query = " ".join((self.query or "").split())
        return f"{who}, {self.state or '?'}{held}: {query!r}"


@attrs.frozen
class LockWait:
    """A migration script that has waited ``waited`` seconds on locks the ``blockers`` hold."""

    label: str
    pid: int
    waited: float
    blockers: tuple[Blocker, ...]

    def describe(self) -> str:
        held_by = "; ".join(b.describe() for b in self.blockers)
        return f"{self.label or 'a migration'} has waited {self.waited:.0f} s for a lock held by {held_by}"


@runtime_checkable
class Backend(Protocol):
    """A client database. Every member is required; a backend that lacks one (or has only
    :class:`BaseBackend`'s stub of it) is refused when it loads.

    Optional, used when present: ``sqlite_functions`` (a SQLite backend that installs plugins'
    functions and collations) and ``wait_listener`` (one that can say who blocks a lock).
    """

    name: ClassVar[str]
    dialect: ClassVar[str]
    capabilities: ClassVar[frozenset[str]]
    url: str
    tables: schema.Tables

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A write transaction; commits on success, rolls back on an exception."""

    def autocommit(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A session without a transaction: each statement commits by itself."""

    def processor_lock(self, name: str, timeout: float) -> contextlib.AbstractAsyncContextManager[None]:
        """Exclusive between passes on queue ``name``; raises LockTimeout after ``timeout``.

        With capability ``process_wide_lock`` it excludes every process on the
        database; otherwise only this instance's tasks, and other processes are
        kept apart by each change's claim inside a write transaction.
        """

    async def ensure_schema(self) -> None:
        """Create migsync's bookkeeping tables if they are missing (idempotent)."""

    async def run(self, work: Work[T]) -> T:
        """Drive a unit-of-work program (:mod:`migsync.core.work`) to its end.

        The program issues its own ``Begin``/``Commit``; if it ends inside a
        transaction, that transaction is rolled back.
        """

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        """A read outside any explicit transaction."""


class BaseConnection:
    """Defaults for :class:`Connection` built on ``execute`` and ``fetch``."""

    dialect: ClassVar[str] = ""

    async def execute(self, sql: str, params: Params = ()) -> int:
        raise NotImplementedError

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        raise NotImplementedError

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetch(sql, params)
        return rows[0] if rows else None

    async def execute_batch(self, statements: Sequence[tuple[str, Params]]) -> None:
        for sql, params in statements:
            await self.execute(sql, params)

    async def run_script(self, sql: str, *, each_commits: bool = False) -> None:
        raise NotImplementedError


class BaseBackend:
    """Defaults for :class:`Backend`: context management and schema creation.

    Every backend's factory accepts ``create`` (default True): whether opening
    may create the database when it does not exist. Commands that only read
    or change an existing client pass ``create=False``, so a mistyped URL is
    an error instead of a new, empty database.
    """

    name: ClassVar[str] = ""
    dialect: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: Where the bookkeeping tables live (a backend with schemas may qualify them).
    tables: schema.Tables = schema.DEFAULT_TABLES

    def __init__(self, url: str):
        self.url = url

    @to_implement
    async def open(self) -> None:
        raise NotImplementedError

    @to_implement
    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @to_implement
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        raise NotImplementedError

    @to_implement
    def autocommit(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        raise NotImplementedError

    @to_implement
    def processor_lock(self, name: str, timeout: float) -> contextlib.AbstractAsyncContextManager[None]:
        raise NotImplementedError

    def schema_statements(self, from_version: int | None = None) -> list[str]:
        """The DDL that takes the bookkeeping tables from layout ``from_version`` (None: none)
        to the current one, in this backend's dialect."""
        return schema.ddl(self.dialect, self.tables, from_version)

    def schema_prelude(self) -> list[str]:
        """What must exist before the layout's version can be read: the meta table (idempotent)."""
        return [schema.meta_ddl(self.tables)]

    async def ensure_schema(self) -> None:
        # A read first: an up-to-date database costs no write (and no fsync) per start.
        if (await self._schema_version(self.fetch) or 0) >= schema.SCHEMA_VERSION:
            return
        async with self.transaction() as tx:
            # Again under the write lock: another process may have upgraded it meanwhile. The
            # meta table first, so the read cannot fail (a failed statement ends a Postgres
            # transaction).
            await tx.execute_batch([(statement, ()) for statement in self.schema_prelude()])
            version = await self._schema_version(tx.fetch)
            if version is not None and version >= schema.SCHEMA_VERSION:
                return
            await tx.execute_batch([(statement, ()) for statement in self.schema_statements(version)])

    async def _schema_version(self, fetch: Callable[[str], Awaitable[list[Row]]]) -> int | None:
        try:
            rows = await fetch(f"SELECT value FROM {self.tables.meta} WHERE key = 'schema_version'")
        except BackendError:
            return None  # no bookkeeping tables yet
        return int(rows[0]["value"]) if rows else None

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        async with self.transaction() as tx:
            return await tx.fetch(sql, params)

    async def run(self, work: Work[T]) -> T:
        async with self.autocommit() as connection:
            return await drive_async(
                work, functools.partial(perform_async, connection), lambda: connection.execute("ROLLBACK")
            )
