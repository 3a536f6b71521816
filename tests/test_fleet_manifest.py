"""What a client obeys besides each migration's signature (issue 16), tried as an attacker would.

A signature on each migration proved its content, not what exists nor what the admin asked: a
server, a network or a drop folder could leave version 3 out (the client applied 4 and 5 and
refused 3 forever), replay an old list, or send a revert nobody signed. Each test here failed on
the main branch before the signed fleet manifest (:mod:`migsync.protocol.manifest`) and the request
key. The client is the real ``migsync client sync`` process; the drop folders are written by the
real store and ``export`` and then tampered with; the hostile HTTP servers are small Starlette
apps on a loopback port that the test drives.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dbtools import run, tables
from servers import ServerThread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from migsync.core.migration import Migration
from migsync.protocol.manifest import FleetManifest, Listed, last_serial, sign_manifest
from migsync.protocol.signing import fingerprint, load_private_key, sign, sign_request, write_keypair
from migsync.protocol.wire import PROTOCOL, PROTOCOL_HEADER, ActionRequest, OfferedMigration, StatusReport
from migsync.server import Store
from migsync.server.export import export
from migsync.testing.backend_suite import migration
from migsync.transports import dropfiles as files

V = {
    i: migration(i, f"000{i}_t{i}", f"CREATE TABLE t{i} (id INTEGER PRIMARY KEY)", f"DROP TABLE t{i}")
    for i in range(1, 6)
}


def user_tables(db: str) -> set[str]:
    return tables(db, bookkeeping=False)


@attrs.define
class Keys:
    """The server's two keys (the offline one for migrations and the manifest, the online one for
    requests) and an attacker's."""

    folder: Path
    signing: Ed25519PrivateKey
    request: Ed25519PrivateKey
    rogue: Ed25519PrivateKey

    def trust(self) -> tuple[str, ...]:
        return (
            "--trust-key",
            str(self.folder / "signing.pub"),
            "--trust-request-key",
            str(self.folder / "request.pub"),
        )


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    folder = tmp_path / "keys"
    for name in ("signing", "request", "rogue"):
        write_keypair(folder / name)
    return Keys(
        folder,
        load_private_key(folder / "signing"),
        load_private_key(folder / "request"),
        load_private_key(folder / "rogue"),
    )


# -- drop folders ----------------------------------------------------------------------------------


@attrs.define
class Drop:
    store: Store
    keys: Keys
    root: Path
    db: str
    ship: str

    async def publish(self, *versions: int) -> None:
        await self.store.publish([V[v] for v in versions], self.keys.signing)
        await export(self.store, self.root, self.keys.request)

    def sync(self, *extra: str) -> Any:
        args = (
            "client",
            "sync",
            "--db",
            self.db,
            "--server",
            f"file://{self.root}",
            "--client-id",
            self.ship,
        )
        return run(*args, *self.keys.trust(), *extra)

    @property
    def manifest(self) -> Path:
        return self.root / files.MANIFEST


@pytest.fixture
async def drop(tmp_path: Path, keys: Keys) -> AsyncIterator[Drop]:
    """A ship that synced versions 1 and 2 from a drop folder."""
    async with Store.open(f"sqlite:///{tmp_path / 'server.db'}") as store:
        ship, _ = await store.add_client("ship")
        value = Drop(store, keys, tmp_path / "drop", f"sqlite:///{tmp_path / 'ship.db'}", str(ship))
        value.root.mkdir()
        await value.publish(1, 2)
        first = value.sync()
        assert first.returncode == 0, first.stderr
        assert user_tables(value.db) == {"t1", "t2"}
        yield value


