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
    await expect(page.locator("h1")).to_have_text("Rollouts")


def _request_row(page: Any, index: int) -> Any:
    """The ``index``-th row (0: the newest) of the requests table on the page."""
    return page.locator("table.requests tbody tr").nth(index)


async def test_log_in_see_the_clients_open_a_failing_client_and_filter(
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

            # The home page is the rollouts (none here); the clients are a click away.
            await expect(page.locator("h1")).to_have_text("Rollouts")
            await expect(page.locator("header .who")).to_have_text(f"signed in as {WHO}")
            await page.click("nav >> text=Clients")
            await expect(page.locator("h1")).to_have_text("Clients")
            cookies = {c["name"]: c for c in await page.context.cookies()}
            assert cookies["migsync_panel"]["httpOnly"] and cookies["migsync_panel"]["sameSite"] == "Strict"
            assert await page.evaluate("document.cookie") == ""  # HttpOnly: no script sees it
            await expect(page.locator("#count-clients")).to_have_text("6")
            await expect(page.locator("#count-failing")).to_have_text("2")  # failed, and dead
            await expect(page.locator("#count-held")).to_have_text("0")
            rows = page.locator("table.clients tbody tr")
            await expect(rows).to_have_count(6)
            await expect(rows.locator("th a")).to_have_text(
                ["berlin", "lyon", "madrid", "oslo", "paris", "rome"]
            )
            rome = page.locator(f"#client-{fleet.clients['rome']}")
            # What is wrong first, then the newest migrations, newest first.
            await expect(rome.locator("td.wrong")).to_have_text("2 failed \u00d71")
            await expect(rome.locator("td.cell")).to_have_class(
                [re.compile(s) for s in ("pending", "failed", "applied")]
            )
            failed = rome.locator("td.cell.failed a")
            await expect(failed).to_have_text("failed \u00d71")
            await expect(failed).to_have_attribute("title", re.compile("orders already exists"))
            lyon = page.locator(f"#client-{fleet.clients['lyon']}")
            await expect(lyon.locator("td.cell")).to_have_class(
                [re.compile(s) for s in ("pending", "dead", "applied")]
            )
            await expect(lyon.locator("td.cell.dead a")).to_have_text(f"dead \u00d7{LYON_ATTEMPTS}")
            madrid = page.locator(f"#client-{fleet.clients['madrid']}")
            await expect(madrid.locator("td.cell")).to_have_text(["pending", "applied", "applied"])
            await page.screenshot(path=shots / "panel-clients.png")

            # The failing client's page, from its failed cell: the whole error.
            await failed.click()
            await expect(page).to_have_url(re.compile(rf"/admin/clients/{fleet.clients['rome']}#v2$"))
            await expect(page.locator("h1")).to_contain_text("rome")
            await expect(page.locator("#attention li")).to_have_text(
                re.compile("2 failed \u00d71.*orders already exists", re.S)
            )
            error = page.locator("tr#v2 pre.error")
            await expect(error).to_contain_text("table orders already exists")
            await expect(page.locator("tr#v2 td.state")).to_have_text("failed")
            await expect(page.locator("tr#v3 td.state")).to_have_text("pending")

            # The failing filter, from the form on the clients page; then a search.
            await page.click("nav >> text=Clients")
            await page.check("input[name=failing]")
            await page.click("form.filters button")
            await expect(page).to_have_url(re.compile(r"/admin/clients\?.*failing=1"))
            await expect(rows).to_have_count(2)
            await expect(rows.locator("th a")).to_have_text(["lyon", "rome"])
            await page.fill("input[name=q]", "RO")
            await page.click("form.filters button")
            await expect(rows.locator("th a")).to_have_text(["rome"])
            await expect(page.locator("input[name=failing]")).to_be_checked()

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
    for name in ("login", "clients", "migrations"):
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
            await page.click("nav >> text=Clients")
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
            await expect(page.locator("tbody td.state")).to_have_text(["held", "held", "applied"])
            await expect(page.locator("#attention")).to_contain_text("held from 2 by a revert")
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

            await page.click("nav >> text=Clients")
            await expect(page.locator(f"#client-{lyon_id} td.cell")).to_have_text(["held", "held", "applied"])
            await expect(page.locator(f"#client-{lyon_id} td.wrong")).to_contain_text(
                "held from 2 by a revert"
            )

            # For every client at once, from the migrations page: lyon (held) and rome (failed).
            await page.click("nav >> text=Migrations")
            await expect(page.locator("tr#v2 td.tally")).to_have_text(
                "3 applied, 1 pending, 1 failed, 1 held"
            )
            # It says how many clients it reaches, and wants the migration's name typed.
            reapply_all = page.locator("tr#v2 form.reapply")
            await expect(reapply_all.locator(".reach")).to_have_text("2 clients")
            button = reapply_all.get_by_role("button", name="Re-apply on every client that failed it (2)")
            await button.click()  # nothing typed: the browser refuses the form
            assert await reapply_all.locator("input[name=confirm_name]").evaluate(
                "i => i.validity.valueMissing"
            )
            await reapply_all.locator("input[name=confirm_name]").fill("0002_order")
            await button.click()  # a wrong name: the server refuses, and nothing is requested
            await expect(page.locator("main p").first).to_contain_text(
                "Nothing was requested: to reapply migration '0002_orders' on every client (2 clients)"
            )
            await page.go_back()
            await reapply_all.locator("input[name=confirm_name]").fill("0002_orders")
            await button.click()
            await expect(page).to_have_url(re.compile(r"/admin/migrations\?requested=2#v2$"))
            await expect(page.get_by_role("status")).to_contain_text("2 requests recorded, one per client")

            # The clients page marks the requests the clients have not picked up yet.
            await page.click("nav >> text=Clients")
            lyon_cells = page.locator(f"#client-{lyon_id} td.cell")
            await expect(lyon_cells).to_have_class([re.compile(s) for s in ("held", "held", "applied")])
            await expect(lyon_cells.nth(1).locator(".asked")).to_have_text("requested: reapply")
            rome = page.locator(f"#client-{fleet.clients['rome']} td.cell.failed .asked")
            await expect(rome).to_have_text("requested: reapply")
            await page.screenshot(path=shots / "panel-clients-held.png")

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
    for name in ("client", "clients-held", "actions"):
        assert (shots / f"panel-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_follow_a_rollout_pause_and_resume_it_and_see_the_chart_follow_the_reports(
    chromium: str, tmp_path: Path, shots: Path
) -> None:
    """A rollout of V2 in two stages (4 canaries, then all 10; an hour's soak): the home page
    charts it and refreshes itself (panel.js) as clients report through the store; pause, resume
    and advance are buttons, recorded with the admin's name in the rollout's audit."""
    from playwright.async_api import async_playwright, expect

    from migsync.protocol.wire import StatusReport
    from migsync.server.panel import PanelOptions
    from migsync.server.rollouts import Policy, parse_stages

    store_url = f"sqlite:///{tmp_path / 'server.db'}"
    write_keypair(tmp_path / "signing.key")
    key = load_private_key(tmp_path / "signing.key")
    write_keypair(tmp_path / "request.key")
    request_key = load_private_key(tmp_path / "request.key")
    async with Store.open(store_url) as store:
        canaries = [(await store.add_client(f"canary-{i}", {"group": "canary"}))[0] for i in range(4)]
        others = [(await store.add_client(f"shop-{i}"))[0] for i in range(6)]
        await store.publish([V1], key)
        result = await store.publish(
            [V2], key, rollout=(parse_stages("canary,all"), Policy(soak=3600), "alice")
        )
        rollout_id = result.rollout_id

    async def report(*client_ids: int) -> None:
        async with Store.open(store_url) as store:
            for client_id in client_ids:
                await store.report(
                    client_id, [StatusReport(m.version, True, None, 1, m.checksum) for m in (V1, V2)]
                )

    server = ServerThread(
        lambda: create_app(
            store_url,
            admin_token=ADMIN,
            cache_seconds=0,
            request_key=request_key,
            panel=PanelOptions(refresh_seconds=0.2),
        )
    )
    server.start()
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
                await _log_in(page, server.url)
                section = page.locator(f"#rollout-{rollout_id}")
                await expect(section.locator(".stage")).to_contain_text("1 of 2: canary")
                canary_chart = section.locator("figure.chart").nth(0)
                applied = canary_chart.locator("[data-count=applied]")
                await expect(applied).to_have_text("0")
                await expect(canary_chart.locator("[data-count=pending]")).to_have_text("4")
                before = await canary_chart.locator("polygon.a-applied").get_attribute("points")

                # Two canaries report: the page follows by itself, without a reload.
                marker = await page.evaluate("document.querySelector('header').dataset.marker = 'same page'")
                await report(*canaries[:2])
                await expect(applied).to_have_text("2")
                await expect(canary_chart.locator("polygon.a-applied")).not_to_have_attribute(
                    "points", before or ""
                )
                assert (
                    await page.evaluate("document.querySelector('header').dataset.marker") == "same page"
                ), marker

                # Pause: the button, the state, and the audit with who did it.
                await section.get_by_role("button", name="Pause").click()
                await expect(page.locator(".flash")).to_have_text(
                    "Rollout paused: recorded with your name in its audit."
                )
                section = page.locator(f"#rollout-{rollout_id}")
                await expect(section.locator(".rollout-state")).to_have_text("paused")
                await expect(section.get_by_role("button")).to_have_text(["Resume", "Advance", "Abort"])
                # Paused, the remaining canaries' reports move the counts but not the stage.
                await report(*canaries[2:])
                await expect(
                    section.locator("figure.chart").nth(0).locator("[data-count=applied]")
                ).to_have_text("4")
                await expect(section.locator(".stage")).to_contain_text("1 of 2: canary")

                await section.get_by_role("button", name="Resume").click()
                section = page.locator(f"#rollout-{rollout_id}")
                await expect(section.locator(".rollout-state")).to_have_text("running")
                await expect(section.get_by_role("button")).to_have_text(["Pause", "Advance", "Abort"])
                # Every canary applied it, but the stage soaks for an hour: advance now.
                await expect(section.locator(".stage")).to_contain_text("1 of 2: canary")
                await section.get_by_role("button", name="Advance").click()
                section = page.locator(f"#rollout-{rollout_id}")
                await expect(section.locator(".stage")).to_contain_text("2 of 2: all")
                all_chart = section.locator("figure.chart").nth(1)
                # The second stage takes the 6 others (the canaries are the first's).
                await expect(all_chart.locator("[data-count=pending]")).to_have_text("6")
                await report(*others[:3])
                await expect(all_chart.locator("[data-count=applied]")).to_have_text("3")
                await expect(all_chart.locator("[data-count=pending]")).to_have_text("3")
                await page.screenshot(path=shots / "panel-rollouts.png", full_page=True)

                # The rollout's page: its stages and the audit, newest first, with who.
                await section.get_by_role("link", name=f"Rollout {rollout_id}").click()
                await expect(page.locator("h1")).to_contain_text(f"Rollout {rollout_id}")
                await expect(page.locator("#stage-1 td").last).to_have_text("passed")
                await expect(page.locator("#stage-2 td").last).to_have_text("current")
                audit = page.locator("table.audit tbody tr")
                await expect(audit.locator("td.who")).to_contain_text([WHO, WHO, WHO, "alice"])
                await expect(page.locator("table.audit")).to_contain_text(f"paused (by {WHO})")
                await expect(page.locator("table.audit")).to_contain_text(f"resumed (by {WHO})")
                await page.screenshot(path=shots / "panel-rollout.png", full_page=True)
            finally:
                await browser.close()
    finally:
        server.stop()
    for name in ("rollouts", "rollout"):
        assert (shots / f"panel-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
