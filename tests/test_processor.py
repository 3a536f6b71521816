"""The processor's rules on real SQLite files: order, blocking, retries, dead, revert, checksums."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from conftest import write_migrations
from dbtools import BOOKKEEPING_TABLES

from migsync import Client, RetryPolicy, load_directory
from migsync.backends.sqlite import SQLiteBackend
from migsync.core.errors import ChecksumMismatch, MigrationError, UnknownMigration
from migsync.core.events import BaseEventSink, Event
from migsync.core.plugins import make_plugins
from migsync.testing import FakeClock

THREE = {
    "0001_users.sql": "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n"
    "-- migrate:down\nDROP TABLE users;\n",
    "0002_posts.up.sql": "CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER);\n"
    "CREATE INDEX ix_posts_user ON posts (user_id);",
    "0002_posts.down.sql": "DROP INDEX ix_posts_user; DROP TABLE posts;",
    "0003_tags.sql": "-- migrate:up\nCREATE TABLE tags (name TEXT);\n-- migrate:down\nDROP TABLE tags;\n",
}

# Creates a table, then fails: the table must not survive the failure.
HALF_BROKEN = (
    "-- migrate:up\nCREATE TABLE half (id INTEGER);\nINSERT INTO nowhere VALUES (1);\n"
    "-- migrate:down\nDROP TABLE half;\n"
)


class Recorder(BaseEventSink):
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def emit(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self, kind: str) -> list[str]:
        return [getattr(e, "name", "") for e in self.events if e.kind == kind]


def tables(db_path: Path) -> set[str]:
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows} - BOOKKEEPING_TABLES


def make_client(db_path: Path, **kwargs: object) -> Client:
    kwargs.setdefault("clock", FakeClock())
    kwargs.setdefault("retry", RetryPolicy(base=2.0, factor=2.0, jitter=0.0))
    return Client(SQLiteBackend(f"sqlite:///{db_path}"), **kwargs)  # type: ignore[arg-type]


async def drain(client: Client) -> None:
    """Let the sinks' workers deliver what is queued."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "client.db"


