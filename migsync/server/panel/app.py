"""The admin panel's Starlette app: login, the fleet grid, one client, the published migrations,
and the requests an admin makes of clients (re-apply, revert).

:func:`migsync.server.app.create_app` mounts it at ``/admin``; on its own::

    panel = create_panel(lambda: store, admin_token="...")

It works through the store the callable returns (the API's own: it never opens one). The
only thing it writes is requests to clients (:meth:`Store.request_action
<migsync.server.store.Store.request_action>`), recorded with the name the admin logged in
with. Every page needs a session (see :mod:`.sessions`); every POST needs the CSRF token of
the form it came from. Pages are rendered by Jinja2 with autoescaping on, so nothing a
client reported (names, errors, answers) can become markup.
"""

from __future__ import annotations

import hmac
import importlib.resources
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import attrs
import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from migsync.core.errors import ConfigError, MigsyncError
from migsync.core.version import Version, VersionError
from migsync.server import rollouts as r
from migsync.server.bodies import ApiError
from migsync.server.panel import rollout_views, views
from migsync.server.panel.forms import (
    action_fields,
    check_typed_name,
    clients_query,
    flag,
    read_form,
    requested_count,
)
from migsync.server.panel.sessions import MAX_NAME, Session, Sessions, clean_name
from migsync.server.records import ActionRecord, PublishedMigration
from migsync.server.store import Store
from migsync.server.throttle import AuthThrottle
from migsync.server.validation import MAX_ID

__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "PanelOptions", "create_panel"]

SESSION_COOKIE = "migsync_panel"
#: The login page's own cookie: the nonce its form's CSRF token is bound to.
LOGIN_COOKIE = "migsync_panel_login"
_LOGIN_COOKIE_SECONDS = 3600
#: The Actions page shows this many requests, the newest.
ACTIONS_SHOWN = 200
#: The rollouts page charts the open rollouts and this many of the latest ended ones; the
#: older ones are listed.
ENDED_CHARTED = 3
#: The clients page shows each client's status for this many of the newest migrations.
NEWEST_SHOWN = 3
#: Times per chart.
CHART_POINTS = 24
_DONE = {
    "pause": "paused",
    "resume": "resumed",
    "advance": "advanced",
    "abort": "aborted",
    "start": "started",
}

log = logging.getLogger("migsync.server.panel")

#: What the home page's "Start a rollout" form offers (the defaults of ``migsync rollout start``).
START_DEFAULTS = {
    "stages": "canary,10%,all",
    "success": f"{r.DEFAULT_SUCCESS:.0%}",
    "error": f"{r.DEFAULT_ERROR:.0%}",
    "soak": f"{r.DEFAULT_SOAK / 60:g}m",
}

_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; connect-src 'self'; "
        "form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


@attrs.frozen
class PanelOptions:
    """How the panel runs. ``create_app(..., panel=PanelOptions(...))`` passes them on."""

    #: Mark the cookies ``Secure`` on every request, not only on https ones. Set it when a TLS
    #: proxy the server does not trust for ``X-Forwarded-Proto`` stands in front of it.
    secure_cookie: bool = False
    #: How long a login lasts, in seconds (8 hours).
    session_seconds: float = 8 * 3600.0
    #: The key sessions are signed with (at least 32 bytes). None: a random one per app, so
    #: a restart logs everyone out. Give processes that share the logins the same secret.
    secret: bytes | None = None
    #: How often, in seconds, a page with a live part (rollouts, clients) fetches it again in
    #: the browser (panel.js); 0: never.
    refresh_seconds: float = 5.0


class LoginRequired(Exception):
    """No valid session: the answer is a redirect to the login form."""


