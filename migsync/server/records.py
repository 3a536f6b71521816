"""What the store hands out: plain frozen records, no SQLAlchemy in sight."""

from __future__ import annotations

import hashlib
from typing import Any

import attrs

from migsync.core.clock import iso
from migsync.core.migration import Migration
from migsync.core.version import Version, as_version
from migsync.protocol.wire import Drift, StatusReport

__all__ = [
    "ActionRecord",
    "ClientRecord",
    "ClientState",
    "Drift",
    "Failure",
    "FleetEntry",
    "PendingMigration",
    "PublishResult",
    "PublishedMigration",
    "ReceivedChange",
    "ReportResult",
    "StatusReport",
    "pending_etag",
    "token_hash",
]


@attrs.frozen
class PublishResult:
    """Names of the migrations a :meth:`Store.publish` added, left, replaced or re-signed."""

    added: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    #: published before with other content and replaced (``force=True`` only)
    replaced: tuple[str, ...] = ()
    #: same content, signed again with another key (a key rotation)
    resigned: tuple[str, ...] = ()
    #: the rollout the publish started (``publish --stages``), or None
    rollout_id: int | None = None


@attrs.frozen
class PublishedMigration:
    """A migration as the store holds it, with its signature."""

    migration: Migration
    checksum: str
    signature: str
    signed_by: str
    published_at: float
    replaced_checksum: str | None = None
    replaced_at: float | None = None

    @property
    def version(self) -> Version:
        return self.migration.version

    @property
    def name(self) -> str:
        return self.migration.name


@attrs.frozen
class ClientRecord:
    """A client the server knows (never its token)."""

    client_id: int
    name: str
    created_at: float
    last_seen_at: float | None = None
    reported_version: Version | None = attrs.field(
        default=None, converter=attrs.converters.optional(as_version)
    )
    #: its labels (``clients add --label k=v``), which rollout stages select by
    labels: dict[str, str] = attrs.field(factory=dict, eq=False)
    #: the application version it last said it runs (``Migsync-App-Version``), or None
    app_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "name": self.name,
            "created_at": iso(self.created_at),
            "last_seen_at": iso(self.last_seen_at),
            "reported_version": _text(self.reported_version),
            "labels": dict(sorted(self.labels.items())),
            "app_version": self.app_version,
        }


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@attrs.frozen
class ClientState:
    """What a poll needs to know before it reads anything else: who asks, and the ETag's parts."""

    client: ClientRecord
    #: bumped by every publish that changes what clients get
    publish_serial: int
    #: bumped by every change of this client's ETag (a report that changes something, a request
    #: to it, its labels, its app version): of two reads of the client, the higher is the newer
    status_serial: int

    @property
    def etag(self) -> str:
        return pending_etag(self.client.client_id, self.publish_serial, self.status_serial)


def pending_etag(client_id: int, publish_serial: int, status_serial: int) -> str:
    """The (strong) ETag of a client's pending list: it changes whenever the list can."""
    return f'"{client_id}.{publish_serial}.{status_serial}"'


@attrs.frozen
class PendingMigration:
    """A published migration a client has not applied (or applied with other content)."""

    version: Version = attrs.field(converter=as_version)
    name: str
    #: the canonical content (JSON text): exactly the bytes the signature covers
    content: str
    checksum: str
    signature: str
    signed_by: str
    #: the checksum this client reported applying, when it differs from ``checksum`` (drift)
    applied_checksum: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "version": self.version.text}


@attrs.frozen
class ReportResult:
    """What :meth:`Store.report` did. With ``unpublished`` set, it wrote nothing."""

    recorded: tuple[Version, ...] = ()
    unchanged: tuple[Version, ...] = ()
    drift: tuple[Drift, ...] = ()
    unpublished: tuple[Version, ...] = ()
    #: a rollout moved (a stage started, it paused): every client's ETag changed
    rollouts_moved: bool = False
    #: the client's new pending ETag, when the report was sent with the one it replaces
    etag: str | None = None
    #: the client's state after the report (None: nothing was recorded)
    state: ClientState | None = None


