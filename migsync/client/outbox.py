"""The status-report outbox: what this client has to tell the server, kept until the server has it.

The outbox holds one row per migration: the client's latest word on it
(applied, error, attempts, checksum) with a ``revision`` that goes up each
time that word changes, and the ``delivered_revision`` the server last
acknowledged. :meth:`ReportOutbox.stage` writes what changed since the last
stage; :meth:`ReportOutbox.deliver` sends every row whose revision the
server has not acknowledged, and marks it delivered only after the server's
acknowledgement. A report made offline waits in the table; a report whose
acknowledgement was lost is sent again, which the server (idempotent: an
equal report changes nothing) counts once. Intermediate states that were
never delivered are coalesced: the server hears the latest word only.

Only migrations that came from the server are reported: a migration applied
from a local folder is nothing the server published.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from migsync.core.backend import Backend
from migsync.core.clock import Clock
from migsync.core.ledger import MigrationState
from migsync.core.schema import Tables
from migsync.core.version import Version
from migsync.protocol.wire import CHECKSUM, ReportAck, StatusReport

if TYPE_CHECKING:
    from migsync.transports.base import Transport


def report_of(state: MigrationState) -> StatusReport:
    """What the server is told about one migration in ``state``."""
    applied = state.applied_at is not None
    error = state.error if state.state in ("failed", "dead", "dirty") else None
    if state.state == "dirty" and not error:
        error = "stopped half-way outside a transaction; needs 'migsync repair'"
    return StatusReport(state.version, applied, error, state.attempts, state.checksum, state.state == "dead")


def worth_reporting(state: MigrationState) -> bool:
    """A migration that is merely pending (never tried) is no news to the server."""
    return state.applied_at is not None or state.state != "pending" or state.attempts > 0


@attrs.frozen
class Delivery:
    delivered: int
    ack: ReportAck | None = None


class ReportOutbox:
    def __init__(self, backend: Backend, clock: Clock, tables: Tables | None = None) -> None:
        self.backend = backend
        self.clock = clock
        self.t = (tables or backend.tables).reports
        self._sql_rows = f"SELECT version, applied, error, attempts, checksum, dead, revision FROM {self.t}"
        self._sql_undelivered = (
            f"SELECT version, applied, error, attempts, checksum, dead, revision FROM {self.t} "
            "WHERE revision > delivered_revision ORDER BY version"
        )

    async def stage(self, reports: Sequence[StatusReport]) -> int:
        """Record ``reports`` that differ from the outbox's rows; how many did."""
        if not self._changed(await self.backend.fetch(self._sql_rows), reports):
            return 0
        async with self.backend.transaction() as tx:
            rows = {_version(r): r for r in await tx.fetch(self._sql_rows)}  # under the write lock
            changed = self._changed(list(rows.values()), reports)
            now = self.clock.now()
            statements: list[tuple[str, Sequence[Any]]] = []
            for report in changed:
                values = (report.applied, report.error, report.attempts, report.checksum, report.dead, now)
                if report.version in rows:
                    statements.append(
                        (
                            f"UPDATE {self.t} SET applied = $1, error = $2, attempts = $3, checksum = $4, "
                            "dead = $5, changed_at = $6, revision = revision + 1 WHERE version = $7",
                            (*values, report.version.key),
                        )
                    )
                else:
                    statements.append(
                        (
                            f"INSERT INTO {self.t} (version, applied, error, attempts, checksum, dead, "
                            "changed_at, revision) VALUES ($1, $2, $3, $4, $5, $6, $7, 1)",
                            (report.version.key, *values),
                        )
                    )
            await tx.execute_batch(statements)
        return len(changed)

    @staticmethod
    def _changed(rows: Sequence[Any], reports: Sequence[StatusReport]) -> list[StatusReport]:
        known = {_version(r): _report(r) for r in rows}
        return [r for r in reports if known.get(r.version) != r and CHECKSUM.fullmatch(r.checksum)]

    async def undelivered(self) -> list[tuple[StatusReport, int]]:
        """Every report the server has not acknowledged, with its revision, in version order."""
        return [(_report(r), int(r["revision"])) for r in await self.backend.fetch(self._sql_undelivered)]

    async def deliver(self, transport: Transport) -> Delivery:
        """Send what the server lacks; mark it delivered once acknowledged.

        Transport errors propagate with the rows still undelivered.
        """
        pending = await self.undelivered()
        if not pending:
            return Delivery(0)
        ack = await transport.report([report for report, _ in pending])
        now = self.clock.now()
        async with self.backend.transaction() as tx:
            # ``delivered_revision < $1``: a newer word staged meanwhile stays undelivered.
            await tx.execute_batch(
                [
                    (
                        f"UPDATE {self.t} SET delivered_revision = $1, delivered_at = $2 "
                        "WHERE version = $3 AND delivered_revision < $1",
                        (revision, now, report.version.key),
                    )
                    for report, revision in pending
                ]
            )
        return Delivery(len(pending), ack)

    async def count_undelivered(self) -> int:
        rows = await self.backend.fetch(
            f"SELECT COUNT(*) AS n FROM {self.t} WHERE revision > delivered_revision"
        )
        return int(rows[0]["n"])


def _version(row: Any) -> Version:
    return Version.from_key(row["version"])


def _report(row: Any) -> StatusReport:
    return StatusReport(
        _version(row),
        bool(row["applied"]),
        row["error"],
        int(row["attempts"]),
        row["checksum"],
        bool(row["dead"]),
    )
