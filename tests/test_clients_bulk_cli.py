"""``migsync clients add --from FILE`` and ``migsync fleet``'s pages, through the real command."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import stat
from pathlib import Path

import pytest
from dbtools import run

from migsync.server import Store


def names_in(store: str) -> list[str]:
    async def read() -> list[str]:
        async with Store.open(store, create=False) as opened:
            return [c.name for c in await opened.clients()]

    return asyncio.run(read())


def tokens_work(store: str, rows: list[dict[str, str]]) -> bool:
    async def check() -> bool:
        async with Store.open(store, create=False) as opened:
            for row in rows:
                client = await opened.authenticate(row["token"])
                if client is None or (client.client_id, client.name) != (int(row["client_id"]), row["name"]):
                    return False
        return True

    return asyncio.run(check())


def test_csv_and_json_lines_register_every_row(any_store: str, tmp_path: Path) -> None:
    listing = tmp_path / "clients.csv"
    listing.write_text(
        "name,labels\nshop-berlin,region=eu;tier=gold\n\n shop-paris ,\n"
        + "".join(f"s{i},\n" for i in range(500))
    )
    added = run("clients", "add", "--from", str(listing), "--store", any_store)
    assert added.returncode == 0, added.stderr
    rows = list(csv.DictReader(io.StringIO(added.stdout)))
    assert [r["name"] for r in rows[:2]] == ["shop-berlin", "shop-paris"] and len(rows) == 502
    assert tokens_work(any_store, rows)

    lines = tmp_path / "more.jsonl"
    lines.write_text('{"name": "j-1"}\n\n{"name": "j-2", "labels": {"tier": "bronze"}}\n')
    out = tmp_path / "tokens.jsonl"
    second = run(
        "clients", "add", "--from", str(lines), "--store", any_store, "--json", "--tokens-out", str(out)
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout == "" and f"2 clients added; their tokens are in {out}" in second.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["name"] for w in written] == ["j-1", "j-2"]
    assert tokens_work(any_store, [{k: str(v) for k, v in w.items()} for w in written])
    again = run("clients", "add", "--from", str(lines), "--store", any_store, "--tokens-out", str(out))
    assert again.returncode == 2 and "exists already; it is not overwritten" in again.stderr


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("name\na\nb\na\n", "line 4: client 'a' is listed twice (first at {file} line 2)"),
        ("name,colour\na,red\n", "line 1: unknown column colour"),
        ("id\n1\n", "line 1: the header must name a 'name' column"),
        ("name\na\n\x01bad\n", "line 3: client name '\\x01bad' holds control characters"),
        ("name,labels\na,nolabel\n", "line 2: labels must be key=value;key=value"),
        ("name\na,b\n", "line 2: 2 fields, but the header has 1"),
        ('{"name": "a"}\n{"name": "b", "colour": "red"}\n', "line 2: unknown key 'colour'"),
        ('{"name": "a"}\n{"name": 3}\n', "line 2: name must be text, not 3"),
        ('{"name": "a"}\n{"name": "b"\n', "line 2: not a JSON object"),
        ('{"name": "a"}\n["b"]\n', "line 2: expected an object"),
        ('{"name": "a", "labels": {"k": 1}}\n', "line 1: labels must be an object of text to text"),
        ('{"name": "taken"}\n', "line 1: a client named 'taken' exists already"),
        ("name\n", "lists no clients"),
    ],
)
def test_a_bad_row_registers_nothing(tmp_path: Path, content: str, error: str) -> None:
    store = f"sqlite:///{tmp_path / 'server.db'}"
    assert run("clients", "add", "taken", "--store", store).returncode == 0
    listing = tmp_path / "clients.txt"
    listing.write_text(content)
    out = tmp_path / "tokens.csv"
    result = run("clients", "add", "--from", str(listing), "--store", store, "--tokens-out", str(out))
    assert result.returncode == 2, result.stdout
    # One line, naming the file (and the line), and what is wrong.
    assert result.stderr.startswith(f"error: {listing}") and result.stderr.count("\n") == 1, result.stderr
    assert error.format(file=listing) in result.stderr, result.stderr
    assert result.stdout == ""
    assert names_in(store) == ["taken"], "nothing registered"
    assert not out.exists(), "no token file for a refused list"


def test_name_or_from_but_not_both(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'server.db'}"
    for args in ((), ("a", "--from", "x.csv")):
        result = run("clients", "add", *args, "--store", store)
        assert result.returncode == 2 and "give a client NAME or --from FILE" in result.stderr
    result = run("clients", "add", "a", "--tokens-out", "t", "--store", store)
    assert result.returncode == 2 and "--tokens-out goes with --from FILE" in result.stderr
    missing = run("clients", "add", "--from", str(tmp_path / "none.csv"), "--store", store)
    assert missing.returncode == 2 and f"cannot read {tmp_path / 'none.csv'}" in missing.stderr


def test_fleet_pages_with_a_cursor_and_filters(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'server.db'}"
    listing = tmp_path / "c.csv"
    listing.write_text("name\n" + "".join(f"shop-{i}\n" for i in range(7)) + "berlin\n")
    assert run("clients", "add", "--from", str(listing), "--store", store).returncode == 0
    first = run("fleet", "--store", store, "--limit", "3", "--json")
    body = json.loads(first.stdout)
    assert [c["name"] for c in body["clients"]] == ["shop-0", "shop-1", "shop-2"]
    assert body["total"] == 8 and body["counts"] == {"ok": 8, "failing": 0, "pending": 0, "drift": 0}
    second = json.loads(
        run("fleet", "--store", store, "--limit", "3", "--cursor", body["next_cursor"], "--json").stdout
    )
    assert [c["name"] for c in second["clients"]] == ["shop-3", "shop-4", "shop-5"]
    every = json.loads(run("fleet", "--store", store, "--limit", "3", "--all", "--json").stdout)
    assert len(every["clients"]) == 8 and every["next_cursor"] is None
    table = run("fleet", "--store", store, "--limit", "3")
    assert table.returncode == 0 and "3 of 8 clients (8 ok, 0 failing, 0 pending, 0 drift)" in table.stderr
    assert f"next page: --cursor {body['next_cursor']}" in table.stderr
    named = json.loads(run("fleet", "--store", store, "--name", "BERL", "--json").stdout)
    assert [c["name"] for c in named["clients"]] == ["berlin"]
    assert json.loads(run("fleet", "--store", store, "--state", "failing", "--json").stdout)["clients"] == []
    bad = run("fleet", "--store", store, "--cursor", "nope")
    assert bad.returncode == 2 and "cursor 'nope' is not one this server gave out" in bad.stderr
    bad_version = run("fleet", "--store", store, "--applied", "v1")
    assert bad_version.returncode == 2 and "'v1' is not a version" in bad_version.stderr