@attrs.frozen
class Failure:
    """A migration a client reported as not applied, with its error."""

    version: Version = attrs.field(converter=as_version)
    error: str | None
    attempts: int
    #: failed as often as the client allows: it waits for a re-apply
    dead: bool = False


@attrs.frozen
class FleetEntry:
    """One client in the fleet view: what it applied, what failed, what drifted, when it was seen."""

    client: ClientRecord
    applied: tuple[Version, ...]
    failed: tuple[Failure, ...]
    drift: tuple[Drift, ...]
    #: published versions it has not applied (with the published content)
    pending: tuple[Version, ...]
    #: the version from which a revert the admin asked for holds it (nothing from there on is
    #: applied until a re-apply), or None; see :func:`migsync.server.actions.hold_of`
    held_from: Version | None = None
    #: published versions it is not offered because its app version does not satisfy their
    #: ``-- migsync:requires`` (with the requirement): see :mod:`migsync.core.requires`
    held_by_app: tuple[tuple[Version, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client.client_id,
            "name": self.client.name,
            "labels": dict(sorted(self.client.labels.items())),
            "app_version": self.client.app_version,
            "held_by_app": [{"version": v.text, "requires": r} for v, r in self.held_by_app],
            "applied": [v.text for v in self.applied],
            "latest_version": max(self.applied).text if self.applied else None,
            "failed": [{**attrs.asdict(f), "version": f.version.text} for f in self.failed],
            "drift": [d.to_json() for d in self.drift],
            "pending": [v.text for v in self.pending],
            "held_from": _text(self.held_from),
            "created_at": iso(self.client.created_at),
            "last_seen": iso(self.client.last_seen_at),
        }


@attrs.frozen
class ReceivedChange:
    """An entity change as the server stored it in its inbox (and hands it to change appliers)."""

    client_id: int
    #: the client's own id of the change (unique per client)
    change_id: str
    entity: str
    entity_id: str
    operation: str  # insert | update | delete
    #: the row after the write, parsed JSON (None for a delete, or when not captured)
    data: Any
    #: the client's newest applied migration when it wrote the change (None: none yet)
    schema_version: Version | None = attrs.field(converter=attrs.converters.optional(as_version))
    #: when the client wrote it (seconds since the epoch, the client's clock)
    client_timestamp: float
    #: when the server stored it (the server's clock)
    received_at: float
    #: why a change applier failed on it; the change is kept all the same
    apply_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "change_id": self.change_id,
            "entity": self.entity,
            "entity_id": self.entity_id,
            "operation": self.operation,
            "data": self.data,
            "schema_version": _text(self.schema_version),
            "client_timestamp": self.client_timestamp,
            "received_at": iso(self.received_at),
            "apply_error": self.apply_error,
        }


@attrs.frozen
class ActionRecord:
    """A request an admin made of one client, and where it stands (see :mod:`migsync.server.actions`)."""

    id: int
    client_id: int
    client_name: str
    action: str  # reapply | revert
    version: Version = attrs.field(converter=as_version)
    requested_by: str
    requested_at: float
    #: pending (the client has not answered), queued, done, failed, or superseded
    state: str
    #: the client's word on it, or why it was superseded
    detail: str | None
    updated_at: float

    @property
    def open(self) -> bool:
        """Not settled yet: the client has not heard of it, or is still working on it."""
        return self.state in ("pending", "queued")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "client_id": self.client_id,
            "client": self.client_name,
            "action": self.action,
            "version": self.version.text,
            "requested_by": self.requested_by,
            "requested_at": iso(self.requested_at),
            "state": self.state,
            "detail": self.detail,
            "updated_at": iso(self.updated_at),
        }


def _text(version: Version | None) -> str | None:
    return None if version is None else version.text
