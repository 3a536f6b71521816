"""Rollouts in the store: starting one, reading where it is, moving it, and what it lets a
client be offered. The decisions are :mod:`migsync.server.rollouts`'s; this module reads their
inputs and writes their outcomes.

The functions here run inside one of :class:`~migsync.server.store.Store`'s units of work and
take its connection; the store's methods are their public face.

Every change of a rollout's state (a stage started, paused, resumed, aborted, completed)
bumps the store's publish serial, the half of every client's ETag that a publish moves: each
client's next poll fetches its pending list again and sees what it is offered now. Nothing runs
in the background: a rollout is evaluated when a client reports on one of its versions and when
anyone reads it (``migsync rollout status``, ``GET /api/rollouts/{id}``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from sqlalchemy import Float, bindparam, cast, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from migsync.core import requires
from migsync.core.clock import iso
from migsync.core.errors import ConfigError
from migsync.core.version import Version
from migsync.protocol.wire import StatusReport
from migsync.server import actions as requests
from migsync.server import rollouts as r
from migsync.server import serials
from migsync.server import tables as t
from migsync.server.prepared import Prepared
from migsync.server.records import ClientRecord, PendingMigration

_rollouts = t.store_rollouts.c
_audit = t.store_rollout_audit.c
_events = t.store_status_events.c
_clients = t.store_clients.c
_status = t.store_client_status.c
_published = t.store_migrations.c

#: who the audit names for what a rollout did by itself
SELF = "migsync"
RETENTION_KEY = "event_retention"
#: A report of success has a rollout evaluated at most once per this many seconds: counting a
#: stage reads every client, and a stage of thousands reports within minutes. A failure is
#: evaluated at once (it may pause the rollout); a read (``rollout status``) always is.
EVALUATE_EVERY = 2.0
_MAX_WHO = 200


@attrs.frozen
class Rollout:
    """A rollout as stored (see :mod:`migsync.server.rollouts`)."""

    id: int
    versions: tuple[Version, ...]
    stages: tuple[r.Stage, ...]
    policy: r.Policy
    state: r.State
    created_by: str
    created_at: float
    updated_at: float
    evaluated_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "versions": [v.text for v in self.versions],
            "stages": [s.name for s in self.stages],
            "state": self.state.state,
            "stage": self.state.stage + 1,
            "stage_name": self.stages[self.state.stage].name,
            "stage_started_at": iso(self.state.stage_started_at),
            "reason": self.state.reason,
            "success_threshold": self.policy.success_threshold,
            "error_threshold": self.policy.error_threshold,
            "soak_seconds": self.policy.soak,
            "on_failure": self.policy.on_failure,
            "created_by": self.created_by,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


@attrs.frozen
class AuditEntry:
    at: float
    who: str
    what: str

    def to_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "who": self.who, "what": self.what}


@attrs.frozen
class RolloutStatus:
    """A rollout, its stages' counts now, over time (``history``: per time, per stage), and its audit."""

    rollout: Rollout
    counts: tuple[r.Counts, ...]
    history: tuple[tuple[float, tuple[r.Counts, ...]], ...]
    audit: tuple[AuditEntry, ...]

    def to_json(self) -> dict[str, Any]:
        stages = []
        for index, (stage, counts) in enumerate(zip(self.rollout.stages, self.counts, strict=True)):
            stages.append(
                {
                    "name": stage.name,
                    "started": index <= self.rollout.state.stage,
                    **counts.to_json(),
                }
            )
        return {
            **self.rollout.to_json(),
            "stage_counts": stages,
            "history": [
                {"at": iso(at), "stages": [c.to_json() for c in counts]} for at, counts in self.history
            ],
            "audit": [a.to_json() for a in self.audit],
        }


def _row(row: Any) -> Rollout:
    return Rollout(
        row.id,
        tuple(Version.parse(v) for v in json.loads(row.versions)),
        tuple(r.Stage.from_json(s) for s in json.loads(row.stages)),
        r.Policy(row.success_threshold, row.error_threshold, row.soak, row.on_failure),
        r.State(row.state, row.stage, row.stage_started_at, row.reason, tuple(json.loads(row.accepted))),
        row.created_by,
        row.created_at,
        row.updated_at,
        row.evaluated_at,
    )


def who(text: str) -> str:
    cleaned = text.strip()
    if not cleaned or len(cleaned) > _MAX_WHO or not cleaned.isprintable():
        raise ConfigError(f"who {text[:40]!r}: give a name of 1 to {_MAX_WHO} printable characters")
    return cleaned


