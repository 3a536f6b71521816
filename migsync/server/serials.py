"""The store's counters that clients' ETags and the server processes' caches depend on.

``store_meta.publish_serial`` is bumped by every publish (and every rollout move) that changes
what clients are offered: half of every client's pending ETag (the other half is the client's
own ``store_clients.status_serial``). Every change of a client's ETag also stamps its row
(``store_clients.change_seq``), so that a server process reads only the clients changed since it
last looked (:func:`migsync.server.status.changes_since`), from a :class:`Horizon`:

- on Postgres the stamp is the writing transaction's id (``pg_current_xact_id()``), and a
  reader's horizon is the snapshot it read in: the transactions that had not committed then
  (ids at or above the snapshot's ``xmax``, or in its in-progress list) are exactly the changes
  it has not seen. No row of the store is shared by the writers of client changes, so reports
  of different clients commit side by side (a counter row, locked from the stamp to the commit,
  serialized every report of every process);
- on SQLite (one process, one writer at a time) the stamp is a counter in ``store_meta``,
  ``change_seq``, bumped by each unit of work that changes clients.

On Postgres a change that can change what other clients are offered, or that a long poll of
another client waits for (a publish, a rollout move, a request to clients, new labels), also
notifies :data:`CHANNEL` (:func:`notify`), which wakes the long polls of every server process. A
report does not: it changes its own client's ETag only, and that client is not waiting (a
transaction that notifies also takes a lock every notifying commit of the cluster waits on).
The other processes read it with their next look at what changed (``--cache-seconds``).

Locks: a unit of work that changes clients takes their rows (in id order when it takes many) and,
when it bumps the publish serial, the ``publish_serial`` row of ``store_meta`` after them; a
report that moves a rollout takes the rollout's row before that. A publish holds the publish
lock (:data:`migsync.server.fleet_summary.PUBLISH_LOCK_KEY`), which every report takes shared
before its client's row, so a publish never waits on a report's rows while holding theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from sqlalchemy import BigInteger, Text, cast, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement

from migsync.server import tables as t

_clients = t.store_clients.c

PUBLISH_SERIAL = "publish_serial"
#: SQLite's change counter in ``store_meta``
CHANGE_SEQ = "change_seq"

#: The Postgres channel the store notifies of the changes long polls wait for (at commit): a
#: server process listens on it, to wake its long polls.
CHANNEL = "migsync_changes"
_NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', '')")
#: one more of a counter in ``store_meta``, in one statement (no read, then a write, that two
#: units of work could both make: a number handed out twice would repeat an ETag)
_BUMP = (
    "INSERT INTO store_meta (key, value) VALUES ('{}', '1') ON CONFLICT (key) DO UPDATE "
    "SET value = CAST(CAST(store_meta.value AS BIGINT) + 1 AS TEXT)"
)
_NEXT_CHANGE = text(_BUMP.format(CHANGE_SEQ))
_NEXT_PUBLISH = text(_BUMP.format(PUBLISH_SERIAL))


class ChangeStamp(ColumnElement[int]):
    """The number a unit of work stamps on the clients it changes, in SQL: on Postgres its
    transaction id; on SQLite the change counter, which :func:`count_change` bumped before."""

    type = BigInteger()
    #: no state: its cache key is its class (a statement holding it is compiled once, not each time)
    _traverse_internals: list[Any] = []
    inherit_cache = True


@compiles(ChangeStamp, "postgresql")
def _stamp_postgres(_element: ChangeStamp, _compiler: Any, **_kw: Any) -> str:
    return "CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT)"


@compiles(ChangeStamp)
def _stamp_counter(_element: ChangeStamp, _compiler: Any, **_kw: Any) -> str:
    return f"(SELECT CAST(value AS BIGINT) FROM store_meta WHERE key = '{CHANGE_SEQ}')"


STAMP = ChangeStamp()


async def count_change(conn: AsyncConnection) -> None:
    """Before a unit of work writes :data:`STAMP` on the clients it changes: on SQLite, count one
    more change (the unit of work holds SQLite's one write lock until it commits, so numbers are
    handed out in commit order); nothing on Postgres, whose stamp needs no shared row."""
    if conn.dialect.name != "postgresql":
        await conn.execute(_NEXT_CHANGE)


async def stamp_change(conn: AsyncConnection, client_ids: Sequence[int]) -> None:
    """Stamp the change just made to ``client_ids`` (whose rows this unit of work wrote, and so
    holds locked): one statement on Postgres, two on SQLite."""
    await count_change(conn)
    await conn.execute(update(t.store_clients).where(_clients.id.in_(client_ids)).values(change_seq=STAMP))


async def notify(conn: AsyncConnection) -> None:
    """Wake the long polls of every server process when this unit of work commits (Postgres;
    nothing on SQLite, whose one process wakes its own)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(_NOTIFY)


@attrs.frozen
class Horizon:
    """Where a reader of client changes stands: the changes it has not read are the clients
    stamped ``floor`` or above, or with one of ``in_flight`` (Postgres: the transactions in
    progress when it read, which may commit later with lower ids than ones it has seen)."""

    floor: int
    in_flight: tuple[int, ...] = ()

    @classmethod
    def of_snapshot(cls, snapshot: str) -> Horizon:
        """The horizon of a Postgres snapshot, ``pg_current_snapshot()`` as text
        (``xmin:xmax:xip,...``): every transaction below ``xmax`` and not in progress had
        ended when it was taken."""
        _xmin, xmax, xip = snapshot.split(":")
        return cls(int(xmax), tuple(int(x) for x in xip.split(",") if x))


#: A Postgres snapshot, as text; in one statement with a read, it is the snapshot of that read.
SNAPSHOT = cast(func.pg_current_snapshot(), Text)
COUNTER = select(t.store_meta.c.value).where(t.store_meta.c.key == CHANGE_SEQ).scalar_subquery()


async def horizon(conn: AsyncConnection) -> Horizon:
    """Now: the changes committed so far need no reading."""
    if conn.dialect.name == "postgresql":
        return Horizon.of_snapshot(str(await conn.scalar(select(SNAPSHOT))))
    return Horizon(int((await conn.scalar(select(COUNTER))) or 0) + 1)


def publish_serial_query() -> Any:
    return select(t.store_meta.c.value).where(t.store_meta.c.key == PUBLISH_SERIAL).scalar_subquery()


async def bump_publish_serial(conn: AsyncConnection) -> None:
    """Count one more publish (or rollout move: every client's ETag moves), and wake the long
    polls (:func:`notify`)."""
    await conn.execute(_NEXT_PUBLISH)
    await notify(conn)
