"""The server store's tables (SQLAlchemy Core).

Times are seconds since the epoch (a double), as on the client, so that
comparisons are numeric on every backend and no time zone is lost on SQLite.

Status is kept per client and per migration (``store_client_status``); there
is no global "applied" flag anywhere, because with more than one client it
cannot be right.

``store_meta`` holds ``schema_version``: the layout below, and
``publish_serial``, bumped by every publish that changes what clients get
(the other half of a pending ETag; absent means 0), and on SQLite ``change_seq``, the counter
of client changes (see :mod:`migsync.server.serials`; absent means 0). ``store_inbox`` holds
the entity changes clients pushed, in the order received; ``store_actions``
what an admin asked of clients. A release that
changes it adds an upgrade step to :data:`UPGRADES` and bumps
:data:`SCHEMA_VERSION`; a store written by a newer release is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from migsync.core.version import Version

SCHEMA_VERSION = 10  # 5: versions as text keys; 6: rollouts, labels, app versions, status events;
#                     7: change_seq on clients; 8: the status rows indexed by version;
#                     9: each client's fleet summary on its row;
#                     10: Postgres stamps client changes with transaction ids


class VersionKey(TypeDecorator[Version]):
    """A migration's version, stored as its key (:attr:`migsync.core.version.Version.key`): text
    whose order is the version order, so versions of any length fit, sort and compare in SQL.
    Binds a :class:`Version` (or an int or text it parses) and reads back a :class:`Version`."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else Version.parse(value).key

    def process_result_value(self, value: Any, dialect: Dialect) -> Version | None:
        return None if value is None else Version.from_key(value)


metadata = MetaData()

#: key/value pairs about the store itself; ``schema_version`` is the one that matters.
store_meta = Table(
    "store_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

#: One row per published version: what clients get, signed.
store_migrations = Table(
    "store_migrations",
    metadata,
    Column("version", VersionKey, primary_key=True, autoincrement=False),
    Column("name", Text, nullable=False),
    #: the migration's canonical content (JSON): what the checksum and the signature cover
    Column("content", Text, nullable=False),
    Column("checksum", String(64), nullable=False),
    #: base64 Ed25519 signature of ``content``, and the fingerprint of the key that made it
    Column("signature", Text, nullable=False),
    Column("signed_by", String(32), nullable=False),
    Column("published_at", Float, nullable=False),
    #: set when ``publish --force`` replaced other content: the checksum clients may have applied
    Column("replaced_checksum", String(64), nullable=True),
    Column("replaced_at", Float, nullable=True),
)

store_clients = Table(
    "store_clients",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False, unique=True),
    #: sha256 (hex) of the bearer token; the token itself is never stored
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("last_seen_at", Float, nullable=True),
    Column("reported_version", VersionKey, nullable=True),
    #: bumped by every status report that changes something: half of the client's pending ETag
    Column("status_serial", BigInteger, nullable=False, default=0, server_default="0"),
    #: the client's labels, a JSON object of text to text (``{"group": "canary"}``); NULL: none
    Column("labels", Text, nullable=True),
    #: the application version the client last said it runs (``Migsync-App-Version``); NULL: never said
    Column("app_version", Text, nullable=True),
    #: the stamp of the last change of this client's ETag (Postgres: the writer's transaction id;
    #: SQLite: the change counter, ``store_meta.change_seq``): a server process reads only the
    #: clients changed beyond where it read last (:mod:`migsync.server.serials`)
    Column("change_seq", BigInteger, nullable=False, default=0, server_default="0"),
    #: the client's fleet summary (see :mod:`migsync.server.fleet_summary`), kept by the writes
    #: that change it: a migration failed on it; it applied a published version with other
    #: content; how many published versions it applied with the published content
    Column("fleet_failing", Boolean, nullable=False, default=False, server_default="0"),
    Column("fleet_drift", Boolean, nullable=False, default=False, server_default="0"),
    Column("fleet_done", Integer, nullable=False, default=0, server_default="0"),
    Index("store_clients_change_seq", "change_seq"),
    #: the fleet's counts per state: an index-only scan, narrower than the table
    Index("store_clients_fleet", "fleet_failing", "fleet_drift", "fleet_done"),
)