def _edit(path: Path, change: Any) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize("where", ["listing", "signed-part"])
async def test_a_drop_folder_that_leaves_version_3_out_gets_nothing_past_2_applied(
    drop: Drop, where: str
) -> None:
    await drop.publish(3, 4, 5)
    if where == "listing":  # the list of files: the client does not take it as what exists
        _edit(
            drop.manifest, lambda d: d.update(migrations=[m for m in d["migrations"] if m["version"] != "3"])
        )
    else:  # the signed list itself, edited: its signature no longer matches

        def drop_3(document: dict[str, Any]) -> None:
            content = json.loads(document["signed"]["content"])
            content["migrations"] = [m for m in content["migrations"] if m["version"] != "3"]
            document["signed"]["content"] = json.dumps(content, sort_keys=True, separators=(",", ":"))

        _edit(drop.manifest, drop_3)
    cli = drop.sync()
    assert cli.returncode == 1, cli.stdout
    assert user_tables(drop.db) == {"t1", "t2"}
    if where == "listing":
        assert (
            "refused (withheld): 0003_t3: listed in the signed manifest (serial 2), but file://" in cli.stderr
        )
        assert "refused (waiting): 0004_t4: waits for version 3" in cli.stderr
    else:
        assert "refused: the manifest from file://" in cli.stderr
        assert "the signature does not match its content under any trusted key" in cli.stderr
    # The folder mended (export writes the manifest again), the client catches up: 3 was never
    # refused for good ("order"), as it was before the manifest.
    await export(drop.store, drop.root, drop.keys.request)
    mended = drop.sync()
    assert mended.returncode == 0, mended.stderr
    assert user_tables(drop.db) == {"t1", "t2", "t3", "t4", "t5"}


async def test_a_forged_report_file_saying_3_is_applied_does_not_make_the_client_skip_3(drop: Drop) -> None:
    """The drop folder offers a client what its report files say it lacks; the client's own
    database, not those files, says what it applied."""
    await drop.publish(3, 4, 5)
    forged = files.dump(files.reports_document(drop.ship, [StatusReport(3, True, None, 1, V[3].checksum)]))
    folder = drop.root / files.REPORTS_DIR / drop.ship
    # Dated far ahead: it stays this client's "last word" on version 3 whatever it writes later.
    (folder / files.report_file_name(9_999_999_999_999, forged)).write_bytes(forged)
    for _ in range(2):
        cli = drop.sync()
        assert cli.returncode == 1, cli.stdout
        assert "refused (withheld): 0003_t3" in cli.stderr
        assert user_tables(drop.db) == {"t1", "t2"}


async def test_an_old_drop_folder_manifest_put_back_is_refused(drop: Drop) -> None:
    old = drop.manifest.read_bytes()  # serial 1: versions 1 and 2
    await drop.publish(3)
    assert drop.sync().returncode == 0 and "t3" in user_tables(drop.db)
    drop.manifest.write_bytes(old)
    cli = drop.sync()
    assert cli.returncode == 1, cli.stdout
    assert "has serial 1, older than serial 2, the last this client accepted" in cli.stderr


async def test_publish_signs_a_manifest_whose_serial_grows_only_with_the_list(drop: Drop) -> None:
    signed = await drop.store.manifest()
    assert signed is not None and signed.signed_by == fingerprint(drop.keys.signing.public_key())
    assert json.loads(signed.content)["serial"] == 1
    await drop.publish(1, 2)  # nothing new: the same manifest, the same bytes in the folder
    assert await drop.store.manifest() == signed
    await drop.publish(3)
    newer = await drop.store.manifest()
    assert newer is not None and json.loads(newer.content)["serial"] == 2
    listed = json.loads(newer.content)["migrations"]
    assert [(m["version"], m["checksum"]) for m in listed] == [(str(v), V[v].checksum) for v in (1, 2, 3)]
    assert json.loads(drop.manifest.read_text())["signed"] == newer.to_json()


# -- hostile HTTP servers ------------------------------------------------------------------------


class Fake:
    """A server the test scripts: ``answer`` is the body of every pending poll; what the client
    posts is kept in ``posted``."""

    def __init__(self, signing: Ed25519PrivateKey) -> None:
        self.signing = signing
        self.answer: dict[str, Any] = {"migrations": [], "actions": []}
        self.posted: list[tuple[str, Any]] = []

    def app(self) -> Starlette:
        headers = {PROTOCOL_HEADER: str(PROTOCOL)}

        async def pending(_request: Request) -> JSONResponse:
            return JSONResponse(self.answer, headers=headers)

        async def status(request: Request) -> JSONResponse:
            body = await request.json()
            self.posted.append(("status", body))
            return JSONResponse({"recorded": [r["version"] for r in body["reports"]]}, headers=headers)

        async def results(request: Request) -> JSONResponse:
            body = await request.json()
            self.posted.append(("results", body))
            return JSONResponse({"recorded": [r["id"] for r in body["results"]]}, headers=headers)

        async def changes(request: Request) -> JSONResponse:
            body = await request.json()
            return JSONResponse({"accepted": [c["id"] for c in body["changes"]]}, headers=headers)

        return Starlette(
            routes=[
                Route("/api/migrations/pending", pending),
                Route("/api/migrations/status", status, methods=["POST"]),
                Route("/api/actions/results", results, methods=["POST"]),
                Route("/api/changes", changes, methods=["POST"]),
            ]
        )

    def serve(self, key: Ed25519PrivateKey, offered: list[int], listed: list[int], serial: int) -> None:
        """Offer ``offered`` (signed by the real signing key) with a manifest of ``listed`` signed
        by ``key``."""
        manifest = FleetManifest(serial, tuple(Listed(v, V[v].name, V[v].checksum) for v in listed))
        self.answer = {
            "migrations": [_offer(V[v], self.signing).to_json() for v in offered],
            "actions": [],
            "manifest": sign_manifest(key, manifest).to_json(),
        }


