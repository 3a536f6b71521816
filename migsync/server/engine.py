"""Store URLs, the async engine behind them, and the one place driver errors become ours.

``sqlite:///path`` and ``sqlite+aiosqlite:///path`` open a SQLite file through
aiosqlite (``sqlite:///:memory:`` an in-memory store, for tests); ``postgresql://``,
``postgres://`` and ``postgresql+asyncpg://`` open Postgres through asyncpg.

SQLite runs with pysqlite's own transaction handling switched off, so that
SQLAlchemy's ``BEGIN`` is the real one: a unit of work that writes starts
with ``BEGIN IMMEDIATE`` (one writer at a time, waiting on ``busy_timeout``
instead of failing half-way), one that only reads with a plain ``BEGIN``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
from sqlalchemy import Connection, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from migsync.core.errors import BackendError, ConfigError, ConnectError, MigsyncError

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}

#: The execution option that makes a SQLite unit of work start with ``BEGIN IMMEDIATE``.
WRITE_OPTION = "migsync_write"

_SQLITE_BUSY_TIMEOUT_MS = 30_000
_PG_CONNECT_TIMEOUT_S = 10


def store_url(url: str) -> URL:
    """``url`` with its async driver named: ``sqlite://`` -> ``sqlite+aiosqlite://``, and so on."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"store URL {url!r} is not a URL; expected sqlite:///path or postgresql://host/db"
        ) from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        valid = ", ".join(f"{scheme}://" for scheme in _DRIVERS)
        raise ConfigError(
            f"store URL {display(parsed)}: unknown scheme {parsed.drivername!r}; valid: {valid}"
        )
    return parsed.set(drivername=driver)


def display(url: URL) -> str:
    """``url`` for messages: the password hidden."""
    return url.render_as_string(hide_password=True)


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


@attrs.frozen
class PoolOptions:
    """The Postgres connection pool of one server process (SQLAlchemy's ``QueuePool``).

    Each process holds up to ``size`` connections open and opens ``overflow`` more under load
    (closed again once returned); ``timeout`` is how long a unit of work waits for one. Size
    them so that processes x (size + overflow) stays below Postgres' ``max_connections``.
    """

    size: int = 10
    overflow: int = 10
    timeout: float = 30.0

    def __attrs_post_init__(self) -> None:
        if self.size < 1 or self.overflow < 0 or self.timeout <= 0:
            raise ConfigError(
                f"pool size must be >= 1, max overflow >= 0 and pool timeout > 0, not "
                f"{self.size}, {self.overflow}, {self.timeout}"
            )


def create_engine(url: URL, *, create: bool, pool: PoolOptions | None = None) -> AsyncEngine:
    """The engine for a mapped store ``url``; a missing SQLite file is an error unless ``create``.
    ``pool`` sizes a Postgres store's connection pool (SQLite keeps SQLAlchemy's defaults)."""
    if not is_sqlite(url):
        sizes = pool or PoolOptions()
        return create_async_engine(
            url,
            pool_size=sizes.size,
            max_overflow=sizes.overflow,
            pool_timeout=sizes.timeout,
            connect_args={
                "timeout": _PG_CONNECT_TIMEOUT_S,
                "server_settings": {"application_name": "migsync-server"},
            },
        )
    memory = url.database in (None, "", ":memory:")
    if not memory:
        file = Path(str(url.database))
        if not file.exists() and not create:
            raise ConfigError(f"SQLite store {file} does not exist")
        if not file.parent.is_dir():
            raise ConfigError(f"cannot create SQLite store {file}: folder {file.parent} does not exist")
    # One in-memory database must be one connection, or every connection sees its own.
    engine = create_async_engine(url, poolclass=StaticPool) if memory else create_async_engine(url)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not memory:
                # Readers (polls) never wait for the writer, nor it for them.
                cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")

    return engine


async def check_connection(engine: AsyncEngine, where: str) -> None:
    """Open and close one connection; :class:`ConnectError` saying why if that fails."""
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
    except (OSError, TimeoutError, SQLAlchemyError) as exc:
        raise ConnectError(f"cannot open store {where}: {describe(exc)}") from None


@contextlib.asynccontextmanager
async def mapped_errors(where: str, doing: str) -> AsyncIterator[None]:
    """Turn anything the driver raises inside the block into a :class:`BackendError`."""
    try:
        yield
    except MigsyncError:
        raise
    except IntegrityError as exc:
        raise BackendError(f"store {where}: {doing}: conflicting data ({describe(exc)})") from exc
    except (OSError, TimeoutError) as exc:
        raise ConnectError(f"store {where}: {doing}: connection lost ({describe(exc)})") from exc
    except SQLAlchemyError as exc:
        raise BackendError(f"store {where}: {doing}: {describe(exc)}") from exc


#: SQLSTATEs of a transaction Postgres rolled back so that another could go on: trying it again helps.
_RETRYABLE = {"40P01", "40001"}  # deadlock detected, serialization failure


def is_retryable(exc: BaseException) -> bool:
    """Whether ``exc`` (a :class:`BackendError` from :func:`mapped_errors`) is a deadlock or a
    serialization failure: the transaction was rolled back whole and may be tried again."""
    cause = exc.__cause__
    inner = cause.orig if isinstance(cause, DBAPIError) else None
    return getattr(inner, "sqlstate", None) in _RETRYABLE or getattr(inner, "pgcode", None) in _RETRYABLE


def describe(exc: BaseException) -> str:
    """The driver's own message, on one line, without SQLAlchemy's wrapping."""
    inner = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = " ".join(str(inner).split()) or type(inner).__name__
    return text


async def writing(conn: AsyncConnection, url: URL) -> AsyncConnection:
    """``conn`` marked so that its next transaction on SQLite is ``BEGIN IMMEDIATE``."""
    return await conn.execution_options(**{WRITE_OPTION: True}) if is_sqlite(url) else conn
