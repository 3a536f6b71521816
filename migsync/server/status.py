"""Per-client status: what a client still needs, what it reported, and the fleet view.

The functions here run inside one of :class:`~migsync.server.store.Store`'s
units of work and take its connection; the store's methods are their public face.

A client's *pending* list is every published version it has not applied with
the published content: never applied, failed, or applied with another
checksum (drift, e.g. after ``publish --force``). Its ETag is made of two
counters, ``store_meta.publish_serial`` (bumped by a publish that changes
anything) and ``store_clients.status_serial`` (bumped by a report of that
client that changes anything), so a poll can tell that nothing changed from
one indexed row, without reading a migration.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, bindparam, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from migsync.core import requires
from migsync.core.version import Version
from migsync.server import rollout_store
from migsync.server import tables as t
from migsync.server.records import (
    ClientRecord,
    ClientState,
    Drift,
    Failure,
    FleetEntry,
    PendingMigration,
    ReportResult,
    StatusReport,
)

PUBLISH_SERIAL = "publish_serial"

_status = t.store_client_status.c
_published = t.store_migrations.c
_clients = t.store_clients.c


def client(row: Row[Any]) -> ClientRecord:
    return ClientRecord(
        row.id,
        row.name,
        row.created_at,
        row.last_seen_at,
        row.reported_version,
        labels=json.loads(row.labels) if row.labels else {},
        app_version=row.app_version,
    )


def _publish_serial_query() -> Any:
    return select(t.store_meta.c.value).where(t.store_meta.c.key == PUBLISH_SERIAL).scalar_subquery()


async def bump_publish_serial(conn: AsyncConnection) -> None:
    """Count one more publish; the caller holds the publish lock."""
    where = t.store_meta.c.key == PUBLISH_SERIAL
    current = await conn.scalar(select(t.store_meta.c.value).where(where))
    if current is None:
        await conn.execute(insert(t.store_meta).values(key=PUBLISH_SERIAL, value="1"))
    else:
        await conn.execute(update(t.store_meta).where(where).values(value=str(int(current) + 1)))


async def client_state(conn: AsyncConnection, digest: str) -> ClientState | None:
    """The client whose token hashes to ``digest`` and its ETag's parts, in one indexed read."""
    query = select(t.store_clients, _publish_serial_query().label("publish_serial")).where(
        _clients.token_hash == digest
    )
    row = (await conn.execute(query)).first()
    if row is None:
        return None
    return ClientState(client(row), int(row.publish_serial or 0), int(row.status_serial))


async def generation(conn: AsyncConnection) -> tuple[int, int, int]:
    """``(publish_serial, sum of status_serial, number of clients)``: it changes whenever any
    client's ETag can. Every serial only grows, so their sum changes with any one of them."""
    query = select(
        _publish_serial_query(), func.coalesce(func.sum(_clients.status_serial), 0), func.count(_clients.id)
    )
    row = (await conn.execute(query)).one()
    return int(row[0] or 0), int(row[1]), int(row[2])


async def client_states(conn: AsyncConnection) -> dict[str, ClientState]:
    """Every client's state, by token hash, in one read."""
    query = select(t.store_clients, _publish_serial_query().label("publish_serial"))
    return {
        row.token_hash: ClientState(client(row), int(row.publish_serial or 0), int(row.status_serial))
        for row in await conn.execute(query)
    }


async def pending(conn: AsyncConnection, client_id: int) -> tuple[ClientState, list[PendingMigration]]:
    """The client's state and pending list. The counters are read first: a publish or a report
    landing in between gives an older ETag with newer content, never the reverse, so the worst
    case is one extra full answer."""
    query = select(t.store_clients, _publish_serial_query().label("publish_serial")).where(
        _clients.id == client_id
    )
    row = (await conn.execute(query)).one()
    state = ClientState(client(row), int(row.publish_serial or 0), int(row.status_serial))
    applied = {
        r.version: r.checksum
        for r in await conn.execute(
            select(_status.version, _status.checksum).where(
                _status.client_id == client_id, _status.applied.is_(True)
            )
        )
    }
    rows = await conn.execute(
        select(
            _published.version,
            _published.name,
            _published.content,
            _published.checksum,
            _published.signature,
            _published.signed_by,
        ).order_by(_published.version)
    )
    items = [
        PendingMigration(
            r.version, r.name, r.content, r.checksum, r.signature, r.signed_by, applied.get(r.version)
        )
        for r in rows
        if applied.get(r.version) != r.checksum
    ]
    # Rollouts and app-version requirements decide what of it the client is offered yet.
    return state, await rollout_store.offered(conn, state.client, items)


