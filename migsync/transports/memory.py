"""An in-memory server and its transport, for tests and for embedding.

:class:`MemoryServer` keeps published migrations and each client's reports
in memory, with the same rules as the real store (a pending list per client,
an ETag that changes when it can, idempotent reports). It can be switched
``down`` to play a server that cannot be reached. URLs ``memory://NAME``
reach the server registered under NAME with :meth:`MemoryServer.named`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import attrs

from migsync.core.errors import ConfigError, ServerRefused, ServerUnavailable
from migsync.core.version import Version
from migsync.protocol.wire import (
    ActionRequest,
    ActionResult,
    ActionsAck,
    ChangeRefusal,
    ChangesAck,
    Drift,
    EntityChange,
    Offer,
    OfferedMigration,
    ReportAck,
    SignedManifest,
    StatusReport,
)
from migsync.transports.base import BaseTransport

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from migsync.core.migration import Migration


@attrs.define
class MemoryServer:
    """Published migrations and per-client status, in memory."""

    published: dict[Version, OfferedMigration] = attrs.field(factory=dict)
    #: client id -> version -> its last report
    status: dict[str, dict[Version, StatusReport]] = attrs.field(factory=dict)
    #: every report batch as it arrived, per client (to see what was delivered how often)
    received: dict[str, list[tuple[StatusReport, ...]]] = attrs.field(factory=dict)
    #: client id -> the entity changes it pushed, in the order received (each id once)
    inbox: dict[str, list[EntityChange]] = attrs.field(factory=dict)
    #: client id -> the admin's requests to it, oldest first
    actions: dict[str, list[ActionRequest]] = attrs.field(factory=dict)
    #: action id -> the client's latest answer
    answers: dict[int, ActionResult] = attrs.field(factory=dict)
    down: bool = False
    #: grows with every publish: the serial of the signed manifest each answer carries
    serial: int = 0
    tokens: dict[str, str] = attrs.field(factory=dict)  # client id -> token; empty: any token
    #: signs the manifest of every answer (:meth:`publish_signed` sets it; None: answers carry none)
    manifest_key: Ed25519PrivateKey | None = None
    #: signs each request for the client it goes to (None: requests go unsigned, and are refused)
    request_key: Ed25519PrivateKey | None = None

    _registry: ClassVar[dict[str, MemoryServer]] = {}

    @classmethod
    def named(cls, name: str) -> MemoryServer:
        """The server ``memory://NAME`` reaches (created on first use)."""
        return cls._registry.setdefault(name, cls())

    def publish(self, offers: Sequence[OfferedMigration]) -> None:
        for offer in offers:
            self.published[offer.version] = offer
        self.serial += 1

    def publish_signed(self, migrations: Sequence[Migration], key: Ed25519PrivateKey) -> None:
        """Sign ``migrations`` with ``key`` and publish them, as ``migsync publish`` does."""
        from migsync.protocol.signing import fingerprint, sign

        signer = fingerprint(key.public_key())
        self.manifest_key = self.manifest_key or key
        self.publish(
            [
                OfferedMigration(m.version, m.name, m.canonical_content(), m.checksum, sign(key, m), signer)
                for m in migrations
            ]
        )

    def pending(self, client_id: str) -> list[OfferedMigration]:
        mine = self.status.get(client_id, {})
        return [
            offer
            for version, offer in sorted(self.published.items())
            if not (version in mine and mine[version].applied and mine[version].checksum == offer.checksum)
        ]

    def manifest(self) -> SignedManifest | None:
        """The signed list of everything published, as ``migsync publish`` keeps it."""
        if self.manifest_key is None:
            return None
        from migsync.protocol.manifest import FleetManifest, Listed, sign_manifest

        listed = tuple(Listed(o.version, o.name, o.checksum) for _, o in sorted(self.published.items()))
        return sign_manifest(self.manifest_key, FleetManifest(self.serial, listed))

    def signed_actions(self, client_id: str) -> list[ActionRequest]:
        """The requests ``client_id`` has not answered, signed for it when the server has a request key."""
        open_ = self.open_actions(client_id)
        if self.request_key is None:
            return open_
        from migsync.protocol.signing import sign_request

        return [sign_request(self.request_key, a, client_id) for a in open_]

    def request(
        self, client_id: str, action: str, version: Version | int | str, requested_by: str = "admin"
    ) -> ActionRequest:
        """Ask ``client_id`` to ``reapply`` or ``revert`` ``version`` (it hears of it on its next fetch)."""
        ids = [a.id for mine in self.actions.values() for a in mine]
        request = ActionRequest(max(ids, default=0) + 1, action, version, requested_by, 0.0)
        self.actions.setdefault(client_id, []).append(request)
        return request

    def open_actions(self, client_id: str) -> list[ActionRequest]:
        """The requests ``client_id`` has not answered yet."""
        return [a for a in self.actions.get(client_id, []) if a.id not in self.answers]

    def answer(self, client_id: str, results: Sequence[ActionResult]) -> ActionsAck:
        mine = {a.id for a in self.actions.get(client_id, [])}
        for result in results:
            if result.id in mine:
                self.answers[result.id] = result
        return ActionsAck(
            tuple(r.id for r in results if r.id in mine), tuple(r.id for r in results if r.id not in mine)
        )

    def etag(self, client_id: str) -> str:
        state = (self._state(client_id), tuple(self.open_actions(client_id)))
        return f'"{self.serial}.{len(self.received.get(client_id, ()))}.{hash(state)}"'

    def _state(self, client_id: str) -> tuple[StatusReport, ...]:
        return tuple(sorted(self.status.get(client_id, {}).values(), key=lambda r: r.version))

    def report(self, client_id: str, reports: Sequence[StatusReport]) -> ReportAck:
        versions = [r.version for r in reports]
        twice = sorted({v for v in versions if versions.count(v) > 1})
        if twice:  # as the HTTP API: a batch says one thing per version
            raise ServerRefused(f"versions {twice} are reported twice in one batch; nothing was recorded")
        unpublished = [r.version for r in reports if r.version not in self.published]
        if unpublished:
            raise ServerRefused(f"versions {unpublished} are not published; nothing was recorded")
        self.received.setdefault(client_id, []).append(tuple(reports))
        mine = self.status.setdefault(client_id, {})
        recorded: list[Version] = []
        unchanged: list[Version] = []
        for item in reports:
            (unchanged if mine.get(item.version) == item else recorded).append(item.version)
            mine[item.version] = item
        drift = tuple(
            Drift(r.version, self.published[r.version].checksum, r.checksum)
            for r in reports
            if r.checksum != self.published[r.version].checksum
        )
        return ReportAck(tuple(recorded), tuple(unchanged), drift)

    def receive_changes(self, client_id: str, changes: Sequence[EntityChange]) -> ChangesAck:
        mine = self.inbox.setdefault(client_id, [])
        known = {c.id for c in mine}
        accepted: list[str] = []
        duplicate: list[str] = []
        for change in changes:
            if change.id in known:
                duplicate.append(change.id)
            elif change.schema_version is not None and change.schema_version not in self.published:
                reason = f"schema version {change.schema_version} was never published by this server"
                return ChangesAck(tuple(accepted), tuple(duplicate), ChangeRefusal(change.id, reason))
            else:
                mine.append(change)
                known.add(change.id)
                accepted.append(change.id)
        return ChangesAck(tuple(accepted), tuple(duplicate))


