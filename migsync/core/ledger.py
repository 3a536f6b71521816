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
``dirty``    it runs outside a transaction and stopped half-way (or is running now):
             nothing runs until ``migsync repair`` says whether it took effect
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import attrs

from migsync.core.backend import Backend, Row
from migsync.core.clock import Clock, SystemClock
from migsync.core.errors import (
    ChecksumMismatch,
    DirtyDatabase,
    MigrationError,
    StatementError,
    UnknownMigration,
)
from migsync.core.events import (
    Event,
    EventDispatcher,
    MigrationApplied,
    MigrationDead,
    MigrationDirty,
    MigrationFailed,
    MigrationQueued,
    MigrationRepaired,
    MigrationReverted,
)
from migsync.core.migration import ANY_DIALECT, Migration
from migsync.core.processor import Loaded
from migsync.core.schema import DEFAULT_TABLES, Tables
from migsync.core.sources import SourceSnapshot
from migsync.core.work import Execute, Fetch, Script, Work

State = Literal["applied", "pending", "failed", "dead", "dirty"]


class _SQL:
    """The ledger's statements, for one set of table names (built once per names)."""

    def __init__(self, t: Tables):
        self.t = t
        self.upsert_status = f"""
INSERT INTO {t.status}
    (migration_name, version, applied, applied_at, applied_checksum, error, attempts, dirty, updated_at)
VALUES ($1, $2, $3, $4, $5, NULL, $6, FALSE, $7)
ON CONFLICT (version) DO UPDATE SET
    migration_name = excluded.migration_name, applied = excluded.applied, applied_at = excluded.applied_at,
    applied_checksum = excluded.applied_checksum, error = NULL,
    attempts = excluded.attempts, dirty = FALSE, updated_at = excluded.updated_at
"""
        self.failed_status = f"""
INSERT INTO {t.status} (migration_name, version, applied, error, attempts, dirty, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (version) DO UPDATE SET
    error = excluded.error, attempts = excluded.attempts, dirty = excluded.dirty,
    updated_at = excluded.updated_at
"""
        # Before work outside a transaction: in progress until finish or repair.
        self.mark_dirty = f"""
INSERT INTO {t.status} (migration_name, version, applied, attempts, dirty, updated_at)
VALUES ($1, $2, $3, $4, TRUE, $5)
ON CONFLICT (version) DO UPDATE SET
    dirty = TRUE, attempts = excluded.attempts, updated_at = excluded.updated_at
"""
        self.known = (
            f"SELECT m.version, m.name, m.checksum, s.applied FROM {t.migrations} m "
            f"LEFT JOIN {t.status} s ON s.version = m.version"
        )
        self.unqueued = (
            f"SELECT m.version, m.name FROM {t.migrations} m "
            f"LEFT JOIN {t.status} s ON s.version = m.version "
            f"WHERE (s.applied IS NULL OR s.applied = FALSE) AND NOT EXISTS ("
            f"SELECT 1 FROM {t.queue} q WHERE q.migration_name = m.name AND q.processed = FALSE) "
            f"ORDER BY m.version"
        )
        self.insert_change = f"""
INSERT INTO {t.queue} (id, seq, migration_name, operation, timestamp, max_attempts)
VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM {t.queue}), $2, $3, $4, $5)
"""
        self.migration_for_change = (
            f"SELECT m.version, m.checksum, m.content, s.applied, "
            f"(SELECT d.migration_name FROM {t.status} d WHERE d.dirty LIMIT 1) AS dirty_name "
            f"FROM {t.migrations} m LEFT JOIN {t.status} s ON s.version = m.version WHERE m.name = $1"
        )
        self.status = (
            f"SELECT m.version, m.name, m.checksum, s.applied, s.applied_at, s.dirty, "
            f"s.error AS status_error, s.attempts AS status_attempts "
            f"FROM {t.migrations} m LEFT JOIN {t.status} s ON s.version = m.version "
            f"ORDER BY m.version"
        )
        self.dirty = f"SELECT migration_name FROM {t.status} WHERE dirty LIMIT 1"
        self.open_changes = (
            f"SELECT migration_name, operation, attempts, max_attempts, error, next_attempt_at "
            f"FROM {t.queue} WHERE processed = FALSE ORDER BY seq"
        )


