"""The HTTP API: a Starlette app that serves the store to clients and to the admin.

::

    from migsync.server.app import create_app

    app = create_app("sqlite:///server.db", admin_token=os.environ["MIGSYNC_ADMIN_TOKEN"])

The store is opened in the app's lifespan and closed at its end; nothing is
global, so two apps (or a test's) never share anything. Starlette does not
run the lifespan of a mounted app: a parent app enters it from its own
(``async with api.router.lifespan_context(api): yield``).

An idle poll costs no store access at all: each process keeps, per client
token, the client and its ETag's parts (see :mod:`migsync.server.status`)
for ``cache_seconds``. A report through this process drops its client's
entry at once; a publish (``migsync publish`` is another process) or a
report through another process is seen within ``cache_seconds``. A poll
marks its client seen in the store at most once per ``seen_interval``.
"""

from __future__ import annotations

import contextlib
import hmac
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from migsync.core.clock import iso
from migsync.core.errors import ConfigError, MigsyncError
from migsync.server.bodies import MAX_BODY, ApiError, read_json, status_reports
from migsync.server.records import ClientState, token_hash
from migsync.server.store import Store

__all__ = ["create_app"]

_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="migsync"'}


@attrs.define
class _Cached:
    state: ClientState
    at: float


class _Api:
    """One app's state: its store (while the lifespan runs) and its caches."""

    def __init__(
        self, store_url: str, admin_token: str, cache_seconds: float, seen_interval: float, max_body: int
    ) -> None:
        self.store_url = store_url
        self.admin_token = admin_token.encode()
        self.cache_seconds = cache_seconds
        self.seen_interval = seen_interval
        self.max_body = max_body
        self._store: Store | None = None
        #: token hash -> the client and its ETag's parts, as last read
        self._states: dict[str, _Cached] = {}
        #: client id -> when this process last wrote its last_seen_at (monotonic)
        self._touched: dict[int, float] = {}

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        async with Store.open(self.store_url, create=False) as store:
            self._store = store
            try:
                yield
            finally:
                self._store = None
                self._states.clear()
                self._touched.clear()

    @property
    def store(self) -> Store:
        if self._store is None:
            raise ApiError(
                503,
                "the store is not open: the app's lifespan has not run "
                "(a parent app must enter it from its own lifespan)",
            )
        return self._store

    # -- authentication --------------------------------------------------------------------------

    def _is_admin(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.admin_token)

    async def _client(self, request: Request, *, fresh: bool = False) -> tuple[str, ClientState]:
        """The client the bearer token names (its token hash and state); 401 or 403 otherwise."""
        token = _bearer(request)
        if self._is_admin(token):
            raise ApiError(403, "the admin token is not a client's; use the client's own token")
        digest = token_hash(token)
        now = time.monotonic()
        cached = self._states.get(digest)
        if cached is not None and not fresh and now - cached.at < self.cache_seconds:
            return digest, cached.state
        state = await self.store.client_state(token)
        if state is None:
            self._states.pop(digest, None)
            raise ApiError(401, "unknown token", headers=_UNAUTHORIZED)
        self._states[digest] = _Cached(state, now)
        return digest, state

    async def _admin(self, request: Request) -> None:
        token = _bearer(request)
        if self._is_admin(token):
            return
        if await self.store.client_state(token) is not None:
            raise ApiError(403, "this endpoint needs the admin token, not a client's")
        raise ApiError(401, "unknown token", headers=_UNAUTHORIZED)

    async def _seen(self, client_id: int) -> None:
        now = time.monotonic()
        if now - self._touched.get(client_id, -math.inf) >= self.seen_interval:
            self._touched[client_id] = now
            await self.store.touch(client_id)

    # -- endpoints -------------------------------------------------------------------------------

    async def pending(self, request: Request) -> Response:
        digest, state = await self._client(request)
        await self._seen(state.client.client_id)
        wanted = request.headers.get("if-none-match")
        if wanted is not None and _matches(wanted, state.etag):
            return Response(status_code=304, headers=_etag_headers(state.etag))
        state, items = await self.store.pending(state.client.client_id)
        self._states[digest] = _Cached(state, time.monotonic())
        if wanted is not None and _matches(wanted, state.etag):  # the cached state was stale
            return Response(status_code=304, headers=_etag_headers(state.etag))
        return JSONResponse(
            {"migrations": [item.to_json() for item in items]}, headers=_etag_headers(state.etag)
        )

    async def status(self, request: Request) -> Response:
        digest, state = await self._client(request)
        reports = status_reports(await read_json(request, self.max_body))
        client_id = state.client.client_id
        result = await self.store.report(client_id, reports)
        if result.unpublished:
            listed = ", ".join(str(v) for v in result.unpublished)
            raise ApiError(
                422,
                f"version{'s' if len(result.unpublished) > 1 else ''} {listed} "
                f"{'are' if len(result.unpublished) > 1 else 'is'} not published; nothing was recorded",
                versions=list(result.unpublished),
            )
        self._touched[client_id] = time.monotonic()  # the report marked it seen
        if result.recorded:
            self._states.pop(digest, None)
        return JSONResponse(
            {
                "recorded": list(result.recorded),
                "unchanged": list(result.unchanged),
                "drift": [d.to_json() for d in result.drift],
            }
        )

    async def migrations(self, request: Request) -> Response:
        await self._admin(request)
        published = await self.store.migrations()
        return JSONResponse(
            {
                "migrations": [
                    {
                        "version": p.version,
                        "name": p.name,
                        "checksum": p.checksum,
                        "signature": p.signature,
                        "signed_by": p.signed_by,
                        "published_at": iso(p.published_at),
                        "replaced_checksum": p.replaced_checksum,
                        "replaced_at": iso(p.replaced_at),
                    }
                    for p in published
                ]
            }
        )

    async def clients(self, request: Request) -> Response:
        await self._admin(request)
        return JSONResponse({"clients": [entry.to_json() for entry in await self.store.fleet()]})


