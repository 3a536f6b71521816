"""The HTTP API: a Starlette app that serves the store to clients and to the admin.

::

    from migsync.server.app import create_app

    app = create_app("sqlite:///server.db", admin_token=os.environ["MIGSYNC_ADMIN_TOKEN"])

The store is opened in the app's lifespan and closed at its end; nothing is
global, so two apps (or a test's) never share anything. Starlette does not
run the lifespan of a mounted app: a parent app enters it from its own
(``async with api.router.lifespan_context(api): yield``).

An idle poll costs no store access at all. Each process keeps the state of
the clients that poll it (their token hash, and their ETag's parts, see
:mod:`migsync.server.status`) in a bounded cache (``cache_clients``, least
recently used dropped first: :mod:`migsync.server.client_cache`), and checks
at most once per ``cache_seconds`` what changed: one small read of the store's
publish serial and change counter, and, when the counter moved, one indexed
read of the clients changed since the counter it saw last (never the whole
fleet). So a publish (``migsync publish`` is another process) or a report
through another process is seen within ``cache_seconds``; a report through
this process is seen at once. The first poll that finds the check due makes
it; polls meanwhile answer from the cache, never waiting for it. A client the
cache does not hold costs one indexed read.

A full answer is made of the client's applied versions and requests (one
read) and the published set, kept serialized per publish serial. A report
(and answers to requests) sent with the client's ETag (``Migsync-Held-ETag``)
is answered with its new ETag, so the client's next poll is a 304.
A poll marks its client seen at most once per ``seen_interval``; those
marks are written together, once per ``seen_flush`` seconds.

Entity changes a client pushes (``POST /api/changes``) go to the store's
inbox and to the change appliers given to :func:`create_app` (by default the
plugins' default ones: the built-in ``tables`` applier).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from migsync.core.clock import Clock, iso
from migsync.core.errors import ConfigError, MigsyncError
from migsync.core.requires import Requirement, satisfied
from migsync.protocol.wire import (
    APP_VERSION_HEADER,
    CHANGES_AFTER_HEADER,
    CHANGES_ORDERED_HEADER,
    HELD_ETAG_HEADER,
    PROTOCOL,
    PROTOCOL_HEADER,
    ActionRequest,
    SignedManifest,
    protocol_refusal,
)
from migsync.protocol.wire_schema import SCHEMAS, standalone
from migsync.server import fleet_api, rollout_api
from migsync.server.batch_turns import BatchTurns
from migsync.server.bodies import MAX_BODY, ApiError, action_answers, action_order, read_json, status_reports
from migsync.server.client_cache import DEFAULT_CACHE_CLIENTS, ClientCache
from migsync.server.engine import PoolOptions
from migsync.server.inbox import NotInOrder
from migsync.server.openapi import ENDPOINTS, Endpoint, QueryInt, openapi_document
from migsync.server.records import ClientRecord, ClientState, PendingMigration, token_hash
from migsync.server.serials import Horizon
from migsync.server.store import Store
from migsync.server.throttle import FAILED_AUTH_LIMIT, AuthThrottle
from migsync.server.validation import InvalidChanges, entity_change_batch

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from migsync.server.appliers import ChangeApplier
    from migsync.server.panel import PanelOptions
    from migsync.server.rollout_store import Rollout

__all__ = ["MAX_CHANGES_BODY", "create_app"]

#: The largest body of ``POST /api/changes`` (16 MiB): changes carry rows, reports do not.
MAX_CHANGES_BODY = 16 * 1024 * 1024

log = logging.getLogger("migsync.server")

#: All a 503 says of a failed store; what failed goes to the server's log.
STORE_FAILED = "the store is unavailable; try again later (the server's log says why)"

Handler = Callable[[Request], Awaitable[Response]]

#: Why a server without a request key makes no requests to clients (API 409, and the panel says it).
NO_REQUEST_KEY = (
    "this server has no request key, so it cannot sign requests to clients, and a client carries "
    "out signed requests only: make one with 'migsync keygen KEY', start the server with "
    "'migsync serve --request-key KEY', and give its KEY.pub to each client (--trust-request-key)"
)

_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="migsync"'}
#: On every answer to a batch of entity changes: this server stores batches in the client's
#: order (see CHANGES_AFTER_HEADER), so the client may send one before the last is answered.
_ORDERED = {CHANGES_ORDERED_HEADER: "1"}


class _Api:
    """One app's state: its store (while the lifespan runs) and its caches."""

    def __init__(
        self,
        store_url: str,
        admin_token: str,
        cache_seconds: float,
        seen_interval: float,
        seen_flush: float,
        max_body: int,
        max_changes_body: int,
        appliers: Sequence[ChangeApplier],
        throttle: AuthThrottle,
        clock: Clock | None = None,
        request_key: Ed25519PrivateKey | None = None,
        cache_clients: int = DEFAULT_CACHE_CLIENTS,
        pool: PoolOptions | None = None,
    ) -> None:
        self.store_url = store_url
        self.pool = pool
        #: signs each request to a client, for that client, as it is served (None: no requests)
        self.request_key = request_key
        self.throttle = throttle
        # Periods are measured on the monotonic clock and times written on the wall clock; a
        # test's clock stands for both, so a test moves the app's time by hand.
        self._monotonic = clock.now if clock is not None else time.monotonic
        self._wall = clock.now if clock is not None else time.time
        self._sleep = clock.sleep if clock is not None else asyncio.sleep
        self._clock = clock
        self.max_changes_body = max_changes_body
        self.appliers = tuple(appliers)
        self.admin_token = admin_token.encode()
        self.cache_seconds = cache_seconds
        self.seen_interval = seen_interval
        self.max_body = max_body
        self.seen_flush = seen_flush
        self._store: Store | None = None
        #: token hash -> the client and its ETag's parts, for the clients that polled lately
        self._cache = ClientCache(cache_clients)
        #: where this process has read the store's client changes up to (set when the store opens)
        self._seen_change = Horizon(0)
        self._checked_at = -math.inf  # monotonic
        #: told that something changed: the next poll reads it, whatever the period
        self._stale = False
        self._refreshing = False
        #: set (and replaced) when a refresh moved some client's ETag: wakes the long polls
        self._changed = asyncio.Event()
        #: how many long polls wait
        self._waiting = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        #: the published set, serialized, of the newest publish serial this process read
        self._published: _Published | None = None
        self._reading_published = asyncio.Lock()
        #: client id -> when this process last marked it seen (monotonic)
        self._touched: dict[int, float] = {}
        #: client id -> when it was seen (epoch), not written yet
        self._unwritten: dict[int, float] = {}
        #: the batches of entity changes being stored, per client, in the order they arrived
        self._batches = BatchTurns()

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            store = await stack.enter_async_context(
                Store.open(
                    self.store_url, create=False, appliers=self.appliers, clock=self._clock, pool=self.pool
                )
            )
            self._store = store
            # Changes before now need no reading: the cache is empty, and a miss reads the store.
            self._seen_change = await store.change_horizon()
            # Postgres tells of every change at its commit: long polls hear of it at once.
            await stack.enter_async_context(store.listening(self._heard))
            flusher = (
                asyncio.create_task(self._flush_seen_every(self.seen_flush)) if self.seen_flush else None
            )
            try:
                yield
            finally:
                if flusher is not None:
                    flusher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await flusher
                for task in [*self._tasks, *([self._ticker] if self._ticker else [])]:
                    task.cancel()
                with contextlib.suppress(MigsyncError):  # the store may be gone: marks are a nicety
                    await self._flush_seen()
                self._store = None
                self._cache.clear()
                self._published = None
                self._checked_at = -math.inf
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

    def _throttled_bearer(self, request: Request) -> str:
        """The request's bearer token; 429 first when its address failed too often."""
        wait = self.throttle.retry_after(_address(request))
        if wait is not None:
            raise ApiError(
                429,
                f"too many wrong tokens from this address; try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        return _bearer(request)

    def _wrong_token(self, request: Request) -> ApiError:
        self.throttle.failed(_address(request), "wrong bearer tokens on the API")
        return ApiError(401, "unknown token", headers=_UNAUTHORIZED)

    async def _client(self, request: Request) -> tuple[str, ClientState]:
        """The client the bearer token names (its token hash and state); 401 or 403 otherwise,
        429 when its address sent too many wrong tokens, and 426 for a client of another wire
        protocol (an older migsync)."""
        token = self._throttled_bearer(request)
        if self._is_admin(token):
            raise ApiError(403, "the admin token is not a client's; use the client's own token")
        digest = token_hash(token)
        await self._refresh()
        state = self._cache.get(digest)
        if state is None:
            state = await self.store.client_state(token)  # not polled lately, or new
            if state is None:
                raise self._wrong_token(request)
            self._cache.put(digest, state)
        refusal = protocol_refusal(request.headers.get(PROTOCOL_HEADER), "this client")
        if refusal is not None:
            raise ApiError(426, refusal.replace("and this migsync", "and the server"))
        return digest, state

    async def _refresh(self) -> None:
        """Read what changed in the store since this process last looked (once per period, or
        at once after :meth:`forget_states`).

        The first request that finds the check due makes it; the others answer from the cache
        meanwhile rather than wait for it. Long polls waiting on a client whose ETag it finds
        moved are woken."""
        if self._refreshing:
            return
        self._refreshing = True
        try:
            while self._stale or self._monotonic() - self._checked_at >= self.cache_seconds:
                self._stale = False
                started = self._monotonic()
                publish = self._cache.publish_serial
                changes = await self.store.changes_since(self._seen_change, self._cache.size)
                if changes.states is None:  # more changed than the cache holds: start afresh
                    self._cache.clear()
                self._cache.changed(changes.publish_serial, changes.states or ())
                self._seen_change = changes.seen
                self._checked_at = started
                if changes.states or changes.states is None or changes.publish_serial != publish:
                    self._wake()
                if not (self._stale and self._waiting):  # told of a change meanwhile: read again
                    break
        finally:
            self._refreshing = False

    def _wake(self) -> None:
        """Wake the long polls: each looks at its client's ETag again."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _heard(self) -> None:
        """The store says a change was committed (Postgres NOTIFY, this process's own included):
        held polls want it now; plain polls read it with the next check, once per
        ``cache_seconds`` (a busy fleet's reports must not make every poll a read)."""
        if self._waiting:
            self._notified()

    def _notified(self) -> None:
        """Something changed that other clients' answers depend on (a request through this
        process, or :meth:`_heard`): the next poll reads it, and a held poll at once."""
        self.forget_states()
        if self._waiting and not self._refreshing:
            task = asyncio.get_running_loop().create_task(self._refresh_logged())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _refresh_logged(self) -> None:
        try:
            await self._refresh()
        except MigsyncError as exc:  # the store is down: the long polls end at their deadline
            log.warning("could not read what changed in the store: %s", exc)

    async def _wait_for_change(self, digest: str, etag: str, seconds: int) -> bool:
        """Wait until the client's ETag is no longer ``etag`` (True) or ``seconds`` pass (False).

        Woken by the store's notifications (Postgres) and this process's own writes; besides,
        one task reads what changed once per ``cache_seconds`` while polls wait (so on SQLite a
        publish by another process arrives that late). A held poll itself only sleeps."""
        self._waiting += 1
        if self.cache_seconds and (self._ticker is None or self._ticker.done()):
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        try:
            deadline = self._monotonic() + seconds
            while True:
                await self._refresh()  # when due: told of a change, or the period is over
                state = self._cache.get(digest)
                if state is None or state.etag != etag:
                    return True
                remaining = deadline - self._monotonic()
                if remaining <= 0:
                    return False
                # No await between the look above and taking the event: no wake-up is missed.
                timer = asyncio.ensure_future(self._sleep(remaining))
                woken = asyncio.ensure_future(self._changed.wait())
                try:
                    await asyncio.wait({timer, woken}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    timer.cancel()
                    woken.cancel()
        finally:
            self._waiting -= 1

    async def _tick(self) -> None:
        """While polls are held: read what changed once per ``cache_seconds``."""
        while self._waiting:
            await self._sleep(self.cache_seconds)
            await self._refresh_logged()

    async def _admin(self, request: Request) -> None:
        token = self._throttled_bearer(request)
        if self._is_admin(token):
            return
        if await self.store.client_state(token) is not None:
            raise ApiError(403, "this endpoint needs the admin token, not a client's")
        raise self._wrong_token(request)

    async def _seen(self, client_id: int) -> None:
        if self._mark_seen(client_id) and not self.seen_flush:
            await self._flush_seen()

    def _mark_seen(self, client_id: int) -> bool:
        """Mark the client seen, to be written with the next flush, unless it was marked within
        ``seen_interval``; whether it was marked."""
        now = self._monotonic()
        if now - self._touched.get(client_id, -math.inf) < self.seen_interval:
            return False
        self._touched[client_id] = now
        self._unwritten[client_id] = self._wall()
        return True

    async def _flush_seen(self) -> None:
        seen, self._unwritten = self._unwritten, {}
        await self.store.touch_many(seen)

    async def _flush_seen_every(self, seconds: float) -> None:
        while True:
            await self._sleep(seconds)
            try:
                await self._flush_seen()
            except MigsyncError as exc:  # the store is down: the next poll marks them again
                log.warning("could not mark clients seen: %s", exc)

    def not_modified(self, scope: Scope) -> list[tuple[bytes, bytes]] | None:
        """The headers of a 304 to the poll ``scope`` (a ``GET /api/migrations/pending`` without
        a query) when :meth:`pending` would answer it with a 304 from memory; None when it would
        do anything else (refuse it, read the store, wait, answer in full): then it answers.

        Most of a fleet's requests are such polls: this answers them from the ASGI scope alone,
        without Starlette's routing, request and response objects and exception handling, which
        cost more than the poll itself. It checks what :meth:`pending` checks, in its order, and
        leaves to it every request that fails a check, so every refusal is its."""
        if self._stale or self._monotonic() - self._checked_at >= self.cache_seconds or not self.seen_flush:
            return None  # a read of the store is due, or a seen mark would be written at once
        authorization = wanted = protocol = None
        for name, value in scope["headers"]:  # the first of a repeated header, as Starlette's
            if name == b"authorization":
                authorization = authorization or value
            elif name == b"if-none-match":
                wanted = wanted or value
            elif name == _PROTOCOL_HEADER:
                protocol = protocol or value
            elif name == _APP_VERSION_HEADER:
                return None  # checked, and a new one written: pending's
        if authorization is None or wanted is None or protocol != _PROTOCOL[1]:
            return None
        client = scope.get("client")
        if self.throttle.retry_after(client[0] if client else "?") is not None:
            return None
        scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or self._is_admin(token):
            return None
        state = self._cache.get(token_hash(token))
        if state is None or not _matches(wanted.decode("latin-1"), state.etag):
            return None
        self._mark_seen(state.client.client_id)
        etag = state.etag.encode()
        return [(b"etag", etag), (b"cache-control", b"no-cache"), _PROTOCOL]

    # -- endpoints -------------------------------------------------------------------------------

    async def pending(self, request: Request) -> Response:
        wait = _query_int(request, _WAIT)
        digest, state = await self._client(request)
        app_version = rollout_api.app_version(request)
        if app_version is not None and app_version != state.client.app_version:
            # Its ETag moves with it: what it is offered may differ (migsync:requires).
            await self.store.set_app_version(state.client.client_id, app_version)
            state = attrs.evolve(
                state,
                client=attrs.evolve(state.client, app_version=app_version),
                status_serial=state.status_serial + 1,
            )
            self._cache.put(digest, state)
        await self._seen(state.client.client_id)
        wanted = request.headers.get("if-none-match")
        if wanted is not None and _matches(wanted, state.etag):
            # A long poll waits only on the ETag itself ("*" would wait on anything).
            if not wait or wanted.strip().removeprefix("W/") != state.etag:
                return Response(status_code=304, headers=_etag_headers(state.etag))
            if not await self._wait_for_change(digest, state.etag, wait):
                return Response(status_code=304, headers=_etag_headers(state.etag))
        state, lacking, actions = await self.store.pending_view(state.client.client_id)
        self._cache.put(digest, state)  # as new as what the store holds: never older than the cache
        if wanted is not None and _matches(wanted, state.etag):  # the cached state was stale
            return Response(status_code=304, headers=_etag_headers(state.etag))
        published = await self._published_set(state.publish_serial)
        signed = [a.to_json() for a in self._signed(state.client.client_id, actions)]
        body = published.answer(published.offered(lacking, state.client), signed)
        return Response(body, media_type="application/json", headers=_etag_headers(state.etag))

    async def _published_set(self, serial: int) -> _Published:
        """The published set, serialized, at least as new as publish serial ``serial`` (read again
        only when a newer serial is asked for: once per publish and process)."""
        published = self._published
        if published is not None and published.serial >= serial:
            return published
        async with self._reading_published:
            published = self._published
            if published is None or published.serial < serial:
                read_serial, items, manifest, rollouts = await self.store.published_set()
                published = _Published.of(read_serial, items, manifest, rollouts)
                if self._published is None or self._published.serial <= read_serial:
                    self._published = published
        return published

    def _signed(self, client_id: int, actions: list[ActionRequest]) -> list[ActionRequest]:
        """``actions`` signed for ``client_id`` with the request key; none without one (a client
        carries out signed requests only: an unsigned one would only be refused)."""
        if not actions:
            return []
        if self.request_key is None:
            log.warning(
                "client %d has %d request(s) this server cannot sign (no --request-key): not sent",
                client_id,
                len(actions),
            )
            return []
        from migsync.protocol.signing import sign_request

        return [sign_request(self.request_key, a, str(client_id)) for a in actions]

    async def status(self, request: Request) -> Response:
        digest, state = await self._client(request)
        reports = status_reports(await read_json(request, self.max_body))
        client_id = state.client.client_id
        result = await self.store.report(client_id, reports, request.headers.get(HELD_ETAG_HEADER))
        if result.unpublished:
            listed = ", ".join(str(v) for v in result.unpublished)
            raise ApiError(
                422,
                f"version{'s' if len(result.unpublished) > 1 else ''} {listed} "
                f"{'are' if len(result.unpublished) > 1 else 'is'} not published; nothing was recorded",
                versions=[v.text for v in result.unpublished],
            )
        self._touched[client_id] = self._monotonic()  # the report marked it seen
        self._unwritten.pop(client_id, None)
        if result.state is not None:
            self._cache.put(digest, result.state)
            self._wake()
        if result.rollouts_moved:  # every client may be offered something else now
            self._notified()
        body: dict[str, Any] = {
            "recorded": [v.text for v in result.recorded],
            "unchanged": [v.text for v in result.unchanged],
            "drift": [d.to_json() for d in result.drift],
        }
        if result.etag is not None:
            body["etag"] = result.etag
        return JSONResponse(body)

    async def answers(self, request: Request) -> Response:
        digest, state = await self._client(request)
        answers = action_answers(await read_json(request, self.max_body))
        ack, moved = await self.store.record_answers(
            state.client.client_id, answers, request.headers.get(HELD_ETAG_HEADER)
        )
        if moved:
            self._cache.drop(digest)  # the next poll reads its new state
            self._wake()
        return JSONResponse(ack.to_json())

    def forget_states(self) -> None:
        """Trust no cached client state: the next poll asks the store (after a request to clients)."""
        self._stale = True

    async def actions(self, request: Request) -> Response:
        await self._admin(request)
        records = await self.store.actions(limit=_query_int(request, _LIMIT))
        return JSONResponse({"actions": [r.to_json() for r in records]})

    async def request_action(self, request: Request) -> Response:
        await self._admin(request)
        order = action_order(await read_json(request, self.max_body))
        if self.request_key is None:  # after the body's checks: a bad field is named first
            raise ApiError(409, NO_REQUEST_KEY)
        try:
            records = await self.store.request_action(
                order.action, order.version, order.clients, order.requested_by
            )
        except ConfigError as exc:
            raise ApiError(422, str(exc)) from None
        self._notified()
        return JSONResponse({"actions": [r.to_json() for r in records]}, status_code=201)

    async def changes(self, request: Request) -> Response:
        _digest, state = await self._client(request)
        client_id = state.client.client_id
        # In flight from before its body is read: a batch sent after it waits for it.
        with self._batches.arrived(client_id) as before:
            try:
                changes = entity_change_batch(await read_json(request, self.max_changes_body, finite=True))
            except InvalidChanges as exc:
                raise ApiError(422, str(exc)) from None
            after = request.headers.get(CHANGES_AFTER_HEADER)
            try:
                ack = await self.store.receive_changes(client_id, changes, after)
            except NotInOrder as exc:
                # The batch before may be in flight in this process: wait for the batches that
                # arrived here before this one, then try once more (migsync.server.batch_turns).
                if not await self._batches.after(client_id, before):
                    raise ApiError(409, str(exc), headers=_ORDERED) from None
                try:
                    ack = await self.store.receive_changes(client_id, changes, after)
                except NotInOrder as again:
                    raise ApiError(409, str(again), headers=_ORDERED) from None
        self._touched[client_id] = self._monotonic()  # receiving marked it seen
        self._unwritten.pop(client_id, None)
        return JSONResponse(ack.to_json(), headers=_ORDERED)

    async def migrations(self, request: Request) -> Response:
        await self._admin(request)
        published = await self.store.migrations()
        return JSONResponse(
            {
                "migrations": [
                    {
                        "version": p.version.text,
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
        await self._flush_seen()  # this process's own view is never behind
        return JSONResponse(await fleet_api.fleet_page(self.store, request.query_params))

    async def add_clients(self, request: Request) -> Response:
        await self._admin(request)
        added = await fleet_api.register(self.store, await read_json(request, self.max_body))
        return JSONResponse(added, status_code=201)

    async def rollouts(self, request: Request) -> Response:
        await self._admin(request)
        return JSONResponse({"rollouts": [r.to_json() for r in await self.store.rollouts()]})

    async def start_rollout(self, request: Request) -> Response:
        await self._admin(request)
        record = await rollout_api.start(self.store, await read_json(request, self.max_body))
        self._notified()
        return JSONResponse(record.to_json(), status_code=201)

    async def rollout(self, request: Request) -> Response:
        await self._admin(request)
        result = await rollout_api.status(self.store, rollout_api.rollout_id(request))
        self._notified()  # reading it may have moved it
        return JSONResponse(result.to_json())

    async def operate_rollout(self, request: Request) -> Response:
        await self._admin(request)
        record = await rollout_api.operate(self.store, await read_json(request, self.max_body))
        self._notified()
        return JSONResponse(record.to_json())

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(_OPENAPI)

    async def schema(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in SCHEMAS:
            raise ApiError(404, f"no schema {name!r}; the schemas are {', '.join(SCHEMAS)}")
        return JSONResponse(standalone(name))


def create_app(
    store_url: str,
    *,
    admin_token: str,
    cache_seconds: float = 1.0,
    seen_interval: float = 60.0,
    seen_flush: float = 5.0,
    max_body: int = MAX_BODY,
    max_changes_body: int = MAX_CHANGES_BODY,
    appliers: Sequence[ChangeApplier] | None = None,
    panel: bool | PanelOptions = True,
    failed_auth_limit: str = FAILED_AUTH_LIMIT,
    clock: Clock | None = None,
    request_key: Ed25519PrivateKey | None = None,
    cache_clients: int = DEFAULT_CACHE_CLIENTS,
    pool: PoolOptions | None = None,
) -> Starlette:
    """The API on the store at ``store_url`` (which must exist), its admin endpoints behind ``admin_token``.

    ``cache_seconds``: how long the clients' states are trusted without asking the
    store whether anything changed (0: every poll asks). ``seen_interval``: how often a
    poll may mark its client seen. ``seen_flush``: how often those marks are written,
    together (0: at once). ``max_body``: the largest request body, but for
    ``POST /api/changes``, whose largest is ``max_changes_body``. ``appliers``: what
    each received entity change is handed to (see :mod:`migsync.server.appliers`);
    None: the plugins' default appliers, ``[]``: none (the changes are only stored).
    ``panel``: mount the admin panel (:mod:`migsync.server.panel`) at ``/admin``, behind the
    same admin token and reading the same store; :class:`~migsync.server.panel.PanelOptions`
    to set its cookies and sessions, False to leave it out. ``failed_auth_limit``: how many
    wrong tokens (API) and wrong admin tokens (panel login) one address may send, together,
    before it gets 429 (:mod:`migsync.server.throttle`). ``clock``: for tests, a clock
    to measure the periods above on and to date seen marks by (default: the system's).
    ``request_key``: the private key that signs the admin's requests to each client, as they
    are served (``serve --request-key``); without it the API and the panel refuse to make
    requests (409), since no client would carry out an unsigned one. ``cache_clients``: how
    many clients' states the process keeps in memory (least recently polled dropped first; a
    poll of one it dropped costs one indexed read). ``pool``: the size of a Postgres store's
    connection pool in this process (``serve --pool-size``).
    """
    if not admin_token or not admin_token.strip():
        raise ConfigError("the admin token must not be empty (--admin-token or MIGSYNC_ADMIN_TOKEN)")
    if cache_clients < 1:
        raise ConfigError(f"cache_clients must be at least 1, not {cache_clients}")
    if cache_seconds < 0 or seen_interval < 0 or seen_flush < 0 or max_body < 1 or max_changes_body < 1:
        raise ConfigError(
            "cache_seconds, seen_interval and seen_flush must be >= 0, max_body and max_changes_body > 0"
        )
    if appliers is None:
        from migsync.core.plugins import make_plugins
        from migsync.server.appliers import build_appliers

        appliers = build_appliers(make_plugins(), None)
    api = _Api(
        store_url,
        admin_token,
        cache_seconds,
        seen_interval,
        seen_flush,
        max_body,
        max_changes_body,
        appliers,
        AuthThrottle(failed_auth_limit),
        clock,
        request_key,
        cache_clients,
        pool,
    )
    # The routes are the documented endpoints (migsync.server.openapi), each to its handler.
    routes: list[BaseRoute] = [
        Route(endpoint.path, _declared(endpoint, getattr(api, endpoint.name)), methods=[endpoint.method])
        for endpoint in ENDPOINTS
    ]
    if panel is not False:
        from migsync.server.panel import create_panel

        options = None if panel is True else panel
        routes.append(
            Mount(
                "/admin",
                create_panel(
                    lambda: api.store,
                    admin_token,
                    options,
                    before_read=api._flush_seen,
                    after_request=api._notified,
                    throttle=api.throttle,  # one count per address, whichever door it knocks on
                    requests_refused=None if request_key is not None else NO_REQUEST_KEY,
                ),
                name="admin",
            )
        )
        # A browser pointed at the server's address lands on the panel, not on a JSON 404.
        routes.append(Route("/", _to_panel, methods=["GET", "HEAD"]))
    handlers: dict[Any, Any] = {
        ApiError: _refused,
        HTTPException: _http_error,
        MigsyncError: _store_error,
    }
    return _Server(
        api,
        routes=routes,
        exception_handlers=handlers,
        lifespan=api.lifespan,
        middleware=[Middleware(_SaysItsProtocol)],
    )


class _Server(Starlette):
    """The app: a poll whose ETag still holds is answered before Starlette's stack sees it
    (:meth:`_Api.not_modified`); every other request goes through it."""

    def __init__(self, api: _Api, **options: Any) -> None:
        super().__init__(**options)
        self._api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == _PENDING_PATH
            and scope["method"] == "GET"
            and not scope["query_string"]
            and not scope.get("root_path")
        ):
            headers = self._api.not_modified(scope)
            if headers is not None:
                await send({"type": "http.response.start", "status": 304, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
        await super().__call__(scope, receive, send)


@attrs.frozen
class _Published:
    """The published set of one publish serial, serialized once for every client's answer, and
    what decides who is offered what (rollouts move the publish serial too)."""

    serial: int
    #: version key -> the migration's JSON up to its ``applied_checksum`` value
    items: dict[str, str]
    #: the signed manifest's JSON (``null`` when there is none)
    manifest: str
    #: version key -> what its ``-- migsync:requires`` lines ask of the app (only those that ask)
    requirements: dict[str, tuple[Requirement, ...]]
    #: version key -> the rollout that decides who is offered it (only the versions that have one)
    rollouts: dict[str, Rollout]

    @classmethod
    def of(
        cls,
        serial: int,
        items: list[PendingMigration],
        manifest: SignedManifest | None,
        rollouts: list[Rollout],
    ) -> _Published:
        from migsync.server.rollout_store import deciding_rollouts, requirements

        fragments = {}
        needs = {}
        for item in items:
            whole = _dumps(item.to_json() | {"applied_checksum": None})
            assert whole.endswith('"applied_checksum":null}')  # the last key: its value is appended
            fragments[item.version.key] = whole.removesuffix("null}")
            if wanted := requirements(item):
                needs[item.version.key] = wanted
        manifest_json = _dumps(None if manifest is None else manifest.to_json())
        return cls(serial, fragments, manifest_json, needs, deciding_rollouts(rollouts))

    def offered(
        self, lacking: list[tuple[str, str | None]], client: ClientRecord
    ) -> list[tuple[str, str | None]]:
        """Of ``lacking`` (in version order), what the client is offered now: up to the first
        version a rollout holds back or its app version cannot run. A client applies
        migrations in order, so one it is not offered holds back every later one too."""
        needs, rollouts = self.requirements, self.rollouts
        if not needs and not rollouts:
            return lacking
        from migsync.server.rollout_store import holds

        for index, (key, _) in enumerate(lacking):
            if (key in rollouts and holds(rollouts[key], client)) or (
                key in needs and not satisfied(needs[key], client.app_version)
            ):
                return lacking[:index]
        return lacking

    def answer(self, lacking: list[tuple[str, str | None]], actions: list[dict[str, Any]]) -> bytes:
        """A client's pending answer: the versions it lacks, in order (by key, with the checksum
        it applied, if any). A version published after this set was read is left out: the answer's
        ETag is older than it, so the client asks again and gets it."""
        items = self.items
        migrations = ",".join(items[key] + _dumps(applied) + "}" for key, applied in lacking if key in items)
        answer = f'{{"migrations":[{migrations}],"actions":{_dumps(actions)},"manifest":{self.manifest}}}'
        return answer.encode()


def _dumps(value: Any) -> str:
    """JSON as Starlette's JSONResponse writes it."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


async def _to_panel(request: Request) -> Response:
    # Relative, so that it holds behind a proxy that serves the server under a prefix.
    return RedirectResponse("admin/", status_code=303)


class _SaysItsProtocol:
    """Every answer carries the wire protocol the server speaks (:data:`PROTOCOL_HEADER`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), _PROTOCOL]
            await send(message)

        await self.app(scope, receive, sending)


_PROTOCOL = (PROTOCOL_HEADER.lower().encode(), str(PROTOCOL).encode())
_PROTOCOL_HEADER = _PROTOCOL[0]
_APP_VERSION_HEADER = APP_VERSION_HEADER.lower().encode()
_PENDING_PATH = next(e.path for e in ENDPOINTS if e.name == "pending")


def _address(request: Request) -> str:
    return request.client.host if request.client else "?"


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


def _declared(endpoint: Endpoint, handler: Handler) -> Handler:
    """``handler``, refusing a query parameter ``endpoint`` does not declare (422): a misspelt
    ``?limt=5`` would be ignored, and the caller never know."""
    known = {q.name for q in endpoint.query}

    async def checked(request: Request) -> Response:
        # Most requests (every poll) have no query: not parsing one is a few µs per request.
        unknown = sorted(set(request.query_params) - known) if request.scope["query_string"] else []
        if unknown:
            takes = f"it takes {', '.join(sorted(known))}" if known else "it takes none"
            raise ApiError(422, f"unknown query parameter {', '.join(map(repr, unknown))}: {takes}")
        return await handler(request)

    return checked


_LIMIT = next(q for e in ENDPOINTS if e.name == "actions" for q in e.query if isinstance(q, QueryInt))
_WAIT = next(q for e in ENDPOINTS if e.name == "pending" for q in e.query if isinstance(q, QueryInt))
_OPENAPI = openapi_document()


def _query_int(request: Request, param: QueryInt) -> int | None:
    """Query parameter ``param`` as its endpoint declares it, or None when not given: ASCII
    digits only (``str.isdigit`` takes "²", which ``int`` refuses), in its range."""
    text = request.query_params.get(param.name) if request.scope["query_string"] else None
    if text is None:
        return None
    value = int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None
    if value is None or not param.minimum <= value <= param.maximum:
        raise ApiError(
            422,
            f"{param.name} must be a whole number from {param.minimum} to {param.maximum}, not {text[:20]!r}",
        )
    return value


async def _store_error(_request: Request, exc: Exception) -> Response:
    # The store cannot be reached or refused the request: the client should retry later. What
    # failed names the store (user, host, database): that is for the server's log, not for
    # whoever sent the request.
    log.error("the store failed: %s", exc)
    return JSONResponse({"error": STORE_FAILED}, status_code=503, headers={"Retry-After": "5"})
