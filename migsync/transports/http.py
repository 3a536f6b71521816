"""HTTP polling: the client asks the server's API for what it lacks and posts its reports.

URLs are the server's base, ``http://host:port`` or ``https://host/prefix``
when the API is mounted under a prefix. A request that cannot reach the
server, times out, or gets 429 or 5xx is tried again ``retries`` times with
exponential backoff and jitter (a ``Retry-After`` the server sends is
honoured, up to the cap) before it gives up with :class:`ServerUnavailable`.
401, 403 and the other 4xx are :class:`ServerRefused` at once: the same
request would be refused again.

What a server (or anything posing as one) can make a client spend is bounded:

* **time**: each attempt, from connecting to the last byte of the answer,
  ends within ``timeout`` seconds, not just each read (a server trickling a
  byte a second would never trip a per-read timeout). Past it, the attempt
  fails like a timeout (``no complete answer within T s``) and is tried again.
* **memory**: an answer is read as a stream and refused once it passes
  ``max_answer_bytes`` (after decompression: a small gzip bomb counts at its
  real size), :class:`MalformedAnswer` ``answer larger than N bytes``, not
  tried again (the same server would send the same answer). The default,
  :data:`MAX_ANSWER_BYTES`, is far above what a fleet's pending migrations
  take; raise it with ``?max_answer_bytes=N`` on the URL for very large ones.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, overload

import httpx

from migsync.core.clock import Clock, RetryPolicy, SystemClock
from migsync.core.errors import ConfigError, MalformedAnswer, ServerRefused, ServerUnavailable
from migsync.core.version import Version
from migsync.protocol.wire import (
    APP_VERSION_HEADER,
    APP_VERSION_PATTERN,
    CHANGES_AFTER_HEADER,
    CHANGES_ORDERED_HEADER,
    HELD_ETAG_HEADER,
    PROTOCOL,
    PROTOCOL_HEADER,
    ActionResult,
    ActionsAck,
    ChangesAck,
    EntityChange,
    Offer,
    ReportAck,
    StatusReport,
    ack_from_json,
    action_results_to_json,
    actions_ack_from_json,
    actions_from_json,
    changes_ack_from_json,
    offers_from_json,
    protocol_refusal,
    reports_to_json,
    signed_from_json,
)
from migsync.transports.base import BaseTransport

#: The most reports, and changes, one request carries (the server's limits).
MAX_REPORTS = 1000
MAX_CHANGES = 1000
_RETRY_STATUSES = {429, 500, 502, 503, 504}
#: The largest answer read (bytes), unless told otherwise: some 100 migrations of 160 KiB.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
#: The longest long poll a server allows (``GET /api/migrations/pending?wait=N``), in seconds.
MAX_LONG_POLL = 60

T = TypeVar("T")
A = TypeVar("A")


class HttpTransport(BaseTransport):
    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: RetryPolicy | None = None,
        clock: Clock | None = None,
        http: httpx.AsyncClient | None = None,
        max_answer_bytes: int | None = None,
        app_version: str | None = None,
        long_poll: float | None = None,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ConfigError(f"server URL {url!r} is not a valid URL ({exc})") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(f"server URL {url!r} is not http://HOST[:PORT][/PREFIX] or https://...")
        if not token:
            raise ConfigError(f"a token is needed to talk to {url} (--token or MIGSYNC_TOKEN)")
        if retries < 0 or timeout <= 0:
            raise ConfigError("retries must be >= 0 and timeout > 0")
        if max_answer_bytes is None:
            max_answer_bytes = _size_option(url, parsed.params.get("max_answer_bytes"))
        if max_answer_bytes <= 0:
            raise ConfigError(f"max_answer_bytes must be > 0, not {max_answer_bytes}")
        if long_poll is not None and not 0 <= long_poll <= MAX_LONG_POLL:
            raise ConfigError(f"long_poll must be from 0 to {MAX_LONG_POLL} seconds, not {long_poll:g}")
        #: seconds a fetch with an ETag lets the server wait for a change (``?wait=N``): a change
        #: reaches the client as it happens rather than at its next poll (None, 0: plain polls)
        self.long_poll = int(long_poll) if long_poll else None
        self.base = str(parsed.copy_with(query=None, fragment=None)).rstrip("/")
        self.where = self.base
        self.client_id = client_id
        self.timeout = timeout
        self.max_answer_bytes = max_answer_bytes
        self.retries = retries
        self.backoff = backoff or RetryPolicy(base=0.5, cap=10.0, rng=random.Random())
        self.clock = clock or SystemClock()
        self._own_http = http is None
        # Certificates are loaded only for https: loading them costs ~20 ms of CPU per client made,
        # and a plain-http server never needs them (redirects are not followed, so no request can
        # leave for an https address).
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), follow_redirects=False, verify=parsed.scheme == "https"
        )
        #: the pending ETag the client holds: sent with reports and answers, whose answer may
        #: carry the new one (then kept here, for the client to save); see HELD_ETAG_HEADER
        self.held_etag: str | None = None
        #: whether the server said it stores a client's batches of changes in the client's order
        #: (CHANGES_ORDERED_HEADER on an answer to one): then :meth:`push_changes_after` may send
        #: a batch before the batch before it is answered
        self.orders_changes = False
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            PROTOCOL_HEADER: str(PROTOCOL),
        }
        if app_version is not None:
            # The server offers a migration that requires an app version only to apps that have it.
            if not re.match(APP_VERSION_PATTERN, app_version):
                raise ConfigError(
                    f"app version {app_version!r} is not a version such as 2.3.1 (letters, digits and "
                    ".+_-, at most 64 characters)"
                )
            self._headers[APP_VERSION_HEADER] = app_version

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def fetch(self, etag: str | None = None) -> Offer:
        headers = dict(self._headers)
        if etag:
            headers["If-None-Match"] = etag
        url = f"{self.base}/api/migrations/pending"
        if etag and self.long_poll:
            # The server answers at the latest after the wait: the deadline is that much later.
            response = await self._send(
                "GET", url, headers=headers, params={"wait": str(self.long_poll)}, extra_time=self.long_poll
            )
        else:
            response = await self._send("GET", url, headers=headers)
        tag = response.headers.get("etag")
        if response.status_code == 304:
            return Offer(None, tag or etag)
        body = _json(response, url)
        where = f"GET {url}"
        manifest = signed_from_json(body.get("manifest") if isinstance(body, dict) else None, where)
        return Offer(offers_from_json(body, where), tag, actions_from_json(body, where), manifest)

    async def report(self, reports: Sequence[StatusReport]) -> ReportAck:
        acks = await self._post_batches("/api/migrations/status", reports, reports_to_json, ack_from_json)
        return ReportAck(
            tuple(v for a in acks for v in a.recorded),
            tuple(v for a in acks for v in a.unchanged),
            tuple(d for a in acks for d in a.drift),
            acks[-1].etag if acks else None,
        )

    async def report_actions(self, results: Sequence[ActionResult]) -> ActionsAck:
        acks = await self._post_batches(
            "/api/actions/results", results, action_results_to_json, actions_ack_from_json
        )
        return ActionsAck(
            tuple(i for a in acks for i in a.recorded),
            tuple(i for a in acks for i in a.unknown),
            acks[-1].etag if acks else None,
        )

    async def _post_batches(
        self,
        path: str,
        items: Sequence[T],
        to_json: Callable[[Sequence[T]], Any],
        parse: Callable[[Any, str], A],
    ) -> list[A]:
        """POST ``items`` to ``path`` in batches of at most MAX_REPORTS (the server's limit); the
        parsed answers, in order."""
        url = f"{self.base}{path}"
        acks = []
        for start in range(0, len(items), MAX_REPORTS):
            body = json.dumps(to_json(items[start : start + MAX_REPORTS])).encode()
            headers = self._headers | {"Content-Type": "application/json"}
            if self.held_etag is not None:
                headers[HELD_ETAG_HEADER] = self.held_etag
            response = await self._send("POST", url, headers=headers, content=body)
            ack = parse(_json(response, url), f"POST {url}")
            # The new ETag, or None: the one held is no longer the client's (or the server is older).
            self.held_etag = getattr(ack, "etag", None)
            acks.append(ack)
        return acks

    @staticmethod
    def encode_changes(changes: Sequence[EntityChange]) -> EncodedChanges:
        """``changes`` with the request bodies that carry them made now: :meth:`push_changes`
        sends these as they are. (A client makes them for its next batch while the server
        stores the one before; pure, so any thread may.)"""
        encoded = EncodedChanges(changes)
        encoded.bodies = _changes_bodies(changes)
        return encoded

    @staticmethod
    def encode_change_rows(rows: Sequence[Mapping[str, Any]]) -> EncodedRows:
        """The changes of the client's queue ``rows`` (its ``entity_changes`` columns) with the
        request bodies that carry them, made now with each row's ``data`` as it is stored: the
        JSON text goes into the body unparsed (the server parses and checks it). Pure, like
        :meth:`encode_changes`."""
        return EncodedRows(rows, _rows_bodies(rows))

    async def push_changes(self, changes: Sequence[EntityChange]) -> ChangesAck:
        ack = await self._push_changes(changes, None)
        assert ack is not None  # only a batch sent "after" is answered "not yet"
        return ack

    async def push_changes_after(self, changes: Sequence[EntityChange], after: str) -> ChangesAck | None:
        """:meth:`push_changes` of a batch sent before the answer to the batch before it came:
        ``after`` is the id of that batch's last change, and the server stores this one only if
        it has that change. None: it had not (yet), and stored nothing of this batch; send it
        again (with :meth:`push_changes`) once the batch before is stored. Only for a server
        that said it honours this (:attr:`orders_changes`): an older one ignores ``after``."""
        return await self._push_changes(changes, after)

    async def _push_changes(self, changes: Sequence[EntityChange], after: str | None) -> ChangesAck | None:
        url = f"{self.base}/api/changes"
        accepted: list[str] = []
        duplicate: list[str] = []
        if isinstance(changes, EncodedChanges | EncodedRows):
            bodies = changes.bodies
        else:
            bodies = _changes_bodies(changes)
        count = len(changes)
        for start, body in zip(range(0, count, MAX_CHANGES), bodies, strict=True):
            headers = self._headers | {"Content-Type": "application/json"}
            if after is not None and start == 0:  # the bodies after the first follow it anyway
                headers[CHANGES_AFTER_HEADER] = after
            try:
                response = await self._send(
                    "POST",
                    url,
                    headers=headers,
                    content=body,
                    passed=(409,) if CHANGES_AFTER_HEADER in headers else (),
                )
            except ServerRefused:
                if isinstance(changes, EncodedRows):
                    changes.parse_data(start, start + MAX_CHANGES)  # a text that is not JSON raises
                raise
            if response.headers.get(CHANGES_ORDERED_HEADER) == "1":
                self.orders_changes = True
            if response.status_code == 409:
                return None
            ack = changes_ack_from_json(_json(response, url), f"POST {url}")
            accepted += ack.accepted
            duplicate += ack.duplicate
            if ack.refused is not None or len(ack.accepted) + len(ack.duplicate) < min(
                MAX_CHANGES, count - start
            ):
                return ChangesAck(tuple(accepted), tuple(duplicate), ack.refused)
        return ChangesAck(tuple(accepted), tuple(duplicate))

    def _check_protocol(self, response: httpx.Response) -> None:
        """Refuse an answer of another wire protocol before anything of it is read.

        No protocol header at all may be an older migsync or something in between (a proxy's
        or captive portal's page): malformed, tried again next time. Another protocol named
        is a server of another release: refused.
        """
        spoken = response.headers.get(PROTOCOL_HEADER)
        refusal = protocol_refusal(spoken, f"the server at {self.base}")
        if refusal is None:
            return
        if spoken is None:
            raise MalformedAnswer(
                f"{self.base} answered without a {PROTOCOL_HEADER} header: not a migsync server, or "
                f"one of an older release ({refusal})"
            )
        raise ServerRefused(refusal)

    async def _send(
        self, method: str, url: str, *, extra_time: float = 0, passed: tuple[int, ...] = (), **kwargs: Any
    ) -> httpx.Response:
        """The response (2xx or 304), after retries; a refusal or exhaustion raises. ``extra_time``:
        seconds the server may take on purpose (a long poll), on top of the timeout; ``passed``:
        more statuses returned rather than refused."""
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                response = await self._attempt(method, url, extra_time, **kwargs)
            except httpx.TransportError as exc:  # cannot connect, timed out, connection dropped
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except TimeoutError:  # the attempt's deadline (asyncio.timeout), not a read's
                problem = f"no complete answer within {self.timeout + extra_time:g} s"
            except httpx.DecodingError as exc:  # a body its Content-Encoding cannot decode
                raise MalformedAnswer(f"{method} {url}: the answer cannot be decoded ({exc})") from None
            else:
                if response.status_code < 300 or response.status_code in (304, 426, *passed):
                    self._check_protocol(response)
                    if response.status_code != 426:
                        return response
                if response.status_code not in _RETRY_STATUSES:
                    raise ServerRefused(
                        f"{method} {url} was refused: {response.status_code} {_error_text(response)}"
                    )
                problem = f"{response.status_code} {_error_text(response)}"
                retry_after = _retry_after(response)
            if attempt > self.retries:
                tries = f" (tried {attempt} times)" if attempt > 1 else ""
                raise ServerUnavailable(f"{method} {url}: {problem}{tries}")
            delay = self.backoff.delay(attempt)
            if retry_after is not None:
                delay = min(max(delay, retry_after), self.backoff.cap)
            await self.clock.sleep(delay)

    async def _attempt(self, method: str, url: str, extra_time: float = 0, **kwargs: Any) -> httpx.Response:
        """One request with its answer read whole: within the deadline, at most
        ``max_answer_bytes`` of it (never more held in memory)."""
        limit = self.max_answer_bytes
        if extra_time:
            kwargs["timeout"] = httpx.Timeout(self.timeout + extra_time)
        deadline = asyncio.timeout(self.timeout + extra_time)
        async with deadline, self._http.stream(method, url, **kwargs) as streamed:
            declared = streamed.headers.get("content-length", "")
            if declared.isascii() and declared.isdigit() and (len(declared) > 15 or int(declared) > limit):
                raise MalformedAnswer(f"{method} {url}: answer larger than {limit} bytes")
            chunks = []
            size = 0
            async for chunk in streamed.aiter_bytes():  # decoded: the limit is on the real size
                size += len(chunk)
                if size > limit:
                    raise MalformedAnswer(f"{method} {url}: answer larger than {limit} bytes")
                chunks.append(chunk)
        # The body is decoded already: the new response must not decode it again.
        headers = [
            (k, v)
            for k, v in streamed.headers.multi_items()
            if k.lower() not in ("content-encoding", "content-length")
        ]
        return httpx.Response(
            streamed.status_code, headers=headers, content=b"".join(chunks), request=streamed.request
        )


def _size_option(url: str, text: str | None) -> int:
    """``?max_answer_bytes=N`` of the server URL, or the default."""
    if text is None:
        return MAX_ANSWER_BYTES
    if not (text.isascii() and text.isdigit() and len(text) <= 15):
        raise ConfigError(
            f"server URL {url!r}: max_answer_bytes must be a number of bytes, not {text[:20]!r}"
        )
    return int(text)


#: The fields of a change on the wire: :meth:`EntityChange.to_json`'s, whose ``attrs.asdict``
#: copies ``data`` deeply (a third of the client's cost of a push) where JSON needs no copy.


class EncodedChanges(list[EntityChange]):
    """Changes, and the bodies of the requests that carry them (:meth:`HttpTransport.encode_changes`)."""

    bodies: list[bytes]


def _changes_bodies(changes: Sequence[EntityChange]) -> list[bytes]:
    """The bodies of ``POST /api/changes`` that carry ``changes``, at most MAX_CHANGES each."""
    texts: dict[Version, str] = {}  # each version's text, worked out once
    return [
        json.dumps(
            {"changes": [_change_json(c, texts) for c in changes[start : start + MAX_CHANGES]]}
        ).encode()
        for start in range(0, len(changes), MAX_CHANGES)
    ]


class EncodedRows(Sequence[EntityChange]):
    """Rows of the client's change queue, and the bodies of the requests that carry them
    (:meth:`HttpTransport.encode_change_rows`). Indexing makes a change's record (its data
    parsed): only for callers that want one, the push itself sends the bodies."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], bodies: list[bytes]) -> None:
        self.rows = rows
        self.bodies = bodies

    def __len__(self) -> int:
        return len(self.rows)

    def parse_data(self, start: int, end: int) -> None:
        """Parse the data of rows ``start`` to ``end``: a text that is not JSON raises what
        parsing it raises (:class:`json.JSONDecodeError`), as when each change's data was
        parsed before it was sent. (Called when the server refused a batch: the same error
        as before, rather than the server's.)"""
        for row in self.rows[start:end]:
            if row["data"] is not None:
                json.loads(row["data"])

    @overload
    def __getitem__(self, index: int) -> EntityChange: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[EntityChange]: ...

    def __getitem__(self, index: int | slice) -> EntityChange | Sequence[EntityChange]:
        if isinstance(index, slice):
            return [_row_change(row) for row in self.rows[index]]
        return _row_change(self.rows[index])


def _row_change(row: Mapping[str, Any]) -> EntityChange:
    data, key = row["data"], row["schema_version"]
    return EntityChange(
        row["id"],
        row["entity"],
        row["entity_id"],
        row["operation"],
        None if data is None else json.loads(data),
        None if key is None else _version_of_key(key),
        float(row["timestamp"]),
    )


@functools.lru_cache(maxsize=256)
def _version_of_key(key: str) -> Version:
    return Version.from_key(key)


@functools.lru_cache(maxsize=256)
def _version_json(key: str) -> str:
    """The JSON of the text of the version stored as ``key`` (a batch has few: worked out once)."""
    return _str(Version.from_key(key).text)


#: A string as JSON, as :func:`json.dumps` writes it (ASCII, the C encoder).
_str: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _float(value: float) -> str:
    """A float as JSON, as :func:`json.dumps` writes it (NaN, Infinity: the server refuses them)."""
    if value != value or value in (_INF, -_INF):
        return json.dumps(value)
    return float.__repr__(value)


_INF = float("inf")


def _rows_bodies(rows: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """The bodies of ``POST /api/changes`` that carry the queue's ``rows``, at most MAX_CHANGES
    each, the wire's JSON written as :func:`_changes_bodies` writes it.

    Each row's ``data`` is the JSON text the client stored, spliced in as it is: parsing it
    only to encode it again was a third of what a push cost the client. The server parses the
    body and checks every change as before, so a text that holds NaN or a number too large for
    a float is refused there, the whole batch with it, with the message it had when the client
    sent such a number as ``Infinity``; a text that is not JSON at all makes the server refuse
    the body, and the client then raises what parsing the text raises (:meth:`EncodedRows.parse_data`),
    as when it parsed each text first. Data the body cannot carry as UTF-8 (a lone surrogate,
    which no text column the client uses holds) is parsed and encoded as before.
    """
    try:
        return [_rows_body(rows[start : start + MAX_CHANGES]) for start in range(0, len(rows), MAX_CHANGES)]
    except UnicodeEncodeError:
        return _changes_bodies([_row_change(row) for row in rows])


def _rows_body(rows: Sequence[Mapping[str, Any]]) -> bytes:
    parts = []
    for row in rows:
        data, key = row["data"], row["schema_version"]
        if data is None:
            data = "null"
        elif type(data) is not str:  # a BLOB in the column: parsed, as before
            data = json.dumps(json.loads(data))
        parts.append(
            f'{{"id": {_str(row["id"])}, "entity": {_str(row["entity"])}, '
            f'"entity_id": {_str(row["entity_id"])}, "operation": {_str(row["operation"])}, '
            f'"data": {data}, "schema_version": {"null" if key is None else _version_json(key)}, '
            f'"timestamp": {_float(float(row["timestamp"]))}}}'
        )
    return ('{"changes": [' + ", ".join(parts) + "]}").encode()


def _change_json(change: EntityChange, texts: dict[Version, str]) -> dict[str, Any]:
    """``change`` as the wire's JSON (schema ``EntityChange``); ``texts``: versions' texts so far."""
    version, text = change.schema_version, None
    if version is not None:
        text = texts.get(version)
        if text is None:
            text = texts[version] = version.text
    return {
        "id": change.id,
        "entity": change.entity,
        "entity_id": change.entity_id,
        "operation": change.operation,
        "data": change.data,
        "schema_version": text,
        "timestamp": change.timestamp,
    }


def _json(response: httpx.Response, url: str) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MalformedAnswer(f"{url} answered {response.status_code} with a body that is not JSON") from None


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    text = response.text.strip()
    return text[:200] if text else (response.reason_phrase or "")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: the backoff decides