def create_panel(
    store: Callable[[], Store],
    admin_token: str,
    options: PanelOptions | None = None,
    *,
    before_read: Callable[[], Awaitable[None]] | None = None,
    after_request: Callable[[], None] | None = None,
    throttle: AuthThrottle | None = None,
    requests_refused: str | None = None,
) -> Starlette:
    """The panel on the store ``store()`` returns, behind ``admin_token``.

    ``before_read`` is awaited before each page reads the store: the API passes the
    writing of its pending "seen" marks, so a page is never behind the API it is mounted in.
    ``after_request`` is called after the panel recorded requests to clients: the API
    passes the dropping of its cached client states, so the clients hear of them at once.
    ``throttle`` counts wrong admin tokens per address (the API passes its own, so that both
    share one count); None: one of the panel's own, with the default limit.
    ``requests_refused``: why this server makes no requests to clients (it has no request key to
    sign them with); every page then says so, and a request is refused with that reason.
    """
    options = options or PanelOptions()
    if not admin_token or not admin_token.strip():
        raise ConfigError("the admin token must not be empty")
    if options.refresh_seconds < 0:
        raise ConfigError("the panel's refresh_seconds must be >= 0")
    if options.session_seconds <= 0:
        raise ConfigError("the panel's session_seconds must be > 0")
    if options.secret is not None and len(options.secret) < 32:
        raise ConfigError("the panel's secret must be at least 32 bytes")
    panel = _Panel(store, admin_token, options, before_read, after_request, throttle or AuthThrottle())
    panel.requests_refused = requests_refused
    routes = [
        Route("/", panel.rollouts, methods=["GET"], name="rollouts"),
        Route("/rollouts", panel.start_rollout, methods=["POST"], name="start_rollout"),
        Route("/rollouts/{rollout_id}", panel.rollout, methods=["GET"], name="rollout"),
        Route("/rollouts/{rollout_id}", panel.operate, methods=["POST"]),
        Route("/clients", panel.fleet, methods=["GET"], name="fleet"),
        Route("/migrations", panel.migrations, methods=["GET"], name="migrations"),
        Route("/clients/{client_id}", panel.client, methods=["GET"], name="client"),
        Route("/clients/{client_id}/actions", panel.request_for_client, methods=["POST"]),
        Route("/migrations/{version}/actions", panel.request_for_all, methods=["POST"]),
        Route("/actions", panel.actions, methods=["GET"], name="actions"),
        Route("/login", panel.login_form, methods=["GET"], name="login"),
        Route("/login", panel.login, methods=["POST"]),
        Route("/logout", panel.logout, methods=["POST"], name="logout"),
        Route("/panel.css", panel.stylesheet, methods=["GET"], name="stylesheet"),
        Route("/panel.js", panel.script, methods=["GET"], name="script"),
    ]
    handlers: dict[Any, Any] = {
        LoginRequired: panel.to_login,
        HTTPException: panel.http_error,
        MigsyncError: panel.store_error,
        ApiError: panel.store_error,
    }
    return Starlette(routes=routes, exception_handlers=handlers)


