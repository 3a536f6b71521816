"""The migsync server: a store of signed migrations, its clients and their status.

Importing this package imports SQLAlchemy; ``migsync apply`` never does.
The HTTP API is :func:`migsync.server.app.create_app` (it imports Starlette,
so it is not imported here).
"""

from __future__ import annotations

from migsync.server.records import (
    ClientRecord,
    ClientState,
    Drift,
    Failure,
    FleetEntry,
    PendingMigration,
    PublishedMigration,
    PublishResult,
    ReportResult,
    StatusReport,
)
from migsync.server.store import Store

__all__ = [
    "ClientRecord",
    "ClientState",
    "Drift",
    "Failure",
    "FleetEntry",
    "PendingMigration",
    "PublishResult",
    "PublishedMigration",
    "ReportResult",
    "StatusReport",
    "Store",
]
