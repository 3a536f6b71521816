"""What the store hands out: plain frozen records, no SQLAlchemy in sight."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import attrs

from migsync.core.migration import Migration


@attrs.frozen
class PublishResult:
    """Names of the migrations a :meth:`Store.publish` added, left, replaced or re-signed."""

    added: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    #: published before with other content and replaced (``force=True`` only)
    replaced: tuple[str, ...] = ()
    #: same content, signed again with another key (a key rotation)
    resigned: tuple[str, ...] = ()


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
    def version(self) -> int:
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
    reported_version: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "name": self.name,
            "created_at": iso(self.created_at),
            "last_seen_at": iso(self.last_seen_at),
            "reported_version": self.reported_version,
        }


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
