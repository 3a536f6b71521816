"""The admin panel's list of clients: a page at a time, searched, filtered and sorted in SQL.

The functions here run inside one of :class:`~migsync.server.store.Store`'s units of work and
take its connection; :meth:`Store.client_list <migsync.server.store.Store.client_list>` is their
public face.

A page is keyset-paginated on its sort key and the client id (``(key, id) > (after, after_id)``),
so the hundredth page costs what the first does and a client registered meanwhile is neither
skipped nor shown twice. The cursor (:func:`encode_cursor`) carries the sort it was made for:
one from another sort is refused. The filters:

- ``name``: the name holds this text (case-insensitive);
- ``failing``: a migration failed on the client (not applied, with an error) or it applied a
  published version with other content (drift);
- ``stale``: not seen since the given time (a client never seen: registered before it);
- ``held``: its app version cannot run a published migration it has not applied (``--
  migsync:requires``), so it is not offered it;
- ``app_version``: it last said it runs exactly this app version ("": it never said);
- ``label``: it carries this ``key=value`` label.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any, Literal

import attrs
from sqlalchemy import ColumnElement, and_, case, false, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from migsync.core import requires
from migsync.core.errors import ConfigError
from migsync.core.version import Version
from migsync.server import fleet, rollout_store
from migsync.server import tables as t
from migsync.server.records import ActionRecord, FleetEntry

__all__ = ["SORTS", "ClientFilter", "ClientListing", "ClientPage", "decode_cursor", "encode_cursor", "page"]

Sort = Literal["name", "seen", "unseen"]
#: ``name`` (A to Z, case aside), ``seen`` (the most recently seen first), ``unseen`` (never or the longest
#: ago seen first)
SORTS: tuple[Sort, ...] = ("name", "seen", "unseen")
MAX_LIMIT = 500

_clients = t.store_clients.c
_status = t.store_client_status.c
_published = t.store_migrations.c


@attrs.frozen
class ClientFilter:
    """Which clients a page lists (every field empty: all)."""

    name: str | None = None
    failing: bool = False
    #: only clients not seen since this time (seconds since the epoch)
    stale_before: float | None = None
    held: bool = False
    app_version: str | None = None
    label: tuple[str, str] | None = None


@attrs.frozen
class ClientPage:
    """A page of client ids, in order, the cursor of the next page (None: the last) and how many
    clients match the filter in all."""

    client_ids: tuple[int, ...]
    next_cursor: str | None
    total: int


@attrs.frozen
class ClientListing:
    """What :meth:`Store.client_list <migsync.server.store.Store.client_list>` read: the page, its
    clients' fleet entries (in the page's order), the requests their holds come from, the
    fleet-wide counts (``clients``, ``failing``, ``stale``, ``held``) and the app versions run."""

    page: ClientPage
    entries: list[FleetEntry]
    requests: list[ActionRecord]
    counts: dict[str, int]
    app_versions: list[str | None]


def encode_cursor(sort: Sort, key: str | float, client_id: int) -> str:
    text = json.dumps([sort, key, client_id])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: Sort) -> tuple[str | float, int]:
    """The sort key and client id a page continues after; :class:`ConfigError` for a cursor this
    server did not give out for ``sort``."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        data = None
    if (
        not isinstance(data, list)
        or len(data) != 3
        or data[0] != sort
        or not isinstance(data[2], int)
        or not isinstance(data[1], str if sort == "name" else (int, float))
    ):
        raise ConfigError(f"cursor {cursor[:40]!r} is not one this panel gave out for this sort")
    return data[1], data[2]


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _failing() -> ColumnElement[bool]:
    """A migration failed on the client, or it applied a published version with other content:
    from its row's summary (:mod:`migsync.server.fleet_summary`), not its status rows."""
    return or_(_clients.fleet_failing.is_(True), _clients.fleet_drift.is_(True))


async def _held(conn: AsyncConnection) -> ColumnElement[bool]:
    """Held back by the app version: per app version the clients run (few), the published
    migrations it cannot run; a client is held when it lacks one of its app version's."""
    needs = await rollout_store.published_requirements(conn)
    if not needs:
        return false()
    terms = []
    for (app,) in await conn.execute(select(_clients.app_version).distinct()):
        cannot = [v for v, items in needs.items() if not requires.satisfied(items, app)]
        if cannot:
            same = _clients.app_version.is_(None) if app is None else _clients.app_version == app
            terms.append(and_(same, or_(*(~fleet.done(v) for v in cannot))))
    return or_(*terms) if terms else false()


async def _where(conn: AsyncConnection, which: ClientFilter) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if which.name:
        out.append(func.lower(_clients.name).like(f"%{_like(which.name.lower())}%", escape="\\"))
    if which.failing:
        out.append(_failing())
    if which.stale_before is not None:
        out.append(func.coalesce(_clients.last_seen_at, _clients.created_at) <= which.stale_before)
    if which.app_version is not None:
        out.append(
            _clients.app_version.is_(None)
            if which.app_version == ""
            else _clients.app_version == which.app_version
        )
    if which.label is not None:
        key, value = which.label
        # Labels are stored as json.dumps of a sorted dict; keys and values have no quotes nor
        # backslashes (see rollouts.parse_label), so this is the pair and nothing else.
        out.append(_clients.labels.like(f"%{_like(json.dumps({key: value})[1:-1])}%", escape="\\"))
    if which.held:
        out.append(await _held(conn))
    return out


