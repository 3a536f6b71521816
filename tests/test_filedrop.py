"""The file-drop transport: the conformance suite on real folders, and what only a drop folder does.

The server side is real: a SQLite store, ``export`` into the drop folder and
``import_reports`` out of it. Every tampering a folder allows (changed SQL, a
changed signature, a truncated bundle, a half-written temporary file, a
symlink out of the folder) is tried against a real client database.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import attrs
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dbtools import aquery, query, tables

from migsync.client.sync import Syncer
from migsync.core.client import Client
from migsync.core.errors import ConfigError, ServerRefused, ServerUnavailable
from migsync.core.migration import Migration
from migsync.core.plugins import make_plugins
from migsync.core.version import Version
from migsync.protocol.signing import TrustedKey, load_private_key, load_public_keys, write_keypair
from migsync.protocol.wire import ACTION_STATES, StatusReport
from migsync.server import Store
from migsync.server.export import export
from migsync.server.import_reports import import_reports
from migsync.testing.backend_suite import migration
from migsync.testing.transport_suite import UNPUBLISHED, TransportHarness, TransportSuite, change
from migsync.testing.transport_suite import V1 as SUITE_V1
from migsync.transports import dropfiles
from migsync.transports.base import Transport
from migsync.transports.filedrop import FileDropTransport


@attrs.define
class DropHarness:
    """A store, a drop folder it exports to, and clients registered in both."""

    store_url: str
    store: Store
    drop: Path
    key: Ed25519PrivateKey
    trusted: list[TrustedKey]
    ids: dict[str, int] = attrs.field(factory=dict)
    down: bool = False

    @property
    def url(self) -> str:
        return f"file://{self.drop}"

    async def publish(self, migrations: Sequence[Migration]) -> None:
        await self.store.publish(migrations, self.key)
        await export(self.store, self.drop, self.key)

    async def register(self, client: str) -> str:
        if client not in self.ids:
            self.ids[client], _ = await self.store.add_client(client)
            if not self.down:  # an unmounted folder is written when it is back
                await export(self.store, self.drop, self.key)
        return str(self.ids[client])

    async def transport(self, client: str) -> Transport:
        factory = make_plugins(autoload=False).transport_for_url(self.url).load()
        transport: Transport = factory(
            self.url, client_id=await self.register(client), token=None, timeout=1.0, retries=0
        )
        return transport

    async def reports(self, client: str) -> dict[int, StatusReport]:
        await import_reports(self.store, self.drop / dropfiles.REPORTS_DIR)
        rows = await aquery(
            self.store_url,
            "SELECT version, applied, error, attempts, checksum FROM store_client_status "
            f"WHERE client_id = {self.ids[client]}",
        )
        return {
            Version.from_key(v): StatusReport(Version.from_key(v), bool(a), e, int(n), c)
            for v, a, e, n, c in rows
        }

    async def take_down(self) -> None:
        self.down = True
        self.drop.rename(self.drop.with_name("unmounted"))

    async def bring_up(self) -> None:
        self.drop.with_name("unmounted").rename(self.drop)
        self.down = False
        await export(self.store, self.drop, self.key)

    async def refusing_transport(self) -> Transport:
        return FileDropTransport(self.url, client_id="999")

    async def request(self, client: str, action: str, version: int, requested_by: str) -> int:
        client_id = int(await self.register(client))
        [record] = await self.store.request_action(action, version, [client_id], requested_by)
        if not self.down:
            await export(self.store, self.drop, self.key)
        return record.id

    async def answers(self, client: str) -> dict[int, tuple[str, str | None]]:
        await import_reports(self.store, self.drop / dropfiles.REPORTS_DIR)
        records = await self.store.actions(self.ids[client]) if client in self.ids else []
        return {r.id: (r.state, r.detail) for r in records if r.state in ACTION_STATES}


@contextlib.asynccontextmanager
async def drop_harness(tmp_path: Path) -> AsyncIterator[DropHarness]:
    write_keypair(tmp_path / "key")
    key, trusted = load_private_key(tmp_path / "key"), load_public_keys([tmp_path / "key.pub"])
    store_url = f"sqlite:///{tmp_path / 'server.db'}"
    async with Store.open(store_url) as store:
        drop = tmp_path / "drop"
        await export(store, drop)
        yield DropHarness(store_url, store, drop, key, trusted)


class TestFileDrop(TransportSuite):
    @pytest.fixture
    async def harness(self, tmp_path: Path) -> AsyncIterator[TransportHarness]:
        async with drop_harness(tmp_path) as harness:
            yield harness

    async def test_a_change_of_an_unpublished_schema_version_is_refused(  # type: ignore[override]
        self, harness: DropHarness
    ) -> None:
        """A drop folder takes every change; the server refuses the unpublished one at import."""
        await harness.publish([SUITE_V1])
        async with await harness.transport("a") as transport:
            ack = await transport.push_changes(
                [change("c1", 1), change("c2", 2, schema=UNPUBLISHED), change("c3", 3)]
            )
        assert ack.accepted == ("c1", "c2", "c3") and ack.refused is None
        imported = await import_reports(harness.store, harness.drop)
        assert [len(c.accepted) for c in imported.changes_imported] == []
        [refused] = imported.changes_refused
        assert "c2" in refused.reason and "never published" in refused.reason


# -- a client syncing from a drop folder ------------------------------------------------------------

V1 = migration(1, "0001_users", "CREATE TABLE users (id INTEGER PRIMARY KEY)", "DROP TABLE users")
V2 = migration(2, "0002_orders", "CREATE TABLE orders (id INTEGER PRIMARY KEY)", "DROP TABLE orders")
V3 = migration(3, "0003_items", "CREATE TABLE items (id INTEGER PRIMARY KEY)", "DROP TABLE items")


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[DropHarness]:
    async with drop_harness(tmp_path) as value:
        await value.register("ship")  # now: a later export would undo a test's tampering
        yield value


async def sync(harness: DropHarness, db: Path, **transport_options: str):  # type: ignore[no-untyped-def]
    client_id = await harness.register("ship")
    async with (
        Client.connect(f"sqlite:///{db}", sinks=[], backend_options={"create": True}) as client,
        FileDropTransport(harness.url, client_id=client_id, **transport_options) as transport,
    ):
        return await Syncer(client, transport, harness.trusted).sync()


def user_tables(db: Path) -> set[str]:
    return tables(f"sqlite:///{db}", bookkeeping=False)


def bundle(harness: DropHarness, m: Migration) -> Path:
    return harness.drop / dropfiles.MIGRATIONS_DIR / dropfiles.bundle_file(m.version, m.name)


async def test_a_client_syncs_from_the_folder_and_its_reports_reach_the_fleet(
    harness: DropHarness, tmp_path: Path
) -> None:
    await harness.publish([V1, V2])
    result = await sync(harness, tmp_path / "ship.db")
    assert result.ok and result.stored == ("0001_users", "0002_orders") and result.delivered == 2
    assert user_tables(tmp_path / "ship.db") == {"users", "orders"}
    imported = await import_reports(harness.store, harness.drop / dropfiles.REPORTS_DIR)
    assert len(imported.imported) == 1 and not imported.refused
    [entry] = await harness.store.fleet()
    assert entry.applied == (1, 2) and entry.pending == ()
    # Nothing new: nothing written, nothing offered again.
    again = await sync(harness, tmp_path / "ship.db")
    assert again.ok and again.delivered == 0 and again.offered in (None, 0)


def _change_sql(path: Path) -> None:
    document = json.loads(path.read_text())
    document["content"] = document["content"].replace("orders", "pwned")
    path.write_text(json.dumps(document))


def _change_sql_and_checksum(path: Path) -> None:
    import hashlib

    document = json.loads(path.read_text())
    document["content"] = document["content"].replace("orders", "pwned")
    document["checksum"] = hashlib.sha256(document["content"].encode()).hexdigest()
    path.write_text(json.dumps(document))


def _change_signature(path: Path) -> None:
    document = json.loads(path.read_text())
    document["signature"] = document["signature"][:10] + ("A" if document["signature"][10] != "A" else "B")
    document["signature"] += document["signature"][11:]
    path.write_text(json.dumps(document))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _symlink_out(path: Path) -> None:
    outside = path.parent.parent.parent / "outside.json"
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)


def _oversized(path: Path) -> None:
    document = json.loads(path.read_text())
    document["padding"] = "x" * (dropfiles.MAX_BUNDLE + 1)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    "tamper",
    [_change_sql, _change_sql_and_checksum, _change_signature, _truncate, _symlink_out, _oversized],
    ids=["sql", "sql-and-checksum", "signature", "truncated", "symlink-out", "oversized"],
)
async def test_a_tampered_bundle_is_refused_reported_and_nothing_of_it_runs(
    harness: DropHarness, tmp_path: Path, tamper
) -> None:  # type: ignore[no-untyped-def]
    await harness.publish([V1, V2, V3])
    tamper(bundle(harness, V2))
    result = await sync(harness, tmp_path / "ship.db")
    assert not result.ok
    assert [(r.version, r.kind) for r in result.refused] == [(2, "signature"), (3, "waiting")]
    assert user_tables(tmp_path / "ship.db") == {"users"}
    # The refusal reaches the server through the folder.
    await import_reports(harness.store, harness.drop / dropfiles.REPORTS_DIR)
    [entry] = await harness.store.fleet()
    assert entry.applied == (1,)
    assert [f.version for f in entry.failed] == [2] and entry.failed[0].error.startswith("refused: ")


async def test_temporary_and_unlisted_files_are_ignored(harness: DropHarness, tmp_path: Path) -> None:
    await harness.publish([V1])
    migrations = harness.drop / dropfiles.MIGRATIONS_DIR
    (migrations / ".tmp-0123-0002_orders.json").write_text('{"format": "migsync-bundle/1", "half')
    (migrations / "0002_orders.json").write_text("not listed in the manifest")
    (harness.drop / f".tmp-99-{dropfiles.MANIFEST}").write_text("{")
    result = await sync(harness, tmp_path / "ship.db")
    assert result.ok and result.stored == ("0001_users",)


async def test_a_bundle_not_arrived_yet_waits_without_failing(harness: DropHarness, tmp_path: Path) -> None:
    await harness.publish([V1, V2])
    moved = tmp_path / "later.json"
    bundle(harness, V2).rename(moved)  # the sync tool copied the manifest before this bundle
    first = await sync(harness, tmp_path / "ship.db")
    assert first.stored == ("0001_users",) and first.run.ok and first.ok
    # Listed in the signed manifest, not there yet, nothing after it sent: it waits, no error.
    assert [(r.name, r.kind) for r in first.refused] == [("0002_orders", "unsent")]
    moved.rename(bundle(harness, V2))
    second = await sync(harness, tmp_path / "ship.db")
    assert second.ok and second.stored == ("0002_orders",)


async def test_an_unmounted_folder_is_offline_and_reports_wait(harness: DropHarness, tmp_path: Path) -> None:
    await harness.publish([V1])
    assert (await sync(harness, tmp_path / "ship.db")).ok
    await harness.take_down()
    result = await sync(harness, tmp_path / "ship.db")
    assert result.offline is not None and "not there" in result.offline
    await harness.bring_up()
    assert (await sync(harness, tmp_path / "ship.db")).ok


async def test_a_read_only_drop_folder_with_a_separate_reports_folder(
    harness: DropHarness, tmp_path: Path
) -> None:
    await harness.publish([V1])
    await harness.register("ship")
    spool = tmp_path / "spool"
    spool.mkdir()
    os.chmod(harness.drop, 0o555)
    try:
        result = await sync(harness, tmp_path / "ship.db", reports=str(spool))
    finally:
        os.chmod(harness.drop, 0o755)
    assert result.ok and result.delivered == 1
    written = list((spool / str(harness.ids["ship"])).iterdir())
    assert len(written) == 1 and dropfiles.REPORT_NAME.fullmatch(written[0].name)
    imported = await import_reports(harness.store, spool)
    assert not imported.refused
    assert (await harness.store.fleet())[0].applied == (1,)


async def test_a_report_is_written_once(harness: DropHarness, tmp_path: Path) -> None:
    await harness.publish([V1])
    client_id = await harness.register("ship")
    transport = FileDropTransport(harness.url, client_id=client_id)
    report = StatusReport(1, True, None, 1, V1.checksum)
    assert (await transport.report([report])).recorded == (1,)
    assert (await transport.report([report])).unchanged == (1,)
    folder = harness.drop / dropfiles.REPORTS_DIR / client_id
    assert len(list(folder.iterdir())) == 1
    await import_reports(harness.store, harness.drop / dropfiles.REPORTS_DIR)
    assert (await transport.report([report])).unchanged == (1,)  # imported files still count
    assert len(list(folder.iterdir())) == 1


@pytest.mark.parametrize(
    ("url", "client_id"),
    [("http://x/drop", "1"), ("file://host/drop", "1"), ("file:///drop", "../1"), ("file:///drop", "")],
)
def test_bad_urls_and_client_ids_are_config_errors(url: str, client_id: str) -> None:
    with pytest.raises(ConfigError):
        FileDropTransport(url, client_id=client_id)


async def test_an_unregistered_client_is_refused(harness: DropHarness) -> None:
    await harness.publish([V1])
    with pytest.raises(ServerRefused, match="not registered"):
        await FileDropTransport(harness.url, client_id="42").fetch()


async def test_no_manifest_yet_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ServerUnavailable, match=r"no manifest\.json"):
        await FileDropTransport(f"file://{tmp_path / 'empty'}", client_id="1").fetch()


def test_the_client_cli_syncs_from_a_drop_folder(tmp_path: Path) -> None:
    from dbtools import run

    store = f"sqlite:///{tmp_path / 'server.db'}"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "0001_users.sql").write_text("-- migrate:up\nCREATE TABLE users (id INTEGER);\n")
    assert run("keygen", "--out", str(tmp_path / "key")).returncode == 0
    assert run("publish", "--migrations", str(tmp_path / "m"), "--store", store,
               "--signing-key", str(tmp_path / "key")).returncode == 0  # fmt: skip
    client_id = str(json.loads(run("clients", "add", "ship", "--store", store, "--json").stdout)["client_id"])
    assert run("export", "--store", store, "--to", str(tmp_path / "drop")).returncode == 0
    db = f"sqlite:///{tmp_path / 'ship.db'}"
    result = run("client", "sync", "--db", db, "--server", f"file://{tmp_path / 'drop'}",
                 "--client-id", client_id, "--trust-key", str(tmp_path / "key.pub"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert query(db, "SELECT COUNT(*) FROM users") == [(0,)]
    imported = run("import-reports", "--store", store, "--from", str(tmp_path / "drop" / "reports"))
    assert imported.returncode == 0, imported.stderr
    fleet = json.loads(run("fleet", "--store", store, "--json").stdout)
    assert fleet["clients"][0]["applied"] == ["1"]
