"""The conformance suites on the built-ins: backends (:mod:`migsync.testing.backend_suite`) and event
sinks (:mod:`migsync.testing.sink_suite`); the transports run theirs in test_transports.py and
test_filedrop.py. The suites between them exercise every member of every plugin contract."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import asyncpg
import pytest

from migsync import Client
from migsync.core import contracts, events, sync_events
from migsync.core.events import EventSink
from migsync.core.plugins import Plugins, make_plugins
from migsync.testing import FakeClock, backend_suite, sink_suite, transport_suite
from migsync.testing.backend_suite import BackendSuite, migration
from migsync.testing.sink_suite import EVERY_KIND, EventSinkSuite


class TestSQLite(BackendSuite):
    @pytest.fixture
    def backend_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'conformance.db'}"

    @pytest.fixture
    def plugins(self) -> Plugins:
        return make_plugins(autoload=False)


class TestPostgres(BackendSuite):
    @pytest.fixture
    def backend_url(self, pg_url: str) -> str:
        return pg_url

    @pytest.fixture
    def plugins(self) -> Plugins:
        return make_plugins(autoload=False)


async def test_postgres_schema_option_holds_only_the_bookkeeping(pg_url: str) -> None:
    url = f"{pg_url}?schema=custom_schema"
    users = migration(1, "0001_users", "CREATE TABLE users (id INTEGER)", "DROP TABLE users")
    async with Client.connect(
        url, plugins=make_plugins(autoload=False), sinks=[], clock=FakeClock()
    ) as client:
        result = await client.apply([users])
        assert result.ok
        assert [s.state for s in await client.status()] == ["applied"]
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('public', 'custom_schema') ORDER BY 1, 2"
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [
        ("custom_schema", "client_migration"),
        ("custom_schema", "client_migration_status"),
        ("custom_schema", "entity_changes"),
        ("custom_schema", "migration_changes"),
        ("custom_schema", "migsync_actions"),
        ("custom_schema", "migsync_meta"),
        ("custom_schema", "migsync_report_outbox"),
        ("public", "users"),
    ]


# -- event sinks --------------------------------------------------------------------------------


class TestLoggingSink(EventSinkSuite):
    @pytest.fixture
    def sink_name(self) -> str:
        return "logging"

    @pytest.fixture
    def plugins(self) -> Plugins:
        return make_plugins(autoload=False)


class TestBusSink(EventSinkSuite):
    @pytest.fixture
    def sink_name(self) -> str:
        return "bus"

    @pytest.fixture
    def plugins(self) -> Plugins:
        return make_plugins(autoload=False)


class TestJsonLinesSink(EventSinkSuite):
    @pytest.fixture
    def sink_name(self) -> str:
        return "jsonl"

    @pytest.fixture
    def sink_options(self, tmp_path: Path) -> dict[str, str]:
        return {"path": str(tmp_path / "events.jsonl")}

    @pytest.fixture
    def plugins(self) -> Plugins:
        return make_plugins(autoload=False)

    async def test_every_event_is_one_json_line(self, sink: EventSink, tmp_path: Path) -> None:
        for event in EVERY_KIND:
            await sink.emit(event)
        await sink.aclose()  # type: ignore[attr-defined]
        lines = (tmp_path / "events.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line)["kind"] for line in lines] == [event.kind for event in EVERY_KIND]


# -- the suites cover every member of every contract --------------------------------------------

SUITES = {"backend": backend_suite, "transport": transport_suite, "event sink": sink_suite}


@pytest.mark.parametrize("kind", sorted(contracts.PROTOCOLS))
def test_the_suite_of_each_kind_exercises_every_contract_member(kind: str) -> None:
    """A member the suite never touches is a member a plugin could get wrong unnoticed."""
    source = inspect.getsource(SUITES[kind])
    for member in contracts.members(kind):
        if member.name in ("__aenter__", "__aexit__"):
            used = re.search(
                r"async with (await )?(make_backend\(\)|harness\.transport\(|backend|transport)", source
            )
        else:
            used = re.search(rf"\.{member.name}\b", source)
        assert used, f"{SUITES[kind].__name__} never uses {kind} member {member.name}"


@pytest.mark.parametrize("kind", sorted(contracts.PROTOCOLS))
def test_every_built_in_keeps_its_contract(kind: str) -> None:
    plugins = make_plugins(autoload=False, check_builtins=True)  # imports and checks each on build
    registry = {
        "backend": plugins.backends,
        "transport": plugins.transports,
        "event sink": plugins.event_sinks,
    }
    for spec in registry[kind]:
        assert contracts.problems(kind, spec.load()) == [], spec.name


def test_the_sink_suite_emits_every_kind_of_event() -> None:
    kinds = {
        value.kind
        for module in (events, sync_events)
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, events.Event) and "kind" in vars(value)
    } - {"event"}
    assert {event.kind for event in EVERY_KIND} == kinds
