"""The events of a client's sync with its server and of its entity changes.

Defined apart from :mod:`migsync.core.events` so that ``migsync apply``, which
emits none of them, does not build them at every start (each attrs class costs it
about half a millisecond); they are delivered like every other event.
"""

from __future__ import annotations

from typing import ClassVar

import attrs

from migsync.core.events import Event, MigrationEvent


@attrs.frozen(kw_only=True)
class ChangesPushed(Event):
    """A batch of entity changes reached the server (stored now, or stored before)."""

    kind: ClassVar[str] = "changes_pushed"
    count: int
    first_seq: int
    last_seq: int


@attrs.frozen(kw_only=True)
class ChangeEvent(Event):
    change_id: str
    entity: str
    entity_id: str


@attrs.frozen(kw_only=True)
class ChangeFailed(ChangeEvent):
    kind: ClassVar[str] = "change_failed"
    error: str
    attempts: int
    max_attempts: int
    next_attempt_at: float


@attrs.frozen(kw_only=True)
class ChangeDead(ChangeEvent):
    kind: ClassVar[str] = "change_dead"
    error: str
    attempts: int


@attrs.frozen(kw_only=True)
class MigrationRefused(MigrationEvent):
    """A migration a transport delivered was not stored: bad signature, or drift."""

    kind: ClassVar[str] = "migration_refused"
    reason: str


@attrs.frozen(kw_only=True)
class SyncCompleted(Event):
    """One sync with the server has finished (see :class:`migsync.client.sync.SyncResult`)."""

    kind: ClassVar[str] = "sync_completed"
    server: str
    offline: str | None
    stored: int
    refused: int
    delivered: int
    undelivered: int
