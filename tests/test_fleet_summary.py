"""Each client's fleet summary (``store_clients.fleet_failing``, ``fleet_drift``, ``fleet_done``)
is what its status rows say, whatever wrote them: random sequences of status reports,
``import-reports``, publishes and ``publish --force``, then the summary of every client against
a brute-force computation from the full read of the fleet; on real SQLite and Postgres stores.
A write path that forgot the summary fails here."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import throwaway_database
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dbtools import aquery, downgrade_store, drop_client_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migsync.core.migration import Migration, Script
from migsync.core.version import Version
from migsync.protocol.wire import StatusReport
from migsync.server import Store
from migsync.server.fleet import STATES, state_of
from migsync.server.fleet_summary import PUBLISH_LOCK_KEY
from migsync.server.import_reports import import_reports
from migsync.server.records import FleetEntry
from migsync.transports import dropfiles

CLIENTS = 4
OTHER = "e" * 64
#: what a client says of a version: applied, applied other content, failed (with the published
#: content, or other content), failed for good, reverted
KINDS = ("ok", "other", "failed", "failed-other", "dead", "reverted")

_reports = st.lists(st.tuples(st.integers(0, 7), st.sampled_from(KINDS)), min_size=1, max_size=4)
_operation = st.one_of(
    st.tuples(st.just("report"), st.integers(0, CLIENTS - 1), _reports),
    st.tuples(st.just("import"), st.integers(0, CLIENTS - 1), _reports),
    st.tuples(st.just("publish"), st.integers(1, 2)),
    st.tuples(st.just("force"), st.integers(0, 7)),
)
_operations = st.lists(_operation, min_size=1, max_size=14)


def migration(version: int, generation: int = 0) -> Migration:
    """Version ``version``; another ``generation`` is other content under the same version."""
    column = f", g{generation} INTEGER" if generation else ""
    return Migration(
        version,
        f"{version:04d}_m{version}",
        {"*": Script(f"CREATE TABLE t{version} (x INTEGER{column})")},
        {"*": Script(f"DROP TABLE t{version}")},
    )


def report(version: int, kind: str, checksum: str) -> StatusReport:
    if kind == "ok":
        return StatusReport(version, True, None, 1, checksum)
    if kind == "other":
        return StatusReport(version, True, None, 1, OTHER)
    if kind == "failed":
        return StatusReport(version, False, "boom", 2, checksum)
    if kind == "failed-other":
        return StatusReport(version, False, "boom", 2, OTHER)
    if kind == "dead":
        return StatusReport(version, False, "gave up", 5, checksum, dead=True)
    return StatusReport(version, False, None, 1, checksum)


def expected(entry: FleetEntry, published: int) -> tuple[bool, bool, int]:
    """The summary, from the full read of the fleet (the status rows, compared in Python)."""
    return bool(entry.failed), bool(entry.drift), published - len(entry.pending)


async def check(store: Store, url: str) -> None:
    """Every client's summary against the brute force, and the counts of a page against it."""
    published = len(await store.migrations())
    entries = {e.client.client_id: e for e in await store.fleet()}
    rows = await aquery(
        url, "SELECT id, fleet_failing, fleet_drift, fleet_done FROM store_clients ORDER BY id"
    )
    got = {int(i): (bool(f), bool(d), int(n)) for i, f, d, n in rows}
    assert got == {i: expected(e, published) for i, e in entries.items()}
    by_state = dict.fromkeys(STATES, 0)
    for entry in entries.values():
        by_state[state_of(entry)] += 1
    page = await store.fleet_page(limit=1)
    assert page.counts == by_state and page.total == len(entries)
    for state in STATES:
        listed = await store.fleet_page(limit=1000, counts=False, which=_state(state))
        assert [e.client.client_id for e in listed.entries] == sorted(
            i for i, e in entries.items() if state_of(e) == state
        )


def _state(state: str) -> Any:
    from migsync.server.fleet import FleetFilter

    return FleetFilter(state=state)


async def scenario(store_url: str, raw_url: str, drop: Path, operations: Sequence[Any]) -> None:
    key = Ed25519PrivateKey.generate()
    generations = {1: 0, 2: 0}
    clock = itertools.count(1_000)
    async with Store.open(store_url) as store:
        await store.publish([migration(1), migration(2)], key)
        ids = [client_id for client_id, _, _ in await store.add_clients([f"c{i}" for i in range(CLIENTS)])]
        for operation in operations:
            sums = {int(m.version.text): m.checksum for m in await store.migrations()}
            versions = sorted(sums)
            if operation[0] in ("report", "import"):
                _, client, said = operation
                batch = {versions[v % len(versions)]: kind for v, kind in said}
                reports = [report(v, kind, sums[v]) for v, kind in sorted(batch.items())]
                if operation[0] == "report":
                    await store.report(ids[client], reports)
                else:
                    data = dropfiles.dump(dropfiles.reports_document(str(ids[client]), reports))
                    drop_client_file(drop, str(ids[client]), data, next(clock))
                    result = await import_reports(store, drop)
                    assert not result.refused
            elif operation[0] == "publish":
                new = range(max(versions) + 1, max(versions) + 1 + operation[1])
                generations |= dict.fromkeys(new, 0)
                await store.publish([migration(v, generations[v]) for v in versions + list(new)], key)
            else:
                version = versions[operation[1] % len(versions)]
                generations[version] += 1
                await store.publish([migration(version, generations[version])], key, force=True)
            await check(store, raw_url)


