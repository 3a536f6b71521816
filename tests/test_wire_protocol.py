"""Wire protocol 2: versions travel as strings, of any length, through HTTP and drop folders.

ory/pop's 20-digit versions do not fit a 64-bit integer, and JSON numbers above 2**53 lose
digits in JavaScript. A 20-digit version is published, applied, reported, reverted by the
admin's request and applied again, through a real server on loopback (SQLite and Postgres
stores) and through a drop folder. A peer of the older protocol is refused with a clear
message on both sides.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from dbtools import client_headers
from test_filedrop import drop_harness
from test_transports import ADMIN, http_harness

from migsync import Client
from migsync.client.sync import Syncer
from migsync.core.errors import MalformedAnswer, ServerRefused
from migsync.core.migration import ANY_DIALECT, Migration, Script
from migsync.core.version import Version
from migsync.protocol.wire import PROTOCOL, PROTOCOL_HEADER
from migsync.server.import_reports import import_reports
from migsync.transports import dropfiles
from migsync.transports.filedrop import FileDropTransport
from migsync.transports.http import HttpTransport

POP = "20150100000001000000"
USERS = Migration(
    1,
    "0001_users",
    up={ANY_DIALECT: Script("CREATE TABLE users (id INTEGER PRIMARY KEY)")},
    down={ANY_DIALECT: Script("DROP TABLE users")},
)
IDENTITIES = Migration(
    POP,
    f"{POP}_identities",
    up={ANY_DIALECT: Script("CREATE TABLE identities (id INTEGER PRIMARY KEY)")},
    down={ANY_DIALECT: Script("DROP TABLE identities")},
)


async def test_a_twenty_digit_version_travels_over_http(any_store: str, tmp_path: Path) -> None:
    async with http_harness(any_store, tmp_path) as harness:
        await harness.publish([USERS, IDENTITIES])
        url = f"sqlite:///{tmp_path / 'client.db'}"

        async def sync() -> None:
            async with (
                Client.connect(url, sinks=[], backend_options={"create": True}) as client,
                await harness.transport("shop") as transport,
            ):
                syncer = Syncer(client, transport, harness.trusted, request_keys=harness.requesters)
                result = await syncer.sync()
                assert result.ok, result

        await sync()
        [entry] = await harness.store.fleet()
        assert [v.text for v in entry.applied] == ["1", POP] and entry.pending == ()
        # The admin asks for a revert of the 20-digit version; the client carries it out.
        [request] = await harness.store.request_action("revert", Version.parse(POP), None, "admin")
        await sync()
        [entry] = await harness.store.fleet()
        assert [v.text for v in entry.applied] == ["1"] and entry.held_from == Version.parse(POP)
        await harness.store.request_action("reapply", Version.parse(POP), None, "admin")
        await sync()
        [entry] = await harness.store.fleet()
        assert [v.text for v in entry.applied] == ["1", POP]
        # And the JSON of the API carries it as a string.
        async with httpx.AsyncClient(base_url=harness.server.url) as http:
            pending = await http.get(
                "/api/migrations/pending", headers=client_headers(harness.tokens["shop"])
            )
            assert pending.json()["migrations"] == []
            fleet = await http.get("/api/clients", headers={"Authorization": f"Bearer {ADMIN}"})
        assert fleet.json()["clients"][0]["applied"] == ["1", POP]
        assert request.version.text == POP


async def test_a_twenty_digit_version_travels_through_a_drop_folder(tmp_path: Path) -> None:
    async with drop_harness(tmp_path) as harness:
        client_id = await harness.register("ship")
        await harness.publish([USERS, IDENTITIES])
        manifest = json.loads((harness.drop / dropfiles.MANIFEST).read_text())
        assert manifest["format"] == "migsync-manifest/2"
        assert [m["version"] for m in manifest["migrations"]] == ["1", POP]
        async with (
            Client.connect(
                f"sqlite:///{tmp_path / 'ship.db'}", sinks=[], backend_options={"create": True}
            ) as c,
            FileDropTransport(harness.url, client_id=client_id) as transport,
        ):
            assert (await Syncer(c, transport, harness.trusted).sync()).ok
        imported = await import_reports(harness.store, harness.drop / dropfiles.REPORTS_DIR)
        assert not imported.refused
        [entry] = await harness.store.fleet()
        assert [v.text for v in entry.applied] == ["1", POP]


async def test_a_drop_folder_an_older_migsync_wrote_is_still_read(tmp_path: Path) -> None:
    async with drop_harness(tmp_path) as harness:
        client_id = await harness.register("ship")
        await harness.publish([USERS])
        # As protocol 1 wrote them: format version 1, versions as numbers.
        for path in [
            harness.drop / dropfiles.MANIFEST,
            *(harness.drop / dropfiles.MIGRATIONS_DIR).glob("*.json"),
        ]:
            document = json.loads(path.read_text())
            document["format"] = document["format"].replace("/2", "/1")
            for item in document.get("migrations", [document]):
                item["version"] = int(item["version"])
            path.write_text(json.dumps(document))
        async with (
            Client.connect(
                f"sqlite:///{tmp_path / 'ship.db'}", sinks=[], backend_options={"create": True}
            ) as c,
            FileDropTransport(harness.url, client_id=client_id) as transport,
        ):
            result = await Syncer(c, transport, harness.trusted).sync()
        assert result.ok and result.stored == ("0001_users",)


async def test_a_client_of_protocol_1_is_refused_with_426_and_nothing_is_recorded(tmp_path: Path) -> None:
    async with http_harness(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as harness:
        await harness.publish([USERS])
        await harness.transport("old")
        old = {"Authorization": f"Bearer {harness.tokens['old']}"}  # no protocol header
        report = {
            "reports": [
                {"version": 1, "applied": True, "error": None, "attempts": 1, "checksum": USERS.checksum}
            ]
        }
        async with httpx.AsyncClient(base_url=harness.server.url) as http:
            for response in (
                await http.get("/api/migrations/pending", headers=old),
                await http.post("/api/migrations/status", headers=old, json=report),
                await http.get("/api/migrations/pending", headers=old | {PROTOCOL_HEADER: "1"}),
            ):
                assert response.status_code == 426
                assert "speaks an older migsync protocol (1)" in response.json()["error"]
                assert response.headers[PROTOCOL_HEADER] == str(PROTOCOL)
        [entry] = await harness.store.fleet()
        assert entry.applied == ()


async def test_a_server_of_protocol_1_is_refused_before_its_answer_is_read() -> None:
    def old_server(request: httpx.Request) -> httpx.Response:
        assert request.headers[PROTOCOL_HEADER] == str(PROTOCOL)
        return httpx.Response(200, json={"migrations": [{"version": 1}]})  # no protocol header

    http = httpx.AsyncClient(transport=httpx.MockTransport(old_server))
    transport = HttpTransport("http://old.example", client_id="c", token="t", http=http)
    with pytest.raises(MalformedAnswer, match=r"the server at http://old\.example speaks an older migsync"):
        await transport.fetch()
    await http.aclose()


async def test_a_server_of_another_protocol_is_refused() -> None:
    def other_server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"migrations": []}, headers={PROTOCOL_HEADER: "3"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(other_server))
    transport = HttpTransport("http://new.example", client_id="c", token="t", http=http)
    with pytest.raises(ServerRefused, match="speaks migsync protocol '3'"):
        await transport.fetch()
    await http.aclose()


async def test_dotted_versions_travel_through_a_drop_folder(tmp_path: Path) -> None:
    """Flyway's dotted versions: a bundle named after one (``1.1.json``) and the order 1 < 1.1 < 2."""
    dotted = [
        Migration(
            v,
            f"V{v.replace('.', '_')}__t",
            up={ANY_DIALECT: Script(f"CREATE TABLE t{v.replace('.', '_')} (x int)")},
        )
        for v in ("1", "1.1", "2")
    ]
    async with drop_harness(tmp_path) as harness:
        client_id = await harness.register("ship")
        await harness.publish(dotted)
        assert (harness.drop / dropfiles.MIGRATIONS_DIR / "1.1.json").is_file()
        async with (
            Client.connect(f"sqlite:///{tmp_path / 'ship.db'}", sinks=[]) as client,
            FileDropTransport(harness.url, client_id=client_id) as transport,
        ):
            result = await Syncer(client, transport, harness.trusted).sync()
            assert result.ok and result.stored == ("V1__t", "V1_1__t", "V2__t")
            assert [s.version.text for s in await client.status()] == ["1", "1.1", "2"]
        await import_reports(harness.store, harness.drop / dropfiles.REPORTS_DIR)
        [entry] = await harness.store.fleet()
        assert [v.text for v in entry.applied] == ["1", "1.1", "2"]
