"""The admin panel (migsync.server.panel) in-process through httpx.ASGITransport: the login, the
session cookie, CSRF, escaping, and what the pages show (the filters and the counts)."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from migsync.core.errors import BackendError, ConfigError
from migsync.core.signing import load_private_key, write_keypair
from migsync.core.wire import StatusReport
from migsync.server import ClientRecord, FleetEntry, Store
from migsync.server.app import create_app
from migsync.server.panel import LOGIN_COOKIE, SESSION_COOKIE, PanelOptions, create_panel, views
from migsync.server.panel.sessions import Sessions
from migsync.testing.backend_suite import migration

ADMIN = "panel-admin-token"
SECRET = b"s" * 32
V1 = migration(1, "0001_users", "CREATE TABLE users (id INTEGER)")
V2 = migration(2, "0002_email", "ALTER TABLE users ADD COLUMN email TEXT")
V2_OTHER = migration(2, "0002_email", "ALTER TABLE users ADD COLUMN mail TEXT")
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

    async def login(self, token: str = ADMIN, next_url: str | None = None) -> httpx.Response:
        page = await self.http.get("/admin/login")
        assert page.status_code == 200
        form = {"token": token, "csrf": form_csrf(page.text)}
        if next_url is not None:
            form["next"] = next_url
        return await self.http.post("/admin/login", data=form)

    async def page(self, path: str) -> str:
        response = await self.http.get(path)
        assert response.status_code == 200, (response.status_code, response.headers.get("location"))
        return response.text


def form_csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def applied(m: Any, checksum: str | None = None) -> StatusReport:
    return StatusReport(m.version, True, None, 1, checksum or m.checksum)


def failed(m: Any, error: str, attempts: int = 1) -> StatusReport:
    return StatusReport(m.version, False, error, attempts, m.checksum)


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
    tmp_path: Path, base_url: str = "http://migsync.test", **options: Any
) -> AsyncIterator[Panel]:
    tmp_path.mkdir(exist_ok=True)
    url = f"sqlite:///{tmp_path / 'server.db'}"
    key_path = tmp_path / "signing.key"
    write_keypair(key_path)
    options.setdefault("login_delay", 0)
    options.setdefault("secret", SECRET)
    app = create_app(url, admin_token=ADMIN, cache_seconds=0, panel=PanelOptions(**options))
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


# -- login and session ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/admin/", "/admin/migrations", "/admin/clients/1", "/admin/?failing=1"])
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
    async with panel_on(tmp_path, login_delay=0.2) as panel:
        started = time.monotonic()
        response = await panel.login("not-the-token")
        assert time.monotonic() - started >= 0.2  # slowed down against guessing
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
    assert "<h1>Fleet</h1>" in await panel.page("/admin/")
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
    version, sid, expires, mac = value.split(".")
    return ".".join((version, sid, str(int(expires) + 3600), mac))


async def test_a_forged_expired_or_foreign_session_cookie_is_refused(panel: Panel) -> None:
    _, good = Sessions(SECRET, 60).issue()
    _, expired = Sessions(SECRET, 60, clock=lambda: time.time() - 120).issue()
    _, foreign = Sessions(b"x" * 32, 60).issue()
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
    no_cookie = await panel.http.post("/admin/login", data={"token": ADMIN, "csrf": "x"})
    assert no_cookie.status_code == 403
    assert "did not come from this panel" in no_cookie.text
    page = await panel.http.get("/admin/login")
    for csrf in ("", "0" * 64, Sessions(SECRET, 60).login_csrf("another-nonce-of-the-attacker")):
        response = await panel.http.post("/admin/login", data={"token": ADMIN, "csrf": csrf})
        assert response.status_code == 403, csrf
        assert SESSION_COOKIE not in set_cookies(response)
    missing = await panel.http.post("/admin/login", data={"token": ADMIN})
    assert missing.status_code == 403
    assert (
        await panel.http.post("/admin/login", data={"token": ADMIN, "csrf": form_csrf(page.text)})
    ).status_code == 303


async def test_logout_needs_the_sessions_csrf_token_and_ends_the_session(admin: Panel) -> None:
    page = await admin.page("/admin/")
    value = admin.http.cookies[SESSION_COOKIE]
    other_session, _ = Sessions(SECRET, 60).issue()
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
    for response in [login, *[await panel.http.get(path) for path in ("/admin/", "/admin/migrations")]]:
        assert response.status_code == 200
        csp = response.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
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
        PanelOptions(login_delay=-1),
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
    for path in ("/admin/", f"/admin/clients/{client_id}", "/admin/?failing=1"):
        html = await admin.page(path)
        assert "<script>" not in html and "<b>shop</b>" not in html, path
        assert "&lt;b&gt;shop&lt;/b&gt;" in html, path
    grid = await admin.page("/admin/")
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


async def test_the_grid_counts_and_filters(admin: Panel) -> None:
    ids = await _fleet(admin)
    html = await admin.page("/admin/")
    assert shown_clients(html) == list(ids.values())
    counts = [count(html, name) for name in ("latest", "behind", "failing", "stale")]
    assert counts == [1, 5, 2, 1]
    failing = await admin.page("/admin/?failing=1")
    assert shown_clients(failing) == [ids["failing"], ids["drift"]]
    assert count(failing, "behind") == 5  # the counts are the whole fleet's
    assert 'name="failing" value="1" checked' in failing
    assert shown_clients(await admin.page("/admin/?stale=1")) == [ids["stale"]]
    assert shown_clients(await admin.page("/admin/?failing=1&stale=1")) == []
    assert "No client matches the filters." in await admin.page("/admin/?failing=1&stale=1")


async def test_the_grid_has_a_cell_per_client_and_migration(admin: Panel) -> None:
    ids = await _fleet(admin)
    html = await admin.page("/admin/")

    def cells(client_id: int) -> list[str]:
        row = html.split(f'<tr id="client-{client_id}"', 1)[1].split("</tr>", 1)[0]
        return re.findall(r'<td class="cell (\w+)"', row)

    assert cells(ids["latest"]) == ["applied", "applied"]
    assert cells(ids["behind"]) == ["applied", "pending"]
    assert cells(ids["failing"]) == ["applied", "failed"]
    assert cells(ids["drift"]) == ["applied", "drift"]
    assert cells(ids["new"]) == ["pending", "pending"]
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
    assert re.findall(r'<td class="state (\w+)"', page) == ["applied", "failed"]
    drift = await admin.page(f"/admin/clients/{ids['drift']}")
    assert f"<code>{V2.checksum}</code>; published: <code>{V2_OTHER.checksum}</code>" in drift
    new = await admin.page(f"/admin/clients/{ids['new']}")
    assert re.findall(r'<td class="state (\w+)"', new) == ["pending", "pending"]
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
    app = create_app(url, admin_token=ADMIN, seen_flush=3600, panel=PanelOptions(login_delay=0))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://migsync.test") as http:
            poll = await http.get("/api/migrations/pending", headers={"Authorization": f"Bearer {token}"})
            assert poll.status_code == 200
            page = await http.get("/admin/login")
            await http.post("/admin/login", data={"token": ADMIN, "csrf": form_csrf(page.text)})
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

    _, cookie = Sessions(SECRET, 60).issue()
    url = f"sqlite:///{tmp_path / 'server.db'}"
    async with Store.open(url):
        pass
    not_open = create_app(url, admin_token=ADMIN, panel=PanelOptions(secret=SECRET))  # no lifespan
    failing = create_panel(lambda: Down(), ADMIN, PanelOptions(secret=SECRET))  # type: ignore[arg-type, return-value]
    for app, path, message in (
        (not_open, "/admin/", "the store is not open"),
        (failing, "/", "The store failed: the database went away"),
    ):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://migsync.test") as http:
            http.cookies.set(SESSION_COOKIE, cookie)
            response = await http.get(path)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert message in response.text and "<h1>Store unavailable</h1>" in response.text


async def test_the_panel_follows_the_path_it_is_mounted_at(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    async with Store.open(url):
        pass
    api = create_app(url, admin_token=ADMIN, panel=PanelOptions(login_delay=0))

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
            login = await http.post("/sync/admin/login", data={"token": ADMIN, "csrf": form_csrf(page.text)})
            assert login.headers["location"] == "/sync/admin/"
            assert "Path=/sync/admin" in set_cookies(login)[SESSION_COOKIE]
            assert "<h1>Fleet</h1>" in (await http.get("/sync/admin/")).text
