"""migsync's own bookkeeping tables on a client database.

The table names come from the seed design; the column types are the
portable subset that SQLite and Postgres both accept. Times are seconds
since the epoch (``DOUBLE PRECISION``), so ordering and backoff
comparisons are plain numeric ones on every backend.

``migsync_meta.schema_version`` records the layout below, so that a later
release can upgrade the bookkeeping tables of an existing client.
"""

from __future__ import annotations

import re

import attrs

from migsync.core.errors import ConfigError

SCHEMA_VERSION = 4  # 2: the status-report outbox; 3: entity changes; 4: admin actions

MIGRATIONS = "client_migration"
STATUS = "client_migration_status"
QUEUE = "migration_changes"
META = "migsync_meta"
REPORTS = "migsync_report_outbox"
CHANGES = "entity_changes"
ACTIONS = "migsync_actions"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


@attrs.frozen
class Tables:
    """The bookkeeping tables' names as they appear in SQL, qualified by a schema or not.

    Backends that keep the tables in a namespace of their own (a Postgres
    schema) pass it here; all of migsync's SQL is built from these names, so
    a migration's own unqualified statements still go where its author meant.
    """

    namespace: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.namespace is not None and not _IDENTIFIER.fullmatch(self.namespace):
            raise ConfigError(
                f"schema name {self.namespace!r} is not a plain SQL identifier (letters, digits, _)"
            )

    def _name(self, table: str) -> str:
        return table if self.namespace is None else f'"{self.namespace}".{table}'

    @property
    def meta(self) -> str:
        return self._name(META)

    @property
    def migrations(self) -> str:
        return self._name(MIGRATIONS)

    @property
    def status(self) -> str:
        return self._name(STATUS)

    @property
    def queue(self) -> str:
        return self._name(QUEUE)

    @property
    def reports(self) -> str:
        return self._name(REPORTS)

    @property
    def changes(self) -> str:
        return self._name(CHANGES)

    @property
    def actions(self) -> str:
        return self._name(ACTIONS)


DEFAULT_TABLES = Tables()

# SQLite makes a column declared exactly "INTEGER PRIMARY KEY" the table's
# rowid: no separate index to write. On every migration that is one B-tree
# less per table (measured: 7% of the floor cost of a migration).
_INT_KEY = {"sqlite": "INTEGER PRIMARY KEY"}
_IDENTITY_KEY = {"sqlite": "INTEGER PRIMARY KEY"}  # the rowid: assigned on insert
_UUID_DEFAULT = {"sqlite": "(lower(hex(randomblob(16))))"}
_NOW_DEFAULT = {"sqlite": "((julianday('now') - 2440587.5) * 86400.0)"}

