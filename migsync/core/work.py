"""Units of work as sans-I/O programs, so one program runs on every backend.

The processor's work on a change (run the migration, record the outcome
with the statement that is also its claim, commit) is written once, as a generator
that *yields requests* (:class:`Execute`, :class:`Fetch`, :class:`Script`,
transaction control) and receives each result. A backend *drives* it:

* an async driver (:func:`drive_async`, the default of every backend)
  awaits one database call per request;
* a backend whose driver lives in a thread (SQLite through aiosqlite)
  runs the whole program inside that thread with :func:`drive_sync`: one
  hand-off per batch of changes instead of one per statement, which is
  what keeps migsync within a few percent of the raw driver. Its rare
  :class:`Await` requests hop back to the event loop (:func:`await_from_thread`).

A failed request is thrown into the program at its ``yield``, so the
program handles errors with ordinary ``try``/``except``. When a program
ends with a transaction still open, the driver rolls it back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any, Generic, Protocol, TypeVar

import attrs

from migsync.core.errors import ClaimLost

T = TypeVar("T")


class Connection(Protocol):
    """What :func:`perform_async` needs of a session: the part of
    :class:`migsync.core.backend.Connection` it uses (declared here, so that the unit of work
    does not import the backend contract that is built on it)."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    async def run_script(self, sql: str, *, each_commits: bool = False) -> None: ...


@attrs.frozen
class Execute:
    """Run one statement; the result is its row count.

    ``expect``: the row count the statement must have; any other count raises
    :class:`~migsync.core.errors.ClaimLost` (the rows were changed by someone
    else since they were read). In a ``Begin(schema_change=True)`` transaction a
    backend may send the statement later, in one message with the requests
    after it up to the ``Commit`` (one round trip for a whole migration): its
    result is then ``expect`` (or -1 without one), and a failure, or a row count
    that is not ``expect``, is raised at the ``Commit``.
    """

    sql: str
    params: Sequence[Any] = ()
    expect: int | None = None


@attrs.frozen
class Fetch:
    """Run one query; the result is its rows as a list of dicts."""

    sql: str
    params: Sequence[Any] = ()


@attrs.frozen
class Script:
    """Run a migration script (split as the backend needs); raises StatementError.

    ``each_commits``: run with no transaction open, one statement at a time, so
    that each commits on its own (``CREATE INDEX CONCURRENTLY``, ``VACUUM``).
    ``label``: what the script is (``apply 0003_add_email``), for messages about it
    while it runs (a Postgres migration waiting on a lock says who holds it).

    Inside a ``Begin(schema_change=True)`` transaction a backend may send the
    script later, together with the requests after it up to the ``Commit``
    (see :class:`Execute`); its failure is then raised at the ``Commit``.
    """

    sql: str
    each_commits: bool = False
    label: str = ""


@attrs.frozen
class Begin:
    """Start a write transaction.

    ``schema_change``: the transaction will run a migration script. A backend
    may prepare the session the way its database's own schema-change procedure
    asks, and verify before the commit what that relaxed: SQLite turns
    foreign-key enforcement off before the transaction begins (``PRAGMA
    foreign_keys`` is a no-op inside one) and runs ``PRAGMA foreign_key_check``
    before it commits, failing the commit on a violation the script left.
    A backend may also keep such a ``Begin`` back and send it with the requests
    after it (Postgres: the whole migration in one message); a busy write lock
    is then found at the ``Commit`` or ``Flush``, and a wait for it that times
    out raises :class:`~migsync.core.errors.WriteLockTimeout` there.
    """

    schema_change: bool = False


@attrs.frozen
class Commit:
    pass


@attrs.frozen
class Flush:
    """Send now what the backend kept back (see :class:`Execute`); its failure is raised here.

    Where a program runs several migrations in one transaction, it flushes after
    each, so that a failure is raised where the migration it belongs to can tell.
    A backend that keeps nothing back does nothing.
    """


@attrs.frozen
class Rollback:
    """Undo the open transaction and end it."""


@attrs.frozen
class Savepoint:
    name: str


@attrs.frozen
class Release:
    name: str


