"""The transport conformance suite (:mod:`migsync.testing.transport_suite`) on the built-in transports,
and what only the HTTP transport does: retries, Retry-After, refusals, timeouts, malformed answers.

The HTTP transport runs against a real server: the API app served by uvicorn on a loopback port
(:class:`servers.ServerThread`), its store on SQLite and on Postgres. The retry logic is tested
on ``httpx.MockTransport`` with a fake clock, where each answer and each wait can be seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dbtools import aquery
from servers import ServerThread, free_port

from migsync.core.clock import RetryPolicy
from migsync.core.errors import ConfigError, MalformedAnswer, ServerRefused, ServerUnavailable
from migsync.core.migration import Migration
from migsync.core.plugins import make_plugins
from migsync.core.version import Version
from migsync.protocol.signing import TrustedKey, load_private_key, load_public_keys, write_keypair
from migsync.protocol.wire import ACTION_STATES, PROTOCOL, PROTOCOL_HEADER, ReportAck, StatusReport
from migsync.server import Store
from migsync.server.app import create_app
from migsync.testing import FakeClock
from migsync.testing.transport_suite import V1, TransportHarness, TransportSuite, applied, versions
from migsync.transports.base import Transport
from migsync.transports.http import MAX_REPORTS, HttpTransport
from migsync.transports.memory import MemoryServer, MemoryTransport

ADMIN = "transport-tests-admin-token"


def signing_key(tmp_path: Path) -> tuple[Ed25519PrivateKey, list[TrustedKey]]:
    """A new key pair in ``tmp_path``: the private key and the public key as trusted."""
    path = tmp_path / "signing.key"
    write_keypair(path)
    return load_private_key(path), load_public_keys([f"{path}.pub"])


# -- the in-memory transport ---------------------------------------------------------------------


@attrs.define
class MemoryHarness:
    server: MemoryServer
    key: Ed25519PrivateKey
    trusted: list[TrustedKey]

    async def publish(self, migrations: Sequence[Migration]) -> None:
        self.server.publish_signed(migrations, self.key)

    async def transport(self, client: str) -> Transport:
        token = self.server.tokens.setdefault(client, f"token-of-{client}")
        return MemoryTransport(self.server, client_id=client, token=token)

    async def reports(self, client: str) -> dict[int, StatusReport]:
        return dict(self.server.status.get(client, {}))

    async def take_down(self) -> None:
        self.server.down = True

    async def bring_up(self) -> None:
        self.server.down = False

    async def refusing_transport(self) -> Transport:
        # With no token registered the server takes any; register one, then present another.
        await self.transport("a")
        return MemoryTransport(self.server, client_id="a", token="not-the-token")

    async def request(self, client: str, action: str, version: int, requested_by: str) -> int:
        return self.server.request(client, action, version, requested_by).id

    async def answers(self, client: str) -> dict[int, tuple[str, str | None]]:
        mine = {a.id for a in self.server.actions.get(client, [])}
        return {i: (a.state, a.detail) for i, a in self.server.answers.items() if i in mine}

    async def changes(self, client: str) -> list[str]:
        return [change.id for change in self.server.inbox.get(client, [])]


class TestMemory(TransportSuite):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> TransportHarness:
        return MemoryHarness(MemoryServer(), *signing_key(tmp_path))


async def test_memory_urls_reach_the_named_server() -> None:
    spec = make_plugins(autoload=False).transport_for_url("memory://transport-tests")
    assert spec.name == "memory"
    server = MemoryServer.named("transport-tests")
    async with spec.load()("memory://transport-tests", client_id="a", token=None) as transport:
        assert isinstance(transport, MemoryTransport) and transport.server is server
        assert transport.where == "memory://transport-tests"
    with pytest.raises(ConfigError, match="memory://NAME"):
        MemoryTransport("memory://", client_id="a")
    with pytest.raises(ConfigError, match="client id"):
        MemoryTransport(server)


# -- the HTTP transport on a real server -------------------------------------------------------


@attrs.define
class HttpHarness:
    """The API served by uvicorn on a loopback port; clients registered and status read in the store."""

    store_url: str
    store: Store
    server: ServerThread
    key: Ed25519PrivateKey
    trusted: list[TrustedKey]
    #: the public key of the server's request key (it signs each request for its client)
    requesters: list[TrustedKey] = attrs.field(factory=list)
    tokens: dict[str, str] = attrs.field(factory=dict)
    ids: dict[str, int] = attrs.field(factory=dict)

    def make(self, client: str, token: str) -> Transport:
        """A transport made through the plugin registry, as ``migsync`` makes one; small timeouts."""
        factory = make_plugins(autoload=False).transport_for_url(self.server.url).load()
        transport: Transport = factory(
            self.server.url,
            client_id=client,
            token=token,
            timeout=2.0,
            retries=1,
            backoff=RetryPolicy(base=0.01, cap=0.05),
        )
        return transport

    async def publish(self, migrations: Sequence[Migration]) -> None:
        await self.store.publish(migrations, self.key)

    async def transport(self, client: str) -> Transport:
        if client not in self.tokens:
            self.ids[client], self.tokens[client] = await self.store.add_client(client)
        # The client's id on the server: what the server signs its requests for.
        return self.make(str(self.ids[client]), self.tokens[client])

    async def reports(self, client: str) -> dict[int, StatusReport]:
        assert client.isidentifier(), client  # it goes into the SQL as it is
        rows = await aquery(
            self.store_url,
            "SELECT s.version, s.applied, s.error, s.attempts, s.checksum FROM store_client_status s "
            f"JOIN store_clients c ON c.id = s.client_id WHERE c.name = '{client}'",
        )
        return {
            Version.from_key(v): StatusReport(Version.from_key(v), bool(a), e, int(n), c)
            for v, a, e, n, c in rows
        }

    async def take_down(self) -> None:
        await asyncio.to_thread(self.server.stop)

    async def bring_up(self) -> None:
        await asyncio.to_thread(self.server.start)

    async def refusing_transport(self) -> Transport:
        return self.make("intruder", "not-a-token-of-this-server")

    async def request(self, client: str, action: str, version: int, requested_by: str) -> int:
        if client not in self.ids:
            await self.transport(client)
        [record] = await self.store.request_action(action, version, [self.ids[client]], requested_by)
        return record.id

    async def answers(self, client: str) -> dict[int, tuple[str, str | None]]:
        records = await self.store.actions(self.ids[client]) if client in self.ids else []
        return {r.id: (r.state, r.detail) for r in records if r.state in ACTION_STATES}

    async def changes(self, client: str) -> list[str]:
        if client not in self.ids:
            return []
        return [c.change_id for c in await self.store.inbox() if c.client_id == self.ids[client]]


@contextlib.asynccontextmanager
async def http_harness(store_url: str, tmp_path: Path) -> AsyncIterator[HttpHarness]:
    key, trusted = signing_key(tmp_path)
    requester = write_keypair(tmp_path / "request.key")
    request_key = load_private_key(tmp_path / "request.key")
    async with Store.open(store_url) as store:
        # cache_seconds=0: a publish through the harness's own store is seen by the next poll.
        server = ServerThread(
            lambda: create_app(store_url, admin_token=ADMIN, cache_seconds=0, request_key=request_key)
        )
        await asyncio.to_thread(server.start)
        try:
            yield HttpHarness(store_url, store, server, key, trusted, [requester])
        finally:
            await asyncio.to_thread(server.stop)


class TestHttpOnSQLite(TransportSuite):
    @pytest.fixture
    async def harness(self, tmp_path: Path) -> AsyncIterator[TransportHarness]:
        async with http_harness(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as harness:
            yield harness


class TestHttpOnPostgres(TransportSuite):
    @pytest.fixture
    async def harness(self, pg_url: str, tmp_path: Path) -> AsyncIterator[TransportHarness]:
        async with http_harness(pg_url, tmp_path) as harness:
            yield harness


# -- HTTP: retries, refusals and answers, on a mock server ---------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]
Answer = Callable[[], httpx.Response]


def answer(status: int, **kwargs: Any) -> Answer:
    """A new ``httpx.Response(status, **kwargs)`` each time it is given."""
    return lambda: httpx.Response(status, **kwargs)


@attrs.define
class Mocked:
    transport: HttpTransport
    clock: FakeClock
    requests: list[httpx.Request]


@contextlib.asynccontextmanager
async def mocked(*answers: Answer, handler: Handler | None = None, **options: Any) -> AsyncIterator[Mocked]:
    """An HttpTransport on ``httpx.MockTransport``: the answers in turn (the last one repeats), or
    the handler's; a fake clock, so backing off takes no time and each wait is recorded."""
    requests: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        response = (
            handler(request) if handler is not None else answers[min(len(requests), len(answers)) - 1]()
        )
        response.headers.setdefault(PROTOCOL_HEADER, str(PROTOCOL))  # a server of this release
        return response

    clock = FakeClock()
    options.setdefault("retries", 3)
    options.setdefault("backoff", RetryPolicy(base=1.0, factor=2.0, cap=30.0, jitter=0.0))
    async with httpx.AsyncClient(transport=httpx.MockTransport(respond)) as http:
        transport = HttpTransport("http://server.test", token="secret", clock=clock, http=http, **options)
        async with transport:
            yield Mocked(transport, clock, requests)


