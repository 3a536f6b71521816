"""What the panel's pages show, worked out from the store's records (no HTTP, no HTML here).

Each client gets one :class:`Cell` per published migration, in one of six states, the first
that fits:

- ``dead``: it reported the migration as not applied, failed as often as the client allows;
  nothing retries it until an admin asks for a re-apply;
- ``failed``: it reported the migration as not applied, with an error (and how many attempts);
  the client tries again later;
- ``held``: it does not have the migration applied, and a revert the client carried out
  holds it there (see :func:`hold_of`);
- ``drift``: it applied other content than the published one (a ``--force`` publish);
- ``applied``: it applied the published content;
- ``pending``: it has not reported the migration applied (nor failed) yet.

A client is *at the latest version* when nothing published is pending for it, *behind*
otherwise, and *failing* when a migration failed (dead or not) or drifted: a failing client
is also behind. It is *held* when one of its cells is. It is *stale* when it was not seen
for :data:`STALE_AFTER` seconds (a client never seen: registered that long ago).

A cell also carries the client's *open* request about its migration (``pending``: the client
has not picked it up yet; ``queued``: it is working on it), so a page can say so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import attrs

from migsync.core.clock import iso
from migsync.core.version import Version
from migsync.protocol.wire import Drift
from migsync.server.actions import hold_of
from migsync.server.records import ActionRecord, FleetEntry, PublishedMigration

__all__ = [
    "STALE_AFTER",
    "Cell",
    "ClientRow",
    "Counts",
    "MigrationRow",
    "Problem",
    "ago",
    "client_row",
    "client_rows",
    "counts",
    "hold_of",
    "migration_rows",
    "migration_rows_from",
    "newest",
    "problems",
    "select",
    "short",
    "span",
    "when",
]

#: A client not seen for this long (a day, in seconds) is stale.
STALE_AFTER = 24 * 3600.0

State = Literal["applied", "pending", "failed", "dead", "drift", "held"]
STATES: tuple[State, ...] = ("applied", "pending", "failed", "dead", "drift", "held")


@attrs.frozen
class Cell:
    """One client's status for one published migration."""

    migration: PublishedMigration
    state: State
    error: str | None = None
    attempts: int | None = None
    drift: Drift | None = None
    #: the client's latest open request (pending or queued) about this migration
    request: ActionRecord | None = None
    #: for a held cell, the revert that holds it
    held_by: ActionRecord | None = None

    @property
    def version(self) -> Version:
        return self.migration.version

    @property
    def can_reapply(self) -> bool:
        """A re-apply makes sense: the client does not have it applied and will not retry it soon."""
        return self.state in ("failed", "dead", "held")

    @property
    def can_revert(self) -> bool:
        """A revert makes sense: the client has it applied (with the published content or not)."""
        return self.state in ("applied", "drift")


@attrs.frozen
class ClientRow:
    """One client, its cells in version order, and its requests (newest first)."""

    entry: FleetEntry
    cells: tuple[Cell, ...]
    #: the revert that holds the client (see :func:`hold_of`), or None
    hold: ActionRecord | None = None
    requests: tuple[ActionRecord, ...] = ()

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

    @property
    def held(self) -> bool:
        return any(c.state == "held" for c in self.cells)

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
    held: int
    stale: int


@attrs.frozen
class MigrationRow:
    """A published migration and how many clients stand where on it (one count per cell state)."""

    migration: PublishedMigration
    applied: int
    failed: int
    drift: int
    pending: int
    dead: int = 0
    held: int = 0

    @property
    def not_applied(self) -> int:
        """The clients a re-apply for every client goes to (they reported it not applied)."""
        return self.failed + self.dead + self.held

    @property
    def has_applied(self) -> bool:
        """Whether a revert for every client would reach anyone."""
        return bool(self.applied + self.drift)

    def reach(self, action: str) -> int:
        """How many clients a request for every client would go to: a revert, those that applied
        it (with the published content or not); a re-apply, those that reported it not applied."""
        return self.applied + self.drift if action == "revert" else self.not_applied


def _cell(
    entry: FleetEntry,
    migration: PublishedMigration,
    hold: ActionRecord | None,
    request: ActionRecord | None,
) -> Cell:
    version = migration.version
    failure = next((f for f in entry.failed if f.version == version), None)
    drift = next((d for d in entry.drift if d.version == version), None)
    if failure is not None:
        state: State = "dead" if failure.dead else "failed"
        return Cell(migration, state, failure.error, failure.attempts, drift, request)
    if hold is not None and version >= hold.version and version not in entry.applied:
        return Cell(migration, "held", request=request, held_by=hold)
    if drift is not None:
        return Cell(migration, "drift", drift=drift, request=request)
    if version in entry.applied and version not in entry.pending:
        return Cell(migration, "applied", request=request)
    return Cell(migration, "pending", request=request)


def client_row(
    entry: FleetEntry, published: Sequence[PublishedMigration], requests: Iterable[ActionRecord] = ()
) -> ClientRow:
    """One client's row; ``requests`` are its requests (others' are ignored), in any order."""
    mine = sorted((r for r in requests if r.client_id == entry.client.client_id), key=lambda r: -r.id)
    hold = hold_of(mine)
    open_by_version: dict[Version, ActionRecord] = {}
    for record in mine:  # newest first: the first open one per version wins
        if record.open:
            open_by_version.setdefault(record.version, record)
    cells = tuple(_cell(entry, m, hold, open_by_version.get(m.version)) for m in published)
    return ClientRow(entry, cells, hold, tuple(mine))