def _urls(backend: str, tmp: Path) -> Any:
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'server.db'}"
        return _Same(url)
    return throwaway_database("migsync_summary")


class _Same:
    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *_: object) -> None:
        return None


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@settings(max_examples=12, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(operations=_operations)
def test_the_summary_is_what_the_status_rows_say(
    backend: str, operations: list[Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("summary")
    with _urls(backend, tmp) as url:
        asyncio.run(scenario(url, url, tmp / "drop", operations))


async def _a_varied_store(url: str) -> None:
    key = Ed25519PrivateKey.generate()
    async with Store.open(url) as store:
        await store.publish([migration(1), migration(2), migration(3)], key)
        ids = [client_id for client_id, _, _ in await store.add_clients([f"c{i}" for i in range(6)])]
        sums = {int(m.version.text): m.checksum for m in await store.migrations()}
        for client_id, kinds in zip(
            ids, (("ok",) * 3, ("ok", "other"), ("failed",), ("dead", "ok"), ()), strict=False
        ):
            reports = [report(v, kind, sums[v]) for v, kind in zip((1, 2, 3), kinds, strict=False)]
            if reports:
                await store.report(client_id, reports)
        await store.publish([migration(2, 1)], key, force=True)


def test_the_layout_upgrade_computes_every_summary(any_store: str) -> None:
    asyncio.run(_a_varied_store(any_store))
    # Back to layout 8 (no summary), then what the upgrade computes must match the brute force.
    asyncio.run(downgrade_store(any_store, 8))

    async def upgraded() -> None:
        async with Store.open(any_store, create=False) as store:
            await check(store, any_store)
        rows = await aquery(any_store, "SELECT count(*) FROM store_clients WHERE fleet_done > 0")
        assert rows == [(2,)], "clients with applied versions have a summary, not the columns' default"

    asyncio.run(upgraded())


# -- concurrent writers (Postgres: SQLite admits one writer at a time) ------------------------------


async def _waits_on_a_lock(url: str, running: asyncio.Task[Any]) -> None:
    """Until a session of this database waits on a lock (asked again and again, no clock), from
    a session outside any transaction (``pg_stat_activity`` is read once per transaction)."""
    sql = (
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid "
        "WHERE NOT l.granted AND s.datname = current_database()"
    )
    watcher = await asyncpg.connect(url)
    try:
        while not await watcher.fetchval(sql):
            if running.done():
                raise AssertionError(f"the report ended without waiting: {running.result()!r}")
    finally:
        await watcher.close()


async def _two_published(url: str) -> tuple[int, dict[int, str]]:
    async with Store.open(url) as store:
        await store.publish([migration(1), migration(2)], Ed25519PrivateKey.generate())
        [(client_id, _, _)] = await store.add_clients(["c"])
        return client_id, {int(m.version.text): m.checksum for m in await store.migrations()}


async def test_a_report_during_a_forced_publish_counts_the_new_content(pg_url: str) -> None:
    # The publish (by hand here: the lock a publish holds, and the checksum a force writes) has
    # not committed when the report comes; the report waits, then counts against the new checksum.
    client_id, _ = await _two_published(pg_url)
    holder = await asyncpg.connect(pg_url)
    try:
        await holder.execute("BEGIN")
        await holder.execute("SELECT pg_advisory_xact_lock($1)", PUBLISH_LOCK_KEY)
        key = Version.parse(1).key
        await holder.execute("UPDATE store_migrations SET checksum = $1 WHERE version = $2", OTHER, key)
        async with Store.open(pg_url) as store:
            running = asyncio.create_task(store.report(client_id, [StatusReport(1, True, None, 1, OTHER)]))
            await _waits_on_a_lock(pg_url, running)
            await holder.execute("COMMIT")
            await running
            [entry] = await store.fleet()  # (not check(): the content no longer matches its checksum)
            assert entry.drift == () and entry.pending == (2,)
    finally:
        await holder.close()
    assert await aquery(pg_url, "SELECT fleet_drift, fleet_done FROM store_clients") == [(False, 1)]


async def test_two_reports_of_one_client_at_once_both_count(pg_url: str) -> None:
    # Another report of the same client (by hand: its locks and its row) is in flight: this one
    # waits for it, then its summary counts both.
    client_id, sums = await _two_published(pg_url)
    holder = await asyncpg.connect(pg_url)
    try:
        await holder.execute("BEGIN")
        await holder.execute("SELECT pg_advisory_xact_lock_shared($1)", PUBLISH_LOCK_KEY)
        await holder.execute("SELECT id FROM store_clients WHERE id = $1 FOR NO KEY UPDATE", client_id)
        await holder.execute(
            "INSERT INTO store_client_status (client_id, version, applied, error, attempts, checksum, "
            "updated_at, dead) VALUES ($1, $2, FALSE, 'boom', 1, $3, 0, FALSE)",
            client_id,
            Version.parse(2).key,
            sums[2],
        )
        await holder.execute("UPDATE store_clients SET fleet_failing = TRUE WHERE id = $1", client_id)
        async with Store.open(pg_url) as store:
            report_one = [StatusReport(1, True, None, 1, sums[1])]
            running = asyncio.create_task(store.report(client_id, report_one))
            await _waits_on_a_lock(pg_url, running)
            await holder.execute("COMMIT")
            await running
            await check(store, pg_url)
    finally:
        await holder.close()
    assert await aquery(pg_url, "SELECT fleet_failing, fleet_done FROM store_clients") == [(True, 1)]
