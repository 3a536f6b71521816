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
accepted all the same: the server has it, and an operator can look.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from migsync.core.errors import ConfigError
from migsync.core.wire import ChangeRefusal, ChangesAck, EntityChange
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
    # Batches of one client run one after the other (a no-op on SQLite, whose writer is alone),
    # so that two deliveries of the same batch store it once and in order.
    locked = await conn.scalar(select(_clients.id).where(_clients.id == client_id).with_for_update())
    if locked is None:
        raise ConfigError(f"no client has id {client_id} (see 'migsync clients list')")
    ids = [c.id for c in changes]
    stored: set[str] = set()
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        stored.update(
            await conn.scalars(
                select(_inbox.change_id).where(_inbox.client_id == client_id, _inbox.change_id.in_(chunk))
            )
        )
    versions = sorted({c.schema_version for c in changes if c.schema_version is not None})
    published: set[int] = set()
    for start in range(0, len(versions), _CHUNK):
        published.update(
            await conn.scalars(
                select(_published.version).where(_published.version.in_(versions[start : start + _CHUNK]))
            )
        )
    duplicate: list[str] = []
    taken: list[EntityChange] = []
    refused: ChangeRefusal | None = None
    for change in changes:
        if change.id in stored:
            duplicate.append(change.id)
            continue
        if change.schema_version is not None and change.schema_version not in published:
            refused = ChangeRefusal(
                change.id, f"schema version {change.schema_version} was never published by this server"
            )
            break
        stored.add(change.id)  # the same id twice in one batch: the second is a duplicate
        taken.append(change)
    now = time.time()
    received = [
        ReceivedChange(
            client_id,
            c.id,
            c.entity,
            c.entity_id,
            c.operation,
            c.data,
            c.schema_version,
            c.timestamp,
            now,
        )
        for c in taken
    ]
    if received:
        await conn.execute(insert(t.store_inbox), [_row(r) for r in received])
        for item in received if appliers else ():
            await _apply(conn, item, appliers)
    await conn.execute(update(t.store_clients).where(_clients.id == client_id).values(last_seen_at=now))
    return ChangesAck(tuple(c.id for c in taken), tuple(duplicate), refused)


def _row(change: ReceivedChange) -> dict[str, Any]:
    return {
        "client_id": change.client_id,
        "change_id": change.change_id,
        "entity": change.entity,
        "entity_id": change.entity_id,
        "operation": change.operation,
        # ASCII: a string of the data may hold what a database cannot store as text (an
        # unpaired surrogate); escaped, it is stored and read back unchanged.
        "data": json.dumps(change.data),
        "schema_version": change.schema_version,
        "client_timestamp": change.client_timestamp,
        "received_at": change.received_at,
    }


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
