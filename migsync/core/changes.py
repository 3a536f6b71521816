"""Entity changes: the application's own writes, recorded in ``entity_changes``.

Recording, inside the application's transaction::

    async with client.changes() as rec:
        await rec.execute("INSERT INTO todo (id, title) VALUES ($1, $2)", (7, "milk"))
        await rec.insert("todo", 7, {"id": 7, "title": "milk"})

Both statements commit together or not at all. Each change is tagged with
the client's schema version at the time of the write (its newest applied
migration), so the server knows which schema the data was written against,
even when the change is pushed after the client applied newer migrations.
Tables can also be captured without application code (:mod:`migsync.core.capture`).
Pushing the queue to the server is the client's work (:mod:`migsync.client.push`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from migsync.core.backend import Backend, Connection, Row
from migsync.core.errors import ConfigError
from migsync.core.schema import Tables

#: what a change does to its entity (the ``operation`` column, and the wire's)
OPERATIONS = ("insert", "update", "delete")


def schema_version_sql(tables: Tables) -> str:
    """The client's schema version: its newest applied migration (NULL: none)."""
    return f"SELECT MAX(version) AS v FROM {tables.status} WHERE applied = TRUE"


class ChangeRecorder:
    """Records entity changes (and runs the application's statements) in one open transaction."""

    def __init__(self, tx: Connection, tables: Tables, schema_version: str | None) -> None:
        self._tx = tx
        self._tables = tables
        self.schema_version = schema_version
        self._insert = (
            f"INSERT INTO {tables.changes} (entity, entity_id, operation, data, schema_version) "
            "VALUES ($1, $2, $3, $4, $5)"
        )

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one of the application's own statements in the same transaction."""
        return await self._tx.execute(sql, params)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._tx.fetch(sql, params)

    async def record(self, entity: str, entity_id: object, operation: str, data: Any = None) -> None:
        """Record one change; ``data`` is the row after the write (JSON-serialisable)."""
        if operation not in OPERATIONS:
            raise ConfigError(f"operation {operation!r} is not one of {', '.join(OPERATIONS)}")
        if not entity or not isinstance(entity, str):
            raise ConfigError(f"entity {entity!r} must be a non-empty string")
        try:
            text = None if data is None else json.dumps(data, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"change to {entity} {entity_id}: data is not JSON ({exc})") from None
        await self._tx.execute(self._insert, (entity, str(entity_id), operation, text, self.schema_version))

    async def insert(self, entity: str, entity_id: object, data: Any) -> None:
        await self.record(entity, entity_id, "insert", data)

    async def update(self, entity: str, entity_id: object, data: Any) -> None:
        await self.record(entity, entity_id, "update", data)

    async def delete(self, entity: str, entity_id: object) -> None:
        await self.record(entity, entity_id, "delete", None)


@asynccontextmanager
async def recording(backend: Backend) -> AsyncIterator[ChangeRecorder]:
    """A transaction with a :class:`ChangeRecorder`; it commits when the block ends without error."""
    async with backend.transaction() as tx:
        rows = await tx.fetch(schema_version_sql(backend.tables))
        version = rows[0]["v"] if rows else None
        yield ChangeRecorder(tx, backend.tables, version)  # the stored key, as the triggers write it