def client_rows(
    fleet: Iterable[FleetEntry],
    published: Sequence[PublishedMigration],
    requests: Iterable[ActionRecord] = (),
) -> list[ClientRow]:
    """One row per client, one cell per published migration; ``requests``: every client's."""
    by_client: dict[int, list[ActionRecord]] = {}
    for record in requests:
        by_client.setdefault(record.client_id, []).append(record)
    return [client_row(e, published, by_client.get(e.client.client_id, ())) for e in fleet]


def counts(rows: Sequence[ClientRow], now: float) -> Counts:
    return Counts(
        clients=len(rows),
        at_latest=sum(r.at_latest for r in rows),
        behind=sum(not r.at_latest for r in rows),
        failing=sum(r.failing for r in rows),
        held=sum(r.held for r in rows),
        stale=sum(r.stale(now) for r in rows),
    )


def select(rows: Iterable[ClientRow], *, failing: bool, stale: bool, now: float) -> list[ClientRow]:
    """The rows the filters keep: both filters on keep the clients that are failing *and* stale."""
    return [r for r in rows if (not failing or r.failing) and (not stale or r.stale(now))]


def migration_rows(rows: Sequence[ClientRow], published: Sequence[PublishedMigration]) -> list[MigrationRow]:
    """Per published migration, how the fleet stands on it."""
    tally: dict[Version, dict[str, int]] = {m.version: dict.fromkeys(STATES, 0) for m in published}
    for row in rows:
        for cell in row.cells:
            tally[cell.version][cell.state] += 1
    return [MigrationRow(m, **tally[m.version]) for m in published]


@attrs.frozen
class Problem:
    """Something wrong with a client, as its row and page lead with: ``kind`` one of ``dead``,
    ``failed``, ``drift``, ``held`` (by a revert), ``app`` (held back by its app version)."""

    kind: str
    version: Version
    text: str
    #: the error or detail to show in full on the client's page
    detail: str | None = None


def problems(row: ClientRow) -> list[Problem]:
    """What is wrong with a client, the newest migration first; empty: nothing."""
    out: list[Problem] = []
    for cell in reversed(row.cells):
        if cell.state in ("dead", "failed"):
            times = f" \u00d7{cell.attempts}" if cell.attempts is not None else ""
            what = "dead (waits for a re-apply)" if cell.state == "dead" else "failed"
            out.append(Problem(cell.state, cell.version, f"{cell.version} {what}{times}", cell.error))
        if cell.drift is not None:
            out.append(Problem("drift", cell.version, f"{cell.version} applied with other content (drift)"))
    if row.hold is not None:
        out.append(
            Problem(
                "held",
                row.hold.version,
                f"held from {row.hold.version} by a revert ({row.hold.requested_by}, request {row.hold.id})",
            )
        )
    for version, needs in reversed(row.entry.held_by_app):
        app = row.entry.client.app_version or "none reported"
        out.append(Problem("app", version, f"{version} needs {needs}; its app: {app}"))
    return out


def newest(row: ClientRow, count: int) -> list[Cell | None]:
    """The client's cells for the ``count`` newest published migrations, newest first (None
    where fewer are published)."""
    cells: list[Cell | None] = list(reversed(row.cells[-count:])) if count else []
    return cells + [None] * (count - len(cells))


def migration_rows_from(
    published: Sequence[PublishedMigration],
    tallies: dict[Version, dict[str, int]],
    counted: int,
    held_rows: Sequence[ClientRow],
) -> list[MigrationRow]:
    """:func:`migration_rows` from the store's counts of the clients no revert holds
    (``counted`` of them) and the rows of those a revert holds."""
    exact = {row.migration.version: row for row in migration_rows(held_rows, published)}
    out = []
    for m in published:
        got = tallies.get(m.version, {})
        mine = exact[m.version]
        failed, dead, drift, applied = (got.get(k, 0) for k in ("failed", "dead", "drift", "applied"))
        out.append(
            MigrationRow(
                m,
                applied=applied + mine.applied,
                failed=failed + mine.failed,
                drift=drift + mine.drift,
                pending=counted - failed - dead - drift - applied + mine.pending,
                dead=dead + mine.dead,
                held=mine.held,
            )
        )
    return out


# -- text the templates show (their filters) ---------------------------------------------------


def when(t: float | None) -> str:
    """A moment as ISO 8601 (UTC), or "never"."""
    return iso(t) or "never"


def ago(t: float | None, now: float) -> str:
    """How long before ``now`` a moment was, roughly ("3 h ago"), or "never"."""
    if t is None:
        return "never"
    seconds = max(0, int(now - t))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def span(seconds: float) -> str:
    """A duration, roughly ("1 d", "10 min", "90 s")."""
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if whole >= size and whole % size == 0:
            return f"{whole // size} {unit}"
    if whole >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{whole // 60} min" if whole >= 600 else f"{whole} s"


def short(checksum: str | None) -> str:
    """The first 12 characters of a checksum or key fingerprint (enough to tell them apart)."""
    return checksum[:12] if checksum else ""
