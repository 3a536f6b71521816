"""The admin panel (migsync.server.panel) in-process through httpx.ASGITransport: the login, the
session cookie, CSRF, escaping, what the pages show (the filters and the counts), and the requests
an admin makes of clients (re-apply, revert) on a real store: SQLite, and Postgres where the store's
SQL matters."""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from dbtools import client_headers
from starlette.applications import Starlette
from starlette.routing import Mount

from migsync.core.clock import iso
from migsync.core.errors import BackendError, ConfigError
from migsync.protocol.signing import load_private_key, write_keypair
from migsync.protocol.wire import ActionResult, StatusReport
from migsync.server import ClientRecord, FleetEntry, Store
from migsync.server.app import create_app
from migsync.server.panel import LOGIN_COOKIE, SESSION_COOKIE, PanelOptions, create_panel, views
from migsync.server.panel import app as app_module
from migsync.server.panel.sessions import Sessions
from migsync.server.records import ActionRecord
from migsync.testing.backend_suite import migration

ADMIN = "panel-admin-token"
NAME = "Ana Admin"
SECRET = b"s" * 32
V1 = migration(1, "0001_users", "CREATE TABLE users (id INTEGER)")
V2 = migration(2, "0002_email", "ALTER TABLE users ADD COLUMN email TEXT")
V2_OTHER = migration(2, "0002_email", "ALTER TABLE users ADD COLUMN mail TEXT")
V3 = migration(3, "0003_orders", "CREATE TABLE orders (id INTEGER)")
DAY = 24 * 3600


@attrs.define
class Panel:
    store: Store
    http: httpx.AsyncClient
    key_path: Path

    async def publish(self, *migrations: Any, force: bool = False) -> None:
        await self.store.publish(migrations, load_private_key(self.key_path), force=force)

    async def client(self, name: str, *reports: StatusReport) -> int:
        client_id, _ = await self.store.add_client(name)
        if reports:
            assert not (await self.store.report(client_id, reports)).unpublished
        return client_id

    async def login(
        self, token: str = ADMIN, next_url: str | None = None, name: str = NAME
    ) -> httpx.Response:
        page = await self.http.get("/admin/login")
        assert page.status_code == 200
        form = {"name": name, "token": token, "csrf": form_csrf(page.text)}
        if next_url is not None:
            form["next"] = next_url
        return await self.http.post("/admin/login", data=form)

    async def page(self, path: str) -> str:
        response = await self.http.get(path)
        assert response.status_code == 200, (response.status_code, response.headers.get("location"))
        return response.text

    async def csrf(self) -> str:
        return form_csrf(await self.page("/admin/"))

    async def ask(
        self, client_id: int, action: str, version: int, confirmed: bool = True, **fields: str
    ) -> httpx.Response:
        """POST the request form of a client's page (with the page's CSRF token unless given)."""
        data = {"csrf": await self.csrf(), "action": action, "version": str(version)}
        if confirmed:
            data["confirm"] = "1"
        return await self.http.post(f"/admin/clients/{client_id}/actions", data={**data, **fields})

    async def ask_all(self, action: str, version: int | str, typed: str | None = None) -> httpx.Response:
        """POST the every-client request form of the migrations page, with the migration's name
        typed (or ``typed``)."""
        if typed is None:
            names = {str(m.version): m.name for m in await self.store.migrations()}
            typed = names.get(str(version), "")
        data = {"csrf": await self.csrf(), "action": action, "confirm_name": typed}
        return await self.http.post(f"/admin/migrations/{version}/actions", data=data)


def form_csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def applied(m: Any, checksum: str | None = None) -> StatusReport:
    return StatusReport(m.version, True, None, 1, checksum or m.checksum)


def failed(m: Any, error: str, attempts: int = 1) -> StatusReport:
    return StatusReport(m.version, False, error, attempts, m.checksum)


def dead(m: Any, error: str, attempts: int = 3) -> StatusReport:
    return StatusReport(m.version, False, error, attempts, m.checksum, dead=True)


def not_applied(m: Any) -> StatusReport:
    """What a client reports of a migration it reverted."""
    return StatusReport(m.version, False, None, 1, m.checksum)


def cells(html: str, client_id: int) -> list[str]:
    """The states of a client's cells on the clients page (the newest migrations, shown newest
    first), in version order."""
    row = html.split(f'<tr id="client-{client_id}"', 1)[1].split("</tr>", 1)[0]
    return list(reversed(re.findall(r'<td class="cell (\w+)"', row)))


def request_rows(html: str) -> list[list[str]]:
    """The requests table's rows, each a list of its cells' text."""
    body = html.split('<table class="requests">', 1)[1].split("</table>", 1)[0].split("<tbody>", 1)[1]
    return [
        [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr id=\"request-\d+\">(.*?)</tr>", body, re.S)
    ]


