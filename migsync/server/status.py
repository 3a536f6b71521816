"""Per-client status: what a client still needs and what it reported (the fleet view is
:mod:`migsync.server.fleet`).

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

import attrs
from sqlalchemy import (
    BigInteger,
    Row,
    Text,
    and_,
    any_,
    bindparam,
    func,
    or_,
    select,
    text,
    true,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from migsync.core.version import Version
from migsync.server import actions as requests
from migsync.server import fleet_summary, rollout_store, serials
from migsync.server import tables as t
from migsync.server.prepared import Prepared
from migsync.server.records import (
    ClientRecord,
    ClientState,
    Drift,
    PendingMigration,
    ReportResult,
    StatusReport,
    pending_etag,
)
from migsync.server.serials import Horizon, publish_serial_query

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


def _state(row: Row[Any]) -> ClientState:
    return ClientState(client(row), int(row.publish_serial or 0), int(row.status_serial))


# The poll and report path's statements, built once: building one costs more CPU than the
# store spends running it, and a statement built once is also compiled once (SQLAlchemy's cache).
_STATE = select(t.store_clients, publish_serial_query().label("publish_serial"))
_STATE_BY_DIGEST = Prepared(_STATE.where(_clients.token_hash == bindparam("digest")))
#: the clients changed beyond a horizon (:class:`~migsync.server.serials.Horizon`), oldest stamp
#: first: on SQLite those stamped at or above its floor (one index range)
_CHANGED = (
    _STATE.where(_clients.change_seq >= bindparam("floor"))
    .order_by(_clients.change_seq)
    .limit(bindparam("limit"))
)
#: Postgres: also those stamped by a transaction in flight at the last read (two index ranges,
#: whatever the fleet's size; the ids as one array, so that the statement's text never changes),
#: with the snapshot they were read in, in one statement (so in one snapshot), which gives one
#: row even when no client changed
_CHANGED_LATERAL = (
    select(t.store_clients)
    .where(
        or_(
            _clients.change_seq >= bindparam("floor"),
            _clients.change_seq == any_(bindparam("in_flight", type_=postgresql.ARRAY(BigInteger))),
        )
    )
    .order_by(_clients.change_seq)
    .limit(bindparam("limit"))
    .lateral("changed")
)
_READ_AT = select(
    serials.SNAPSHOT.label("snapshot"), publish_serial_query().label("publish_serial")
).subquery("read_at")
_CHANGED_PG = select(_READ_AT, _CHANGED_LATERAL).select_from(_READ_AT.outerjoin(_CHANGED_LATERAL, true()))
_GENERATION = select(
    publish_serial_query(), select(func.coalesce(func.max(_clients.change_seq), 0)).scalar_subquery()
)
_SQLITE_COUNTERS = select(publish_serial_query(), serials.COUNTER)
#: The published versions a client has not applied with the published checksum (the version's
#: key as text, unparsed, and the checksum the client applied, if any), in version order: the
#: store does the comparison, and a poll gets the few rows that differ, not every applied one.
_APPLIED_HERE = and_(
    _status.client_id == bindparam("client_id"),
    _status.version == _published.version,
    _status.applied.is_(True),
)
_LACKING = (
    select(type_coerce(_published.version, Text).label("key"), _status.checksum.label("applied_checksum"))
    .select_from(t.store_migrations.outerjoin(t.store_client_status, _APPLIED_HERE))
    .where(_status.checksum.is_distinct_from(_published.checksum))
    .subquery("lacking")
)
#: A full poll's one read: the client's state and whether it has requests it has not answered,
#: on each row of what it lacks (one row with no version when it lacks nothing). One statement
#: reads them all in one snapshot, in one round trip.
_VIEW = Prepared(
    _STATE.add_columns(requests.ANY_PENDING.label("any_request"), _LACKING.c.key, _LACKING.c.applied_checksum)
    .select_from(t.store_clients.outerjoin(_LACKING, true()))
    .where(_clients.id == bindparam("client_id"))
    .order_by(_LACKING.c.key)
)
_PUBLISHED_CHECKSUMS = select(_published.version, _published.checksum).where(
    _published.version.in_(bindparam("versions", expanding=True))
)
#: the same for a batch of one version (the usual report): a list is expanded at execution,
#: which a prepared statement cannot be
_PUBLISHED_CHECKSUM = Prepared(
    select(_published.version, _published.checksum).where(_published.version == bindparam("version"))
)
_LATEST_APPLIED = (
    select(func.max(_status.version))
    .where(_status.client_id == bindparam("client_id"), _status.applied.is_(True))
    .scalar_subquery()
)
_REPORTED = (
    update(t.store_clients)
    .where(_clients.id == bindparam("client_id"))
    .returning(*t.store_clients.c, publish_serial_query().label("publish_serial"))
)
#: a report that changed something: the client's ETag moves (and the change is stamped), and its
#: newest applied version and its fleet summary (:mod:`migsync.server.fleet_summary`),
#: recomputed from its rows
_REPORTED_CHANGE = Prepared(
    _REPORTED.values(
        last_seen_at=bindparam("now"),
        status_serial=_clients.status_serial + 1,
        change_seq=serials.STAMP,
        reported_version=_LATEST_APPLIED,
        **fleet_summary.SUMMARY,
    )
)
#: a report that changed nothing: it marks the client seen
_REPORTED_SAME = Prepared(_REPORTED.values(last_seen_at=bindparam("now")))


async def client_state(conn: AsyncConnection, digest: str) -> ClientState | None:
    """The client whose token hashes to ``digest`` and its ETag's parts, in one indexed read."""
    rows = await _STATE_BY_DIGEST.rows(conn, {"digest": digest})
    return _state(rows[0]) if rows else None


