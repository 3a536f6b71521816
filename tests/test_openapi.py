"""The API as a schema (issue 16): the OpenAPI document describes every route, the request
bodies are checked by the very schemas it shows, docs/schemas/ is current, and schemathesis,
driven from the document against a real server on loopback, finds no server error, no answer
off the document, and no refused request that changed the store (SQLite and Postgres)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import hypothesis
import pytest
from hypothesis import strategies as st
from servers import ServerThread
from starlette.routing import Route
from test_server_api import V1, V2, V3, migration

from migsync.protocol.json_check import SchemaViolation, check, supported
from migsync.protocol.signing import load_private_key, write_keypair
from migsync.protocol.wire import PROTOCOL, PROTOCOL_HEADER, ActionResult, EntityChange, StatusReport
from migsync.protocol.wire_schema import SCHEMAS, standalone
from migsync.server import Store
from migsync.server import tables as t
from migsync.server.app import create_app
from migsync.server.export import export
from migsync.server.openapi import ENDPOINTS, openapi_document
from migsync.server.rollouts import Policy, parse_stages
from migsync.server.validation import (
    InvalidChanges,
    InvalidReports,
    _change,
    _plainly_valid,
    _plainly_valid_report,
    _report,
    entity_changes,
    status_reports,
)
from migsync.transports import dropfiles as files_

REPO = Path(__file__).resolve().parent.parent
ADMIN = "admin-secret-token"


# -- the document ----------------------------------------------------------------------------------


def test_every_route_of_the_api_is_in_the_document() -> None:
    app = create_app("sqlite:///unused.db", admin_token=ADMIN, panel=False, appliers=[])
    routes = {
        (route.path, method)
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    paths = openapi_document()["paths"]
    documented = {(path, method.upper()) for path, operations in paths.items() for method in operations}
    assert routes == documented
    assert len(documented) == len(ENDPOINTS) == 15


def test_every_schema_says_only_what_the_server_enforces() -> None:
    for name, schema in SCHEMAS.items():
        assert supported(schema, SCHEMAS) == [], name
        json.dumps(standalone(name))  # plain JSON, every reference resolved
        assert "#/components" not in json.dumps(standalone(name)), name
        for example in schema.get("examples", []):
            check(schema, example, registry=SCHEMAS)  # what the docs show is what the server takes


def test_the_served_document_is_the_one_in_docs(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("api_schemas", REPO / "scripts" / "api_schemas.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    sys.modules["api_schemas"] = script
    spec.loader.exec_module(script)
    assert script.stale() == [], "docs/schemas/ is stale: run python scripts/api_schemas.py"
    # The check catches a changed, a missing and a left-over file.
    copy = tmp_path / "schemas"
    script.write(copy)
    assert script.stale(copy) == []
    (copy / "StatusReport.json").write_text("{}", encoding="utf-8")
    (copy / "Gone.json").write_text("{}", encoding="utf-8")
    (copy / "openapi.json").unlink()
    assert sorted(script.stale(copy)) == ["Gone.json", "StatusReport.json", "openapi.json"]
    assert sorted(script.write(copy)) == ["Gone.json", "StatusReport.json", "openapi.json"]
    assert script.stale(copy) == []


def test_a_refusal_names_the_field_and_what_it_must_be() -> None:
    report = {"version": "1", "applied": True, "error": None, "attempts": 1, "checksum": "a" * 64}
    cases = [
        (
            {"reports": [{**report, "applied": "yes"}]},
            "reports[0].applied must be true or false, not a string",
        ),
        (
            {"reports": [report, {**report, "attempts": -1}]},
            "reports[1].attempts must be a non-negative integer, not -1",
        ),
        ({"reports": [{**report, "version": "1\n"}]}, 'reports[0].version must be a version such as "42"'),
        ({"reports": [{**report, "dead": 1}]}, "reports[0].dead must be true or false"),
        ({"reports": [{**report, "x": 1}]}, "reports[0]: unknown field 'x'"),
        ({"reports": [{"version": "1"}]}, "reports[0]: missing 'applied', 'error', 'attempts', 'checksum'"),
        ({"reports": [1]}, "reports[0] must be an object, not a number"),
        ({"report": []}, 'the body must be an object with one key, "reports"'),
        ({"reports": [report] * 1001}, "reports holds 1001 reports; at most 1000 per request"),
    ]
    for body, says in cases:
        with pytest.raises(SchemaViolation) as refused:
            check(SCHEMAS["StatusReports"], body, registry=SCHEMAS)
        assert str(refused.value).startswith(says), (body, str(refused.value))
    check(SCHEMAS["StatusReports"], {"reports": [report, {**report, "dead": True}]}, registry=SCHEMAS)


_TEXT = st.text(max_size=4) | st.sampled_from(["a", "é", "\x00", "x" * 201, ""])
_CHANGE = st.fixed_dictionaries(
    {
        "id": _TEXT,
        "entity": _TEXT,
        "entity_id": _TEXT,
        "operation": st.sampled_from(["insert", "update", "delete", "upsert"]),
        "data": st.none() | st.just({"a": 1}) | st.just([1]),
        "schema_version": st.none() | st.sampled_from(["1", "1.2", "0" * 120, "1.", 3]),
        "timestamp": st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.just(True),
    }
)


@hypothesis.settings(max_examples=150, derandomize=True, database=None, deadline=None)
@hypothesis.given(_CHANGE)
def test_the_fast_path_for_changes_takes_only_what_the_schema_takes(item: dict[str, Any]) -> None:
    fast = _plainly_valid(item)
    try:
        check(SCHEMAS["EntityChange"], item, registry=SCHEMAS)
        slow: EntityChange | None = _change("changes[0]", item)
    except (SchemaViolation, InvalidChanges):
        slow = None
    if fast is not None:
        assert fast == slow
    if slow is None:
        with pytest.raises(InvalidChanges):
            entity_changes({"changes": [item]})
    else:
        assert entity_changes({"changes": [item]}) == [slow]


_REPORT = st.fixed_dictionaries(
    {
        "version": st.sampled_from(["1", "1.2", "0" * 120, "1.", "", 3, None]),
        "applied": st.booleans() | st.just(1) | st.none(),
        "error": st.none() | _TEXT | st.just("x" * 5000) | st.just(2),
        "attempts": st.integers(min_value=-2, max_value=2**63) | st.just(True) | st.just(1.0),
        "checksum": st.sampled_from(["0" * 64, "A" * 64, "0" * 63, "", None]),
    },
    optional={"dead": st.booleans() | st.just(0), "extra": st.just(1)},
)


@hypothesis.settings(max_examples=200, derandomize=True, database=None, deadline=None)
@hypothesis.given(_REPORT)
def test_the_fast_path_for_reports_takes_only_what_the_schema_takes(item: dict[str, Any]) -> None:
    """A report the fast path takes is the one the schema and the slow path make of it; one it
    does not take gets the slow path's own error message."""
    fast = _plainly_valid_report(item)
    try:
        check(SCHEMAS["StatusReport"], item, registry=SCHEMAS)
        slow: StatusReport | None = _report("reports[0]", item)
    except (SchemaViolation, InvalidReports):
        slow = None
    if fast is not None:
        assert fast == slow
    if slow is None:
        with pytest.raises(InvalidReports):
            status_reports({"reports": [item]})
    else:
        assert status_reports({"reports": [item]}) == [slow]


