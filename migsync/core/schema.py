"""migsync's own bookkeeping tables on a client database.

The table names come from the seed design; the column types are the
portable subset that SQLite and Postgres both accept. Times are seconds
since the epoch (``DOUBLE PRECISION``), so ordering and backoff
comparisons are plain numeric ones on every backend.

``migsync_meta.schema_version`` records the layout below, so that a later
release can upgrade the bookkeeping tables of an existing client.
"""

from __future__ import annotations

from collections.abc import Callable

from migsync.core.tables import (
    ACTIONS as ACTIONS,
)
from migsync.core.tables import (
    CHANGES as CHANGES,
)
from migsync.core.tables import (
    DEFAULT_TABLES as DEFAULT_TABLES,
)
from migsync.core.tables import (
    META as META,
)
from migsync.core.tables import (
    MIGRATIONS as MIGRATIONS,
)
from migsync.core.tables import (
    QUEUE as QUEUE,
)
from migsync.core.tables import (
    REPORTS as REPORTS,
)
from migsync.core.tables import (
    STATUS as STATUS,
)
from migsync.core.tables import (
    Tables as Tables,
)

# 2: the status-report outbox; 3: entity changes; 4: admin actions; 5: versions as text keys;
# 6: the queue without indexes on its open changes (found from a stored bound instead)
SCHEMA_VERSION = 6

#: ``migsync_meta``'s key for the seq the queue's open changes start at or after (layout 6).
QUEUE_FROM_KEY = "queue_from"


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


#: ``UPGRADES[n](dialect, tables)``: what takes the tables from layout ``n`` to ``n + 1`` beyond
#: the ``CREATE TABLE IF NOT EXISTS`` above (which add whole tables): new columns, new column
#: types. A new database runs every step too: the ``CREATE TABLE`` statements are the oldest
#: layout, and a step on empty tables costs next to nothing.
UPGRADES: dict[int, Callable[[str, Tables], list[str]]] = {
    3: lambda dialect, t: [f"ALTER TABLE {t.reports} ADD COLUMN dead BOOLEAN NOT NULL DEFAULT FALSE"],
    4: lambda dialect, t: _versions_as_keys(dialect, t),
    5: lambda dialect, t: _queue_from_bound(t),
}


def _queue_from_bound(t: Tables) -> list[str]:
    """Layout 6: the queue loses its two partial indexes on ``processed = FALSE``.

    Every migration's commit marks its change done, and each of those indexes cost the
    commit a page of its own (measured: 4.5 bookkeeping pages per commit with them, 2.5
    without). The open changes are found instead as a range of the queue's key from a
    bound kept in ``migsync_meta`` (:class:`migsync.core.history_sql.HistorySQL`), which
    starts at 0 (true of any queue) and is moved up after each pass; one migration's
    changes by a plain index on the name, which marking a change done leaves alone.
    """
    schema = "" if t.namespace is None else f'"{t.namespace}".'
    return [
        f"DROP INDEX IF EXISTS {schema}idx_{QUEUE}_open",
        f"DROP INDEX IF EXISTS {schema}idx_{QUEUE}_open_name",
        # By name for all changes, open or done: marking a change done does not touch it.
        f"CREATE INDEX IF NOT EXISTS idx_{QUEUE}_name ON {t.queue} (migration_name)",
        f"INSERT INTO {t.meta} (key, value) VALUES ('{QUEUE_FROM_KEY}', '0') ON CONFLICT (key) DO NOTHING",
    ]


#: The stored key of a version that was an integer column (see :mod:`migsync.core.version`):
#: its digit count in two digits, then its digits.
_KEY_OF = {
    "sqlite": "printf('%02d%d', length({c}), {c})",
    "postgresql": "lpad(length({c}::text)::text, 2, '0') || {c}::text",
}

#: Layout 5: every version column holds a text key, so versions of any length fit.
#: (table attribute, version column, the new table on SQLite with {t} and {key} to fill in)
_KEYED = [
    (
        "migrations",
        "version",
        """CREATE TABLE {t.migrations} (
    version TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    checksum TEXT NOT NULL,
    signature TEXT,
    content TEXT NOT NULL,
    origins TEXT,
    recorded_at DOUBLE PRECISION NOT NULL
)""",
    ),
    (
        "status",
        "version",
        """CREATE TABLE {t.status} (
    version TEXT PRIMARY KEY,
    migration_name TEXT NOT NULL,
    applied BOOLEAN NOT NULL DEFAULT FALSE,
    applied_at DOUBLE PRECISION,
    applied_checksum TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    dirty BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at DOUBLE PRECISION NOT NULL
) WITHOUT ROWID""",
    ),
    (
        "reports",
        "version",
        """CREATE TABLE {t.reports} (
    version TEXT PRIMARY KEY,
    applied BOOLEAN NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    revision INTEGER NOT NULL,
    delivered_revision INTEGER NOT NULL DEFAULT 0,
    changed_at DOUBLE PRECISION NOT NULL,
    delivered_at DOUBLE PRECISION,
    dead BOOLEAN NOT NULL DEFAULT FALSE
) WITHOUT ROWID""",
    ),
    (
        "actions",
        "version",
        """CREATE TABLE {t.actions} (
    id INTEGER PRIMARY KEY,
    action TEXT NOT NULL CHECK (action IN ('reapply', 'revert')),
    version TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at DOUBLE PRECISION NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('received', 'queued', 'done', 'failed')),
    detail TEXT,
    changed_at DOUBLE PRECISION NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0,
    delivered_revision INTEGER NOT NULL DEFAULT 0
)""",
    ),
    (
        "changes",
        "schema_version",
        """CREATE TABLE {t.changes} (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE DEFAULT (lower(hex(randomblob(16)))),
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    operation TEXT NOT NULL CHECK (operation IN ('insert', 'update', 'delete')),
    data TEXT,
    schema_version TEXT,
    timestamp DOUBLE PRECISION NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
    processed BOOLEAN NOT NULL DEFAULT FALSE,
    processed_at DOUBLE PRECISION,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 5,
    next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0
)""",
    ),
]

