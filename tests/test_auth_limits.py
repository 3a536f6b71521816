"""Failed authentication is limited per source address (issue 16): wrong bearer tokens on the API
and wrong admin tokens at the panel's login share one count per address; over the limit, 429 with
Retry-After, one log line per burst; other addresses are not slowed at all. The real app through
httpx.ASGITransport, which lets each client say its address."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from test_panel import form_csrf
from test_server_api import sqlite_store as sqlite_store

from migsync.core.errors import ConfigError
from migsync.protocol.wire import PROTOCOL, PROTOCOL_HEADER
from migsync.server import Store
from migsync.server.app import create_app
from migsync.server.throttle import AuthThrottle

ADMIN = "admin-secret-token"
LIMIT = 5


@contextlib.asynccontextmanager
async def served(url: str, limit: str = f"{LIMIT}/minute") -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """The app, and a client on it from each of two addresses: ``guesser`` and ``admin``."""
    app = create_app(url, admin_token=ADMIN, cache_seconds=0, failed_auth_limit=limit)
    async with app.router.lifespan_context(app), contextlib.AsyncExitStack() as stack:
        clients = {}
        for name, host in (("guesser", "203.0.113.7"), ("admin", "198.51.100.2")):
            transport = httpx.ASGITransport(app=app, client=(host, 4000))
            clients[name] = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://migsync.test")
            )
        yield clients


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", PROTOCOL_HEADER: str(PROTOCOL)}


async def test_wrong_tokens_from_one_address_get_429_while_another_address_goes_on(
    any_store: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Store.open(any_store) as store:
        _, client_token = await store.add_client("shop")
    async with served(any_store) as http:
        guesser, admin = http["guesser"], http["admin"]
        with caplog.at_level(logging.WARNING, logger="migsync.server"):
            for attempt in range(LIMIT):
                path = "/api/clients" if attempt % 2 else "/api/migrations/pending"
                response = await guesser.get(path, headers=bearer(f"guess-{attempt}"))
                assert response.status_code == 401, (attempt, response.text)
            for attempt in range(30):
                response = await guesser.get("/api/clients", headers=bearer(f"more-{attempt}"))
                assert response.status_code == 429
                assert 1 <= int(response.headers["retry-after"]) <= 60
                assert response.json()["error"].startswith("too many wrong tokens from this address")
            # Over the limit, even the right token is refused from there: a right guess is no use.
            assert (await guesser.get("/api/clients", headers=bearer(ADMIN))).status_code == 429
            # Another address is not slowed at all, admin or client.
            assert (await admin.get("/api/clients", headers=bearer(ADMIN))).status_code == 200
            assert (
                await admin.get("/api/migrations/pending", headers=bearer(client_token))
            ).status_code == 200
            assert (await admin.get("/api/clients", headers=bearer("typo"))).status_code == 401
        lines = [r.getMessage() for r in caplog.records if r.name == "migsync.server"]
        assert len(lines) == 1, lines  # one line for the burst, not one per attempt
        assert lines[0].startswith("wrong bearer tokens on the API from 203.0.113.7: over the limit of")


async def test_a_missing_token_or_a_client_token_on_an_admin_endpoint_is_no_guess(
    sqlite_store: str,
) -> None:
    async with Store.open(sqlite_store) as store:
        _, client_token = await store.add_client("shop")
    async with served(sqlite_store) as http:
        guesser = http["guesser"]
        for _ in range(LIMIT * 2):
            assert (await guesser.get("/api/clients")).status_code == 401  # no token at all
            assert (await guesser.get("/api/clients", headers=bearer(client_token))).status_code == 403
        assert (await guesser.get("/api/clients", headers=bearer(ADMIN))).status_code == 200


async def login(http: httpx.AsyncClient, token: str) -> httpx.Response:
    page = await http.get("/admin/login")
    form = {"name": "alice", "token": token, "csrf": form_csrf(page.text)}
    return await http.post("/admin/login", data=form)


async def test_panel_logins_are_limited_per_address_and_share_the_apis_count(
    sqlite_store: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Store.open(sqlite_store):
        pass
    async with served(sqlite_store) as http:
        guesser, admin = http["guesser"], http["admin"]
        with caplog.at_level(logging.WARNING, logger="migsync.server"):
            assert (await guesser.get("/api/clients", headers=bearer("api-guess"))).status_code == 401
            for attempt in range(LIMIT - 1):
                response = await login(guesser, f"guess-{attempt}")
                assert response.status_code == 200 and "That is not the admin token." in response.text
            for _ in range(10):
                response = await login(guesser, "another")
                assert response.status_code == 429
                assert int(response.headers["retry-after"]) >= 1
                assert re.search(
                    r"Too many wrong tokens from your address: try again in \d+ seconds", response.text
                )
            assert (await login(guesser, ADMIN)).status_code == 429
            assert (await guesser.get("/api/clients", headers=bearer(ADMIN))).status_code == 429
            # The real admin, elsewhere, logs in at once.
            response = await login(admin, ADMIN)
            assert response.status_code == 303 and response.headers["location"] == "/admin/"
        lines = [r.getMessage() for r in caplog.records if r.name == "migsync.server"]
        assert len(lines) == 1, lines
        assert lines[0].startswith(
            f"wrong admin tokens at the panel's login from 203.0.113.7: over the limit of {LIMIT}/minute "
            "failures; refused with 429 for "
        )


@pytest.mark.parametrize("limit", ["", "20", "0/minute", "-1/minute", "20/fortnight", "lots"])
def test_a_limit_that_makes_no_sense_is_a_config_error(limit: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="failed-authentication limit"):
        AuthThrottle(limit)
    with pytest.raises(ConfigError, match="failed-authentication limit"):
        create_app(f"sqlite:///{tmp_path / 's.db'}", admin_token=ADMIN, failed_auth_limit=limit)
