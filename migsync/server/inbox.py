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

The batch comes as columns (:class:`~migsync.server.change_batch.ChangeBatch`,
no object per change) and is stored with one statement: on Postgres a ``COPY``
in a savepoint, and only if a change of it is there already (a batch sent
again) the statement that skips the ids the inbox has (the duplicates); on
SQLite that statement, as a multi-row INSERT. The client's row, locked first,
keeps two deliveries of the same batch from racing.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from typing import Any

from asyncpg.exceptions import UniqueViolationError
from sqlalchemy import Row, bindparam, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from migsync.core.errors import ConfigError
from migsync.core.version import Version
from migsync.protocol.wire import ChangeRefusal, ChangesAck, EntityChange
from migsync.server import tables as t
from migsync.server.appliers import ChangeApplier, applier_name
from migsync.server.change_batch import ChangeBatch
from migsync.server.engine import describe
from migsync.server.records import ReceivedChange

_inbox = t.store_inbox.c
_clients = t.store_clients.c
_published = t.store_migrations.c

# Built once (SQLAlchemy caches their compiled form; building them per batch cost more than
# running them).
_SEEN = (
    update(t.store_clients)
    .where(_clients.id == bindparam("client_id"))
    .values(last_seen_at=bindparam("now"))
    .returning(_clients.id)
)
_PUBLISHED = select(_published.version).where(_published.version.in_(bindparam("versions", expanding=True)))

#: How many ids one ``IN (...)`` holds (well under SQLite's limit on bound parameters).
_CHUNK = 500
#: The longest apply error kept.
MAX_APPLY_ERROR = 8 * 1024


class NotInOrder(Exception):
    """A batch that follows a change the inbox does not have (yet): nothing of it is stored."""

    def __init__(self, after: str) -> None:
        super().__init__(
            f"the batch before this one (up to change {after!r}) is not stored yet: "
            "send this one again once it is"
        )
        self.after = after


async def receive(
    conn: AsyncConnection,
    client_id: int,
    changes: Sequence[EntityChange] | ChangeBatch,
    appliers: Sequence[ChangeApplier] = (),
    after: str | None = None,
) -> ChangesAck:
    """Store ``changes`` of ``client_id`` and apply them; see the module docstring.

    ``after``: the id of the change this batch follows (the last of the batch before it, which
    the client sent without waiting for its answer). Unless the inbox has that change from the
    client, :class:`NotInOrder` is raised and nothing is stored: the client's batches are stored
    in its order, whichever request arrives first. (What the inbox has of a client is always a
    prefix of what it sent, in order: the last change of a batch stored means the batch is.)
    """
    batch = ChangeBatch.of(changes)
    now = time.time()
    # Marking the client seen locks its row: batches of one client run one after the other
    # (a no-op on SQLite, whose writer is alone), so two deliveries of a batch store it once.
    if await conn.scalar(_SEEN, {"client_id": client_id, "now": now}) is None:
        raise ConfigError(f"no client has id {client_id} (see 'migsync clients list')")
    # Checked with the client's row locked: the batch before, if in flight, has committed or
    # not begun.
    if after is not None and not await _stored(conn, client_id, [after]):
        raise NotInOrder(after)
    end, refused = await _refusal(conn, client_id, batch)
    if not end:
        return ChangesAck((), (), refused)
    batch = batch.head(end)
    inserted = await _insert(conn, client_id, batch, now)
    if inserted is None:  # every change is new: the common case
        taken = list(range(end))
        duplicate: list[str] = []
    else:
        # The database told which ids it did not have.
        taken, duplicate = [], []
        for i, change_id in enumerate(batch.ids):
            if change_id in inserted:
                inserted.discard(change_id)  # the same id twice in one batch: the second is a duplicate
                taken.append(i)
            else:
                duplicate.append(change_id)
    if taken and appliers:
        await _apply_all(conn, [_as_received(client_id, batch, i, now) for i in taken], appliers)
    accepted = batch.ids if len(taken) == end else [batch.ids[i] for i in taken]
    return ChangesAck(tuple(accepted), tuple(duplicate), refused)


async def _refusal(
    conn: AsyncConnection, client_id: int, batch: ChangeBatch
) -> tuple[int, ChangeRefusal | None]:
    """Where the batch stops: before its first new change tagged with a version never published."""
    schema_versions = batch.schema_versions
    versions = sorted({v for v in schema_versions if v is not None})
    published: set[Version] = set()
    for start in range(0, len(versions), _CHUNK):
        published.update(await conn.scalars(_PUBLISHED, {"versions": versions[start : start + _CHUNK]}))
    if published.issuperset(versions):
        return len(batch), None
    unknown = [i for i, v in enumerate(schema_versions) if v is not None and v not in published]
    # A change stored before (or earlier in this batch) is a duplicate, whatever its version.
    ids = batch.ids
    stored = await _stored(conn, client_id, [ids[i] for i in unknown])
    first: dict[str, int] = {}
    for i, change_id in enumerate(ids):
        first.setdefault(change_id, i)
    for i in unknown:
        if ids[i] not in stored and first[ids[i]] == i:
            reason = f"schema version {schema_versions[i]} was never published by this server"
            return i, ChangeRefusal(ids[i], reason)
    return len(batch), None


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