async def generation(conn: AsyncConnection) -> tuple[int, int]:
    """``(publish_serial, the newest change stamp)``: one read that a change of what any client
    is offered moves (when changes come one after another; under concurrent writers on Postgres
    a change may be stamped below the newest: readers of changes use :func:`changes_since`)."""
    publish, newest = (await conn.execute(_GENERATION)).one()
    return int(publish or 0), int(newest)


@attrs.frozen
class Changes:
    """What changed beyond a horizon: see :func:`changes_since`."""

    publish_serial: int
    #: where this read leaves the reader: the next read asks for the changes beyond it
    seen: Horizon
    #: the changed clients' states by the sha256 of their token, oldest stamp first; None: more
    #: than the limit changed
    states: list[tuple[str, ClientState]] | None


async def changes_since(conn: AsyncConnection, seen: Horizon, limit: int) -> Changes:
    """The clients whose ETag moved beyond horizon ``seen`` (at most ``limit``; past it,
    ``states`` is None: the caller drops what it holds rather than read the fleet), in one
    indexed read on Postgres, two small ones on SQLite.

    On Postgres the clients are read in one statement with the snapshot it runs in, whose
    horizon is the next one (:class:`~migsync.server.serials.Horizon`): a change it does not see
    was made by a transaction in progress then, or begun later, and is beyond it. A transaction
    with a lower id that commits after one with a higher id is read then, not skipped."""
    params = {"floor": seen.floor, "limit": limit + 1}
    if conn.dialect.name == "postgresql":
        rows = (await conn.execute(_CHANGED_PG, params | {"in_flight": list(seen.in_flight)})).all()
        horizon = Horizon.of_snapshot(rows[0].snapshot)
        publish = int(rows[0].publish_serial or 0)
        changed = [r for r in rows if r.id is not None]
        if len(changed) > limit:
            return Changes(publish, horizon, None)
        return Changes(publish, horizon, [(r.token_hash, _state(r)) for r in changed])
    # SQLite: the counter first; a change committed after it is read too, or by the next read.
    publish, counter = (await conn.execute(_SQLITE_COUNTERS)).one()
    counter, publish = int(counter or 0), int(publish or 0)
    if counter < seen.floor:
        return Changes(publish, seen, [])
    rows = (await conn.execute(_CHANGED, params)).all()
    if len(rows) > limit:
        return Changes(publish, Horizon(counter + 1), None)
    newest = max([counter, *(int(r.change_seq) for r in rows)])
    return Changes(publish, Horizon(newest + 1), [(r.token_hash, _state(r)) for r in rows])


