"""A batch of entity changes as columns: what the server decodes a pushed body into.

One list per field instead of one :class:`~migsync.protocol.wire.EntityChange`
per change: a batch of 1000 changes is decoded, checked and stored (a
``COPY`` of its columns, see :mod:`migsync.server.inbox`) without making
1000 objects on the way, which was most of what a change cost the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from migsync.core.version import Version
from migsync.protocol.wire import EntityChange

__all__ = ["ChangeBatch"]


@attrs.define
class ChangeBatch:
    """Changes in the order sent: change ``i`` is ``ids[i]``, ``entities[i]``, ... (all of one length)."""

    ids: list[str] = attrs.field(factory=list)
    entities: list[str] = attrs.field(factory=list)
    entity_ids: list[str] = attrs.field(factory=list)
    operations: list[str] = attrs.field(factory=list)
    #: the row after the write, parsed JSON (None for a delete, or when not captured)
    data: list[Any] = attrs.field(factory=list)
    schema_versions: list[Version | None] = attrs.field(factory=list)
    timestamps: list[float] = attrs.field(factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(cls, changes: Sequence[EntityChange] | ChangeBatch) -> ChangeBatch:
        """``changes`` as a batch (a batch as it is)."""
        if isinstance(changes, ChangeBatch):
            return changes
        return cls(
            [c.id for c in changes],
            [c.entity for c in changes],
            [c.entity_id for c in changes],
            [c.operation for c in changes],
            [c.data for c in changes],
            [c.schema_version for c in changes],
            [c.timestamp for c in changes],
        )

    def head(self, end: int) -> ChangeBatch:
        """The first ``end`` changes."""
        if end >= len(self.ids):
            return self
        return ChangeBatch(
            self.ids[:end],
            self.entities[:end],
            self.entity_ids[:end],
            self.operations[:end],
            self.data[:end],
            self.schema_versions[:end],
            self.timestamps[:end],
        )

    def changes(self) -> list[EntityChange]:
        """One record per change (for callers that want them; the server's path does not)."""
        return [
            EntityChange(*fields)
            for fields in zip(
                self.ids,
                self.entities,
                self.entity_ids,
                self.operations,
                self.data,
                self.schema_versions,
                self.timestamps,
                strict=True,
            )
        ]
