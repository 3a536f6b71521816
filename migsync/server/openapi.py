"""The HTTP API described: every endpoint, and the OpenAPI 3.1 document made from that description.

:data:`ENDPOINTS` is what :func:`migsync.server.app.create_app` builds its routes from (each
endpoint's ``name`` is its handler's: one without a handler fails when the app is made; a
handler without an endpoint is never routed), and the request bodies are checked against the
very schemas the document shows (:mod:`migsync.protocol.wire_schema`). So the document is never a
hand-kept copy: it is served at ``GET /api/openapi.json`` and written to ``docs/schemas/`` by
``scripts/api_schemas.py``.
"""

from __future__ import annotations

from typing import Any

import attrs

from migsync.protocol.wire import APP_VERSION_HEADER, APP_VERSION_PATTERN, PROTOCOL, PROTOCOL_HEADER
from migsync.protocol.wire_schema import FLEET_STATES, SCHEMAS, ref

__all__ = [
    "ENDPOINTS",
    "FLEET_QUERY",
    "MAX_FLEET_LIMIT",
    "MAX_LIMIT",
    "Endpoint",
    "QueryInt",
    "QueryText",
    "openapi_document",
]

#: The most requests ``GET /api/actions?limit=`` lists.
MAX_LIMIT = 100_000

#: The most clients one page of ``GET /api/clients`` holds.
MAX_FLEET_LIMIT = 1000
#: The most seconds ``GET /api/clients?stale=`` takes (about 31 years).
_MAX_STALE = 10**9

CLIENT = "clientToken"
ADMIN = "adminToken"


@attrs.frozen
class QueryInt:
    """A whole-number query parameter from ``minimum`` to ``maximum``, optional."""

    name: str
    description: str
    minimum: int
    maximum: int

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}


@attrs.frozen
class QueryText:
    """A text query parameter, optional: at most ``most`` characters, or one of ``choices``."""

    name: str
    description: str
    most: int = 200
    choices: tuple[str, ...] = ()

    def schema(self) -> dict[str, Any]:
        if self.choices:
            return {"type": "string", "enum": list(self.choices)}
        return {"type": "string", "maxLength": self.most}


@attrs.frozen
class Endpoint:
    """One operation of the API: where, who may call it, what it takes and what it answers."""

    #: the handler's name on the app's API object, and the document's ``operationId``
    name: str
    method: str
    path: str
    summary: str
    #: who authenticates: CLIENT, ADMIN, or None (anyone)
    auth: str | None
    #: the schema of the JSON body (a name in :data:`SCHEMAS`), or None for no body
    body: str | None = None
    query: tuple[QueryInt | QueryText, ...] = ()
    #: (status, what it means, the answer's schema: a name in SCHEMAS, a schema, or None for no body)
    answers: tuple[tuple[int, str, str | dict[str, Any] | None], ...] = ()
    #: the path's parameters: name -> the values it may take
    path_values: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: the path's parameters that are ids (whole numbers from 1)
    path_ints: tuple[str, ...] = ()


_REFUSED_BODY = (
    (400, "the body is not JSON (malformed, empty, not UTF-8)", "Error"),
    (413, "the body is too large", "Error"),
    (415, "the body is not application/json", "Error"),
)
_CLIENT_REFUSALS = (
    (401, "no token, or a token no client has", "Error"),
    (403, "the admin token, which is not a client's", "Error"),
    (426, f"the client does not speak wire protocol {PROTOCOL} ({PROTOCOL_HEADER} header)", "Error"),
    (429, "too many wrong tokens from this address (Retry-After says when to try again)", "Error"),
    (503, "the store is unavailable (Retry-After says when to try again)", "Error"),
)
_ADMIN_REFUSALS = (
    (401, "no token, or a wrong one", "Error"),
    (403, "a client's token, not the admin's", "Error"),
    (429, "too many wrong tokens from this address (Retry-After says when to try again)", "Error"),
    (503, "the store is unavailable (Retry-After says when to try again)", "Error"),
)

#: The longest long poll (``GET /api/migrations/pending?wait=N``), in seconds.
MAX_WAIT = 60
#: ``GET /api/clients``'s filters and paging (see :mod:`migsync.server.fleet`).
FLEET_QUERY: tuple[QueryInt | QueryText, ...] = (
    QueryInt("limit", "clients per page (default 100)", 1, MAX_FLEET_LIMIT),
    QueryText("cursor", "the next_cursor of the page before (default: the first page)"),
    QueryText(
        "state",
        "only clients in this state (failing wins over drift, drift over pending)",
        choices=FLEET_STATES,
    ),
    QueryText("applied", "only clients that applied this version", most=64),
    QueryText("lacking", "only clients that lack this published version", most=64),
    QueryText("failing", "1: only clients a migration failed on", choices=("0", "1")),
    QueryInt("stale", "only clients not seen for this many seconds", 0, _MAX_STALE),
    QueryText("q", "only clients whose name holds this text (any case)"),
    QueryText(
        "counts",
        "0: total and counts are left at 0 (they cost one pass over the status rows; the page does not)",
        choices=("0", "1"),
    ),
)