async def report(conn: AsyncConnection, client_id: int, reports: Sequence[StatusReport]) -> ReportResult:
    """Record ``reports`` for ``client_id``; nothing at all if one names an unpublished version."""
    # Reports of one client run one after the other (a no-op on SQLite, whose writer is alone).
    await conn.execute(select(_clients.id).where(_clients.id == client_id).with_for_update())
    versions = [r.version for r in reports]
    published = {
        r.version: r.checksum
        for r in await conn.execute(
            select(_published.version, _published.checksum).where(_published.version.in_(versions))
        )
    }
    unpublished = tuple(sorted(v for v in versions if v not in published))
    if unpublished:
        return ReportResult(unpublished=unpublished)
    existing = {
        r.version: (bool(r.applied), r.error, r.attempts, r.checksum, bool(r.dead))
        for r in await conn.execute(
            select(
                _status.version,
                _status.applied,
                _status.error,
                _status.attempts,
                _status.checksum,
                _status.dead,
            ).where(_status.client_id == client_id, _status.version.in_(versions))
        )
    }
    now = time.time()
    recorded: list[Version] = []
    unchanged: list[Version] = []
    for item in reports:
        values = (item.applied, item.error, item.attempts, item.checksum, item.dead)
        old = existing.get(item.version)
        if old == values:
            unchanged.append(item.version)
            continue
        columns = {
            "applied": item.applied,
            "error": item.error,
            "attempts": item.attempts,
            "checksum": item.checksum,
            "dead": item.dead,
            "updated_at": now,
        }
        if old is None:
            await conn.execute(
                insert(t.store_client_status).values(client_id=client_id, version=item.version, **columns)
            )
        else:
            await conn.execute(
                update(t.store_client_status)
                .where(_status.client_id == client_id, _status.version == item.version)
                .values(**columns)
            )
        recorded.append(item.version)
    drift = tuple(
        Drift(r.version, published[r.version], r.checksum)
        for r in reports
        if r.checksum != published[r.version]
    )
    changes: dict[str, Any] = {"last_seen_at": now}
    if recorded:
        latest = await conn.scalar(
            select(func.max(_status.version)).where(_status.client_id == client_id, _status.applied.is_(True))
        )
        changes |= {"status_serial": _clients.status_serial + 1, "reported_version": latest}
    await conn.execute(update(t.store_clients).where(_clients.id == client_id).values(**changes))
    return ReportResult(tuple(recorded), tuple(unchanged), drift)


async def touch(conn: AsyncConnection, seen: dict[int, float]) -> None:
    """Set ``last_seen_at`` of each client in ``seen`` (client id -> when), never backwards."""
    statement = (
        update(t.store_clients)
        .where(_clients.id == bindparam("client_id"))
        .where(or_(_clients.last_seen_at.is_(None), _clients.last_seen_at < bindparam("seen")))
        .values(last_seen_at=bindparam("seen"))
    )
    await conn.execute(statement, [{"client_id": k, "seen": v} for k, v in seen.items()])


async def fleet(
    conn: AsyncConnection, client_id: int | None = None, *, client_ids: Sequence[int] | None = None
) -> list[FleetEntry]:
    """Every client (or only ``client_id``, or those of ``client_ids``), oldest first, with its
    status against what is published now."""
    which = select(t.store_clients).order_by(_clients.id)
    rows_query = select(t.store_client_status).order_by(_status.client_id, _status.version)
    if client_id is not None:
        which = which.where(_clients.id == client_id)
        rows_query = rows_query.where(_status.client_id == client_id)
    if client_ids is not None:
        which = which.where(_clients.id.in_(client_ids))
        rows_query = rows_query.where(_status.client_id.in_(client_ids))
    clients = [client(r) for r in await conn.execute(which)]
    published = {
        r.version: r.checksum
        for r in await conn.execute(
            select(_published.version, _published.checksum).order_by(_published.version)
        )
    }
    # The requirements of the published migrations that state app-version ones (few), for who is held.
    needs = {
        r.version: rollout_store.requirements(
            PendingMigration(r.version, r.name, r.content, r.checksum, r.signature, r.signed_by)
        )
        for r in await conn.execute(
            select(t.store_migrations).where(_published.content.like(f"%{requires.DIRECTIVE}%"))
        )
    }
    rows: dict[int, list[Row[Any]]] = {}
    for r in await conn.execute(rows_query):
        rows.setdefault(r.client_id, []).append(r)
    entries = []
    for record in clients:
        mine = rows.get(record.client_id, [])
        applied = tuple(r.version for r in mine if r.applied)
        failed = tuple(
            Failure(r.version, r.error, r.attempts, bool(r.dead)) for r in mine if not r.applied and r.error
        )
        drift = tuple(
            Drift(r.version, published[r.version], r.checksum)
            for r in mine
            if r.version in published and r.checksum is not None and r.checksum != published[r.version]
        )
        done = {r.version for r in mine if r.applied and r.checksum == published.get(r.version)}
        pending = tuple(v for v in published if v not in done)
        held = tuple(rollout_store.held_by_app(record, [(v, needs[v]) for v in pending if v in needs]))
        entries.append(FleetEntry(record, applied, failed, drift, pending, held_by_app=held))
    return entries
