"""The admin's requests and the clients' answers through drop folders.

``export`` writes ``actions/<client-id>.json``, the file-drop transport offers its requests and
writes the answers beside the reports, ``import-reports`` records them. Real folders, real stores
(SQLite; Postgres for the whole round trip), real SQLite client databases synced by the real
:class:`Syncer`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dbtools import drop_client_file, imported_name, run, tables

from migsync.client.sync import Syncer, SyncResult
from migsync.core.client import Client
from migsync.core.errors import MalformedAnswer, ServerRefused, SignatureError
from migsync.protocol.signing import (
    TrustedKey,
    load_private_key,
    load_public_keys,
    sign_request,
    verify_request,
    write_keypair,
)
from migsync.protocol.wire import ActionRequest, ActionResult, StatusReport
from migsync.server import Store
from migsync.server.export import ExportResult, export
from migsync.server.import_reports import ImportResult, import_reports
from migsync.testing.backend_suite import migration
from migsync.transports import dropfiles as files
from migsync.transports.filedrop import FileDropTransport

V1 = migration(1, "0001_users", "CREATE TABLE users (id INTEGER PRIMARY KEY)", "DROP TABLE users")
V2 = migration(2, "0002_orders", "CREATE TABLE orders (id INTEGER PRIMARY KEY)", "DROP TABLE orders")
V3 = migration(3, "0003_items", "CREATE TABLE items (id INTEGER PRIMARY KEY)", "DROP TABLE items")


@attrs.define
class Drop:
    """A store with V1..V3 published and clients ``ship`` and ``kiosk``, and its drop folder."""

    store: Store
    drop: Path
    tmp: Path
    trusted: list[TrustedKey]
    ids: dict[str, int]
    key: Ed25519PrivateKey
    #: signs the requests: the server's request key, apart from the key that signs migrations
    request_key: Ed25519PrivateKey
    requesters: list[TrustedKey]

    @property
    def url(self) -> str:
        return f"file://{self.drop}"

    @property
    def ship(self) -> str:
        return str(self.ids["ship"])

    def actions_file(self, client: str = "ship") -> Path:
        return self.drop / files.actions_file(str(self.ids[client]))

    def client_files(self, folder: Path | None = None) -> list[Path]:
        """The ship's files in its reports folder (imported or not), oldest first."""
        return list(files.report_files((folder or self.drop / files.REPORTS_DIR) / self.ship))

    def answers_files(self, folder: Path | None = None) -> list[dict[str, Any]]:
        """The documents of the ship's answers files, oldest first."""
        documents = [json.loads(p.read_bytes()) for p in self.client_files(folder)]
        return [d for d in documents if d["format"] == files.ANSWERS_FORMAT]

    async def request(self, action: str, version: int, client: str = "ship", by: str = "alice") -> int:
        [record] = await self.store.request_action(action, version, [self.ids[client]], by)
        return record.id

    async def export(self) -> ExportResult:
        return await export(self.store, self.drop, self.request_key)

    async def import_(self, source: Path | None = None) -> ImportResult:
        return await import_reports(self.store, source or self.drop)

    async def states(self) -> dict[int, tuple[str, str | None]]:
        """request id -> (state, detail), as the store has them."""
        return {r.id: (r.state, r.detail) for r in await self.store.actions()}

    async def sync(self, db: str = "ship.db", **options: str) -> tuple[SyncResult, dict[str, str]]:
        """One sync of the ship's SQLite database; the result and each migration's state."""
        async with (
            Client.connect(
                f"sqlite:///{self.tmp / db}", sinks=[], backend_options={"create": True}
            ) as client,
            FileDropTransport(self.url, client_id=self.ship, **options) as transport,
        ):
            result = await Syncer(client, transport, self.trusted, request_keys=self.requesters).sync()
            states = {s.name: "held" if s.held else s.state for s in await client.status()}
        return result, states

    def user_tables(self, db: str = "ship.db") -> set[str]:
        return tables(f"sqlite:///{self.tmp / db}", bookkeeping=False)


