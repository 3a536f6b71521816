"""The inbox: the entity changes clients push, stored once each and handed to the change appliers.

The functions here run inside one of :class:`~migsync.server.store.Store`'s
units of work and take its connection; the store's methods are their public face.

A batch is taken in order, in one transaction. A change whose id the client
sent before is a *duplicate* (stored once, however often it is sent: a
client that lost the answer sends the batch again). A change tagged with a
schema version this server never published is *refused*, and the batch
stops there: the changes after it are neither stored nor refused, since a
client applies its changes in order and must deal with the refused one
first. Every other change is stored, in the order received, and handed to
each change applier (see :mod:`migsync.server.appliers`) in a savepoint of
its own: an applier that raises undoes what the appliers did for that
change, and its error is kept in the change's ``apply_error``. The change is
accepted all the same: the server has it, and an operator can look. (A lone
applier with ``apply_many`` gets the batch at once, in one savepoint, and the
changes one by one only if that fails: the same outcome, faster.)

The batch is stored with one statement, which skips the ids the inbox has
(the duplicates); the client's row, locked first, keeps two deliveries of the
same batch from racing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from migsync.core.errors import ConfigError
from migsync.protocol.wire import ChangeRefusal, ChangesAck, EntityChange
from migsync.server import tables as t
from migsync.server.appliers import ChangeApplier, applier_name
from migsync.server.engine import describe
from migsync.server.records import ReceivedChange

_inbox = t.store_inbox.c
_clients = t.store_clients.c
_published = t.store_migrations.c

#: How many ids one ``IN (...)`` holds (well under SQLite's limit on bound parameters).
_CHUNK = 500
#: The longest apply error kept.
MAX_APPLY_ERROR = 8 * 1024


async def receive(
    conn: AsyncConnection,
    client_id: int,
    changes: Sequence[EntityChange],
    appliers: Sequence[ChangeApplier] = (),
) -> ChangesAck:
    """Store ``changes`` of ``client_id`` and apply them; see the module docstring."""
    now = time.time()
    # Marking the client seen locks its row: batches of one client run one after the other
    # (a no-op on SQLite, whose writer is alone), so two deliveries of a batch store it once.
    seen = update(t.store_clients).where(_clients.id == client_id).values(last_seen_at=now)
    if await conn.scalar(seen.returning(_clients.id)) is None:
        raise ConfigError(f"no client has id {client_id} (see 'migsync clients list')")
    end, refused = await _refusal(conn, client_id, changes)
    taken: list[EntityChange] = []
    duplicate: list[str] = []
    if end:
        # One statement for the batch: the database tells which ids it did not have.
        inserted = set(await _insert(conn, client_id, changes[:end], now))
        for change in changes[:end]:
            if change.id in inserted:
                inserted.discard(change.id)  # the same id twice in one batch: the second is a duplicate
                taken.append(change)
            else:
                duplicate.append(change.id)
    if taken and appliers:
        await _apply_all(conn, [_as_received(client_id, c, now) for c in taken], appliers)
    return ChangesAck(tuple(c.id for c in taken), tuple(duplicate), refused)


async def _refusal(
    conn: AsyncConnection, client_id: int, changes: Sequence[EntityChange]
) -> tuple[int, ChangeRefusal | None]:
    """Where the batch stops: before its first new change tagged with a version never published."""
    versions = sorted({c.schema_version for c in changes if c.schema_version is not None})
    published: set[int] = set()
    for start in range(0, len(versions), _CHUNK):
        published.update(
            await conn.scalars(
                select(_published.version).where(_published.version.in_(versions[start : start + _CHUNK]))
            )
        )
    unknown = [
        i for i, c in enumerate(changes) if c.schema_version is not None and c.schema_version not in published
    ]
    if not unknown:
        return len(changes), None
    # A change stored before (or earlier in this batch) is a duplicate, whatever its version.
    stored = await _stored(conn, client_id, [changes[i].id for i in unknown])
    first: dict[str, int] = {}
    for i, change in enumerate(changes):
        first.setdefault(change.id, i)
    for i in unknown:
        change = changes[i]
        if change.id not in stored and first[change.id] == i:
            reason = f"schema version {change.schema_version} was never published by this server"
            return i, ChangeRefusal(change.id, reason)
    return len(changes), None


async def _stored(conn: AsyncConnection, client_id: int, ids: Sequence[str]) -> set[str]:
    """Which of ``ids`` the inbox has from ``client_id``."""
    stored: set[str] = set()
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        stored.update(
            await conn.scalars(
                select(_inbox.change_id).where(_inbox.client_id == client_id, _inbox.change_id.in_(chunk))
            )
        )
    return stored


async def _insert(
    conn: AsyncConnection, client_id: int, changes: Sequence[EntityChange], now: float
) -> list[str]:
    """Insert ``changes`` in order, but those whose id the inbox has from the client: the ids inserted."""
    # ASCII JSON: a string of the data may hold what a database cannot store as text (an
    # unpaired surrogate); escaped, it is stored and read back unchanged.
    data = [json.dumps(c.data) for c in changes]
    if conn.dialect.name == "postgresql":
        # Columns as arrays: one statement of constant text, whatever the batch's size, that
        # Postgres prepares once (a VALUES list of the batch's rows costs twice as much).
        result = await conn.execute(
            _PG_INSERT,
            {
                "client_id": client_id,
                "received_at": now,
                "change_ids": [c.id for c in changes],
                "entities": [c.entity for c in changes],
                "entity_ids": [c.entity_id for c in changes],
                "operations": [c.operation for c in changes],
                "data": data,
                "versions": [None if c.schema_version is None else c.schema_version.key for c in changes],
                "timestamps": [c.timestamp for c in changes],
            },
        )
        return list(result.scalars())
    rows = [
        {
            "client_id": client_id,
            "change_id": c.id,
            "entity": c.entity,
            "entity_id": c.entity_id,
            "operation": c.operation,
            "data": text,
            "schema_version": c.schema_version,
            "client_timestamp": c.timestamp,
            "received_at": now,
        }
        for c, text in zip(changes, data, strict=True)
    ]
    stmt = sqlite.insert(t.store_inbox).on_conflict_do_nothing(
        index_elements=[_inbox.client_id, _inbox.change_id]
    )
    return list((await conn.execute(stmt.returning(_inbox.change_id), rows)).scalars())


# The rows in the order of the arrays (ordinality), so ``id`` is the order received.
_PG_INSERT = text(
    f"INSERT INTO {t.store_inbox.name} (client_id, change_id, entity, entity_id, operation, data, "
    "schema_version, client_timestamp, received_at) "
    "SELECT :client_id, c.change_id, c.entity, c.entity_id, c.operation, c.data, c.schema_version, "
    "c.client_timestamp, :received_at "
    "FROM unnest(CAST(:change_ids AS TEXT[]), CAST(:entities AS TEXT[]), CAST(:entity_ids AS TEXT[]), "
    "CAST(:operations AS TEXT[]), CAST(:data AS TEXT[]), CAST(:versions AS TEXT[]), "
    "CAST(:timestamps AS DOUBLE PRECISION[])) WITH ORDINALITY "
    "AS c(change_id, entity, entity_id, operation, data, schema_version, client_timestamp, n) "
    "ORDER BY c.n ON CONFLICT (client_id, change_id) DO NOTHING RETURNING change_id"
)


def _as_received(client_id: int, c: EntityChange, now: float) -> ReceivedChange:
    return ReceivedChange(
        client_id, c.id, c.entity, c.entity_id, c.operation, c.data, c.schema_version, c.timestamp, now
    )


async def _apply_all(
    conn: AsyncConnection, changes: Sequence[ReceivedChange], appliers: Sequence[ChangeApplier]
) -> None:
    """Every applier on every change, in order; each change's work undone if an applier raises."""
    many = getattr(appliers[0], "apply_many", None) if len(appliers) == 1 else None
    if many is not None:
        # The batch in one savepoint: the outcome of the loop below when nothing fails,
        # without a savepoint (two round trips) per change.
        try:
            async with conn.begin_nested():
                await many(changes, conn, conn.dialect.name)
            return
        except Exception:  # any exception: the loop below finds the change and keeps its error
            pass
    for change in changes:
        await _apply(conn, change, appliers)


