"""The migration history of one client database, and the handler that applies it.

:class:`Ledger` records migrations in ``client_migration``, queues apply and
revert changes in ``migration_changes`` and reports the state of each
migration. :class:`MigrationHandler` is the
:class:`~migsync.core.processor.ChangeHandler` that the processor calls to
apply or revert one migration.

A migration's state, as ``migsync status`` shows it:

``applied``  applied and not queued for revert
``pending``  not applied (queued or not yet queued)
``failed``   its queued change failed and will be retried
``dead``     its queued change failed ``max_attempts`` times; it blocks the queue
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import attrs

from migsync.core import schema
from migsync.core.backend import Backend, Connection, Row
from migsync.core.clock import Clock, SystemClock
from migsync.core.errors import ChecksumMismatch, MigrationError, StatementError, UnknownMigration
from migsync.core.events import (
    Event,
    EventDispatcher,
    MigrationApplied,
    MigrationDead,
    MigrationFailed,
    MigrationQueued,
    MigrationReverted,
)
from migsync.core.migration import Migration

State = Literal["applied", "pending", "failed", "dead"]

_UPSERT_STATUS = f"""
INSERT INTO {schema.STATUS}
    (migration_name, version, applied, applied_at, applied_checksum, error, attempts, dirty, updated_at)
VALUES ($1, $2, $3, $4, $5, NULL, $6, FALSE, $7)
ON CONFLICT (migration_name) DO UPDATE SET
    applied = excluded.applied, applied_at = excluded.applied_at,
    applied_checksum = excluded.applied_checksum, error = NULL,
    attempts = excluded.attempts, dirty = FALSE, updated_at = excluded.updated_at
