"""``--json`` on the commands that change a client database: apply, process, queue, revert, repair.

One JSON object on stdout, the same exit codes as the text output, versions and names as strings,
times in ISO 8601 UTC.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import write_migrations
from dbtools import query, run, status_json

USERS = "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n-- migrate:down\nDROP TABLE users;\n"
ORDERS = "-- migrate:up\nCREATE TABLE orders (id INTEGER PRIMARY KEY);\n-- migrate:down\nDROP TABLE orders;\n"
BROKEN = "-- migrate:up\nCREATE TABLE broken (id INTEGER PRIMARY KEY) oops;\n"
HALF = "CREATE TABLE half (x INTEGER);\nINSERT INTO nowhere VALUES (1);\n"
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def test_apply_json_says_what_ran_and_what_stopped_it(tmp_path: Path, any_url: str) -> None:
    migrations = write_migrations(tmp_path / "m", {"0001_users.sql": USERS, "0002_orders.sql": ORDERS})

    done = run("apply", "--migrations", str(migrations), "--db", any_url, "--json")

    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["ok"] is True and body["applied"] == ["0001_users", "0002_orders"] and body["reverted"] == []
    assert body["failed"] is None and body["blocked"] is None and body["remaining"] == 0
    assert isinstance(body["elapsed_ms"], int)
    assert (
        json.loads(run("apply", "--migrations", str(migrations), "--db", any_url, "--json").stdout)["applied"]
        == []
    )

    (migrations / "0003_broken.sql").write_text(BROKEN)
    failed = run("apply", "--migrations", str(migrations), "--db", any_url, "--json")
    assert failed.returncode == 1
    body = json.loads(failed.stdout)
    assert body["ok"] is False and body["applied"] == []
    assert body["failed"]["name"] == "0003_broken" and body["failed"]["operation"] == "apply"
    assert (
        body["failed"]["attempts"] == 1 and body["failed"]["max_attempts"] == 3 and not body["failed"]["dead"]
    )
    assert ISO_UTC.fullmatch(body["failed"]["next_attempt_at"]) and "oops" in body["failed"]["error"]
    assert failed.stderr == "", "the failure is in the JSON, not printed a second time"

    waiting = run("apply", "--migrations", str(migrations), "--db", any_url, "--json")
    assert waiting.returncode == 1 and ISO_UTC.fullmatch(json.loads(waiting.stdout)["waiting_until"])


def test_queue_process_and_revert_json(tmp_path: Path, db_url: str) -> None:
    migrations = write_migrations(tmp_path / "m", {"0001_users.sql": USERS, "0002_orders.sql": ORDERS})
    assert run("apply", "--migrations", str(migrations), "--db", db_url).returncode == 0

    queued = run("revert", "--db", db_url, "1", "--queue-only", "--json")
    assert queued.returncode == 0, queued.stderr
    body = json.loads(queued.stdout)
    assert body["queued"] == ["0002_orders", "0001_users"] and body["reverted"] == [] and body["ok"]

    processed = run("process", "--db", db_url, "--json")
    assert processed.returncode == 0, processed.stderr
    assert json.loads(processed.stdout)["reverted"] == ["0002_orders", "0001_users"]

    requeued = run("queue", "--db", db_url, "0002_orders", "--json")
    assert requeued.returncode == 0, requeued.stderr
    assert json.loads(requeued.stdout) == {"queued": ["0001_users", "0002_orders"]}
    assert json.loads(run("process", "--db", db_url, "--json").stdout)["applied"] == [
        "0001_users",
        "0002_orders",
    ]

    reverted = run("revert", "--db", db_url, "--all", "--json")
    assert reverted.returncode == 0, reverted.stderr
    body = json.loads(reverted.stdout)
    assert (
        body["reverted"] == ["0002_orders", "0001_users"] and body["queued"] == [] and body["cancelled"] == []
    )
    assert json.loads(run("revert", "--db", db_url, "--all", "--json").stdout)["reverted"] == []


def test_repair_json(tmp_path: Path, db_url: str) -> None:
    migrations = write_migrations(
        tmp_path / "m", {"0001_users.sql": USERS, "0002_half.autocommit.up.sql": HALF}
    )
    dirty = run("apply", "--migrations", str(migrations), "--db", db_url, "--json")
    assert dirty.returncode == 1
    assert json.loads(dirty.stdout)["failed"]["dirty"] is True
    query(db_url, "CREATE TABLE nowhere (x INTEGER)")

    repaired = run("repair", "--db", db_url, "0002_half", "--applied", "--json")

    assert repaired.returncode == 0, repaired.stderr
    assert json.loads(repaired.stdout) == {"name": "0002_half", "state": "applied"}
    assert [r["state"] for r in status_json(db_url)] == ["applied", "applied"]
