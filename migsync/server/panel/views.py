"""What the panel's pages show, worked out from the store's records (no HTTP, no HTML here).

Each client gets one :class:`Cell` per published migration, in one of four states:

- ``failed``: it reported the migration as not applied, with an error (and how many attempts);
- ``drift``: it applied other content than the published one (a ``--force`` publish);
- ``applied``: it applied the published content;
- ``pending``: it has not reported the migration applied (nor failed) yet.

A client is *at the latest version* when nothing published is pending for it, *behind*
otherwise, and *failing* when a migration failed or drifted: a failing client is also
behind. It is *stale* when it was not seen for :data:`STALE_AFTER` seconds (a client never
seen: registered that long ago).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import attrs

from migsync.core.wire import Drift
from migsync.server.records import FleetEntry, PublishedMigration

__all__ = [
    "STALE_AFTER",
    "Cell",
    "ClientRow",
    "Counts",
    "MigrationRow",
    "client_rows",
    "counts",
    "migration_rows",
    "select",
]

#: A client not seen for this long (a day, in seconds) is stale.
STALE_AFTER = 24 * 3600.0

State = Literal["applied", "pending", "failed", "drift"]


@attrs.frozen
class Cell:
    """One client's status for one published migration."""

    migration: PublishedMigration
    state: State
    error: str | None = None
    attempts: int | None = None
    drift: Drift | None = None

    @property
    def version(self) -> int:
        return self.migration.version


@attrs.frozen
class ClientRow:
    """One client and its cells, in version order."""

    entry: FleetEntry
    cells: tuple[Cell, ...]

    @property
    def client_id(self) -> int:
        return self.entry.client.client_id

    @property
    def name(self) -> str:
        return self.entry.client.name

    @property
    def at_latest(self) -> bool:
        return not self.entry.pending

    @property
    def failing(self) -> bool:
        return bool(self.entry.failed or self.entry.drift)

    def stale(self, now: float) -> bool:
        seen = self.entry.client.last_seen_at
        return now - (seen if seen is not None else self.entry.client.created_at) >= STALE_AFTER


@attrs.frozen
class Counts:
    """The numbers at the top of the fleet page (over every client, whatever the filters)."""

    clients: int
    at_latest: int
    behind: int
    failing: int
    stale: int


@attrs.frozen
class MigrationRow:
    """A published migration and how many clients applied it, failed on it or drifted."""

    migration: PublishedMigration
    applied: int
    failed: int
    drift: int
    pending: int


def _cell(entry: FleetEntry, migration: PublishedMigration) -> Cell:
    version = migration.version
    failure = next((f for f in entry.failed if f.version == version), None)
    drift = next((d for d in entry.drift if d.version == version), None)
    if failure is not None:
        return Cell(migration, "failed", failure.error, failure.attempts, drift)
    if drift is not None:
        return Cell(migration, "drift", drift=drift)
    if version in entry.applied and version not in entry.pending:
        return Cell(migration, "applied")
    return Cell(migration, "pending")


def client_rows(fleet: Iterable[FleetEntry], published: Sequence[PublishedMigration]) -> list[ClientRow]:
    """One row per client, one cell per published migration."""
    return [ClientRow(entry, tuple(_cell(entry, m) for m in published)) for entry in fleet]


def counts(rows: Sequence[ClientRow], now: float) -> Counts:
    return Counts(
        clients=len(rows),
        at_latest=sum(r.at_latest for r in rows),
        behind=sum(not r.at_latest for r in rows),
        failing=sum(r.failing for r in rows),
        stale=sum(r.stale(now) for r in rows),
    )


def select(rows: Iterable[ClientRow], *, failing: bool, stale: bool, now: float) -> list[ClientRow]:
    """The rows the filters keep: both filters on keep the clients that are failing *and* stale."""
    return [r for r in rows if (not failing or r.failing) and (not stale or r.stale(now))]


def migration_rows(rows: Sequence[ClientRow], published: Sequence[PublishedMigration]) -> list[MigrationRow]:
    """Per published migration, how the fleet stands on it."""
    tally: dict[int, dict[str, int]] = {
        m.version: {"applied": 0, "pending": 0, "failed": 0, "drift": 0} for m in published
    }
    for row in rows:
        for cell in row.cells:
            tally[cell.version][cell.state] += 1
    return [MigrationRow(m, **tally[m.version]) for m in published]