async def open_drop(store_url: str, tmp_path: Path) -> AsyncIterator[Drop]:
    write_keypair(tmp_path / "key")
    key: Ed25519PrivateKey = load_private_key(tmp_path / "key")
    async with Store.open(store_url) as store:
        await store.publish([V1, V2, V3], key)
        ids = {name: (await store.add_client(name))[0] for name in ("ship", "kiosk")}
        trusted = load_public_keys([tmp_path / "key.pub"])
        requester = write_keypair(tmp_path / "request-key")
        request_key = load_private_key(tmp_path / "request-key")
        drop = Drop(store, tmp_path / "drop", tmp_path, trusted, ids, key, request_key, [requester])
        await drop.export()
        yield drop


@pytest.fixture
async def drop(tmp_path: Path) -> AsyncIterator[Drop]:
    async for value in open_drop(f"sqlite:///{tmp_path / 'server.db'}", tmp_path):
        yield value


@pytest.fixture
async def any_drop(any_store: str, tmp_path: Path) -> AsyncIterator[Drop]:
    """The same on a SQLite store and on a Postgres one."""
    async for value in open_drop(any_store, tmp_path):
        yield value


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """(inode, mtime in ns, bytes) of everything under ``root``: any write changes one of them."""
    return {
        str(p.relative_to(root)): (
            p.stat().st_ino,
            p.stat().st_mtime_ns,
            p.read_bytes() if p.is_file() else b"",
        )
        for p in [root, *root.rglob("*")]
    }


# -- the whole round trip -----------------------------------------------------------------------------


async def test_a_revert_travels_through_the_folder_and_its_answer_comes_back(any_drop: Drop) -> None:
    drop = any_drop
    assert not (drop.drop / files.ACTIONS_DIR).exists()  # no request yet: no folder for them
    first, states = await drop.sync()
    assert first.ok and set(states.values()) == {"applied"}
    assert (await drop.import_()).refused == ()

    action_id = await drop.request("revert", 2, by="alice")
    exported = await drop.export()
    assert exported.actions_written == (drop.ship,) and exported.actions_removed == ()
    document = json.loads(drop.actions_file().read_bytes())
    [item] = document["actions"]
    assert document == {
        "format": files.ACTIONS_FORMAT,
        "client_id": drop.ship,
        "actions": [
            {
                "id": action_id,
                "action": "revert",
                "version": "2",
                "requested_by": "alice",
                "requested_at": item["requested_at"],
                "signature": item["signature"],
                "signed_by": drop.requesters[0].fingerprint,
            }
        ],
    }
    # Signed for this client: the bytes a client verifies name it.
    request = ActionRequest(**item)
    assert verify_request(request, drop.ship, drop.requesters) == drop.requesters[0]
    with pytest.raises(SignatureError):
        verify_request(request, str(drop.ids["kiosk"]), drop.requesters)
    assert not (drop.drop / files.actions_file(str(drop.ids["kiosk"]))).exists()

    result, states = await drop.sync()
    assert result.ok and result.actions_received == 1 and result.actions_answered == 1
    assert states == {"0001_users": "applied", "0002_orders": "held", "0003_items": "held"}
    assert drop.user_tables() == {"users"}
    assert [d["results"] for d in drop.answers_files()] == [
        [{"id": action_id, "state": "done", "detail": "reverted; held at version 2"}]
    ]
    assert (await drop.states())[action_id][0] == "pending"  # the server has not read it yet

    # Before the import: the request is answered in the folder, so it is not offered again.
    again, states = await drop.sync()
    assert again.ok and again.actions_received == 0 and again.actions_answered == 0
    assert len(drop.answers_files()) == 1 and states["0002_orders"] == "held"

    imported = await drop.import_()
    assert imported.refused == ()
    [answers] = imported.answers_imported
    assert answers.recorded == (action_id,) and answers.not_marked is None
    assert imported_name(answers.path).is_file() and not answers.path.exists()
    assert await drop.states() == {action_id: ("done", "reverted; held at version 2")}

    # Answered: the next export takes the request out of the folder.
    after = await drop.export()
    assert after.actions_removed == (drop.ship,) and after.actions_written == ()
    assert not drop.actions_file().exists()
    unchanged = await drop.export()
    assert unchanged.actions_written == () and unchanged.actions_removed == ()
    last, states = await drop.sync()
    assert last.ok and last.actions_received == 0 and states["0003_items"] == "held"
    assert drop.user_tables() == {"users"} and len(drop.answers_files()) == 1


