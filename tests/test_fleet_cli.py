"""``migsync fleet``: the fleet view of a real store, through the real console script."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import MIGSYNC, write_migrations
from dbtools import migsync_env, run
from test_output import on_a_terminal

from migsync.server import StatusReport, Store

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
OTHER_CHECKSUM = "f" * 64
ERROR = "duplicate column: email\n[in: ALTER TABLE users ADD COLUMN email TEXT]"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a store that does not exist yet, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'server.db'}"
    return str(request.getfixturevalue("pg_url"))


def publish(store: str, tmp_path: Path, count: int) -> dict[int, str]:
    """Publish migrations 1..``count`` with ``migsync publish``: their checksums by version."""
    key = tmp_path / "signing.key"
    if not key.exists():
        keygen = run("keygen", "--out", str(key))
        assert keygen.returncode == 0, keygen.stderr
    files = {
        f"{v:04d}_t{v}.sql": f"-- migrate:up\nCREATE TABLE t{v} (x INTEGER);\n" for v in range(1, count + 1)
    }
    migrations = write_migrations(tmp_path / "migrations", files)
    published = run("publish", "--migrations", str(migrations), "--store", store, "--signing-key", str(key))
    assert published.returncode == 0, published.stderr

    async def checksums() -> dict[int, str]:
        async with Store.open(store, create=False) as opened:
            return {m.version: m.checksum for m in await opened.migrations()}

    return asyncio.run(checksums())


def add_clients(store: str, reports: dict[str, list[StatusReport]]) -> dict[str, int]:
    """Register a client per key of ``reports`` (in order) and record its reports (none: never seen)."""

    async def go() -> dict[str, int]:
        ids = {}
        async with Store.open(store, create=False) as opened:
            for name, batch in reports.items():
                ids[name], _ = await opened.add_client(name)
                if batch:
                    result = await opened.report(ids[name], batch)
                    assert result.unpublished == ()
        return ids

    return asyncio.run(go())


def fleet_json(store: str) -> list[dict[str, Any]]:
    result = run("fleet", "--store", store, "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    clients: list[dict[str, Any]] = json.loads(result.stdout)["clients"]
    return clients


def table_rows(stdout: str) -> list[list[str]]:
    """The table's lines, cut into cells (columns are at least two spaces apart)."""
    return [re.split(r" {2,}", line) for line in stdout.splitlines()]


DEAD_LINE = "2 (dead): duplicate column: email"


def test_fleet_shows_applied_failed_drift_pending_and_last_seen(store: str, tmp_path: Path) -> None:
    sums = publish(store, tmp_path, 3)
    ids = add_clients(
        store,
        {
            "shop-berlin": [StatusReport(1, True, None, 1, sums[1]), StatusReport(2, True, None, 1, sums[2])],
            "shop-paris": [
                StatusReport(1, True, None, 1, sums[1]),
                StatusReport(2, False, ERROR, 3, sums[2], dead=True),
            ],
            "shop-idle": [],
            "shop-drifted": [StatusReport(1, True, None, 1, OTHER_CHECKSUM)],
        },
    )

    clients = fleet_json(store)
    for entry in clients:
        assert ISO.fullmatch(entry.pop("created_at"))
    seen = [entry.pop("last_seen") for entry in clients]
    assert [s is not None and ISO.fullmatch(s) is not None for s in seen] == [True, True, False, True]
    assert seen[2] is None
    assert clients == [
        {
            "client_id": ids["shop-berlin"],
            "name": "shop-berlin",
            "labels": {},
            "app_version": None,
            "held_by_app": [],
            "applied": ["1", "2"],
            "latest_version": "2",
            "failed": [],
            "drift": [],
            "pending": ["3"],
            "held_from": None,
        },
        {
            "client_id": ids["shop-paris"],
            "name": "shop-paris",
            "labels": {},
            "app_version": None,
            "held_by_app": [],
            "applied": ["1"],
            "latest_version": "1",
            "failed": [{"version": "2", "error": ERROR, "attempts": 3, "dead": True}],
            "drift": [],
            "pending": ["2", "3"],
            "held_from": None,
        },
        {
            "client_id": ids["shop-idle"],
            "name": "shop-idle",
            "labels": {},
            "app_version": None,
            "held_by_app": [],
            "applied": [],
            "latest_version": None,
            "failed": [],
            "drift": [],
            "pending": ["1", "2", "3"],
            "held_from": None,
        },
        {
            "client_id": ids["shop-drifted"],
            "name": "shop-drifted",
            "labels": {},
            "app_version": None,
            "held_by_app": [],
            "applied": ["1"],
            "latest_version": "1",
            "failed": [],
            "drift": [{"version": "1", "published_checksum": sums[1], "reported_checksum": OTHER_CHECKSUM}],
            "pending": ["1", "2", "3"],
            "held_from": None,
        },
    ]

    table = run("fleet", env={"MIGSYNC_STORE": store})
    assert table.returncode == 0, table.stderr
    header, *rows = table_rows(table.stdout)
    assert header == ["id", "name", "latest", "applied", "pending", "drift", "last seen", "failed"]
    assert rows == [
        [str(ids["shop-berlin"]), "shop-berlin", "2", "2", "3", "-", seen[0], "-"],
        [
            str(ids["shop-paris"]),
            "shop-paris",
            "1",
            "1",
            "2-3",
            "-",
            seen[1],
            "2 (dead): duplicate column: email",
        ],
        [str(ids["shop-idle"]), "shop-idle", "-", "0", "1-3", "-", "never", "-"],
        [str(ids["shop-drifted"]), "shop-drifted", "1", "1", "1-3", "1", seen[3], "-"],
    ]
    assert "[in: ALTER TABLE" not in table.stdout, "only the first line of an error goes in the table"


