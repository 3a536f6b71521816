"""The store's counters that clients' ETags and the server processes' caches depend on.

``store_meta.publish_serial`` is bumped by every publish (and every rollout move) that changes
what clients are offered: half of every client's pending ETag. ``store_meta.change_seq`` counts
changes to clients' ETags: each changed client row is stamped with the number
(``store_clients.change_seq``), so a server process reads only the clients changed since the
number it saw last (:func:`migsync.server.status.changes_since`). On Postgres each also notifies
:data:`CHANNEL`, which wakes the long polls of every server process.

Lock order: a unit of work that bumps both takes the change counter first
(:func:`bump_publish_serial` does), so two of them never wait on each other in a cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from migsync.server import tables as t

_clients = t.store_clients.c

PUBLISH_SERIAL = "publish_serial"
CHANGE_SEQ = "change_seq"


#: The Postgres channel the store notifies of every change a poll depends on (at commit): a
#: server process listens on it, to wake its long polls.
CHANNEL = "migsync_changes"
_NEXT_CHANGE = text(
    "INSERT INTO store_meta (key, value) VALUES ('change_seq', '1') ON CONFLICT (key) DO UPDATE "
    "SET value = CAST(CAST(store_meta.value AS BIGINT) + 1 AS TEXT) RETURNING value"
)
_NEXT_CHANGE_PG = text(
    "INSERT INTO store_meta (key, value) VALUES ('change_seq', '1') ON CONFLICT (key) DO UPDATE "
    "SET value = CAST(CAST(store_meta.value AS BIGINT) + 1 AS TEXT) "
    f"RETURNING value, pg_notify('{CHANNEL}', '')"
)
_NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', '')")
_COUNT_AND_STAMP = text(  # the counter, the stamp, and the notification
    "WITH counted AS (INSERT INTO store_meta (key, value) VALUES ('change_seq', '1') "
    "ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(store_meta.value AS BIGINT) + 1 AS TEXT) "
    f"RETURNING CAST(value AS BIGINT) AS seq, pg_notify('{CHANNEL}', '')) "
    "UPDATE store_clients SET change_seq = counted.seq FROM counted WHERE store_clients.id = ANY(:ids) "
    "RETURNING counted.seq"
)
_STAMP = (
    update(t.store_clients)
    .where(_clients.id.in_(bindparam("ids", expanding=True)))
    .values(change_seq=bindparam("seq"))
)


async def next_change(conn: AsyncConnection) -> int:
    """Count one more client change and return its number: the caller stamps it on the clients
    it changed (``store_clients.change_seq``).

    Call it last in the unit of work, after the client rows are written: on Postgres the
    counter's row stays locked until commit, so numbers are handed out in commit order, and a
    reader that sees change ``n`` committed sees every change before it too. That is what makes
    "the clients with ``change_seq`` above the last one seen" a complete list of what changed
    (a sequence would hand out numbers in start order instead, and a slow transaction's lower
    number would be committed after a reader had moved past it). Holding nothing else to wait
    for, a transaction at this point cannot be part of a deadlock.
    """
    statement = _NEXT_CHANGE_PG if conn.dialect.name == "postgresql" else _NEXT_CHANGE
    return int((await conn.execute(statement)).scalars().one())


async def stamp_change(conn: AsyncConnection, client_ids: Sequence[int]) -> int:
    """Number the change just made to ``client_ids`` (whose rows this unit of work wrote, and so
    holds locked); the number. One statement on Postgres, two on SQLite."""
    if conn.dialect.name == "postgresql":
        seqs = (await conn.execute(_COUNT_AND_STAMP, {"ids": list(client_ids)})).scalars().all()
        return int(seqs[0])  # one number for all: the rows are the caller's, locked
    seq = await next_change(conn)
    await conn.execute(_STAMP, {"ids": list(client_ids), "seq": seq})
    return seq


def publish_serial_query() -> Any:
    return select(t.store_meta.c.value).where(t.store_meta.c.key == PUBLISH_SERIAL).scalar_subquery()


async def bump_publish_serial(conn: AsyncConnection) -> None:
    """Count one more publish (or rollout move: every client's ETag moves). The change counter
    is taken first, whose row stays locked until commit: a report takes it before it may move a
    rollout, so both orders are the same and no two units of work deadlock on the two rows. It
    also notifies the long polls on Postgres."""
    await next_change(conn)
    where = t.store_meta.c.key == PUBLISH_SERIAL
    current = await conn.scalar(select(t.store_meta.c.value).where(where))
    if current is None:
        await conn.execute(insert(t.store_meta).values(key=PUBLISH_SERIAL, value="1"))
    else:
        await conn.execute(update(t.store_meta).where(where).values(value=str(int(current) + 1)))