def _offer(m: Migration, key: Ed25519PrivateKey) -> OfferedMigration:
    return OfferedMigration(
        m.version, m.name, m.canonical_content(), m.checksum, sign(key, m), fingerprint(key.public_key())
    )


@attrs.define
class Hostile:
    fake: Fake
    thread: ServerThread
    keys: Keys
    db: str

    def sync(self, *extra: str) -> Any:
        args = ("client", "sync", "--db", self.db, "--server", self.thread.url, "--client-id", "7")
        return run(*args, "--token", "t0ken", "--retries", "0", *self.keys.trust(), *extra)


@pytest.fixture
def hostile(tmp_path: Path, keys: Keys) -> Any:
    fake = Fake(keys.signing)
    thread = ServerThread(fake.app)
    thread.start()
    try:
        yield Hostile(fake, thread, keys, f"sqlite:///{tmp_path / 'client.db'}")
    finally:
        thread.stop()


@pytest.fixture
def at_2(hostile: Hostile) -> Hostile:
    """A client that applied versions 1 and 2 from the (so far honest) server."""
    hostile.fake.serve(hostile.keys.signing, [1, 2], [1, 2], serial=1)
    first = hostile.sync()
    assert first.returncode == 0, first.stderr
    assert user_tables(hostile.db) == {"t1", "t2"}
    hostile.fake.posted.clear()
    return hostile


def test_a_server_that_withholds_3_gets_nothing_past_2_applied(at_2: Hostile) -> None:
    at_2.fake.serve(at_2.keys.signing, [4, 5], [1, 2, 3, 4, 5], serial=2)
    cli = at_2.sync()
    assert cli.returncode == 1, cli.stdout
    assert user_tables(at_2.db) == {"t1", "t2"}
    assert "refused (withheld): 0003_t3: listed in the signed manifest (serial 2)" in cli.stderr
    # The server hears that this client lacks 3 (an honest one then offers it).
    reports = [r for kind, body in at_2.fake.posted if kind == "status" for r in body["reports"]]
    [about_3] = [r for r in reports if r["version"] == "3"]
    assert about_3["applied"] is False and about_3["error"].startswith(
        "refused: listed in the signed manifest"
    )
    at_2.fake.serve(at_2.keys.signing, [3, 4, 5], [1, 2, 3, 4, 5], serial=2)
    mended = at_2.sync()
    assert mended.returncode == 0, mended.stderr
    assert user_tables(at_2.db) == {f"t{i}" for i in range(1, 6)}


async def test_an_old_manifest_replayed_is_refused(at_2: Hostile) -> None:
    at_2.fake.serve(at_2.keys.signing, [3], [1, 2, 3], serial=5)
    assert at_2.sync().returncode == 0 and "t3" in user_tables(at_2.db)
    at_2.fake.serve(at_2.keys.signing, [], [1, 2], serial=4)  # genuine once, before 3 was published
    cli = at_2.sync()
    assert cli.returncode == 1, cli.stdout
    assert "has serial 4, older than serial 5, the last this client accepted" in cli.stderr
    # The serial is the client's own bookkeeping, in its database.
    from migsync.core.client import Client

    async with Client.connect(at_2.db, sinks=[]) as client:
        assert await last_serial(client.backend) == 5