def offered(m: Migration) -> dict[str, Any]:
    return {
        "version": m.version.text,
        "name": m.name,
        "content": m.canonical_content(),
        "checksum": m.checksum,
        "signature": "c2lnbmF0dXJl",
        "signed_by": "someone",
        "applied_checksum": None,
    }


PENDING = answer(200, json={"migrations": [offered(V1)]}, headers={"ETag": '"1.1.0"'})


async def test_retries_with_backoff_on_503_then_succeeds() -> None:
    async with mocked(answer(503), answer(502, json={"error": "bad gateway"}), PENDING) as m:
        offer = await m.transport.fetch('"old"')
    assert versions(offer) == [1] and offer.etag == '"1.1.0"'
    assert len(m.requests) == 3
    assert m.clock.slept == [1.0, 2.0]
    for request in m.requests:
        assert request.url == "http://server.test/api/migrations/pending"
        assert request.headers["authorization"] == "Bearer secret"
        assert request.headers["if-none-match"] == '"old"'


async def test_gives_up_with_server_unavailable_after_the_retries() -> None:
    async with mocked(answer(503, json={"error": "the store failed"}), retries=2) as m:
        with pytest.raises(ServerUnavailable, match=r"503 the store failed \(tried 3 times\)"):
            await m.transport.fetch()
        assert len(m.requests) == 3 and m.clock.slept == [1.0, 2.0]
        with pytest.raises(ServerUnavailable):
            await m.transport.report([applied(V1)])
        assert len(m.requests) == 6


