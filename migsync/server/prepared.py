"""The poll and report path's statements, run on Postgres as asyncpg prepared statements.

::

    _STATE = Prepared(select(t.store_clients).where(t.store_clients.c.id == bindparam("client_id")))

    row = (await _STATE.rows(conn, {"client_id": 7}))[0]  # row.name, row.token_hash, ...

SQLAlchemy spends 120 to 180 µs of CPU executing a statement it has compiled and cached
already (its cache key, execution context, cursor and result wrappers, two greenlet switches);
asyncpg spends about 25 µs on the same prepared statement. A client cycle after a publish (a
full poll, a report) runs about ten statements, so that difference was most of the server's
CPU per cycle. A :class:`Prepared` statement is a SQLAlchemy construct, compiled by SQLAlchemy
once per dialect; on Postgres it runs on the connection's asyncpg connection (whose statement
cache prepares it once per connection), in the unit of work's transaction; on SQLite it runs
through SQLAlchemy like any other statement. Either way its rows have the columns as attributes,
with SQLAlchemy's result types applied (a :class:`~migsync.server.tables.VersionKey` column
reads back a :class:`~migsync.core.version.Version`), and a failure is SQLAlchemy's exception,
which :func:`migsync.server.engine.mapped_errors` maps as it maps any other.

Only statements without parameters SQLAlchemy expands at execution (``IN`` of a list, a
``LIMIT`` rendered as a literal) qualify: their SQL text is not fixed.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Executable

__all__ = ["Prepared"]


class Prepared:
    """One statement of the hot path: see the module's docstring."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._postgres: _Compiled | None = None

    async def rows(self, conn: AsyncConnection, params: Mapping[str, Any] | None = None) -> Sequence[Any]:
        """Run the statement with ``params`` on ``conn``; every row it returns (none for a
        statement that returns none)."""
        if conn.dialect.name != "postgresql":
            result = await conn.execute(self.statement, params)
            return result.all() if result.returns_rows else []
        compiled = self._postgres
        if compiled is None:
            compiled = self._postgres = _Compiled(self.statement, conn.dialect)
        # The pooled connection, without a trip through a greenlet when SQLAlchemy holds it
        # already (it does but after an invalidation, which only its own path may handle).
        sync = conn.sync_connection
        held = sync is not None and not sync.invalidated
        proxied = sync.connection if sync is not None and held else await conn.get_raw_connection()
        adapted: Any = proxied.dbapi_connection
        args = compiled.arguments(params or {})
        try:
            # SQLAlchemy's asyncpg adapter begins a transaction at its first statement, not at
            # ``conn.begin()``: one that runs here first must begin it (outside one: autocommit).
            if adapted._transaction is None and adapted.isolation_level != "autocommit":
                await adapted._start_transaction()
            driver: Any = proxied.driver_connection
            if compiled.readers is None:  # the first run: the result's column types are learnt
                statement = await driver.prepare(compiled.sql)
                compiled.read_as([(a.name, a.type.oid) for a in statement.get_attributes()])
                records = await statement.fetch(*args)
            else:
                records = await driver.fetch(compiled.sql, *args)
        except Exception as exc:
            raise _translated(adapted, conn.dialect, compiled.sql, args, exc) from None
        return compiled.typed(records)


class _Compiled:
    """A statement compiled for Postgres: its SQL, how to bind its parameters, how to read its rows."""

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled: Any = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise TypeError(f"a parameter of this statement is expanded at execution: {compiled}")
        self._compiled = compiled
        self.sql = str(compiled)
        processors = compiled._bind_processors
        self._binds = [(name, processors.get(name)) for name in compiled.positiontup or ()]
        self._dialect = dialect
        self._columns = compiled._result_columns
        self._row: Any = None
        #: (column index, its result processor) for the columns that have one; None: not known yet
        self.readers: list[tuple[int, Callable[[Any], Any]]] | None = None

    def read_as(self, attributes: Sequence[tuple[str, int]]) -> None:
        """Learn the result's columns from asyncpg's (name, Postgres type) of each: the types
        pick SQLAlchemy's result processors (some need them, as they need a cursor's description);
        the names are the construct's, or for SQL text Postgres's."""
        if self._columns:
            names = [c.keyname for c in self._columns]
            readers = [
                c.type._cached_result_processor(self._dialect, oid)
                for c, (_name, oid) in zip(self._columns, attributes, strict=True)
            ]
        else:
            names, readers = [name for name, _ in attributes], []
        self._row = namedtuple("_Row", names, rename=True)  # type: ignore[misc]
        self.readers = [(i, reader) for i, reader in enumerate(readers) if reader is not None]

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        values = self._compiled.construct_params(params, _check=False)
        return [values[name] if bind is None else bind(values[name]) for name, bind in self._binds]

    def typed(self, records: Sequence[Any]) -> list[Any]:
        make, readers = self._row._make, self.readers
        if not readers:
            return [make(record) for record in records]
        rows = []
        for record in records:
            values = list(record)
            for i, reader in readers:
                values[i] = reader(values[i])
            rows.append(make(values))
        return rows


def _translated(adapted: Any, dialect: Dialect, sql: str, args: list[Any], exc: Exception) -> Exception:
    """``exc``, raised by asyncpg, as SQLAlchemy would have raised it (a :class:`DBAPIError`
    around the adapter's exception, which carries Postgres's SQLSTATE)."""
    try:
        adapted._handle_exception(exc)  # raises the DB-API flavour of it
    except Exception as dbapi_error:
        error_class: Any = getattr(dialect, "loaded_dbapi", None)
        if error_class is not None and isinstance(dbapi_error, error_class.Error):
            translated: Exception = DBAPIError.instance(
                sql, args, dbapi_error, error_class.Error, dialect=dialect
            )
            return translated
        return dbapi_error
    return exc
