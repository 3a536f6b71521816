"""A client database that an older migsync left (layout 4: versions as integers) upgrades in place.

The test builds a genuine layout-4 database with the layout's own DDL and rows as that release
wrote them: recorded and applied migrations, a hold, status reports in the outbox, an admin's
request, an entity change and capture triggers on an application table. Then today's migsync
opens it, and everything must be there, keyed by text, and keep working: status, the hold,
the capture, a new migration of 20 digits, a revert.
"""

from __future__ import annotations

from pathlib import Path

from dbtools import aquery, is_sqlite

from migsync import Client
from migsync.core import capture, schema
from migsync.core.migration import ANY_DIALECT, Migration, Script
from migsync.core.plugins import make_plugins

USERS = Migration(
    1,
    "0001_users",
    up={ANY_DIALECT: Script("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")},
    down={ANY_DIALECT: Script("DROP TABLE users")},
)
EMAIL = Migration(
    2,
    "0002_email",
    up={ANY_DIALECT: Script("CREATE TABLE emails (user_id INTEGER, address TEXT)")},
    down={ANY_DIALECT: Script("DROP TABLE emails")},
)
POP = Migration(
    "20150100000001000000",
    "20150100000001000000_identities",
    up={ANY_DIALECT: Script("CREATE TABLE identities (id INTEGER PRIMARY KEY)")},
    down={ANY_DIALECT: Script("DROP TABLE identities")},
)


async def build_layout_4(url: str) -> None:
    """A database as migsync's layout 4 left it: USERS applied, EMAIL recorded and held."""
    spec = make_plugins().backend_for_url(url)
    backend = spec.load()(url)
    async with backend:
        dialect = backend.dialect
        async with backend.transaction() as tx:
            prelude = backend.schema_prelude()[:-1]  # a Postgres schema, if any
            statements = [*prelude, *schema.ddl(dialect, backend.tables, None, to_version=4)]
            await tx.execute_batch([(s, ()) for s in statements])
            t = backend.tables
            rows = [
                (
                    f"INSERT INTO {t.migrations} (version, name, checksum, signature, content, origins, "
                    "recorded_at) VALUES ($1, $2, $3, 'sig', $4, NULL, 1)",
                    (m.version.parts[0], m.name, m.checksum, m.canonical_content()),
                )
                for m in (USERS, EMAIL)
            ]
            rows += [
                (
                    f"INSERT INTO {t.status} (version, migration_name, applied, applied_at, "
                    "applied_checksum, attempts, updated_at) VALUES (1, '0001_users', TRUE, 1, $1, 1, 1)",
                    (USERS.checksum,),
                ),
                (f"INSERT INTO {t.meta} (key, value) VALUES ('hold_from', '2')", ()),
                (
                    f"INSERT INTO {t.reports} (version, applied, error, attempts, checksum, revision, "
                    "changed_at) VALUES (1, TRUE, NULL, 1, $1, 1, 1)",
                    (USERS.checksum,),
                ),
                (
                    f"INSERT INTO {t.actions} (id, action, version, requested_by, requested_at, "
                    "received_at, state, changed_at) VALUES (7, 'revert', 2, 'admin', 1, 1, 'done', 1)",
                    (),
                ),
                (
                    f"INSERT INTO {t.changes} (entity, entity_id, operation, data, schema_version) "
                    "VALUES ('users', '1', 'insert', '{}', 1)",
                    (),
                ),
            ]
            await tx.execute_batch(rows)
            await tx.run_script(USERS.script("up", dialect).sql)
        target = capture._dialect(backend)
        await capture._install(backend, target, None, "users")
        if not is_sqlite(url):
            # The function as layout 4 installed it: its version a bigint.
            function, _ = capture.capture_function_sql(backend.tables)
            old = function[1:-1].replace("''", "'").replace("applied_version text", "applied_version bigint")
            async with backend.transaction() as tx:
                await tx.run_script(old)