@pytest.mark.parametrize(
    ("retry_after", "waited"),
    [("7", 7.0), ("0.5", 1.0), ("3600", 30.0), ("Wed, 21 Oct 2037 07:28:00 GMT", 1.0)],
    ids=["longer-than-backoff", "shorter-than-backoff", "capped", "http-date"],
)
async def test_retry_after_is_honoured_up_to_the_cap(retry_after: str, waited: float) -> None:
    async with mocked(answer(429, headers={"Retry-After": retry_after}), PENDING) as m:
        assert versions(await m.transport.fetch()) == [1]
    assert m.clock.slept == [waited]


async def test_a_304_is_unchanged_with_the_etag() -> None:
    async with mocked(answer(304, headers={"ETag": '"1.1.0"'})) as m:
        offer = await m.transport.fetch('"1.1.0"')
    assert offer.unchanged and offer.etag == '"1.1.0"'


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
async def test_a_4xx_is_refused_at_once_without_retrying(status: int) -> None:
    async with mocked(answer(status, json={"error": "unknown token"})) as m:
        with pytest.raises(ServerRefused, match=f"refused: {status} unknown token"):
            await m.transport.fetch()
        with pytest.raises(ServerRefused):
            await m.transport.report([applied(V1)])
    assert len(m.requests) == 2
    assert m.clock.slept == []


@pytest.mark.parametrize(
    "malformed",
    [
        answer(200, text="<html>the proxy says hello</html>"),
        answer(200, content=b"\xff\xfe\x00garbage"),
        answer(200, headers={"Content-Encoding": "gzip"}, stream=httpx.ByteStream(b"not gzip at all")),
        answer(200, json=["not", "an", "object"]),
        answer(200, json={"migrations": [{"version": "1"}]}),
        answer(200, json={"migrations": [offered(V1) | {"version": 2}, offered(V1)]}),
    ],
    ids=["html", "binary", "bad-encoding", "list", "bad-version", "unordered"],
)
async def test_an_answer_of_the_wrong_shape_is_malformed(malformed: Answer) -> None:
    async with mocked(malformed) as m:
        with pytest.raises(MalformedAnswer):
            await m.transport.fetch()
    assert len(m.requests) == 1  # the same answer would come again: no retry