def shown_clients(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr id="client-(\d+)"', html)]


def count(html: str, name: str) -> int:
    match = re.search(rf'id="count-{name}">(\d+)<', html)
    assert match, html
    return int(match.group(1))


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Set-Cookie headers by cookie name (the whole header)."""
    return {h.split("=", 1)[0]: h for h in response.headers.get_list("set-cookie")}


@contextlib.asynccontextmanager
async def panel_on(
    tmp_path: Path,
    base_url: str = "http://migsync.test",
    store_url: str | None = None,
    cache_seconds: float = 0,
    with_request_key: bool = True,
    **options: Any,
) -> AsyncIterator[Panel]:
    tmp_path.mkdir(exist_ok=True)
    url = store_url or f"sqlite:///{tmp_path / 'server.db'}"
    key_path = tmp_path / "signing.key"
    write_keypair(key_path)
    request_key = None
    if with_request_key:
        write_keypair(tmp_path / "request.key")
        request_key = load_private_key(tmp_path / "request.key")
    options.setdefault("secret", SECRET)
    app = create_app(
        url,
        admin_token=ADMIN,
        cache_seconds=cache_seconds,
        panel=PanelOptions(**options),
        request_key=request_key,
    )
    async with Store.open(url) as store, app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
            yield Panel(store, http, key_path)


@pytest.fixture
async def panel(tmp_path: Path) -> AsyncIterator[Panel]:
    async with panel_on(tmp_path) as value:
        yield value


@pytest.fixture
async def admin(panel: Panel) -> Panel:
    """The panel, logged in."""
    assert (await panel.login()).status_code == 303
    return panel


@pytest.fixture
async def any_admin(any_store: str, tmp_path: Path) -> AsyncIterator[Panel]:
    """The panel, logged in, on a store of each kind."""
    async with panel_on(tmp_path, store_url=any_store) as value:
        assert (await value.login()).status_code == 303
        yield value


# -- login and session ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/admin/",
        "/admin/migrations",
        "/admin/clients/1",
        "/admin/?failing=1",
        "/admin/clients",
        "/admin/clients?failing=1",
        "/admin/rollouts/1",
    ],
)
async def test_every_page_redirects_to_the_login_without_a_session(panel: Panel, path: str) -> None:
    response = await panel.http.get(path)
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/login?next=" + path.replace("?", "%3F").replace("=", "%3D")


async def test_a_post_without_a_session_goes_to_the_login_without_coming_back(panel: Panel) -> None:
    response = await panel.http.post("/admin/logout", data={"csrf": "x"})
    assert response.status_code == 303 and response.headers["location"] == "/admin/login"


async def test_the_bare_mount_point_redirects_to_the_panel(panel: Panel) -> None:
    response = await panel.http.get("/admin")
    assert response.status_code in (307, 308)
    assert response.headers["location"].endswith("/admin/")


async def test_the_login_form_carries_a_csrf_token_bound_to_its_own_cookie(panel: Panel) -> None:
    page = await panel.http.get("/admin/login")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'type="password"' in page.text
    cookie = set_cookies(page)[LOGIN_COOKIE]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/admin" in cookie
    nonce = panel.http.cookies[LOGIN_COOKIE]
    assert form_csrf(page.text) == Sessions(SECRET, 60).login_csrf(nonce)
    again = await panel.http.get("/admin/login")
    assert form_csrf(again.text) == form_csrf(page.text)  # two tabs share one login cookie


async def test_a_wrong_token_shows_the_form_again_with_an_error_and_no_session(tmp_path: Path) -> None:
    async with panel_on(tmp_path) as panel:
        response = await panel.login("not-the-token")
        assert response.status_code == 200
        assert "That is not the admin token." in response.text
        assert 'type="password"' in response.text
        assert SESSION_COOKIE not in set_cookies(response)
        assert (await panel.http.get("/admin/")).status_code == 303


async def test_the_admin_token_logs_in_with_a_strict_http_only_cookie(panel: Panel) -> None:
    response = await panel.login()
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/"
    cookies = set_cookies(response)
    session = cookies[SESSION_COOKIE]
    assert "HttpOnly" in session
    assert "samesite=strict" in session.lower()
    assert "Path=/admin" in session
    assert f"Max-Age={8 * 3600}" in session
    assert "Secure" not in session  # plain http, not forced
    assert "Max-Age=0" in cookies[LOGIN_COOKIE] or "expires=" in cookies[LOGIN_COOKIE].lower()
    assert "<h1>Rollouts</h1>" in await panel.page("/admin/")
    # Logged in, the login page sends you on.
    assert (await panel.http.get("/admin/login")).headers["location"] == "/admin/"


async def test_the_login_goes_on_to_the_page_asked_for_but_never_off_the_panel(panel: Panel) -> None:
    assert (await panel.login(next_url="/admin/migrations")).headers["location"] == "/admin/migrations"
    for evil in ("https://evil.example/", "//evil.example/admin/", "/admin/..\\evil", "/elsewhere"):
        panel.http.cookies.clear()
        assert (await panel.login(next_url=evil)).headers["location"] == "/admin/"


async def test_the_cookie_is_secure_on_https_and_when_forced(tmp_path: Path) -> None:
    async with panel_on(tmp_path / "a", base_url="https://migsync.test") as panel:
        assert "Secure" in set_cookies(await panel.login())[SESSION_COOKIE]
    async with panel_on(tmp_path / "b", secure_cookie=True) as panel:
        page = await panel.http.get("/admin/login")
        assert "Secure" in set_cookies(page)[LOGIN_COOKIE]


def _tampered(value: str) -> str:
    head, mac = value.rsplit(".", 1)
    return f"{head}.{'0' if mac[0] != '0' else '1'}{mac[1:]}"


def _longer(value: str) -> str:
    version, sid, expires, name, mac = value.split(".")
    return ".".join((version, sid, str(int(expires) + 3600), name, mac))


async def test_a_forged_expired_or_foreign_session_cookie_is_refused(panel: Panel) -> None:
    _, good = Sessions(SECRET, 60).issue(NAME)
    _, expired = Sessions(SECRET, 60, clock=lambda: time.time() - 120).issue(NAME)
    _, foreign = Sessions(b"x" * 32, 60).issue(NAME)
    cases = {
        "good": (good, 200),
        "tampered": (_tampered(good), 303),
        "expired": (expired, 303),
        "expired, made longer": (_longer(expired), 303),
        "signed with another secret": (foreign, 303),
        "garbage": ("v1.nope", 303),
        "empty": ("", 303),
    }
    for what, (value, status) in cases.items():
        panel.http.cookies.clear()
        panel.http.cookies.set(SESSION_COOKIE, value, domain="migsync.test", path="/admin")
        assert (await panel.http.get("/admin/")).status_code == status, what


async def test_a_session_from_another_app_is_refused(tmp_path: Path) -> None:
    """Without a given secret each app draws its own: a restart logs everyone out."""
    async with panel_on(tmp_path / "a", secret=None) as first:
        await first.login()
        value = first.http.cookies[SESSION_COOKIE]
    async with panel_on(tmp_path / "b", secret=None) as second:
        second.http.cookies.set(SESSION_COOKIE, value, domain="migsync.test", path="/admin")
        assert (await second.http.get("/admin/")).status_code == 303


async def test_a_login_post_without_the_right_csrf_token_is_403(panel: Panel) -> None:
    no_cookie = await panel.http.post("/admin/login", data={"name": NAME, "token": ADMIN, "csrf": "x"})
    assert no_cookie.status_code == 403
    assert "did not come from this panel" in no_cookie.text
    page = await panel.http.get("/admin/login")
    for csrf in ("", "0" * 64, Sessions(SECRET, 60).login_csrf("another-nonce-of-the-attacker")):
        response = await panel.http.post("/admin/login", data={"name": NAME, "token": ADMIN, "csrf": csrf})
        assert response.status_code == 403, csrf
        assert SESSION_COOKIE not in set_cookies(response)
    missing = await panel.http.post("/admin/login", data={"name": NAME, "token": ADMIN})
    assert missing.status_code == 403
    assert (
        await panel.http.post(
            "/admin/login", data={"name": NAME, "token": ADMIN, "csrf": form_csrf(page.text)}
        )
    ).status_code == 303


async def test_logout_needs_the_sessions_csrf_token_and_ends_the_session(admin: Panel) -> None:
    page = await admin.page("/admin/")
    value = admin.http.cookies[SESSION_COOKIE]
    other_session, _ = Sessions(SECRET, 60).issue(NAME)
    for data in ({}, {"csrf": "nope"}, {"csrf": Sessions(SECRET, 60).csrf(other_session)}):
        assert (await admin.http.post("/admin/logout", data=data)).status_code == 403
    assert (await admin.http.get("/admin/")).status_code == 200  # still logged in
    out = await admin.http.post("/admin/logout", data={"csrf": form_csrf(page)})
    assert out.status_code == 303 and out.headers["location"] == "/admin/login"
    assert "Max-Age=0" in set_cookies(out)[SESSION_COOKIE]
    assert (await admin.http.get("/admin/")).status_code == 303
    # A copy of the cookie kept from before is dead too.
    admin.http.cookies.set(SESSION_COOKIE, value, domain="migsync.test", path="/admin")
    assert (await admin.http.get("/admin/")).status_code == 303


async def test_forms_must_be_small_and_urlencoded(admin: Panel) -> None:
    csrf = form_csrf(await admin.page("/admin/"))
    as_json = await admin.http.post("/admin/logout", json={"csrf": csrf})
    assert as_json.status_code == 415
    huge = await admin.http.post("/admin/logout", data={"csrf": csrf, "pad": "x" * 10_000})
    assert huge.status_code == 413
    assert (await admin.http.get("/admin/")).status_code == 200


async def test_pages_carry_strict_security_headers(panel: Panel) -> None:
    login = await panel.http.get("/admin/login")
    await panel.login()
    paths = ("/admin/", "/admin/clients", "/admin/migrations")
    for response in [login, *[await panel.http.get(path) for path in paths]]:
        assert response.status_code == 200
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        # Scripts only from the panel itself (panel.js): nothing inline, nothing from elsewhere.
        assert "script-src 'self';" in csp and "unsafe" not in csp and "connect-src 'self';" in csp
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-content-type-options"] == "nosniff"
    css = await panel.http.get("/admin/panel.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


async def test_the_stylesheet_needs_no_session(panel: Panel) -> None:
    assert (await panel.http.get("/admin/panel.css")).status_code == 200


async def test_panel_options_are_checked(tmp_path: Path) -> None:
    store = lambda: None  # noqa: E731 - never called: the options are refused first
    for options in (
        PanelOptions(session_seconds=0),
        PanelOptions(secret=b"short"),
    ):
        with pytest.raises(ConfigError):
            create_panel(store, ADMIN, options)  # type: ignore[arg-type]


async def test_panel_false_leaves_the_panel_out(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    async with Store.open(url):
        pass
    app = create_app(url, admin_token=ADMIN, panel=False)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as http,
    ):
        response = await http.get("/admin/login")
    assert response.status_code == 404
    assert response.json() == {"error": "Not Found"}


# -- what the pages show -------------------------------------------------------------------------


async def test_what_a_client_reported_is_escaped_everywhere(admin: Panel) -> None:
    await admin.publish(V1, V2)
    error = 'near "<script>alert(1)</script>": syntax error & "quotes"'
    client_id = await admin.client("<b>shop</b>", applied(V1), failed(V2, error, attempts=3))
    for path in ("/admin/clients", f"/admin/clients/{client_id}", "/admin/clients?failing=1"):
        html = await admin.page(path)
        assert "<script>" not in html and "<b>shop</b>" not in html, path
        assert "&lt;b&gt;shop&lt;/b&gt;" in html, path
    grid = await admin.page("/admin/clients")
    # The error is in the failed cell's title, escaped for an attribute, and links to the client.
    assert (
        f'href="/admin/clients/{client_id}#v2" title="near &#34;&lt;script&gt;alert(1)&lt;/script&gt;&#34;: '
        'syntax error &amp; &#34;quotes&#34;">failed &times;3</a>'
    ) in grid
    page = await admin.page(f"/admin/clients/{client_id}")
    assert (
        '<pre class="error">near &#34;&lt;script&gt;alert(1)&lt;/script&gt;&#34;: syntax error &amp; '
        "&#34;quotes&#34;</pre>"
    ) in page


async def _fleet(admin: Panel) -> dict[str, int]:
    """One client in each state, V1 and V2 published (V2 since replaced for drift)."""
    await admin.publish(V1, V2_OTHER)
    ids = {
        "latest": await admin.client("latest", applied(V1), applied(V2_OTHER)),
        "behind": await admin.client("behind", applied(V1)),
        "failing": await admin.client("failing", applied(V1), failed(V2_OTHER, "boom", attempts=5)),
        "drift": await admin.client("drift", applied(V1), applied(V2_OTHER, checksum=V2.checksum)),
        "stale": await admin.client("stale"),
        "new": await admin.client("new"),
    }
    await admin.store.touch(ids["stale"], time.time() - 2 * DAY)
    return ids


async def test_the_clients_page_counts_and_filters(admin: Panel) -> None:
    ids = await _fleet(admin)
    html = await admin.page("/admin/clients")
    assert shown_clients(html) == [ids[n] for n in sorted(ids)]  # by name
    counts = [count(html, name) for name in ("clients", "failing", "stale", "held", "matching")]
    assert counts == [6, 2, 1, 0, 6]
    failing = await admin.page("/admin/clients?failing=1")
    assert shown_clients(failing) == [ids["drift"], ids["failing"]]
    assert count(failing, "clients") == 6 and count(failing, "matching") == 2  # the counts are the fleet's
    assert 'name="failing" value="1" checked' in failing
    assert shown_clients(await admin.page("/admin/clients?stale=1")) == [ids["stale"]]
    assert shown_clients(await admin.page("/admin/clients?failing=1&stale=1")) == []
    assert "No client matches." in await admin.page("/admin/clients?failing=1&stale=1")


async def test_the_clients_page_has_a_cell_per_client_and_newest_migration(admin: Panel) -> None:
    ids = await _fleet(admin)
    html = await admin.page("/admin/clients")
    assert cells(html, ids["latest"]) == ["applied", "applied"]
    assert cells(html, ids["behind"]) == ["applied", "pending"]
    assert cells(html, ids["failing"]) == ["applied", "failed"]
    assert cells(html, ids["drift"]) == ["applied", "drift"]
    assert cells(html, ids["new"]) == ["pending", "pending"]
    assert "failed &times;5" in html
    assert f'href="/admin/clients/{ids["drift"]}#v2">drift</a>' in html
    assert "2 d ago" in html and "never" in html


async def test_a_client_page_shows_its_status_per_migration(admin: Panel) -> None:
    ids = await _fleet(admin)
    long_error = "line one\n" + "x" * 3000 + "\nthe last line"
    await admin.store.report(ids["failing"], [failed(V2_OTHER, long_error, attempts=6)])
    page = await admin.page(f"/admin/clients/{ids['failing']}")
    assert "<h1>failing" in page
    assert f'<pre class="error">{long_error}</pre>' in page  # in full
    assert "6 attempts; the last error:" in page
    assert re.search(r"<dt>reported version</dt><dd>1</dd>", page)
    assert re.findall(r'<td class="state (\w+)"', page) == ["failed", "applied"]  # newest first
    assert page.index('id="attention"') < page.index('<dl class="facts">')  # what is wrong comes first
    drift = await admin.page(f"/admin/clients/{ids['drift']}")
    assert f"<code>{V2.checksum}</code>; published: <code>{V2_OTHER.checksum}</code>" in drift
    new = await admin.page(f"/admin/clients/{ids['new']}")
    assert re.findall(r'<td class="state (\w+)"', new) == ["pending", "pending"]
    assert 'id="attention"' not in new  # nothing wrong: nothing to lead with
    assert "<dt>last seen</dt><dd" in new and ">never</dd>" in new
    missing = await admin.http.get("/admin/clients/999")
    assert missing.status_code == 404 and "There is no client 999." in missing.text


async def test_the_migrations_page_lists_what_is_published(admin: Panel) -> None:
    assert "Nothing is published yet" in await admin.page("/admin/migrations")
    await _fleet(admin)
    await admin.publish(V2, force=True)  # V2_OTHER's content is replaced: its checksum stays behind
    [first, second] = await admin.store.migrations()
    html = await admin.page("/admin/migrations")
    assert "0001_users" in html and "0002_email" in html
    assert f'<code title="{first.checksum}">{first.checksum[:12]}</code>' in html
    assert f'<code title="{first.signed_by}">{first.signed_by[:12]}</code>' in html
    assert second.replaced_checksum == V2_OTHER.checksum
    assert f'<code title="{V2_OTHER.checksum}">{V2_OTHER.checksum[:12]}</code> at ' in html
    tallies = re.findall(r'<td class="tally">(.*)</td>', html)
    assert [re.sub(r"<[^>]+>", "", t) for t in tallies] == [
        "4 applied, 2 pending",
        "1 applied, 3 pending, 1 failed, 1 drift",  # the force made "drift" right and "latest" drift
    ]


async def test_a_page_sees_the_polls_this_process_has_not_written_yet(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    write_keypair(tmp_path / "key")
    async with Store.open(url) as store:
        await store.publish([V1], load_private_key(tmp_path / "key"))
        client_id, token = await store.add_client("poller")
    app = create_app(url, admin_token=ADMIN, seen_flush=3600, panel=PanelOptions())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://migsync.test") as http:
            poll = await http.get("/api/migrations/pending", headers=client_headers(token))
            assert poll.status_code == 200
            page = await http.get("/admin/login")
            await http.post("/admin/login", data={"name": NAME, "token": ADMIN, "csrf": form_csrf(page.text)})
            html = (await http.get(f"/admin/clients/{client_id}")).text
    assert "s ago (" in html


def test_a_client_is_stale_a_day_after_it_was_last_seen_or_registered() -> None:
    now = 10 * DAY

    def row(created: float, seen: float | None) -> views.ClientRow:
        entry = FleetEntry(ClientRecord(1, "c", created, seen), (), (), (), ())
        return views.ClientRow(entry, ())

    assert not row(now - 3 * DAY, now - DAY + 1).stale(now)
    assert row(now - 3 * DAY, now - DAY).stale(now)
    assert not row(now - 60, None).stale(now)  # registered a minute ago, not seen yet
    assert row(now - DAY, None).stale(now)  # registered a day ago and never seen


async def test_an_unknown_page_is_an_html_404(admin: Panel) -> None:
    response = await admin.http.get("/admin/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>Not found</h1>" in response.text


async def test_a_store_that_is_not_open_or_fails_is_an_html_503(tmp_path: Path) -> None:
    class Down:
        async def migrations(self) -> None:
            raise BackendError("the database went away")

        async def rollouts(self) -> None:
            raise BackendError("the database went away")

    _, cookie = Sessions(SECRET, 60).issue(NAME)
    url = f"sqlite:///{tmp_path / 'server.db'}"
    async with Store.open(url):
        pass
    not_open = create_app(url, admin_token=ADMIN, panel=PanelOptions(secret=SECRET))  # no lifespan
    failing = create_panel(lambda: Down(), ADMIN, PanelOptions(secret=SECRET))  # type: ignore[arg-type, return-value]
    for app, path, message in (
        (not_open, "/admin/", "the store is not open"),
        (failing, "/", "The store is unavailable; try again later"),
    ):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://migsync.test") as http:
            http.cookies.set(SESSION_COOKIE, cookie)
            response = await http.get(path)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert message in response.text and "<h1>Store unavailable</h1>" in response.text
        assert "the database went away" not in response.text  # for the server's log only


async def test_the_panel_follows_the_path_it_is_mounted_at(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    async with Store.open(url):
        pass
    api = create_app(url, admin_token=ADMIN, panel=PanelOptions())

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with api.router.lifespan_context(api):
            yield

    app = Starlette(routes=[Mount("/sync", app=api)], lifespan=lifespan)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://migsync.test") as http:
            assert (await http.get("/sync/admin/")).headers[
                "location"
            ] == "/sync/admin/login?next=/sync/admin/"
            page = await http.get("/sync/admin/login")
            assert 'action="/sync/admin/login"' in page.text and 'href="/sync/admin/panel.css"' in page.text
            login = await http.post(
                "/sync/admin/login", data={"name": NAME, "token": ADMIN, "csrf": form_csrf(page.text)}
            )
            assert login.headers["location"] == "/sync/admin/"
            assert "Path=/sync/admin" in set_cookies(login)[SESSION_COOKIE]
            assert "<h1>Rollouts</h1>" in (await http.get("/sync/admin/")).text
            assert 'src="/sync/admin/panel.js"' in (await http.get("/sync/admin/clients")).text


# -- who is logged in ----------------------------------------------------------------------------


async def test_the_login_asks_for_a_name_and_the_header_shows_it(panel: Panel) -> None:
    page = await panel.page("/admin/login")
    assert re.search(r'<input id="name" name="name" type="text"[^>]* maxlength="100"[^>]* required', page)
    response = await panel.login(name="  Ana \t  Admin\n")
    assert response.status_code == 303
    fleet = await panel.page("/admin/")
    assert "signed in as <strong>Ana Admin</strong>" in fleet  # whitespace collapsed


@pytest.mark.parametrize("name", ["", "   ", "x" * 101, "tab\x07bell", "zero\u200bwidth"])
async def test_a_login_without_a_proper_name_is_refused(panel: Panel, name: str) -> None:
    response = await panel.login(name=name)
    assert response.status_code == 400
    assert "Say who you are: a name of 1 to 100 printable characters." in response.text
    assert SESSION_COOKIE not in set_cookies(response)
    assert (await panel.http.get("/admin/")).status_code == 303


async def test_a_name_of_a_hundred_characters_is_kept_whole_and_escaped(panel: Panel) -> None:
    name = "<b>Zoë</b> & " + "é" * 87
    assert len(name) == 100
    assert (await panel.login(name=name)).status_code == 303
    html = await panel.page("/admin/")
    assert f"signed in as <strong>&lt;b&gt;Zoë&lt;/b&gt; &amp; {'é' * 87}</strong>" in html


async def test_a_wrong_token_keeps_the_name_typed(panel: Panel) -> None:
    response = await panel.login("not-the-token", name='Eve "<x>"')
    assert response.status_code == 200 and "That is not the admin token." in response.text
    assert 'value="Eve &#34;&lt;x&gt;&#34;"' in response.text
    assert 'value="panel-admin-token"' not in response.text


def test_the_session_value_carries_the_name_under_its_mac() -> None:
    sessions = Sessions(SECRET, 60)
    session, value = sessions.issue("José Ñandú")
    assert value.startswith("v2.")
    verified = sessions.verify(value)
    assert verified is not None and verified.name == "José Ñandú" and verified.sid == session.sid
    version, sid, expires, _name, mac = value.split(".")
    other = base64.urlsafe_b64encode(b"Mallory").decode().rstrip("=")
    assert sessions.verify(".".join((version, sid, expires, other, mac))) is None
    assert sessions.verify(".".join(("v1", sid, expires, mac))) is None  # a value from before names
    assert sessions.verify(value.replace("v2.", "v1.", 1)) is None
    assert sessions.verify(value + "é") is None  # not ASCII: refused, not a TypeError
    for bad in ("", " padded ", "x" * 101, "new\nline"):
        with pytest.raises(ValueError):
            sessions.issue(bad)


# -- dead and held cells -------------------------------------------------------------------------


async def _held(admin: Panel, client_id: int, version: int, state: str = "done") -> int:
    """A revert of ``version`` asked of ``client_id`` and answered ``state`` (as the client would)."""
    [record] = await admin.store.request_action("revert", version, [client_id], "Bob")
    await admin.store.record_answers(client_id, [ActionResult(record.id, state, "reverted")])
    return record.id


async def test_a_dead_migration_has_its_own_cell_and_counts_as_failing(admin: Panel) -> None:
    await admin.publish(V1, V2)
    dying = await admin.client("dying", applied(V1), dead(V2, "table orders already exists", attempts=3))
    retrying = await admin.client("retrying", applied(V1), failed(V2, "busy", attempts=1))
    html = await admin.page("/admin/clients")
    assert cells(html, dying) == ["applied", "dead"]
    assert cells(html, retrying) == ["applied", "failed"]
    assert (
        f'<td class="cell dead"><a href="/admin/clients/{dying}#v2" title="table orders already exists">'
        "dead &times;3</a>"
    ) in html
    assert count(html, "failing") == 2
    assert shown_clients(await admin.page("/admin/clients?failing=1")) == [dying, retrying]
    page = await admin.page(f"/admin/clients/{dying}")
    assert re.findall(r'<td class="state (\w+)"', page) == ["dead", "applied"]
    assert '<span class="problem dead">2 dead (waits for a re-apply) \u00d73</span>' in page
    assert "3 attempts, as many as the client allows: it waits for a re-apply." in page
    tallies = re.findall(r'<td class="tally">(.*)</td>', await admin.page("/admin/migrations"))
    assert re.sub(r"<[^>]+>", "", tallies[1]) == "0 applied, 1 failed, 1 dead"


async def test_a_revert_the_client_carried_out_holds_that_version_and_later(any_admin: Panel) -> None:
    admin = any_admin
    await admin.publish(V1, V2, V3)
    client_id = await admin.client("shop", applied(V1), applied(V2), applied(V3))
    other = await admin.client("other", applied(V1), applied(V2), applied(V3))
    [record] = await admin.store.request_action("revert", 2, [client_id], "Bob")
    html = await admin.page("/admin/clients")
    # Asked, not picked up yet: still applied, with the request on the cell.
    assert cells(html, client_id) == ["applied", "applied", "applied"]
    assert "requested: revert" in html.split(f'<tr id="client-{client_id}"', 1)[1].split("</tr>", 1)[0]
    await admin.store.record_answers(client_id, [ActionResult(record.id, "done", "reverted")])
    await admin.store.report(client_id, [not_applied(V2), not_applied(V3)])
    html = await admin.page("/admin/clients")
    assert cells(html, client_id) == ["applied", "held", "held"]
    assert cells(html, other) == ["applied", "applied", "applied"]
    assert "requested: revert" not in html
    assert f"held from 2 by a revert (Bob, request {record.id})" in html
    assert count(html, "held") == 0 and count(html, "failing") == 0  # held by a revert, not by its app
    page = await admin.page(f"/admin/clients/{client_id}")
    assert re.findall(r'<td class="state (\w+)"', page) == ["held", "held", "applied"]
    assert f"Held by request {record.id} (revert of version 2, by Bob)" in page
    assert "held from version 2" in page
    forms = _row_forms(page)
    assert forms == {1: ["revert"], 2: ["reapply"], 3: ["reapply"]}
    tallies = re.findall(r'<td class="tally">(.*)</td>', await admin.page("/admin/migrations"))
    assert [re.sub(r"<[^>]+>", "", t) for t in tallies[1:]] == ["1 applied, 1 held"] * 2


async def test_a_reapply_the_client_carried_out_lifts_the_hold(admin: Panel) -> None:
    await admin.publish(V1, V2)
    client_id = await admin.client("shop", applied(V1), applied(V2))
    await _held(admin, client_id, 2)
    await admin.store.report(client_id, [not_applied(V2)])
    assert cells(await admin.page("/admin/clients"), client_id) == ["applied", "held"]
    [reapply] = await admin.store.request_action("reapply", 2, [client_id], "Bob")
    html = await admin.page("/admin/clients")
    assert cells(html, client_id) == ["applied", "held"]  # not carried out yet: the client still holds
    assert "requested: reapply" in html
    await admin.store.record_answers(client_id, [ActionResult(reapply.id, "queued", "queued 0002_email")])
    html = await admin.page("/admin/clients")
    assert cells(html, client_id) == ["applied", "pending"]
    assert "reapply under way" in html


def _record(action_id: int, action: str, version: int, state: str) -> ActionRecord:
    return ActionRecord(action_id, 1, "c", action, version, "Bob", 0.0, state, None, 0.0)


@pytest.mark.parametrize(
    ("requests", "held_from"),
    [
        ([], None),
        ([("revert", 2, "done")], 2),
        ([("revert", 2, "queued")], 2),
        ([("revert", 2, "failed")], 2),  # the client holds before it reverts
        ([("revert", 2, "pending")], None),  # not picked up yet
        ([("revert", 2, "superseded")], None),
        ([("revert", 3, "done"), ("revert", 2, "done")], 2),
        ([("revert", 2, "done"), ("revert", 3, "done")], 2),  # an earlier, lower hold stays
        ([("revert", 2, "done"), ("reapply", 2, "done")], None),
        ([("revert", 2, "done"), ("reapply", 3, "queued")], None),  # a re-apply lifts the whole hold
        ([("revert", 2, "done"), ("reapply", 2, "pending")], 2),
        ([("revert", 2, "done"), ("reapply", 2, "done"), ("revert", 3, "done")], 3),
    ],
)
def test_the_hold_follows_the_requests_the_client_carried_out(
    requests: list[tuple[str, int, str]], held_from: int | None
) -> None:
    records = [_record(i, *r) for i, r in enumerate(requests, 1)]
    hold = views.hold_of(reversed(records))  # in any order: ids say which came first
    assert (hold.version if hold else None) == held_from


# -- requests to clients -------------------------------------------------------------------------


def _row_forms(page: str) -> dict[int, list[str]]:
    """Per migration row of a client's page, the actions its forms ask for."""
    table = page.split('<table class="status">', 1)[1].split("</table>", 1)[0]
    return {
        int(version): re.findall(r'name="action" value="(\w+)"', row)
        for version, row in re.findall(r'<tr id="v(\d+)"[^>]*>(.*?)</tr>', table, re.S)
    }


async def test_a_client_page_offers_what_makes_sense_per_migration(admin: Panel) -> None:
    ids = await _fleet(admin)
    await admin.publish(V3)
    await admin.store.report(ids["latest"], [dead(V3, "no")])
    page = await admin.page(f"/admin/clients/{ids['latest']}")
    assert _row_forms(page) == {1: ["revert"], 2: ["revert"], 3: ["reapply"]}
    assert _row_forms(await admin.page(f"/admin/clients/{ids['failing']}")) == {
        1: ["revert"],
        2: ["reapply"],
        3: [],
    }
    assert _row_forms(await admin.page(f"/admin/clients/{ids['drift']}"))[2] == ["revert"]
    assert _row_forms(await admin.page(f"/admin/clients/{ids['new']}")) == {1: [], 2: [], 3: []}
    # A revert's form cannot be sent without its box ticked (no script: the browser's `required`).
    revert = page.split('value="revert"', 1)[1].split("</form>", 1)[0]
    assert (
        '<label><input type="checkbox" name="confirm" value="1" required> '
        "revert this and every later migration on latest</label>"
    ) in revert
    assert f'<input type="hidden" name="csrf" value="{form_csrf(page)}">' in page
    assert "Nothing was asked of this client yet." in page


async def test_a_request_from_a_client_page_is_recorded_with_who_and_when(any_admin: Panel) -> None:
    admin = any_admin
    await admin.publish(V1, V2)
    client_id = await admin.client("shop", applied(V1), dead(V2, "boom"))
    before = time.time()
    response = await admin.ask(client_id, "reapply", 2, confirmed=False)
    after = time.time()
    assert response.status_code == 303
    assert response.headers["location"] == f"/admin/clients/{client_id}?requested=1#requests"
    [record] = await admin.store.actions()
    assert (record.client_id, record.action, record.version, record.state) == (
        client_id,
        "reapply",
        2,
        "pending",
    )
    assert record.requested_by == NAME
    assert before - 1 <= record.requested_at <= after + 1
    page = await admin.page(response.headers["location"])
    assert "Request recorded: shop hears of it at its next poll." in page
    assert '<h2 id="requests">' in page
    assert request_rows(page) == [
        [str(record.id), "reapply", "2", NAME, iso(record.requested_at), "pending", ""]
    ]
    assert "requested: reapply" in page  # on its row, too
    assert "requested: reapply" in await admin.page("/admin/clients")
    assert "Request recorded" not in await admin.page(f"/admin/clients/{client_id}")  # once, after the POST


async def test_without_a_request_key_the_panel_and_the_api_make_no_request_and_say_why(
    tmp_path: Path,
) -> None:
    """A client carries out signed requests only: a server that cannot sign them must not take them."""
    async with panel_on(tmp_path, with_request_key=False) as admin:
        assert (await admin.login()).status_code == 303
        await admin.publish(V1, V2)
        client_id = await admin.client("shop", applied(V1), dead(V2, "boom"))
        page = await admin.page(f"/admin/clients/{client_id}")
        assert "Requests to clients are off: this server has no request key" in page
        assert "migsync serve --request-key KEY" in page
        refused = await admin.ask(client_id, "reapply", 2, confirmed=False)
        assert refused.status_code == 409
        assert "Nothing was requested: this server has no request key" in refused.text
        api = await admin.http.post(
            "/api/actions",
            json={"action": "reapply", "version": "2", "clients": [client_id], "requested_by": "bob"},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert api.status_code == 409 and "--request-key" in api.json()["error"]
        assert await admin.store.actions() == []


async def test_the_client_hears_of_a_request_at_its_very_next_poll(tmp_path: Path) -> None:
    """The API caches client states; the panel's request drops the cache, so the ETag moves."""
    async with panel_on(tmp_path, cache_seconds=3600) as admin:
        await admin.publish(V1)
        client_id, token = await admin.store.add_client("shop")
        await admin.store.report(client_id, [applied(V1)])
        auth = client_headers(token)
        first = await admin.http.get("/api/migrations/pending", headers=auth)
        assert first.status_code == 200 and first.json()["actions"] == []
        etag = first.headers["etag"]
        assert (
            await admin.http.get("/api/migrations/pending", headers={**auth, "If-None-Match": etag})
        ).status_code == 304
        await admin.login()
        assert (await admin.ask(client_id, "revert", 1)).status_code == 303
        poll = await admin.http.get("/api/migrations/pending", headers={**auth, "If-None-Match": etag})
        assert poll.status_code == 200
        [asked] = poll.json()["actions"]
        assert (asked["action"], asked["version"], asked["requested_by"]) == ("revert", "1", NAME)


async def test_after_request_is_called_once_a_request_is_recorded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    write_keypair(tmp_path / "key")
    calls: list[int] = []
    async with Store.open(url) as store:
        await store.publish([V1], load_private_key(tmp_path / "key"))
        client_id, _ = await store.add_client("shop")
        await store.report(client_id, [applied(V1)])
        app = create_panel(
            lambda: store,
            ADMIN,
            PanelOptions(secret=SECRET),
            after_request=lambda: calls.append(1),
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://migsync.test") as http:
            page = await http.get("/login")
            await http.post("/login", data={"name": NAME, "token": ADMIN, "csrf": form_csrf(page.text)})
            csrf = form_csrf((await http.get("/")).text)
            refused = await http.post(
                f"/clients/{client_id}/actions", data={"csrf": csrf, "action": "reapply", "version": "7"}
            )
            assert refused.status_code == 422 and calls == []
            bad = await http.post(
                f"/clients/{client_id}/actions", data={"csrf": csrf, "action": "drop", "version": "1"}
            )
            assert bad.status_code == 400 and calls == []
            done = await http.post(
                f"/clients/{client_id}/actions",
                data={
                    "csrf": csrf,
                    "action": "revert",
                    "version": "1",
                    "confirm": "on",
                },  # a browser's default
            )
            assert (
                done.status_code == 303
                and done.headers["location"] == f"/clients/{client_id}?requested=1#requests"
            )
            assert calls == [1]
        assert [r.action for r in await store.actions()] == ["revert"]


async def test_each_request_is_logged_with_who_and_from_where(
    admin: Panel, caplog: pytest.LogCaptureFixture
) -> None:
    await admin.publish(V1)
    client_id = await admin.client("shop", applied(V1))
    with caplog.at_level(logging.INFO, logger="migsync.server.panel"):
        assert (await admin.ask(client_id, "revert", 1)).status_code == 303
    [record] = await admin.store.actions()
    messages = [r.getMessage() for r in caplog.records if r.name == "migsync.server.panel"]
    assert messages == [
        f"panel: {NAME} (from 127.0.0.1) asked 'shop' ({client_id}) to revert version 1: request {record.id}"
    ]


async def test_a_request_needs_a_session(admin: Panel) -> None:
    await admin.publish(V1)
    client_id = await admin.client("shop", applied(V1))
    csrf = await admin.csrf()
    admin.http.cookies.delete(SESSION_COOKIE)
    for path, data in (
        (
            f"/admin/clients/{client_id}/actions",
            {"csrf": csrf, "action": "revert", "version": "1", "confirm": "1"},
        ),
        ("/admin/migrations/1/actions", {"csrf": csrf, "action": "revert", "confirm": "1"}),
    ):
        response = await admin.http.post(path, data=data)
        assert response.status_code == 303 and response.headers["location"] == "/admin/login", path
    assert await admin.store.actions() == []


async def test_a_request_needs_the_csrf_token_of_the_session(admin: Panel) -> None:
    await admin.publish(V1)
    client_id = await admin.client("shop", applied(V1))
    other, _ = Sessions(SECRET, 60).issue("Mallory")
    for token in (None, "", "nope", Sessions(SECRET, 60).csrf(other)):
        fields = {} if token is None else {"csrf": token}
        one = await admin.http.post(
            f"/admin/clients/{client_id}/actions",
            data={**fields, "action": "revert", "version": "1", "confirm": "1"},
        )
        every = await admin.http.post(
            "/admin/migrations/1/actions", data={**fields, "action": "revert", "confirm": "1"}
        )
        for response in (one, every):
            assert response.status_code == 403, token
            assert "did not come from this panel" in response.text
    assert await admin.store.actions() == []
    assert (await admin.ask(client_id, "revert", 1)).status_code == 303  # the page's own token works


async def test_a_revert_without_its_confirm_box_is_refused(admin: Panel) -> None:
    await admin.publish(V1)
    client_id = await admin.client("shop", applied(V1))
    for confirm in ({}, {"confirm": ""}, {"confirm": "0"}, {"confirm": "no"}):
        one = await admin.ask(client_id, "revert", 1, confirmed=False, **confirm)
        assert one.status_code == 400, confirm
        assert one.headers["content-type"].startswith("text/html")
        assert "<h1>Bad request</h1>" in one.text
        assert "A revert must be confirmed: tick the box" in one.text
    # For every client, the box is the migration's name, typed: a wrong one requests nothing.
    for typed in ("", "0001", "0001_USERS", "0002_email", "1"):
        every = await admin.ask_all("revert", 1, typed=typed)
        assert every.status_code == 400, typed
        assert "<h1>Bad request</h1>" in every.text
        assert (
            "Nothing was requested: to revert migration &#39;0001_users&#39; on every client (1 client)"
            in every.text
        )
        assert "type its name exactly; you typed" in every.text
    assert await admin.store.actions() == []
    # A re-apply undoes nothing: it needs no box.
    [record] = await admin.store.request_action("revert", 1, [client_id], "Bob")
    await admin.store.record_answers(client_id, [ActionResult(record.id, "done", "reverted")])
    await admin.store.report(client_id, [not_applied(V1)])
    assert (await admin.ask(client_id, "reapply", 1, confirmed=False)).status_code == 303


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"action": "drop"}, "Unknown action &#39;drop&#39;: use one of reapply, revert."),
        ({"action": ""}, "Unknown action &#39;&#39;"),
        ({"action": "<script>"}, "Unknown action &#39;&lt;script&gt;&#39;"),
        ({"version": "two"}, "&#39;two&#39; is not a migration version."),
        ({"version": ""}, "&#39;&#39; is not a migration version."),
        ({"version": "-1"}, "&#39;-1&#39; is not a migration version."),
        ({"version": "\u0663"}, "is not a migration version."),  # a digit, but not an ASCII one
        ({"version": "9" * 100}, "is not a migration version."),  # a part of at most 99 digits
        ({"version": "1." * 2000}, "is not a migration version."),
    ],
)
async def test_a_request_with_a_bad_action_or_version_is_a_400_page(
    admin: Panel, fields: dict[str, str], message: str
) -> None:
    await admin.publish(V1)
    client_id = await admin.client("shop", failed(V1, "x"))
    response = await admin.ask(client_id, **{"action": "reapply", "version": "1", **fields})  # type: ignore[arg-type]
    assert response.status_code == 400
    assert "<h1>Bad request</h1>" in response.text and message in response.text
    if "action" in fields:
        every = await admin.http.post(
            "/admin/migrations/1/actions", data={"csrf": await admin.csrf(), **fields}
        )
        assert every.status_code == 400 and message in every.text
    assert await admin.store.actions() == []


