"""The migration history of one client database: record, queue, revert, repair, status.

:class:`Ledger` records migrations in ``client_migration``, queues apply and
revert changes in ``migration_changes``, repairs a dirty migration and
reports the state of each migration. The processor does the work of each
queued change through :class:`~migsync.core.handler.MigrationHandler`.

A migration's state, as ``migsync status`` shows it:

``applied``  applied and not queued for revert
``pending``  not applied (queued or not yet queued)
``failed``   its queued change failed and will be retried
``dead``     its queued change failed ``max_attempts`` times; it blocks the queue
``dirty``    it runs outside a transaction and stopped half-way (or is running now):
             nothing runs until ``migsync repair`` says whether it took effect

A *hold* (``migsync_meta.hold_from``) keeps every migration from a version on
from being queued by :meth:`Ledger.queue_pending`: the server's admin asked
this client to revert it (see :mod:`migsync.client.actions`), so the next sync
must not apply it again. Such a migration is ``pending`` with ``held`` set.
An explicit :meth:`Ledger.queue` of a held migration (a person's decision, or
the admin's re-apply) lifts the hold.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import attrs

from migsync.core.assembly import repeatable_version
from migsync.core.backend import Backend, Connection, Row
from migsync.core.clock import Clock, SystemClock, iso
from migsync.core.errors import ChecksumMismatch, DirtyDatabase, MigrationError, UnknownMigration
from migsync.core.events import EventDispatcher, MigrationQueued, MigrationRepaired, MigrationsQueued
from migsync.core.handler import dirty_message
from migsync.core.history_sql import HistorySQL, history_sql
from migsync.core.migration import Migration, description_of, irreversible_content
from migsync.core.sources import SourceSnapshot
from migsync.core.version import Version, VersionError

State = Literal["applied", "pending", "failed", "dead", "dirty"]


@attrs.frozen
class MigrationState:
    """One migration as this client sees it."""

    version: Version
    name: str
    state: State
    checksum: str
    applied_at: float | None = None
    attempts: int = 0
    error: str | None = None
    queued: str | None = None  # "apply" or "revert" while a change is queued
    next_attempt_at: float | None = None
    #: not applied, and kept from being queued by a hold (a revert the server asked for)
    held: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version.text,
            "name": self.name,
            "state": self.state,
            "applied_at": iso(self.applied_at),
            "attempts": self.attempts,
            "error": self.error,
            "queued": self.queued,
            "next_attempt_at": iso(self.next_attempt_at),
            "checksum": self.checksum,
            "held": self.held,
        }


@attrs.frozen
class RevertResult:
    reverting: list[str]  # queued for revert, newest first
    cancelled: list[str]  # queued applies dropped because the revert covers them


@attrs.frozen
class RecordResult:
    added: list[str]
    updated: list[str]


@attrs.frozen
class _Move:
    """A repeatable migration already recorded: it goes to a new version, or has new scripts."""

    migration: Migration  # as it is to be stored: scripts and version
    changed: bool  # its scripts changed
    applied: bool  # it was applied (with the old scripts, if changed)


@attrs.define
class _RecordPlan:
    known: dict[Version, Row]  # the recorded versioned migrations
    added: list[Migration] = attrs.Factory(list)
    updated: list[Migration] = attrs.Factory(list)
    moved: list[_Move] = attrs.Factory(list)


def _origins_json(migration: Migration) -> str | None:
    return json.dumps(migration.origins, sort_keys=True) if migration.origins else None


def _refuse_if_dirty(states: Sequence[MigrationState]) -> None:
    for state in states:
        if state.state == "dirty":
            raise DirtyDatabase(dirty_message(state.name))


class Ledger:
    """Records, queues and reports the migrations of one client database."""

    def __init__(
        self,
        backend: Backend,
        *,
        clock: Clock | None = None,
        events: EventDispatcher | None = None,
        max_attempts: int = 3,
    ):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.backend = backend
        self.clock = clock or SystemClock()
        self.events = events or EventDispatcher()
        self.max_attempts = max_attempts
        self.sql = history_sql(backend.tables)

    # -- recording ----------------------------------------------------------------

    async def record(
        self, migrations: Sequence[Migration], signatures: dict[Version, str] | None = None
    ) -> RecordResult:
        """Store migrations this database does not know yet, or whose content changed.

        Refuses (``ChecksumMismatch``), before writing anything, a migration
        that was applied with other content, and (``MigrationError``) a new
        migration older than one already applied: migrations apply in
        version order only.

        A repeatable migration (:attr:`Migration.repeatable <migsync.core.migration.Migration.repeatable>`)
        is placed just after the newest versioned migration this database or
        ``migrations`` know (``V.0.1``, ``V.0.2``, ... in the order of their
        descriptions), and moves there again when newer versioned migrations
        come. When its scripts change it is stored anew and, if it was applied,
        marked pending: the next queue runs it again, after the versioned ones.
        """
        signatures = signatures or {}
        plan = self._plan_record(
            await self.backend.fetch(self.sql.known),
            migrations,
            await self._stored(self.backend.fetch, migrations),
        )
        if not plan.added and not plan.updated and not plan.moved:
            return RecordResult([], [])
        async with self.backend.transaction() as tx:
            # Again under the write lock: another process may have recorded them meanwhile.
            plan = self._plan_record(
                await tx.fetch(self.sql.known), migrations, await self._stored(tx.fetch, migrations)
            )
            await tx.execute_batch(self._record_statements(plan, signatures))
        changed = [m.name for m in plan.updated] + [
            move.migration.name for move in plan.moved if move.changed
        ]
        return RecordResult([m.name for m in plan.added], changed)

    async def record_in(self, tx: Connection, migrations: Sequence[Migration]) -> RecordResult:
        """:meth:`record` inside a transaction the caller holds, so that what it writes next
        (a baseline's applied rows, say) commits, or not, with the records."""
        plan = self._plan_record(
            await tx.fetch(self.sql.known), migrations, await self._stored(tx.fetch, migrations)
        )
        await tx.execute_batch(self._record_statements(plan, {}))
        return RecordResult([m.name for m in plan.added], [m.name for m in plan.updated])

    async def _stored(
        self, fetch: Callable[..., Awaitable[list[Row]]], migrations: Sequence[Migration]
    ) -> dict[str, Migration]:
        """The recorded content of the repeatable migrations among ``migrations``, by name."""
        stored = {}
        for migration in migrations:
            if migration.repeatable:
                rows = await fetch(
                    f"SELECT content FROM {self.sql.t.migrations} WHERE name = $1", (migration.name,)
                )
                if rows:
                    stored[migration.name] = Migration.from_json(json.loads(rows[0]["content"]))
        return stored

    def _plan_record(
        self, rows: list[Row], migrations: Sequence[Migration], stored: dict[str, Migration]
    ) -> _RecordPlan:
        repeatables = [m for m in migrations if m.repeatable]
        floating = {m.name for m in repeatables}
        known = {Version.from_key(r["version"]): r for r in rows}
        # A repeatable migration's row moves; the others are where their versions say.
        fixed = {v: r for v, r in known.items() if r["name"] not in floating}
        newest_applied = max((v for v, r in fixed.items() if r["applied"]), default=None)
        plan = _RecordPlan(known=fixed)
        for migration in migrations:
            if migration.repeatable:
                continue
            row = fixed.get(migration.version)
            if row is None:
                if newest_applied is not None and migration.version < newest_applied:
                    raise MigrationError(
                        f"migration {migration.name} is older than {fixed[newest_applied]['name']}, "
                        "which is already applied; migrations apply in version order, so give it "
                        "a version after the newest applied one"
                    )
                plan.added.append(migration)
            elif row["checksum"] != migration.checksum or row["name"] != migration.name:
                if row["applied"]:
                    raise ChecksumMismatch(
                        f"migration {row['name']} was applied with checksum {row['checksum'][:12]}, "
                        f"but {migration.source or 'its source'} now has {migration.checksum[:12]}; "
                        "an applied migration must not change: write a new migration, "
                        "or revert this one first"
                    )
                plan.updated.append(migration)
        newest = max([*fixed, *(m.version for m in migrations if not m.repeatable)], default=Version((0,)))
        rows_by_name = {r["name"]: (v, r) for v, r in known.items()}
        ranked = sorted(repeatables, key=lambda m: description_of(m.name))
        for rank, repeatable in enumerate(ranked, start=1):
            placed = attrs.evolve(repeatable, version=repeatable_version(newest, rank))
            found = rows_by_name.get(placed.name)
            if found is None:
                plan.added.append(placed)
                continue
            version, row = found
            changed = not placed.same_scripts(stored[placed.name])
            if changed or version != placed.version:
                plan.moved.append(_Move(placed, changed, bool(row["applied"])))
        return plan

    def _record_statements(
        self, plan: _RecordPlan, signatures: dict[Version, str]
    ) -> list[tuple[str, Sequence[Any]]]:
        now = self.clock.now()
        t = self.sql.t
        statements: list[tuple[str, Sequence[Any]]] = []
        # Out of the way first: a repeatable migration may sit where a new one goes, or where
        # another repeatable moves. (A key no version has: it sorts after every one.)
        for move in plan.moved:
            name = move.migration.name
            statements += [
                (f"UPDATE {t.migrations} SET version = $1 WHERE name = $2", (f"~{name}", name)),
                (f"UPDATE {t.status} SET version = $1 WHERE migration_name = $2", (f"~{name}", name)),
            ]
        for migration in plan.added:
            statements.append(
                (
                    f"INSERT INTO {t.migrations} "
                    "(version, name, checksum, signature, content, origins, recorded_at) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    (
                        migration.version.key,
                        migration.name,
                        migration.checksum,
                        signatures.get(migration.version),
                        migration.canonical_content(),
                        _origins_json(migration),
                        now,
                    ),
                )
            )
        for migration in plan.updated:
            old_name = plan.known[migration.version]["name"]
            statements.append(self._update_statement(migration, signatures.get(migration.version), now))
            statements.append(self._fresh_start(migration.name, old_name))
        for move in plan.moved:
            migration = move.migration
            statements.append(self._update_statement(migration, None, now, where="name"))
            if move.changed and move.applied:
                # Its new scripts have not run: pending again, so that it is queued and runs.
                statements.append(
                    (
                        f"UPDATE {t.status} SET version = $1, applied = FALSE, error = NULL, updated_at = $2 "
                        "WHERE migration_name = $3",
                        (migration.version.key, now, migration.name),
                    )
                )
            else:
                statements.append(
                    (
                        f"UPDATE {t.status} SET version = $1 WHERE migration_name = $2",
                        (migration.version.key, migration.name),
                    )
                )
            if move.changed:
                statements.append(self._fresh_start(migration.name, migration.name))
        return statements

    def _update_statement(
        self, migration: Migration, signature: str | None, now: float, where: str = "version"
    ) -> tuple[str, Sequence[Any]]:
        key = migration.version.key if where == "version" else migration.name
        return (
            f"UPDATE {self.sql.t.migrations} SET version = $1, name = $2, checksum = $3, signature = $4, "
            f"content = $5, origins = $6, recorded_at = $7 WHERE {where} = $8",
            (
                migration.version.key,
                migration.name,
                migration.checksum,
                signature,
                migration.canonical_content(),
                _origins_json(migration),
                now,
                key,
            ),
        )

    def _fresh_start(self, name: str, old_name: str) -> tuple[str, Sequence[Any]]:
        """New content deserves a fresh start: its queued change retries now."""
        return (
            f"UPDATE {self.sql.t.queue} SET migration_name = $1, attempts = 0, error = NULL, "
            "next_attempt_at = 0 WHERE migration_name = $2 AND processed = FALSE",
            (name, old_name),
        )

    async def record_source(self, snapshot: SourceSnapshot) -> RecordResult:
        """:meth:`record` a directory snapshot, skipping it if this database recorded the same bytes.

        A client that starts with ``migsync apply`` every time reads its
        migration files every time; parsing and comparing them only when
        their digest changed keeps a no-op start cheap.
        """
        rows = await self.backend.fetch(f"SELECT value FROM {self.sql.t.meta} WHERE key = 'source_digest'")
        if rows and rows[0]["value"] == snapshot.digest:
            return RecordResult([], [])
        result = await self.record(snapshot.migrations())
        async with self.backend.transaction() as tx:
            await tx.execute(
                f"INSERT INTO {self.sql.t.meta} (key, value) VALUES ('source_digest', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (snapshot.digest,),
            )
        return result

    # -- queueing -----------------------------------------------------------------

    async def queue_pending(self) -> list[str]:
        """Queue an apply for every recorded migration that is neither applied, queued nor held.

        Dead changes stay dead: reviving one is a person's decision (:meth:`queue`).
        """
        rows = await self.backend.fetch(self.sql.unqueued)
        if not rows or not _unheld(rows, await _hold(self.backend.fetch, self.sql)):
            return []
        async with self.backend.transaction() as tx:
            # Again under the write lock: another process may have queued (or held) them meanwhile.
            rows = _unheld(await tx.fetch(self.sql.unqueued), await _hold(tx.fetch, self.sql))
            fresh = [(Version.from_key(r["version"]), r["name"]) for r in rows]
            await tx.execute_batch(self._enqueue_statements(fresh, []))
        self._emit_queued(fresh, "apply")
        return [name for _, name in fresh]

    async def queue(self, ref: str, *, now: bool = False) -> list[str]:
        """Queue ``ref`` for apply, with every earlier migration not applied yet.

        A dead change for one of them is revived: its attempts start again; with ``now``, so
        is a failed one waiting for its backoff. Queueing a held migration lifts the hold
        (see the module's docstring).
        """
        async with self.backend.transaction() as tx:
            states = await _read_status(tx.fetch, self.sql)
            _refuse_if_dirty(states)
            target = await self.find(ref, states)
            if target.state == "applied" and target.queued is None:
                raise MigrationError(f"migration {target.name} is already applied")
            earlier = [s for s in states if s.version <= target.version]
            fresh = [(s.version, s.name) for s in earlier if s.queued is None and s.state != "applied"]
            revived = [s.name for s in earlier if s.state == "dead" or (now and s.state == "failed")]
            statements = self._enqueue_statements(fresh, revived)
            if target.held:
                statements.append((f"DELETE FROM {self.sql.t.meta} WHERE key = '{HOLD_KEY}'", ()))
            await tx.execute_batch(statements)
        self._emit_queued(fresh, "apply")
        return [*revived, *(name for _, name in fresh)]

    def _enqueue_statements(
        self, fresh: Sequence[tuple[Version, str]], revived: Sequence[str], operation: str = "apply"
    ) -> list[tuple[str, Sequence[Any]]]:
        now = self.clock.now()
        statements: list[tuple[str, Sequence[Any]]] = [
            (
                f"UPDATE {self.sql.t.queue} SET attempts = 0, next_attempt_at = 0 "
                "WHERE migration_name = $1 AND processed = FALSE",
                (name,),
            )
            for name in revived
        ]
        statements += [
            (self.sql.insert_change, (str(uuid.uuid4()), name, operation, now, self.max_attempts))
            for _, name in fresh
        ]
        return statements

    def _emit_queued(self, queued: Sequence[tuple[Version, str]], operation: str) -> None:
        """One event for what one request queued: ``migration_queued`` for one migration,
        ``migrations_queued`` naming them all for several (a sink keeps up with a queue of 5000)."""
        if len(queued) == 1:
            version, name = queued[0]
            self.events.emit(MigrationQueued(name=name, version=version, operation=operation))
        elif queued:
            self.events.emit(
                MigrationsQueued(
                    operation=operation,
                    names=[name for _, name in queued],
                    first=queued[0][0],
                    last=queued[-1][0],
                )
            )

    async def held_from(self) -> Version | None:
        """The version from which migrations are held (not queued), or None."""
        return await _hold(self.backend.fetch, self.sql)

    async def hold(self, version: Version | int | str) -> None:
        """Keep every migration from ``version`` on from being queued (an earlier hold stays)."""
        version = Version.parse(version)
        async with self.backend.transaction() as tx:
            await tx.execute_batch(self._hold_statements(await _hold(tx.fetch, self.sql), version))

    def _hold_statements(self, current: Version | None, version: Version) -> list[tuple[str, Sequence[Any]]]:
        if current is not None and current <= version:
            return []
        return [
            (
                f"INSERT INTO {self.sql.t.meta} (key, value) VALUES ('{HOLD_KEY}', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (version.key,),
            )
        ]

    async def release_hold(self) -> Version | None:
        """Lift the hold; the version it held from, or None if there was none."""
        async with self.backend.transaction() as tx:
            current = await _hold(tx.fetch, self.sql)
            if current is not None:
                await tx.execute(f"DELETE FROM {self.sql.t.meta} WHERE key = '{HOLD_KEY}'")
        return current

    async def revert(
        self,
        ref: str | None = None,
        *,
        to: Version | int | str | None = None,
        since: Version | int | str | None = None,
        everything: bool = False,
        hold_from: Version | int | str | None = None,
    ) -> RevertResult:
        """Queue reverts, newest first, of the applied migrations the request covers.

        ``ref``: that migration and every applied one after it. ``to``: every
        applied migration with a version above ``to``. ``since``: every applied
        migration from that version on. ``everything``: all.
        Queued applies of those migrations are cancelled. ``hold_from``: also
        :meth:`hold` from that version, in the same transaction.

        Refuses (``MigrationError``, naming each), before anything is queued,
        cancelled or held, if any migration to revert has no down script for
        this database's dialect (:meth:`Migration.irreversible
        <migsync.core.migration.Migration.irreversible>`): reverting it would
        undo nothing, yet mark it pending, and applying it again would fail.
        """
        if sum(x is not None for x in (ref, to, since, everything or None)) != 1:
            raise ValueError("give exactly one of ref, to, since, everything")
        to, since, hold_from = (None if v is None else Version.parse(v) for v in (to, since, hold_from))
        async with self.backend.transaction() as tx:
            states = await _read_status(tx.fetch, self.sql)
            _refuse_if_dirty(states)
            if ref is not None:
                target = await self.find(ref, states)
                if target.state != "applied" and target.queued != "revert":
                    raise MigrationError(f"migration {target.name} is not applied ({target.state})")
                covered = [s for s in states if s.version >= target.version]
            elif to is not None:
                covered = [s for s in states if s.version > to]
            elif since is not None:
                covered = [s for s in states if s.version >= since]
            else:
                covered = list(states)
            to_revert = [
                (s.version, s.name) for s in reversed(covered) if s.state == "applied" and s.queued is None
            ]
            await self._refuse_irreversible(tx, to_revert)
            cancelled = [s.name for s in covered if s.queued == "apply"]
            now = self.clock.now()
            statements: list[tuple[str, Sequence[Any]]] = []
            if hold_from is not None:
                statements += self._hold_statements(await _hold(tx.fetch, self.sql), hold_from)
            for name in cancelled:
                statements += [
                    (
                        f"UPDATE {self.sql.t.queue} SET processed = TRUE, processed_at = $1, "
                        "error = 'cancelled by a revert' WHERE migration_name = $2 AND processed = FALSE",
                        (now, name),
                    ),
                    (f"UPDATE {self.sql.t.status} SET error = NULL WHERE migration_name = $1", (name,)),
                ]
            statements += self._enqueue_statements(to_revert, [], "revert")
            await tx.execute_batch(statements)
        self._emit_queued(to_revert, "revert")
        return RevertResult([name for _, name in to_revert], cancelled)

    async def _refuse_irreversible(self, tx: Connection, to_revert: Sequence[tuple[Version, str]]) -> None:
        if not to_revert:
            return
        rows = await tx.fetch(
            f"SELECT version, content FROM {self.sql.t.migrations} WHERE version >= $1",
            (min(v for v, _ in to_revert).key,),
        )
        contents = {Version.from_key(r["version"]): r["content"] for r in rows}
        dialect = self.backend.dialect
        lacking = [
            name
            for version, name in to_revert
            if irreversible_content(json.loads(contents[version]), dialect)
        ]
        if lacking:
            they = "it has" if len(lacking) == 1 else "they have"
            raise MigrationError(
                f"cannot revert {', '.join(lacking)}: {they} no down script for {dialect}, "
                "so reverting would undo nothing; nothing was queued. Write a new migration that "
                f"undoes {'it' if len(lacking) == 1 else 'them'}, or revert only the migrations "
                f"after {lacking[0]}"
            )

    async def repair(self, ref: str, *, applied: bool) -> MigrationState:
        """Resolve a dirty migration after a person checked the database by hand.

        ``applied=True``: it took effect; it is recorded applied (or, for a
        revert, reverted) and its queued change is done. ``applied=False``: it
        did not; its queued change runs again from a fresh start.
        """
        async with self.backend.transaction() as tx:
            states = await _read_status(tx.fetch, self.sql)
            target = await self.find(ref, states)
            if target.state != "dirty":
                raise MigrationError(
                    f"migration {target.name} is not dirty ({target.state}); nothing to repair"
                )
            now = self.clock.now()
            reverting = target.queued == "revert"
            # What the database now has: applied unless a revert took effect (or an apply did not).
            now_applied = applied != reverting
            checksum = target.checksum if now_applied else None
            statements: list[tuple[str, Sequence[Any]]] = [
                (
                    f"UPDATE {self.sql.t.status} SET dirty = FALSE, error = NULL, applied = $1, "
                    "applied_at = $2, applied_checksum = $3, updated_at = $4 WHERE version = $5",
                    (now_applied, now if now_applied else None, checksum, now, target.version.key),
                )
            ]
            if applied:
                statements.append(
                    (
                        f"UPDATE {self.sql.t.queue} SET processed = TRUE, processed_at = $1, error = NULL "
                        "WHERE migration_name = $2 AND processed = FALSE",
                        (now, target.name),
                    )
                )
            else:
                statements.append(
                    (
                        f"UPDATE {self.sql.t.queue} SET attempts = 0, error = NULL, next_attempt_at = 0 "
                        "WHERE migration_name = $1 AND processed = FALSE",
                        (target.name,),
                    )
                )
            await tx.execute_batch(statements)
        self.events.emit(MigrationRepaired(name=target.name, version=target.version, applied=applied))
        repaired = await self.find(target.name)
        return repaired

    # -- reading -------------------------------------------------------------------

    async def status(self) -> list[MigrationState]:
        """Every recorded migration with its state, in version order."""
        return await _read_status(self.backend.fetch, self.sql)

    async def find(self, ref: str, states: Sequence[MigrationState] | None = None) -> MigrationState:
        """The migration named by ``ref``: its full name, its name without version, or its version."""
        states = states if states is not None else await self.status()
        matches = [
            s for s in states if ref in (s.name, description_of(s.name)) or _version_of(ref) == s.version
        ]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            known = ", ".join(s.name for s in states[-5:]) or "none recorded"
            raise UnknownMigration(f"no migration {ref!r} on this database (latest: {known})")
        raise UnknownMigration(
            f"{ref!r} names several migrations: {', '.join(s.name for s in matches)}; use the full name"
        )


