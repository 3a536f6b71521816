"""Rollouts and app-version targeting through a real HTTP server on loopback: the
``Migsync-App-Version`` header (stored, in the ETag, checked), the HTTP transport that sends it,
and the admin's rollout endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from dbtools import client_headers
from servers import ServerThread

import migsync
from migsync.core.errors import ConfigError
from migsync.core.migration import Migration, Script
from migsync.protocol.signing import load_private_key
from migsync.server import Store
from migsync.server.app import create_app
from migsync.transports.http import HttpTransport

ADMIN = "admin-secret-token"
NEEDS = Migration(1, "0001_note", {"*": Script("-- migsync:requires app>=2.3\nCREATE TABLE n (x INTEGER)")})
PLAIN = Migration(2, "0002_plain", {"*": Script("CREATE TABLE p (x INTEGER)")})


@pytest.fixture
def served(any_store: str, key_path: Path) -> Iterator[tuple[ServerThread, str, dict[str, str]]]:
    async def seed() -> dict[str, str]:
        async with Store.open(any_store) as store:
            await store.publish([NEEDS, PLAIN], load_private_key(key_path))
            _, canary = await store.add_client("canary", {"group": "canary"})
            _, plain = await store.add_client("plain")
        return {"canary": canary, "plain": plain}

    tokens = asyncio.run(seed())
    server = ServerThread(lambda: create_app(any_store, admin_token=ADMIN, panel=False, appliers=[]))
    server.start()
    try:
        yield server, any_store, tokens
    finally:
        server.stop()


def pending(base: str, token: str, **headers: str) -> httpx.Response:
    return httpx.get(
        f"{base}/api/migrations/pending", headers={**client_headers(token), **headers}, timeout=10
    )


def versions(answer: httpx.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [m["version"] for m in answer.json()["migrations"]]


def test_the_app_version_header_decides_and_moves_the_etag(
    served: tuple[ServerThread, str, dict[str, str]],
) -> None:
    server, store, tokens = served
    first = pending(server.url, tokens["plain"])
    assert versions(first) == []  # no app version said: 1 is held, and 2 after it
    etag = first.headers["etag"]
    upgraded = pending(server.url, tokens["plain"], **{"Migsync-App-Version": "2.4.0", "If-None-Match": etag})
    assert versions(upgraded) == ["1", "2"]
    again = pending(
        server.url,
        tokens["plain"],
        **{"Migsync-App-Version": "2.4.0", "If-None-Match": upgraded.headers["etag"]},
    )
    assert again.status_code == 304
    refused = pending(server.url, tokens["plain"], **{"Migsync-App-Version": "two point four"})
    assert refused.status_code == 422 and "Migsync-App-Version" in refused.json()["error"]

    async def fleet() -> dict[str, str | None]:
        async with Store.open(store, create=False) as opened:
            return {e.client.name: e.client.app_version for e in await opened.fleet()}

    assert asyncio.run(fleet()) == {"canary": None, "plain": "2.4.0"}  # the refusal wrote nothing


async def test_the_http_transport_sends_the_app_version(
    served: tuple[ServerThread, str, dict[str, str]],
) -> None:
    server, _, tokens = served
    async with HttpTransport(server.url, token=tokens["canary"], app_version="2.2") as old:
        assert [m.version.text for m in (await old.fetch()).migrations or []] == []
    async with HttpTransport(server.url, token=tokens["canary"], app_version="2.3") as new:
        assert [m.version.text for m in (await new.fetch()).migrations or []] == ["1", "2"]
    with pytest.raises(ConfigError, match="app version 'x y'"):
        HttpTransport(server.url, token=tokens["canary"], app_version="x y")


def test_the_rollout_endpoints(served: tuple[ServerThread, str, dict[str, str]]) -> None:
    server, _, tokens = served
    admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    app = {"Migsync-App-Version": "3.0"}
    assert versions(pending(server.url, tokens["plain"], **app)) == ["1", "2"]
    order = {"versions": ["2"], "stages": "canary,all", "soak_seconds": 0, "requested_by": "ann"}
    started = admin.post("/api/rollouts", json=order)
    assert started.status_code == 201, started.text
    rollout = started.json()
    assert (rollout["state"], rollout["stage_name"], rollout["created_by"]) == ("running", "canary", "ann")
    # the server's own cache of client states is not trusted after a rollout starts
    assert versions(pending(server.url, tokens["plain"], **app)) == ["1"]
    assert versions(pending(server.url, tokens["canary"], **app)) == ["1", "2"]
    operate = {"rollout_id": rollout["id"], "operation": "advance", "requested_by": "ann"}
    advanced = admin.post("/api/rollouts/operations", json=operate)
    assert advanced.status_code == 200 and advanced.json()["stage_name"] == "all"
    assert versions(pending(server.url, tokens["plain"], **app)) == ["1", "2"]
    again = admin.post("/api/rollouts/operations", json={**operate, "operation": "resume"})
    assert again.status_code == 409 and "nothing to resume" in again.json()["error"]
    unknown = admin.post("/api/rollouts/operations", json={**operate, "rollout_id": 99})
    assert unknown.status_code == 404
    status = admin.get(f"/api/rollouts/{rollout['id']}")
    assert status.status_code == 200
    assert [s["name"] for s in status.json()["stage_counts"]] == ["canary", "all"]
    assert [a["who"] for a in status.json()["audit"]] == ["ann", "ann"]
    assert admin.get("/api/rollouts/99").status_code == 404
    assert admin.get("/api/rollouts/abc").status_code == 422
    listed = admin.get("/api/rollouts").json()["rollouts"]
    assert [r["id"] for r in listed] == [rollout["id"]]
    bad = admin.post("/api/rollouts", json={**order, "stages": "10%,5%"})
    assert bad.status_code == 422 and "percentages must grow" in bad.json()["error"]
    missing = admin.post("/api/rollouts", json={**order, "versions": ["9"]})
    assert missing.status_code == 422 and "not published" in missing.json()["error"]
    client_token = admin.get("/api/rollouts", headers={"Authorization": f"Bearer {tokens['plain']}"})
    assert client_token.status_code == 403
    admin.close()


async def test_an_embedding_app_says_its_version(
    served: tuple[ServerThread, str, dict[str, str]], key_path: Path, tmp_path: Path
) -> None:
    server, store, tokens = served
    db = f"sqlite:///{tmp_path / 'app.db'}"
    trust = [f"{key_path}.pub"]
    old = await migsync.sync_async(
        db, server.url, client_id="2", token=tokens["plain"], trust_keys=trust, app_version="2.2"
    )
    assert old.stored == ()  # 0001 needs app>=2.3, and 0002 comes after it
    new = await migsync.sync_async(
        db, server.url, client_id="2", token=tokens["plain"], trust_keys=trust, app_version="2.3.1"
    )
    assert new.stored == ("0001_note", "0002_plain")
    async with Store.open(store, create=False) as opened:
        assert {c.name: c.app_version for c in await opened.clients()}["plain"] == "2.3.1"