@pytest.mark.parametrize("manifest", ["untrusted-key", "none", "changed-after-signing"])
def test_a_manifest_not_signed_by_a_trusted_key_is_refused(hostile: Hostile, manifest: str) -> None:
    keys = hostile.keys
    hostile.fake.serve(keys.rogue if manifest == "untrusted-key" else keys.signing, [1, 2], [1, 2], 1)
    if manifest == "none":
        del hostile.fake.answer["manifest"]
    elif manifest == "changed-after-signing":
        content = json.loads(hostile.fake.answer["manifest"]["content"])
        content["serial"] = 99
        hostile.fake.answer["manifest"]["content"] = json.dumps(
            content, sort_keys=True, separators=(",", ":")
        )
    cli = hostile.sync()
    assert cli.returncode == 1, cli.stdout
    assert user_tables(hostile.db) == set()
    expected = {
        "untrusted-key": "does not match its content under any trusted key",
        "none": "sent no signed manifest",
        "changed-after-signing": "does not match its content under any trusted key",
    }[manifest]
    assert expected in cli.stderr and "refused (manifest): 0001_t1: not stored" in cli.stderr


@pytest.mark.parametrize("signed", ["unsigned", "migration-key", "for-another-client", "request-key"])
def test_a_revert_request_over_http_is_carried_out_only_when_signed_for_this_client(
    at_2: Hostile, signed: str
) -> None:
    request = ActionRequest(1, "revert", 2, "mallory", 0.0)
    key = {"migration-key": at_2.keys.signing, "request-key": at_2.keys.request}.get(
        signed, at_2.keys.request
    )
    if signed != "unsigned":
        request = sign_request(key, request, "8" if signed == "for-another-client" else "7")
    at_2.fake.serve(at_2.keys.signing, [], [1, 2], serial=1)
    at_2.fake.answer["actions"] = [request.to_json()]
    cli = at_2.sync()
    [answer] = [r for kind, body in at_2.fake.posted if kind == "results" for r in body["results"]]
    if signed == "request-key":  # the positive control: the same request, signed as it should be
        assert cli.returncode == 0, cli.stderr
        assert user_tables(at_2.db) == {"t1"}
        assert answer["state"] in ("queued", "done")
        return
    assert cli.returncode == 1, cli.stdout
    assert user_tables(at_2.db) == {"t1", "t2"}, "nothing was reverted"
    assert "refused request 1 (revert version 2)" in cli.stderr
    # The refusal is the request's answer: the server (and its admin) hear of it.
    assert answer["state"] == "failed" and answer["detail"].startswith(
        "refused: request 1 (revert version 2)"
    )


def test_without_a_trusted_request_key_every_request_is_refused(at_2: Hostile) -> None:
    request = sign_request(at_2.keys.request, ActionRequest(1, "revert", 2, "alice", 0.0), "7")
    at_2.fake.serve(at_2.keys.signing, [], [1, 2], serial=1)
    at_2.fake.answer["actions"] = [request.to_json()]
    args = ("client", "sync", "--db", at_2.db, "--server", at_2.thread.url, "--client-id", "7")
    cli = run(
        *args, "--token", "t0ken", "--retries", "0", "--trust-key", str(at_2.keys.folder / "signing.pub")
    )
    assert cli.returncode == 1, cli.stdout
    assert "no request key is trusted here (--trust-request-key)" in cli.stderr
    assert user_tables(at_2.db) == {"t1", "t2"}


def test_a_listed_version_not_sent_with_nothing_after_it_waits_and_is_reported_missing(at_2: Hostile) -> None:
    """Not an attack by itself: a server that believes this client has 3 (its database was
    restored from a backup) sends nothing. The client skips nothing, fails nothing, and tells the
    server it lacks 3, so that the server sends it."""
    at_2.fake.serve(at_2.keys.signing, [], [1, 2, 3], serial=2)
    cli = at_2.sync("--json")
    assert cli.returncode == 0, cli.stderr
    result = json.loads(cli.stdout)
    assert [(r["name"], r["kind"]) for r in result["refused"]] == [("0003_t3", "unsent")]
    reports = [r for kind, body in at_2.fake.posted if kind == "status" for r in body["reports"]]
    assert [(r["version"], r["applied"], r["error"]) for r in reports] == [("3", False, None)]
    at_2.fake.serve(at_2.keys.signing, [3], [1, 2, 3], serial=2)
    assert at_2.sync().returncode == 0 and "t3" in user_tables(at_2.db)