@functools.lru_cache(maxsize=16)
def _sql(tables: Tables) -> _SQL:
    return _SQL(tables)


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
            "next_attempt_at": _iso(self.next_attempt_at),
            "checksum": self.checksum,
        }


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


@attrs.frozen
class RevertResult:
    reverting: list[str]  # queued for revert, newest first
    cancelled: list[str]  # queued applies dropped because the revert covers them


@attrs.frozen
class RecordResult:
    added: list[str]
    updated: list[str]


class MigrationHandler:
    """Applies or reverts the migration a queued change names."""

    def __init__(
        self,
        dialect: str,
        clock: Clock | None = None,
        tables: Tables = DEFAULT_TABLES,
        *,
        transactional_ddl: bool = True,
    ):
        self.dialect = dialect
        # Without transactional DDL every migration runs the way an autocommit one does.
        self.transactional_ddl = transactional_ddl
        self.clock = clock or SystemClock()
        self.sql = _sql(tables)
        self.queue = tables.queue

    def describe(self, change: Row) -> str:
        return f"{change['operation']} {change['migration_name']}"

    def check(self) -> Work[None]:
        rows: list[Row] = yield Fetch(self.sql.dirty)
        if rows:
            raise DirtyDatabase(_dirty_message(rows[0]["migration_name"]))

    def load(self, change: Row) -> Work[Loaded]:
        name = change["migration_name"]
        rows: list[Row] = yield Fetch(self.sql.migration_for_change, (name,))
        if not rows:
            raise UnknownMigration(f"migration {name} is queued but not recorded on this database")
        row = rows[0]
        if row["dirty_name"] is not None:
            raise DirtyDatabase(_dirty_message(row["dirty_name"]))
        applying = change["operation"] == "apply"
        # The stored content is the canonical JSON the checksum covers: one
        # hash proves it is what was recorded (and signed), untouched since.
        if hashlib.sha256(row["content"].encode()).hexdigest() != row["checksum"]:
            raise ChecksumMismatch(
                f"migration {name}: stored content does not match its checksum "
                f"{row['checksum'][:12]}; the database's copy was modified"
            )
        scripts = json.loads(row["content"])["up" if applying else "down"]
        script = scripts.get(self.dialect) or scripts.get(ANY_DIALECT) or {"sql": "", "autocommit": False}
        step = _Step(
            name=name,
            version=int(row["version"]),
            checksum=row["checksum"],
            applying=applying,
            sql=script["sql"],
            # Already in the requested state: queued twice by racing processes. Never run twice.
            done=bool(row["applied"]) == applying,
        )
        outside = (script["autocommit"] or not self.transactional_ddl) and not step.done
        return Loaded(step, outside_transaction=outside)

    def handle(self, change: Row, loaded: Loaded) -> Work[Event | None]:
        step: _Step = loaded.data
        if step.done:
            return None
        started = time.perf_counter()
        try:
            yield Script(step.sql)
        except StatementError as exc:
            raise exc.in_migration(step.name) from exc
        return (yield from self._applied(change, step, time.perf_counter() - started))

    def begin_outside(self, change: Row, loaded: Loaded) -> Work[None]:
        step: _Step = loaded.data
        attempts, now = change["attempts"] + 1, self.clock.now()
        yield Execute(self.sql.mark_dirty, (step.name, step.version, not step.applying, attempts, now))

    def handle_outside(self, change: Row, loaded: Loaded) -> Work[None]:
        step: _Step = loaded.data
        try:
            yield Script(step.sql, each_commits=True)
        except StatementError as exc:
            if exc.index:  # statements before it have committed: only a person can tell what now
                committed = "statement 1" if exc.index == 1 else f"statements 1-{exc.index}"
                raise DirtyDatabase(
                    f"{exc.in_migration(step.name)}; it runs outside a transaction and {committed} "
                    f"had already committed: {_REPAIR_HINT.format(name=step.name)}"
                ) from exc
            raise exc.in_migration(step.name) from exc

    def finish_outside(self, change: Row, loaded: Loaded, duration: float) -> Work[Event | None]:
        return (yield from self._applied(change, loaded.data, duration))

    def _applied(self, change: Row, step: _Step, duration: float) -> Work[Event]:
        now = self.clock.now()
        yield Execute(
            self.sql.upsert_status,
            (
                step.name,
                step.version,
                step.applying,
                now if step.applying else None,
                step.checksum if step.applying else None,
                change["attempts"] + 1,
                now,
            ),
        )
        if step.applying:
            return MigrationApplied(name=step.name, version=step.version, duration=duration)
        return MigrationReverted(name=step.name, version=step.version, duration=duration)

    def record_failure(
        self, change: Row, error: str, attempts: int, next_attempt_at: float | None, dirty: bool
    ) -> Work[list[Event]]:
        name = change["migration_name"]
        rows: list[Row] = yield Fetch(f"SELECT version FROM {self.sql.t.migrations} WHERE name = $1", (name,))
        version = int(rows[0]["version"]) if rows else 0
        if rows:
            reverting = change["operation"] == "revert"
            now = self.clock.now()
            yield Execute(self.sql.failed_status, (name, version, reverting, error, attempts, dirty, now))
        if dirty:
            return [
                MigrationDirty(
                    name=name, version=version, operation=change["operation"], error=error, attempts=attempts
                )
            ]
        if next_attempt_at is None:
            return [
                MigrationDead(
                    name=name, version=version, operation=change["operation"], error=error, attempts=attempts
                )
            ]
        return [
            MigrationFailed(
                name=name,
                version=version,
                operation=change["operation"],
                error=error,
                attempts=attempts,
                max_attempts=int(change["max_attempts"]),
                next_attempt_at=next_attempt_at,
            )
        ]