store_client_status = Table(
    "store_client_status",
    metadata,
    Column(
        "client_id",
        Integer,
        ForeignKey("store_clients.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    # No foreign key to store_migrations: a client reports what it has, even a
    # version the server no longer (or never) published.
    Column("version", VersionKey, primary_key=True, autoincrement=False),
    Column("applied", Boolean, nullable=False, default=False),
    Column("error", Text, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    #: the checksum of the content the client applied (drift shows as a difference)
    Column("checksum", String(64), nullable=True),
    Column("updated_at", Float, nullable=False),
    #: it failed as often as the client allows: nothing retries it until someone re-applies it
    Column("dead", Boolean, nullable=False, default=False, server_default="0"),
    #: "every client that applied (or not) version V": a request for every client, a fleet filter
    Index("store_client_status_version", "version", "applied"),
)

#: The entity changes clients pushed (``POST /api/changes``, a drop folder's ``changes/``);
#: ``id`` is the order they were received in. A change is stored once per client, however
#: often it is sent: ``(client_id, change_id)`` is unique.
store_inbox = Table(
    "store_inbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("client_id", Integer, ForeignKey("store_clients.id", ondelete="CASCADE"), nullable=False),
    #: the client's own id of the change
    Column("change_id", Text, nullable=False),
    Column("entity", Text, nullable=False),
    Column("entity_id", Text, nullable=False),
    Column("operation", String(16), nullable=False),
    #: the row after the write, as JSON text (``null`` for a delete)
    Column("data", Text, nullable=False),
    #: the client's newest applied migration when it wrote the change (NULL: none yet)
    Column("schema_version", VersionKey, nullable=True),
    Column("client_timestamp", Float, nullable=False),
    Column("received_at", Float, nullable=False),
    #: why a change applier failed on it (the change is kept all the same)
    Column("apply_error", Text, nullable=True),
    UniqueConstraint("client_id", "change_id", name="store_inbox_client_change"),
)

#: What an admin asked of a client (the panel's actions): re-apply a migration, or revert it.
#: A client hears of a ``pending`` request with its next poll and answers ``queued``, then
#: ``done`` or ``failed`` (with ``detail``); a newer request to the same client replaces one it
#: has not picked up yet (``superseded``).
store_actions = Table(
    "store_actions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("client_id", Integer, ForeignKey("store_clients.id", ondelete="CASCADE"), nullable=False),
    Column("action", String(16), nullable=False),
    Column("version", VersionKey, nullable=False),
    #: who asked (the name given at the panel's login, or to ``migsync actions request --by``)
    Column("requested_by", Text, nullable=False),
    Column("requested_at", Float, nullable=False),
    Column("state", String(16), nullable=False),
    #: the client's word on it (or why it was superseded)
    Column("detail", Text, nullable=True),
    Column("updated_at", Float, nullable=False),
    Index("store_actions_client_state", "client_id", "state"),
)

#: A staged rollout of versions (see :mod:`migsync.server.rollouts`): its stages and policy as
#: the operator gave them, and where it is. ``versions``, ``stages`` and ``accepted`` are JSON.
store_rollouts = Table(
    "store_rollouts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    #: the version texts it takes to the fleet, in order
    Column("versions", Text, nullable=False),
    Column("stages", Text, nullable=False),
    Column("success_threshold", Float, nullable=False),
    Column("error_threshold", Float, nullable=False),
    Column("soak", Float, nullable=False),
    Column("on_failure", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    #: the index of the last stage started
    Column("stage", Integer, nullable=False),
    Column("stage_started_at", Float, nullable=False),
    Column("reason", Text, nullable=True),
    #: per started stage, the failures an operator accepted by resuming or advancing
    Column("accepted", Text, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    #: when a report last had it evaluated (reports evaluate it at most every few seconds)
    Column("evaluated_at", Float, nullable=True),
)

#: Everything that happened to a rollout, with who (an operator's name, or ``migsync`` for what
#: the rollout did by itself) and when.
store_rollout_audit = Table(
    "store_rollout_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rollout_id", Integer, ForeignKey("store_rollouts.id", ondelete="CASCADE"), nullable=False),
    Column("at", Float, nullable=False),
    Column("who", Text, nullable=False),
    Column("what", Text, nullable=False),
    Index("store_rollout_audit_rollout", "rollout_id", "id"),
)

#: Every status change a client reported: ``state`` is ``applied``, ``failed``, ``dead`` or
#: ``pending`` (reported not applied without an error: reverted). Kept for the retention the
#: store's ``store_meta.event_retention`` says (seconds; default :data:`DEFAULT_EVENT_RETENTION`).
store_status_events = Table(
    "store_status_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("client_id", Integer, ForeignKey("store_clients.id", ondelete="CASCADE"), nullable=False),
    Column("version", VersionKey, nullable=False),
    Column("state", String(16), nullable=False),
    Column("at", Float, nullable=False),
    Index("store_status_events_version_at", "version", "at"),
    Index("store_status_events_at", "at"),
)

#: How long status events are kept when the store does not say (90 days).
DEFAULT_EVENT_RETENTION = 90 * 86400.0

#: ``UPGRADES[n]`` takes a store from schema version ``n`` to ``n + 1`` (inside one transaction).
UPGRADES: dict[int, Callable[[Connection], None]] = {}


def _add_status_serial(conn: Connection) -> None:
    conn.exec_driver_sql("ALTER TABLE store_clients ADD COLUMN status_serial BIGINT NOT NULL DEFAULT 0")


UPGRADES[1] = _add_status_serial


def _add_inbox(conn: Connection) -> None:
    store_inbox.create(conn)


UPGRADES[2] = _add_inbox


def _add_actions(conn: Connection) -> None:
    store_actions.create(conn)
    default = "0" if conn.dialect.name == "sqlite" else "FALSE"
    conn.exec_driver_sql(
        f"ALTER TABLE store_client_status ADD COLUMN dead BOOLEAN NOT NULL DEFAULT {default}"
    )


UPGRADES[3] = _add_actions


#: The columns that hold a version, as (table, column); before layout 5 they were BIGINT.
_VERSION_COLUMNS = [
    (store_migrations, "version"),
    (store_clients, "reported_version"),
    (store_client_status, "version"),
    (store_inbox, "schema_version"),
    (store_actions, "version"),
]


def _versions_as_keys(conn: Connection) -> None:
    """Every version column to text keys (its digit count in two digits, then its digits).

    Postgres changes the column types. SQLite cannot: a column's type decides what SQLite does
    with the text ``'011'`` (a BIGINT column would store the number 11). So each table is
    rebuilt, except ``store_clients``, which the other tables' foreign keys name (with foreign
    keys on, renaming it would point them at the old table): its column is replaced instead.
    """
    if conn.dialect.name != "sqlite":
        for table, column in _VERSION_COLUMNS:
            kind = conn.exec_driver_sql(
                "SELECT data_type FROM information_schema.columns WHERE table_schema = current_schema() "
                f"AND table_name = '{table.name}' AND column_name = '{column}'"
            ).scalar()
            if kind == "text":  # done before (a layout set back by hand): never key a key
                continue
            conn.exec_driver_sql(
                f"ALTER TABLE {table.name} ALTER COLUMN {column} TYPE TEXT USING "
                f"CASE WHEN {column} IS NULL THEN NULL "
                f"ELSE lpad(length({column}::text)::text, 2, '0') || {column}::text END"
            )
        return

    def key(column: str) -> str:
        return (
            f"CASE WHEN typeof({column}) = 'integer' THEN printf('%02d%d', length({column}), {column}) "
            f"ELSE {column} END"
        )

    for statement in (
        "ALTER TABLE store_clients ADD COLUMN reported_version_key TEXT",
        f"UPDATE store_clients SET reported_version_key = {key('reported_version')}",
        "ALTER TABLE store_clients DROP COLUMN reported_version",
        "ALTER TABLE store_clients RENAME COLUMN reported_version_key TO reported_version",
    ):
        conn.exec_driver_sql(statement)
    for table, column in _VERSION_COLUMNS:
        if table is store_clients:
            continue
        old = f"{table.name}_layout4"
        conn.exec_driver_sql(f"ALTER TABLE {table.name} RENAME TO {old}")
        for index in table.indexes:  # they went with the old table, under their names
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index.name}")
        table.create(conn)
        names = [c.name for c in table.columns]
        copied = [key(c) if c == column else c for c in names]
        conn.exec_driver_sql(
            f"INSERT INTO {table.name} ({', '.join(names)}) SELECT {', '.join(copied)} FROM {old}"
        )
        conn.exec_driver_sql(f"DROP TABLE {old}")


UPGRADES[4] = _versions_as_keys


def _add_rollouts(conn: Connection) -> None:
    """Layout 6: rollouts, their audit, clients' status events, clients' labels and app versions."""
    conn.exec_driver_sql("ALTER TABLE store_clients ADD COLUMN labels TEXT")
    conn.exec_driver_sql("ALTER TABLE store_clients ADD COLUMN app_version TEXT")
    store_rollouts.create(conn)
    store_rollout_audit.create(conn)
    store_status_events.create(conn)


UPGRADES[5] = _add_rollouts


def _add_change_seq(conn: Connection) -> None:
    """Every client at change 0 (the counter starts at 0 too): a process that reads the
    clients changed since then reads the ones changed after the upgrade."""
    # Done before (a layout set back by hand, or tables made from this layout): left as it is.
    if not any(c["name"] == "change_seq" for c in inspect(conn).get_columns("store_clients")):
        conn.exec_driver_sql("ALTER TABLE store_clients ADD COLUMN change_seq BIGINT NOT NULL DEFAULT 0")
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS store_clients_change_seq ON store_clients (change_seq)")


UPGRADES[6] = _add_change_seq


def _index_status_by_version(conn: Connection) -> None:
    # IF NOT EXISTS: on SQLite the layout 4 step rebuilds the table with today's indexes.
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS store_client_status_version ON store_client_status (version, applied)"
    )


UPGRADES[7] = _index_status_by_version


def _add_fleet_summary(conn: Connection) -> None:
    """Layout 9: each client's fleet summary on its row (see
    :mod:`migsync.server.fleet_summary`), computed here for every client from its status rows."""
    default = "0" if conn.dialect.name == "sqlite" else "FALSE"
    have = {c["name"] for c in inspect(conn).get_columns("store_clients")}
    for column, kind, value in (
        ("fleet_failing", "BOOLEAN", default),
        ("fleet_drift", "BOOLEAN", default),
        ("fleet_done", "INTEGER", "0"),
    ):
        if column not in have:  # a layout set back by hand, or tables made from this layout
            conn.exec_driver_sql(
                f"ALTER TABLE store_clients ADD COLUMN {column} {kind} NOT NULL DEFAULT {value}"
            )
    # The same statement as migsync.server.fleet_summary.REFRESH_ALL_SQL, spelled out: an upgrade
    # step stays what it was when later releases change the code.
    conn.exec_driver_sql(
        "UPDATE store_clients SET "
        "fleet_failing = EXISTS (SELECT 1 FROM store_client_status s WHERE s.client_id = store_clients.id "
        "AND NOT s.applied AND s.error IS NOT NULL), "
        "fleet_drift = EXISTS (SELECT 1 FROM store_client_status s JOIN store_migrations m "
        "ON m.version = s.version WHERE s.client_id = store_clients.id AND s.checksum IS NOT NULL "
        "AND s.checksum <> m.checksum), "
        "fleet_done = (SELECT count(*) FROM store_client_status s JOIN store_migrations m "
        "ON m.version = s.version WHERE s.client_id = store_clients.id AND s.applied "
        "AND s.checksum = m.checksum)"
    )
    conn.exec_driver_sql(
        "CREATE INDEX IF NOT EXISTS store_clients_fleet "
        "ON store_clients (fleet_failing, fleet_drift, fleet_done)"
    )


UPGRADES[8] = _add_fleet_summary


def _stamp_by_transaction(conn: Connection) -> None:
    """Layout 10: on Postgres a client change is stamped with its transaction's id, no longer with
    a counter: the counter's stamps are set back to 0 (below every transaction id), lest a
    reader take them for changes beyond where it stands, and the counter goes. A process of an
    earlier release, which would stamp with the counter, refuses the store from now on."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("UPDATE store_clients SET change_seq = 0 WHERE change_seq <> 0")
        conn.exec_driver_sql("DELETE FROM store_meta WHERE key = 'change_seq'")


UPGRADES[9] = _stamp_by_transaction
