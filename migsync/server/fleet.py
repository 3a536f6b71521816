"""The fleet view: every client's status against what is published, a page at a time.

The functions here run inside one of :class:`~migsync.server.store.Store`'s
units of work and take its connection; the store's methods are their public face.

A page is keyset-paginated on the client id: ``id > after ORDER BY id LIMIT n``,
so a page costs the same at the millionth client as at the first, and a walk
with the cursors sees every client that existed when it started exactly once,
however many are registered meanwhile (new ones have higher ids and turn up at
the end). The cursor is opaque to callers (:func:`encode_cursor`).

A client's *state* is one of, first match wins:

- ``failing``: a migration failed on it (not applied, with an error);
- ``drift``: it applied a published version with other content;
- ``pending``: a published version it has not applied with the published content;
- ``ok``: none of these.

Filters and counts are SQL over each client's summary, kept on its row by the
writes that change it (:mod:`migsync.server.fleet_summary`): the page reads only
its own clients' status rows, a filter on the state is a condition on the
clients' rows, and the counts are one aggregate over the clients the filter
leaves (an index-only scan for the whole fleet), never a pass over every status row.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Sequence
from typing import Any

import attrs
from sqlalchemy import ColumnElement, Row, and_, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from migsync.core.errors import ConfigError
from migsync.core.version import Version
from migsync.protocol.wire_schema import FLEET_STATES
from migsync.server import fleet_summary, rollout_store
from migsync.server import tables as t
from migsync.server.records import Drift, Failure, FleetEntry
from migsync.server.status import client

STATES = FLEET_STATES
#: How many clients a page holds unless asked otherwise, and at most.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_CURSOR_PREFIX = "c1:"

_status = t.store_client_status.c
_published = t.store_migrations.c
_clients = t.store_clients.c


@attrs.frozen
class FleetFilter:
    """Which clients a page lists; every field None (or False) leaves that filter out."""

    #: only clients in this state (one of :data:`STATES`)
    state: str | None = None
    #: only clients that applied this version (any content)
    applied: Version | None = None
    #: only clients that lack this published version (not applied with the published content)
    lacking: Version | None = None
    #: only clients a migration failed on (the same as ``state="failing"``)
    failing: bool = False
    #: only clients not seen for this many seconds (never seen counts as not seen)
    stale: float | None = None
    #: only clients whose name holds this text (case-insensitive)
    name: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.state is not None and self.state not in STATES:
            raise ConfigError(f"unknown state {self.state!r}: use one of {', '.join(STATES)}")
        if self.stale is not None and self.stale < 0:
            raise ConfigError(f"stale must be a number of seconds >= 0, not {self.stale}")


@attrs.frozen
class FleetPage:
    """One page of the fleet: its entries, the cursor of the next page, and the counts."""

    entries: tuple[FleetEntry, ...]
    #: pass it back for the next page; None: this was the last
    next_cursor: str | None
    #: how many clients match the filter, state included
    total: int
    #: how many clients match the filter but its state, per state (every state present)
    counts: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "clients": [e.to_json() for e in self.entries],
            "next_cursor": self.next_cursor,
            "total": self.total,
            "counts": dict(self.counts),
        }


def encode_cursor(after: int) -> str:
    """The cursor of the page after client id ``after``."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{after}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The client id a cursor from :func:`encode_cursor` continues after; :class:`ConfigError`
    for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    digits = text.removeprefix(_CURSOR_PREFIX)
    if not text.startswith(_CURSOR_PREFIX) or not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        raise ConfigError(f"cursor {cursor[:40]!r} is not one this server gave out")
    return int(digits)


def done(version: Version) -> ColumnElement[bool]:
    """Whether the client applied ``version`` with the published content: a semi-join, so that
    "lacking" (and the panel's "held") is an anti-join (one hash join over that version's rows,
    not a lookup per client)."""
    return exists(
        select(_status.client_id)
        .select_from(t.store_client_status.join(t.store_migrations, _published.version == _status.version))
        .where(
            _status.client_id == _clients.id,
            _status.version == version,
            _status.applied.is_(True),
            _status.checksum == _published.checksum,
        )
    )


def _in_state(state: str) -> ColumnElement[bool]:
    """Whether a client is in ``state`` (see the module's docstring), from its row's summary."""
    failing, drift = _clients.fleet_failing, _clients.fleet_drift
    if state == "failing":
        return failing.is_(True)
    if state == "drift":
        return and_(failing.is_(False), drift.is_(True))
    published = fleet_summary.published_count()
    # fleet_done is at most the number of published versions: "ok" is equality (an index prefix).
    done = _clients.fleet_done < published if state == "pending" else _clients.fleet_done >= published
    return and_(failing.is_(False), drift.is_(False), done)


