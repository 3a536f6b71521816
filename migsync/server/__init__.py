"""The migsync server: a store of signed migrations, its clients and their status.

Importing this package imports SQLAlchemy; ``migsync apply`` never does.
"""

from __future__ import annotations

from migsync.server.records import ClientRecord, PublishedMigration, PublishResult
from migsync.server.store import Store

__all__ = ["ClientRecord", "PublishResult", "PublishedMigration", "Store"]