async def test_the_drop_folder_files_match_their_schemas(tmp_path: Path, key_path: Path) -> None:
    """What ``migsync export`` and a client write into a drop folder is what the schemas say,
    by our validator and by an independent one (jsonschema-rs, which comes with schemathesis)."""
    import jsonschema_rs

    url = f"sqlite:///{tmp_path / 'server.db'}"
    await _seed(url, key_path)
    async with Store.open(url) as store:
        await store.request_action("reapply", V2.version, [1], "admin")
        await export(store, tmp_path / "drop", load_private_key(key_path))
    report = StatusReport(V1.version, False, "boom", 2, V1.checksum, dead=True)
    change = EntityChange("c1", "note", "1", "update", {"x": 2}, None, 2.5)
    files = [
        *(("Bundle", json.loads(p.read_text())) for p in (tmp_path / "drop" / "migrations").glob("*.json")),
        *(("ActionsFile", json.loads(p.read_text())) for p in (tmp_path / "drop" / "actions").glob("*.json")),
        ("DropManifest", json.loads((tmp_path / "drop" / "manifest.json").read_text())),
        ("ReportsFile", files_.reports_document("1", [report])),
        ("AnswersFile", files_.answers_document("1", [ActionResult(1, "failed", "no down script")])),
        ("ChangesFile", files_.changes_document("1", [change])),
    ]
    kinds = [kind for kind, _ in files]
    assert kinds.count("Bundle") == 4 and kinds.count("ActionsFile") == 1
    for kind, document in files:
        check(SCHEMAS[kind], document, registry=SCHEMAS)
        assert jsonschema_rs.validator_for(standalone(kind)).is_valid(document), (kind, document)
        broken = {**document, "format": "migsync-other/2"}
        assert not jsonschema_rs.validator_for(standalone(kind)).is_valid(broken)
        with pytest.raises(SchemaViolation, match="format must be"):
            check(SCHEMAS[kind], broken, registry=SCHEMAS)