#: Every endpoint of the API, in the order the document lists them.
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "pending",
        "GET",
        "/api/migrations/pending",
        "The client's pending migrations and the admin's requests to it (If-None-Match: 304 when unchanged)",
        CLIENT,
        query=(
            QueryInt(
                "wait",
                "long poll: when If-None-Match is the client's current ETag, wait up to this many "
                "seconds for it to change before answering 304",
                0,
                MAX_WAIT,
            ),
        ),
        answers=(
            (200, "what the client has to do; ETag tags it", "Pending"),
            (304, "nothing changed since the ETag sent in If-None-Match (within the wait, if any)", None),
            (
                422,
                "a bad wait, a Migsync-App-Version header that is not a version, "
                "or an unknown query parameter",
                "Error",
            ),
            *_CLIENT_REFUSALS,
        ),
    ),
    Endpoint(
        "status",
        "POST",
        "/api/migrations/status",
        "The client reports what it applied, what failed, and what drifted",
        CLIENT,
        body="StatusReports",
        answers=(
            (200, "what was recorded", "ReportAck"),
            *_REFUSED_BODY,
            (422, "a report of the wrong shape, or of a version not published (nothing recorded)", "Error"),
            *_CLIENT_REFUSALS,
        ),
    ),
    Endpoint(
        "answers",
        "POST",
        "/api/actions/results",
        "The client answers the admin's requests: queued, done or failed",
        CLIENT,
        body="ActionResults",
        answers=(
            (200, "which answers were recorded", "ActionsAck"),
            *_REFUSED_BODY,
            (422, "an answer of the wrong shape", "Error"),
            *_CLIENT_REFUSALS,
        ),
    ),
    Endpoint(
        "changes",
        "POST",
        "/api/changes",
        "The client pushes entity changes (its application's writes), in order",
        CLIENT,
        body="EntityChanges",
        answers=(
            (200, "which changes were taken", "ChangesAck"),
            *_REFUSED_BODY,
            (
                409,
                "the batch names (Migsync-Changes-After) a change not stored yet: nothing stored; "
                "sent again once the batch before is",
                "Error",
            ),
            (422, "a change of the wrong shape", "Error"),
            *_CLIENT_REFUSALS,
        ),
    ),
    Endpoint(
        "actions",
        "GET",
        "/api/actions",
        "The admin's requests to clients, newest first",
        ADMIN,
        query=(QueryInt("limit", "list only the latest ones", 1, MAX_LIMIT),),
        answers=((200, "the requests", "ActionRecords"), (422, "a bad limit", "Error"), *_ADMIN_REFUSALS),
    ),
    Endpoint(
        "request_action",
        "POST",
        "/api/actions",
        "The admin asks clients to re-apply or revert a migration",
        ADMIN,
        body="ActionOrder",
        answers=(
            (201, "the requests made, one per client", "ActionRecords"),
            *_REFUSED_BODY,
            (409, "the server has no request key, so it makes no requests (serve --request-key)", "Error"),
            (422, "a request of the wrong shape, or for no client, an unknown client or version", "Error"),
            *_ADMIN_REFUSALS,
        ),
    ),
    Endpoint(
        "migrations",
        "GET",
        "/api/migrations",
        "Every published migration",
        ADMIN,
        answers=((200, "the published migrations", "PublishedMigrations"), *_ADMIN_REFUSALS),
    ),
    Endpoint(
        "clients",
        "GET",
        "/api/clients",
        "A page of the fleet: what each client applied, what failed, what drifted, when it was seen",
        ADMIN,
        query=FLEET_QUERY,
        answers=(
            (200, "a page of the fleet, with the counts per state", "Fleet"),
            (422, "a bad query parameter (an unknown state, a cursor this server did not give)", "Error"),
            *_ADMIN_REFUSALS,
        ),
    ),
    Endpoint(
        "add_clients",
        "POST",
        "/api/clients",
        "Register clients, all or nothing: their ids and tokens (shown this once)",
        ADMIN,
        body="NewClients",
        answers=(
            (201, "the clients registered, with their tokens", "RegisteredClients"),
            *_REFUSED_BODY,
            (
                422,
                "a client of the wrong shape, a name given twice or registered already (none added)",
                "Error",
            ),
            *_ADMIN_REFUSALS,
        ),
    ),
    Endpoint(
        "rollouts",
        "GET",
        "/api/rollouts",
        "Every staged rollout, newest first",
        ADMIN,
        answers=((200, "the rollouts", "Rollouts"), *_ADMIN_REFUSALS),
    ),
    Endpoint(
        "operate_rollout",
        "POST",
        "/api/rollouts/operations",
        "The admin pauses, resumes, advances or aborts a rollout (recorded with requested_by)",
        ADMIN,
        body="RolloutOperation",
        answers=(
            (200, "the rollout as it is now", "Rollout"),
            *_REFUSED_BODY,
            (404, "no rollout with that id", "Error"),
            (
                409,
                "the rollout's state does not allow it (resuming a running one, anything on an ended one)",
                "Error",
            ),
            (422, "an operation of the wrong shape", "Error"),
            *_ADMIN_REFUSALS,
        ),
    ),
    Endpoint(
        "start_rollout",
        "POST",
        "/api/rollouts",
        "The admin starts a staged rollout of published versions",
        ADMIN,
        body="RolloutOrder",
        answers=(
            (201, "the rollout started", "Rollout"),
            *_REFUSED_BODY,
            (422, "an order of the wrong shape, bad stages, or a version not published", "Error"),
            *_ADMIN_REFUSALS,
        ),
    ),
    Endpoint(
        "rollout",
        "GET",
        "/api/rollouts/{rollout_id}",
        "One rollout (evaluated first): its stages' counts now and over time, and its audit",
        ADMIN,
        path_ints=("rollout_id",),
        answers=(
            (200, "the rollout", "RolloutStatus"),
            (404, "no rollout with that id", "Error"),
            (422, "a rollout id that is not a whole number from 1", "Error"),
            *_ADMIN_REFUSALS,
        ),
    ),
    Endpoint(
        "openapi",
        "GET",
        "/api/openapi.json",
        "This document",
        None,
        answers=((200, "the OpenAPI 3.1 document of the API", {"type": "object"}),),
    ),
    Endpoint(
        "schema",
        "GET",
        "/api/schemas/{name}.json",
        "One JSON Schema of the wire formats, on its own (what it refers to under $defs)",
        None,
        path_values=(("name", tuple(SCHEMAS)),),
        answers=(
            (200, "the JSON Schema (2020-12)", {"type": "object"}),
            (404, "no schema of that name", "Error"),
        ),
    ),
)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of :data:`ENDPOINTS`, with the schemas of
    :mod:`~migsync.protocol.wire_schema`."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "migsync server API",
            "version": str(PROTOCOL),
            "description": (
                f"The API a migsync server offers its clients and its admin (wire protocol {PROTOCOL}). "
                "Clients send their own bearer token and the header "
                f"{PROTOCOL_HEADER}: {PROTOCOL}; admin endpoints take the admin token. A refusal is "
                'a JSON object {"error": "..."} that names the field at fault. Answers may gain '
                "fields in a later release: a client ignores a field it does not know."
            ),
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                CLIENT: {"type": "http", "scheme": "bearer", "description": "a client's own token"},
                ADMIN: {"type": "http", "scheme": "bearer", "description": "the server's admin token"},
            },
        },
    }


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": endpoint.name, "summary": endpoint.summary}
    parameters: list[dict[str, Any]] = [
        {
            "name": q.name,
            "in": "query",
            "required": False,
            "description": q.description,
            "schema": q.schema(),
        }
        for q in endpoint.query
    ]
    parameters += [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "enum": list(values)}}
        for name, values in endpoint.path_values
    ]
    parameters += [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
        }
        for name in endpoint.path_ints
    ]
    if endpoint.auth == CLIENT:
        parameters.append(
            {
                "name": PROTOCOL_HEADER,
                "in": "header",
                "required": True,
                "description": "the wire protocol the client speaks",
                "schema": {"type": "string", "enum": [str(PROTOCOL)]},
            }
        )
    if endpoint.name == "pending":
        parameters.append(
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "description": "the ETag of the last answer: 304 if nothing changed since",
                "schema": {"type": "string"},
            }
        )
        parameters.append(
            {
                "name": APP_VERSION_HEADER,
                "in": "header",
                "required": False,
                "description": "the version of the application the client database belongs to: a "
                "migration that says '-- migsync:requires app>=2.3' is offered only to clients whose "
                "app satisfies it",
                "schema": {"type": "string", "pattern": APP_VERSION_PATTERN},
            }
        )
    if parameters:
        operation["parameters"] = parameters
    if endpoint.auth is not None:
        operation["security"] = [{endpoint.auth: []}]
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(endpoint.body)}},
        }
    operation["responses"] = {
        str(status): _answer(endpoint, status, description, schema)
        for status, description, schema in endpoint.answers
    }
    return operation


_PROTOCOL = {
    "description": "the wire protocol the server speaks (on every answer)",
    "required": True,
    "schema": {"type": "string", "enum": [str(PROTOCOL)]},
}
_RETRY_AFTER = {
    "description": "seconds to wait before trying again",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
_ETAG = {
    "description": "tags this answer: send it as If-None-Match",
    "required": True,
    "schema": {"type": "string"},
}


def _answer(
    endpoint: Endpoint, status: int, description: str, schema: str | dict[str, Any] | None
) -> dict[str, Any]:
    headers: dict[str, Any] = {PROTOCOL_HEADER: _PROTOCOL}
    if status in (429, 503):
        headers["Retry-After"] = _RETRY_AFTER
    if endpoint.name == "pending" and status in (200, 304):
        headers["ETag"] = _ETAG
    answer: dict[str, Any] = {"description": description, "headers": headers}
    if schema is not None:
        body = ref(schema) if isinstance(schema, str) else schema
        answer["content"] = {"application/json": {"schema": body}}
    return answer
