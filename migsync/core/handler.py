"""``MigrationHandler``: what a queued migration change means to the processor.

It reads each batch of queued changes with their migrations' content (one
query per batch, :meth:`MigrationHandler.head`), verifies each checksum in
Python, applies or
reverts it inside the processor's transaction, or, for a script that must run
outside a transaction, one statement at a time with the database marked dirty
until it finishes. See :mod:`migsync.core.processor` for the protocol.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from migsync.core.backend import Row
from migsync.core.clock import Clock, SystemClock
from migsync.core.errors import (
    ChecksumMismatch,
    DirtyDatabase,
    PermanentFailure,
    StatementError,
    TransactionLost,
    UnknownMigration,
)
from migsync.core.events import (
    Event,
    MigrationApplied,
    MigrationDead,
    MigrationDirty,
    MigrationFailed,
    MigrationReverted,
)
from migsync.core.history_sql import history_sql
from migsync.core.migration import ANY_DIALECT, origins_lookup
from migsync.core.processor import Loaded
from migsync.core.schema import DEFAULT_TABLES, Tables
from migsync.core.version import Version
from migsync.core.work import Execute, Fetch, Script, Work

_NO_SCRIPT: dict[str, Any] = {"sql": "", "autocommit": False}

#: Content longer than this (characters) is not read with the batch, but by its change alone.
_INLINE_CONTENT = 1 << 20

_REPAIR_HINT = (
    "check by hand whether it took effect, then run "
    "'migsync repair --db URL {name} --applied' or '... --not-applied'"
)


def dirty_message(name: str) -> str:
    return (
        f"the database is dirty: migration {name} ran outside a transaction and did not finish "
        f"(or is running right now in another process); nothing else runs until it is repaired: "
        + _REPAIR_HINT.format(name=name)
    )


class _Step:
    """One migration change, loaded: what to run and how to record it.

    A plain class, not attrs: one is made per change the processor runs. Where the
    script came from is decoded only when a message needs it (an error).
    """

    __slots__ = (
        "_dialect", "_origins", "applying", "checksum", "done", "key", "label", "name", "sql", "version",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        key: str,
        label: str,
        checksum: str,
        applying: bool,
        sql: str,
        done: bool,
        origins: str,
        dialect: str,
    ):
        self.name = name
        self.key = key  # the version as stored: what the bookkeeping writes, without recomputing it
        self.version = Version.from_key(key)
        self.label = label
        self.checksum = checksum
        self.applying = applying
        self.sql = sql
        self.done = done
        self._origins = origins  # the stored JSON of the migration's origins ("" for none)
        self._dialect = dialect

    @property
    def origin(self) -> tuple[str, int] | None:
        """The script's file and first line, if known."""
        return _origin(self._origins, self.applying, self._dialect)


def _origin(origins: str | None, applying: bool, dialect: str) -> tuple[str, int] | None:
    """The file and first line of the script a change runs, from its migration's stored origins."""
    found = origins_lookup(json.loads(origins), "up" if applying else "down", dialect) if origins else None
    return (found[0], int(found[1])) if found else None


