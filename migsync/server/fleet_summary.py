"""Each client's fleet summary, kept on its ``store_clients`` row, so that the fleet view's
states and counts are an aggregate over the clients alone, not over every status row.

Three columns, each a function of the client's status rows and the published checksums:

- ``fleet_failing``: a migration failed on it (a row not applied, with an error);
- ``fleet_drift``: a row of a published version carries another checksum;
- ``fleet_done``: how many published versions it applied with the published checksum.

"pending" is ``fleet_done`` < the number of published versions, compared when read: a publish
that adds a version makes every client pending without writing a client row.

Whoever changes what they are computed from recomputes them in the same transaction:

- a status report that writes a row (:func:`migsync.server.status.report`, and so
  ``import-reports``, which reports through it): its client's, in the statement that marks the
  client changed, after :func:`lock_client`;
- a publish that adds or replaces versions (:meth:`migsync.server.store.Store.publish`): the
  clients with rows of those versions (:func:`refresh_versions`).

Why the locks (Postgres; SQLite admits one writer at a time): each statement sees what was
committed when it started. A report recomputing its client while another report of the same
client, or a ``publish --force`` of a version it reads, is in flight would miss the other's
rows or checksum. So a report first takes the publish lock (shared: reports do not wait for
each other, a publish waits for them and they for it) and then its client's row; its later
statements start after both, and see what those committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Integer, exists, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from migsync.core.version import Version
from migsync.server import tables as t
from migsync.server.prepared import Prepared

_status = t.store_client_status.c
_published = t.store_migrations.c
_clients = t.store_clients.c

#: The advisory lock a publish (and a schema change) holds alone while it runs: see
#: :meth:`migsync.server.store.Store._write`.
PUBLISH_LOCK_KEY = 0x6D696773796E63  # "migsync"


def _rows_of_published() -> Any:
    return t.store_client_status.join(t.store_migrations, _published.version == _status.version)


#: The summary's columns as correlated subqueries over the client's status rows (``store_clients``
#: is the row being written): the values of an UPDATE of ``store_clients``.
SUMMARY: dict[str, Any] = {
    "fleet_failing": exists().where(
        _status.client_id == _clients.id, _status.applied.is_(False), _status.error.is_not(None)
    ),
    "fleet_drift": exists(
        select(_status.client_id)
        .select_from(_rows_of_published())
        .where(
            _status.client_id == _clients.id,
            _status.checksum.is_not(None),
            _status.checksum != _published.checksum,
        )
    ),
    "fleet_done": select(func.count())
    .select_from(_rows_of_published())
    .where(
        _status.client_id == _clients.id,
        _status.applied.is_(True),
        _status.checksum == _published.checksum,
    )
    .scalar_subquery(),
}

#: The same, as SQL text for the layout upgrade and for stores filled in bulk (``bench/``):
#: every client's summary, in one statement.
REFRESH_ALL_SQL = (
    "UPDATE store_clients SET "
    "fleet_failing = EXISTS (SELECT 1 FROM store_client_status s WHERE s.client_id = store_clients.id "
    "AND NOT s.applied AND s.error IS NOT NULL), "
    "fleet_drift = EXISTS (SELECT 1 FROM store_client_status s JOIN store_migrations m "
    "ON m.version = s.version WHERE s.client_id = store_clients.id AND s.checksum IS NOT NULL "
    "AND s.checksum <> m.checksum), "
    "fleet_done = (SELECT count(*) FROM store_client_status s JOIN store_migrations m "
    "ON m.version = s.version WHERE s.client_id = store_clients.id AND s.applied "
    "AND s.checksum = m.checksum)"
)

_LOCK_CLIENT = Prepared(
    text(
        "WITH gate AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared(:key) AS locked) "
        "SELECT c.id FROM gate, store_clients AS c WHERE c.id = :client_id FOR NO KEY UPDATE OF c"
    ).bindparams(key=PUBLISH_LOCK_KEY)
)


async def lock_client(conn: AsyncConnection, client_id: int) -> None:
    """Before a report writes ``client_id``'s status rows (Postgres): the publish lock, shared,
    then the client's row, in that order (a publish takes them in the same order)."""
    if conn.dialect.name == "postgresql":
        await _LOCK_CLIENT.rows(conn, {"client_id": client_id})


async def refresh_versions(conn: AsyncConnection, versions: Sequence[Version]) -> None:
    """Recompute the summary of every client with a status row of one of ``versions`` (those a
    publish added or replaced). Run inside the publish's transaction, which holds the publish
    lock: no report is in flight, so the set of those clients cannot change meanwhile. On
    Postgres their rows are locked in client id order first, as every writer of many client
    rows does, and recomputed by a later statement, which sees what their last writers committed."""
    if not versions:
        return
    having = select(_status.client_id).where(_status.version.in_(list(versions)))
    if conn.dialect.name == "postgresql":
        lock = (
            select(_clients.id)
            .where(_clients.id.in_(having))
            .order_by(_clients.id)
            .with_for_update(key_share=True)
        )
        await conn.execute(select(func.count()).select_from(lock.subquery()))  # not a row per client
        # One aggregate over those clients' rows (a hash join and a hash aggregate), not three
        # lookups per client: a forced publish over the whole fleet rewrites every client's row.
        await conn.execute(_REFRESH_FROM_AGGREGATE, {"versions": [v.key for v in versions]})
        return
    await conn.execute(update(t.store_clients).where(_clients.id.in_(having)).values(SUMMARY))


_REFRESH_FROM_AGGREGATE = text(
    "UPDATE store_clients AS c SET fleet_failing = a.failing, fleet_drift = a.drift, fleet_done = a.done "
    "FROM (SELECT s.client_id, "
    "bool_or(NOT s.applied AND s.error IS NOT NULL) AS failing, "
    "coalesce(bool_or(s.checksum IS NOT NULL AND s.checksum <> m.checksum), FALSE) AS drift, "
    "count(*) FILTER (WHERE s.applied AND s.checksum = m.checksum) AS done "
    "FROM store_client_status AS s LEFT JOIN store_migrations AS m ON m.version = s.version "
    "WHERE s.client_id IN "
    "(SELECT client_id FROM store_client_status WHERE version = ANY(CAST(:versions AS text[]))) "
    "GROUP BY s.client_id) AS a "
    "WHERE c.id = a.client_id"
)


def published_count() -> Any:
    """The number of published versions, as a scalar subquery."""
    return select(func.count()).select_from(t.store_migrations).scalar_subquery().cast(Integer)


__all__ = [
    "PUBLISH_LOCK_KEY",
    "REFRESH_ALL_SQL",
    "SUMMARY",
    "lock_client",
    "published_count",
    "refresh_versions",
]