#: ``migsync_meta`` key of the hold: the version from which nothing is queued.
HOLD_KEY = "hold_from"


async def _hold(fetch: Callable[[str], Awaitable[list[Row]]], sql: HistorySQL) -> Version | None:
    rows = await fetch(f"SELECT value FROM {sql.t.meta} WHERE key = '{HOLD_KEY}'")
    return Version.from_key(rows[0]["value"]) if rows else None


def _unheld(rows: list[Row], hold: Version | None) -> list[Row]:
    return rows if hold is None else [r for r in rows if Version.from_key(r["version"]) < hold]


def _version_of(ref: str) -> Version | None:
    """The version ``ref`` spells (``42``, ``1.2.10``), or None when it spells none."""
    try:
        return Version.parse(ref)
    except VersionError:
        return None


async def _read_status(fetch: Callable[[str], Awaitable[list[Row]]], sql: HistorySQL) -> list[MigrationState]:
    rows = await fetch(sql.status)
    heads: dict[str, Row] = {}
    for change in await fetch(sql.open_changes):
        heads.setdefault(change["migration_name"], change)
    hold = await _hold(fetch, sql)
    states = [_state(row, heads.get(row["name"])) for row in rows]
    if hold is None:
        return states
    return [
        attrs.evolve(s, held=True) if s.version >= hold and s.state == "pending" and s.queued is None else s
        for s in states
    ]


def _state(row: Row, change: Row | None) -> MigrationState:
    applied = bool(row["applied"])
    base: dict[str, Any] = {
        "version": Version.from_key(row["version"]),
        "name": row["name"],
        "checksum": row["checksum"],
        "applied_at": row["applied_at"] if applied else None,
        "attempts": int(row["status_attempts"] or 0),
        "error": row["status_error"],
    }
    if row["dirty"]:
        # Interrupted (or running now) outside a transaction: only repair moves it on.
        queued = change["operation"] if change is not None else None
        return MigrationState(state="dirty", queued=queued, **base)
    if change is None:
        return MigrationState(state="applied" if applied else "pending", **base)
    attempts = int(change["attempts"])
    state: State
    if attempts >= int(change["max_attempts"]):
        state = "dead"
    elif change["error"]:
        state = "failed"
    else:
        state = "applied" if applied else "pending"
    base.update(attempts=attempts, error=change["error"])
    return MigrationState(
        state=state,
        queued=change["operation"],
        next_attempt_at=float(change["next_attempt_at"]) if state == "failed" else None,
        **base,
    )
