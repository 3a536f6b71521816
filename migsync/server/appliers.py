"""Change appliers: what the server does with the entity changes its clients push.

An applier is any object with ``async def apply(self, change, connection, dialect)``
(:class:`ChangeApplier`; subclass :class:`BaseChangeApplier`). The store calls
it for each change it stores, in the order received, inside the transaction
that stores the change and in a savepoint of that change's own: what it does
with ``connection`` commits with the change, and if it raises, what the
appliers did for that change is undone and the error kept in the inbox
(the change is accepted all the same). Plugins register appliers with the
``migsync_register_change_appliers`` hook; :func:`build_appliers` makes them
from ``NAME[:key=value,...]`` strings, as ``migsync serve --apply-changes`` does.

An applier may also have ``async def apply_many(self, changes, connection, dialect)``:
the same as ``apply`` on each change in turn, with everything done through
``connection``, so that it can be undone. When it is the store's only applier,
the store hands it a whole batch at once, in one savepoint; if that raises,
the store undoes the batch and hands the changes to ``apply`` one by one, each
in its savepoint, as above, so an error is kept with its own change. The
outcome is the same, only faster when nothing fails. An applier that does
anything the database cannot undo (sends a message) must not have it.

The built-in ``tables`` applier (:class:`TablesApplier`, on by default)
writes each change to the table of the store database that has the entity's
name, if there is one. Everything in a change comes from a client and is
untrusted: it touches only tables that exist, whose names are plain
identifiers and are not the store's own (``store_*``), and only columns
that exist; values are bound as parameters and names quoted by SQLAlchemy.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import operator
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sqlalchemy import Column, MetaData, Table, and_, delete, insert, inspect, update

from migsync.core.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.engine import Dialect
    from sqlalchemy.ext.asyncio import AsyncConnection

    from migsync.core.plugins import Plugins
    from migsync.server.records import ReceivedChange

__all__ = [
    "BaseChangeApplier",
    "ChangeApplier",
    "TablesApplier",
    "UnsafeChange",
    "applier_name",
    "build_appliers",
    "parse_applier",
]

#: A name the tables applier accepts for a table or a column.
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Tables the tables applier never touches (compared in lower case: SQLite's names ignore case).
RESERVED_PREFIXES = ("store_", "sqlite_", "pg_")


@runtime_checkable
class ChangeApplier(Protocol):
    async def apply(self, change: ReceivedChange, connection: AsyncConnection, dialect: str) -> None:
        """Apply ``change`` through ``connection`` (``dialect``: ``"sqlite"`` or ``"postgresql"``)."""


class BaseChangeApplier:
    """A base for appliers: ``name`` (used in the errors kept in the inbox), options checked."""

    name = "applier"

    def __init__(self, options: Mapping[str, str] | None = None):
        if options:
            raise ConfigError(f"change applier {self.name!r} takes no options, got {sorted(options)}")

    async def apply(self, change: ReceivedChange, connection: AsyncConnection, dialect: str) -> None:
        raise NotImplementedError


class UnsafeChange(ValueError):
    """A change the tables applier will not touch the database for (the reason is kept in the inbox)."""


def applier_name(applier: object) -> str:
    return str(getattr(applier, "name", None) or type(applier).__name__)


def parse_applier(text: str) -> tuple[str, dict[str, str]]:
    """``"tables:cache_seconds=0"`` -> ``("tables", {"cache_seconds": "0"})``."""
    name, _, raw = text.partition(":")
    options: dict[str, str] = {}
    for item in filter(None, raw.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"change applier option {item!r} in {text!r} is not key=value")
        options[key.strip()] = value.strip()
    if not name.strip():
        raise ConfigError(f"change applier {text!r} has no name")
    return name.strip(), options


def build_appliers(plugins: Plugins, configs: Sequence[str] | None) -> list[ChangeApplier]:
    """Appliers from ``NAME[:key=value,...]`` strings; the default ones when ``configs`` is None."""
    if configs is None:
        return [spec.load()({}) for spec in plugins.change_appliers if spec.default]
    appliers = []
    for config in configs:
        name, options = parse_applier(config)
        appliers.append(plugins.change_appliers.get(name).load()(options))
    return appliers


# -- the built-in: same-named tables ---------------------------------------------------------------


class TablesApplier(BaseChangeApplier):
    """Applies each change to the store database's table named like its entity, if there is one.

    ``insert``: an INSERT of the data's columns (the key from ``entity_id`` unless the
    data has it); ``update``: an UPDATE of the data's columns by the key (an error when
    no row has it); ``delete``: a DELETE by the key. The key is the table's primary key
    or, without one, its ``id`` column; ``entity_id`` is its value as text, or for a
    composite key a JSON array of its values in key order (``[1,"x"]``, as
    ``migsync capture`` writes it; else they are read from the data). Data keys that
    are not columns are ignored;
    values are converted to the columns' types (``"42"`` for an integer, an ISO 8601
    string for a timestamp). A change whose entity has no table is skipped.

    Option ``cache_seconds`` (default 5): how long what a table looks like is trusted
    (reflection is a few catalog queries; a table made or altered meanwhile is seen
    after that long).
    """

    name = "tables"

    def __init__(self, options: Mapping[str, str] | None = None):
        options = dict(options or {})
        raw = options.pop("cache_seconds", "5")
        try:
            self.cache_seconds = float(raw)
        except ValueError:
            self.cache_seconds = -1.0
        if not math.isfinite(self.cache_seconds) or self.cache_seconds < 0:
            raise ConfigError(f"tables applier: cache_seconds={raw!r} is not a number of seconds >= 0")
        if options:
            raise ConfigError(f"tables applier: unknown options {sorted(options)} (valid: cache_seconds)")
        #: (database, entity) -> (when it was looked at (monotonic), its table or None)
        self._tables: dict[tuple[str, str], tuple[float, Table | None]] = {}
        #: the last engine seen and its URL as text (rendering it for every change is not free)
        self._engine: tuple[object, str] | None = None

    async def apply(self, change: ReceivedChange, connection: AsyncConnection, dialect: str) -> None:
        table = await self._table(change.entity, connection)
        if table is not None:
            await self._apply_to(table, change, connection)

    async def _apply_to(self, table: Table, change: ReceivedChange, connection: AsyncConnection) -> None:
        if change.operation == "insert":
            await self._insert(table, change, connection)
        elif change.operation == "update":
            await self._update(table, change, connection)
        elif change.operation == "delete":
            await self._delete(table, change, connection)
        else:
            raise UnsafeChange(f"unknown operation {change.operation!r}")

    async def apply_many(
        self, changes: Sequence[ReceivedChange], connection: AsyncConnection, dialect: str
    ) -> None:
        """:meth:`apply` on each of ``changes`` in turn; a run of inserts into one table, of the
        same columns, is one statement (a ``COPY`` on Postgres, else an ``executemany``)."""
        rows: list[dict[str, Any]] = []
        into: tuple[Table, frozenset[str]] | None = None
        tables: dict[str, Table | None] = {}  # by entity: looked up once per batch
        for change in changes:
            entity = change.entity
            table = tables[entity] if entity in tables else await self._table(entity, connection)
            tables[entity] = table
            if table is None:
                continue
            if change.operation == "insert":
                values = self._insert_values(table, change)
                if into is None or into[0] is not table or into[1] != values.keys():
                    await self._flush(into, rows, connection, dialect)
                    into, rows = (table, frozenset(values)), []
                rows.append(values)
                continue
            await self._flush(into, rows, connection, dialect)
            into, rows = None, []
            await self._apply_to(table, change, connection)
        await self._flush(into, rows, connection, dialect)

    @staticmethod
    async def _flush(
        into: tuple[Table, frozenset[str]] | None,
        rows: list[dict[str, Any]],
        connection: AsyncConnection,
        dialect: str,
    ) -> None:
        if into is None or not rows:
            return
        table, columns = into
        if dialect == "postgresql" and columns and _copyable(table, columns, connection.dialect):
            # The rows as COPY takes them, through the asyncpg connection under SQLAlchemy's (same
            # transaction, same savepoint): a tenth of what an INSERT per row costs Postgres.
            names = sorted(columns)
            driver = (await connection.get_raw_connection()).driver_connection
            assert driver is not None
            record = operator.itemgetter(*names)
            records = map(record, rows) if len(names) > 1 else ((record(row),) for row in rows)
            await driver.copy_records_to_table(table.name, records=records, columns=names)
            return
        await connection.execute(insert(table), rows)

    async def _table(self, entity: str, connection: AsyncConnection) -> Table | None:
        if not IDENTIFIER.fullmatch(entity):
            raise UnsafeChange(f"entity {entity!r} is not a plain identifier: no table is touched")
        if entity.lower().startswith(RESERVED_PREFIXES):
            raise UnsafeChange(f"entity {entity!r} names a table of the store or the database: not touched")
        engine = connection.engine
        if self._engine is None or self._engine[0] is not engine:
            self._engine = (engine, str(engine.url))
        key = (self._engine[1], entity)
        cached = self._tables.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.cache_seconds:
            return cached[1]
        table = await connection.run_sync(_reflect, entity)
        self._tables[key] = (now, table)
        return table

    async def _insert(self, table: Table, change: ReceivedChange, connection: AsyncConnection) -> None:
        await connection.execute(insert(table).values(self._insert_values(table, change)))

    @staticmethod
    def _insert_values(table: Table, change: ReceivedChange) -> dict[str, Any]:
        values = _values(table, change)
        keys = _key_columns(table)
        if len(keys) == 1 and keys[0].name not in values:
            values[keys[0].name] = _convert(keys[0], change.entity_id)
        return values

    async def _update(self, table: Table, change: ReceivedChange, connection: AsyncConnection) -> None:
        where = _where(table, change)
        keys = {c.name for c in _key_columns(table)}
        values = {name: value for name, value in _values(table, change).items() if name not in keys}
        if not values:
            return
        result = await connection.execute(update(table).where(where).values(values))
        if result.rowcount == 0:
            raise LookupError(f"no row of {table.name} has key {change.entity_id!r} to update")

    async def _delete(self, table: Table, change: ReceivedChange, connection: AsyncConnection) -> None:
        # A row already gone is no error: the delete has happened.
        await connection.execute(delete(table).where(_where(table, change)))


def _reflect(connection: Connection, entity: str) -> Table | None:
    # get_table_names lists tables only (no views) of the default schema.
    if entity not in inspect(connection).get_table_names():
        return None
    return Table(entity, MetaData(), autoload_with=connection)


def _key_columns(table: Table) -> list[Column[Any]]:
    keys: list[Column[Any]] | None = table.info.get(_KEYS)
    if keys is None:
        keys = list(table.primary_key.columns)
        if not keys and "id" in table.c:
            keys = [table.c.id]
        table.info[_KEYS] = keys
    return keys


def _columns(table: Table) -> dict[str, tuple[Column[Any], type | None]]:
    """The columns data may set (those named by a plain identifier), each with its Python type
    (None: not known); worked out once per table, and kept with it (``Table.info``)."""
    columns: dict[str, tuple[Column[Any], type | None]] | None = table.info.get(_COLUMNS)
    if columns is None:
        columns = {
            name: (column, _python_type(column))
            for name, column in table.c.items()
            if IDENTIFIER.fullmatch(name)
        }
        table.info[_COLUMNS] = columns
    return columns


_KEYS = "migsync_key_columns"
_COLUMNS = "migsync_columns"
_COPYABLE = "migsync_copyable"
#: The Python types of the columns COPY is used for: asyncpg encodes these values as they are,
#: as SQLAlchemy would bind them (a JSON column, an array, a type of SQLAlchemy's own processing
#: or one it does not know keep the INSERT, whose bind processing they need).
_PLAIN_TYPES = frozenset(
    {
        int,
        float,
        str,
        bool,
        decimal.Decimal,
        datetime.date,
        datetime.datetime,
        datetime.time,
        uuid.UUID,
        bytes,
    }
)


def _copyable(table: Table, columns: frozenset[str], dialect: Dialect) -> bool:
    """Whether rows of ``columns`` go into ``table`` as well by COPY as by an INSERT."""
    plain: frozenset[str] | None = table.info.get(_COPYABLE)
    if plain is None:
        plain = frozenset(
            name
            for name, (column, kind) in _columns(table).items()
            if kind in _PLAIN_TYPES
            # Boolean's processing only checks the value is one, which _convert_as made sure of.
            and (kind is bool or column.type.dialect_impl(dialect).bind_processor(dialect) is None)
        )
        table.info[_COPYABLE] = plain
    return columns <= plain


def _values(table: Table, change: ReceivedChange) -> dict[str, Any]:
    """The data's values for the table's columns, converted; other keys ignored."""
    data = change.data
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UnsafeChange(f"the data of {change.operation} must be an object, not {type(data).__name__}")
    columns = _columns(table)
    return {
        name: _convert_as(*column, value)
        for name, value in data.items()
        if (column := columns.get(name)) is not None
    }


def _where(table: Table, change: ReceivedChange) -> Any:
    keys = _key_columns(table)
    if not keys:
        raise UnsafeChange(f"table {table.name} has no primary key and no id column: cannot find the row")
    if len(keys) == 1:
        return keys[0] == _convert(keys[0], change.entity_id)
    values = _composite(change.entity_id, len(keys))
    if values is None:
        data = change.data if isinstance(change.data, dict) else {}
        missing = [c.name for c in keys if c.name not in data]
        if missing:
            raise UnsafeChange(
                f"table {table.name} has a composite key ({', '.join(c.name for c in keys)}): entity_id "
                f"must be a JSON array of {len(keys)} values, or the data must hold {', '.join(missing)}"
            )
        values = [data[c.name] for c in keys]
    return and_(*(c == _convert(c, v) for c, v in zip(keys, values, strict=True)))


def _composite(entity_id: str, size: int) -> list[Any] | None:
    """The values of a composite key written as a JSON array (``[1,"x"]``, as capture writes it)."""
    if not entity_id.startswith("["):
        return None
    try:
        values = json.loads(entity_id)
    except ValueError:
        return None
    return values if isinstance(values, list) and len(values) == size else None


def _convert(column: Column[Any], value: Any) -> Any:
    """``value`` (from JSON) as the column's Python type, where that is clear; ValueError otherwise."""
    return _convert_as(column, _python_type(column), value)


