"""``migsync client panel``: a client database's state in a browser, read-only, served by a real uvicorn.

The client database is a real SQLite file brought into each state by real syncs with the
in-memory server (a test double of the server only) and by the processor itself.
"""

from __future__ import annotations

import html
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from dbtools import kill, query, start
from servers import ServerThread, free_port

from migsync.client.panel import create_client_panel
from migsync.client.sync import Syncer
from migsync.core.client import Client
from migsync.protocol.signing import load_private_key, write_keypair
from migsync.testing import FakeClock
from migsync.testing.backend_suite import migration
from migsync.transports.memory import MemoryServer, MemoryTransport

V1 = migration(1, "0001_users", "CREATE TABLE users (id INTEGER PRIMARY KEY)", "DROP TABLE users")
#: fails with an error that holds markup: the page must show it as text
V2 = migration(2, "0002_bad", "CREATE TABLE <script>x</script> (id INTEGER)")
V3 = migration(3, "0003_orders", "CREATE TABLE orders (id INTEGER PRIMARY KEY)", "DROP TABLE orders")


async def _synced(url: str, tmp_path: Path) -> MemoryServer:
    """A client at ``url`` that applied 0001, has 0002 dead, and 0003 held by a revert the admin
    asked for, with a data change waiting."""
    public = write_keypair(tmp_path / "key")
    requester = write_keypair(tmp_path / "request-key")
    server = MemoryServer(request_key=load_private_key(tmp_path / "request-key"))
    server.publish_signed([V1, V2, V3], load_private_key(tmp_path / "key"))
    clock = FakeClock()
    async with Client.connect(
        url, sinks=[], backend_options={"create": True}, clock=clock, max_attempts=1
    ) as c:
        syncer = Syncer(c, MemoryTransport(server, client_id="c1"), [public], request_keys=[requester])
        await syncer.sync()
        server.request("c1", "revert", 3, "alice <admin>")
        await syncer.sync()
        async with c.changes() as rec:
            await rec.insert("users", 1, {"id": 1})
    return server


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'client.db'}"


async def test_the_page_shows_states_errors_the_hold_and_the_requests(db: str, tmp_path: Path) -> None:
    await _synced(db, tmp_path)
    served = ServerThread(lambda: create_client_panel(db))
    served.start()
    try:
        async with httpx.AsyncClient(base_url=served.url) as http:
            page = await http.get("/")
            state = (await http.get("/state.json")).json()
            css = await http.get("/panel.css")
    finally:
        served.stop()
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert "form-action 'none'" in page.headers["content-security-policy"]
    body = page.text
    assert "<form" not in body, "read-only: nothing to post"
    assert '<tr id="v1" class="applied">' in body
    assert '<tr id="v2" class="dead">' in body
    assert '<tr id="v3" class="held">' in body
    assert "held from version 3" in body
    # The error and who asked are shown as text, never as markup.
    assert "<script>x</script>" not in body and html.escape("<script>x</script>", quote=False) in body
    assert "alice &lt;admin&gt;" in body
    assert 'id="changes-waiting">1<' in body
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")

    assert state["hold_from"] == "3" and state["changes_waiting"] == 1
    assert [(m["name"], m["state"], m["held"]) for m in state["migrations"]] == [
        ("0001_users", "applied", False),
        ("0002_bad", "dead", False),
        ("0003_orders", "pending", True),
    ]
    [request] = state["requests"]
    assert (request["action"], request["version"], request["state"]) == ("revert", "3", "done")
    assert request["requested_by"] == "alice <admin>"


async def test_the_page_writes_nothing(db: str, tmp_path: Path) -> None:
    await _synced(db, tmp_path)
    path = Path(db.removeprefix("sqlite:///"))
    before = (path.read_bytes(), query(db, "SELECT COUNT(*) FROM migsync_actions"))
    served = ServerThread(lambda: create_client_panel(db))
    served.start()
    try:
        async with httpx.AsyncClient(base_url=served.url) as http:
            for _ in range(3):
                assert (await http.get("/")).status_code == 200
            assert (await http.post("/")).status_code == 405
    finally:
        served.stop()
    assert (path.read_bytes(), query(db, "SELECT COUNT(*) FROM migsync_actions")) == before


async def test_a_database_that_goes_away_is_a_503_page(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gone.db'}"
    async with Client.connect(url, sinks=[], backend_options={"create": True}):
        pass
    served = ServerThread(lambda: create_client_panel(url))
    served.start()
    try:
        query(url, "DROP TABLE client_migration")
        async with httpx.AsyncClient(base_url=served.url) as http:
            page = await http.get("/")
            as_json = await http.get("/state.json")
    finally:
        served.stop()
    assert page.status_code == 503 and "Database unavailable" in page.text and "client_migration" in page.text
    assert as_json.status_code == 503 and "client_migration" in as_json.json()["error"]


def test_the_command_serves_the_page_and_refuses_a_missing_database(db: str, tmp_path: Path) -> None:
    missing = start("client", "panel", "--db", f"sqlite:///{tmp_path / 'missing.db'}", "--port", "1")
    _, stderr = missing.communicate(timeout=30)
    assert missing.returncode == 2 and "does not exist" in stderr

    import asyncio

    asyncio.run(_synced(db, tmp_path))
    port = free_port()
    proc = start("client", "panel", "--db", db, "--port", str(port))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the panel did not start"
                time.sleep(0.1)
        assert page.status_code == 200 and '<tr id="v3" class="held">' in page.text
    finally:
        kill(proc)


def test_the_client_panel_does_not_import_the_server() -> None:
    code = (
        "import sys, migsync.client.panel; "
        "print(sorted(m for m in ('sqlalchemy', 'migsync.server') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
