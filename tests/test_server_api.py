"""The server's HTTP API (migsync.server.app): in-process through httpx.ASGITransport on SQLite and
Postgres, and once through a real ``migsync serve`` (uvicorn) on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from clocks import SteppedClock, eventually
from dbtools import aquery, downgrade_store, run, start
from servers import free_port
from sqlalchemy import event
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.routing import Mount

from migsync.core.errors import ConfigError
from migsync.core.migration import Migration, Script
from migsync.core.version import Version
from migsync.protocol.signing import TrustedKey, load_private_key, load_public_keys, verify, write_keypair
from migsync.protocol.wire import PROTOCOL, PROTOCOL_HEADER
from migsync.server import Failure, StatusReport, Store
from migsync.server.app import create_app
from migsync.server.bodies import MAX_REPORTS
from migsync.server.tables import SCHEMA_VERSION

ADMIN = "admin-secret-token"


def migration(version: int, sql: str) -> Migration:
    return Migration(version, f"{version:04d}_m{version}", {"*": Script(sql)}, {"*": Script("SELECT 1")})


V1 = migration(1, "CREATE TABLE a (x INTEGER)")
V2 = migration(2, "CREATE TABLE b (x INTEGER)")
V2_CHANGED = migration(2, "CREATE TABLE b (x INTEGER, y INTEGER)")
V3 = migration(3, "CREATE TABLE c (x INTEGER)")
V4 = migration(4, "CREATE TABLE d (x INTEGER)")


@pytest.fixture
def sqlite_store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'server.db'}"


@attrs.define
class Api:
    """An app with its lifespan running, the store behind it, and an HTTP client on it."""

    url: str
    store: Store
    http: httpx.AsyncClient
    key_path: Path

    @property
    def trusted(self) -> list[TrustedKey]:
        return load_public_keys([f"{self.key_path}.pub"])

    async def publish(self, *migrations: Migration, force: bool = False) -> None:
        await self.store.publish(migrations, load_private_key(self.key_path), force=force)

    async def client(self, name: str) -> dict[str, str]:
        """Register client ``name``: the headers that authenticate it."""
        _, token = await self.store.add_client(name)
        return {"Authorization": f"Bearer {token}", PROTOCOL_HEADER: str(PROTOCOL)}

    async def pending(self, headers: dict[str, str], etag: str | None = None) -> httpx.Response:
        extra = {"If-None-Match": etag} if etag else {}
        return await self.http.get("/api/migrations/pending", headers=headers | extra)

    async def versions(self, headers: dict[str, str]) -> list[Version]:
        response = await self.pending(headers)
        assert response.status_code == 200, response.text
        return [Version.parse(m["version"]) for m in response.json()["migrations"]]

    async def report(self, headers: dict[str, str], *reports: dict[str, Any]) -> httpx.Response:
        return await self.http.post(
            "/api/migrations/status", headers=headers, json={"reports": list(reports)}
        )


def applied(m: Migration, *, checksum: str | None = None) -> dict[str, Any]:
    return {
        "version": m.version.text,
        "applied": True,
        "error": None,
        "attempts": 1,
        "checksum": checksum or m.checksum,
    }


def failed(m: Migration, error: str, attempts: int = 1) -> dict[str, Any]:
    return {
        "version": m.version.text,
        "applied": False,
        "error": error,
        "attempts": attempts,
        "checksum": m.checksum,
    }


@contextlib.asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` with its lifespan entered (ASGITransport does not run it), and a client on it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://migsync.test") as http:
            yield http


@contextlib.asynccontextmanager
async def api_on(url: str, key_path: Path, **options: Any) -> AsyncIterator[Api]:
    options.setdefault("cache_seconds", 0)
    if "request_key" not in options:  # the server's request key, apart from the signing key
        request_key_path = key_path.with_name("request.key")
        if not request_key_path.exists():
            write_keypair(request_key_path)
        options["request_key"] = load_private_key(request_key_path)
    async with Store.open(url) as store, running(create_app(url, admin_token=ADMIN, **options)) as http:
        yield Api(url, store, http, key_path)


@pytest.fixture
async def api(any_store: str, key_path: Path) -> AsyncIterator[Api]:
    async with api_on(any_store, key_path) as value:
        yield value


ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


# -- the store methods behind the API ------------------------------------------------------------


async def test_store_pending_report_touch_and_fleet(any_store: str, key_path: Path) -> None:
    async with Store.open(any_store) as store:
        await store.publish([V1, V2], load_private_key(key_path))
        a, token = await store.add_client("a")
        b, _ = await store.add_client("b")
        state = await store.client_state(token)
        assert state is not None and state.client.client_id == a
        assert (state.publish_serial, state.status_serial) == (1, 0)
        assert await store.client_state("nope") is None
        assert await store.client_state("") is None

        after, pending = await store.pending(a)
        assert after.etag == state.etag == f'"{a}.1.0"'
        assert [p.version for p in pending] == [1, 2]

        reports = [StatusReport(1, True, None, 1, V1.checksum), StatusReport(2, False, "x", 2, V2.checksum)]
        result = await store.report(a, reports)
        assert (result.recorded, result.unchanged, result.drift, result.unpublished) == ((1, 2), (), (), ())
        assert (await store.report(a, reports)).unchanged == (1, 2)
        refused = await store.report(
            a, [StatusReport(1, False, "y", 3, V1.checksum), StatusReport(9, True, None, 1, V1.checksum)]
        )
        assert refused.unpublished == (9,) and refused.recorded == ()

        state = await store.client_state(token)
        assert state is not None and state.status_serial == 1
        assert state.client.reported_version == 1 and state.client.last_seen_at is not None
        assert [p.version for p in (await store.pending(a))[1]] == [2]
        assert [p.version for p in (await store.pending(b))[1]] == [1, 2]

        await store.touch(b, 1234.5)
        a_entry, b_entry = await store.fleet()
        assert (a_entry.applied, a_entry.pending, a_entry.drift) == ((1,), (2,), ())
        assert a_entry.failed == (Failure(2, "x", 2),)
        assert (b_entry.applied, b_entry.pending, b_entry.client.last_seen_at) == ((), (1, 2), 1234.5)


# -- pending -------------------------------------------------------------------------------------


async def test_pending_lists_what_the_client_lacks_in_order_signed(api: Api) -> None:
    await api.publish(V3, V1)
    await api.publish(V2)
    me = await api.client("shop-berlin")
    response = await api.pending(me)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    items = response.json()["migrations"]
    assert [i["version"] for i in items] == ["1", "2", "3"]
    for item, expected in zip(items, (V1, V2, V3), strict=True):
        assert set(item) == {
            "version", "name", "content", "checksum", "signature", "signed_by", "applied_checksum"
        }  # fmt: skip
        received = Migration.from_json(json.loads(item["content"]))
        assert item["content"] == expected.canonical_content()
        assert item["checksum"] == received.checksum == expected.checksum
        assert item["name"] == expected.name
        assert item["applied_checksum"] is None
        assert verify(received, item["signature"], api.trusted).fingerprint == item["signed_by"]


async def test_an_empty_store_has_nothing_pending(api: Api) -> None:
    me = await api.client("a")
    response = await api.pending(me)
    assert response.status_code == 200
    # Nothing published yet: no signed manifest either (the first 'migsync publish' signs one).
    assert response.json() == {"migrations": [], "actions": [], "manifest": None}


async def test_etag_gives_304_until_a_publish_or_a_report_changes_the_list(api: Api) -> None:
    await api.publish(V1, V2)
    me = await api.client("a")
    first = await api.pending(me)
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "no-cache"

    idle = await api.pending(me, etag)
    assert idle.status_code == 304
    assert idle.content == b""
    assert idle.headers["etag"] == etag
    assert (await api.pending(me, f"W/{etag}")).status_code == 304  # weak comparison
    assert (await api.pending(me, f'"other", {etag}')).status_code == 304
    assert (await api.pending(me, '"other"')).status_code == 200

    await api.publish(V3)
    after_publish = await api.pending(me, etag)
    assert after_publish.status_code == 200
    assert [m["version"] for m in after_publish.json()["migrations"]] == ["1", "2", "3"]
    etag = after_publish.headers["etag"]
    assert (await api.pending(me, etag)).status_code == 304

    # Publishing what is already published changes nothing, so neither does the ETag.
    await api.publish(V1, V2, V3)
    assert (await api.pending(me, etag)).status_code == 304

    assert (await api.report(me, applied(V1))).status_code == 200
    after_report = await api.pending(me, etag)
    assert after_report.status_code == 200
    assert [m["version"] for m in after_report.json()["migrations"]] == ["2", "3"]
    assert after_report.headers["etag"] != etag


async def test_etags_are_per_client(api: Api) -> None:
    await api.publish(V1)
    a, b = await api.client("a"), await api.client("b")
    etag_a = (await api.pending(a)).headers["etag"]
    assert (await api.pending(b, etag_a)).status_code == 200


async def test_an_idle_poll_is_answered_from_memory_within_cache_seconds(
    sqlite_store: str, key_path: Path
) -> None:
    clock = SteppedClock()
    async with api_on(sqlite_store, key_path, cache_seconds=2.0, clock=clock) as api:
        await api.publish(V1)
        me = await api.client("a")
        etag = (await api.pending(me)).headers["etag"]
        # A publish from elsewhere (migsync publish is another process) ...
        async with Store.open(sqlite_store) as other:
            await other.publish([V2], load_private_key(key_path))
        # ... is not seen while the cached state is fresh: the 304 did not read the store ...
        assert (await api.pending(me, etag)).status_code == 304
        clock.advance(1.5)
        assert (await api.pending(me, etag)).status_code == 304
        clock.advance(0.5)
        # ... and is seen once it is stale.
        response = await api.pending(me, etag)
        assert response.status_code == 200
        assert [m["version"] for m in response.json()["migrations"]] == ["1", "2"]
        etag = response.headers["etag"]
        # A report through the app itself drops the cached state at once.
        assert (await api.report(me, applied(V1))).status_code == 200
        response = await api.pending(me, etag)
        assert response.status_code == 200
        assert [m["version"] for m in response.json()["migrations"]] == ["2"]


async def test_idle_polls_do_not_touch_the_store(sqlite_store: str, key_path: Path) -> None:
    async with api_on(sqlite_store, key_path, cache_seconds=60) as api:
        await api.publish(V1)
        me = await api.client("a")
        etag = (await api.pending(me)).headers["etag"]
        statements: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            statements.append(statement)

        # Every engine in this process, the app's own included.
        event.listen(Engine, "before_cursor_execute", count)
        try:
            for _ in range(20):
                assert (await api.pending(me, etag)).status_code == 304
            polls = len(statements)
            await api.store.clients()  # the listener does see this process's statements
        finally:
            event.remove(Engine, "before_cursor_execute", count)
        assert polls == 0, statements
        assert statements


async def test_last_seen_is_written_on_the_first_poll_then_at_most_once_per_interval(
    sqlite_store: str, key_path: Path
) -> None:
    clock = SteppedClock()
    async with api_on(sqlite_store, key_path, seen_interval=3600, seen_flush=0, clock=clock) as api:
        me = await api.client("a")
        assert (await api.store.clients())[0].last_seen_at is None
        etag = (await api.pending(me)).headers["etag"]
        seen = (await api.store.clients())[0].last_seen_at
        assert seen == clock.now()
        clock.advance(3599)
        assert (await api.pending(me, etag)).status_code == 304
        assert (await api.store.clients())[0].last_seen_at == seen
        clock.advance(1)
        assert (await api.pending(me, etag)).status_code == 304
        assert (await api.store.clients())[0].last_seen_at == seen + 3600
    async with api_on(sqlite_store, key_path, seen_interval=0, seen_flush=0, clock=clock) as api:
        clock.advance(0.5)
        assert (await api.pending(me, etag)).status_code == 304
        assert (await api.store.clients())[0].last_seen_at == seen + 3600.5


async def test_seen_marks_are_written_together_and_at_shutdown(sqlite_store: str, key_path: Path) -> None:
    clock = SteppedClock()
    async with api_on(sqlite_store, key_path, seen_flush=1.5, clock=clock) as api:
        tokens = [await api.client(name) for name in ("a", "b", "c")]
        statements: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if statement.lstrip().upper().startswith("UPDATE"):
                statements.append(statement)

        event.listen(Engine, "before_cursor_execute", count)
        try:
            for token in tokens:
                assert (await api.pending(token)).status_code == 200
            assert statements == []  # not yet: they go out together
            assert all(c.last_seen_at is None for c in await api.store.clients())
            clock.advance(1.25)
            await asyncio.sleep(0.05)  # the flush would have its turn now, were it due
            assert statements == []
            clock.advance(0.25)

            async def all_seen() -> bool:  # the flush commits a moment after its statement began
                return all(c.last_seen_at == clock.now() - 1.5 for c in await api.store.clients())

            await eventually("the seen marks to be written", all_seen)
        finally:
            event.remove(Engine, "before_cursor_execute", count)
        assert len(statements) == 1  # one executemany for the three
        d = await api.client("d")
        assert (await api.pending(d)).status_code == 200
    # The lifespan's end wrote what was left.
    async with Store.open(sqlite_store) as store:
        assert {c.name: c.last_seen_at is not None for c in await store.clients()}["d"]


# -- status reports ------------------------------------------------------------------------------


async def test_a_status_report_is_idempotent(api: Api) -> None:
    await api.publish(V1, V2)
    me = await api.client("a")
    response = await api.report(me, applied(V1), failed(V2, "boom"))
    assert response.status_code == 200
    assert response.json() == {"recorded": ["1", "2"], "unchanged": [], "drift": []}
    etag = (await api.pending(me)).headers["etag"]
    rows = await aquery(
        api.url, "SELECT version, applied, error, attempts, updated_at FROM store_client_status"
    )

    again = await api.report(me, applied(V1), failed(V2, "boom"))
    assert again.json() == {"recorded": [], "unchanged": ["1", "2"], "drift": []}
    assert (
        await aquery(api.url, "SELECT version, applied, error, attempts, updated_at FROM store_client_status")
        == rows
    )
    assert (await api.pending(me, etag)).status_code == 304

    retried = await api.report(me, applied(V2) | {"attempts": 2})
    assert retried.json()["recorded"] == ["2"]
    assert await api.versions(me) == []
    [client] = await api.store.clients()
    assert client.reported_version == 2


async def test_two_clients_each_have_their_own_status(api: Api) -> None:
    await api.publish(V1, V2, V3)
    a, b = await api.client("a"), await api.client("b")
    assert (await api.report(a, applied(V1), applied(V2))).status_code == 200
    assert (await api.report(b, failed(V1, "no such table"))).status_code == 200
    assert await api.versions(a) == [3]
    assert await api.versions(b) == [1, 2, 3]
    clients = {
        c["name"]: c for c in (await api.http.get("/api/clients", headers=ADMIN_HEADERS)).json()["clients"]
    }
    assert clients["a"]["applied"] == ["1", "2"] and clients["a"]["failed"] == []
    assert clients["b"]["applied"] == []
    assert clients["b"]["failed"] == [
        {"version": "1", "error": "no such table", "attempts": 1, "dead": False}
    ]


async def test_many_clients_report_concurrently(api: Api) -> None:
    await api.publish(V1, V2)
    clients = [await api.client(f"c{i}") for i in range(8)]
    responses = await asyncio.gather(
        *(api.report(c, applied(V1), *([applied(V2)] if i % 2 else [])) for i, c in enumerate(clients))
    )
    assert all(r.status_code == 200 for r in responses)
    for i, c in enumerate(clients):
        assert await api.versions(c) == ([] if i % 2 else [2])


async def test_a_report_for_an_unpublished_version_is_422_and_records_nothing(api: Api) -> None:
    await api.publish(V1)
    me = await api.client("a")
    response = await api.report(me, applied(V1), applied(V3), applied(V4))
    assert response.status_code == 422
    assert response.json() == {
        "error": "versions 3, 4 are not published; nothing was recorded",
        "versions": ["3", "4"],
    }
    assert await aquery(api.url, "SELECT count(*) FROM store_client_status") == [(0,)]
    one = await api.report(me, applied(V3))
    assert one.json()["error"] == "version 3 is not published; nothing was recorded"


async def test_a_report_with_another_checksum_is_recorded_as_drift(api: Api) -> None:
    await api.publish(V1, V2)
    me = await api.client("a")
    response = await api.report(me, applied(V2, checksum=V2_CHANGED.checksum))
    assert response.status_code == 200
    assert response.json()["drift"] == [
        {"version": "2", "published_checksum": V2.checksum, "reported_checksum": V2_CHANGED.checksum}
    ]
    assert await aquery(api.url, "SELECT version, checksum FROM store_client_status") == [
        ("012", V2_CHANGED.checksum)  # a version key
    ]
    # Still pending: what it applied is not what is published; the client is told what it has.
    items = (await api.pending(me)).json()["migrations"]
    assert [(i["version"], i["applied_checksum"]) for i in items] == [("1", None), ("2", V2_CHANGED.checksum)]
    [entry] = (await api.http.get("/api/clients", headers=ADMIN_HEADERS)).json()["clients"]
    assert entry["drift"] == [
        {"version": "2", "published_checksum": V2.checksum, "reported_checksum": V2_CHANGED.checksum}
    ]


async def test_a_forced_publish_puts_the_old_content_of_a_client_in_drift(api: Api) -> None:
    await api.publish(V1, V2)
    me = await api.client("a")
    await api.report(me, applied(V1), applied(V2))
    etag = (await api.pending(me)).headers["etag"]
    await api.publish(V2_CHANGED, force=True)
    response = await api.pending(me, etag)
    assert response.status_code == 200
    [item] = response.json()["migrations"]
    assert (item["version"], item["checksum"], item["applied_checksum"]) == (
        "2", V2_CHANGED.checksum, V2.checksum
    )  # fmt: skip


# -- auth ----------------------------------------------------------------------------------------


async def test_auth(api: Api) -> None:
    me = await api.client("a")
    for headers, status, says in (
        ({}, 401, "no token"),
        ({"Authorization": "Basic abc"}, 401, "Bearer TOKEN"),
        ({"Authorization": "Bearer"}, 401, "Bearer TOKEN"),
        ({"Authorization": "Bearer not-a-token"}, 401, "unknown token"),
        ({"Authorization": "Bearer " + "x" * 10_000}, 401, "unknown token"),
        (ADMIN_HEADERS, 403, "not a client's"),
    ):
        for response in (
            await api.pending(headers),
            await api.report(headers, applied(V1)),
        ):
            assert response.status_code == status, (headers, response.text)
            assert says in response.json()["error"]
            if status == 401:
                assert response.headers["www-authenticate"].startswith("Bearer")
    for path in ("/api/migrations", "/api/clients"):
        assert (await api.http.get(path)).status_code == 401
        assert (await api.http.get(path, headers={"Authorization": "Bearer wrong"})).status_code == 401
        refused = await api.http.get(path, headers=me)
        assert refused.status_code == 403
        assert refused.json() == {"error": "this endpoint needs the admin token, not a client's"}
        assert (await api.http.get(path, headers=ADMIN_HEADERS)).status_code == 200


def test_the_admin_token_must_not_be_empty(sqlite_store: str) -> None:
    for token in ("", "   "):
        with pytest.raises(ConfigError, match="admin token must not be empty"):
            create_app(sqlite_store, admin_token=token)


# -- bad requests --------------------------------------------------------------------------------

GOOD = applied(V1)
BAD_BODIES: list[tuple[str, bytes, str, int, str]] = [
    ("malformed", b'{"reports": [', "application/json", 400, "malformed JSON"),
    ("not utf-8", b'{"reports": "\xff"}', "application/json", 400, "not UTF-8"),
    ("NaN", b'{"reports": [{"version": NaN}]}', "application/json", 400, "NaN is not a JSON number"),
    ("deep", b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "malformed JSON"),
    ("empty", b"", "application/json", 400, "empty"),
    ("not json", b"reports=1", "application/x-www-form-urlencoded", 415, "must be JSON"),
    ("a list", b"[]", "application/json", 422, 'one key, "reports"'),
    (
        "extra key",
        json.dumps({"reports": [], "x": 1}).encode(),
        "application/json",
        422,
        'one key, "reports"',
    ),
    (
        "reports not a list",
        b'{"reports": {}}',
        "application/json",
        422,
        "reports must be a list, not an object",
    ),
    ("item not object", b'{"reports": [1]}', "application/json", 422, "reports[0] must be an object"),
]
for field, value, says in (
    ("version", True, 'reports[0].version must be a version such as "42" or "1.2.10", not a boolean'),
    ("version", -1, "reports[0].version must be a version"),
    ("version", "1.", "reports[0].version must be a version"),
    ("version", "x" * 5000, "reports[0].version must be a version"),
    ("version", "9" * 100, "reports[0].version must be a version"),
    ("applied", 1, "reports[0].applied must be true or false, not a number"),
    ("error", 5, "reports[0].error must be a string or null"),
    ("error", "e" * 70_000, "reports[0].error is 70000 characters long"),
    ("attempts", 1.5, "reports[0].attempts must be a non-negative integer"),
    ("checksum", "ABC", "reports[0].checksum must be a sha256"),
    ("checksum", "a" * 5000, "reports[0].checksum must be a sha256"),
    ("checksum", None, "reports[0].checksum must be a sha256"),
):
    BAD_BODIES.append(
        (f"{field}={str(value)[:10]}", json.dumps({"reports": [GOOD | {field: value}]}).encode(),
         "application/json", 422, says)
    )  # fmt: skip
BAD_BODIES += [
    ("missing", json.dumps({"reports": [{"version": 1}]}).encode(), "application/json", 422,
     "reports[0]: missing 'applied', 'error', 'attempts', 'checksum'"),
    ("unknown", json.dumps({"reports": [GOOD | {"client_id": 2}]}).encode(), "application/json", 422,
     "reports[0]: unknown field 'client_id'"),
    ("twice", json.dumps({"reports": [GOOD, GOOD]}).encode(), "application/json", 422,
     "reports[1]: version 1 is reported twice (see reports[0])"),
    ("too many", json.dumps({"reports": [GOOD] * (MAX_REPORTS + 1)}).encode(), "application/json", 422,
     f"at most {MAX_REPORTS} per request"),
    ("oversized", json.dumps({"reports": [GOOD | {"error": "e" * 60_000}] * 20}).encode(), "application/json",
     413, "at most 1048576 are accepted"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"), [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES]
)
async def test_a_bad_body_is_a_4xx_that_says_what_is_wrong(
    sqlite_store: str, key_path: Path, body: bytes, content_type: str, status: int, says: str
) -> None:
    async with api_on(sqlite_store, key_path) as api:
        await api.publish(V1)
        me = await api.client("a")
        response = await api.http.post(
            "/api/migrations/status", headers=me | {"Content-Type": content_type}, content=body
        )
        assert response.status_code == status, response.text
        assert says in response.json()["error"]
        assert await aquery(api.url, "SELECT count(*) FROM store_client_status") == [(0,)]


async def test_bad_bodies_on_postgres_too(pg_url: str, key_path: Path) -> None:
    async with api_on(pg_url, key_path) as api:
        await api.publish(V1)
        me = await api.client("a")
        for _, body, content_type, status, says in BAD_BODIES:
            response = await api.http.post(
                "/api/migrations/status", headers=me | {"Content-Type": content_type}, content=body
            )
            assert response.status_code == status, response.text
            assert says in response.json()["error"]


async def test_an_oversized_body_without_content_length_is_413(sqlite_store: str, key_path: Path) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b" " * 64 * 1024

    async with api_on(sqlite_store, key_path, max_body=1024 * 1024) as api:
        me = await api.client("a")
        response = await api.http.post("/api/migrations/status", headers=me, content=chunks())
        assert "content-length" not in response.request.headers
        assert response.status_code == 413
        assert "over 1048576 bytes" in response.json()["error"]
        bad_length = await api.http.post(
            "/api/migrations/status", headers=me | {"Content-Length": "x"}, content=b"{}"
        )
        assert bad_length.status_code == 400


async def test_unknown_paths_and_methods_get_json(api: Api) -> None:
    missing = await api.http.get("/api/nothing")
    assert missing.status_code == 404
    assert missing.json() == {"error": "Not Found"}
    wrong = await api.http.delete("/api/migrations/pending")
    assert wrong.status_code == 405
    assert "GET" in wrong.headers["allow"]
    assert wrong.json() == {"error": "Method Not Allowed"}


# -- admin ---------------------------------------------------------------------------------------


async def test_fleet_view_and_published_list(api: Api) -> None:
    await api.publish(V1, V2, V3)
    a, b, _idle = await api.client("a"), await api.client("b"), await api.client("idle")
    await api.report(a, applied(V1), applied(V2))
    await api.report(b, applied(V1), failed(V2, "duplicate column", attempts=3))
    response = await api.http.get("/api/clients", headers=ADMIN_HEADERS)
    assert response.status_code == 200
    entries = response.json()["clients"]
    assert [e["name"] for e in entries] == ["a", "b", "idle"]
    for entry in entries:
        assert set(entry) == {
            "client_id", "name", "applied", "latest_version", "failed", "drift", "pending", "held_from",
            "created_at", "last_seen", "labels", "app_version", "held_by_app",
        }  # fmt: skip
    a_entry, b_entry, idle_entry = entries
    assert (a_entry["applied"], a_entry["latest_version"], a_entry["failed"], a_entry["pending"]) == (
        ["1", "2"], "2", [], ["3"]
    )  # fmt: skip
    assert (b_entry["applied"], b_entry["latest_version"], b_entry["pending"]) == (["1"], "1", ["2", "3"])
    assert b_entry["failed"] == [{"version": "2", "error": "duplicate column", "attempts": 3, "dead": False}]
    assert a_entry["last_seen"] is not None and a_entry["last_seen"].endswith("Z")
    assert (idle_entry["applied"], idle_entry["latest_version"], idle_entry["last_seen"]) == ([], None, None)
    assert idle_entry["pending"] == ["1", "2", "3"]

    published = (await api.http.get("/api/migrations", headers=ADMIN_HEADERS)).json()["migrations"]
    assert [(m["version"], m["name"], m["checksum"]) for m in published] == [
        (m.version.text, m.name, m.checksum) for m in (V1, V2, V3)
    ]
    assert all(m["signature"] and m["signed_by"] and m["published_at"] for m in published)
    assert published[0]["replaced_checksum"] is None


# -- mounting and the lifespan -------------------------------------------------------------------


async def test_the_app_mounts_into_an_existing_app(sqlite_store: str, key_path: Path) -> None:
    async with Store.open(sqlite_store) as store:
        await store.publish([V1], load_private_key(key_path))
        _, token = await store.add_client("a")
    api = create_app(sqlite_store, admin_token=ADMIN)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with api.router.lifespan_context(api):
            yield

    parent = Starlette(routes=[Mount("/sync", app=api)], lifespan=lifespan)
    async with running(parent) as http:
        response = await http.get(
            "/sync/api/migrations/pending",
            headers={"Authorization": f"Bearer {token}", PROTOCOL_HEADER: str(PROTOCOL)},
        )
        assert response.status_code == 200
        assert [m["version"] for m in response.json()["migrations"]] == ["1"]


async def test_without_its_lifespan_the_app_answers_503(sqlite_store: str) -> None:
    async with Store.open(sqlite_store):
        pass
    app = create_app(sqlite_store, admin_token=ADMIN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        response = await http.get(
            "/api/migrations/pending", headers=ADMIN_HEADERS | {"Authorization": "Bearer x"}
        )
    assert response.status_code == 503
    assert "lifespan has not run" in response.json()["error"]


async def test_the_app_does_not_create_a_store(tmp_path: Path) -> None:
    app = create_app(f"sqlite:///{tmp_path / 'missing.db'}", admin_token=ADMIN)
    with pytest.raises(ConfigError, match="does not exist"):
        async with app.router.lifespan_context(app):
            pass


async def test_a_version_1_store_is_upgraded(any_store: str, key_path: Path) -> None:
    async with Store.open(any_store) as store:
        _, token = await store.add_client("a")
    await downgrade_store(any_store, 1)
    async with api_on(any_store, key_path) as api:
        me = {"Authorization": f"Bearer {token}", PROTOCOL_HEADER: str(PROTOCOL)}
        await api.publish(V1)
        assert await api.versions(me) == [1]
        assert (await api.report(me, applied(V1))).status_code == 200
        assert await api.versions(me) == []
        change = {
            "id": "c1",
            "entity": "todo",
            "entity_id": "1",
            "operation": "insert",
            "data": None,
            "schema_version": 1,
            "timestamp": 1.0,
        }
        pushed = await api.http.post("/api/changes", headers=me, json={"changes": [change]})
        assert pushed.json() == {"accepted": ["c1"], "duplicate": [], "refused": None}
    assert await aquery(any_store, "SELECT value FROM store_meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]


# -- migsync serve -------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path, key_path: Path) -> Iterator[tuple[str, str]]:
    """``migsync serve`` on a free loopback port with one published migration: its URL and a client token."""
    store = f"sqlite:///{tmp_path / 'server.db'}"
    migrations = tmp_path / "m"
    migrations.mkdir()
    (migrations / "0001_a.sql").write_text("-- migrate:up\nCREATE TABLE a (x INTEGER);\n")
    assert (
        run(
            "publish", "--migrations", str(migrations), "--store", store, "--signing-key", str(key_path)
        ).returncode
        == 0
    )
    added = run("clients", "add", "a", "--store", store, "--json")
    assert added.returncode == 0, added.stderr
    token = json.loads(added.stdout)["token"]
    port = free_port()
    proc = start("serve", "--store", store, "--port", str(port), "--admin-token", ADMIN)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"migsync serve ended: {proc.communicate()}")
            try:
                httpx.get(f"{base}/api/clients", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError("migsync serve did not answer within 30s") from None
                time.sleep(0.1)
        yield base, token
    finally:
        proc.terminate()
        try:
            stdout, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    # uvicorn shuts down cleanly, then ends by the signal it was sent (as a well-behaved server does).
    assert proc.returncode in (0, -signal.SIGTERM), stderr
    assert "Application shutdown complete" in stderr
    # Without --panel-secret it says, once, that logins are this process's own.
    assert stderr.count("warning: no --panel-secret: panel logins end when this process restarts") == 1
    # It said where it is, with the port it bound.
    assert stdout.splitlines()[:2] == [
        f"migsync: API at {base}/api/",
        f"migsync: admin panel at {base}/admin/ (log in with the admin token)",
    ]


def test_migsync_serve_answers_a_poll_and_a_304(served: tuple[str, str]) -> None:
    base, token = served
    headers = {"Authorization": f"Bearer {token}", PROTOCOL_HEADER: str(PROTOCOL)}
    with httpx.Client(base_url=base, timeout=10) as http:
        response = http.get("/api/migrations/pending", headers=headers)
        assert response.status_code == 200
        [item] = response.json()["migrations"]
        assert item["name"] == "0001_a"
        idle = http.get(
            "/api/migrations/pending", headers=headers | {"If-None-Match": response.headers["etag"]}
        )
        assert idle.status_code == 304
        assert http.get("/api/clients", headers=headers).status_code == 403
        fleet = http.get("/api/clients", headers={"Authorization": f"Bearer {ADMIN}"}).json()["clients"]
        assert fleet[0]["name"] == "a" and fleet[0]["last_seen"] is not None


def test_migsync_serve_refuses_a_missing_store(tmp_path: Path) -> None:
    result = run(
        "serve", "--store", f"sqlite:///{tmp_path / 'nope.db'}", "--admin-token", ADMIN, "--port", "1"
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: SQLite store")
    assert "does not exist" in result.stderr
    missing_token = run("serve", "--store", f"sqlite:///{tmp_path / 'nope.db'}")
    assert missing_token.returncode == 2
    assert "--admin-token" in missing_token.stderr


def test_migsync_serve_refuses_an_unreadable_request_key_in_one_line(tmp_path: Path) -> None:
    result = run(
        "serve",
        "--store",
        f"sqlite:///{tmp_path / 's.db'}",
        "--admin-token",
        ADMIN,
        "--request-key",
        str(tmp_path / "nope.key"),
        "--port",
        "1",
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: cannot read request key {tmp_path / 'nope.key'}: No such file or directory"
    )


async def test_the_fleet_cache_sees_new_clients_at_once_and_other_processes_within_cache_seconds(
    sqlite_store: str, key_path: Path
) -> None:
    clock = SteppedClock()
    async with api_on(sqlite_store, key_path, cache_seconds=0.5, clock=clock) as api:
        await api.publish(V1, V2)
        a = await api.client("a")
        etag = (await api.pending(a)).headers["etag"]
        # Registered after the app read its clients: served at once, not 401 until the next read.
        b = await api.client("b")
        assert (await api.pending(b)).status_code == 200
        # A report through another process (another worker) ...
        async with Store.open(sqlite_store) as other:
            client_a = next(c for c in await other.clients() if c.name == "a")
            await other.report(client_a.client_id, [StatusReport(1, True, None, 1, V1.checksum)])
        assert (await api.pending(a, etag)).status_code == 304  # ... is not seen while fresh,
        clock.advance(0.5)
        response = await api.pending(a, etag)  # ... and is seen once the period is over.
        assert response.status_code == 200
        assert [m["version"] for m in response.json()["migrations"]] == ["2"]


def test_migsync_serve_serves_the_panel_unless_told_not_to(served: tuple[str, str], tmp_path: Path) -> None:
    base, _ = served
    assert httpx.get(f"{base}/admin/login", timeout=10).status_code == 200
    # The server's own address leads a browser to the panel.
    root = httpx.get(f"{base}/", timeout=10)
    assert root.status_code == 303 and root.headers["location"] == "admin/"
    assert httpx.get(f"{base}/", timeout=10, follow_redirects=True).url.path == "/admin/login"
    store = f"sqlite:///{tmp_path / 'server.db'}"
    port = free_port()
    proc = start("serve", "--store", store, "--port", str(port), "--admin-token", ADMIN, "--no-panel")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/admin/login", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.1)
        assert response.status_code == 404
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 404
    finally:
        proc.terminate()
        stdout, _ = proc.communicate(timeout=15)
    assert stdout.splitlines()[:1] == [f"migsync: API at http://127.0.0.1:{port}/api/"]
    assert "admin panel" not in stdout