async def test_a_request_the_store_refuses_is_a_422_page_with_its_reason(admin: Panel) -> None:
    await admin.publish(V1, V2)
    client_id = await admin.client("shop", applied(V1))
    cases = [
        (
            await admin.ask(client_id, "reapply", 9),
            "version 9 is not published",
            f"/admin/clients/{client_id}",
        ),
        (await admin.ask(424242, "revert", 1), "no client with id 424242", "/admin/clients/424242"),
        (await admin.ask_all("reapply", 1), "there is nothing to reapply", "/admin/migrations"),
        (await admin.ask_all("revert", 2), "there is nothing to revert", "/admin/migrations"),
        (await admin.ask_all("revert", 9), "version 9 is not published", "/admin/migrations"),
    ]
    for response, reason, back in cases:
        assert response.status_code == 422, reason
        assert response.headers["content-type"].startswith("text/html")
        assert "<h1>Request refused</h1>" in response.text
        assert "Nothing was requested: " in response.text and reason in response.text
        assert f'<a href="{back}">Back</a>' in response.text
    assert await admin.store.actions() == []
    assert (
        await admin.http.post("/admin/migrations/one/actions", data={"csrf": await admin.csrf()})
    ).status_code == 400  # "one" is no version
    assert (await admin.http.get(f"/admin/clients/{client_id}/actions")).status_code == 405


