"""The admin's requests over the real HTTP API (uvicorn on a loopback port), SQLite and Postgres stores:
requested through ``POST /api/actions``, picked up by a real client's sync, answered, listed."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dbtools import aquery, client_headers, downgrade_store, query, run
from servers import ServerThread

from migsync.client.sync import Syncer, SyncResult
from migsync.core.client import Client
from migsync.protocol.signing import load_private_key, load_public_keys, write_keypair
from migsync.server import Store
from migsync.server.tables import SCHEMA_VERSION
from migsync.testing.backend_suite import migration
from migsync.transports.http import HttpTransport

ADMIN = "actions-admin"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
V1 = migration(1, "0001_users", "CREATE TABLE users (id INTEGER PRIMARY KEY)", "DROP TABLE users")
V2 = migration(2, "0002_orders", "CREATE TABLE orders (id INTEGER PRIMARY KEY)", "DROP TABLE orders")


class Server:
    def __init__(self, store_url: str, tmp_path: Path, cache_seconds: float) -> None:
        self.store_url = store_url
        self.tmp_path = tmp_path
        write_keypair(tmp_path / "key")
        self.key = load_private_key(tmp_path / "key")
        self.trusted = load_public_keys([tmp_path / "key.pub"])
        #: the server's request key: a key of its own, apart from the one that signs migrations
        self.requester = write_keypair(tmp_path / "request-key")
        request_key = load_private_key(tmp_path / "request-key")
        from migsync.server.app import create_app

        self.http = ServerThread(
            lambda: create_app(
                store_url, admin_token=ADMIN, cache_seconds=cache_seconds, request_key=request_key
            )
        )
        self.tokens: dict[str, tuple[int, str]] = {}

    async def add(self, name: str) -> int:
        async with Store.open(self.store_url) as store:
            self.tokens[name] = await store.add_client(name)
        return self.tokens[name][0]

    def db(self, name: str) -> str:
        return f"sqlite:///{self.tmp_path / f'{name}.db'}"

    async def sync(self, name: str, max_attempts: int = 3) -> SyncResult:
        client_id, token = self.tokens[name]
        async with (
            Client.connect(
                self.db(name), sinks=[], backend_options={"create": True}, max_attempts=max_attempts
            ) as client,
            HttpTransport(self.http.url, client_id=str(client_id), token=token) as transport,
        ):
            syncer = Syncer(client, transport, self.trusted, request_keys=[self.requester])
            return await syncer.sync(ignore_backoff=True)

    async def request(self, **body: Any) -> httpx.Response:
        body.setdefault("requested_by", "alice")
        body.setdefault("clients", None)
        async with httpx.AsyncClient(base_url=self.http.url) as http:
            return await http.post("/api/actions", json=body, headers=ADMIN_HEADERS)

    async def actions(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=self.http.url) as http:
            response = await http.get("/api/actions", headers=ADMIN_HEADERS)
        assert response.status_code == 200, response.text
        actions: list[dict[str, Any]] = response.json()["actions"]
        return actions

    async def poll(self, name: str, etag: str | None = None) -> httpx.Response:
        headers = client_headers(self.tokens[name][1])
        if etag:
            headers["If-None-Match"] = etag
        async with httpx.AsyncClient(base_url=self.http.url) as http:
            return await http.get("/api/migrations/pending", headers=headers)


def _serve(request: pytest.FixtureRequest, tmp_path: Path, cache_seconds: float) -> Iterator[Server]:
    url = (
        f"sqlite:///{tmp_path / 'server.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    s = Server(str(url), tmp_path, cache_seconds)

    async def publish() -> None:
        async with Store.open(s.store_url) as store:
            await store.publish([V1, V2], s.key)

    asyncio.run(publish())  # a sync fixture: no loop runs yet
    s.http.start()
    try:
        yield s
    finally:
        s.http.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    # A long cache: a request through the API must reach the clients at once all the same.
    yield from _serve(request, tmp_path, cache_seconds=60)


def tables(url: str) -> set[str]:
    return {r[0] for r in query(url, "SELECT name FROM sqlite_master WHERE type = 'table'")}


async def test_a_revert_requested_over_the_api_is_carried_out_and_answered(server: Server) -> None:
    shop = await server.add("shop")
    assert (await server.sync("shop")).ok
    first = await server.poll("shop")
    etag = first.headers["etag"]
    assert first.json()["actions"] == []
    assert (await server.poll("shop", etag)).status_code == 304

    response = await server.request(action="revert", version=2, clients=[shop])
    assert response.status_code == 201, response.text
    [made] = response.json()["actions"]
    assert made["client"] == "shop" and made["state"] == "pending" and made["requested_by"] == "alice"

    offered = await server.poll("shop", etag)
    assert offered.status_code == 200, "a new request changes the client's answer at once"
    [request] = offered.json()["actions"]
    assert request == {
        "id": made["id"],
        "action": "revert",
        "version": "2",
        "requested_by": "alice",
        "requested_at": request["requested_at"],
        # signed for this client by the server's request key
        "signature": request["signature"],
        "signed_by": server.requester.fingerprint,
    }
    result = await server.sync("shop")
    assert result.ok and result.actions_received == 1 and result.actions_answered == 1
    assert "orders" not in tables(server.db("shop"))

    [listed] = await server.actions()
    assert (listed["state"], listed["detail"]) == ("done", "reverted; held at version 2")
    assert (await server.poll("shop")).json()["actions"] == [], "an answered request is not offered again"
    again = await server.sync("shop")
    assert again.ok and again.actions_received == 0 and "orders" not in tables(server.db("shop"))


async def test_a_reapply_for_every_client_goes_to_those_that_failed_it(server: Server) -> None:
    await server.add("good")
    bad = await server.add("bad")
    query(server.db("bad"), "CREATE TABLE orders (x INTEGER)")  # so 0002 fails there
    await server.sync("good")
    result = await server.sync("bad", max_attempts=1)
    assert result.run.failure is not None and result.run.failure.dead

    async with httpx.AsyncClient(base_url=server.http.url) as http:
        fleet = (await http.get("/api/clients", headers=ADMIN_HEADERS)).json()["clients"]
    [failure] = next(c for c in fleet if c["name"] == "bad")["failed"]
    assert failure["version"] == "2" and failure["dead"] is True

    response = await server.request(action="reapply", version=2)
    assert response.status_code == 201, response.text
    assert [a["client_id"] for a in response.json()["actions"]] == [bad]

    query(server.db("bad"), "DROP TABLE orders")  # the cause, fixed on site
    result = await server.sync("bad", max_attempts=1)
    assert result.ok, result.to_json()
    [listed] = await server.actions()
    assert (listed["client"], listed["state"], listed["detail"]) == ("bad", "done", "0002_orders applied")


async def test_a_newer_request_replaces_one_the_client_has_not_picked_up(server: Server) -> None:
    shop = await server.add("shop")
    await server.sync("shop")
    first = (await server.request(action="revert", version=1, clients=[shop])).json()["actions"][0]
    second = (await server.request(action="revert", version=2, clients=[shop])).json()["actions"][0]
    [offered] = (await server.poll("shop")).json()["actions"]
    assert offered["id"] == second["id"]
    await server.sync("shop")
    by_id = {a["id"]: a for a in await server.actions()}
    assert by_id[first["id"]]["state"] == "superseded"
    assert by_id[first["id"]]["detail"] == f"replaced by request {second['id']}"
    assert by_id[second["id"]]["state"] == "done"
    assert "users" in tables(server.db("shop")), "only the latest request was carried out"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"action": "drop", "version": 1, "clients": None, "requested_by": "a"},
            422,
            'action must be one of "reapply", "revert", not "drop"',
        ),
        (
            {"action": "revert", "version": 7, "clients": None, "requested_by": "a"},
            422,
            "version 7 is not published",
        ),
        (
            {"action": "revert", "version": 1, "clients": [999], "requested_by": "a"},
            422,
            "no client with id 999",
        ),
        (
            {"action": "revert", "version": 1, "clients": None, "requested_by": "a"},
            422,
            "no client has 0001_users",
        ),
        ({"action": "revert", "version": 1, "clients": [], "requested_by": "a"}, 422, "no client given"),
        ({"action": "revert", "version": 1, "clients": None, "requested_by": " "}, 422, "say who asks"),
        ({"action": "revert", "version": 1}, 422, "the body must be an object with action, clients"),
        ({"action": "revert", "version": "1.", "clients": None, "requested_by": "a"}, 422, "version must be"),
        ({"action": "revert", "version": True, "clients": None, "requested_by": "a"}, 422, "version must be"),
        (
            {"action": "revert", "version": 1, "clients": ["x"], "requested_by": "a"},
            422,
            "clients[0] must be",
        ),
    ],
)
async def test_a_bad_request_is_refused_with_the_reason_and_records_nothing(
    server: Server, body: dict[str, Any], status: int, message: str
) -> None:
    await server.add("shop")
    async with httpx.AsyncClient(base_url=server.http.url) as http:
        response = await http.post("/api/actions", json=body, headers=ADMIN_HEADERS)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert await server.actions() == []


async def test_requests_need_the_admin_token(server: Server) -> None:
    await server.add("shop")
    client = client_headers(server.tokens["shop"][1])
    async with httpx.AsyncClient(base_url=server.http.url) as http:
        assert (await http.get("/api/actions")).status_code == 401
        assert (await http.get("/api/actions", headers=client)).status_code == 403
        body = {"action": "revert", "version": 1, "clients": None, "requested_by": "a"}
        assert (await http.post("/api/actions", json=body, headers=client)).status_code == 403
        answers = {"results": [{"id": 1, "state": "done", "detail": None}]}
        assert (
            await http.post("/api/actions/results", json=answers, headers=ADMIN_HEADERS)
        ).status_code == 403


@pytest.mark.parametrize(
    ("results", "message"),
    [
        (
            [{"id": 1, "state": "finished", "detail": None}],
            r'results\[0\].state must be one of "queued", "done"',
        ),
        ([{"id": "1", "state": "done", "detail": None}], r"results\[0\].id must be a non-negative integer"),
        ([{"id": 1, "state": "done"}], r"results\[0\]: missing 'detail'"),
        ([{"id": 1, "state": "done", "detail": 5}], r"results\[0\].detail must be null or a text"),
        (
            [{"id": 1, "state": "done", "detail": None}, {"id": 1, "state": "queued", "detail": None}],
            r"results\[1\]: request 1 is answered twice",
        ),
    ],
)
async def test_malformed_answers_are_refused_with_the_reason(
    server: Server, results: list[Any], message: str
) -> None:
    await server.add("shop")
    headers = client_headers(server.tokens["shop"][1])
    async with httpx.AsyncClient(base_url=server.http.url) as http:
        response = await http.post("/api/actions/results", json={"results": results}, headers=headers)
    assert response.status_code == 422
    assert re.search(message, response.json()["error"]), response.json()


async def test_a_client_cannot_answer_for_another(server: Server) -> None:
    mine = await server.add("mine")
    await server.add("other")
    await server.sync("mine")
    [made] = (await server.request(action="revert", version=2, clients=[mine])).json()["actions"]
    headers = client_headers(server.tokens["other"][1])
    async with httpx.AsyncClient(base_url=server.http.url) as http:
        answer = {"results": [{"id": made["id"], "state": "done", "detail": "forged"}]}
        response = await http.post("/api/actions/results", json=answer, headers=headers)
    assert response.json() == {"recorded": [], "unknown": [made["id"]]}
    [listed] = await server.actions()
    assert listed["state"] == "pending" and listed["detail"] is None


@pytest.fixture(params=["sqlite", "postgresql"])
def uncached(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    yield from _serve(request, tmp_path, cache_seconds=0)


async def test_a_version_3_store_gets_actions_and_dead_flags(uncached: Server) -> None:
    uncached.http.stop()
    shop = await uncached.add("shop")
    await downgrade_store(uncached.store_url, 3)
    uncached.http.start()
    await uncached.sync("shop")
    [made] = (await uncached.request(action="revert", version=2, clients=[shop])).json()["actions"]
    assert (await uncached.sync("shop")).actions_answered == 1
    assert [a["state"] for a in await uncached.actions()] == ["done"]
    assert made["version"] == "2"
    async with Store.open(uncached.store_url) as store:
        [entry] = await store.fleet()
    assert entry.applied == (1,)
    rows = await aquery(uncached.store_url, "SELECT value FROM store_meta WHERE key = 'schema_version'")
    assert rows == [(str(SCHEMA_VERSION),)]


async def test_the_cli_requests_lists_and_the_client_answers(uncached: Server) -> None:
    shop = await uncached.add("shop")
    await uncached.add("idle")
    await uncached.sync("shop")
    store = uncached.store_url

    made = run(
        "actions", "request", "revert", "2", "--store", store, "--client", "shop", "--by", "carol", "--json"
    )
    assert made.returncode == 0, made.stderr
    [action] = json.loads(made.stdout)["actions"]
    assert (action["client_id"], action["requested_by"], action["state"]) == (shop, "carol", "pending")

    result = await uncached.sync("shop")
    assert result.actions_answered == 1 and "orders" not in tables(uncached.db("shop"))

    listed = run("actions", "list", "--store", store)
    assert listed.returncode == 0, listed.stderr
    [header, row] = listed.stdout.splitlines()
    assert header.split()[:4] == ["id", "requested", "by", "client"]
    assert re.search(
        rf"^{action['id']}\s+\S+\s+carol\s+shop\s+revert\s+2\s+done\s+reverted; held at version 2$", row
    )

    every = run("actions", "request", "reapply", "2", "--store", store, "--all")
    assert every.returncode == 0, every.stderr
    assert every.stdout.splitlines()[0].endswith(f"reapply version 2 on shop (client {shop})")
    assert (await uncached.sync("shop")).ok and "orders" in tables(uncached.db("shop"))
    only_shop = run("actions", "list", "--store", store, "--client", str(shop), "--json")
    assert [a["state"] for a in json.loads(only_shop.stdout)["actions"]] == ["done", "done"]
    assert json.loads(run("actions", "list", "--store", store, "--client", "idle", "--json").stdout) == {
        "actions": []
    }


def test_the_cli_says_what_is_wrong(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'server.db'}"
    assert run("clients", "add", "shop", "--store", store).returncode == 0
    neither = run("actions", "request", "revert", "1", "--store", store)
    assert neither.returncode == 2 and "give --client NAME (one or more) or --all" in neither.stderr
    both = run("actions", "request", "revert", "1", "--store", store, "--all", "--client", "shop")
    assert both.returncode == 2 and "give --client NAME" in both.stderr
    unknown = run("actions", "request", "revert", "1", "--store", store, "--client", "nope")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "error: no client named 'nope' (see 'migsync clients list')"
    unpublished = run("actions", "request", "revert", "1", "--store", store, "--client", "shop")
    assert unpublished.returncode == 2 and unpublished.stderr.strip() == "error: version 1 is not published"
    assert run("actions", "list", "--store", store).stdout.strip() == "no requests"


async def test_a_long_detail_is_kept_whole_up_to_the_limit(server: Server) -> None:
    shop = await server.add("shop")
    [made] = (await server.request(action="revert", version=1, clients=[shop])).json()["actions"]
    headers = client_headers(server.tokens["shop"][1])
    detail = "x" * 60000
    async with httpx.AsyncClient(base_url=server.http.url) as http:
        answer = {"results": [{"id": made["id"], "state": "failed", "detail": detail}]}
        response = await http.post("/api/actions/results", json=answer, headers=headers)
    assert response.json() == {"recorded": [made["id"]], "unknown": []}
    [listed] = await server.actions()
    assert listed["detail"] == detail


async def test_current_requests_are_the_open_ones_and_those_since_the_last_reapply(server: Server) -> None:
    from migsync.protocol.wire import ActionResult

    a = await server.add("a")
    b = await server.add("b")
    async with Store.open(server.store_url) as store:

        async def ask(action: str, version: int, client: int, answer: str | None) -> int:
            [made] = await store.request_action(action, version, [client], "x")
            if answer is not None:
                await store.record_answers(client, [ActionResult(made.id, answer, None)])
            return made.id

        old_revert = await ask("revert", 2, a, "done")
        reapply = await ask("reapply", 2, a, "done")
        revert = await ask("revert", 1, a, "failed")
        queued = await ask("reapply", 1, b, "queued")
        b_done = await ask("revert", 1, b, "done")
        pending = await ask("revert", 2, b, None)
        _, current_records = await store.fleet_view()
        current = [r.id for r in current_records]
        assert [r.id for r in (await store.fleet_view(b))[1]] == [pending, b_done, queued]
        every = [r.id for r in await store.actions()]
    assert current == [pending, b_done, queued, revert, reapply]
    assert old_revert not in current and old_revert in every


async def test_the_fleet_and_the_client_command_say_what_a_request_did(uncached: Server) -> None:
    shop = await uncached.add("shop")
    await uncached.sync("shop")
    await uncached.request(action="revert", version=2, clients=[shop])
    client_id, token = uncached.tokens["shop"]
    synced = run(
        "client", "sync", "--db", uncached.db("shop"), "--server", uncached.http.url,
        "--client-id", str(client_id), "--token", token, "--trust-key", str(uncached.tmp_path / "key.pub"),
        "--trust-request-key", str(uncached.tmp_path / "request-key.pub"),
    )  # fmt: skip
    assert synced.returncode == 0, synced.stderr
    lines = synced.stdout.splitlines()
    assert "1 request from the admin (see 'migsync status')" in lines
    assert any(re.fullmatch(r"reverted 1 migration \(0002_orders\) in \d+ ms", line) for line in lines), lines
    assert "answered 1 request" in lines
    fleet = run("fleet", "--store", uncached.store_url)
    assert re.search(r"^\d+\s+shop\s+1\s+1\s+2 \(held from 2\)\s+-", fleet.stdout, re.MULTILINE), fleet.stdout
    [entry] = json.loads(run("fleet", "--store", uncached.store_url, "--json").stdout)["clients"]
    assert (entry["pending"], entry["held_from"]) == (["2"], "2")
    await uncached.request(action="reapply", version=2, clients=[shop])
    await uncached.sync("shop")
    [entry] = json.loads(run("fleet", "--store", uncached.store_url, "--json").stdout)["clients"]
    assert (entry["pending"], entry["held_from"]) == ([], None)