class _Panel:
    def __init__(
        self,
        store: Callable[[], Store],
        admin_token: str,
        options: PanelOptions,
        before_read: Callable[[], Awaitable[None]] | None,
        after_request: Callable[[], None] | None = None,
        throttle: AuthThrottle | None = None,
    ) -> None:
        self.store = store
        #: why requests to clients are off (None: they are on)
        self.requests_refused: str | None = None
        self.throttle = throttle or AuthThrottle()
        self.after_request = after_request
        self.admin_token = admin_token.encode()
        self.options = options
        self.before_read = before_read
        self.sessions = Sessions(options.secret or secrets.token_bytes(32), options.session_seconds)
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("migsync.server.panel", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            when=views.when,
            ago=views.ago,
            short=views.short,
            span=views.span,
            takes=rollout_views.takes,
            problems=views.problems,
            newest=views.newest,
        )
        static = importlib.resources.files("migsync.server.panel").joinpath("static")
        self.css = static.joinpath("panel.css").read_bytes()
        self.js = static.joinpath("panel.js").read_bytes()

    # -- sessions, cookies and forms ------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        return self.sessions.verify(request.cookies.get(SESSION_COOKIE))

    def require(self, request: Request) -> Session:
        """The request's session; without one, the answer is the login form."""
        session = self.session(request)
        if session is None:
            raise LoginRequired
        return session

    async def checked_form(self, request: Request, session: Session) -> dict[str, str]:
        """The posted form, once its CSRF token is the session's; 403 otherwise."""
        form = await read_form(request)
        if not self.sessions.check_csrf(session, form.get("csrf")):
            raise HTTPException(403, _CSRF_REFUSED)
        return form

    def _set_cookie(
        self, request: Request, response: Response, name: str, value: str, seconds: float
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=int(seconds),
            path=_root(request) or "/",
            secure=self._secure(request),
            httponly=True,
            samesite="strict",
        )

    def _clear_cookie(self, request: Request, response: Response, name: str) -> None:
        response.delete_cookie(
            name, path=_root(request) or "/", secure=self._secure(request), httponly=True, samesite="strict"
        )

    def _secure(self, request: Request) -> bool:
        return self.options.secure_cookie or request.url.scheme == "https"

    def render(
        self, request: Request, template: str, session: Session | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        """The page; with ``?fragment=1`` (what panel.js asks for to refresh a page in place),
        only its ``live`` block, for a page that has one."""
        page = self.env.get_template(template)
        values = {
            "root": _root(request),
            "session": session,
            "csrf": self.sessions.csrf(session) if session is not None else None,
            "now": time.time(),
            "requests_refused": self.requests_refused,
            "refresh": self.options.refresh_seconds,
            "chart_w": rollout_views.CHART_W,
            "chart_h": rollout_views.CHART_H,
            **context,
        }
        if "live" in page.blocks and flag(request.query_params.get("fragment")) and status == 200:
            html = "".join(page.blocks["live"](page.new_context(values)))
        else:
            html = page.render(values)
        return HTMLResponse(html, status_code=status, headers=_PAGE_HEADERS)

    async def _read(
        self, client_id: int | None = None
    ) -> tuple[list[PublishedMigration], list[views.ClientRow]]:
        """The published migrations and the fleet's rows; with ``client_id``, only that client's
        row, with every request made of it."""
        if self.before_read is not None:
            await self.before_read()
        store = self.store()
        published = await store.migrations()
        # One read for the fleet and the requests its holds come from; a client's page lists all
        # of that client's requests.
        fleet, requests = await store.fleet_view(client_id)
        if client_id is not None:
            requests = await store.actions(client_id=client_id)
        return published, views.client_rows(fleet, published, requests)

    # -- login and logout ------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        if self.session(request) is not None:
            return RedirectResponse(self._next(request, request.query_params.get("next")), 303)
        return self._login_page(request, request.query_params.get("next"))

    def _login_page(
        self,
        request: Request,
        next_url: str | None,
        error: str | None = None,
        name: str = "",
        status: int = 200,
    ) -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE) or ""
        if not 16 <= len(nonce) <= 64:
            nonce = Sessions.login_nonce()
        response = self.render(
            request,
            "login.html",
            None,
            status=status,
            login_csrf=self.sessions.login_csrf(nonce),
            next=self._next(request, next_url),
            error=error,
            name=name,
            max_name=MAX_NAME,
        )
        self._set_cookie(request, response, LOGIN_COOKIE, nonce, _LOGIN_COOKIE_SECONDS)
        return response

    async def login(self, request: Request) -> Response:
        form = await read_form(request)
        if not self.sessions.check_login_csrf(request.cookies.get(LOGIN_COOKIE), form.get("csrf")):
            raise HTTPException(403, _CSRF_REFUSED)
        name = clean_name(form.get("name", ""))
        if name is None:
            error = f"Say who you are: a name of 1 to {MAX_NAME} printable characters."
            return self._login_page(request, form.get("next"), error, form.get("name", ""), status=400)
        address = _address(request)
        wait = self.throttle.retry_after(address)
        if wait is not None:  # refused before the token is looked at: a right guess is no use now
            error = f"Too many wrong tokens from your address: try again in {wait} seconds."
            response = self._login_page(request, form.get("next"), error, name, status=429)
            response.headers["Retry-After"] = str(wait)
            return response
        if not hmac.compare_digest(form.get("token", "").strip().encode(), self.admin_token):
            log.debug("panel: a wrong admin token from %s (as %r)", address, name)
            self.throttle.failed(address, "wrong admin tokens at the panel's login")
            return self._login_page(request, form.get("next"), "That is not the admin token.", name)
        _session, value = self.sessions.issue(name)
        log.info("panel: %s logged in from %s", name, _address(request))
        response = RedirectResponse(self._next(request, form.get("next")), 303)
        self._set_cookie(request, response, SESSION_COOKIE, value, self.options.session_seconds)
        self._clear_cookie(request, response, LOGIN_COOKIE)
        return response

    async def logout(self, request: Request) -> Response:
        session = self.require(request)
        await self.checked_form(request, session)
        self.sessions.revoke(session)
        response = RedirectResponse(f"{_root(request)}/login", 303)
        self._clear_cookie(request, response, SESSION_COOKIE)
        return response

    @staticmethod
    def _next(request: Request, wanted: str | None) -> str:
        """Where to go after the login: ``wanted`` if it is a page of this panel, else the fleet."""
        root = _root(request)
        if (
            wanted
            and wanted.startswith(f"{root}/")
            and "//" not in wanted
            and "\\" not in wanted
            and wanted.isprintable()
        ):
            return wanted
        return f"{root}/"

    # -- pages -----------------------------------------------------------------------------------

    async def fleet(self, request: Request) -> Response:
        """The clients, a page at a time: searched, filtered, sorted; each row leads with what is
        wrong and the newest migrations."""
        session = self.require(request)
        query = clients_query(request)
        if self.before_read is not None:
            await self.before_read()
        store = self.store()
        now = time.time()
        try:
            listing = await store.client_list(
                query.which(now),
                sort=query.sort,
                limit=query.size,
                cursor=query.after,
                stale_before=now - views.STALE_AFTER,
            )
        except ConfigError as exc:
            raise HTTPException(400, f"{exc}.") from None
        published = await store.migrations()
        rows = views.client_rows(listing.entries, published, listing.requests)
        return self.render(
            request,
            "clients.html",
            session,
            q=query,
            rows=rows,
            listing=listing,
            newest=[m for m in reversed(published[-NEWEST_SHOWN:])],
            newest_count=NEWEST_SHOWN,
            next_url=query.url(_root(request), after=listing.page.next_cursor)
            if listing.page.next_cursor
            else None,
            first_url=query.url(_root(request), after=None) if query.after else None,
        )

    async def rollouts(self, request: Request) -> Response:
        """The home page: every open rollout (and the latest ended ones) with its charts and
        controls, then the older ones listed."""
        session = self.require(request)
        if self.before_read is not None:
            await self.before_read()
        store = self.store()
        every = await store.rollouts()  # newest first
        charted, ended, ended_charted = [], [], 0
        for rollout in every:
            if rollout.state.state in r.OPEN or ended_charted < ENDED_CHARTED:
                ended_charted += rollout.state.state not in r.OPEN
                charted.append(
                    rollout_views.rollout_view(await store.rollout_status(rollout.id, CHART_POINTS))
                )
            else:
                ended.append(rollout)
        return self.render(
            request,
            "rollouts.html",
            session,
            views=charted,
            ended=ended,
            done=_done(request),
            published=await store.migrations(),
            defaults=START_DEFAULTS,
        )

    async def start_rollout(self, request: Request) -> Response:
        """Start a rollout from the home page's form (as ``migsync rollout start`` does), recorded
        with the admin's name. A bad field is one message, and nothing is started."""
        session = self.require(request)
        form = await self.checked_form(request, session)
        try:
            versions = [Version.parse(v) for v in form.get("versions", "").replace(" ", ",").split(",") if v]
            if not versions:
                raise ConfigError("give the versions to roll out (4, or 4,5)")
            stages = r.parse_stages(form.get("stages", ""))
            policy = r.Policy(
                r.parse_ratio(
                    form.get("success_threshold") or START_DEFAULTS["success"], "success threshold"
                ),
                r.parse_ratio(form.get("error_threshold") or START_DEFAULTS["error"], "error threshold"),
                r.parse_duration(form.get("soak") or START_DEFAULTS["soak"]),
                form.get("on_failure") or "pause",
            )
            rollout = await self.store().start_rollout(versions, stages, policy, session.name)
        except (ConfigError, VersionError) as exc:
            return self.render(
                request,
                "error.html",
                session,
                status=422,
                title="Not started",
                message=f"No rollout was started: {exc}.",
                back=f"{_root(request)}/#start",
            )
        if self.after_request is not None:
            self.after_request()  # the clients' next polls see what they are offered now
        log.info(
            "panel: %s (from %s) started rollout %s of %s",
            session.name,
            _address(request),
            rollout.id,
            ", ".join(v.text for v in versions),
        )
        return RedirectResponse(f"{_root(request)}/rollouts/{rollout.id}?done=start", 303)

    async def rollout(self, request: Request) -> Response:
        session = self.require(request)
        rollout_id = _rollout_id(request)
        if self.before_read is not None:
            await self.before_read()
        try:
            status = await self.store().rollout_status(rollout_id, CHART_POINTS)
        except ConfigError:
            raise HTTPException(404, f"There is no rollout {rollout_id}.") from None
        return self.render(
            request, "rollout.html", session, v=rollout_views.rollout_view(status), done=_done(request)
        )

    async def operate(self, request: Request) -> Response:
        """Pause, resume, advance or abort a rollout, recorded with the admin's name."""
        session = self.require(request)
        rollout_id = _rollout_id(request)
        form = await self.checked_form(request, session)
        op = form.get("op", "")
        if op not in r.OPERATIONS:
            raise HTTPException(400, f"Unknown operation {op[:40]!r}: use one of {', '.join(r.OPERATIONS)}.")
        root = _root(request)
        back = f"{root}/rollouts/{rollout_id}" if form.get("back") == "rollout" else f"{root}/"
        try:
            await self.store().rollout_operate(rollout_id, op, session.name)
        except ConfigError as exc:
            return self.render(
                request,
                "error.html",
                session,
                status=409,
                title="Not done",
                message=f"Rollout {rollout_id} was not changed: {exc}.",
                back=back,
            )
        log.info("panel: %s (from %s) did %s on rollout %s", session.name, _address(request), op, rollout_id)
        return RedirectResponse(f"{back}?done={op}#rollout-{rollout_id}", 303)

    async def client(self, request: Request) -> Response:
        session = self.require(request)
        client_id = _client_id(request)
        published, rows = await self._read(client_id)
        row = next((r for r in rows if r.client_id == client_id), None)
        if row is None:
            raise HTTPException(404, f"There is no client {client_id}.")
        return self.render(
            request, "client.html", session, row=row, published=published, requested=requested_count(request)
        )

    async def migrations(self, request: Request) -> Response:
        session = self.require(request)
        _published, migration_rows, clients = await self._migration_rows()
        return self.render(
            request,
            "migrations.html",
            session,
            migrations=migration_rows,
            clients=clients,
            requested=requested_count(request),
        )

    async def _migration_rows(self) -> tuple[list[PublishedMigration], list[views.MigrationRow], int]:
        """The published migrations, how the fleet stands on each (counted by the store; the
        few clients a revert holds worked out here) and how many clients there are."""
        if self.before_read is not None:
            await self.before_read()
        store = self.store()
        published = await store.migrations()
        tallies, counted, held, held_requests = await store.migration_tallies()
        held_rows = views.client_rows(held, published, held_requests)
        return (
            published,
            views.migration_rows_from(published, tallies, counted, held_rows),
            counted + len(held),
        )

    async def actions(self, request: Request) -> Response:
        session = self.require(request)
        records = await self.store().actions(limit=ACTIONS_SHOWN)
        return self.render(request, "actions.html", session, records=records, shown=ACTIONS_SHOWN)

    # -- requests to clients ---------------------------------------------------------------------

    async def request_for_client(self, request: Request) -> Response:
        """A re-apply or revert of one migration (the form's ``version``) on this page's client."""
        session = self.require(request)
        client_id = _client_id(request)
        form = await self.checked_form(request, session)
        action, version = action_fields(form, form.get("version"))
        back = f"{_root(request)}/clients/{client_id}"
        return await self._request(request, session, action, version, [client_id], back, "#requests")

    async def request_for_all(self, request: Request) -> Response:
        """A re-apply or revert of this migration on every client it makes sense for."""
        session = self.require(request)
        form = await self.checked_form(request, session)
        action, version = action_fields(form, str(request.path_params["version"]), confirm_box=False)
        back = f"{_root(request)}/migrations"
        _published, migration_rows, _clients = await self._migration_rows()
        row = next((m for m in migration_rows if m.migration.version == version), None)
        # One that is not published: the store says so; requests off: that is said first.
        if row is not None and self.requests_refused is None:
            check_typed_name(form, action, row.migration.name, row.reach(action))
        return await self._request(request, session, action, version, None, back, f"#v{version}")

    async def _request(
        self,
        request: Request,
        session: Session,
        action: str,
        version: Version,
        client_ids: list[int] | None,
        back: str,
        anchor: str,
    ) -> Response:
        if self.requests_refused is not None:
            return self.render(
                request,
                "error.html",
                session,
                status=409,
                title="Request refused",
                message=f"Nothing was requested: {self.requests_refused}.",
                back=back,
            )
        try:
            records = await self.store().request_action(action, version, client_ids, session.name)
        except ConfigError as exc:
            return self.render(
                request,
                "error.html",
                session,
                status=422,
                title="Request refused",
                message=f"Nothing was requested: {exc}.",
                back=back,
            )
        if self.after_request is not None:
            self.after_request()  # the clients hear of it at their very next poll
        log.info(
            "panel: %s (from %s) asked %s to %s version %s: request%s %s",
            session.name,
            _address(request),
            "every client" if client_ids is None else _names(records),
            action,
            version,
            "s" if len(records) != 1 else "",
            ", ".join(str(r.id) for r in records),
        )
        return RedirectResponse(f"{back}?requested={len(records)}{anchor}", 303)

    async def stylesheet(self, _request: Request) -> Response:
        return Response(
            self.css,
            media_type="text/css",
            headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    async def script(self, _request: Request) -> Response:
        return Response(
            self.js,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    # -- errors ----------------------------------------------------------------------------------

    async def to_login(self, request: Request, _exc: Exception) -> Response:
        login = f"{_root(request)}/login"
        if request.method not in ("GET", "HEAD"):  # a form posted after the session ended: start afresh
            return RedirectResponse(login, 303)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{login}?next={quote(target, safe='/')}", 303)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return self.render(
            request,
            "error.html",
            self.session(request),
            status=exc.status_code,
            title=_TITLES.get(exc.status_code, "Error"),
            message=exc.detail,
            back=None,
        )

    async def store_error(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, ApiError):
            message = exc.message
        else:  # what failed names the store (user, host, database): for the log only
            log.error("panel: the store failed: %s", exc)
            message = "The store is unavailable; try again later (the server's log says why)."
        response = self.render(
            request,
            "error.html",
            self.session(request),
            status=503,
            title="Store unavailable",
            message=message,
            back=None,
        )
        response.headers["Retry-After"] = "5"
        return response


_CSRF_REFUSED = (
    "This form has expired or did not come from this panel. Go back, reload the page and send it again."
)
_TITLES = {
    400: "Bad request",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Too large",
    415: "Unsupported form",
}


def _root(request: Request) -> str:
    """The path the panel is mounted at (``/admin``), without a trailing slash."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _address(request: Request) -> str:
    return request.client.host if request.client else "?"


def _names(records: list[ActionRecord]) -> str:
    return ", ".join(f"{r.client_name!r} ({r.client_id})" for r in records)


def _done(request: Request) -> str | None:
    """What the redirect after a rollout's operation says was done (None: no word)."""
    op = request.query_params.get("done", "")
    return f"Rollout {_DONE[op]}: recorded with your name in its audit." if op in _DONE else None


def _rollout_id(request: Request) -> int:
    """The page's rollout id; 404 for anything that is not one (as :func:`_client_id`)."""
    text = str(request.path_params["rollout_id"])
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or int(text) > MAX_ID:
        raise HTTPException(404, f"There is no rollout {text[:20]}.")
    return int(text)


def _client_id(request: Request) -> int:
    """The page's client id; 404 for anything that is not one a store can hold. Parsed here, not
    by the route's ``int`` convertor: that takes any run of digits, and ``int()`` of 5000 of them
    raises (a 500) while one past the store's integer range fails in the store (a 503)."""
    text = str(request.path_params["client_id"])
    client_id = int(text) if text.isascii() and text.isdigit() and len(text) <= 10 else MAX_ID + 1
    if client_id > MAX_ID:
        raise HTTPException(404, f"There is no client {text[:20]}.")
    return client_id