def _python_type(column: Column[Any]) -> type | None:
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


def _convert_as(column: Column[Any], kind: type | None, value: Any) -> Any:
    """:func:`_convert`, the column's Python type (None: not known) given."""
    if value is None or kind is None or type(value) is kind:  # the last: what _as would return
        return value
    try:
        return _as(kind, value)
    except (ValueError, TypeError, ArithmeticError) as exc:
        shown = json.dumps(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise ValueError(f"column {column.name} ({column.type}) cannot take {shown}: {exc}") from None


def _as(kind: type, value: Any) -> Any:
    if kind in (dict, list):  # JSON, JSONB, ARRAY: SQLAlchemy's types bind them
        return value
    if kind is str:
        return value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, bool):
        if kind in (bool, int):
            return kind(value)
        raise TypeError("a boolean")
    if kind is bool:
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
            return _BOOLEANS[value.strip().lower()]
        raise ValueError("not a boolean")
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError("not an integer")
            return int(value)
        return int(value)
    if kind is float:
        return float(value)
    if kind is decimal.Decimal:
        return decimal.Decimal(str(value))
    if isinstance(value, str):
        if kind is datetime.datetime:
            return datetime.datetime.fromisoformat(value)
        if kind is datetime.date:
            return datetime.date.fromisoformat(value)
        if kind is datetime.time:
            return datetime.time.fromisoformat(value)
        if kind is uuid.UUID:
            return uuid.UUID(value)
        if kind is bytes and value.startswith("\\x"):  # how capture writes a BLOB or a bytea
            return bytes.fromhex(value[2:])
    return value


_BOOLEANS = {"true": True, "t": True, "1": True, "false": False, "f": False, "0": False}