#: The indexes of the rebuilt tables (SQLite drops them with the old table).
_KEYED_INDEXES = [
    f"CREATE INDEX IF NOT EXISTS idx_{CHANGES}_open ON {{t.changes}} (seq) WHERE processed = FALSE",
    f"CREATE INDEX IF NOT EXISTS idx_{STATUS}_dirty ON {{t.status}} (version) WHERE dirty = TRUE",
]


def _versions_as_keys(dialect: str, t: Tables) -> list[str]:
    """Every version column to text keys. Each conversion happens only to what is still a
    number, so a step run again (a layout set back by hand) changes nothing twice."""
    if dialect != "sqlite":
        return [
            *(_retype(t, attribute, column) for attribute, column, _ in _KEYED),
            _capture_function_update(t),
        ]
    key_of = _KEY_OF["sqlite"]
    hold = key_of.format(c="value")
    statements = [
        f"UPDATE {t.meta} SET value = {hold} WHERE key = 'hold_from' "
        f"AND (SELECT typeof(version) FROM {t.migrations} LIMIT 1) = 'integer'"
    ]
    for attribute, column, create in _KEYED:
        table = getattr(t, attribute)
        key = f"CASE WHEN typeof({column}) = 'integer' THEN {key_of.format(c=column)} ELSE {column} END"
        # SQLite cannot change a column's type: the table is rebuilt. legacy_alter_table keeps
        # the rename from rewriting (or tripping over) triggers that name the table, such as
        # the capture triggers on the application's tables.
        old = f"{table}_layout4"
        columns = _columns(create)
        copied = ", ".join(key if c == column else c for c in columns)
        statements += [
            "PRAGMA legacy_alter_table = ON",
            f"ALTER TABLE {table} RENAME TO {old}",
            create.format(t=t),
            f"INSERT INTO {table} ({', '.join(columns)}) SELECT {copied} FROM {old}",
            f"DROP TABLE {old}",
            "PRAGMA legacy_alter_table = OFF",
        ]
    return statements + [index.format(t=t) for index in _KEYED_INDEXES]


def _retype(t: Tables, attribute: str, column: str) -> str:
    """Postgres: ``column`` of the table to text keys, if it is not text already (and, with the
    migrations table, the hold's version)."""
    table = getattr(t, attribute)
    key = _KEY_OF["postgresql"].format(c=column)
    namespace = "current_schema()" if t.namespace is None else f"'{t.namespace}'"
    hold = ""
    if attribute == "migrations":
        hold = (
            f"UPDATE {t.meta} SET value = lpad(length(value)::text, 2, '0') || value "
            "WHERE key = 'hold_from'; "
        )
    name = getattr(Tables(), attribute)
    return (
        "DO $migsync_upgrade$ BEGIN IF (SELECT data_type FROM information_schema.columns "
        f"WHERE table_schema = {namespace} AND table_name = '{name}' AND column_name = '{column}') "
        f"<> 'text' THEN {hold}ALTER TABLE {table} ALTER COLUMN {column} TYPE TEXT USING {key}; "
        "END IF; END $migsync_upgrade$"
    )


def _columns(create: str) -> list[str]:
    body = create[create.index("(") + 1 : create.rindex(")")]
    return [
        line.split()[0] for line in body.splitlines() if line.strip() and not line.strip().startswith(")")
    ]


def _capture_function_update(t: Tables) -> str:
    """Postgres: the capture trigger function, if installed, replaced by one for text versions."""
    from migsync.core.capture import capture_function_sql  # lazily: apply never needs it

    function, schema_name = capture_function_sql(t)
    return (
        "DO $migsync_upgrade$ BEGIN IF EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON "
        f"n.oid = p.pronamespace WHERE p.proname = 'migsync_capture' AND n.nspname = {schema_name}) "
        f"THEN EXECUTE {function}; END IF; END $migsync_upgrade$"
    )


def meta_ddl(tables: Tables = DEFAULT_TABLES) -> str:
    """The ``CREATE TABLE IF NOT EXISTS`` of the meta table, which holds the layout's version."""
    return _DDL[0].format(t=tables)


def ddl(
    dialect: str,
    tables: Tables = DEFAULT_TABLES,
    from_version: int | None = None,
    to_version: int = SCHEMA_VERSION,
) -> list[str]:
    """The statements that take the bookkeeping tables from layout ``from_version`` (None: none
    yet) to ``to_version`` (an older layout only for tests of upgrades); run them in one
    transaction."""
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
            statement
            for step in range(start, to_version)
            if step in UPGRADES
            for statement in UPGRADES[step](dialect, tables)
        ),
        f"INSERT INTO {tables.meta} (key, value) VALUES ('schema_version', '{to_version}') "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    ]