@pytest.mark.parametrize(
    "malformed",
    [
        answer(200, text="ok"),
        answer(200, json=["recorded"]),
        answer(200, json={"recorded": None}),
        answer(200, json={"drift": [{"version": 1}]}),
        answer(200, json={"recorded": "12"}),
        answer(200, json={"unchanged": [1.5]}),
        answer(200, json={"recorded": [True]}),
    ],
    ids=["text", "list", "null", "drift", "string", "float", "boolean"],
)
async def test_a_malformed_acknowledgement_is_malformed(malformed: Answer) -> None:
    async with mocked(malformed) as m:
        with pytest.raises(MalformedAnswer):
            await m.transport.report([applied(V1)])


async def test_many_reports_go_in_batches_and_the_acks_are_merged() -> None:
    reports = [StatusReport(v, True, None, 1, "0" * 64) for v in range(1, 2 * MAX_REPORTS + 501)]

    def ack(request: httpx.Request) -> httpx.Response:
        got = [r["version"] for r in json.loads(request.content)["reports"]]
        return httpx.Response(200, json={"recorded": got[:-1], "unchanged": got[-1:], "drift": []})

    async with mocked(handler=ack) as m:
        result = await m.transport.report(reports)
    assert [len(json.loads(r.content)["reports"]) for r in m.requests] == [MAX_REPORTS, MAX_REPORTS, 500]
    assert all(r.headers["content-type"] == "application/json" for r in m.requests)
    assert result.unchanged == (MAX_REPORTS, 2 * MAX_REPORTS, 2 * MAX_REPORTS + 500)
    assert len(result.recorded) == len(reports) - 3
    assert await m.transport.report([]) == ReportAck()
    assert len(m.requests) == 3


# -- HTTP: the network ---------------------------------------------------------------------------


async def test_a_closed_port_is_server_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    clock = FakeClock()
    async with HttpTransport(url, token="t", retries=2, clock=clock) as transport:
        with pytest.raises(ServerUnavailable, match=r"ConnectError.*\(tried 3 times\)"):
            await transport.fetch()
    assert len(clock.slept) == 2


async def test_a_server_that_never_answers_times_out_as_server_unavailable() -> None:
    with socket.socket() as listener:  # accepts connections (the kernel does) and says nothing
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        began = time.monotonic()
        async with HttpTransport(url, token="t", timeout=0.2, retries=1, clock=FakeClock()) as transport:
            # The read's timeout or the attempt's deadline, whichever the event loop sees first.
            with pytest.raises(ServerUnavailable, match=r"ReadTimeout|no complete answer within 0.2 s"):
                await transport.fetch()
        # Far less than the default timeout's 2 x 10 s: the 0.2 s one was used (a generous bound,
        # so that a loaded machine cannot fail it).
        assert time.monotonic() - began < 10


def self_signed_certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no authority signed, and its key (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_https_verifies_the_servers_certificate(tmp_path: Path) -> None:
    # Plain-http transports skip loading certificates (a start-up cost); https must still check them.
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed_certificate(tmp_path))

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    async with server:
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with HttpTransport(url, token="t", retries=0, clock=FakeClock()) as transport:
            with pytest.raises(ServerUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await transport.fetch()


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8080", "localhost", "ftp://server", "http://", "http:///api", "http://[::1"]
)
def test_a_url_that_is_not_http_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="server URL"):
        HttpTransport(url, token="t")


def test_options_that_make_no_sense_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="token"):
        HttpTransport("http://server", token=None)
    with pytest.raises(ConfigError, match="retries"):
        HttpTransport("http://server", token="t", retries=-1)
    with pytest.raises(ConfigError, match="timeout"):
        HttpTransport("http://server", token="t", timeout=0)


async def test_where_is_the_base_url_without_query_or_trailing_slash() -> None:
    async with HttpTransport("https://Server.example/sync/?x=1#f", token="s3cr3t") as transport:
        assert transport.where == "https://server.example/sync"
        assert "s3cr3t" not in repr(vars(transport).get("where"))


def test_the_plugin_registry_finds_the_http_transport() -> None:
    plugins = make_plugins(autoload=False)
    for url in ("http://x", "https://x/prefix"):
        spec = plugins.transport_for_url(url)
        assert spec.name == "http"
        assert spec.load() is HttpTransport