async def test_requests_for_every_client_from_the_migrations_page(any_admin: Panel) -> None:
    admin = any_admin
    ids = await _fleet(admin)
    dying = await admin.client("dying", applied(V1), dead(V2_OTHER, "boom"))
    page = await admin.page("/admin/migrations")
    v1 = page.split('<tr id="v1">', 1)[1].split("</tr>", 1)[0]
    v2 = page.split('<tr id="v2">', 1)[1].split("</tr>", 1)[0]
    assert "Re-apply on every client that failed it" not in v1 and "Revert on every client" in v1
    assert "Re-apply on every client that failed it" in v2 and "Revert on every client" in v2
    # Each says how many clients it reaches, and is sent only with the migration's name typed.
    assert "Revert this and every later migration on every client that applied it: " in v1
    assert '<strong class="reach">5 clients</strong>. Type <code>0001_users</code> to confirm:' in v1
    assert '<input type="text" name="confirm_name" required' in v1
    assert "Revert on every client (5)</button>" in v1
    assert '<strong class="reach">2 clients</strong>. Type <code>0002_email</code>' in v2  # failing, dying
    assert "Re-apply on every client that failed it (2)</button>" in v2
    assert 'action="/admin/migrations/2/actions"' in v2
    wrong = await admin.ask_all("reapply", 2, typed="0001_users")
    assert wrong.status_code == 400 and "you typed &#39;0001_users&#39;" in wrong.text
    assert await admin.store.actions() == []  # nothing requested

    reapply = await admin.ask_all("reapply", 2, typed=" 0002_email ")  # spaces around are forgiven
    assert reapply.status_code == 303
    assert reapply.headers["location"] == "/admin/migrations?requested=2#v2"
    records = await admin.store.actions()
    assert sorted(r.client_id for r in records) == sorted([ids["failing"], dying])
    assert {(r.action, r.version, r.requested_by, r.state) for r in records} == {
        ("reapply", 2, NAME, "pending")
    }
    flash = await admin.page(reapply.headers["location"])
    assert "2 requests recorded, one per client: they hear of them at their next poll." in flash

    revert = await admin.ask_all("revert", 1)
    assert revert.status_code == 303 and revert.headers["location"] == "/admin/migrations?requested=5#v1"
    reverts = [r for r in await admin.store.actions() if r.action == "revert"]
    applied_v1 = {ids["latest"], ids["behind"], ids["failing"], ids["drift"], dying}
    assert {r.client_id for r in reverts} == applied_v1