async def test_a_layout_4_database_upgrades_in_place_and_keeps_working(tmp_path: Path, any_url: str) -> None:
    await build_layout_4(any_url)
    async with Client.connect(any_url, sinks=[]) as client:
        states = await client.status()
        assert [(s.version, s.name, s.state, s.held) for s in states] == [
            (1, "0001_users", "applied", False),
            (2, "0002_email", "pending", True),
        ]
        assert await client.ledger.held_from() == 2
        # The capture trigger writes the client's version as a key (after the upgrade replaced
        # the old Postgres function, whose variable was a bigint).
        async with client.changes() as rec:
            await rec.execute("INSERT INTO users (id, name) VALUES (2, 'b')")
        assert await client.ledger.queue("0002_email") == ["0002_email"]  # lifts the hold
        result = await client.apply([USERS, EMAIL, POP])
        assert result.ok, result
        assert [(s.version.text, s.state) for s in await client.status()] == [
            ("1", "applied"),
            ("2", "applied"),
            ("20150100000001000000", "applied"),
        ]
        reverted = await client.ledger.revert(to=1)
        assert reverted.reverting == ["20150100000001000000_identities", "0002_email"]
        assert (await client.process()).ok
        assert [s.state for s in await client.status()] == ["applied", "pending", "pending"]
    t = schema.DEFAULT_TABLES if is_sqlite(any_url) else schema.Tables("public")
    assert await aquery(any_url, f"SELECT schema_version FROM {t.changes} ORDER BY seq") == [("011",)] * 2
    assert await aquery(any_url, f"SELECT version FROM {t.reports}") == [("011",)]
    assert await aquery(any_url, f"SELECT version FROM {t.actions}") == [("012",)]
    assert await aquery(any_url, f"SELECT value FROM {t.meta} WHERE key = 'schema_version'") == [
        (str(schema.SCHEMA_VERSION),)
    ]


async def test_a_version_of_twenty_digits_applies_reverts_and_applies_again(any_url: str) -> None:
    async with Client.connect(any_url, sinks=[]) as client:
        assert (await client.apply([USERS, POP])).ok
        [_, pop] = await client.status()
        assert (pop.version.text, pop.state) == ("20150100000001000000", "applied")
        assert pop.to_json()["version"] == "20150100000001000000"
        assert (await client.ledger.revert("20150100000001000000")).reverting == [POP.name]
        assert (await client.process()).ok
        assert (await client.apply([USERS, POP])).ok
        assert [s.state for s in await client.status()] == ["applied", "applied"]


BROKEN = Migration(
    5,
    "0005_broken",
    up={ANY_DIALECT: Script("CREATE TABLE half (id INTEGER);\nINSERT INTO nowhere VALUES (1)")},
    down={ANY_DIALECT: Script("DROP TABLE half")},
)
LATER = Migration(
    4,
    "0004_later",
    up={ANY_DIALECT: Script("CREATE TABLE later (id INTEGER)")},
    down={ANY_DIALECT: Script("DROP TABLE later")},
)


async def queue_indexes(url: str, t: schema.Tables) -> list[str]:
    if is_sqlite(url):
        sql = f"SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = '{schema.QUEUE}'"
    else:
        sql = f"SELECT indexname FROM pg_indexes WHERE tablename = '{schema.QUEUE}'"
    return [name for (name,) in await aquery(url, sql)]


async def queue_from(url: str, t: schema.Tables) -> int:
    [(value,)] = await aquery(url, f"SELECT value FROM {t.meta} WHERE key = '{schema.QUEUE_FROM_KEY}'")
    return int(value)


async def set_back_to_layout_5(url: str, t: schema.Tables) -> None:
    """Layout 5 differs from 6 in the queue's indexes and the stored bound only (the rows are alike)."""
    on = "" if t.namespace is None else f'"{t.namespace}".'
    for sql in (
        f"DROP INDEX {on}idx_{schema.QUEUE}_name",
        f"CREATE INDEX idx_{schema.QUEUE}_open ON {t.queue} (seq) WHERE processed = FALSE",
        f"CREATE INDEX idx_{schema.QUEUE}_open_name ON {t.queue} (migration_name) WHERE processed = FALSE",
        f"DELETE FROM {t.meta} WHERE key = '{schema.QUEUE_FROM_KEY}'",
        f"UPDATE {t.meta} SET value = '5' WHERE key = 'schema_version'",
    ):
        await aquery(url, sql)