class MigrationHandler:
    """Applies or reverts the migration a queued change names."""

    changes_schema = True

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
        self.sql = history_sql(tables)
        self._upsert_status = self.sql.replace_status if dialect == "sqlite" else self.sql.upsert_status
        self.queue = tables.queue
        #: The processor's claim also pins the migration's checksum as the batch read it: content
        #: recorded anew after the read (``Ledger.record``) makes the claim fail, never run stale.
        self.claim_pin = (
            f"(SELECT m.checksum FROM {tables.migrations} m WHERE m.name = {tables.queue}.migration_name)",
            "checksum",
        )
        #: How many changes are open, and (in a batch's last commit) the statement that moves
        #: the bound the queries start from up to the first open change: see
        #: ``HistorySQL.open_from``.
        open_from = self.sql.open_from
        self.remaining = (
            f"SELECT COUNT(*) AS n FROM {tables.queue} WHERE seq >= {open_from} AND processed = FALSE"
        )
        self.settle = self.sql.settle_open_from

    def head(self, limit: int) -> str:
        """The batch query: the open changes in order, each with its migration (content included)."""
        t = self.sql.t
        return (
            "SELECT q.seq, q.id, q.migration_name, q.operation, q.attempts, q.max_attempts, "
            "q.next_attempt_at, q.error, m.version, m.checksum, m.origins, s.applied, "
            f"CASE WHEN length(m.content) <= {_INLINE_CONTENT} THEN m.content END AS content "
            f"FROM {t.queue} q LEFT JOIN {t.migrations} m ON m.name = q.migration_name "
            f"LEFT JOIN {t.status} s ON s.version = m.version "
            f"WHERE q.seq >= {self.sql.open_from} AND q.processed = FALSE ORDER BY q.seq LIMIT {int(limit)}"
        )

    def describe(self, change: Row) -> str:
        return f"{change['operation']} {change['migration_name']}"

    def check(self) -> Work[None]:
        rows: list[Row] = yield Fetch(self.sql.dirty)
        if rows:
            raise DirtyDatabase(dirty_message(rows[0]["migration_name"]))

    def load(self, change: Row) -> Work[Loaded]:
        # The batch read the migration with its change (``head``); the dirty state was checked
        # once for the batch (``check``): within a pass nothing else runs a migration.
        name = change["migration_name"]
        row = change
        if row["checksum"] is None:
            raise UnknownMigration(f"migration {name} is queued but not recorded on this database")
        content = row["content"]
        if content is None:  # too large to read with the batch
            rows: list[Row] = yield Fetch(
                f"SELECT content FROM {self.sql.t.migrations} WHERE name = $1", (name,)
            )
            content = rows[0]["content"]
        applying = change["operation"] == "apply"
        # The stored content is the canonical JSON the checksum covers: one
        # hash proves it is what was recorded (and signed), untouched since.
        if hashlib.sha256(content.encode()).hexdigest() != row["checksum"]:
            raise ChecksumMismatch(
                f"migration {name}: stored content does not match its checksum "
                f"{row['checksum'][:12]}; the database's copy was modified"
            )
        scripts = json.loads(content)["up" if applying else "down"]
        script = scripts.get(self.dialect) or scripts.get(ANY_DIALECT) or _NO_SCRIPT
        # Already in the requested state: queued twice by racing processes. Never run twice.
        done = bool(row["applied"]) == applying
        outside = (script["autocommit"] or not self.transactional_ddl) and not done
        # Imported here, not at the top: a no-op ``migsync apply`` loads no script (start-up).
        from migsync.core import script_check

        try:
            # Checked again here, whatever the loader did: a migration may come from a server's
            # bundle or an older publisher. A wrapper BEGIN/COMMIT is blanked out.
            sql = "" if done else script_check.runnable(script["sql"], self.dialect, autocommit=outside)
        except script_check.ScriptRefused as exc:
            origin = _origin(row["origins"], applying, self.dialect)
            where = f"{origin[0]}:{origin[1] + exc.line - 1}" if origin else f"line {exc.line}"
            raise PermanentFailure(f"migration {name}, {where}: {exc}") from None
        step = _Step(
            name,
            row["version"],
            self.describe(change),
            row["checksum"],
            applying,
            sql,
            done,
            row["origins"] or "",
            self.dialect,
        )
        return Loaded(step, outside_transaction=outside)

    def handle(self, change: Row, loaded: Loaded) -> Work[Event | None]:
        step: _Step = loaded.data
        if step.done:
            return None
        started = time.perf_counter()
        yield Script(step.sql, label=step.label)
        return (yield from self._applied(change, step, time.perf_counter() - started))

    def explain(self, change: Row, loaded: Loaded, error: Exception) -> Exception:
        step: _Step = loaded.data
        if isinstance(error, TransactionLost):  # what ran before it committed, without the bookkeeping
            located = error.in_migration(step.name, step.origin)
            return DirtyDatabase(f"{located}; {_REPAIR_HINT.format(name=step.name)}")
        if isinstance(error, StatementError):
            return error.in_migration(step.name, step.origin)
        return error

    def begin_outside(self, change: Row, loaded: Loaded) -> Work[None]:
        step: _Step = loaded.data
        attempts, now = change["attempts"] + 1, self.clock.now()
        yield Execute(self.sql.mark_dirty, (step.name, step.key, not step.applying, attempts, now))

    def handle_outside(self, change: Row, loaded: Loaded) -> Work[None]:
        step: _Step = loaded.data
        try:
            yield Script(step.sql, each_commits=True, label=step.label)
        except StatementError as exc:
            done = exc.committed if exc.committed is not None else exc.index
            if done:  # statements before it have committed: only a person can tell what now
                committed = "statement 1" if done == 1 else f"statements 1-{done}"
                located = exc.in_migration(step.name, step.origin)
                raise DirtyDatabase(
                    f"{located}; it runs outside a transaction and {committed} "
                    f"had already committed: {_REPAIR_HINT.format(name=step.name)}"
                ) from exc
            raise exc.in_migration(step.name, step.origin) from exc

    def finish_outside(self, change: Row, loaded: Loaded, duration: float) -> Work[Event | None]:
        return (yield from self._applied(change, loaded.data, duration))

    def _applied(self, change: Row, step: _Step, duration: float) -> Work[Event]:
        now = self.clock.now()
        yield Execute(
            self._upsert_status,
            (
                step.name,
                step.key,
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
        if "version" in change:  # read with the batch
            rows: list[Row] = [] if change["version"] is None else [change]
        else:
            rows = yield Fetch(f"SELECT version FROM {self.sql.t.migrations} WHERE name = $1", (name,))
        version = Version.from_key(rows[0]["version"]) if rows else Version.parse(0)
        if rows:
            reverting = change["operation"] == "revert"
            now = self.clock.now()
            yield Execute(self.sql.failed_status, (name, version.key, reverting, error, attempts, dirty, now))
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