"""

_FAILED_STATUS = f"""
INSERT INTO {schema.STATUS} (migration_name, version, applied, error, attempts, updated_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (migration_name) DO UPDATE SET
    error = excluded.error, attempts = excluded.attempts, updated_at = excluded.updated_at
"""

_INSERT_CHANGE = f"""
INSERT INTO {schema.QUEUE} (id, seq, migration_name, operation, timestamp, max_attempts)
VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM {schema.QUEUE}), $2, $3, $4, $5)
"""


@attrs.frozen
class MigrationState:
    """One migration as this client sees it."""

    version: int
    name: str
    state: State
    checksum: str
    applied_at: float | None = None
    attempts: int = 0
    error: str | None = None
    queued: str | None = None  # "apply" or "revert" while a change is queued
    next_attempt_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "name": self.name,
            "state": self.state,
            "applied_at": _iso(self.applied_at),
            "attempts": self.attempts,
            "error": self.error,
            "queued": self.queued,
            "checksum": self.checksum,
        }


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


@attrs.frozen
class RecordResult:
    added: list[str]
    updated: list[str]


class MigrationHandler:
    """Applies or reverts the migration a queued change names."""

    queue = schema.QUEUE

    def __init__(self, dialect: str, clock: Clock | None = None):
        self.dialect = dialect
        self.clock = clock or SystemClock()

    def describe(self, change: Row) -> str:
        return f"{change['operation']} {change['migration_name']}"

    async def handle(self, tx: Connection, change: Row) -> Event | None:
        name = change["migration_name"]
        row = await tx.fetchone(
            f"SELECT version, checksum, content FROM {schema.MIGRATIONS} WHERE name = $1", (name,)
        )
        if row is None:
            raise UnknownMigration(f"migration {name} is queued but not recorded on this database")
        migration = Migration.from_json(json.loads(row["content"]))
        if migration.checksum != row["checksum"]:
            raise ChecksumMismatch(
                f"migration {name}: stored content does not match its checksum "
                f"{row['checksum'][:12]}; the database's copy was modified"
            )
        applying = change["operation"] == "apply"
        script = migration.script("up" if applying else "down", self.dialect)
        if script.autocommit:
            raise MigrationError(
                f"migration {name} must run outside a transaction (autocommit); "
                "this release of migsync cannot run such migrations yet"
            )
        started = time.perf_counter()
        try:
            await tx.run_script(script.sql)
        except StatementError as exc:
            raise exc.in_migration(name) from exc
        duration = time.perf_counter() - started
        now = self.clock.now()
        await tx.execute(
            _UPSERT_STATUS,
            (
                name,
                migration.version,
                applying,
                now if applying else None,
                migration.checksum if applying else None,
                change["attempts"] + 1,
                now,
            ),
        )
        if applying:
            return MigrationApplied(name=name, version=migration.version, duration=duration)
        return MigrationReverted(name=name, version=migration.version, duration=duration)

    async def record_failure(
        self, tx: Connection, change: Row, error: str, attempts: int, dead: bool
    ) -> list[Event]:
        name = change["migration_name"]
        row = await tx.fetchone(f"SELECT version FROM {schema.MIGRATIONS} WHERE name = $1", (name,))
        version = int(row["version"]) if row else 0
        reverting = change["operation"] == "revert"
        await tx.execute(_FAILED_STATUS, (name, version, reverting, error, attempts, self.clock.now()))
        if dead:
            return [
                MigrationDead(
                    name=name,
                    version=version,
                    operation=change["operation"],
                    error=error,
                    attempts=attempts,
                )
            ]
        next_row = await tx.fetchone(
            f"SELECT next_attempt_at FROM {schema.QUEUE} WHERE id = $1", (change["id"],)
        )
        return [
            MigrationFailed(
                name=name,
                version=version,
                operation=change["operation"],
                error=error,
                attempts=attempts,
                max_attempts=int(change["max_attempts"]),
                next_attempt_at=float(next_row["next_attempt_at"]) if next_row else 0.0,
            )
        ]


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

    # -- recording ----------------------------------------------------------------

    async def record(
        self, migrations: Sequence[Migration], signatures: dict[int, str] | None = None
    ) -> RecordResult:
        """Store migrations this database does not know yet, or whose content changed.

        Refuses (``ChecksumMismatch``), before writing anything, a migration
        that was applied with other content, and (``MigrationError``) a new
        migration older than one already applied: migrations apply in
        version order only.
        """
        signatures = signatures or {}
        known = {
            int(r["version"]): r
            for r in await self.backend.fetch(
                f"SELECT m.version, m.name, m.checksum, s.applied, s.applied_checksum "
                f"FROM {schema.MIGRATIONS} m LEFT JOIN {schema.STATUS} s ON s.migration_name = m.name"
            )
        }
        newest_applied = max((v for v, r in known.items() if r["applied"]), default=None)
        added: list[Migration] = []
        updated: list[Migration] = []
        for migration in migrations:
            row = known.get(migration.version)
            if row is None:
                if newest_applied is not None and migration.version < newest_applied:
                    raise MigrationError(
                        f"migration {migration.name} is older than {known[newest_applied]['name']}, "
                        "which is already applied; migrations apply in version order, so give it "
                        "a version after the newest applied one"
                    )
                added.append(migration)
            elif row["checksum"] != migration.checksum or row["name"] != migration.name:
                if row["applied"]:
                    raise ChecksumMismatch(
                        f"migration {row['name']} was applied with checksum {row['checksum'][:12]}, "
                        f"but {migration.source or 'its source'} now has {migration.checksum[:12]}; "
                        "an applied migration must not change: write a new migration, "
                        "or revert this one first"
                    )
                updated.append(migration)
        if not added and not updated:
            return RecordResult([], [])
        now = self.clock.now()
        statements: list[tuple[str, Sequence[Any]]] = []
        for migration in added:
            statements.append(
                (
                    f"INSERT INTO {schema.MIGRATIONS} "
                    "(version, name, checksum, signature, content, recorded_at) "
                    "VALUES ($1, $2, $3, $4, $5, $6)",
                    (
                        migration.version,
                        migration.name,
                        migration.checksum,
                        signatures.get(migration.version),
                        migration.canonical_content(),
                        now,
                    ),
                )
            )
        for migration in updated:
            old_name = known[migration.version]["name"]
            statements.append(
                (
                    f"UPDATE {schema.MIGRATIONS} SET name = $1, checksum = $2, signature = $3, "
                    "content = $4, recorded_at = $5 WHERE version = $6",
                    (
                        migration.name,
                        migration.checksum,
                        signatures.get(migration.version),
                        migration.canonical_content(),
                        now,
                        migration.version,
                    ),
                )
            )
            # New content deserves a fresh start: its queued change retries now.
            statements.append(
                (
                    f"UPDATE {schema.QUEUE} SET migration_name = $1, attempts = 0, error = NULL, "
                    "next_attempt_at = 0 WHERE migration_name = $2 AND processed = FALSE",
                    (migration.name, old_name),
                )
            )
        async with self.backend.transaction() as tx:
            await tx.execute_batch(statements)
        return RecordResult([m.name for m in added], [m.name for m in updated])

    # -- queueing -----------------------------------------------------------------

    async def queue_pending(self) -> list[str]:
        """Queue an apply for every recorded migration that is neither applied nor queued."""
        return await self._queue_applies(up_to=None)

    async def queue(self, ref: str) -> list[str]:
        """Queue ``ref`` for apply, with every earlier migration not applied yet.

        A dead change for one of them is revived: its attempts start again.
        """
        target = await self.find(ref)
        if target.state == "applied" and target.queued is None:
            raise MigrationError(f"migration {target.name} is already applied")
        return await self._queue_applies(up_to=target.version)

    async def _queue_applies(self, up_to: int | None) -> list[str]:
        states = await self.status()
        queued: list[MigrationState] = []
        revived: list[MigrationState] = []
        for state in states:
            if up_to is not None and state.version > up_to:
                break
            if state.queued is not None:
                if state.state == "dead":
                    revived.append(state)
                continue
            if state.state != "applied":
                queued.append(state)
        if not queued and not revived:
            return []
        now = self.clock.now()
        statements: list[tuple[str, Sequence[Any]]] = [
            (
                f"UPDATE {schema.QUEUE} SET attempts = 0, next_attempt_at = 0 "
                "WHERE migration_name = $1 AND processed = FALSE",
                (state.name,),
            )
            for state in revived
        ]
        statements += [
            (_INSERT_CHANGE, (str(uuid.uuid4()), state.name, "apply", now, self.max_attempts))
            for state in queued
        ]
        async with self.backend.transaction() as tx:
            await tx.execute_batch(statements)
        self._emit_queued(queued, "apply")
        return [s.name for s in revived + queued]

    async def revert(
        self, ref: str | None = None, *, to: int | None = None, everything: bool = False
    ) -> list[str]:
        """Queue reverts, newest first, of the applied migrations the request covers.

        ``ref``: that migration and every applied one after it. ``to``: every
        applied migration with a version above ``to``. ``everything``: all.
        Queued applies of those migrations are cancelled.
        """
        if sum(x is not None and x is not False for x in (ref, to, everything or None)) != 1:
            raise ValueError("give exactly one of ref, to, everything")
        states = await self.status()
        if ref is not None:
            target = await self.find(ref, states)
            if target.state != "applied" and target.queued != "revert":
                raise MigrationError(f"migration {target.name} is not applied ({target.state})")
            floor = target.version
        elif to is not None:
            floor = to + 1
        else:
            floor = min((s.version for s in states), default=0)
        covered = [s for s in states if s.version >= floor]
        to_revert = [s for s in reversed(covered) if s.state == "applied" and s.queued is None]
        cancelled = [s for s in covered if s.queued == "apply"]
        if not to_revert and not cancelled:
            return []
        now = self.clock.now()
        statements: list[tuple[str, Sequence[Any]]] = [
            (
                f"UPDATE {schema.QUEUE} SET processed = TRUE, processed_at = $1, "
                "error = 'cancelled by a revert' WHERE migration_name = $2 AND processed = FALSE",
                (now, state.name),
            )
            for state in cancelled
        ]
        statements += [
            (_INSERT_CHANGE, (str(uuid.uuid4()), state.name, "revert", now, self.max_attempts))
            for state in to_revert
        ]
        async with self.backend.transaction() as tx:
            await tx.execute_batch(statements)
        self._emit_queued(to_revert, "revert")
        return [s.name for s in to_revert]

    def _emit_queued(self, states: Iterable[MigrationState], operation: str) -> None:
        for state in states:
            self.events.emit(MigrationQueued(name=state.name, version=state.version, operation=operation))

    # -- reading -------------------------------------------------------------------

    async def status(self) -> list[MigrationState]:
        """Every recorded migration with its state, in version order."""
        rows = await self.backend.fetch(
            f"SELECT m.version, m.name, m.checksum, s.applied, s.applied_at, "
            f"s.error AS status_error, s.attempts AS status_attempts "
            f"FROM {schema.MIGRATIONS} m LEFT JOIN {schema.STATUS} s ON s.migration_name = m.name "
            f"ORDER BY m.version"
        )
        heads: dict[str, Row] = {}
        for change in await self.backend.fetch(
            f"SELECT migration_name, operation, attempts, max_attempts, error, next_attempt_at "
            f"FROM {schema.QUEUE} WHERE processed = FALSE ORDER BY seq"
        ):
            heads.setdefault(change["migration_name"], change)
        return [_state(row, heads.get(row["name"])) for row in rows]

    async def find(self, ref: str, states: Sequence[MigrationState] | None = None) -> MigrationState:
        """The migration named by ``ref``: its full name, its name without version, or its version."""
        states = states if states is not None else await self.status()
        matches = [
            s
            for s in states
            if ref in (s.name, s.name.partition("_")[2]) or (ref.isdigit() and int(ref) == s.version)
        ]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            known = ", ".join(s.name for s in states[-5:]) or "none recorded"
            raise UnknownMigration(f"no migration {ref!r} on this database (latest: {known})")
        raise UnknownMigration(
            f"{ref!r} names several migrations: {', '.join(s.name for s in matches)}; use the full name"
        )


def _state(row: Row, change: Row | None) -> MigrationState:
    applied = bool(row["applied"])
    base: dict[str, Any] = {
        "version": int(row["version"]),
        "name": row["name"],
        "checksum": row["checksum"],
        "applied_at": row["applied_at"] if applied else None,
        "attempts": int(row["status_attempts"] or 0),
        "error": row["status_error"],
    }
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
        next_attempt_at=float(change["next_attempt_at"]) if change["error"] else None,
        **base,
    )