def create_app(
    store_url: str,
    *,
    admin_token: str,
    cache_seconds: float = 1.0,
    seen_interval: float = 60.0,
    max_body: int = MAX_BODY,
) -> Starlette:
    """The API on the store at ``store_url`` (which must exist), its admin endpoints behind ``admin_token``.

    ``cache_seconds``: how long a client's ETag parts are trusted without the
    store (0: every poll reads one row). ``seen_interval``: how often a poll
    may write the client's ``last_seen_at``. ``max_body``: the largest request body.
    """
    if not admin_token or not admin_token.strip():
        raise ConfigError("the admin token must not be empty (--admin-token or MIGSYNC_ADMIN_TOKEN)")
    if cache_seconds < 0 or seen_interval < 0 or max_body < 1:
        raise ConfigError("cache_seconds and seen_interval must be >= 0, max_body > 0")
    api = _Api(store_url, admin_token, cache_seconds, seen_interval, max_body)
    routes = [
        Route("/api/migrations/pending", api.pending, methods=["GET"]),
        Route("/api/migrations/status", api.status, methods=["POST"]),
        Route("/api/migrations", api.migrations, methods=["GET"]),
        Route("/api/clients", api.clients, methods=["GET"]),
    ]
    handlers: dict[Any, Any] = {
        ApiError: _refused,
        HTTPException: _http_error,
        MigsyncError: _store_error,
    }
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=api.lifespan)


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if header is None:
        raise ApiError(401, "no token: send 'Authorization: Bearer TOKEN'", headers=_UNAUTHORIZED)
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "the Authorization header must be 'Bearer TOKEN'", headers=_UNAUTHORIZED)
    return token


def _matches(header: str, etag: str) -> bool:
    candidates = [c.strip() for c in header.split(",")]
    return "*" in candidates or any(c.removeprefix("W/") == etag for c in candidates)


def _etag_headers(etag: str) -> dict[str, str]:
    return {"ETag": etag, "Cache-Control": "no-cache"}


async def _refused(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _store_error(_request: Request, exc: Exception) -> Response:
    # The store cannot be reached or refused the request: the client should retry later.
    return JSONResponse({"error": f"the store failed: {exc}"}, status_code=503, headers={"Retry-After": "5"})
