"""What the server's admin asks of this client: re-apply a migration, or revert one.

An admin asks from the panel (or ``migsync actions request``); the request
reaches the client with its next fetch (:attr:`Offer.actions
<migsync.protocol.wire.Offer.actions>`), and :class:`ClientActions` keeps it in
``migsync_actions`` by the server's id, so each request is carried out once
however often it arrives. Carrying one out only queues work; the processor
does it, in order, like any other migration change:

``revert V``
    Hold the client at V (nothing from V on is queued again, see
    :meth:`Ledger.hold <migsync.core.ledger.Ledger.hold>`) and queue the
    revert of every applied migration from V on, newest first, in one
    transaction. Queued applies among them are cancelled. Without the hold,
    the next sync would queue them again, since the server still publishes
    them. If one of them has no down script, nothing is done and the answer
    is ``failed``, naming each such migration.
``reapply V``
    Lift the hold and queue V (and any earlier migration not applied). A dead
    change is revived: its attempts start again; a failed one waiting for its
    backoff runs at once.

The client's answer goes back like a status report: ``queued`` once the
request is in the queue, then ``done`` or ``failed`` (with why) once the
processor settled it; each answer is kept until the server acknowledged it
(``revision`` / ``delivered_revision``, as in :mod:`migsync.client.outbox`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from migsync.core.backend import Backend
from migsync.core.clock import Clock
from migsync.core.errors import MigsyncError
from migsync.core.ledger import Ledger, MigrationState
from migsync.core.version import Version
from migsync.protocol.wire import ActionRequest, ActionResult

if TYPE_CHECKING:
    from migsync.transports.base import Transport

log = logging.getLogger("migsync.actions")

#: The longest detail sent with an answer (the server refuses more than 64 KiB).
MAX_DETAIL = 16 * 1024

_COLUMNS = "id, action, version, requested_by, requested_at, received_at, state, detail, changed_at, revision"


class ClientActions:
    """The admin's requests to this client database, and its answers."""

    def __init__(self, ledger: Ledger, clock: Clock) -> None:
        self.ledger = ledger
        self.backend: Backend = ledger.backend
        self.clock = clock
        self.t = self.backend.tables.actions

    async def receive(self, requests: Sequence[ActionRequest]) -> int:
        """Keep the requests this client has not seen yet; how many were new.

        A request seen before is not carried out again; but the server offers only requests
        it has no answer to, so the answer it should have is sent again.
        """
        if not requests:
            return 0
        known = {int(r["id"]) for r in await self.backend.fetch(f"SELECT id FROM {self.t}")}
        fresh = [r for r in requests if r.id not in known]
        again = [r.id for r in requests if r.id in known]
        now = self.clock.now()
        async with self.backend.transaction() as tx:
            await tx.execute_batch(
                [
                    (
                        f"INSERT INTO {self.t} (id, action, version, requested_by, requested_at, "
                        "received_at, state, changed_at) VALUES ($1, $2, $3, $4, $5, $6, 'received', $6) "
                        "ON CONFLICT (id) DO NOTHING",
                        (r.id, r.action, Version.parse(r.version).key, r.requested_by, r.requested_at, now),
                    )
                    for r in fresh
                ]
                + [(f"UPDATE {self.t} SET delivered_revision = 0 WHERE id = $1", (i,)) for i in again]
            )
        for request in fresh:
            log.info(
                "the server asks to %s version %s (action %d, by %s)",
                request.action,
                request.version,
                request.id,
                request.requested_by,
            )
        return len(fresh)

    async def refuse(self, refused: Sequence[tuple[int, str, str, str]]) -> None:
        """Keep the refused requests ``(id, action, version, reason)`` as ``failed`` answers to
        deliver, so the server hears of the refusal. An id this client knows keeps its answer: a
        tampered copy of a request it received must not change what it said about the real one."""
        if not refused:
            return
        now = self.clock.now()
        async with self.backend.transaction() as tx:
            await tx.execute_batch(
                [
                    (
                        f"INSERT INTO {self.t} (id, action, version, requested_by, requested_at, "
                        "received_at, state, detail, changed_at, revision) "
                        "VALUES ($1, $2, $3, '', $4, $4, 'failed', $5, $4, 1) ON CONFLICT (id) DO NOTHING",
                        (action_id, action, Version.parse(version).key, now, _clip(f"refused: {reason}")),
                    )
                    for action_id, action, version, reason in refused
                ]
            )

    async def busy(self) -> bool:
        """Whether any request waits to be carried out, settled or answered (one small read: a
        sync with nothing asked of it pays no more)."""
        rows = await self.backend.fetch(
            f"SELECT id FROM {self.t} WHERE state IN ('received', 'queued') "
            "OR revision > delivered_revision LIMIT 1"
        )
        return bool(rows)

    async def carry_out(self) -> int:
        """Queue the work of every request received and not carried out yet, oldest first."""
        rows = await self.backend.fetch(
            f"SELECT {_COLUMNS} FROM {self.t} WHERE state = 'received' ORDER BY id"
        )
        for row in rows:
            try:
                state, detail = await self._carry_out(row["action"], Version.from_key(row["version"]))
            except MigsyncError as exc:  # a dirty database, a migration this client lacks
                state, detail = "failed", str(exc)
            await self._answer(int(row["id"]), state, detail)
        return len(rows)

    async def _carry_out(self, action: str, version: Version) -> tuple[str, str | None]:
        if action == "revert":
            # The hold and the reverts in one transaction: a crash cannot leave reverts queued
            # without the hold (the next sync would queue the applies again), and a refused
            # revert (a migration without a down script) leaves no hold behind either.
            result = await self.ledger.revert(since=version, hold_from=version)
            if not result.reverting:
                return "done", f"nothing from version {version} on is applied here; held at {version}"
            return "queued", f"reverting {', '.join(result.reverting)}"
        states = await self.ledger.status()
        target = next((s for s in states if s.version == version), None)
        if target is None:
            return "failed", f"version {version} is not known here: the server's migration has not arrived"
        await self.ledger.release_hold()
        if target.state == "applied" and target.queued is None:
            return "done", f"{target.name} is applied already"
        queued = await self.ledger.queue(target.name, now=True)
        return "queued", f"queued {', '.join(queued)}" if queued else f"{target.name} is queued already"

    async def settle(self) -> int:
        """Mark the queued requests whose work the processor finished as done or failed."""
        rows = await self.backend.fetch(f"SELECT {_COLUMNS} FROM {self.t} WHERE state = 'queued' ORDER BY id")
        if not rows:
            return 0
        states = await self.ledger.status()
        settled = 0
        for row in rows:
            outcome = _outcome(row["action"], Version.from_key(row["version"]), states)
            if outcome is not None:
                await self._answer(int(row["id"]), *outcome)
                settled += 1
        return settled

    async def _answer(self, action_id: int, state: str, detail: str | None) -> None:
        detail = None if detail is None else _clip(detail)
        async with self.backend.transaction() as tx:
            await tx.execute(
                f"UPDATE {self.t} SET state = $1, detail = $2, changed_at = $3, revision = revision + 1 "
                "WHERE id = $4",
                (state, detail, self.clock.now(), action_id),
            )

    async def undelivered(self) -> list[tuple[ActionResult, int]]:
        """Every answer the server has not acknowledged, with its revision."""
        rows = await self.backend.fetch(
            f"SELECT id, state, detail, revision FROM {self.t} "
            "WHERE revision > delivered_revision AND state <> 'received' ORDER BY id"
        )
        return [(ActionResult(int(r["id"]), r["state"], r["detail"]), int(r["revision"])) for r in rows]

    async def deliver(self, transport: Transport) -> int:
        """Send the answers the server lacks; mark them delivered once acknowledged.

        Transport errors propagate with the answers still undelivered. An id the server
        does not know (its store was rebuilt) is marked delivered: there is no one to tell.
        An answer the server neither recorded nor calls unknown stays for the next sync.
        """
        pending = await self.undelivered()
        if not pending:
            return 0
        ack = await transport.report_actions([result for result, _ in pending])
        for unknown in ack.unknown:
            log.warning("the server does not know action %d any more; its answer is dropped", unknown)
        taken = set(ack.recorded) | set(ack.unknown)
        delivered = [(result, revision) for result, revision in pending if result.id in taken]
        if delivered:
            async with self.backend.transaction() as tx:
                await tx.execute_batch(
                    [
                        (
                            f"UPDATE {self.t} SET delivered_revision = $1 "
                            "WHERE id = $2 AND delivered_revision < $1",
                            (revision, result.id),
                        )
                        for result, revision in delivered
                    ]
                )
        return len(delivered)

    async def requests(self) -> list[dict[str, Any]]:
        """Every request this client received, newest first (for status views)."""
        rows = await self.backend.fetch(
            f"SELECT {_COLUMNS}, delivered_revision FROM {self.t} ORDER BY id DESC"
        )
        return [{**r, "version": Version.from_key(r["version"]).text} for r in rows]


