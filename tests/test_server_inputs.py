"""Inputs that once made the server answer 500 or 503 (issue 16): each is now a 4xx naming what is
wrong, or is stored safely; and a 503 never shows the store's URL. The real app through
httpx.ASGITransport, on SQLite and Postgres stores."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from dbtools import aquery, drop_client_file
from test_dropfolder_actions import V1 as DV1
from test_dropfolder_actions import open_drop
from test_panel import panel_on
from test_server_api import ADMIN_HEADERS, V1, Api, api_on, failed
from test_server_api import api as api

from migsync.protocol.wire import StatusReport
from migsync.server.app import STORE_FAILED
from migsync.transports import dropfiles as files

SURROGATE_BODY = (
    '{"reports": [{"version": "1", "applied": false, "error": "bad \\ud800 byte", "attempts": 1, '
    '"checksum": "%s"}]}'
)


async def test_a_report_with_an_unpaired_surrogate_is_stored_with_a_replacement_character(api: Api) -> None:
    await api.publish(V1)
    me = await api.client("a")
    body = (SURROGATE_BODY % V1.checksum).encode()
    response = await api.http.post(
        "/api/migrations/status", headers=me | {"Content-Type": "application/json"}, content=body
    )
    assert response.status_code == 200, response.text
    assert response.json()["recorded"] == ["1"]
    [client] = (await api.http.get("/api/clients", headers=ADMIN_HEADERS)).json()["clients"]
    assert json.dumps(client).count("bad \\ufffd byte") == 1, client


@pytest.mark.parametrize(
    "version",
    [str(2**63), str(2**64), "9" * 100, 2**63, "1.", "", "x", None, True, -1, 1.5],
    ids=lambda v: repr(v)[:12],
)
async def test_a_request_with_a_bad_version_is_422_naming_version(api: Api, version: object) -> None:
    await api.publish(V1)
    await api.client("a")
    body = {"action": "revert", "version": version, "clients": None, "requested_by": "me"}
    response = await api.http.post("/api/actions", headers=ADMIN_HEADERS, json=body)
    assert response.status_code == 422, response.text
    assert "version" in response.json()["error"]
    assert (await api.http.get("/api/actions", headers=ADMIN_HEADERS)).json()["actions"] == []


@pytest.mark.parametrize("limit", ["²", "١٢", "9" * 5000, "-1", "0", "", "1.5", " 1"])
async def test_a_bad_limit_is_422_naming_limit(api: Api, limit: str) -> None:
    response = await api.http.get("/api/actions", headers=ADMIN_HEADERS, params={"limit": limit})
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("limit must be")
    assert (await api.http.get("/api/actions?limit=5", headers=ADMIN_HEADERS)).status_code == 200


async def test_out_of_range_client_ids_in_the_panel_are_404(any_store: str, tmp_path: Path) -> None:
    async with panel_on(tmp_path / "panel", store_url=any_store) as panel:
        assert (await panel.login()).status_code == 303
        for client_id in (str(2**63), str(2**31), "9" * 400, "9" * 5000, "0", "x", "-1", "1.0", "²"):
            response = await panel.http.get(f"/admin/clients/{client_id}")
            assert response.status_code == 404, (client_id, response.status_code)
            if client_id == "0":  # an id a store can hold: the empty form is what is wrong
                continue
            posted = await panel.http.post(
                f"/admin/clients/{client_id}/actions", data={"csrf": await panel.csrf()}
            )
            assert posted.status_code == 404, (client_id, posted.status_code)


async def test_a_report_file_with_an_unpaired_surrogate_does_not_stop_import_reports(
    any_store: str, tmp_path: Path
) -> None:
    async for drop in open_drop(any_store, tmp_path):
        ship, kiosk = drop.ship, str(drop.ids["kiosk"])
        reports = drop.drop / files.REPORTS_DIR
        bad = files.reports_document(ship, [StatusReport(1, False, "x", 1, DV1.checksum)])
        data = files.dump(bad).replace(b'"x"', b'"bad \\ud800 byte"')
        assert b"\\ud800" in data
        drop_client_file(reports, ship, data, 1000)
        good = files.reports_document(kiosk, [StatusReport(1, True, None, 1, DV1.checksum)])
        drop_client_file(reports, kiosk, files.dump(good), 2000)
        result = await drop.import_()
        assert result.refused == () and len(result.imported) == 2
        fleet = {c.client.name: c for c in await drop.store.fleet()}
        assert fleet["kiosk"].applied == (DV1.version,)
        [failure] = fleet["ship"].failed
        assert failure.error == "bad \ufffd byte"


async def test_a_503_says_the_store_failed_but_not_which_store(
    any_store: str, key_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with api_on(any_store, key_path) as api:
        await api.publish(V1)
        me = await api.client("a")
        # Someone breaks the store under the running server.
        await aquery(api.url, "DROP TABLE store_client_status")
        with caplog.at_level(logging.ERROR, logger="migsync.server"):
            response = await api.report(me, failed(V1, "boom"))
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert response.json() == {"error": STORE_FAILED}
        hidden = ("server.db", "127.0.0.1", "postgres", "migsync_test", "store_client_status")
        assert not any(h in response.text for h in hidden)
        [line] = [r.getMessage() for r in caplog.records if r.name == "migsync.server"]
        assert "store_client_status" in line and ("server.db" in line or "migsync_test" in line)


@pytest.mark.parametrize(("length", "status"), [("²", 400), ("١٢", 400), ("9" * 5000, 413), ("-1", 400)])
async def test_a_bad_content_length_is_a_4xx(api: Api, length: str, status: int) -> None:
    me = await api.client("a")
    response = await api.http.post(
        "/api/migrations/status",
        headers={**me, "Content-Type": "application/json", "Content-Length": length.encode()},
        content=b'{"reports": []}',
    )
    assert response.status_code == status, response.text