_DDL = [
    """CREATE TABLE IF NOT EXISTS {t.meta} (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
)""",
    # What this client knows: the content it was given, per dialect, as the
    # canonical JSON the checksum covers.
    """CREATE TABLE IF NOT EXISTS {t.migrations} (
    version {int_key},
    name TEXT NOT NULL UNIQUE,
    checksum TEXT NOT NULL,
    signature TEXT,
    content TEXT NOT NULL,
    origins TEXT,
    recorded_at DOUBLE PRECISION NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS {t.status} (
    version {int_key},
    migration_name TEXT NOT NULL,
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
    """CREATE TABLE IF NOT EXISTS {t.queue} (
    seq {int_key},
    id TEXT NOT NULL UNIQUE,
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
    # Partial indexes: they hold only the open changes, so the queue's history
    # can grow without slowing down the search for what is left to do.
    f"CREATE INDEX IF NOT EXISTS idx_{QUEUE}_open ON {{t.queue}} (seq) WHERE processed = FALSE",
    f"CREATE INDEX IF NOT EXISTS idx_{QUEUE}_open_name ON {{t.queue}} (migration_name) "
    "WHERE processed = FALSE",
    # The status-report outbox: this client's latest word on each migration
    # and whether the server has it. A change of state bumps ``revision``; a
    # delivery acknowledged by the server raises ``delivered_revision`` to it.
    """CREATE TABLE IF NOT EXISTS {t.reports} (
    version {int_key},
    applied BOOLEAN NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    revision INTEGER NOT NULL,
    delivered_revision INTEGER NOT NULL DEFAULT 0,
    changed_at DOUBLE PRECISION NOT NULL,
    delivered_at DOUBLE PRECISION
)""",
    # The application's own data changes (the seed's ``changes`` table), pushed to the
    # server by the same processor once the schema is current. Rows come from the
    # application's transactions and from capture triggers, concurrently: ``seq`` is
    # an identity (never MAX + 1), and ``id`` and ``timestamp`` have defaults so a
    # trigger need not compute them.
    """CREATE TABLE IF NOT EXISTS {t.changes} (
    seq {identity_key},
    id TEXT NOT NULL UNIQUE DEFAULT {uuid_default},
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    operation TEXT NOT NULL CHECK (operation IN ('insert', 'update', 'delete')),
    data TEXT,
    schema_version BIGINT,
    timestamp DOUBLE PRECISION NOT NULL DEFAULT {now_default},
    processed BOOLEAN NOT NULL DEFAULT FALSE,
    processed_at DOUBLE PRECISION,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 5,
    next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0
)""",
    f"CREATE INDEX IF NOT EXISTS idx_{CHANGES}_open ON {{t.changes}} (seq) WHERE processed = FALSE",
    # What the server's admin asked of this client (re-apply, revert), by the server's id,
    # so each request is carried out once however often it arrives; and this client's
    # answer, delivered like a status report (``revision`` / ``delivered_revision``).
    """CREATE TABLE IF NOT EXISTS {t.actions} (
    id {int_key},
    action TEXT NOT NULL CHECK (action IN ('reapply', 'revert')),
    version BIGINT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at DOUBLE PRECISION NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('received', 'queued', 'done', 'failed')),
    detail TEXT,
    changed_at DOUBLE PRECISION NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0,
    delivered_revision INTEGER NOT NULL DEFAULT 0
)""",
    # Asked before every change ("is anything dirty?"): an index that is empty
    # unless something is, instead of a scan of the whole history.
    f"CREATE INDEX IF NOT EXISTS idx_{STATUS}_dirty ON {{t.status}} (version) WHERE dirty = TRUE",
]


#: ``UPGRADES[n]``: what takes the tables from layout ``n`` to ``n + 1`` beyond the ``CREATE
#: TABLE IF NOT EXISTS`` above (which add whole tables): new columns of existing tables. A new
#: database runs every step too: the ``CREATE TABLE`` statements are the oldest layout.
UPGRADES: dict[int, list[str]] = {
    3: ["ALTER TABLE {t.reports} ADD COLUMN dead BOOLEAN NOT NULL DEFAULT FALSE"],
}


def meta_ddl(tables: Tables = DEFAULT_TABLES) -> str:
    """The ``CREATE TABLE IF NOT EXISTS`` of the meta table, which holds the layout's version."""
    return _DDL[0].format(t=tables)


def ddl(dialect: str, tables: Tables = DEFAULT_TABLES, from_version: int | None = None) -> list[str]:
    """The statements that take the bookkeeping tables from layout ``from_version`` (None: none
    yet) to :data:`SCHEMA_VERSION`; run them in one transaction."""
    names = {
        "int_key": _INT_KEY.get(dialect, "BIGINT PRIMARY KEY"),
        "identity_key": _IDENTITY_KEY.get(dialect, "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
        "uuid_default": _UUID_DEFAULT.get(dialect, "(gen_random_uuid()::text)"),
        "now_default": _NOW_DEFAULT.get(dialect, "(extract(epoch from clock_timestamp()))"),
    }
    start = 0 if from_version is None else from_version
    return [
        *(statement.format(t=tables, **names) for statement in _DDL),
        *(
            statement.format(t=tables)
            for step in range(start, SCHEMA_VERSION)
            for statement in UPGRADES.get(step, [])
        ),
        f"INSERT INTO {tables.meta} (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}') "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    ]