def _key(sort: Sort) -> Any:
    if sort == "name":
        return func.lower(_clients.name)  # "shop-lyon" before "shop-Paris", on every database
    return func.coalesce(_clients.last_seen_at, -1.0)


async def page(
    conn: AsyncConnection,
    which: ClientFilter,
    *,
    sort: Sort = "name",
    limit: int = 50,
    cursor: str | None = None,
) -> ClientPage:
    """Up to ``limit`` clients matching ``which`` in ``sort`` order, after ``cursor``."""
    if sort not in SORTS:
        raise ConfigError(f"unknown sort {sort!r}: use one of {', '.join(SORTS)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise ConfigError(f"a page holds 1 to {MAX_LIMIT} clients, not {limit}")
    conditions = await _where(conn, which)
    key = _key(sort)
    # The first page counts the matches in the same statement (a window over them all); a later
    # one cannot (its rows start after the cursor), so it counts them apart.
    total: int | None = None
    if cursor is not None:
        total = int(
            await conn.scalar(select(func.count()).select_from(t.store_clients).where(*conditions)) or 0
        )
    query = select(_clients.id, key.label("k"), func.count().over().label("total")).where(*conditions)
    descending = sort == "seen"
    if cursor is not None:
        after, after_id = decode_cursor(cursor, sort)
        if descending:
            query = query.where(tuple_(key, _clients.id) < tuple_(after, after_id))
        else:
            query = query.where(tuple_(key, _clients.id) > tuple_(after, after_id))
    order = (key.desc(), _clients.id.desc()) if descending else (key, _clients.id)
    rows = (await conn.execute(query.order_by(*order).limit(limit + 1))).all()
    if total is None:
        total = int(rows[0].total) if rows else 0
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(sort, rows[-1].k, rows[-1].id) if more else None
    return ClientPage(tuple(row.id for row in rows), next_cursor, total)


async def counts(conn: AsyncConnection, stale_before: float) -> dict[str, int]:
    """Fleet-wide: how many clients there are, failing, stale and held back by their app version,
    in one pass over the clients (each filter's id sets are built once)."""
    terms = {
        "failing": _failing(),
        "stale": and_(*await _where(conn, ClientFilter(stale_before=stale_before))),
        "held": await _held(conn),
    }
    query = select(
        func.count().label("clients"),
        *(func.sum(case((term, 1), else_=0)).label(name) for name, term in terms.items()),
    ).select_from(t.store_clients)
    row = (await conn.execute(query)).one()
    return {name: int(getattr(row, name) or 0) for name in ("clients", *terms)}


async def tallies(
    conn: AsyncConnection, leave_out: Sequence[int]
) -> tuple[dict[Version, dict[str, int]], int]:
    """Per published version, how many clients (but those of ``leave_out``: the few a revert
    holds, whose cells the panel works out itself) stand where on it, as the panel's cells say
    (see :mod:`migsync.server.panel.views`): ``failed``, ``dead``, ``drift``, ``applied``; the
    rest are pending. With the number of clients counted. One aggregate over the status rows."""
    failure = and_(_status.applied.is_(False), _status.error.is_not(None))
    drift = and_(~failure, _status.checksum.is_not(None), _status.checksum != _published.checksum)
    done = and_(~failure, _status.applied.is_(True), _status.checksum == _published.checksum)

    def tally(condition: ColumnElement[bool]) -> Any:
        return func.sum(case((condition, 1), else_=0))

    query = (
        select(
            _status.version,
            tally(and_(failure, _status.dead.is_(False))).label("failed"),
            tally(and_(failure, _status.dead.is_(True))).label("dead"),
            tally(drift).label("drift"),
            tally(done).label("applied"),
        )
        .join(t.store_migrations, _published.version == _status.version)
        .group_by(_status.version)
    )
    counted = select(func.count()).select_from(t.store_clients)
    if leave_out:
        query = query.where(_status.client_id.not_in(leave_out))
        counted = counted.where(_clients.id.not_in(leave_out))
    out = {
        row.version: {k: int(getattr(row, k) or 0) for k in ("failed", "dead", "drift", "applied")}
        for row in await conn.execute(query)
    }
    return out, int(await conn.scalar(counted) or 0)


async def app_versions(conn: AsyncConnection) -> list[str | None]:
    """The app versions clients said they run (None: some never said), for a filter's choices."""
    rows = await conn.execute(select(_clients.app_version).distinct())
    values = [row.app_version for row in rows]
    return sorted((v for v in values if v is not None), key=str) + ([None] if None in values else [])


def check_sort(text: str) -> Sort:
    for sort in SORTS:
        if text == sort:
            return sort
    raise ConfigError(f"unknown sort {text[:20]!r}: use one of {', '.join(SORTS)}")
