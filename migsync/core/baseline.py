"""A baseline: migrations recorded as applied without running them.

A database that another tool (or a person) already migrated has the schema
of some migrations already. :func:`mark_applied` records those migrations in
migsync's history exactly as the processor records one it applied (the
migration in ``client_migration``, an applied row with its checksum in
``client_migration_status``), runs none of their scripts, and leaves every
later one pending, so that ``migsync apply`` runs only those.

It refuses, before writing anything, what would make the history lie:

* a migration migsync already applied with other content (checksum);
* a migration that is dirty, or has a change queued, in migsync's history;
* a new applied migration older than one migsync applied already (migrations
  apply in version order only); with ``exact`` (adopting another tool's
  state), also a migration migsync applied that is not in the set.

A migration already applied with the same content is left as it is, so a
baseline runs again without effect. Nothing else is written on a refusal or
a dry run: not even migsync's bookkeeping tables, on a database that has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from migsync.core.backend import Backend, Row
from migsync.core.clock import Clock, SystemClock
from migsync.core.errors import BackendError, ChecksumMismatch, MigrationError
from migsync.core.handler import dirty_message
from migsync.core.history_sql import HistorySQL
from migsync.core.ledger import Ledger
from migsync.core.migration import Migration
from migsync.core.schema import SCHEMA_VERSION
from migsync.core.version import Version


@attrs.frozen
class BaselineResult:
    """What a baseline recorded (or, on a dry run, would record)."""

    recorded: list[Migration]  # marked applied now
    already: list[Migration]  # migsync had them applied with the same content: left as they were
    dry_run: bool = False
    #: the folder's other migrations that migsync has not applied: 'migsync apply' runs them
    pending: list[Migration] = attrs.Factory(list)

    @property
    def version(self) -> Version | None:
        """The newest versioned migration of the baseline, if any."""
        versions = [m.version for m in [*self.recorded, *self.already] if not m.repeatable]
        return max(versions, default=None)

    def to_json(self) -> dict[str, Any]:
        version = self.version
        return {
            "version": None if version is None else version.text,
            "recorded": [m.name for m in self.recorded],
            "already_applied": [m.name for m in self.already],
            "pending": [m.name for m in self.pending],
            "dry_run": self.dry_run,
        }


def up_to(migrations: Sequence[Migration], version: Version, where: str) -> list[Migration]:
    """The versioned migrations of ``migrations`` up to and including ``version``, which must be
    one of theirs (``where`` names the folder in the refusal)."""
    versioned = [m for m in migrations if not m.repeatable]
    if not any(m.version == version for m in versioned):
        if not versioned:
            raise MigrationError(f"version {version} is not a migration in {where}: it has no migrations")
        ordered = sorted(versioned, key=lambda m: m.version)
        below = [m.name for m in ordered if m.version < version][-1:]
        above = [m.name for m in ordered if m.version > version][:1]
        raise MigrationError(
            f"version {version} is not a migration in {where} (nearest: {' and '.join(below + above)}); "
            "a baseline ends on a migration the folder has"
        )
    return [m for m in versioned if m.version <= version]


async def mark_applied(
    backend: Backend,
    migrations: Sequence[Migration],
    *,
    clock: Clock | None = None,
    exact: bool = False,
    dry_run: bool = False,
    folder: Sequence[Migration] = (),
) -> BaselineResult:
    """Record ``migrations`` as applied on the open ``backend``, running none of them.

    See the module docstring for what is refused. ``exact``: ``migrations`` is
    the whole applied state (adopting another tool's), so a migration migsync
    applied outside it is refused too. ``folder``: every migration of the
    folder, to tell which stay pending (:attr:`BaselineResult.pending`).
    """
    ledger = Ledger(backend, clock=clock or SystemClock())
    sql = ledger.sql
    layout = await _layout(backend, sql)
    rows: list[Row] = []
    queued: set[str] = set()
    if layout is not None:  # else no migsync history on this database
        if layout < SCHEMA_VERSION:
            await backend.ensure_schema()  # an older layout: upgraded as any migsync command would
        rows, queued = await _history(backend.fetch, sql)
    result = _plan(rows, queued, migrations, exact)
    marked = {m.name for m in migrations} | {r["name"] for r in rows if r["applied"]}
    result = attrs.evolve(result, dry_run=dry_run, pending=[m for m in folder if m.name not in marked])
    if dry_run or not result.recorded:
        return result
    await backend.ensure_schema()
    async with backend.transaction() as tx:
        # Again under the write lock: another process may have written history meanwhile.
        recorded = _plan(*await _history(tx.fetch, sql), migrations, exact).recorded
        await ledger.record_in(tx, recorded)
        # A repeatable migration's version is where the ledger placed it: read them back.
        placed = {
            r["name"]: r["version"] for r in await tx.fetch(f"SELECT name, version FROM {sql.t.migrations}")
        }
        now = ledger.clock.now()
        await tx.execute_batch(
            [(sql.upsert_status, (m.name, placed[m.name], True, now, m.checksum, 0, now)) for m in recorded]
        )
    return attrs.evolve(result, recorded=recorded)


async def _layout(backend: Backend, sql: HistorySQL) -> int | None:
    """The layout of migsync's bookkeeping tables here; None when there are none."""
    try:
        rows = await backend.fetch(f"SELECT value FROM {sql.t.meta} WHERE key = 'schema_version'")
    except BackendError:
        return None
    return int(rows[0]["value"]) if rows else None


async def _history(fetch: Any, sql: HistorySQL) -> tuple[list[Row], set[str]]:
    """migsync's recorded migrations, and the names with a change queued."""
    rows = await fetch(sql.status)
    queued = {r["migration_name"] for r in await fetch(sql.open_changes)}
    return rows, queued


def _plan(rows: list[Row], queued: set[str], migrations: Sequence[Migration], exact: bool) -> BaselineResult:
    by_version = {Version.from_key(r["version"]): r for r in rows}
    by_name = {r["name"]: r for r in rows}
    wanted = {m.name for m in migrations}
    recorded: list[Migration] = []
    already: list[Migration] = []
    for migration in migrations:
        # A repeatable migration's version is the ledger's to place: it is found by name.
        row = by_name.get(migration.name) if migration.repeatable else by_version.get(migration.version)
        if row is None:
            recorded.append(migration)
            continue
        if row["dirty"]:
            raise MigrationError(f"migsync's history here: {dirty_message(row['name'])}")
        if row["name"] in queued:
            raise MigrationError(
                f"migsync's history here has a change queued for {row['name']}: let it run "
                "('migsync process') or revert it first; nothing was recorded"
            )
        if not row["applied"]:
            recorded.append(migration)
        elif row["checksum"] != migration.checksum or row["name"] != migration.name:
            raise ChecksumMismatch(
                f"migsync's history here has {row['name']} applied with checksum {row['checksum'][:12]}, "
                f"but {migration.source or 'the folder'} has {migration.name} with "
                f"{migration.checksum[:12]}; nothing was recorded: an applied migration must not change"
            )
        else:
            already.append(migration)
    applied = {v: r for v, r in by_version.items() if r["applied"] and r["name"] not in wanted}
    if exact and applied:
        names = ", ".join(r["name"] for _, r in sorted(applied.items()))
        raise MigrationError(
            f"migsync's history here has {names} applied, which the other tool's history does not; "
            "the two disagree: nothing was recorded"
        )
    newest = max(applied, default=None)
    late = [m.name for m in recorded if not m.repeatable and newest is not None and m.version < newest]
    if late and newest is not None:
        raise MigrationError(
            f"migsync's history here has {applied[newest]['name']} applied, after {', '.join(late)}, "
            "which it has not; migrations apply in version order only: nothing was recorded"
        )
    return BaselineResult(recorded, already)