# -- export --------------------------------------------------------------------------------------------


async def test_export_of_requests_is_idempotent_and_follows_the_store(drop: Drop) -> None:
    actions = drop.drop / files.ACTIONS_DIR
    first = await drop.request("revert", 3)
    assert (await drop.export()).actions_written == (drop.ship,)
    before = snapshot(drop.drop)
    again = await drop.export()
    assert again.actions_written == () and again.actions_removed == () and not again.manifest_written
    assert snapshot(drop.drop) == before

    # A newer request replaces one not answered: the file holds the admin's latest word only.
    newer = await drop.request("reapply", 3, by="bob")
    kiosk = await drop.request("revert", 2, client="kiosk")
    result = await drop.export()
    assert sorted(result.actions_written) == sorted([drop.ship, str(drop.ids["kiosk"])])
    assert [a["id"] for a in json.loads(drop.actions_file().read_bytes())["actions"]] == [newer]
    assert [a["id"] for a in json.loads(drop.actions_file("kiosk").read_bytes())["actions"]] == [kiosk]
    assert first not in {a["id"] for a in json.loads(drop.actions_file().read_bytes())["actions"]}

    # Stale files go (an unknown client's, a client's with nothing pending); the rest stays.
    (actions / "99.json").write_text("{}")
    (actions / "notes.txt").write_text("left alone")
    (actions / "77.json").mkdir()
    await drop.store.record_answers(drop.ids["kiosk"], [ActionResult(kiosk, "queued", None)])
    result = await drop.export()
    assert sorted(result.actions_removed) == sorted(["99", str(drop.ids["kiosk"])])
    assert result.actions_written == ()
    assert sorted(p.name for p in actions.iterdir()) == sorted(["77.json", "notes.txt", f"{drop.ship}.json"])


# -- what the client's transport reads ---------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def _edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def tamper(path: Path) -> None:
        document = json.loads(path.read_bytes())
        change(document)
        path.write_text(json.dumps(document))

    return tamper


def _symlink_out(path: Path) -> None:
    outside = path.parents[2] / "outside.json"
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)


def _oversized(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-2] + b" " * files.MAX_ACTIONS_FILE + b"}\n")


def _a_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


TAMPERS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_truncate, "not JSON"),
    "format": (_edit(lambda d: d.update(format="migsync-actions/3")), "not a migsync actions file"),
    "another-client": (_edit(lambda d: d.update(client_id="2")), "not to '1'"),
    "unknown-key": (_edit(lambda d: d.update(signed_by="me")), "'signed_by' are missing or unknown"),
    "unknown-field": (_edit(lambda d: d["actions"][0].update(sql="DROP TABLE users")), "'sql' are missing"),
    "bad-action": (_edit(lambda d: d["actions"][0].update(action="drop")), "is not one of reapply, revert"),
    "twice": (_edit(lambda d: d["actions"].append(d["actions"][0])), "strictly increasing order"),
    "oversized": (_oversized, f"over the limit of {files.MAX_ACTIONS_FILE}"),
    "symlink-out": (_symlink_out, "leads outside"),
    "a-folder": (_a_folder, "not a regular file (a directory)"),
}


