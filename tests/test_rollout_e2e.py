"""A staged rollout end to end: a real ``migsync serve`` and 20 real ``migsync client sync``
processes. A broken migration, rolled out in stages canary (label) then all, stops itself after
the canary stage with no client outside it touched; its fixed version then reaches everyone.
And ``migsync clients add --label`` / ``clients label`` / ``rollout ...`` through the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import httpx
from conftest import write_migrations
from dbtools import run
from servers import serve_process

from migsync.core.version import Version
from migsync.server import Store

ADMIN = "admin-secret-token"
CANARIES = 2
CLIENTS = 20

OK = "-- migrate:up\nCREATE TABLE a (x INTEGER);\n-- migrate:down\nDROP TABLE a;\n"
BROKEN = (
    "-- migrate:up\nCREATE TABLE b (x INTEGER);\nINSERT INTO no_such_table VALUES (1);\n"
    "-- migrate:down\nDROP TABLE b;\n"
)
FIXED = "-- migrate:up\nCREATE TABLE b (x INTEGER);\n-- migrate:down\nDROP TABLE b;\n"


def serving(store: str) -> contextlib.AbstractContextManager[str]:
    """``migsync serve`` on a free loopback port until the block ends: its base URL."""
    return serve_process(store, "--no-panel", admin=ADMIN)


def ok(*args: str) -> str:
    result = run(*args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def publish(store: str, folder: Path, key: Path, *extra: str) -> str:
    return ok("publish", "--migrations", str(folder), "--store", store, "--signing-key", str(key), *extra)


def key(stored: Any) -> str:
    return Version.from_key(str(stored)).text


def applied_here(db: Path) -> dict[str, bool]:
    """What a client database knows: version -> applied."""
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        known = {key(v) for (v,) in conn.execute("SELECT version FROM client_migration")}
        done = {key(v) for (v,) in conn.execute("SELECT version FROM client_migration_status WHERE applied")}
    return {v: v in done for v in known}


def test_a_broken_migration_stops_after_the_canaries_then_a_fixed_one_reaches_all(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'server.db'}"
    key = tmp_path / "signing.key"
    ok("keygen", "--out", str(key))
    migrations = write_migrations(tmp_path / "migrations", {"0001_a.sql": OK})
    publish(store, migrations, key)  # version 1 goes to every client at once, as before

    clients: list[dict[str, Any]] = []
    for index in range(CLIENTS):
        labels = ["--label", "group=canary"] if index < CANARIES else ["--label", f"shop={index}"]
        added = json.loads(ok("clients", "add", f"client{index}", "--store", store, "--json", *labels))
        clients.append({**added, "db": tmp_path / f"client{index}.db", "canary": index < CANARIES})

    with serving(store) as base, httpx.Client(base_url=base, timeout=10) as admin:
        admin.headers["Authorization"] = f"Bearer {ADMIN}"

        def sync(which: list[dict[str, Any]]) -> None:
            def one(c: dict[str, Any]) -> int:
                result = run(
                    "client", "sync", "--retry-now", "--db", f"sqlite:///{c['db']}", "--server", base,
                    "--client-id", str(c["client_id"]), "--token", c["token"], "--trust-key", f"{key}.pub",
                )  # fmt: skip
                assert result.returncode in (0, 1), result.stderr  # 1: a migration failed
                return result.returncode

            for c in which:  # one after the other: each a process of its own, forked (dbtools.run)
                one(c)

        def rollout(rollout_id: int) -> dict[str, Any]:
            # through the server, as the panel would: reading it also tells the server's cache
            answer = admin.get(f"/api/rollouts/{rollout_id}")
            assert answer.status_code == 200, answer.text
            body: dict[str, Any] = answer.json()
            return body

        sync(clients)
        assert [applied_here(c["db"]) for c in clients] == [{"1": True}] * CLIENTS

        # The broken version 2, in stages: the canaries, then everyone.
        (migrations / "0002_b.sql").write_text(BROKEN)
        out = publish(store, migrations, key, "--stages", "canary,all", "--soak", "0")
        assert "rollout 1 started in stages canary,all" in out
        assert rollout(1)["state"] == "running"
        sync(clients)
        sync(clients)  # a second round: the rollout has paused by now; nobody new gets it
        status = rollout(1)
        assert (status["state"], status["stage"], status["stage_name"]) == ("paused", 1, "canary")
        # the first canary's failure paused it (100 % > 5 %): the other's came in after
        assert re.fullmatch(
            r"stage 1: [12] of [12] clients that reported failed \(100% > error threshold 5%\)",
            status["reason"],
        )
        assert status["stage_counts"] == [
            {"name": "canary", "started": True, "members": 2, "applied": 0, "failed": 2, "pending": 0},
            {"name": "all", "started": False, "members": 18, "applied": 0, "failed": 0, "pending": 18},
        ]
        for c in clients:
            if c["canary"]:
                assert applied_here(c["db"]) == {"1": True, "2": False}
            else:
                assert applied_here(c["db"]) == {"1": True}, c  # never even stored

        # The fix replaces version 2 (--force) in a new rollout, which supersedes the paused one.
        (migrations / "0002_b.sql").write_text(FIXED)
        out = publish(store, migrations, key, "--force", "--stages", "canary,all", "--soak", "0")
        assert "rollout 2 started" in out
        assert rollout(1)["state"] == "aborted"
        sync([c for c in clients if c["canary"]])
        assert (rollout(2)["state"], rollout(2)["stage_name"]) == ("running", "all")
        sync([c for c in clients if not c["canary"]])
        final = rollout(2)
        assert final["state"] == "completed", final
        assert [s["applied"] for s in final["stage_counts"]] == [2, 18]
        assert all(applied_here(c["db"]) == {"1": True, "2": True} for c in clients)
        assert [a["who"] for a in final["audit"]][-1] == "migsync"

    # The same rollout through the CLI, and the fleet view's labels.
    cli = json.loads(ok("rollout", "status", "2", "--store", store, "--json"))
    assert cli["state"] == "completed" and cli["stage_counts"] == final["stage_counts"]
    listed = json.loads(ok("rollout", "list", "--store", store, "--json"))["rollouts"]
    assert [(r["id"], r["state"]) for r in listed] == [(2, "completed"), (1, "aborted")]

    async def labels() -> dict[str, dict[str, str]]:
        async with Store.open(store, create=False) as opened:
            return {e.client.name: e.client.labels for e in await opened.fleet()}

    assert asyncio.run(labels())["client0"] == {"group": "canary"}


def test_the_rollout_commands(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'server.db'}"
    key = tmp_path / "signing.key"
    ok("keygen", "--out", str(key))
    ok("clients", "add", "a", "--store", store, "--label", "group=canary", "--label", "region=eu")
    ok("clients", "add", "b", "--store", store)
    labelled = json.loads(ok("clients", "label", "b", "region=us", "tier=gold", "--store", store, "--json"))
    assert labelled["labels"] == {"region": "us", "tier": "gold"}
    labelled = json.loads(ok("clients", "label", "b", "tier-", "--store", store, "--json"))
    assert labelled["labels"] == {"region": "us"}
    migrations = write_migrations(tmp_path / "m", {"0001_a.sql": OK})
    publish(store, migrations, key)
    started = json.loads(
        ok("rollout", "start", "1", "--stages", "region=eu,all", "--store", store, "--by", "ann", "--json")
    )
    assert (started["id"], started["state"], started["stages"]) == (1, "running", ["region=eu", "all"])
    assert started["created_by"] == "ann" and started["soak_seconds"] == 600
    paused = json.loads(ok("rollout", "pause", "1", "--store", store, "--by", "ann", "--json"))
    assert paused["state"] == "paused"
    again = run("rollout", "pause", "1", "--store", store)
    assert again.returncode == 2 and "paused already" in again.stderr
    advanced = json.loads(ok("rollout", "advance", "1", "--store", store, "--json"))
    assert (advanced["state"], advanced["stage_name"]) == ("running", "all")
    aborted = json.loads(ok("rollout", "abort", "1", "--store", store, "--json"))
    assert aborted["state"] == "aborted"
    text = ok("rollout", "status", "1", "--store", store)
    assert "rollout 1: 1 aborted (aborted by an operator)" in text
    assert "ann: paused (by ann)" in text
    for args, says in (
        (("rollout", "start", "1", "--stages", "10%,5%"), "percentages must grow"),
        (("rollout", "start", "1", "--stages", "all", "--soak", "soon"), "duration 'soon'"),
        (("rollout", "start", "1", "--stages", "all", "--success-threshold", "120%"), "--success-threshold"),
        (("rollout", "start", "9", "--stages", "all"), "version 9 is not published"),
        (("rollout", "status", "7"), "no rollout 7"),
        (("clients", "add", "c", "--label", "nokey"), "'nokey' is not key=value"),
        (("clients", "label", "nobody", "a=b"), "no client named 'nobody'"),
    ):
        result = run(*args, "--store", store)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert says in result.stderr, (args, result.stderr)
    bad_requirement = write_migrations(
        tmp_path / "bad", {"0001_a.sql": "-- migrate:up\n-- migsync:requires app~2\nSELECT 1;\n"}
    )
    refused = run(
        "publish", "--migrations", str(bad_requirement), "--store", store, "--signing-key", str(key)
    )
    assert refused.returncode == 2 and "app~2" in refused.stderr and "0001_a.sql" in refused.stderr
