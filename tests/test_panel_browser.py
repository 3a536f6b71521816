"""The admin panel in a real browser: Debian's chromium driven by Playwright, against a real server
(uvicorn on a loopback port) whose clients synced for real over HTTP.

Outside CI these tests skip when chromium or Playwright is missing; under ``CI=true`` they fail
instead (``make browsers`` installs chromium). With ``MIGSYNC_PANEL_SCREENSHOTS=DIR`` the
screenshots go to DIR, which is how ``scripts/panel_screenshots.py`` makes docs/images/.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest
from servers import ServerThread

from migsync.core.client import Client
from migsync.core.signing import load_private_key, load_public_keys, write_keypair
from migsync.core.sync import Syncer
from migsync.server import Store
from migsync.server.app import create_app
from migsync.testing.backend_suite import migration
from migsync.transports.http import HttpTransport

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ADMIN = "browser-admin-token"
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
    message = f"{reason}; the admin panel's browser tests need it (`make browsers` installs chromium)"
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


@attrs.define
class Fleet:
    url: str
    clients: dict[str, int]


async def _sync(
    store_url: str, server_url: str, folder: Path, name: str, trusted_key: Path, prepare: str = ""
) -> int:
    async with Store.open(store_url) as store:
        client_id, token = await store.add_client(name)
    database = folder / f"{name}.db"
    if prepare:  # someone changed this database by hand before it first synced
        with contextlib.closing(sqlite3.connect(database)) as conn:
            conn.execute(prepare)
            conn.commit()
    async with (
        Client.connect(f"sqlite:///{database}", sinks=[], backend_options={"create": True}) as client,
        HttpTransport(server_url, client_id=str(client_id), token=token) as transport,
    ):
        await Syncer(client, transport, load_public_keys([trusted_key])).sync()
    return client_id


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """A server with V1-V3 published and five clients: two current, one behind, one failing on
    V2 (its database had an ``orders`` table already), one that never synced."""
    store_url = f"sqlite:///{tmp_path / 'server.db'}"
    write_keypair(tmp_path / "signing.key")
    key = load_private_key(tmp_path / "signing.key")
    pub = tmp_path / "signing.key.pub"
    async with Store.open(store_url) as store:
        await store.publish([V1, V2], key)
    server = ServerThread(lambda: create_app(store_url, admin_token=ADMIN, cache_seconds=0, seen_flush=0))
    server.start()
    try:
        clients = {"madrid": await _sync(store_url, server.url, tmp_path, "madrid", pub)}
        async with Store.open(store_url) as store:
            await store.publish([V3], key)
        clients["berlin"] = await _sync(store_url, server.url, tmp_path, "berlin", pub)
        clients["paris"] = await _sync(store_url, server.url, tmp_path, "paris", pub)
        clients["lyon"] = await _sync(
            store_url, server.url, tmp_path, "lyon", pub, prepare="CREATE TABLE orders (legacy TEXT)"
        )
        async with Store.open(store_url) as store:
            clients["oslo"], _ = await store.add_client("oslo")
        yield Fleet(server.url, clients)
    finally:
        server.stop()


@pytest.fixture
def shots(tmp_path: Path) -> Iterator[Path]:
    wanted = os.environ.get("MIGSYNC_PANEL_SCREENSHOTS")
    folder = Path(wanted) if wanted else tmp_path / "shots"
    folder.mkdir(parents=True, exist_ok=True)
    yield folder


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
            await page.fill("#token", "a wrong guess")
            await page.click("button[type=submit]")
            await expect(page.get_by_role("alert")).to_have_text("That is not the admin token.")
            await page.fill("#token", ADMIN)
            await page.click("button[type=submit]")

            # The fleet grid: one row per client, one column per migration.
            await expect(page.locator("h1")).to_have_text("Fleet")
            cookies = {c["name"]: c for c in await page.context.cookies()}
            assert cookies["migsync_panel"]["httpOnly"] and cookies["migsync_panel"]["sameSite"] == "Strict"
            assert await page.evaluate("document.cookie") == ""  # HttpOnly: no script sees it
            await expect(page.locator("#count-latest")).to_have_text("2")
            await expect(page.locator("#count-behind")).to_have_text("3")
            await expect(page.locator("#count-failing")).to_have_text("1")
            rows = page.locator("table.grid tbody tr")
            await expect(rows).to_have_count(5)
            lyon = page.locator(f"#client-{fleet.clients['lyon']}")
            await expect(lyon.locator("td.cell")).to_have_class(
                [re.compile(s) for s in ("applied", "failed", "pending")]
            )
            failed = lyon.locator("td.cell.failed a")
            await expect(failed).to_have_text("failed \u00d71")
            await expect(failed).to_have_attribute("title", re.compile("orders already exists"))
            madrid = page.locator(f"#client-{fleet.clients['madrid']}")
            await expect(madrid.locator("td.cell")).to_have_text(["applied", "applied", "pending"])
            await page.screenshot(path=shots / "panel-fleet.png")

            # The failing client's page, from its failed cell: the whole error.
            await failed.click()
            await expect(page).to_have_url(re.compile(rf"/admin/clients/{fleet.clients['lyon']}#v2$"))
            await expect(page.locator("h1")).to_contain_text("lyon")
            error = page.locator("tr#v2 pre.error")
            await expect(error).to_contain_text("table orders already exists")
            await expect(page.locator("tr#v3 td.state")).to_have_text("pending")
            await page.screenshot(path=shots / "panel-client.png")

            # The failing filter, from the form on the fleet page.
            await page.click("nav >> text=Fleet")
            await page.check("input[name=failing]")
            await page.click("form.filters button")
            await expect(page).to_have_url(re.compile(r"/admin/\?failing=1$"))
            await expect(rows).to_have_count(1)
            await expect(rows.first.locator("th a")).to_have_text("lyon")

            await page.click("nav >> text=Migrations")
            await expect(page.locator("table.migrations tbody tr")).to_have_count(3)
            await expect(page.locator("tr#v2 td.tally")).to_have_text("3 applied, 1 pending, 1 failed")
            await page.screenshot(path=shots / "panel-migrations.png")

            # Logging out ends it: the grid asks for the login again.
            await page.click("text=Log out")
            await expect(page).to_have_url(re.compile(r"/admin/login$"))
            await page.goto(f"{fleet.url}/admin/")
            await expect(page).to_have_url(re.compile(r"/admin/login\?next="))
        finally:
            await browser.close()
    for name in ("login", "fleet", "client", "migrations"):
        assert (shots / f"panel-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