async def pending_view(
    conn: AsyncConnection, client_id: int
) -> tuple[ClientState, list[tuple[str, str | None]], bool]:
    """The client's state, the published versions it lacks (each version's key, and the checksum
    the client applied of it if it did: drift), in version order, and whether it has requests it
    has not answered: what its pending answer is made of, with the published set
    (:func:`published_set`) and the requests. One read, so the ETag and the list are of one
    moment (the published set is read no older than the ETag's publish serial)."""
    rows = await _VIEW.rows(conn, {"client_id": client_id})
    lacking = [(r.key, r.applied_checksum) for r in rows if r.key is not None]
    return _state(rows[0]), lacking, bool(rows[0].any_request)


async def published_set(conn: AsyncConnection) -> tuple[int, list[PendingMigration]]:
    """The publish serial, then every published migration (as a pending one, applied nowhere), in
    version order. Read in that order: the content is never older than the serial it is filed
    under, so an ETag made with that serial never stands for older content."""
    serial = int((await conn.scalar(select(publish_serial_query()))) or 0)
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
    return serial, [
        PendingMigration(r.version, r.name, r.content, r.checksum, r.signature, r.signed_by) for r in rows
    ]


async def pending(conn: AsyncConnection, client_id: int) -> tuple[ClientState, list[PendingMigration]]:
    """The client's state and pending list. The counters are read first: a publish or a report
    landing in between gives an older ETag with newer content, never the reverse, so the worst
    case is one extra full answer."""
    query = select(t.store_clients, publish_serial_query().label("publish_serial")).where(
        _clients.id == client_id
    )
    row = (await conn.execute(query)).one()
    state = _state(row)
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


async def report(
    conn: AsyncConnection,
    client_id: int,
    reports: Sequence[StatusReport],
    held: str | None = None,
) -> ReportResult:
    """Record ``reports`` for ``client_id``; nothing at all if one names an unpublished version.

    Three statements whatever the batch's size (on Postgres one more, the locks of
    :func:`migsync.server.fleet_summary.lock_client`; on SQLite one more when it changes
    something, the change counter): the published checksums, one upsert that writes only the
    rows that differ, and the client's row, which is stamped as changed
    (:data:`~migsync.server.serials.STAMP`) when something was recorded. ``held``:
    the ETag the client holds; when it was the client's ETag just before this report, the result
    carries the new one (``etag``), which the client may keep: the pending answer it stands for
    is the one the client holds, less what it just reported. It wakes no long poll: its client
    is the only one whose ETag moved, and that client is the one reporting.
    """
    versions = [r.version for r in reports]
    if len(versions) == 1:
        rows = await _PUBLISHED_CHECKSUM.rows(conn, {"version": versions[0]})
    else:
        rows = (await conn.execute(_PUBLISHED_CHECKSUMS, {"versions": versions})).all()
    published = {r.version: r.checksum for r in rows}
    unpublished = tuple(sorted(v for v in versions if v not in published))
    if unpublished:
        return ReportResult(unpublished=unpublished)
    now = time.time()
    if reports:  # the fleet summary below must see every row and checksum committed before
        await fleet_summary.lock_client(conn, client_id)
    written = await _upsert_status(conn, client_id, reports, now) if reports else set()
    recorded = tuple(r.version for r in reports if r.version in written)
    unchanged = tuple(r.version for r in reports if r.version not in written)
    drift = tuple(
        Drift(r.version, published[r.version], r.checksum)
        for r in reports
        if r.checksum != published[r.version]
    )
    if recorded:
        await serials.count_change(conn)
    statement = _REPORTED_CHANGE if recorded else _REPORTED_SAME
    (row,) = await statement.rows(conn, {"client_id": client_id, "now": now})
    state = _state(row)
    before = pending_etag(client_id, state.publish_serial, state.status_serial - (1 if recorded else 0))
    etag = state.etag if held is not None and held == before else None
    return ReportResult(recorded, unchanged, drift, etag=etag, state=state)