def _where(which: FleetFilter, now: float) -> list[ColumnElement[bool]]:
    """The filter's conditions on ``store_clients``, but its state."""
    conditions: list[ColumnElement[bool]] = []
    if which.failing:
        conditions.append(_clients.fleet_failing.is_(True))
    if which.applied is not None:
        conditions.append(
            exists().where(
                _status.client_id == _clients.id,
                _status.version == which.applied,
                _status.applied.is_(True),
            )
        )
    if which.lacking is not None:
        is_published = exists().where(_published.version == which.lacking)
        conditions.append(and_(is_published, ~done(which.lacking)))
    if which.stale is not None:
        cutoff = now - which.stale
        conditions.append(or_(_clients.last_seen_at.is_(None), _clients.last_seen_at < cutoff))
    if which.name:
        conditions.append(_clients.name.icontains(which.name, autoescape=True))
    return conditions


async def page(
    conn: AsyncConnection,
    which: FleetFilter = FleetFilter(),
    *,
    limit: int = DEFAULT_LIMIT,
    cursor: str | None = None,
    counts: bool = True,
    now: float | None = None,
) -> FleetPage:
    """Up to ``limit`` clients matching ``which``, in id order, after ``cursor``; with the counts
    (``counts=False`` leaves them at 0: one aggregate less)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ConfigError(f"limit must be from 1 to {MAX_LIMIT}, not {limit}")
    after = 0 if cursor is None else decode_cursor(cursor)
    when = time.time() if now is None else now
    conditions = _where(which, when)
    state = [] if which.state is None else [_in_state(which.state)]
    ids_query = select(_clients.id).where(_clients.id > after, *conditions, *state).order_by(_clients.id)
    ids = [r.id for r in await conn.execute(ids_query.limit(limit + 1))]
    more = len(ids) > limit
    ids = ids[:limit]
    by_state = dict.fromkeys(STATES, 0)
    if counts:
        by_state |= await _counts(conn, conditions)
    total = by_state[which.state] if which.state is not None else sum(by_state.values())
    return FleetPage(
        tuple(await entries(conn, ids)) if ids else (),
        encode_cursor(ids[-1]) if more else None,
        total,
        by_state,
    )


async def _counts(conn: AsyncConnection, conditions: list[ColumnElement[bool]]) -> dict[str, int]:
    """How many clients meeting ``conditions`` are in each state (a state without any: absent).
    One aggregate over the clients' summaries (an index-only scan of ``store_clients_fleet``
    when there is no other condition), whatever the number of status rows."""
    # Grouped by the index's columns themselves (the groups come in index order, no expression
    # per client), "pending" decided per group: fewer published versions done than published.
    summary = (_clients.fleet_failing, _clients.fleet_drift, _clients.fleet_done)
    published = fleet_summary.published_count().label("published")
    query = select(*summary, func.count(), published).where(*conditions).group_by(*summary)
    by_state: dict[str, int] = {}
    for failing, drift, done, number, of in await conn.execute(query):
        state = "failing" if failing else "drift" if drift else "pending" if done < of else "ok"
        by_state[state] = by_state.get(state, 0) + int(number)
    return by_state


async def entries(conn: AsyncConnection, client_ids: Sequence[int] | None = None) -> list[FleetEntry]:
    """Every client (or those of ``client_ids``), oldest first, with its status against what is
    published now."""
    which = select(t.store_clients).order_by(_clients.id)
    rows_query = select(t.store_client_status).order_by(_status.client_id, _status.version)
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
    needs = await rollout_store.published_requirements(conn)
    rows: dict[int, list[Row[Any]]] = {}
    for r in await conn.execute(rows_query):
        rows.setdefault(r.client_id, []).append(r)
    result = []
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
        result.append(FleetEntry(record, applied, failed, drift, pending, held_by_app=held))
    return result


def state_of(entry: FleetEntry) -> str:
    """An entry's state, computed in Python as :func:`_in_state` does in SQL."""
    if entry.failed:
        return "failing"
    if entry.drift:
        return "drift"
    if entry.pending:
        return "pending"
    return "ok"


__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "STATES",
    "FleetFilter",
    "FleetPage",
    "decode_cursor",
    "done",
    "encode_cursor",
    "entries",
    "page",
    "state_of",
]