async def bump(conn: AsyncConnection) -> None:
    """One more publish serial: every client's ETag moves (see :mod:`migsync.server.serials`)."""
    await serials.bump_publish_serial(conn)


async def _audit_add(conn: AsyncConnection, rollout_id: int, at: float, by: str, what: Iterable[str]) -> None:
    rows = [{"rollout_id": rollout_id, "at": at, "who": by, "what": w} for w in what]
    if rows:
        await conn.execute(insert(t.store_rollout_audit), rows)


# -- starting and reading --------------------------------------------------------------------------


async def start(
    conn: AsyncConnection,
    versions: Sequence[Version],
    stages: Sequence[r.Stage],
    policy: r.Policy,
    by: str,
    now: float,
) -> Rollout:
    """Start a rollout of ``versions`` (published) in ``stages``. An open rollout of any of them
    is aborted (superseded): one version is in one open rollout at most."""
    by = who(by)
    if not versions:
        raise ConfigError("a rollout takes at least one version")
    if not stages:
        raise ConfigError("a rollout has at least one stage")
    wanted = sorted(set(versions))
    published = {
        row.version
        for row in await conn.execute(select(_published.version).where(_published.version.in_(wanted)))
    }
    missing = [v for v in wanted if v not in published]
    if missing:
        raise ConfigError(f"version {', '.join(map(str, missing))} is not published: publish it first")
    texts = {v.text for v in wanted}
    for old in await _all(conn, open_only=True):
        if texts & {v.text for v in old.versions}:
            await conn.execute(
                update(t.store_rollouts)
                .where(_rollouts.id == old.id)
                .values(state=r.ABORTED, reason="superseded by a newer rollout", updated_at=now)
            )
            await _audit_add(conn, old.id, now, by, ["aborted: superseded by a newer rollout"])
    state = r.start(now)
    result = await conn.execute(
        insert(t.store_rollouts).values(
            versions=json.dumps([v.text for v in wanted]),
            stages=json.dumps([s.to_json() for s in stages]),
            success_threshold=policy.success_threshold,
            error_threshold=policy.error_threshold,
            soak=policy.soak,
            on_failure=policy.on_failure,
            state=state.state,
            stage=state.stage,
            stage_started_at=state.stage_started_at,
            reason=None,
            accepted="[]",
            created_by=by,
            created_at=now,
            updated_at=now,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    rollout_id = int(key[0])
    await _audit_add(
        conn,
        rollout_id,
        now,
        by,
        [f"started: {', '.join(v.text for v in wanted)} in stages {', '.join(s.name for s in stages)}"],
    )
    await bump(conn)
    await evaluate(conn, now, rollout_ids=[rollout_id])
    return await read(conn, rollout_id)


#: Every rollout, oldest first (every full poll reads them: prepared). The open ones are
#: filtered by equalities: an ``IN`` of a list is expanded at execution, which a prepared
#: statement cannot be.
_ALL = Prepared(select(t.store_rollouts).order_by(_rollouts.id))
_OPEN = Prepared(
    select(t.store_rollouts)
    .where(or_(*(_rollouts.state == state for state in r.OPEN)))
    .order_by(_rollouts.id)
)


async def _all(conn: AsyncConnection, *, open_only: bool = False) -> list[Rollout]:
    return [_row(row) for row in await (_OPEN if open_only else _ALL).rows(conn)]


async def read(conn: AsyncConnection, rollout_id: int) -> Rollout:
    row = (await conn.execute(select(t.store_rollouts).where(_rollouts.id == rollout_id))).first()
    if row is None:
        raise ConfigError(f"no rollout {rollout_id}")
    return _row(row)


async def read_all(conn: AsyncConnection) -> list[Rollout]:
    """Every rollout, newest first."""
    return list(reversed(await _all(conn)))


async def _members(conn: AsyncConnection, rollout: Rollout) -> dict[int, int | None]:
    """client id -> its stage index in ``rollout`` (None: in no stage), for every client."""
    rows = await conn.execute(select(_clients.id, _clients.labels))
    return {
        row.id: r.stage_of(rollout.stages, row.id, json.loads(row.labels) if row.labels else {})
        for row in rows
    }


async def _outcomes(conn: AsyncConnection, rollout: Rollout) -> dict[int, r.ClientOutcome]:
    """client id -> its outcome for the rollout's versions, from the status the clients reported."""
    published = {
        row.version: row.checksum
        for row in await conn.execute(
            select(_published.version, _published.checksum).where(_published.version.in_(rollout.versions))
        )
    }
    states: dict[int, dict[Version, str]] = {}
    rows = await conn.execute(
        select(_status.client_id, _status.version, _status.applied, _status.error, _status.checksum).where(
            _status.version.in_(rollout.versions)
        )
    )
    for row in rows:
        if row.checksum != published.get(row.version):
            state = "pending"  # it reported on other content (replaced since): not on this rollout's
        elif row.applied:
            state = "applied"
        elif row.error:
            state = "failed"
        else:
            state = "pending"
        states.setdefault(row.client_id, {})[row.version] = state
    return {
        client_id: r.client_state(mine.get(v, "pending") for v in rollout.versions)
        for client_id, mine in states.items()
    }


async def counts(
    conn: AsyncConnection, rollout: Rollout, members: dict[int, int | None] | None = None
) -> list[r.Counts]:
    """Each stage's counts now (``members``: :func:`_members`'s, if the caller read them)."""
    if members is None:
        members = await _members(conn, rollout)
    outcomes = await _outcomes(conn, rollout)
    return r.count(((stage, outcomes.get(c, "pending")) for c, stage in members.items()), len(rollout.stages))


# -- moving ----------------------------------------------------------------------------------------


async def _save(conn: AsyncConnection, rollout: Rollout, step: r.Step, by: str, now: float) -> Rollout | None:
    """Write ``step`` if the rollout is still where it was read (another writer may have moved it:
    then nothing is written and None returned)."""
    new, old = step.state, rollout.state
    done = await conn.execute(
        update(t.store_rollouts)
        .where(
            _rollouts.id == rollout.id,
            _rollouts.state == old.state,
            _rollouts.stage == old.stage,
            _rollouts.stage_started_at == old.stage_started_at,
        )
        .values(
            state=new.state,
            stage=new.stage,
            stage_started_at=new.stage_started_at,
            reason=new.reason,
            accepted=json.dumps(list(new.accepted)),
            updated_at=now,
        )
    )
    if done.rowcount == 0:
        return None
    await _audit_add(conn, rollout.id, now, by, step.events)
    if step.revert:
        await _revert(conn, rollout, new, now)
    await bump(conn)
    return attrs.evolve(rollout, state=new, updated_at=now)


async def _revert(conn: AsyncConnection, rollout: Rollout, state: r.State, now: float) -> None:
    """Ask the clients of the started stages that applied the rollout's oldest version to revert
    it (a client reverts it and everything applied after it)."""
    oldest = rollout.versions[0]
    members = await _members(conn, rollout)
    applied = {
        row.client_id
        for row in await conn.execute(
            select(_status.client_id).where(_status.version == oldest, _status.applied.is_(True))
        )
    }
    targets = sorted(
        c for c, stage in members.items() if c in applied and stage is not None and stage <= state.stage
    )
    if targets:
        await requests.request(conn, "revert", oldest, targets, f"rollout {rollout.id}")
        await _audit_add(
            conn, rollout.id, now, SELF, [f"asked {len(targets)} client(s) to revert {oldest.text}"]
        )


async def evaluate(
    conn: AsyncConnection,
    now: float,
    *,
    rollout_ids: Sequence[int] | None = None,
    versions: Iterable[Version] | None = None,
    throttled: bool = False,
) -> list[Rollout]:
    """Move every running rollout (or those of ``rollout_ids``, or taking one of ``versions``) as
    its counts now say; the ones that moved. ``throttled``: skip a rollout evaluated so less than
    :data:`EVALUATE_EVERY` seconds ago (and mark the others evaluated now)."""
    wanted = None if versions is None else {v.text for v in versions}
    moved = []
    for rollout in await _all(conn, open_only=True):
        if rollout_ids is not None and rollout.id not in rollout_ids:
            continue
        if wanted is not None and not wanted & {v.text for v in rollout.versions}:
            continue
        if rollout.state.state != r.RUNNING:
            continue
        if throttled:
            if rollout.evaluated_at is not None and 0 <= now - rollout.evaluated_at < EVALUATE_EVERY:
                continue
            await conn.execute(
                update(t.store_rollouts).where(_rollouts.id == rollout.id).values(evaluated_at=now)
            )
        names = [s.name for s in rollout.stages]
        step = r.evaluate(rollout.state, rollout.policy, await counts(conn, rollout), now, names)
        if step.state != rollout.state:
            saved = await _save(conn, rollout, step, SELF, now)
            if saved is not None:
                moved.append(saved)
    return moved


async def operate(conn: AsyncConnection, rollout_id: int, operation: str, by: str, now: float) -> Rollout:
    """An operator's ``pause``, ``resume``, ``advance`` or ``abort``, recorded with ``by``."""
    by = who(by)
    rollout = await read(conn, rollout_id)
    await conn.execute(select(_rollouts.id).where(_rollouts.id == rollout_id).with_for_update())
    step = r.operate(rollout.state, operation, await counts(conn, rollout), now)
    step = attrs.evolve(step, events=tuple(f"{e} (by {by})" for e in step.events))
    saved = await _save(conn, rollout, step, by, now)
    if saved is None:
        raise ConfigError(f"rollout {rollout_id} moved meanwhile; look again and retry")
    if operation in ("resume", "advance"):
        await evaluate(conn, now, rollout_ids=[rollout_id])
    return await read(conn, rollout_id)


async def status(conn: AsyncConnection, rollout_id: int, now: float, points: int = 12) -> RolloutStatus:
    """The rollout (evaluated first), its counts now and at ``points`` times since it started, and
    its audit."""
    rollout = await read(conn, rollout_id)
    members = await _members(conn, rollout)
    now_counts = await counts(conn, rollout, members)
    # Evaluated first, as :func:`evaluate` would, on the counts just read (a move of the
    # rollout's state changes neither who is in which stage nor what they reported).
    if rollout.state.state == r.RUNNING:
        names = [s.name for s in rollout.stages]
        step = r.evaluate(rollout.state, rollout.policy, now_counts, now, names)
        if step.state != rollout.state and await _save(conn, rollout, step, SELF, now) is not None:
            rollout = await read(conn, rollout_id)
    texts = [v.text for v in rollout.versions]
    events = [
        (row.at, row.client_id, row.version.text, row.state)
        for row in await conn.execute(
            select(_events.at, _events.client_id, _events.version, _events.state).where(
                _events.version.in_(rollout.versions), _events.at <= now
            )
        )
    ]
    end = now if rollout.state.state in r.OPEN else rollout.updated_at
    ends = r.bucket_ends(rollout.created_at, max(end, rollout.created_at), points)
    history = r.timeline(events, members, texts, len(rollout.stages), ends)
    audit = [
        AuditEntry(row.at, row.who, row.what)
        for row in await conn.execute(
            select(t.store_rollout_audit).where(_audit.rollout_id == rollout_id).order_by(_audit.id)
        )
    ]
    return RolloutStatus(
        rollout,
        tuple(now_counts),
        tuple((at, tuple(c)) for at, c in zip(ends, history, strict=True)),
        tuple(audit),
    )


# -- reports ---------------------------------------------------------------------------------------


def event_state(report: StatusReport) -> str:
    if report.applied:
        return "applied"
    if report.dead:
        return "dead"
    if report.error:
        return "failed"
    return "pending"


async def after_report(
    conn: AsyncConnection,
    client_id: int,
    reports: Sequence[StatusReport],
    recorded: Sequence[Version],
    now: float,
    *,
    expire: bool = True,
) -> list[Rollout]:
    """Keep the status changes a client reported as events (and, with ``expire``, drop those past
    retention), then evaluate the rollouts of the versions concerned (a success at most every
    :data:`EVALUATE_EVERY` seconds, a failure at once): those that moved."""
    if not recorded:
        return []
    changed = set(recorded)
    rows = [
        {"client_id": client_id, "version": rep.version, "state": event_state(rep), "at": now}
        for rep in reports
        if rep.version in changed
    ]
    if len(rows) == 1:  # the usual report: one migration applied
        await _EVENT.rows(conn, rows[0])
    else:
        await conn.execute(insert(t.store_status_events), rows)
    if expire:
        await _EXPIRED_EVENTS.rows(conn, {"now": now})
    failed = any(rep.error and not rep.applied for rep in reports if rep.version in changed)
    return await evaluate(conn, now, versions=changed, throttled=not failed)


#: The store's retention of status events, in SQL (the default when it does not say).
_RETENTION = func.coalesce(
    select(cast(t.store_meta.c.value, Float)).where(t.store_meta.c.key == RETENTION_KEY).scalar_subquery(),
    t.DEFAULT_EVENT_RETENTION,
)
#: The events past the store's retention, which is read in the same statement (one round trip
#: per report, not two). Reports delete them (at most once a second per store, see
#: ``after_report``), and at the same time as other reports: on Postgres each skips the rows
#: another is deleting (else every report would wait for the commit of the one before it, once
#: events expire as fast as reports come: a queue of the whole store).
_EXPIRED_EVENTS = Prepared(
    delete(t.store_status_events).where(
        _events.id.in_(
            select(_events.id)
            .where(_events.at < bindparam("now", type_=Float) - _RETENTION)
            .with_for_update(skip_locked=True, of=t.store_status_events)
        )
    )
)
_EVENT = Prepared(
    insert(t.store_status_events).values(
        {name: bindparam(name) for name in ("client_id", "version", "state", "at")}
    )
)


async def retention_seconds(conn: AsyncConnection) -> float:
    value = await conn.scalar(select(t.store_meta.c.value).where(t.store_meta.c.key == RETENTION_KEY))
    return t.DEFAULT_EVENT_RETENTION if value is None else float(value)


async def set_retention(conn: AsyncConnection, seconds: float) -> None:
    if seconds <= 0:
        raise ConfigError("the retention of status events must be above 0 seconds")
    where = t.store_meta.c.key == RETENTION_KEY
    done = await conn.execute(update(t.store_meta).where(where).values(value=repr(float(seconds))))
    if done.rowcount == 0:
        await conn.execute(insert(t.store_meta).values(key=RETENTION_KEY, value=repr(float(seconds))))


# -- offering --------------------------------------------------------------------------------------


def requirements(item: PendingMigration) -> tuple[requires.Requirement, ...]:
    """What a published migration's ``-- migsync:requires`` lines say (none: it runs anywhere)."""
    if requires.DIRECTIVE not in item.content:
        return ()
    try:
        return requires.of_content(json.loads(item.content))
    except (ValueError, ConfigError, TypeError, AttributeError):
        return ()  # published before requirements were checked: offered as before


async def published_requirements(conn: AsyncConnection) -> dict[Version, tuple[requires.Requirement, ...]]:
    """The published migrations that state app-version requirements (few), with them: what tells
    who is held back by the app version it runs. Only the migrations whose content names the
    directive are read."""
    rows = await conn.execute(
        select(t.store_migrations).where(t.store_migrations.c.content.like(f"%{requires.DIRECTIVE}%"))
    )
    needs = {
        row.version: requirements(
            PendingMigration(row.version, row.name, row.content, row.checksum, row.signature, row.signed_by)
        )
        for row in rows
    }
    return {version: items for version, items in needs.items() if items}


def held_by_app(
    client: ClientRecord, needs: Sequence[tuple[Version, tuple[requires.Requirement, ...]]]
) -> list[tuple[Version, str]]:
    """Of ``needs`` (version, its requirements), those the client's app version does not satisfy,
    with what they require."""
    return [
        (version, requires.describe(items))
        for version, items in needs
        if not requires.satisfied(items, client.app_version)
    ]


async def offered(
    conn: AsyncConnection, client: ClientRecord, items: list[PendingMigration]
) -> list[PendingMigration]:
    """Of a client's pending ``items`` (in version order), those it is offered now: up to the
    first one that a rollout does not offer it yet, or that its app version cannot run."""
    if not items:
        return items
    held: set[Version] = {v for v, _ in held_by_app(client, [(i.version, requirements(i)) for i in items])}
    deciding = deciding_rollouts(await _all(conn))
    held |= {i.version for i in items if i.version.key in deciding and holds(deciding[i.version.key], client)}
    if not held:
        return items
    kept = r.in_order([i.version for i in items], held)
    return items[: len(kept)]


async def every_rollout(conn: AsyncConnection) -> list[Rollout]:
    """Every rollout, oldest first (what :func:`deciding_rollouts` takes)."""
    return await _all(conn)


def deciding_rollouts(rollouts: Sequence[Rollout]) -> dict[str, Rollout]:
    """Version key -> the rollout that decides who is offered the version: its newest one.
    ``rollouts`` oldest first."""
    return {v.key: rollout for rollout in rollouts for v in rollout.versions}


def holds(rollout: Rollout, client: ClientRecord) -> bool:
    """Whether ``rollout`` does not offer its versions to the client yet (its app version is the
    caller's to check: :func:`held_by_app`)."""
    stage = r.stage_of(rollout.stages, client.client_id, client.labels)
    return not r.offered(rollout.state.state, rollout.state.stage, stage)
