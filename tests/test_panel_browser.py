"""The admin panel in a real browser: Debian's chromium driven by Playwright, against a real server
(uvicorn on a loopback port) whose clients synced for real over HTTP, and sync again to carry out
what the admin asked of them in the browser (re-apply, revert).

Outside CI these tests skip when chromium or Playwright is missing, with one line saying how to
enable them; under ``CI=true`` they fail instead. ``make test`` installs chromium where it can
(``make browsers``: apt-get, as root) and goes on without it elsewhere. With
``MIGSYNC_PANEL_SCREENSHOTS=DIR`` the screenshots go to DIR, which is how
``scripts/panel_screenshots.py`` makes docs/images/.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from servers import ServerThread

from migsync.client.sync import Syncer, SyncResult
from migsync.core.client import Client
from migsync.protocol.signing import load_private_key, load_public_keys, write_keypair
from migsync.server import Store
from migsync.server.app import create_app
from migsync.testing.backend_suite import migration
from migsync.transports.http import HttpTransport

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ADMIN = "browser-admin-token"
WHO = "Ana Admin"
VIEWPORT = {"width": 1200, "height": 800}

V1 = migration(
    1, "0001_users", "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)", "DROP TABLE users"
)
V2 = migration(
    2, "0002_orders", "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER)", "DROP TABLE orders"
)
V3 = migration(
    3, "0003_users_email", "ALTER TABLE users ADD COLUMN email TEXT", "ALTER TABLE users DROP COLUMN email"
)


def _missing(reason: str) -> None:
    message = (
        f"{reason}: the admin panel's browser tests need it; to run them install chromium "
        "(`sudo apt-get install chromium` on Debian, or `make browsers` as root)"
    )
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium (never a browser Playwright downloads): under CI its absence fails the run."""
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"{CHROMIUM} is not installed")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError as exc:
        _missing(f"Playwright for Python is not installed ({exc})")
    return CHROMIUM


#: lyon gives up on a failing migration after this many attempts
LYON_ATTEMPTS = 2


@attrs.define
class Fleet:
    url: str
    store_url: str
    folder: Path
    trusted_key: Path
    clients: dict[str, int] = attrs.Factory(dict)
    tokens: dict[str, str] = attrs.Factory(dict)

    def database(self, name: str) -> Path:
        return self.folder / f"{name}.db"

    async def add(self, name: str, prepare: str = "") -> None:
        """Register client ``name``; ``prepare``: SQL someone ran on its database before it synced."""
        async with Store.open(self.store_url) as store:
            self.clients[name], self.tokens[name] = await store.add_client(name)
        if prepare:
            self.sql(name, prepare)

    async def sync(self, name: str, max_attempts: int = 3) -> SyncResult:
        """One real sync of client ``name`` with the server, over HTTP, retrying at once what failed."""
        async with (
            Client.connect(
                f"sqlite:///{self.database(name)}",
                sinks=[],
                backend_options={"create": True},
                max_attempts=max_attempts,
            ) as client,
            HttpTransport(self.url, client_id=str(self.clients[name]), token=self.tokens[name]) as transport,
        ):
            requesters = load_public_keys([self.folder / "request.key.pub"])
            syncer = Syncer(client, transport, load_public_keys([self.trusted_key]), request_keys=requesters)
            return await syncer.sync(ignore_backoff=True)

    def sql(self, name: str, statement: str) -> list[tuple[object, ...]]:
        """Run ``statement`` on client ``name``'s database, by hand (sqlite3), as someone on site would."""
        with contextlib.closing(sqlite3.connect(self.database(name))) as conn:
            rows = conn.execute(statement).fetchall()
            conn.commit()
            return rows

    def tables(self, name: str) -> set[str]:
        return {str(r[0]) for r in self.sql(name, "SELECT name FROM sqlite_master WHERE type = 'table'")}


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """A server with V1-V3 published and six clients: two current, one behind, one failing on V2
    and one on which V2 is dead (their databases had an ``orders`` table already: rome retries it,
    lyon tried as often as it allows), one that never synced."""
    store_url = f"sqlite:///{tmp_path / 'server.db'}"
    write_keypair(tmp_path / "signing.key")
    key = load_private_key(tmp_path / "signing.key")
    write_keypair(tmp_path / "request.key")  # the server's request key, apart from the signing key
    request_key = load_private_key(tmp_path / "request.key")
    async with Store.open(store_url) as store:
        await store.publish([V1, V2], key)
    server = ServerThread(
        lambda: create_app(
            store_url, admin_token=ADMIN, cache_seconds=0, seen_flush=0, request_key=request_key
        )
    )
    server.start()
    try:
        fleet = Fleet(server.url, store_url, tmp_path, tmp_path / "signing.key.pub")
        await fleet.add("madrid")
        await fleet.sync("madrid")
        async with Store.open(store_url) as store:
            await store.publish([V3], key)
        for name in ("berlin", "paris"):
            await fleet.add(name)
            await fleet.sync(name)
        await fleet.add("lyon", prepare="CREATE TABLE orders (legacy TEXT)")
        for _ in range(LYON_ATTEMPTS):
            await fleet.sync("lyon", max_attempts=LYON_ATTEMPTS)
        await fleet.add("rome", prepare="CREATE TABLE orders (legacy TEXT)")
        await fleet.sync("rome")
        await fleet.add("oslo")
        yield fleet
    finally:
        server.stop()