# -- schemathesis against a real server --------------------------------------------------------------

#: Examples per operation and mode (valid data, invalid data): small, so that the whole run costs a
#: few seconds of CPU on each store; derandomized, so that every run sends the same requests.
#: MIGSYNC_SCHEMATHESIS_EXAMPLES=500 searches deeper, by hand.
EXAMPLES = int(os.environ.get("MIGSYNC_SCHEMATHESIS_EXAMPLES", "12"))
#: Operations that take nothing (but a token): no invalid data to send them.
NOTHING_TO_NEGATE = ("GET /api/migrations", "GET /api/clients", "GET /api/openapi.json", "GET /api/rollouts")


def _checks(negative: bool) -> list[Callable[..., Any]]:
    """What schemathesis checks of each answer (imported here: schemathesis takes a second to
    import, which only the process that runs these tests should pay)."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi import checks

    found: list[Callable[..., Any]] = [
        not_a_server_error,
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_schema_conformance,
        checks.response_headers_conformance,
    ]
    return [*found, checks.negative_data_rejection] if negative else found


class Snapshot:
    """Every row of every table of the store, to compare before and after a refused request."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Any = None
        if url.startswith("postgresql"):
            self._loop = asyncio.new_event_loop()
            self._conn = self._loop.run_until_complete(asyncpg.connect(url))

    def take(self) -> dict[str, list[str]]:
        tables = [table.name for table in t.metadata.sorted_tables]
        if self._loop is None:
            path = self.url.removeprefix("sqlite:///")
            with sqlite3.connect(path) as conn:
                return {name: sorted(map(repr, conn.execute(f'SELECT * FROM "{name}"'))) for name in tables}
        assert self._conn is not None
        snapshot = {}
        for name in tables:
            rows = self._loop.run_until_complete(self._conn.fetch(f'SELECT * FROM "{name}"'))
            snapshot[name] = sorted(repr(tuple(row)) for row in rows)
        return snapshot

    def close(self) -> None:
        if self._loop is not None:
            self._loop.run_until_complete(self._conn.close())
            self._loop.close()


async def _seed(url: str, key_path: Path) -> tuple[str, str]:
    """A store with three published migrations, two clients (one has reported, been asked to
    revert and pushed a change): the tokens of the two."""
    async with Store.open(url) as store:
        v4 = migration(4, "CREATE TABLE e (x INTEGER)")
        await store.publish([V1, V2, V3, v4], load_private_key(key_path))
        a, token_a = await store.add_client("a")
        _, token_b = await store.add_client("b")
        await store.report(a, [StatusReport(V1.version, True, None, 1, V1.checksum)])
        await store.report(a, [StatusReport(V2.version, False, "boom", 2, V2.checksum)])
        [request] = await store.request_action("revert", V1.version, [a], "admin")
        await store.record_answers(a, [ActionResult(request.id, "queued", None)])
        await store.receive_changes(a, [EntityChange("c1", "note", "1", "insert", {"x": 1}, V1.version, 1.0)])
        # rollout 1, running: what the example of POST /api/rollouts/operations pauses
        await store.start_rollout([v4.version], parse_stages("canary,all"), Policy(), "admin")
    return token_a, token_b


@pytest.fixture
def fuzzed_server(any_store: str, key_path: Path) -> Iterator[tuple[ServerThread, str, dict[str, str]]]:
    tokens = asyncio.run(_seed(any_store, key_path))
    request_key = key_path.with_name("request.key")
    write_keypair(request_key)  # a server that makes requests: without one POST /api/actions is a 409
    server = ServerThread(
        lambda: create_app(
            any_store,
            admin_token=ADMIN,
            cache_seconds=0,
            seen_flush=0,
            panel=False,
            failed_auth_limit="100000/minute",
            request_key=load_private_key(request_key),
        )
    )
    server.start()
    try:
        yield server, any_store, {"client": tokens[0], "other": tokens[1]}
    finally:
        server.stop()