@pytest.mark.parametrize("tamper", TAMPERS, ids=list(TAMPERS))
async def test_a_bad_requests_file_is_ignored_with_a_warning_and_the_migrations_still_come(
    drop: Drop, tamper: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert drop.ship == "1"  # the tampers above name it
    change, reason = TAMPERS[tamper]
    action_id = await drop.request("revert", 3)
    await drop.export()
    change(drop.actions_file())
    with caplog.at_level(logging.WARNING, logger="migsync.filedrop"):
        result, states = await drop.sync()
    assert result.ok and result.stored == ("0001_users", "0002_orders", "0003_items")
    assert result.actions_received == 0 and set(states.values()) == {"applied"}
    assert drop.user_tables() == {"users", "orders", "items"}
    [warning] = [r for r in caplog.records if r.name == "migsync.filedrop"]
    assert str(drop.actions_file()) in warning.getMessage() and reason in warning.getMessage()

    # Put right, the file is a new offer (its bytes are in the ETag) and the request comes.
    if drop.actions_file().is_dir():
        drop.actions_file().rmdir()
    else:
        drop.actions_file().unlink()
    assert (await drop.export()).actions_written == (drop.ship,)
    fixed, states = await drop.sync()
    assert fixed.ok and fixed.actions_received == 1 and states["0003_items"] == "held"
    assert "items" not in drop.user_tables()
    assert [d["results"][0]["id"] for d in drop.answers_files()] == [action_id]


def _resign(key: Ed25519PrivateKey, client_id: str, **changes: Any) -> Callable[[Path], None]:
    """A tamper that rewrites the request (``changes``) and signs it with ``key`` for ``client_id``."""

    def tamper(path: Path) -> None:
        document = json.loads(path.read_bytes())
        request = attrs.evolve(ActionRequest(**document["actions"][0]), **changes)
        document["actions"][0] = sign_request(key, request, client_id).to_json()
        path.write_text(json.dumps(document))

    return tamper


@pytest.mark.parametrize(
    "forgery",
    ["unsigned", "changed-after-signing", "untrusted-key", "migration-key", "signed-for-another-client"],
)
async def test_a_request_not_signed_for_this_client_under_a_trusted_key_is_not_carried_out(
    drop: Drop, forgery: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone who can write to the folder could write a requests file: only the signature counts."""
    await drop.sync()
    await drop.request("reapply", 3)
    await drop.export()
    write_keypair(tmp_path / "rogue")
    rogue = load_private_key(tmp_path / "rogue")
    tamper = {
        "unsigned": _edit(lambda d: d["actions"][0].update(signature="", action="revert", version=1)),
        "changed-after-signing": _edit(lambda d: d["actions"][0].update(action="revert", version=1)),
        "untrusted-key": _resign(rogue, drop.ship, action="revert", version=1),
        # the key that signs migrations is trusted for migrations, not for requests
        "migration-key": _resign(drop.key, drop.ship, action="revert", version=1),
        "signed-for-another-client": _resign(
            drop.request_key, str(drop.ids["kiosk"]), action="revert", version=1
        ),
    }[forgery]
    tamper(drop.actions_file())
    with caplog.at_level(logging.WARNING, logger="migsync.sync"):
        result, states = await drop.sync()
    assert result.actions_received == 0
    assert set(states.values()) == {"applied"} and drop.user_tables() == {"users", "orders", "items"}
    [warning] = [r.getMessage() for r in caplog.records if r.name == "migsync.sync"]
    assert warning.startswith(f"not carried out: {drop.url}: request ") and "revert version 1" in warning
    # A refusal fails the sync, and is answered to the server as failed, with why.
    assert not result.ok and result.to_json()["ok"] is False
    [refusal] = result.refused_actions
    assert (refusal.action, refusal.version) == ("revert", "1")
    assert refusal.reason.startswith(f"request {refusal.id} (revert version 1)")
    assert result.to_json()["refused_actions"] == [attrs.asdict(refusal)]
    [answers] = drop.answers_files()
    [answer] = answers["results"]
    assert answer["id"] == refusal.id and answer["state"] == "failed"
    assert answer["detail"] == f"refused: {refusal.reason}"
    # import-reports records the refusal: the admin sees why the request failed.
    await drop.import_()
    assert (await drop.states())[refusal.id] == ("failed", f"refused: {refusal.reason}")
    # Answered, it is not offered again: one tampered request fails one sync.
    again, _ = await drop.sync()
    assert again.ok and again.refused_actions == () and again.actions_received == 0


async def test_client_sync_exits_1_on_a_tampered_request_and_says_why(drop: Drop) -> None:
    await drop.request("reapply", 3)
    await drop.export()
    _edit(lambda d: d["actions"][0].update(action="revert", version=1))(drop.actions_file())
    db = f"sqlite:///{drop.tmp / 'ship.db'}"
    args = ("client", "sync", "--db", db, "--server", drop.url, "--client-id", drop.ship)
    trust = (
        "--trust-key",
        str(drop.tmp / "key.pub"),
        "--trust-request-key",
        str(drop.tmp / "request-key.pub"),
    )
    cli = run(*args, *trust)
    assert cli.returncode == 1, cli.stderr
    [line] = [x for x in cli.stderr.splitlines() if x.startswith("refused request ")]
    assert "(revert version 1): the signature does not match" in line
    again = run(*args, *trust, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["refused_actions"] == []


async def test_without_a_request_key_export_leaves_the_requests_out_and_says_so(drop: Drop) -> None:
    await drop.request("revert", 3)
    unsigned = await export(drop.store, drop.drop)
    assert unsigned.actions_unsigned == (drop.ship,) and unsigned.actions_written == ()
    assert not drop.actions_file().exists()
    store_url = f"sqlite:///{drop.tmp / 'server.db'}"
    cli = run("export", "--store", store_url, "--to", str(drop.drop))
    assert cli.returncode == 0, cli.stderr
    assert f"warning: requests to clients {drop.ship} are not exported: give --request-key" in cli.stderr
    signed = run(
        "export", "--store", store_url, "--to", str(drop.drop), "--request-key", str(drop.tmp / "request-key")
    )
    assert signed.returncode == 0, signed.stderr
    assert f"wrote signed requests for clients {drop.ship}" in signed.stdout
    assert drop.actions_file().exists()
    # And a later export without the key leaves the signed file as it is.
    assert (await export(drop.store, drop.drop)).actions_removed == ()
    assert drop.actions_file().exists()


async def test_a_symlink_to_a_requests_file_inside_the_folder_is_read(drop: Drop) -> None:
    await drop.sync()
    action_id = await drop.request("revert", 3)
    await drop.export()
    target = drop.drop / files.ACTIONS_DIR / "copy.json"
    drop.actions_file().rename(target)
    drop.actions_file().symlink_to(target)
    async with FileDropTransport(drop.url, client_id=drop.ship) as transport:
        assert [r.id for r in (await transport.fetch()).actions] == [action_id]


async def test_a_new_request_is_a_new_offer_and_an_answer_takes_it_out(drop: Drop) -> None:
    async with FileDropTransport(drop.url, client_id=drop.ship) as transport:
        first = await transport.fetch()
        assert first.actions == () and (await transport.fetch(first.etag)).unchanged
        action_id = await drop.request("reapply", 1)
        await drop.export()
        offer = await transport.fetch(first.etag)
        assert [(r.id, r.action, r.version) for r in offer.actions] == [(action_id, "reapply", 1)]
        assert (await transport.fetch(offer.etag)).unchanged
        await transport.report_actions([ActionResult(action_id, "done", "0001_users applied")])
        answered = await transport.fetch(offer.etag)
        assert not answered.unchanged and answered.actions == ()
        # The same once the answer is imported (it still counts) and the request is gone.
        await drop.import_()
        await drop.export()
        assert not drop.actions_file().exists()
        assert (await transport.fetch()).actions == ()


# -- the answers --------------------------------------------------------------------------------------


async def test_answers_are_written_once_each_and_sort_by_time(
    drop: Drop, monkeypatch: pytest.MonkeyPatch
) -> None:
    action_id = await drop.request("reapply", 1)
    queued = ActionResult(action_id, "queued", "queued 0001_users")
    done = ActionResult(action_id, "done", "0001_users applied")
    async with FileDropTransport(drop.url, client_id=drop.ship) as transport:
        assert (await transport.report_actions([queued])).recorded == (action_id,)
        assert (await transport.report_actions([queued])).recorded == (action_id,)
        assert len(drop.client_files()) == 1
        await drop.import_()
        assert (await transport.report_actions([queued])).recorded == (action_id,)  # imported: still there
        assert len(drop.client_files()) == 1
        assert (await transport.report_actions([done])).recorded == (action_id,)
        assert [d["results"] for d in drop.answers_files()] == [[queued.to_json()], [done.to_json()]]

        with pytest.raises(ServerRefused, match="names a request twice"):
            await transport.report_actions([done, queued])
        assert len(drop.client_files()) == 2

        # Many answers go in files of at most MAX_ANSWERS each (the importer's cap per file).
        monkeypatch.setattr(files, "MAX_ANSWERS", 2)
        many = [ActionResult(i, "failed", f"no {i}") for i in range(100, 105)]
        assert (await transport.report_actions([done, *many])).recorded == (action_id, *range(100, 105))
    assert [[r["id"] for r in d["results"]] for d in drop.answers_files()[2:]] == [
        [100, 101],
        [102, 103],
        [104],
    ]
    names = [p.name for p in drop.client_files()]
    assert names == sorted(names) and len(set(names)) == 5
    imported = await drop.import_()
    assert (await drop.states())[action_id] == ("done", "0001_users applied")
    # Ids the store does not know are refused there, with the file, and nothing of it is recorded.
    assert len(imported.refused) == 3
    assert all("this store does not know" in r.reason for r in imported.refused)


async def test_reports_and_answers_are_imported_oldest_first_and_bad_answers_are_refused(drop: Drop) -> None:
    reports = drop.drop / files.REPORTS_DIR
    ship, kiosk = drop.ship, str(drop.ids["kiosk"])
    mine = await drop.request("revert", 2)
    theirs = await drop.request("revert", 2, client="kiosk")

    def answers(folder: str, items: list[ActionResult], at: int, client_id: str | None = None) -> Path:
        data = files.dump(files.answers_document(client_id or folder, items))
        return drop_client_file(reports, folder, data, at)

    def bad(folder: str, results: list[dict[str, Any]], at: int) -> Path:
        data = files.dump({"format": files.ANSWERS_FORMAT, "client_id": folder, "results": results})
        return drop_client_file(reports, folder, data, at)

    queued = answers(ship, [ActionResult(mine, "queued", None)], 1000)
    foreign = answers(ship, [ActionResult(theirs, "done", "reverted")], 2000)
    unknown = answers(ship, [ActionResult(mine, "done", None), ActionResult(9999, "done", None)], 3000)
    bad_state = bad(ship, [{"id": mine, "state": "finished", "detail": None}], 4000)
    extra_field = bad(ship, [{"id": mine, "state": "done", "detail": None, "by": "me"}], 4500)
    report = drop_client_file(
        reports,
        ship,
        files.dump(files.reports_document(ship, [StatusReport(1, True, None, 1, V1.checksum)])),
        5000,
    )
    done = answers(ship, [ActionResult(mine, "done", "reverted; held at version 2")], 6000)
    other_client = answers(ship, [ActionResult(theirs, "done", None)], 7000, client_id=kiosk)
    kiosk_file = answers(kiosk, [ActionResult(theirs, "failed", "the revert of 0002_orders failed")], 1500)

    result = await drop.import_()
    reasons = {r.path: r.reason for r in result.refused}
    assert set(reasons) == {foreign, unknown, bad_state, extra_field, other_client}
    assert f"answers requests to another client: {theirs} (made of client 'kiosk')" in reasons[foreign]
    assert "this store does not know: 9999; nothing of it was recorded" in reasons[unknown]
    assert "results[0].state must be one of" in reasons[bad_state]
    assert "unknown field 'by'" in reasons[extra_field]
    assert f"it holds answers of client {kiosk!r}, not of {ship!r}" in reasons[other_client]
    assert [a.path for a in result.answers_imported] == [queued, done, kiosk_file]
    assert [i.path for i in result.imported] == [report]
    assert await drop.states() == {
        mine: ("done", "reverted; held at version 2"),
        theirs: ("failed", "the revert of 0002_orders failed"),
    }
    for path in reasons:
        assert path.exists() and not imported_name(path).exists()
    for path in (queued, done, kiosk_file, report):
        assert not path.exists() and imported_name(path).exists()

    generation = await drop.store.generation()
    again = await drop.import_()
    assert (
        again.answers_imported == ()
        and again.imported == ()
        and set(r.path for r in again.refused) == set(reasons)
    )
    assert await drop.store.generation() == generation


async def test_an_older_answers_file_imported_late_does_not_undo_a_newer_one(drop: Drop) -> None:
    reports = drop.drop / files.REPORTS_DIR
    action_id = await drop.request("reapply", 2)
    newer = files.dump(files.answers_document(drop.ship, [ActionResult(action_id, "done", "applied")]))
    drop_client_file(reports, drop.ship, newer, 2000)
    assert len((await drop.import_()).answers_imported) == 1
    # The copy tool delivered the older file after the newer one had been imported.
    older = files.dump(files.answers_document(drop.ship, [ActionResult(action_id, "queued", None)]))
    path = drop_client_file(reports, drop.ship, older, 1000)
    [late] = (await drop.import_()).answers_imported
    assert (late.path, late.recorded, late.superseded) == (path, (), (action_id,))
    assert await drop.states() == {action_id: ("done", "applied")}


async def test_a_read_only_drop_folder_with_a_reports_folder(drop: Drop, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    assert (await drop.sync(reports=str(spool)))[0].ok
    await drop.import_(spool)
    action_id = await drop.request("revert", 3)
    await drop.export()
    before = snapshot(drop.drop)
    os.chmod(drop.drop, 0o555)
    try:
        result, states = await drop.sync(reports=str(spool))
        again, _ = await drop.sync(reports=str(spool))
    finally:
        os.chmod(drop.drop, 0o755)
    assert snapshot(drop.drop) == before  # nothing written into the drop folder (root could have)
    assert result.ok and result.actions_received == 1 and result.actions_answered == 1
    assert states["0003_items"] == "held" and "items" not in drop.user_tables()
    assert again.actions_received == 0  # answered in the reports folder: not offered again
    assert [d["results"][0]["id"] for d in drop.answers_files(spool)] == [action_id]
    imported = await drop.import_(spool)
    assert [a.recorded for a in imported.answers_imported] == [(action_id,)] and imported.refused == ()
    assert (await drop.states())[action_id] == ("done", "reverted; held at version 3")
    assert (await drop.export()).actions_removed == (drop.ship,)


# -- formats and the command ----------------------------------------------------------------------------


def test_an_answers_file_is_not_a_report_file_to_a_reader_of_reports_only() -> None:
    """An ``import-reports`` that knows no answers refuses the file and leaves it in place,
    rather than importing it as a report file without reports and losing the answers."""
    data = files.dump(files.answers_document("1", [ActionResult(7, "done", None)]))
    with pytest.raises(MalformedAnswer, match="not a migsync report file"):
        files.parse_client_file(data, "f", files.REPORTS_FORMAT)
    both = (files.REPORTS_FORMAT, files.ANSWERS_FORMAT)
    assert files.parse_client_file(data, "f", both)[1]["results"] == [
        {"id": 7, "state": "done", "detail": None}
    ]
    old_report = b'{"format": "migsync-reports/1", "client_id": "1", "reports": []}'
    assert files.parse_client_file(old_report, "f", both) == ("1", json.loads(old_report))


def test_an_answers_file_holds_at_most_what_the_api_takes_in_one_request() -> None:
    from migsync.server.validation import MAX_REPORTS

    assert files.MAX_ANSWERS == MAX_REPORTS


async def test_import_reports_command_imports_answers_and_names_refused_ones(drop: Drop) -> None:
    reports = drop.drop / files.REPORTS_DIR
    action_id = await drop.request("revert", 2)
    good = files.dump(files.answers_document(drop.ship, [ActionResult(action_id, "done", None)]))
    drop_client_file(reports, drop.ship, good, 1000)
    store = f"sqlite:///{drop.tmp / 'server.db'}"
    ok = run("import-reports", "--store", store, "--from", str(drop.drop))
    assert ok.returncode == 0, ok.stderr
    assert (await drop.states())[action_id] == ("done", None)
    stray = files.dump(files.answers_document(drop.ship, [ActionResult(4242, "done", None)]))
    path = drop_client_file(reports, drop.ship, stray, 2000)
    refused = run("import-reports", "--store", store, "--from", str(drop.drop))
    assert refused.returncode == 1
    assert f"refused {path}: it answers requests this store does not know: 4242" in refused.stderr