async def test_a_newer_request_supersedes_one_not_picked_up(any_admin: Panel) -> None:
    admin = any_admin
    await admin.publish(V1, V2)
    client_id = await admin.client("shop", applied(V1), dead(V2, "boom"))
    assert (await admin.ask(client_id, "revert", 1)).status_code == 303
    assert (await admin.ask(client_id, "reapply", 2)).status_code == 303
    newer, older = await admin.store.actions()
    assert (older.state, older.detail) == ("superseded", f"replaced by request {newer.id}")
    page = await admin.page(f"/admin/clients/{client_id}")
    assert [row[0:3] + row[5:] for row in request_rows(page)] == [
        [str(newer.id), "reapply", "2", "pending", ""],
        [str(older.id), "revert", "1", "superseded", f"replaced by request {newer.id}"],
    ]
    assert '<td class="rstate superseded"' in page
    assert "requested: revert" not in page and "requested: reapply" in page
    actions = await admin.page("/admin/actions")
    assert [row[0:3] + row[6:] for row in request_rows(actions)] == [
        [str(newer.id), "shop", "reapply", "pending", ""],
        [str(older.id), "shop", "revert", "superseded", f"replaced by request {newer.id}"],
    ]


async def test_the_actions_page_lists_the_latest_requests_newest_first(admin: Panel) -> None:
    assert "Nothing was asked of any client yet" in await admin.page("/admin/actions")
    await admin.publish(V1)
    shop = await admin.client("shop", applied(V1))
    depot = await admin.client("depot", applied(V1))
    for i in range(app_module.ACTIONS_SHOWN):
        await admin.store.request_action("revert", 1, [shop if i % 2 else depot], f"admin {i}")
    await admin.store.request_action("revert", 1, [shop], NAME)
    html = await admin.page("/admin/actions")
    assert 'href="/admin/actions" aria-current="page">Actions</a>' in html
    rows = request_rows(html)
    assert len(rows) == app_module.ACTIONS_SHOWN
    ids = [int(r[0]) for r in rows]
    assert ids == sorted(ids, reverse=True) and ids[0] == ids[-1] + app_module.ACTIONS_SHOWN - 1
    assert rows[0][1:5] == ["shop", "revert", "1", NAME]
    assert f'<td><a href="/admin/clients/{shop}#requests">shop</a></td>' in html
    assert f'<td><a href="/admin/clients/{depot}#requests">depot</a></td>' in html
    assert "admin 0<" not in html  # the oldest is past the latest 200