async def test_a_layout_5_queue_upgrades_and_its_open_changes_still_run_in_order(any_url: str) -> None:
    t = schema.DEFAULT_TABLES if is_sqlite(any_url) else schema.Tables("public")
    async with Client.connect(any_url, sinks=[]) as client:
        assert (await client.apply([USERS])).ok
        await client.ledger.record([EMAIL, LATER])
        assert await client.ledger.queue_pending() == ["0002_email", "0004_later"]
    await set_back_to_layout_5(any_url, t)
    assert f"idx_{schema.QUEUE}_open" in await queue_indexes(any_url, t)

    async with Client.connect(any_url, sinks=[]) as client:
        # The upgrade: no index on the open changes left, one by name, and a bound that is
        # true of any queue (0) until a pass moves it.
        assert {i for i in await queue_indexes(any_url, t) if i.startswith("idx_")} == {
            f"idx_{schema.QUEUE}_name"
        }
        assert await queue_from(any_url, t) == 0
        assert [(s.name, s.queued) for s in await client.status()] == [
            ("0001_users", None),
            ("0002_email", "apply"),
            ("0004_later", "apply"),
        ]
        result = await client.process()
        assert result.ok and result.remaining == 0, result
        [(last,)] = await aquery(any_url, f"SELECT MAX(seq) FROM {t.queue}")
        assert await queue_from(any_url, t) == last + 1  # past every change: none is open

        # A failure blocks the queue: the bound is at the failed change, never past it.
        result = await client.apply([USERS, EMAIL, LATER, BROKEN])
        assert not result.ok and result.remaining == 1
        [(broken,)] = await aquery(any_url, f"SELECT seq FROM {t.queue} WHERE migration_name = '0005_broken'")
        assert await queue_from(any_url, t) == broken
        # Reverting cancels the open change by name (the name index) and queues the reverts.
        reverted = await client.ledger.revert(to=1)
        assert reverted.cancelled == ["0005_broken"]
        assert (await client.process()).ok
        assert [s.state for s in await client.status()] == ["applied", "pending", "pending", "pending"]
        assert await queue_from(any_url, t) == broken + 3  # after the two reverts queued behind it
        # Applying again queues what is pending, the broken one included, behind the bound.
        result = await client.apply([USERS, EMAIL, LATER])
        assert [o.label for o in result.processed] == [
            "apply 0002_email",
            "apply 0004_later",
            "apply 0005_broken",
        ]
        # The bound moves in a batch's last commit; this batch ended in a failure, so it stays
        # where the last pass left it: below the open change, which is all it must be.
        [(again,)] = await aquery(any_url, f"SELECT MAX(seq) FROM {t.queue} WHERE processed = FALSE")
        assert result.remaining == 1 and await queue_from(any_url, t) == broken + 3 < again
    assert await aquery(any_url, f"SELECT value FROM {t.meta} WHERE key = 'schema_version'") == [
        (str(schema.SCHEMA_VERSION),)
    ]


async def test_a_queue_emptied_by_hand_hands_out_seqs_again_and_still_finds_them(any_url: str) -> None:
    """Deleting the queue's rows by hand makes new changes reuse seqs below the stored bound:
    queueing lowers the bound again, so they are found and run."""
    t = schema.DEFAULT_TABLES if is_sqlite(any_url) else schema.Tables("public")
    async with Client.connect(any_url, sinks=[]) as client:
        assert (await client.apply([USERS, EMAIL])).ok
        assert await queue_from(any_url, t) == 3
        await aquery(any_url, f"DELETE FROM {t.queue}")
        await aquery(any_url, f"DELETE FROM {t.status}")
        await aquery(any_url, "DROP TABLE users")
        await aquery(any_url, "DROP TABLE emails")
        assert await client.ledger.queue_pending() == ["0001_users", "0002_email"]
        assert await queue_from(any_url, t) == 0
        result = await client.process()
        assert [o.label for o in result.processed] == ["apply 0001_users", "apply 0002_email"]
        assert result.ok and result.remaining == 0
        assert await queue_from(any_url, t) == 3