def test_schemathesis_finds_no_server_error_and_no_refusal_that_changed_the_store(
    fuzzed_server: tuple[ServerThread, str, dict[str, str]],
) -> None:
    server, url, tokens = fuzzed_server
    import requests
    import schemathesis
    from schemathesis import GenerationMode

    served = httpx.get(f"{server.url}/api/openapi.json").json()
    assert served == openapi_document()
    # 426 (another wire protocol) and 413 (too large) are this API's refusals too.
    refusals = ["400", "401", "403", "404", "405", "406", "413", "415", "422", "426", "429"]
    config = schemathesis.Config.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": refusals}}}
    )
    schema = schemathesis.openapi.from_dict(served, config=config)
    snapshot = Snapshot(url)
    session = requests.Session()
    seen: dict[str, dict[int, int]] = {}
    started = time.process_time()
    initial = snapshot.take()
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            _send_the_examples(operation, server.url, session, tokens)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(operation, mode, server.url, session, tokens, snapshot, seen)
        changed = snapshot.take() != initial  # the accepted requests: the snapshot sees a change
    finally:
        snapshot.close()
        session.close()
    spent = time.process_time() - started
    print(
        f"schemathesis on {url.split(':')[0]}: {sum(sum(s.values()) for s in seen.values())} requests, "
        f"{spent:.1f} s of CPU; statuses by operation: {seen}"
    )
    assert changed
    # Every operation answered, and valid data reached past authentication and validation.
    assert len(seen) == len(ENDPOINTS) * 2 - len(NOTHING_TO_NEGATE)
    for label in (
        "POST /api/migrations/status positive",
        "POST /api/changes positive",
        "GET /api/clients positive",
    ):
        assert 200 in seen[label], (label, seen[label])
    assert 201 in seen["POST /api/actions positive"] or 422 in seen["POST /api/actions positive"]
    for label, statuses in seen.items():
        if label.endswith("negative"):
            assert any(400 <= s < 500 for s in statuses), (label, statuses)


def _send_the_examples(operation: Any, base_url: str, session: Any, tokens: dict[str, str]) -> None:
    """The document's example bodies are accepted: the happy path, which random data rarely finds."""
    body = operation.definition.raw.get("requestBody")
    if body is None:
        return
    name = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    for example in SCHEMAS[name]["examples"]:
        admin = "adminToken" in operation.definition.raw["security"][0]
        headers = {"Authorization": f"Bearer {ADMIN if admin else tokens['client']}"}
        if not admin:
            headers[PROTOCOL_HEADER] = str(PROTOCOL)
        case = operation.Case(body=example, headers=headers)
        response = case.call(base_url=base_url, session=session)
        assert response.status_code in (200, 201), (operation.path, response.status_code, response.text)
        case.validate_response(response, checks=_checks(negative=False), headers=headers)


def _fuzz(
    operation: Any,
    mode: Any,
    base_url: str,
    session: Any,
    tokens: dict[str, str],
    snapshot: Snapshot,
    seen: dict[str, dict[int, int]],
) -> None:
    name = f"{operation.method.upper()} {operation.path}"
    label = f"{name} {mode.value}"
    negative = mode.value == "negative"
    if negative and name in NOTHING_TO_NEGATE:
        return
    statuses = seen.setdefault(label, {})
    security = operation.definition.raw.get("security", [])
    token = None
    if security:
        token = ADMIN if "adminToken" in security[0] else tokens["client"]
    checks = _checks(negative)

    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(operation.as_strategy(mode))
    def run(case: Any) -> None:
        if negative and any(value in ([], {}, None) for value in (case.query or {}).values()):
            # requests leaves such a parameter out of the URL: the request would not be invalid
            hypothesis.reject()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        before = snapshot.take()
        response = case.call(base_url=base_url, session=session, headers=headers)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        case.validate_response(response, checks=checks, headers=headers)
        if 400 <= response.status_code < 500:
            refused = f"{label}: refused with {response.status_code} and changed the store"
            assert snapshot.take() == before, refused

    run()


def test_the_document_names_the_protocol_header_a_client_must_send() -> None:
    pending = openapi_document()["paths"]["/api/migrations/pending"]["get"]
    [header] = [p for p in pending["parameters"] if p["name"] == PROTOCOL_HEADER]
    assert header["required"] and header["schema"]["enum"] == [str(PROTOCOL)]
