"""``migsync changes list|retry|discard`` on a real client database with a dead change."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from dbtools import query, run

from migsync.core.client import Client


async def _record(url: str) -> None:
    async with Client.connect(url, sinks=[], backend_options={"create": True}) as client:
        async with client.changes() as rec:
            await rec.insert("todo", 1, {"id": 1})
            await rec.insert("todo", 2, {"id": 2})
            await rec.insert("todo", 3, {"id": 3})
        async with client.backend.transaction() as tx:  # as after a refusal by the server
            await tx.execute(
                "UPDATE entity_changes SET attempts = max_attempts, error = 'refused by the server: no' "
                "WHERE entity_id = '1'"
            )


def test_list_retry_and_discard(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    asyncio.run(_record(url))
    listed = run("changes", "list", "--db", url, "--json")
    assert listed.returncode == 0, listed.stderr
    body = json.loads(listed.stdout)
    assert body["counts"] == {"open": 3, "dead": 1, "failed": 0}
    assert [(c["entity_id"], c["state"]) for c in body["changes"]] == [
        ("1", "dead"),
        ("2", "pending"),
        ("3", "pending"),
    ]
    text = run("changes", "list", "--db", url).stdout
    assert text.startswith("3 not pushed: 1 dead, 0 failed") and "refused by the server: no" in text

    dead_id = body["changes"][0]["id"]
    retried = run("changes", "retry", "--db", url, dead_id)
    assert retried.returncode == 0 and "1 change will be pushed again" in retried.stdout
    assert query(url, "SELECT attempts, error FROM entity_changes WHERE entity_id = '1'") == [(0, None)]

    assert run("changes", "retry", "--db", url).returncode == 2  # neither ids nor --all-dead
    discarded = run("changes", "discard", "--db", url, body["changes"][2]["id"], "--reason", "test data")
    assert discarded.returncode == 0 and "1 change discarded" in discarded.stdout
    assert query(url, "SELECT processed, error FROM entity_changes WHERE entity_id = '3'") == [
        (1, "test data")
    ]
    # Discarding again changes nothing: it is processed already.
    assert "0 changes discarded" in run("changes", "discard", "--db", url, body["changes"][2]["id"]).stdout