async def test_what_clients_and_admins_wrote_is_escaped_in_requests(admin: Panel) -> None:
    await admin.publish(V1, V2)
    client_id = await admin.client("<i>shop</i>", applied(V1), applied(V2))
    [record] = await admin.store.request_action("revert", 2, [client_id], "<b>Eve</b>")
    await admin.store.record_answers(
        client_id,
        [ActionResult(record.id, "failed", 'the revert of 0002 failed: <script>alert("x")</script>')],
    )
    [pending] = await admin.store.request_action("reapply", 2, [client_id], "<b>Eve</b>")
    for path in (f"/admin/clients/{client_id}", "/admin/actions", "/admin/"):
        html = await admin.page(path)
        assert "<script>" not in html and "<b>Eve</b>" not in html and "<i>shop</i>" not in html, path
    page = await admin.page(f"/admin/clients/{client_id}")
    assert "the revert of 0002 failed: &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "&lt;b&gt;Eve&lt;/b&gt;" in page
    assert "revert this and every later migration on &lt;i&gt;shop&lt;/i&gt;</label>" in page
    assert f'title="request {pending.id} by &lt;b&gt;Eve&lt;/b&gt;, ' in page
    actions = await admin.page("/admin/actions")
    assert ">&lt;i&gt;shop&lt;/i&gt;</a>" in actions and "&lt;script&gt;" in actions
