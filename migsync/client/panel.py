"""``migsync client panel``: one client database's state in a browser, read-only, for support on site.

::

    app = create_client_panel("sqlite:///app.db")   # served by `migsync client panel --port 8080`

One page, rendered by the admin panel's templates and stylesheet: every
migration this database knows with its state and its last error in full,
the hold (a revert the server asked for), the admin's requests and this
client's answers, and what waits to be told to the server (reports, answers,
entity changes). It reads the database on every request and writes nothing:
it opens no transaction that takes a write lock, so it never holds up the
application or a sync. There is no login: it listens on loopback by default,
and a support person on the machine is trusted with what the database holds
anyway. Nothing here imports the server's store (SQLAlchemy).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from migsync.client.actions import ClientActions
from migsync.client.outbox import ReportOutbox
from migsync.core.client import Client
from migsync.core.clock import iso
from migsync.core.errors import MigsyncError
from migsync.core.plugins import Plugins

__all__ = ["create_client_panel"]

#: The admin panel's templates and stylesheet, found by path: importing their package would
#: import the server (SQLAlchemy).
_PANEL = Path(__file__).parent.parent / "server" / "panel"

_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'none'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


class _ClientPanel:
    def __init__(self, url: str, plugins: Plugins | None) -> None:
        self.url = url
        self.plugins = plugins
        self._client: Client | None = None
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_PANEL / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(when=lambda t: iso(t) or "never")
        self.css = (_PANEL / "static" / "panel.css").read_bytes()

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        client = Client.connect(self.url, plugins=self.plugins, sinks=[])
        async with client:
            self._client = client
            try:
                yield
            finally:
                self._client = None

    @property
    def client(self) -> Client:
        if self._client is None:
            raise MigsyncError("the database is not open: the panel's lifespan has not run")
        return self._client

    async def state(self) -> dict[str, Any]:
        """Everything the page shows, as plain data (also served as JSON)."""
        client = self.client
        backend = client.backend
        migrations = await client.status()
        actions = ClientActions(client.ledger, client.clock)
        outbox = ReportOutbox(backend, client.clock)
        waiting = await backend.fetch(
            f"SELECT COUNT(*) AS n FROM {backend.tables.changes} WHERE processed = FALSE"
        )
        unanswered = await actions.undelivered()
        hold = await client.ledger.held_from()
        return {
            "database": _display(self.url),
            "hold_from": None if hold is None else hold.text,
            "migrations": [m.to_json() for m in migrations],
            "requests": [
                {**r, "requested_at": iso(r["requested_at"]), "received_at": iso(r["received_at"])}
                for r in await actions.requests()
            ],
            "undelivered_reports": await outbox.count_undelivered(),
            "undelivered_answers": len(unanswered),
            "changes_waiting": int(waiting[0]["n"]),
        }

    async def page(self, request: Request) -> Response:
        try:
            state = await self.state()
        except MigsyncError as exc:
            html = self.env.get_template("error.html").render(
                root="",
                session=None,
                csrf=None,
                now=time.time(),
                title="Database unavailable",
                message=str(exc),
                back="/",
            )
            return HTMLResponse(html, status_code=503, headers=_HEADERS | {"Retry-After": "5"})
        html = self.env.get_template("client_local.html").render(
            root="", session=None, csrf=None, now=time.time(), **state
        )
        return HTMLResponse(html, headers=_HEADERS)

    async def as_json(self, _request: Request) -> Response:
        try:
            return JSONResponse(await self.state(), headers={"Cache-Control": "no-store"})
        except MigsyncError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    async def stylesheet(self, _request: Request) -> Response:
        return Response(self.css, media_type="text/css", headers={"X-Content-Type-Options": "nosniff"})


def _display(url: str) -> str:
    """``url`` without a password: the page may be shown to anyone at the machine."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))


def create_client_panel(url: str, *, plugins: Plugins | None = None) -> Starlette:
    """The read-only panel of the client database at ``url`` (which must exist).

    ``GET /`` is the page, ``GET /state.json`` the same as JSON, ``GET /panel.css`` its style.
    The database is opened in the app's lifespan and closed at its end.
    """
    panel = _ClientPanel(url, plugins)
    routes = [
        Route("/", panel.page, methods=["GET"]),
        Route("/state.json", panel.as_json, methods=["GET"]),
        Route("/panel.css", panel.stylesheet, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=panel.lifespan)