_REPAIR_HINT = (
    "check by hand whether it took effect, then run "
    "'migsync repair --db URL {name} --applied' or '... --not-applied'"
)


def _refuse_if_dirty(states: Sequence[MigrationState]) -> None:
    for state in states:
        if state.state == "dirty":
            raise DirtyDatabase(_dirty_message(state.name))


def _dirty_message(name: str) -> str:
    return (
        f"the database is dirty: migration {name} ran outside a transaction and did not finish "
        f"(or is running right now in another process); nothing else runs until it is repaired: "
        + _REPAIR_HINT.format(name=name)
    )


@attrs.frozen
class _Step:
    """One migration change, loaded: what to run and how to record it."""

    name: str
    version: int
    checksum: str
    applying: bool
    sql: str
    done: bool


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
        self.sql = _sql(backend.tables)

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
        added, updated, _ = self._plan_record(await self.backend.fetch(self.sql.known), migrations)
        if not added and not updated:
            return RecordResult([], [])
        async with self.backend.transaction() as tx:
            # Again under the write lock: another process may have recorded them meanwhile.
            added, updated, known = self._plan_record(await tx.fetch(self.sql.known), migrations)
            await tx.execute_batch(self._record_statements(added, updated, known, signatures))
        return RecordResult([m.name for m in added], [m.name for m in updated])

    def _plan_record(
        self, rows: list[Row], migrations: Sequence[Migration]
    ) -> tuple[list[Migration], list[Migration], dict[int, Row]]:
        known = {int(r["version"]): r for r in rows}
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
        return added, updated, known

    def _record_statements(
        self,
        added: list[Migration],
        updated: list[Migration],
        known: dict[int, Row],
        signatures: dict[int, str],
    ) -> list[tuple[str, Sequence[Any]]]:
        now = self.clock.now()
        statements: list[tuple[str, Sequence[Any]]] = []
        for migration in added:
            statements.append(
                (
                    f"INSERT INTO {self.sql.t.migrations} "
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
                    f"UPDATE {self.sql.t.migrations} SET name = $1, checksum = $2, signature = $3, "
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
                    f"UPDATE {self.sql.t.queue} SET migration_name = $1, attempts = 0, error = NULL, "
                    "next_attempt_at = 0 WHERE migration_name = $2 AND processed = FALSE",
                    (migration.name, old_name),
                )
            )
        return statements

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
        """Queue an apply for every recorded migration that is neither applied nor queued.

        Dead changes stay dead: reviving one is a person's decision (:meth:`queue`).
        """
        if not await self.backend.fetch(self.sql.unqueued):
            return []
        async with self.backend.transaction() as tx:
            rows = await tx.fetch(self.sql.unqueued)  # again under the write lock
            fresh = [(int(r["version"]), r["name"]) for r in rows]
            await tx.execute_batch(self._enqueue_statements(fresh, []))
        self._emit_queued(fresh, "apply")
        return [name for _, name in fresh]

    async def queue(self, ref: str) -> list[str]:
        """Queue ``ref`` for apply, with every earlier migration not applied yet.

        A dead change for one of them is revived: its attempts start again.
        """
        async with self.backend.transaction() as tx:
            states = await _read_status(tx.fetch, self.sql)
            _refuse_if_dirty(states)
            target = await self.find(ref, states)
            if target.state == "applied" and target.queued is None:
                raise MigrationError(f"migration {target.name} is already applied")
            earlier = [s for s in states if s.version <= target.version]
            fresh = [(s.version, s.name) for s in earlier if s.queued is None and s.state != "applied"]
            revived = [s.name for s in earlier if s.state == "dead"]
            await tx.execute_batch(self._enqueue_statements(fresh, revived))
        self._emit_queued(fresh, "apply")
        return [*revived, *(name for _, name in fresh)]

    def _enqueue_statements(
        self, fresh: Sequence[tuple[int, str]], revived: Sequence[str], operation: str = "apply"
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

    def _emit_queued(self, queued: Sequence[tuple[int, str]], operation: str) -> None:
        for version, name in queued:
            self.events.emit(MigrationQueued(name=name, version=version, operation=operation))

    async def revert(
        self, ref: str | None = None, *, to: int | None = None, everything: bool = False
    ) -> RevertResult:
        """Queue reverts, newest first, of the applied migrations the request covers.

        ``ref``: that migration and every applied one after it. ``to``: every
        applied migration with a version above ``to``. ``everything``: all.
        Queued applies of those migrations are cancelled.
        """
        if sum(x is not None and x is not False for x in (ref, to, everything or None)) != 1:
            raise ValueError("give exactly one of ref, to, everything")
        async with self.backend.transaction() as tx:
            states = await _read_status(tx.fetch, self.sql)
            _refuse_if_dirty(states)
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
            to_revert = [
                (s.version, s.name) for s in reversed(covered) if s.state == "applied" and s.queued is None
            ]
            cancelled = [s.name for s in covered if s.queued == "apply"]
            now = self.clock.now()
            statements: list[tuple[str, Sequence[Any]]] = []
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
                    (now_applied, now if now_applied else None, checksum, now, target.version),
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


async def _read_status(fetch: Callable[[str], Awaitable[list[Row]]], sql: _SQL) -> list[MigrationState]:
    rows = await fetch(sql.status)
    heads: dict[str, Row] = {}
    for change in await fetch(sql.open_changes):
        heads.setdefault(change["migration_name"], change)
    return [_state(row, heads.get(row["name"])) for row in rows]


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