async def _upsert_status(
    conn: AsyncConnection, client_id: int, reports: Sequence[StatusReport], now: float
) -> set[Version]:
    """Insert or update the client's status rows in one statement, skipping the rows that hold
    the same word already; the versions it wrote."""
    rows = [
        {
            "client_id": client_id,
            "version": r.version,
            "applied": r.applied,
            "error": r.error,
            "attempts": r.attempts,
            "checksum": r.checksum,
            "dead": r.dead,
            "updated_at": now,
        }
        # In version order: two batches of one client lock its rows in the same order.
        for r in sorted(reports, key=lambda r: r.version)
    ]
    upsert = _upsert(conn.dialect.name)
    if len(rows) == 1:  # the usual batch: one migration applied
        return {r.version for r in await upsert.rows(conn, rows[0])}
    # One statement: SQLAlchemy sends a batch of parameter sets as one multi-row INSERT.
    return {r.version for r in await conn.execute(upsert.statement, rows)}


_UPSERTS: dict[str, Prepared] = {}


def _upsert(dialect: str) -> Prepared:
    """``INSERT .. ON CONFLICT DO UPDATE .. WHERE the row differs RETURNING version`` of status
    rows, for ``dialect`` (built once per dialect: each has its own upsert)."""
    prepared = _UPSERTS.get(dialect)
    if prepared is None:
        from sqlalchemy.dialects import sqlite

        insert_: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = insert_(t.store_client_status)
        fields = ("applied", "error", "attempts", "checksum", "dead")
        new = statement.excluded
        differs = or_(*(t.store_client_status.c[f].is_distinct_from(new[f]) for f in fields))
        statement = statement.on_conflict_do_update(
            index_elements=[_status.client_id, _status.version],
            set_={f: new[f] for f in (*fields, "updated_at")},
            where=differs,
        ).returning(_status.version)
        _UPSERTS[dialect] = prepared = Prepared(statement)
    return prepared


async def touch(conn: AsyncConnection, seen: dict[int, float]) -> None:
    """Set ``last_seen_at`` of each client in ``seen`` (client id -> when), never backwards, in
    one statement. On Postgres the rows are locked in client id order first, as every other
    writer of many client rows does: two processes marking overlapping clients wait for each
    other rather than deadlock."""
    ids = sorted(seen)
    if conn.dialect.name == "postgresql":
        statement = text(
            "WITH seen AS (SELECT * FROM unnest(CAST(:ids AS integer[]), CAST(:whens AS double precision[])) "
            "AS s(id, seen)), "
            "locked AS (SELECT id FROM store_clients WHERE id = ANY(CAST(:ids AS integer[])) "
            "ORDER BY id FOR NO KEY UPDATE) "
            "UPDATE store_clients AS c SET last_seen_at = seen.seen FROM seen, locked "
            "WHERE c.id = locked.id AND c.id = seen.id "
            "AND (c.last_seen_at IS NULL OR c.last_seen_at < seen.seen)"
        )
        await conn.execute(statement, {"ids": ids, "whens": [seen[i] for i in ids]})
        return
    # SQLite: one writer at a time, so no order to keep; one executemany of one statement.
    many = (
        update(t.store_clients)
        .where(_clients.id == bindparam("client_id"))
        .where(or_(_clients.last_seen_at.is_(None), _clients.last_seen_at < bindparam("seen")))
        .values(last_seen_at=bindparam("seen"))
    )
    await conn.execute(many, [{"client_id": i, "seen": seen[i]} for i in ids])
