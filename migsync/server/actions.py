"""What an admin asks of clients (re-apply a migration, revert one), and what the clients answer.

The functions here run inside one of :class:`~migsync.server.store.Store`'s
units of work and take its connection; the store's methods are their public face.

A request is made for one client or many (:func:`request`). It is ``pending``
until the client answers; the client hears of it with its next poll, whose
ETag changes because making a request bumps the client's ``status_serial``.
The client answers ``queued`` (the work is in its queue), then ``done`` or
``failed`` with a detail (:func:`record_answers`). A newer request to the same
client replaces one still ``pending`` (it becomes ``superseded``): a client
carries out the admin's latest word, not a backlog of second thoughts.
See :mod:`migsync.client.actions` for what the client does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    Text,
    and_,
    bindparam,
    cast,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from migsync.core.errors import ConfigError
from migsync.core.version import Version
from migsync.protocol.wire import ACTIONS, ActionRequest, ActionResult, ActionsAck
from migsync.server import serials
from migsync.server import tables as t
from migsync.server.prepared import Prepared
from migsync.server.records import ActionRecord, pending_etag

_actions = t.store_actions.c
_clients = t.store_clients.c
_status = t.store_client_status.c

_MAX_BY = 200


async def request(
    conn: AsyncConnection,
    action: str,
    version: Version,
    client_ids: Sequence[int] | None,
    requested_by: str,
) -> list[ActionRecord]:
    """Ask each of ``client_ids`` (None: every client it makes sense for) to ``action`` ``version``.

    For every client, ``reapply`` goes to those that reported the migration not applied (failed,
    dead or reverted) and ``revert`` to those that reported it applied. Raises
    :class:`ConfigError` for an unknown action, client or version, or when no client is left.
    """
    if action not in ACTIONS:
        raise ConfigError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    requested_by = _who(requested_by)
    published = await conn.scalar(
        select(t.store_migrations.c.name).where(t.store_migrations.c.version == version)
    )
    if published is None:
        raise ConfigError(f"version {version} is not published")
    if client_ids is None:
        applied = action == "revert"
        # Every client it makes sense for, chosen by the store itself: no list of ids travels.
        chosen: ColumnElement[bool] = _clients.id.in_(
            select(_status.client_id).where(_status.version == version, _status.applied.is_(applied))
        )
    else:
        wanted = sorted(set(client_ids))
        if not wanted:
            raise ConfigError("no client given")
        known = {r.id for r in await conn.execute(select(_clients.id).where(_clients.id.in_(wanted)))}
        unknown = [c for c in wanted if c not in known]
        if unknown:
            raise ConfigError(f"no client with id {', '.join(map(str, unknown))}")
        chosen = _clients.id.in_(wanted)
    now = time.time()
    # One statement makes every request, however many clients (INSERT .. SELECT).
    made = await conn.execute(
        insert(t.store_actions)
        .from_select(
            ["client_id", "action", "version", "requested_by", "requested_at", "state", "updated_at"],
            select(
                _clients.id,
                literal(action),
                literal(version, t.VersionKey()),
                literal(requested_by),
                literal(now),
                literal("pending"),
                literal(now),
            )
            .where(chosen)
            .order_by(_clients.id),
        )
        .returning(_actions.id, _actions.client_id)
    )
    created = sorted((r.client_id, r.id) for r in made)
    if not created:
        state = "applied" if action == "revert" else "reported as not applied (failed, dead or reverted)"
        raise ConfigError(f"no client has {published} {state}: there is nothing to {action}")
    # This call's requests, told from any other by their ids and their time, for the statements
    # below (a list of thousands of ids would not fit one statement's parameters).
    mine = t.store_actions.alias("mine")
    ours = select(mine.c.client_id).where(
        mine.c.id.between(min(i for _, i in created), max(i for _, i in created)),
        mine.c.requested_at == now,
        mine.c.requested_by == requested_by,
    )
    # A newer request replaces one its client has not picked up yet: every pending request with a
    # newer pending one of the same client is superseded, in one statement.
    newer = t.store_actions.alias("newer")
    latest = (
        select(func.max(newer.c.id))
        .where(newer.c.client_id == _actions.client_id, newer.c.state == "pending")
        .scalar_subquery()
    )
    await conn.execute(
        update(t.store_actions)
        .where(_actions.state == "pending", _actions.client_id.in_(ours), _actions.id < latest)
        .values(
            state="superseded",
            detail=literal("replaced by request ") + cast(latest, Text),
            updated_at=now,
        )
    )
    # The clients' pending answers now hold a request: their ETags must change. Their rows are
    # locked in id order (as seen marks lock them), then stamped as changed.
    ordered = select(_clients.id).where(_clients.id.in_(ours)).order_by(_clients.id)
    await conn.execute(ordered.with_for_update(key_share=True))  # FOR NO KEY UPDATE: as an UPDATE locks
    await serials.count_change(conn)
    await conn.execute(
        update(t.store_clients)
        .where(_clients.id.in_(ours))
        .values(status_serial=_clients.status_serial + 1, change_seq=serials.STAMP)
    )
    await serials.notify(conn)  # their long polls, held by any server process, answer now
    names = {
        r.id: r.name
        for r in await conn.execute(select(_clients.id, _clients.name).where(_clients.id.in_(ours)))
    }
    return [
        ActionRecord(
            action_id, client_id, names[client_id], action, version, requested_by, now, "pending", None, now
        )
        for client_id, action_id in created
    ]


_PENDING = (
    select(
        _actions.client_id,
        _actions.id,
        _actions.action,
        _actions.version,
        _actions.requested_by,
        _actions.requested_at,
    )
    .where(_actions.state == "pending")
    .order_by(_actions.id)
)
_PENDING_OF = Prepared(_PENDING.where(_actions.client_id == bindparam("client_id")))
#: whether the client (``store_clients``' row) has a request it has not answered, as a column of
#: a read of its row: a full poll reads its requests only when it has one
ANY_PENDING = exists().where(_actions.client_id == _clients.id, _actions.state == "pending")


async def pending_for(conn: AsyncConnection, client_id: int | None = None) -> dict[int, list[ActionRequest]]:
    """The requests each client (or only ``client_id``) has not answered, oldest first, by client
    id; a client without any is not in it."""
    rows: Sequence[Any]
    if client_id is None:
        rows = (await conn.execute(_PENDING)).all()
    else:
        rows = await _PENDING_OF.rows(conn, {"client_id": client_id})  # every full poll: prepared
    pending: dict[int, list[ActionRequest]] = {}
    for r in rows:
        request = ActionRequest(r.id, r.action, r.version, r.requested_by, r.requested_at)
        pending.setdefault(r.client_id, []).append(request)
    return pending


async def record_answers(
    conn: AsyncConnection, client_id: int, answers: Sequence[ActionResult], held: str | None = None
) -> tuple[ActionsAck, bool]:
    """Record ``client_id``'s answers; the ack, and whether a pending request was answered (then
    the client's ``status_serial`` was bumped, by one: its pending answer changed). ``held``: the
    ETag the client holds; when it was the client's ETag just before, the ack carries the new one
    (see :func:`migsync.server.status.report`)."""
    ids = [a.id for a in answers]
    current = {
        r.id: (r.state, r.detail)
        for r in await conn.execute(
            select(_actions.id, _actions.state, _actions.detail).where(
                _actions.client_id == client_id, _actions.id.in_(ids)
            )
        )
    }
    now = time.time()
    recorded: list[int] = []
    unknown: list[int] = []
    answered_pending = False
    for answer in answers:
        old = current.get(answer.id)
        if old is None:
            unknown.append(answer.id)
            continue
        recorded.append(answer.id)
        detail = answer.detail  # its length was checked with the body (validation.MAX_ERROR)
        if old == (answer.state, detail):
            continue
        answered_pending |= old[0] == "pending"
        await conn.execute(
            update(t.store_actions)
            .where(and_(_actions.id == answer.id, _actions.client_id == client_id))
            .values(state=answer.state, detail=detail, updated_at=now)
        )
    etag = None
    if answered_pending or held is not None:
        counters = (_clients.status_serial, serials.publish_serial_query())
        query: Any = select(*counters)
        if answered_pending:
            await serials.count_change(conn)
            query = (
                update(t.store_clients)
                .values(status_serial=_clients.status_serial + 1, change_seq=serials.STAMP)
                .returning(*counters)
            )
        row = (await conn.execute(query.where(_clients.id == client_id))).one()
        serial, publish = int(row[0]), int(row[1] or 0)
        before = pending_etag(client_id, publish, serial - 1 if answered_pending else serial)
        if held is not None and held == before:
            etag = pending_etag(client_id, publish, serial)
    return ActionsAck(tuple(recorded), tuple(unknown), etag), answered_pending


async def read(
    conn: AsyncConnection, client_id: int | None = None, limit: int | None = None
) -> list[ActionRecord]:
    """Requests, newest first: every client's, or ``client_id``'s; with ``limit``, the latest ones."""
    query = (
        select(t.store_actions, _clients.name.label("client_name"))
        .join(t.store_clients, _clients.id == _actions.client_id)
        .order_by(_actions.id.desc())
    )
    if client_id is not None:
        query = query.where(_actions.client_id == client_id)
    if limit is not None:
        query = query.limit(limit)
    return [_record(r) for r in await conn.execute(query)]


#: What a client answered once it carried a request out.
CARRIED_OUT = ("queued", "done", "failed")


async def current(
    conn: AsyncConnection, client_id: int | None = None, *, client_ids: Sequence[int] | None = None
) -> list[ActionRecord]:
    """The requests that still say something about their client (every client's, or
    ``client_id``'s, or those of ``client_ids``), newest first: those not settled (pending,
    queued), and those carried out since the client's last carried-out re-apply, that re-apply
    included: what decides whether the client holds. A long history costs nothing."""
    later = t.store_actions.alias("later")
    last_reapply = (
        select(func.max(later.c.id))
        .where(
            later.c.client_id == _actions.client_id,
            later.c.action == "reapply",
            later.c.state.in_(CARRIED_OUT),
        )
        .scalar_subquery()
    )
    query = (
        select(t.store_actions, _clients.name.label("client_name"))
        .join(t.store_clients, _clients.id == _actions.client_id)
        .where(
            or_(
                _actions.state.in_(("pending", "queued")),
                and_(_actions.state.in_(CARRIED_OUT), _actions.id >= func.coalesce(last_reapply, 0)),
            )
        )
        .order_by(_actions.id.desc())
    )
    if client_id is not None:
        query = query.where(_actions.client_id == client_id)
    if client_ids is not None:
        query = query.where(_actions.client_id.in_(client_ids))
    return [_record(r) for r in await conn.execute(query)]


def hold_of(requests: Iterable[ActionRecord]) -> ActionRecord | None:
    """The revert that holds a client, from its requests; None when nothing holds it.

    The server cannot see a client's hold; it follows the requests the client carried out
    (answered ``queued``, ``done`` or ``failed``), in the order they were made, as the client
    does (:mod:`migsync.client.actions`): a revert of V holds V and every later version, and an
    earlier hold from a lower version stays; a re-apply lifts the hold. A *failed* revert
    counts: the client holds before it reverts, so a revert that failed half-way still holds
    what it did revert. Pending and superseded requests were never carried out.
    """
    hold: ActionRecord | None = None
    for record in sorted(requests, key=lambda r: r.id):
        if record.state not in CARRIED_OUT:
            continue
        if record.action == "reapply":
            hold = None
        elif hold is None or record.version < hold.version:
            hold = record
    return hold


def _record(row: Row[Any]) -> ActionRecord:
    return ActionRecord(
        row.id,
        row.client_id,
        row.client_name,
        row.action,
        row.version,
        row.requested_by,
        row.requested_at,
        row.state,
        row.detail,
        row.updated_at,
    )


def _who(name: str) -> str:
    cleaned = " ".join(name.split())
    if not cleaned:
        raise ConfigError("say who asks: a request is recorded with who made it")
    if len(cleaned) > _MAX_BY or not cleaned.isprintable():
        raise ConfigError(f"who asks must be at most {_MAX_BY} printable characters")
    return cleaned