class MemoryTransport(BaseTransport):
    """A client's way to a :class:`MemoryServer`."""

    def __init__(
        self,
        url: str | MemoryServer,
        *,
        client_id: str | None = None,
        token: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> None:
        # timeout and retries are part of every transport's factory; nothing here waits.
        del timeout, retries
        if isinstance(url, MemoryServer):
            self.server, self.where = url, "memory server"
        else:
            if not url.startswith("memory://") or not url.removeprefix("memory://"):
                raise ConfigError(f"in-memory server URL {url!r} is not memory://NAME")
            self.server, self.where = MemoryServer.named(url.removeprefix("memory://")), url
        if not client_id:
            raise ConfigError("the in-memory transport needs a client id")
        self.client_id = client_id
        self.token = token

    def _check(self) -> None:
        if self.server.down:
            raise ServerUnavailable(f"{self.where} is down")
        expected = self.server.tokens.get(self.client_id)
        if self.server.tokens and expected != self.token:
            raise ServerRefused(f"{self.where} refused client {self.client_id}: unknown token")

    async def fetch(self, etag: str | None = None) -> Offer:
        self._check()
        current = self.server.etag(self.client_id)
        if etag == current:
            return Offer(None, current)
        return Offer(
            tuple(self.server.pending(self.client_id)),
            current,
            tuple(self.server.signed_actions(self.client_id)),
            self.server.manifest(),
        )

    async def report(self, reports: Sequence[StatusReport]) -> ReportAck:
        self._check()
        return self.server.report(self.client_id, reports)

    async def report_actions(self, results: Sequence[ActionResult]) -> ActionsAck:
        self._check()
        return self.server.answer(self.client_id, results)

    async def push_changes(self, changes: Sequence[EntityChange]) -> ChangesAck:
        self._check()
        return self.server.receive_changes(self.client_id, changes)