async def test_applies_in_version_order(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", THREE)
    recorder = Recorder()
    async with make_client(db_path, sinks=[recorder]) as client:
        result = await client.apply(load_directory(migrations))
        await drain(client)
        states = await client.status()
    assert result.ok and result.remaining == 0
    assert [o.label for o in result.processed] == ["apply 0001_users", "apply 0002_posts", "apply 0003_tags"]
    assert recorder.kinds("migration_applied") == ["0001_users", "0002_posts", "0003_tags"]
    assert [(s.name, s.state, s.attempts) for s in states] == [
        ("0001_users", "applied", 1),
        ("0002_posts", "applied", 1),
        ("0003_tags", "applied", 1),
    ]
    assert tables(db_path) == {"users", "posts", "tags"}


async def test_noop_apply_changes_nothing(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", THREE)
    async with make_client(db_path) as client:
        await client.apply(load_directory(migrations))
        before = await client.status()
        result = await client.apply(load_directory(migrations))
        assert result.processed == [] and result.ok
        assert await client.status() == before


async def test_failure_leaves_no_trace_and_blocks_later(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(
        tmp_path / "m", {**THREE, "0002_posts.up.sql": HALF_BROKEN.split("\n", 1)[1]}
    )
    # 0002 as a paired file whose up script creates 'half' and then fails.
    (migrations / "0002_posts.up.sql").write_text(
        "CREATE TABLE half (id INTEGER);\nINSERT INTO nowhere VALUES (1);"
    )
    async with make_client(db_path) as client:
        result = await client.apply(load_directory(migrations))
        states = {s.name: s for s in await client.status()}
    assert result.failure is not None and result.failure.label == "apply 0002_posts"
    assert "no such table: nowhere" in (result.failure.error or "")
    assert f"migration 0002_posts, statement 2 ({migrations / '0002_posts.up.sql'}:2)" in (
        result.failure.error or ""
    )
    assert tables(db_path) == {"users"}, "the failed migration's first statement was rolled back"
    assert states["0002_posts"].state == "failed"
    assert states["0002_posts"].attempts == 1
    assert states["0003_tags"].state == "pending", "a failed migration blocks the ones after it"


async def test_backoff_retries_then_dead(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(
        tmp_path / "m", {"0001_half.sql": HALF_BROKEN, "0002_tags.sql": THREE["0003_tags.sql"]}
    )
    clock = FakeClock()
    recorder = Recorder()
    async with make_client(db_path, clock=clock, sinks=[recorder], max_attempts=3) as client:
        first = await client.apply(load_directory(migrations))
        assert first.failure is not None and first.failure.attempts == 1
        assert first.failure.next_attempt_at == clock.now() + 2.0

        waiting = await client.process()
        assert waiting.processed == [] and waiting.waiting_until == clock.now() + 2.0

        clock.advance(2.0)
        second = await client.process()
        assert second.failure is not None and second.failure.attempts == 2
        assert second.failure.next_attempt_at == clock.now() + 4.0

        clock.advance(4.0)
        third = await client.process()
        assert third.failure is not None and third.failure.dead and third.failure.attempts == 3

        clock.advance(10_000)
        blocked = await client.process()
        assert blocked.processed == [] and blocked.blocked is not None and blocked.blocked.dead
        states = {s.name: s for s in await client.status()}
        await drain(client)
    assert states["0001_half"].state == "dead" and states["0001_half"].attempts == 3
    assert states["0001_half"].next_attempt_at is None, "a dead change is never retried"
    assert "no such table: nowhere" in (states["0001_half"].error or "")
    assert states["0002_tags"].state == "pending"
    assert recorder.kinds("migration_failed") == ["0001_half", "0001_half"]
    assert recorder.kinds("migration_dead") == ["0001_half"]
    assert tables(db_path) == set()


async def test_apply_does_not_revive_dead_but_queue_does(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", {"0001_half.sql": HALF_BROKEN})
    async with make_client(db_path, max_attempts=1) as client:
        result = await client.apply(load_directory(migrations))
        assert result.failure is not None and result.failure.dead
        again = await client.apply(load_directory(migrations), ignore_backoff=True)
        assert again.blocked is not None and again.processed == []
        assert await client.ledger.queue("0001_half") == ["0001_half"]
        revived = await client.process(ignore_backoff=True)
        assert revived.failure is not None and revived.failure.attempts == 1


async def test_new_content_of_unapplied_migration_retries_at_once(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", {"0001_half.sql": HALF_BROKEN})
    async with make_client(db_path, max_attempts=1) as client:
        assert (await client.apply(load_directory(migrations))).failure is not None
        (migrations / "0001_half.sql").write_text(
            "-- migrate:up\nCREATE TABLE half (id INTEGER);\n-- migrate:down\nDROP TABLE half;\n"
        )
        fixed = await client.apply(load_directory(migrations))
        states = await client.status()
    assert fixed.ok and [o.label for o in fixed.processed] == ["apply 0001_half"]
    assert states[0].state == "applied"
    assert tables(db_path) == {"half"}


async def test_revert_runs_newest_first(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", THREE)
    recorder = Recorder()
    async with make_client(db_path, sinks=[recorder]) as client:
        await client.apply(load_directory(migrations))
        assert (await client.ledger.revert(everything=True)).reverting == [
            "0003_tags",
            "0002_posts",
            "0001_users",
        ]
        result = await client.process()
        await drain(client)
        states = await client.status()
    assert result.ok
    assert recorder.kinds("migration_reverted") == ["0003_tags", "0002_posts", "0001_users"]
    assert {s.state for s in states} == {"pending"}
    assert tables(db_path) == set()


async def test_revert_name_takes_later_ones_with_it(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", THREE)
    async with make_client(db_path) as client:
        await client.apply(load_directory(migrations))
        assert (await client.ledger.revert("posts")).reverting == ["0003_tags", "0002_posts"]
        await client.process()
        states = [(s.name, s.state) for s in await client.status()]
        with pytest.raises(MigrationError, match="0003_tags is not applied"):
            await client.ledger.revert("0003_tags")
        assert (await client.ledger.revert(to=1)).reverting == []
    assert states == [("0001_users", "applied"), ("0002_posts", "pending"), ("0003_tags", "pending")]
    assert tables(db_path) == {"users"}


async def test_revert_to_version(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", THREE)
    async with make_client(db_path) as client:
        await client.apply(load_directory(migrations))
        assert (await client.ledger.revert(to=1)).reverting == ["0003_tags", "0002_posts"]
        assert (await client.process()).ok
    assert tables(db_path) == {"users"}


async def test_changed_applied_migration_is_refused(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", THREE)
    async with make_client(db_path) as client:
        await client.apply(load_directory(migrations))
        (migrations / "0003_tags.sql").write_text(
            "-- migrate:up\nCREATE TABLE tags (name TEXT, color TEXT);\n-- migrate:down\nDROP TABLE tags;\n"
        )
        with pytest.raises(ChecksumMismatch, match="0003_tags was applied with checksum"):
            await client.apply(load_directory(migrations))
        states = await client.status()
    assert [s.state for s in states] == ["applied"] * 3


async def test_tampered_stored_content_is_refused(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", {"0001_users.sql": THREE["0001_users.sql"]})
    async with make_client(db_path) as client:
        await client.ledger.record(load_directory(migrations))
        with sqlite3.connect(db_path) as conn:
            conn.execute("UPDATE client_migration SET content = replace(content, 'users', 'evil')")
        await client.ledger.queue_pending()
        result = await client.process()
    assert result.failure is not None
    assert "does not match its checksum" in (result.failure.error or "")
    assert tables(db_path) == set()


async def test_older_new_migration_is_refused(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", {"0002_posts.sql": THREE["0003_tags.sql"]})
    async with make_client(db_path) as client:
        await client.apply(load_directory(migrations))
        write_migrations(migrations, {"0001_users.sql": THREE["0001_users.sql"]})
        with pytest.raises(MigrationError, match="0001_users is older than 0002_posts"):
            await client.apply(load_directory(migrations))


async def test_find_by_name_version_or_description(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", THREE)
    async with make_client(db_path) as client:
        await client.ledger.record(load_directory(migrations))
        assert (await client.ledger.find("0002_posts")).version == 2
        assert (await client.ledger.find("posts")).version == 2
        assert (await client.ledger.find("2")).name == "0002_posts"
        with pytest.raises(UnknownMigration, match="no migration 'nope'"):
            await client.ledger.find("nope")


class FailingSink(BaseEventSink):
    async def emit(self, event: Event) -> None:
        raise RuntimeError("sink is broken")


class StuckSink(BaseEventSink):
    async def emit(self, event: Event) -> None:
        await asyncio.sleep(3600)


async def test_failing_and_slow_sinks_never_stop_the_processor(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", THREE)
    good = Recorder()
    client = make_client(db_path, sinks=[FailingSink(), StuckSink(), good], sink_timeout=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client:
        result = await client.apply(load_directory(migrations))
        processed_at = loop.time()
        await drain(client)
    assert result.ok and len(result.processed) == 3
    # The stuck sink sleeps an hour: a generous bound, which a loaded machine cannot break.
    assert processed_at - started < 60, "a stuck sink must not stall the processor"
    assert good.kinds("migration_applied") == ["0001_users", "0002_posts", "0003_tags"]


async def test_events_go_out_after_commit(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", THREE)
    seen: list[tuple[str, bool]] = []

    def check(event: Event) -> None:
        # A separate connection sees the migration committed when its event arrives.
        with sqlite3.connect(db_path) as conn:
            row = conn.execute(
                "SELECT applied FROM client_migration_status WHERE migration_name = ?",
                (getattr(event, "name", ""),),
            ).fetchone()
        seen.append((getattr(event, "name", ""), bool(row and row[0])))

    async with make_client(db_path) as client:
        client.bus.subscribe(check, "migration_applied")
        await client.apply(load_directory(migrations))
        await drain(client)
    assert seen == [("0001_users", True), ("0002_posts", True), ("0003_tags", True)]


async def test_concurrent_passes_apply_each_migration_once(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", THREE)
    recorder = Recorder()
    async with make_client(db_path, sinks=[recorder]) as client:
        await client.ledger.record(load_directory(migrations))
        await client.ledger.queue_pending()
        results = await asyncio.gather(*(client.process() for _ in range(4)))
        await drain(client)
    assert sum(len(r.processed) for r in results) == 3
    assert recorder.kinds("migration_applied") == ["0001_users", "0002_posts", "0003_tags"]


async def test_background_loop_applies_and_stops(tmp_path: Path, db_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", THREE)
    async with Client.connect(
        f"sqlite:///{db_path}", plugins=make_plugins(autoload=False), sinks=[]
    ) as client:
        await client.ledger.record(load_directory(migrations))
        await client.ledger.queue_pending()
        applied = asyncio.Event()
        client.bus.subscribe(lambda e: applied.set() if e.name == "0003_tags" else None, "migration_applied")  # type: ignore[attr-defined]
        client.start(interval=0.05)
        client.start(interval=0.05)  # starting twice keeps one loop
        await asyncio.wait_for(applied.wait(), 60)  # a generous deadline, not a measure
        await client.stop()
        assert not client.processor.running
        states = await client.status()
    assert [s.state for s in states] == ["applied"] * 3


async def test_unchanged_source_is_not_parsed_again_but_changes_are(tmp_path: Path, db_path: Path) -> None:
    from migsync.core.errors import SourceError
    from migsync.core.sources import scan_directory

    migrations = write_migrations(tmp_path / "m", THREE)
    async with make_client(db_path) as client:
        first = await client.ledger.record_source(scan_directory(migrations))
        assert first.added == ["0001_users", "0002_posts", "0003_tags"]
        await client.apply(scan_directory(migrations))

        same = scan_directory(migrations)
        assert (await client.ledger.record_source(same)).added == []
        assert same._parsed == [], "an unchanged source is not parsed"

        # A changed applied migration is still caught: its digest differs.
        (migrations / "0003_tags.sql").write_text(THREE["0003_tags.sql"].replace("name TEXT", "n TEXT"))
        with pytest.raises(ChecksumMismatch, match="0003_tags"):
            await client.apply(scan_directory(migrations))
        # So is a new invalid file, and nothing is recorded from it.
        (migrations / "0003_tags.sql").write_text(THREE["0003_tags.sql"])
        (migrations / "0004_bad.sql").write_text("CREATE TABLE nope (x);")
        with pytest.raises(SourceError, match=r"0004_bad\.sql"):
            await client.apply(scan_directory(migrations))
        assert [s.name for s in await client.status()] == ["0001_users", "0002_posts", "0003_tags"]