def _clip(detail: str) -> str:
    """A long error cut to :data:`MAX_DETAIL` (the server takes 64 KiB)."""
    return detail if len(detail) <= MAX_DETAIL else detail[: MAX_DETAIL - 3] + "..."


def _outcome(
    action: str, version: Version, states: Sequence[MigrationState]
) -> tuple[str, str | None] | None:
    """``(state, detail)`` once the work of a queued request is over, None while it is not."""
    if action == "revert":
        covered = [s for s in states if s.version >= version]
        dead = next((s for s in covered if s.state == "dead" and s.queued == "revert"), None)
        if dead is not None:
            return "failed", f"the revert of {dead.name} failed: {dead.error}"
        dirty = next((s for s in covered if s.state == "dirty"), None)
        if dirty is not None:
            return "failed", f"{dirty.name} stopped half-way; it needs 'migsync repair'"
        if any(s.applied_at is not None or s.queued == "revert" for s in covered):
            return None
        return "done", f"reverted; held at version {version}"
    target = next((s for s in states if s.version == version), None)
    if target is None:
        return "failed", f"version {version} is not known here any more"
    if target.state == "applied" and target.queued is None:
        return "done", f"{target.name} applied"
    if target.state == "dead":
        return "failed", f"{target.name} failed again: {target.error}"
    if target.state == "dirty":
        return "failed", f"{target.name} stopped half-way; it needs 'migsync repair'"
    if target.queued is None:  # reverted or cancelled since, by someone else
        return "failed", f"{target.name} is no longer queued"
    return None