@pytest.fixture
def shots(tmp_path: Path) -> Iterator[Path]:
    wanted = os.environ.get("MIGSYNC_PANEL_SCREENSHOTS")
    folder = Path(wanted) if wanted else tmp_path / "shots"
    folder.mkdir(parents=True, exist_ok=True)
    yield folder


async def _log_in(page: Any, url: str) -> None:
    from playwright.async_api import expect

    await page.goto(f"{url}/admin/")
    await page.fill("#name", WHO)
    await page.fill("#token", ADMIN)
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Fleet")


def _request_row(page: Any, index: int) -> Any:
    """The ``index``-th row (0: the newest) of the requests table on the page."""
    return page.locator("table.requests tbody tr").nth(index)


async def test_log_in_see_the_grid_open_a_failing_client_and_filter(
    chromium: str, fleet: Fleet, shots: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]

            # No session: the panel sends us to its login form.
            await page.goto(f"{fleet.url}/admin/")
            await expect(page).to_have_url(re.compile(r"/admin/login\?next="))
            await page.screenshot(path=shots / "panel-login.png")
            await page.fill("#name", WHO)
            await page.fill("#token", "a wrong guess")
            await page.click("button[type=submit]")
            await expect(page.get_by_role("alert")).to_have_text("That is not the admin token.")
            await expect(page.locator("#name")).to_have_value(WHO)  # kept; the token is not
            await page.fill("#token", ADMIN)
            await page.click("button[type=submit]")

            # The fleet grid: one row per client, one column per migration.
            await expect(page.locator("h1")).to_have_text("Fleet")
            await expect(page.locator("header .who")).to_have_text(f"signed in as {WHO}")
            cookies = {c["name"]: c for c in await page.context.cookies()}
            assert cookies["migsync_panel"]["httpOnly"] and cookies["migsync_panel"]["sameSite"] == "Strict"
            assert await page.evaluate("document.cookie") == ""  # HttpOnly: no script sees it
            await expect(page.locator("#count-latest")).to_have_text("2")
            await expect(page.locator("#count-behind")).to_have_text("4")
            await expect(page.locator("#count-failing")).to_have_text("2")  # failed, and dead
            await expect(page.locator("#count-held")).to_have_text("0")
            rows = page.locator("table.grid tbody tr")
            await expect(rows).to_have_count(6)
            rome = page.locator(f"#client-{fleet.clients['rome']}")
            await expect(rome.locator("td.cell")).to_have_class(
                [re.compile(s) for s in ("applied", "failed", "pending")]
            )
            failed = rome.locator("td.cell.failed a")
            await expect(failed).to_have_text("failed \u00d71")
            await expect(failed).to_have_attribute("title", re.compile("orders already exists"))
            lyon = page.locator(f"#client-{fleet.clients['lyon']}")
            await expect(lyon.locator("td.cell")).to_have_class(
                [re.compile(s) for s in ("applied", "dead", "pending")]
            )
            await expect(lyon.locator("td.cell.dead a")).to_have_text(f"dead \u00d7{LYON_ATTEMPTS}")
            madrid = page.locator(f"#client-{fleet.clients['madrid']}")
            await expect(madrid.locator("td.cell")).to_have_text(["applied", "applied", "pending"])
            await page.screenshot(path=shots / "panel-fleet.png")

            # The failing client's page, from its failed cell: the whole error.
            await failed.click()
            await expect(page).to_have_url(re.compile(rf"/admin/clients/{fleet.clients['rome']}#v2$"))
            await expect(page.locator("h1")).to_contain_text("rome")
            error = page.locator("tr#v2 pre.error")
            await expect(error).to_contain_text("table orders already exists")
            await expect(page.locator("tr#v2 td.state")).to_have_text("failed")
            await expect(page.locator("tr#v3 td.state")).to_have_text("pending")

            # The failing filter, from the form on the fleet page.
            await page.click("nav >> text=Fleet")
            await page.check("input[name=failing]")
            await page.click("form.filters button")
            await expect(page).to_have_url(re.compile(r"/admin/\?failing=1$"))
            await expect(rows).to_have_count(2)
            await expect(rows.locator("th a")).to_have_text(["lyon", "rome"])

            await page.click("nav >> text=Migrations")
            await expect(page.locator("table.migrations tbody tr")).to_have_count(3)
            await expect(page.locator("tr#v2 td.tally")).to_have_text(
                "3 applied, 1 pending, 1 failed, 1 dead"
            )
            await page.screenshot(path=shots / "panel-migrations.png")

            # Logging out ends it: the grid asks for the login again.
            await page.click("text=Log out")
            await expect(page).to_have_url(re.compile(r"/admin/login$"))
            await page.goto(f"{fleet.url}/admin/")
            await expect(page).to_have_url(re.compile(r"/admin/login\?next="))
        finally:
            await browser.close()
    for name in ("login", "fleet", "migrations"):
        assert (shots / f"panel-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_re_apply_a_dead_migration_then_revert_it_and_see_the_client_do_it(
    chromium: str, fleet: Fleet, shots: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    lyon_id = fleet.clients["lyon"]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
            await _log_in(page, fleet.url)
            await expect(page.locator("header .who")).to_have_text(f"signed in as {WHO}")

            # lyon's V2 is dead: it will not try again by itself. Open it from its cell.
            await page.click(f"#client-{lyon_id} td.cell.dead a")
            await expect(page).to_have_url(re.compile(rf"/admin/clients/{lyon_id}#v2$"))
            await expect(page.locator("tr#v2 td.state")).to_have_text("dead")
            await expect(page.locator("tr#v2 pre.error")).to_contain_text("table orders already exists")
            await expect(page.locator("tr#v1 button")).to_have_text("Revert")
            await expect(page.locator("tr#v3 button")).to_have_count(0)  # pending: nothing to ask
            await expect(page.get_by_text("Nothing was asked of this client yet.")).to_be_visible()

            # Re-apply it. The client has not picked the request up yet.
            await page.locator("tr#v2").get_by_role("button", name="Re-apply").click()
            await expect(page).to_have_url(re.compile(rf"/admin/clients/{lyon_id}\?requested=1#requests$"))
            await expect(page.get_by_role("status")).to_have_text(
                "Request recorded: lyon hears of it at its next poll."
            )
            await expect(page.locator("table.requests tbody tr")).to_have_count(1)
            await expect(_request_row(page, 0).locator("td.action")).to_have_text("reapply")
            await expect(_request_row(page, 0).locator("td.who")).to_have_text(WHO)
            await expect(_request_row(page, 0).locator("td.rstate")).to_have_text("pending")
            await expect(page.locator("tr#v2 .asked")).to_have_text("requested: reapply")
            await page.screenshot(path=shots / "panel-client.png", full_page=True)

            # On site, someone removes the cause (the legacy table); the client syncs.
            fleet.sql("lyon", "DROP TABLE orders")
            result = await fleet.sync("lyon", max_attempts=LYON_ATTEMPTS)
            assert result.actions_received == 1 and result.actions_answered == 1, result
            await page.reload()
            await expect(page.locator("tbody td.state")).to_have_text(["applied", "applied", "applied"])
            await expect(_request_row(page, 0).locator("td.rstate")).to_have_text("done")
            await expect(_request_row(page, 0).locator("td.detail")).to_have_text("0002_orders applied")
            await expect(page.locator(".asked")).to_have_count(0)
            assert "orders" in fleet.tables("lyon")

            # Revert V2 (and V3 after it). The box must be ticked: the browser refuses the form before.
            revert = page.locator("tr#v2 form.revert")
            await expect(revert.locator("label")).to_have_text(
                "revert this and every later migration on lyon"
            )
            await revert.get_by_role("button", name="Revert").click()
            assert await revert.locator("input[name=confirm]").evaluate("box => box.validity.valueMissing")
            await expect(page.locator("table.requests tbody tr")).to_have_count(1)  # nothing was sent
            await revert.locator("input[name=confirm]").check()
            await revert.get_by_role("button", name="Revert").click()
            await expect(page).to_have_url(re.compile(rf"/admin/clients/{lyon_id}\?requested=1#requests$"))
            await expect(page.locator("table.requests tbody tr")).to_have_count(2)
            await expect(_request_row(page, 0).locator("td.action")).to_have_text("revert")
            await expect(_request_row(page, 0).locator("td.rstate")).to_have_text("pending")

            result = await fleet.sync("lyon", max_attempts=LYON_ATTEMPTS)
            assert result.actions_received == 1 and result.actions_answered == 1, result
            await page.reload()
            await expect(page.locator("tbody td.state")).to_have_text(["applied", "held", "held"])
            await expect(page.locator("tr#v3")).to_contain_text("Held by request")
            await expect(_request_row(page, 0).locator("td.rstate")).to_have_text("done")
            await expect(_request_row(page, 0).locator("td.detail")).to_have_text(
                "reverted; held at version 2"
            )
            await expect(page.locator("tr#v2 button")).to_have_text("Re-apply")
            # On the client's own database: V2's table and V3's column are gone.
            assert "orders" not in fleet.tables("lyon") and "users" in fleet.tables("lyon")
            assert "email" not in {row[1] for row in fleet.sql("lyon", "PRAGMA table_info(users)")}
            # The hold keeps them off: another sync applies nothing.
            again = await fleet.sync("lyon", max_attempts=LYON_ATTEMPTS)
            assert again.ok and "orders" not in fleet.tables("lyon")

            await page.click("nav >> text=Fleet")
            await expect(page.locator(f"#client-{lyon_id} td.cell")).to_have_text(["applied", "held", "held"])
            await expect(page.locator("#count-held")).to_have_text("1")

            # For every client at once, from the migrations page: lyon (held) and rome (failed).
            await page.click("nav >> text=Migrations")
            await expect(page.locator("tr#v2 td.tally")).to_have_text(
                "3 applied, 1 pending, 1 failed, 1 held"
            )
            await (
                page.locator("tr#v2")
                .get_by_role("button", name="Re-apply on every client that failed it")
                .click()
            )
            await expect(page).to_have_url(re.compile(r"/admin/migrations\?requested=2#v2$"))
            await expect(page.get_by_role("status")).to_contain_text("2 requests recorded, one per client")

            # The grid marks the requests the clients have not picked up yet.
            await page.click("nav >> text=Fleet")
            lyon_cells = page.locator(f"#client-{lyon_id} td.cell")
            await expect(lyon_cells).to_have_class([re.compile(s) for s in ("applied", "held", "held")])
            await expect(lyon_cells.nth(1).locator(".asked")).to_have_text("requested: reapply")
            rome = page.locator(f"#client-{fleet.clients['rome']} td.cell.failed .asked")
            await expect(rome).to_have_text("requested: reapply")
            await page.screenshot(path=shots / "panel-fleet-held.png")

            # The Actions page: every request, newest first, each client linking to its page.
            await page.click("nav >> text=Actions")
            await expect(page.locator("h1")).to_have_text("Requests to clients")
            rows = page.locator("table.requests tbody tr")
            await expect(rows).to_have_count(4)
            await expect(rows.locator("td.action")).to_have_text(["reapply", "reapply", "revert", "reapply"])
            await expect(rows.locator("td.rstate")).to_have_text(["pending", "pending", "done", "done"])
            await expect(rows.locator("td.who")).to_have_text([WHO] * 4)
            await page.screenshot(path=shots / "panel-actions.png", full_page=True)
            await rows.nth(2).get_by_role("link", name="lyon").click()
            await expect(page).to_have_url(re.compile(rf"/admin/clients/{lyon_id}#requests$"))
            await expect(page.locator("h1")).to_contain_text("lyon")
        finally:
            await browser.close()
    for name in ("client", "fleet-held", "actions"):
        assert (shots / f"panel-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
