"""One sync of a client with its server: fetch, verify, store, queue, process, report.

::

    async with Client.connect("sqlite:///app.db") as client, HttpTransport(url, token=t) as transport:
        result = await Syncer(client, transport, load_public_keys(["server.pub"])).sync()

The steps, and what each does when something goes wrong:

1. **Fetch** the pending migrations (with the ETag of the last full answer).
   A server that cannot be reached is no failure of the client: it goes on
   with what it has (``result.offline`` says why) and catches up later.
2. **Verify** the answer's signed manifest (:mod:`migsync.protocol.manifest`):
   signed by a trusted key, its serial not older than the last one accepted
   (else nothing is stored), every version it lists offered or already in
   this database (a withheld one, and everything after it, is refused).
   Then each offered migration (:mod:`migsync.protocol.verify`). The first
   one that fails is refused and reported, and nothing from it on is stored:
   migrations apply in version order, so a later one must wait for it.
   A migration this client applied with other content is refused as drift.
3. **Store** the verified migrations with their signatures and queue them.
4. **Process** the queue: the same processor pass as ``migsync apply``.
5. **Report**: stage this client's word on every migration from the server
   in the outbox (:mod:`migsync.client.outbox`) and deliver what the server lacks.

An offer also carries what the server's admin asked of this client (re-apply
or revert a migration, :mod:`migsync.client.actions`), each signed for this
client by the server's request key; those that do not verify under a trusted
request key are refused and answered ``failed``. The others are kept
with the migrations (step 3), queued before the pending migrations (so a
revert's hold is in place first), settled after the pass, and answered with
the reports (step 5).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from migsync.client.actions import ClientActions
from migsync.client.outbox import ReportOutbox, report_of, worth_reporting
from migsync.client.push import EntityChangeHandler
from migsync.core.errors import MigsyncError, ServerRefused, ServerUnavailable, SignatureError, TransportError
from migsync.core.ledger import MigrationState
from migsync.core.migration import Migration
from migsync.core.processor import ChangesProcessor, PassResult
from migsync.core.sync_events import MigrationRefused, SyncCompleted
from migsync.core.version import Version
from migsync.protocol.manifest import accept_serial, check_offers, last_serial, verify_manifest
from migsync.protocol.signing import TrustedKey, verify_request
from migsync.protocol.verify import verify_offer
from migsync.protocol.wire import CHECKSUM, ActionRequest, Offer, OfferedMigration, StatusReport

if TYPE_CHECKING:
    from migsync.core.client import Client
    from migsync.core.plugins import Plugins
    from migsync.transports.base import Transport

log = logging.getLogger("migsync.sync")


def build_transport(
    plugins: Plugins,
    server_url: str,
    *,
    client_id: str,
    token: str | None,
    timeout: float,
    retries: int,
    reports_dir: str | None = None,
    app_version: str | None = None,
    long_poll: float | None = None,
) -> Transport:
    """The transport for ``server_url`` (chosen by its scheme), built and checked against its contract.

    ``reports_dir`` (the file drop's read-only case), ``app_version`` (HTTP) and ``long_poll``
    (seconds a fetch may wait for a change: HTTP) go only to a transport that takes them; one
    that does not is a
    :class:`~migsync.core.errors.ConfigError`, not a traceback.
    """
    from migsync.core.errors import ConfigError

    spec = plugins.transport_for_url(server_url)
    extra: dict[str, Any] = {"reports": reports_dir} if reports_dir else {}
    if app_version is not None:  # the HTTP transport sends it (Migsync-App-Version)
        extra["app_version"] = app_version
    if long_poll:
        extra["long_poll"] = long_poll
    try:
        transport: Transport = plugins.build(
            plugins.transports,
            spec,
            server_url,
            client_id=str(client_id),
            token=token,
            timeout=timeout,
            retries=retries,
            **extra,
        )
    except TypeError as exc:
        raise ConfigError(f"the {spec.name} transport does not take {sorted(extra)}: {exc}") from None
    return transport


_ETAG_KEY = "server_etag"
#: Refusal kinds that are no failure: a migration that waits, nothing wrong with it.
_NOT_FAILURES = ("waiting", "unsent")


@attrs.frozen
class Refusal:
    """A migration the server offered that this client did not store."""

    version: Version
    name: str
    reason: str
    #: "signature" (unsigned, badly signed or malformed), "drift" (applied here with other
    #: content), "order" (older than one applied here), "waiting" (after a refused or withheld
    #: one), or, against the signed manifest (:func:`migsync.protocol.manifest.check_offers`),
    #: "withheld", "unlisted", "withdrawn" or "unsent" (listed, not sent yet: no error), or
    #: "manifest" (the manifest itself was refused)
    kind: str


@attrs.frozen
class RefusedRequest:
    """An admin's request this client did not carry out: it was not signed for this client under
    a request key it trusts. It is answered ``failed`` to the server."""

    id: int
    action: str
    version: str
    #: the whole refusal, naming the request: "request 4 (revert version 1): the signature ..."
    reason: str


@attrs.frozen
class SyncResult:
    server: str
    run: PassResult
    #: why the server could not be reached (the client worked offline), or None
    offline: str | None = None
    #: migrations the server offered (None: unchanged since the last sync, or offline)
    offered: int | None = None
    stored: tuple[str, ...] = ()
    refused: tuple[Refusal, ...] = ()
    #: reports the server acknowledged in this sync
    delivered: int = 0
    #: reports still in the outbox (the server has not acknowledged them)
    undelivered: int = 0
    #: why reports could not be delivered, if they could not
    report_error: str | None = None
    #: the pass over the entity changes (None: not run, the server could not be reached)
    changes: PassResult | None = None
    #: entity changes the server took in this sync
    pushed: int = 0
    #: admin requests (re-apply, revert) that arrived in this sync
    actions_received: int = 0
    #: answers to admin requests the server acknowledged in this sync
    actions_answered: int = 0
    #: admin requests refused in this sync (not signed for this client under a trusted request key)
    refused_actions: tuple[RefusedRequest, ...] = ()
    #: why the answer's signed manifest was refused (nothing offered was stored), or None
    manifest_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        run = self.run
        return {
            "server": self.server,
            "ok": self.ok,
            "offline": self.offline,
            "offered": self.offered,
            "stored": list(self.stored),
            "refused": [attrs.asdict(r) for r in self.refused],
            "applied": [o.label for o in run.processed if o.ok],
            "failed": None
            if (bad := run.failure or run.blocked) is None
            else {"change": bad.label, "error": bad.error, "attempts": bad.attempts, "dead": bad.dead},
            "remaining": run.remaining,
            "delivered": self.delivered,
            "undelivered": self.undelivered,
            "report_error": self.report_error,
            "changes": None if self.changes is None else _changes_json(self.changes, self.pushed),
            "actions": {"received": self.actions_received, "answered": self.actions_answered},
            "refused_actions": [attrs.asdict(r) for r in self.refused_actions],
            "manifest_error": self.manifest_error,
        }

    @property
    def ok(self) -> bool:
        """Nothing failed: the server was reached, no migration or request was refused, the pass
        was clean."""
        return (
            not self.refused_actions
            and self.manifest_error is None
            and self.run.ok
            and (self.changes is None or self.changes.ok)
            and self.offline is None
            and self.report_error is None
            and not any(r.kind not in _NOT_FAILURES for r in self.refused)
        )


def _changes_json(run: PassResult, pushed: int) -> dict[str, Any]:
    bad = run.failure or run.blocked
    return {
        "pushed": pushed,
        "waiting_for_schema": run.gated,
        "failed": None if bad is None else {"change": bad.label, "error": bad.error, "dead": bad.dead},
        "remaining": run.remaining,
    }


class Syncer:
    """Syncs one client with one server through one transport."""

    def __init__(
        self,
        client: Client,
        transport: Transport,
        trusted: Sequence[TrustedKey],
        *,
        request_keys: Sequence[TrustedKey] = (),
        push_changes: bool = True,
        batch_size: int = 1000,
        send_changes_ahead: bool = True,
    ) -> None:
        if not trusted:
            raise MigsyncError("no trusted public key: give the server's public key (--trust-key)")
        self.client = client
        self._transport = transport
        #: the keys migrations and the fleet manifest must be signed by (the offline key)
        self.trusted = list(trusted)
        #: the keys the admin's requests must be signed by (the server's request key); none: every
        #: request is refused
        self.request_keys = list(request_keys)
        self.outbox = ReportOutbox(client.backend, client.clock)
        self.actions = ClientActions(client.ledger, client.clock)
        self._meta = client.backend.tables.meta
        self.push_changes = push_changes
        #: the same processor as the migrations', over the entity changes queue
        self.changes_processor = ChangesProcessor(
            client.backend,
            EntityChangeHandler(
                client.backend.tables,
                transport,
                client.clock,
                batch_size=batch_size,
                send_ahead=send_changes_ahead,
            ),
            events=client.events,
            clock=client.clock,
            retry=client.processor.retry,
            lock_timeout=client.processor.lock_timeout,
            # The processor reads only the head of the queue: the handler reads each batch
            # (batch_size changes) itself. A head of 100 rows (every column), of which only the
            # first was used, was read before each batch.
            batch_size=1,
        )

    @property
    def transport(self) -> Transport:
        return self._transport

    @transport.setter
    def transport(self, transport: Transport) -> None:
        """Another way to the server (an embedding may switch); the change handler follows."""
        self._transport = transport
        handler = self.changes_processor.handler
        assert isinstance(handler, EntityChangeHandler)
        handler.transport = transport

    async def sync(self, *, ignore_backoff: bool = False) -> SyncResult:
        offline: str | None = None
        offer: Offer | None = None
        try:
            offer = await self.transport.fetch(await self._etag())
        except ServerUnavailable as exc:
            offline = str(exc)
            log.info("server unreachable, working offline: %s", exc)
        states = await self.client.ledger.status()
        stored: list[str] = []
        refused: list[Refusal] = []
        received = 0
        refused_actions: list[RefusedRequest] = []
        manifest_error: str | None = None
        listed: dict[Version, str] = {}
        if offer is not None and offer.migrations is not None:
            offers, refused, listed, manifest_error = await self._check_manifest(offer, states)
            accepted, refused_here = self._accept(offers, states)
            if manifest_error is not None:  # each offer still judged, to say what else is wrong
                reason = "not stored: the answer's manifest was refused"
                refused_here += [Refusal(m.version, m.name, reason, "manifest") for m, _ in accepted]
                accepted = []
            refused = sorted([*refused, *refused_here], key=lambda r: r.version)
            if accepted:
                signatures = {m.version: s for m, s in accepted}
                recorded = await self.client.ledger.record([m for m, _ in accepted], signatures)
                stored = [*recorded.added, *recorded.updated]
            # Before the ETag is saved: a request must not be lost to a crash in between.
            trusted, refused_actions = self._trusted_requests(offer.actions)
            received = await self.actions.receive(trusted)
            # Answered "failed" like any request: the admin learns why, and the folder stops
            # offering it (it is answered), so one refusal fails one sync, not every sync after.
            await self.actions.refuse([(r.id, r.action, r.version, r.reason) for r in refused_actions])
            if not refused and manifest_error is None:
                await self._save_etag(offer.etag)
            if manifest_error is not None:
                log.info("refused: %s", manifest_error)
            for refusal in refused:
                log.info("refused %s: %s", refusal.name, refusal.reason)
                self.client.events.emit(
                    MigrationRefused(name=refusal.name, version=refusal.version, reason=refusal.reason)
                )
        asked = await self.actions.busy()
        if asked:
            await self.actions.carry_out()
        await self.client.ledger.queue_pending()
        run = await self.client.process(ignore_backoff=ignore_backoff)
        if asked:
            await self.actions.settle()
        refused_reports = self._refusal_reports(offer, refused, listed)
        held = await self._hold_etag()
        delivered, undelivered, report_error = await self._report(refused_reports, deliver=offline is None)
        answered = 0
        if asked and offline is None and report_error is None:
            answered, report_error = await self._answer_actions()
        await self._keep_new_etag(held)
        changes = None
        handler = self.changes_processor.handler
        assert isinstance(handler, EntityChangeHandler)
        pushed_before = handler.pushed
        if offline is None and self.push_changes:
            changes = await self.changes_processor.run_pass(ignore_backoff=ignore_backoff)
        result = SyncResult(
            self.transport.where,
            run,
            offline,
            None if offer is None or offer.migrations is None else len(offer.migrations),
            tuple(stored),
            tuple(refused),
            delivered,
            undelivered,
            report_error,
            changes,
            handler.pushed - pushed_before,
            received,
            answered,
            tuple(refused_actions),
            manifest_error,
        )
        self.client.events.emit(
            SyncCompleted(
                server=result.server,
                offline=offline,
                stored=len(stored),
                refused=len(refused),
                delivered=delivered,
                undelivered=undelivered,
            )
        )
        return result

    async def _check_manifest(
        self, offer: Offer, states: Sequence[MigrationState]
    ) -> tuple[list[OfferedMigration], list[Refusal], dict[Version, str], str | None]:
        """The offers the answer's signed manifest vouches for, the refused others, the checksum
        of every listed version, and why the manifest itself was refused (then every offer is
        returned, to be judged on its own, and none is stored)."""
        assert offer.migrations is not None
        where = self.transport.where
        try:
            manifest = verify_manifest(offer.manifest, self.trusted, where)
        except SignatureError as exc:
            return list(offer.migrations), [], {}, str(exc)
        last = await last_serial(self.client.backend)
        if last is not None and manifest.serial < last:
            return (
                list(offer.migrations),
                [],
                {},
                f"the manifest from {where} has serial {manifest.serial}, older than serial {last}, the "
                "last this client accepted: an old manifest replayed (rollback), or a server whose store "
                "was rebuilt; refusing it and everything it offers",
            )
        await accept_serial(self.client.backend, manifest.serial)
        stored = {s.version: (s.name, s.checksum) for s in states}
        kept, problems = check_offers(
            manifest, offer.migrations, stored, await self._signed_versions(), where
        )
        refused = [Refusal(p.version, p.name, p.reason, p.kind) for p in problems]
        return kept, refused, {m.version: m.checksum for m in manifest.migrations}, None

    def _accept(
        self, offers: Sequence[OfferedMigration], states: Sequence[MigrationState]
    ) -> tuple[list[tuple[Migration, str]], list[Refusal]]:
        """The offers this client may store (with their signatures), and the refused ones."""
        known = {s.version: s for s in states}
        newest_applied = max((s.version for s in states if s.applied_at is not None), default=None)
        accepted: list[tuple[Migration, str]] = []
        refused: list[Refusal] = []
        blocked_by: str | None = None
        for offer in offers:
            if blocked_by is not None:
                reason = f"waits for {blocked_by}, which was refused"
                refused.append(Refusal(offer.version, offer.name, reason, "waiting"))
                continue
            offered = offer.version
            local = known.get(offered)
            try:
                migration = verify_offer(offer, self.trusted, source=self.transport.where)
            except SignatureError as exc:
                refused.append(Refusal(offer.version, offer.name, str(exc), "signature"))
                blocked_by = offer.name
                continue
            if local is not None and local.applied_at is not None and local.checksum != offer.checksum:
                reason = (
                    f"applied here with checksum {local.checksum[:12]}, but the server now publishes "
                    f"{offer.checksum[:12]}; an applied migration is never changed: publish the change "
                    "as a new migration, or revert this one here first"
                )
                refused.append(Refusal(offer.version, offer.name, reason, "drift"))
                continue
            if local is None and newest_applied is not None and offered < newest_applied:
                reason = (
                    f"published after {known[newest_applied].name}, a newer migration, was applied "
                    "here; migrations apply in version order only"
                )
                refused.append(Refusal(offer.version, offer.name, reason, "order"))
                blocked_by = offer.name
                continue
            assert offer.signature is not None  # verify_offer refuses unsigned offers
            accepted.append((migration, offer.signature))
        return accepted, refused

    def _trusted_requests(
        self, requests: Sequence[ActionRequest]
    ) -> tuple[list[ActionRequest], list[RefusedRequest]]:
        """The requests to carry out: those signed for this client under a trusted request key,
        whatever the transport (a server, a network or a folder could write the others); and the
        refused others (logged)."""
        if not requests:
            return [], []
        client_id = str(getattr(self.transport, "client_id", ""))
        kept = []
        refused = []
        for request in requests:
            try:
                verify_request(request, client_id, self.request_keys)
            except SignatureError as exc:
                log.warning("not carried out: %s: %s", self.transport.where, exc)
                refused.append(RefusedRequest(request.id, request.action, str(request.version), str(exc)))
                continue
            kept.append(request)
        return kept, refused

    @staticmethod
    def _refusal_reports(
        offer: Offer | None, refused: Sequence[Refusal], listed: dict[Version, str]
    ) -> list[StatusReport]:
        """Refused migrations are reported as not applied, with the reason, under the offered checksum;
        a withheld or unsent one under the checksum the manifest lists (so the server learns this
        client lacks it)."""
        if offer is None or offer.migrations is None:
            return []
        checksums = {**listed, **{o.version: o.checksum for o in offer.migrations}}
        reports = [
            StatusReport(r.version, False, f"refused: {r.reason}", 0, checksums[r.version])
            for r in refused
            if r.kind in ("signature", "order", "withheld") and CHECKSUM.fullmatch(checksums[r.version])
        ]
        # Listed and not sent: perhaps the server believes this client has it (a database restored
        # from a backup). Saying it does not (no error: nothing failed) makes it send it.
        return reports + [
            StatusReport(r.version, False, None, 0, checksums[r.version])
            for r in refused
            if r.kind == "unsent"
        ]

    async def _report(self, extra: Sequence[StatusReport], *, deliver: bool) -> tuple[int, int, str | None]:
        states = await self.client.ledger.status()
        from_server = await self._signed_versions()
        reports = [report_of(s) for s in states if s.version in from_server and worth_reporting(s)]
        await self.outbox.stage([*reports, *extra])
        delivered = 0
        error: str | None = None
        if deliver:
            try:
                delivered = (await self.outbox.deliver(self.transport)).delivered
            except ServerRefused as exc:
                error = str(exc)
                log.error("the server refused this client's reports: %s", exc)
            except TransportError as exc:
                error = str(exc)
                log.warning("reports stay in the outbox: %s", exc)
        return delivered, await self.outbox.count_undelivered(), error

    async def _answer_actions(self) -> tuple[int, str | None]:
        """Deliver the answers to the admin's requests; (how many, why not if they could not be)."""
        try:
            return await self.actions.deliver(self.transport), None
        except ServerRefused as exc:
            log.error("the server refused this client's answers to its requests: %s", exc)
            return 0, str(exc)
        except TransportError as exc:
            log.warning("answers to the server's requests wait for the next sync: %s", exc)
            return 0, str(exc)

    async def _signed_versions(self) -> set[Version]:
        rows = await self.client.backend.fetch(
            f"SELECT version FROM {self.client.backend.tables.migrations} WHERE signature IS NOT NULL"
        )
        return {Version.from_key(r["version"]) for r in rows}

    async def _hold_etag(self) -> str | None:
        """Tell a transport that can carry it which pending ETag this client holds (the HTTP
        one sends it with the reports, and keeps the new one the server answers with)."""
        if not hasattr(self.transport, "held_etag"):
            return None
        held = await self._etag()
        self.transport.held_etag = held
        return held

    async def _keep_new_etag(self, held: str | None) -> None:
        """Save the ETag the server gave with its answer to the reports: the pending answer it
        stands for is the one held, less what was just reported, so the next poll is a 304."""
        new = getattr(self.transport, "held_etag", None)
        if held is not None and new is not None and new != held:
            await self._save_etag(new)

    async def _etag(self) -> str | None:
        rows = await self.client.backend.fetch(f"SELECT value FROM {self._meta} WHERE key = $1", (_ETAG_KEY,))
        return rows[0]["value"] if rows else None

    async def _save_etag(self, etag: str | None) -> None:
        if etag == await self._etag():
            return
        async with self.client.backend.transaction() as tx:
            if etag is None:
                await tx.execute(f"DELETE FROM {self._meta} WHERE key = $1", (_ETAG_KEY,))
            else:
                await tx.execute(
                    f"INSERT INTO {self._meta} (key, value) VALUES ($1, $2) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (_ETAG_KEY, etag),
                )
