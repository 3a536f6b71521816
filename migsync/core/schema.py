"""migsync's own bookkeeping tables on a client database.

The table names come from the seed design; the column types are the
portable subset that SQLite and Postgres both accept. Times are seconds
since the epoch (``DOUBLE PRECISION``), so ordering and backoff
comparisons are plain numeric ones on every backend.

``migsync_meta.schema_version`` records the layout below, so that a later
release can upgrade the bookkeeping tables of an existing client.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

MIGRATIONS = "client_migration"
STATUS = "client_migration_status"
QUEUE = "migration_changes"
META = "migsync_meta"

_DDL = [
    f"""CREATE TABLE IF NOT EXISTS {META} (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
)""",
    # What this client knows: the content it was given, per dialect, as the
    # canonical JSON the checksum covers.
    f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS} (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    checksum TEXT NOT NULL,
    signature TEXT,
    content TEXT NOT NULL,
    recorded_at DOUBLE PRECISION NOT NULL
)""",
    f"""CREATE TABLE IF NOT EXISTS {STATUS} (
    migration_name TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    applied BOOLEAN NOT NULL DEFAULT FALSE,
    applied_at DOUBLE PRECISION,
    applied_checksum TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    dirty BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at DOUBLE PRECISION NOT NULL
)""",
    # The queue. ``seq`` is the strict processing order; ``id`` is a stable
    # identifier for reports and events.
    f"""CREATE TABLE IF NOT EXISTS {QUEUE} (
    id TEXT PRIMARY KEY,
    seq BIGINT NOT NULL UNIQUE,
    migration_name TEXT NOT NULL,
    operation TEXT NOT NULL CHECK (operation IN ('apply', 'revert')),
    timestamp DOUBLE PRECISION NOT NULL,
    processed BOOLEAN NOT NULL DEFAULT FALSE,
    processed_at DOUBLE PRECISION,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 3,
    next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0
)""",
    f"CREATE INDEX IF NOT EXISTS idx_{QUEUE}_processed ON {QUEUE} (processed, seq)",
    f"CREATE INDEX IF NOT EXISTS idx_{QUEUE}_migration_name ON {QUEUE} (migration_name)",
]


def ddl(dialect: str) -> list[str]:
    """The statements that create the bookkeeping tables (all ``IF NOT EXISTS``)."""
    del dialect  # one portable layout today; the parameter lets a backend differ later
    return [
        *_DDL,
        f"INSERT INTO {META} (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}') "
        "ON CONFLICT (key) DO NOTHING",
    ]