async def _insert(conn: AsyncConnection, client_id: int, batch: ChangeBatch, now: float) -> set[str] | None:
    """Insert the batch in order, but the changes whose id the inbox has from the client.

    The ids inserted; None: all of them (nothing was there before).
    """
    data = _json_texts(batch.data)
    if conn.dialect.name == "postgresql":
        keys: dict[Version, str] = {}  # a batch has few versions: each one's key worked out once
        versions = [
            None if v is None else keys.get(v) or keys.setdefault(v, v.key) for v in batch.schema_versions
        ]
        return await _pg_insert(conn, client_id, batch, data, versions, now)
    rows = [
        {
            "client_id": client_id,
            "change_id": change_id,
            "entity": entity,
            "entity_id": entity_id,
            "operation": operation,
            "data": text,
            "schema_version": version,
            "client_timestamp": timestamp,
            "received_at": now,
        }
        for change_id, entity, entity_id, operation, text, version, timestamp in zip(
            batch.ids,
            batch.entities,
            batch.entity_ids,
            batch.operations,
            data,
            batch.schema_versions,
            batch.timestamps,
            strict=True,
        )
    ]
    # Several rows per INSERT (SQLAlchemy's "insertmanyvalues"), the ids it inserted returned.
    return set((await conn.execute(_SQLITE_INSERT, rows)).scalars())


async def _pg_insert(
    conn: AsyncConnection,
    client_id: int,
    batch: ChangeBatch,
    data: list[str],
    versions: list[str | None],
    now: float,
) -> set[str] | None:
    """Postgres: a ``COPY`` of the batch (in a savepoint: a change the inbox has fails it); if one
    is there already, the statement that skips what the inbox has."""
    records = zip(
        itertools.repeat(client_id),
        batch.ids,
        batch.entities,
        batch.entity_ids,
        batch.operations,
        data,
        versions,
        batch.timestamps,
        itertools.repeat(now),
    )
    # The asyncpg connection under SQLAlchemy's, in the same transaction: COPY is what Postgres
    # takes rows fastest by, and a batch sent twice (a lost answer) is the rare case.
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    try:
        async with conn.begin_nested():
            await driver.copy_records_to_table(t.store_inbox.name, records=records, columns=_COPY_COLUMNS)
        return None
    except UniqueViolationError:
        pass
    # Columns as arrays: one statement of constant text, whatever the batch's size, that
    # Postgres prepares once (a VALUES list of the batch's rows costs twice as much).
    result = await conn.execute(
        _PG_INSERT,
        {
            "client_id": client_id,
            "received_at": now,
            "change_ids": batch.ids,
            "entities": batch.entities,
            "entity_ids": batch.entity_ids,
            "operations": batch.operations,
            "data": data,
            "versions": versions,
            "timestamps": batch.timestamps,
        },
    )
    return set(result.scalars())


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


def _json_texts(values: Sequence[Any]) -> list[str]:
    """Each of ``values`` as :func:`json.dumps` writes it: ASCII JSON, since a string of the data
    may hold what a database cannot store as text (an unpaired surrogate); escaped, it is stored
    and read back unchanged.

    One C encoder for the batch: ``JSONEncoder.encode`` makes one per call, which was half of
    what encoding a change's data cost. (Made per batch, not once: its record of the objects
    being encoded, which finds a circular reference, may keep an entry after an error.)
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator
        return [_ENCODER.encode(value) for value in values]
    encode = make(
        {}, _ENCODER.default, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True
    )
    join = "".join
    return [join(encode(value, 0)) for value in values]


_ENCODER = json.JSONEncoder()
_COPY_COLUMNS = (
    "client_id",
    "change_id",
    "entity",
    "entity_id",
    "operation",
    "data",
    "schema_version",
    "client_timestamp",
    "received_at",
)
_SQLITE_INSERT = (
    sqlite.insert(t.store_inbox)
    .on_conflict_do_nothing(index_elements=[_inbox.client_id, _inbox.change_id])
    .returning(_inbox.change_id)
)


def _as_received(client_id: int, batch: ChangeBatch, i: int, now: float) -> ReceivedChange:
    return ReceivedChange(
        client_id,
        batch.ids[i],
        batch.entities[i],
        batch.entity_ids[i],
        batch.operations[i],
        batch.data[i],
        batch.schema_versions[i],
        batch.timestamps[i],
        now,
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