def test_fleet_table_cuts_long_errors_and_long_version_lists(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'server.db'}"
    sums = publish(store, tmp_path, 12)
    hostile = "\x1b[2J\x1b[31m" + "no such table: " + "x" * 500 + "\nsecond line"
    ids = add_clients(
        store,
        {
            "gappy": [
                *(StatusReport(v, True, None, 1, sums[v]) for v in (2, 4, 6, 8, 10)),
                StatusReport(12, False, hostile, 1, sums[12]),
            ],
            "early": [StatusReport(v, True, None, 1, sums[v]) for v in (1, 2, 3)],
        },
    )

    table = run("fleet", "--store", store)
    assert table.returncode == 0, table.stderr
    assert "\x1b" not in table.stdout, "a client's error must not put escape sequences on the terminal"
    _, gappy, early = table_rows(table.stdout)
    assert gappy[:6] == [str(ids["gappy"]), "gappy", "10", "5", "1, 3, 5, 7, 9, ... (7 in all)", "-"]
    failed = gappy[7]
    # In a pipe (a CI log, grep) the first line is whole; only the first line, and escaped.
    assert failed == "12: ?[2J?[31mno such table: " + "x" * 500
    assert "second line" not in table.stdout
    # On a terminal it is cut to fit.
    shown = on_a_terminal("fleet", "--store", store, columns=200)
    [gappy_line] = [line for line in shown.splitlines() if "gappy" in line]
    assert "\x1b" not in shown and "no such table: xxx" in gappy_line and gappy_line.rstrip().endswith("...")
    assert "x" * 200 not in gappy_line
    assert early[:6] == [str(ids["early"]), "early", "3", "3", "4-12", "-"]

    [entry, _] = fleet_json(store)
    assert entry["failed"] == [{"version": "12", "error": hostile, "attempts": 1, "dead": False}], (
        "--json keeps it whole"
    )


def test_fleet_of_a_store_without_clients(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'server.db'}"
    publish(store, tmp_path, 1)
    table = run("fleet", "--store", store)
    assert (table.returncode, table.stdout) == (0, "no clients\n")
    assert fleet_json(store) == []


def test_fleet_needs_an_existing_store(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    for extra in ((), ("--json",)):
        result = run("fleet", "--store", f"sqlite:///{missing}", *extra)
        assert result.returncode == 2
        assert result.stderr.strip() == f"error: SQLite store {missing} does not exist"
        assert result.stdout == ""
    assert not missing.exists()
    no_store = subprocess.run(
        [MIGSYNC, "fleet"],
        capture_output=True,
        text=True,
        env={k: v for k, v in migsync_env().items() if k != "MIGSYNC_STORE"},
        timeout=60,
        check=False,
    )
    assert no_store.returncode == 2 and "--store" in no_store.stderr
    assert os.listdir(tmp_path) == []