@attrs.frozen
class RollbackTo:
    """Undo the work since the savepoint and end it."""

    name: str


@attrs.frozen
class Await:
    """Await ``call()`` on the event loop (network I/O of a handler, e.g. a push to the server);
    the result is its value. Asked for with no transaction open: nothing is held while it waits."""

    call: Callable[[], Awaitable[Any]]


Request = (
    Execute | Fetch | Script | Begin | Commit | Flush | Rollback | Savepoint | Release | RollbackTo | Await
)
Work = Generator[Request, Any, T]


class _Program(Generic[T]):
    """Steps a program: hands out its next request, takes back the result or the error."""

    def __init__(self, work: Work[T]):
        self._work = work
        self.result: T | None = None
        self.in_transaction = False

    def next_request(self, value: Any, error: BaseException | None) -> Request | None:
        """The program's next request, or None once it has returned (see ``result``)."""
        try:
            return self._work.send(value) if error is None else self._work.throw(error)
        except StopIteration as stop:
            self.result = stop.value
            return None

    def performed(self, request: Request) -> None:
        # Exact types (the requests are final), not isinstance of a union: asked for every request.
        kind = type(request)
        if kind is Begin:
            self.in_transaction = True
        elif kind is Commit or kind is Rollback:
            self.in_transaction = False


def drive_sync(work: Work[T], perform: Callable[[Request], Any], rollback: Callable[[], Any]) -> T:
    """Run ``work`` to its end, calling ``perform`` for each request.

    ``rollback`` is called if the program ends (or fails) inside a transaction.
    """
    program, value, error = _Program(work), None, None
    try:
        while (request := program.next_request(value, error)) is not None:
            value, error = None, None
            try:
                value = perform(request)
                program.performed(request)
            except Exception as exc:
                error = exc
        return program.result  # type: ignore[return-value]
    finally:
        if program.in_transaction:
            rollback()


async def drive_async(
    work: Work[T],
    perform: Callable[[Request], Awaitable[Any]],
    rollback: Callable[[], Awaitable[Any]],
) -> T:
    """Run ``work`` to its end, awaiting ``perform`` for each request (one database call each).

    ``rollback`` is awaited if the program ends (or fails) inside a transaction.
    """
    program, value, error = _Program(work), None, None
    try:
        while (request := program.next_request(value, error)) is not None:
            value, error = None, None
            try:
                value = await perform(request)
                program.performed(request)
            except Exception as exc:
                error = exc
        return program.result  # type: ignore[return-value]
    finally:
        if program.in_transaction:
            await rollback()


def await_from_thread(loop: asyncio.AbstractEventLoop, request: Await) -> Any:
    """Perform an :class:`Await` from a driver's worker thread: run it on ``loop`` and wait."""

    async def call() -> Any:
        return await request.call()

    return asyncio.run_coroutine_threadsafe(call(), loop).result()


async def perform_async(connection: Connection, request: Request) -> Any:
    """The default meaning of each request on an async :class:`Connection`."""
    match request:
        case Await(call):
            return await call()
        case Fetch(sql, params):
            return await connection.fetch(sql, params)
        case Execute(sql, params, expect):
            count = await connection.execute(sql, params)
            if expect is not None and count != expect:
                raise ClaimLost(f"expected {expect} row(s) changed, not {count}: {sql.split()[0]}")
            return count
        case Script(sql, each_commits):
            return await connection.run_script(sql, each_commits=each_commits)
        case Begin():
            return await connection.execute("BEGIN")
        case Commit():
            return await connection.execute("COMMIT")
        case Flush():
            return None
        case Rollback():
            return await connection.execute("ROLLBACK")
        case Savepoint(name):
            return await connection.execute(f"SAVEPOINT {name}")
        case Release(name):
            return await connection.execute(f"RELEASE SAVEPOINT {name}")
        case RollbackTo(name):
            await connection.execute(f"ROLLBACK TO SAVEPOINT {name}")
            return await connection.execute(f"RELEASE SAVEPOINT {name}")
    raise TypeError(f"not a unit-of-work request: {request!r}")