async def _apply(conn: AsyncConnection, change: ReceivedChange, appliers: Sequence[ChangeApplier]) -> None:
    """Run every applier on ``change`` in one savepoint; on an error, undo them and keep the error."""
    dialect = conn.dialect.name
    current = appliers[0]
    try:
        async with conn.begin_nested():
            for current in appliers:
                await current.apply(change, conn, dialect)
    except Exception as exc:  # any exception: a deployment's applier may raise anything
        error = f"{applier_name(current)}: {type(exc).__name__}: {describe(exc)}"
        # The message may quote what the client sent: make it text every database stores.
        error = error.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
        if len(error) > MAX_APPLY_ERROR:
            error = error[: MAX_APPLY_ERROR - 3] + "..."
        await conn.execute(
            update(t.store_inbox)
            .where(_inbox.client_id == change.client_id, _inbox.change_id == change.change_id)
            .values(apply_error=error)
        )


async def read(conn: AsyncConnection, limit: int | None = None) -> list[ReceivedChange]:
    """The changes received, in the order received; with ``limit``, the latest ``limit`` of them."""
    query = select(t.store_inbox)
    if limit is None:
        rows = (await conn.execute(query.order_by(_inbox.id))).all()
    else:
        rows = list(reversed((await conn.execute(query.order_by(_inbox.id.desc()).limit(limit))).all()))
    return [_received(row) for row in rows]


def _received(row: Row[Any]) -> ReceivedChange:
    return ReceivedChange(
        row.client_id,
        row.change_id,
        row.entity,
        row.entity_id,
        row.operation,
        json.loads(row.data),
        row.schema_version,
        row.client_timestamp,
        row.received_at,
        row.apply_error,
    )
