"""The wire formats as JSON Schemas: what a client sends, what the server answers, and the files of
a drop folder. One source for three things: the server checks request bodies against them
(:mod:`migsync.server.validation`, through :func:`migsync.protocol.json_check.check`), the OpenAPI
document is built from them (:mod:`migsync.server.openapi`), and ``docs/schemas/`` holds them
for clients in other languages (``scripts/api_schemas.py`` writes it).

Each schema is named (:data:`SCHEMAS`); one refers to another by ``{"$ref":
"#/components/schemas/NAME"}``, as the OpenAPI document does; :func:`standalone` gives one
schema on its own, with what it refers to under ``$defs``. A ``description`` is what a
refusal says the value must be ("true or false"): keep it a noun phrase.

Answers the server sends leave ``additionalProperties`` open: a client must ignore a field it
does not know (a newer server may add one). Requests are closed: a field the server does not
know is refused, so that a typo is never silently dropped.
"""

from __future__ import annotations

from typing import Any

from migsync.core.changes import OPERATIONS
from migsync.core.version import MAX_DIGITS
from migsync.protocol.wire import ACTION_STATES, ACTIONS

__all__ = [
    "FLEET_STATES",
    "MAX_CHANGES",
    "MAX_ERROR",
    "MAX_ID",
    "MAX_KEY",
    "MAX_NEW_CLIENTS",
    "MAX_REPORTS",
    "SCHEMAS",
    "ref",
    "standalone",
]

#: The most status reports (or answers) one request may carry.
MAX_REPORTS = 1000
#: The most entity changes one request may carry.
MAX_CHANGES = 1000
#: The longest error message or detail a client may send.
MAX_ERROR = 64 * 1024
#: The most clients one ``POST /api/clients`` registers.
MAX_NEW_CLIENTS = 10_000
#: A client's state in the fleet view (see :mod:`migsync.server.fleet`).
FLEET_STATES = ("ok", "failing", "pending", "drift")
#: The largest id of a client or a request: the store's ids are 32-bit integers (Postgres ``integer``).
MAX_ID = 2**31 - 1
#: The longest change id, entity name and entity id.
MAX_KEY = 200
#: The largest version sent as a number (older drop folders): what a 64-bit integer holds.
MAX_NUMERIC_VERSION = 2**63 - 1
#: The largest timestamp (seconds) a change may carry: a double holds every whole number up to it.
MAX_TIMESTAMP = 2**53
#: The states of a request on the server: the client's (:data:`ACTION_STATES`), and the server's own.
REQUEST_STATES = ("pending", *ACTION_STATES, "superseded")

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_PREFIX = "#/components/schemas/"

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": _PREFIX + name}


def _version(*, nullable: bool = False) -> Schema:
    return {
        "description": (
            'null or a version such as "42"' if nullable else 'a version such as "42" or "1.2.10"'
        ),
        "type": ["string", "integer", "null"] if nullable else ["string", "integer"],
        # whole numbers, parts separated by "." or "_" (Flyway's 1_2); a number from an older release
        "pattern": rf"^[0-9]{{1,{MAX_DIGITS}}}([._][0-9]{{1,{MAX_DIGITS}}})*$",
        "minimum": 0,
        "maximum": MAX_NUMERIC_VERSION,
    }


def _id(what: str) -> Schema:
    return {
        "description": f"a non-negative integer ({what})",
        "type": "integer",
        "minimum": 0,
        "maximum": MAX_ID,
    }


def _text(description: str, *, most: int | None = None, least: int = 0, nullable: bool = False) -> Schema:
    schema: Schema = {"description": description, "type": ["string", "null"] if nullable else "string"}
    if least:
        schema["minLength"] = least
    if most is not None:
        schema["maxLength"] = most
    return schema


def _body(key: str, item: str, most: int | None, example: dict[str, Any]) -> Schema:
    """A request body: one key holding a list of ``item`` records (``example``: one such record)."""
    items: Schema = {"description": "a list", "type": "array", "items": ref(item)}
    if most is not None:
        items["maxItems"] = most
    return {
        "description": f'an object with one key, "{key}": {{"{key}": [...]}}',
        "type": "object",
        "properties": {key: items},
        "required": [key],
        "additionalProperties": False,
        "examples": [{key: [example]}],
    }


def _answer(description: str, properties: dict[str, Schema], optional: tuple[str, ...] = ()) -> Schema:
    return {
        "description": description,
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
    }


#: A report's (or answers') new pending ETag, sent when the request's Migsync-Held-ETag was current.
_NEW_ETAG: Schema = {
    "description": "the client's new pending ETag: the request's Migsync-Held-ETag header was its ETag "
    "just before, so the client keeps this one and its next poll is a 304",
    "type": "string",
}


def _list_of(schema: Schema) -> Schema:
    return {"type": "array", "items": schema}


def _file(format_: str, record: str, key: str) -> Schema:
    """A drop folder's file from a client: its format, its client id and its records."""
    return {
        "description": f"a drop folder file of format {format_}",
        "type": "object",
        "properties": {
            "format": {"const": format_},
            "client_id": _text("the client's id"),
            key: {"type": "array", "items": ref(record)},
        },
        "required": ["format", "client_id", key],
        "additionalProperties": False,
    }


_CHECKSUM: Schema = {
    "description": "a sha256 in lower-case hex (64 characters)",
    "type": "string",
    "pattern": "^[0-9a-f]{64}$",
}
_ISO_TIME = _text("a time in ISO 8601 UTC (2026-11-24T21:45:56Z)")
_ISO_TIME_OR_NULL = _text("a time in ISO 8601 UTC, or null", nullable=True)
_SIGNATURE = _text("an Ed25519 signature (base64), or null", nullable=True)
_KEY_ID = _text("the id of the key that signed it, or null", nullable=True)
_VERSIONS = _list_of(_version())
_RATIO = {
    "description": "a fraction from 0 to 1 (0.95 is 95 %)",
    "type": "number",
    "minimum": 0,
    "maximum": 1,
}
_COUNT = {"type": "integer", "minimum": 0}
#: What an operator may do to a rollout (:data:`migsync.server.rollouts.OPERATIONS`).
ROLLOUT_OPERATIONS = ("pause", "resume", "advance", "abort")
_ROLLOUT: dict[str, Schema] = {
    "id": _id("the rollout's id"),
    "versions": _VERSIONS,
    "stages": _list_of(_text("a stage as given")),
    "state": {"description": "where it is", "enum": ["running", "paused", "completed", "aborted"]},
    "stage": {"description": "the current stage, from 1", "type": "integer", "minimum": 1},
    "stage_name": _text("the current stage as given"),
    "stage_started_at": _ISO_TIME,
    "reason": _text("why it is paused or ended, or null", nullable=True),
    "success_threshold": _RATIO,
    "error_threshold": _RATIO,
    "soak_seconds": {"type": "number", "minimum": 0},
    "on_failure": {"enum": ["pause", "revert"]},
    "created_by": _text("who started it"),
    "created_at": _ISO_TIME,
    "updated_at": _ISO_TIME,
}

#: Every schema by name (the OpenAPI document's ``components.schemas``).
SCHEMAS: dict[str, Schema] = {
    # -- records ---------------------------------------------------------------------------------
    "Version": _version(),
    "StatusReport": {
        "description": "a client's word on one migration",
        "type": "object",
        "properties": {
            "version": _version(),
            "applied": {"description": "true or false", "type": "boolean"},
            # NUL and unpaired surrogates are stored as U+FFFD: a refused report is sent again forever
            "error": _text("a string or null", most=MAX_ERROR, nullable=True),
            "attempts": {
                "description": "a non-negative integer",
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_ID,
            },
            "checksum": _CHECKSUM,
            "dead": {
                "description": "true or false (failed as often as it may; default false)",
                "type": "boolean",
            },
        },
        "required": ["version", "applied", "error", "attempts", "checksum"],
        "additionalProperties": False,
    },
    "ActionResult": {
        "description": "a client's answer to one of the admin's requests",
        "type": "object",
        "properties": {
            "id": _id("the request's id"),
            "state": {"description": "what the client did with it", "enum": list(ACTION_STATES)},
            # no NUL or unpaired surrogate either (checked beyond the schema)
            "detail": _text(
                f"null or a text of at most {MAX_ERROR} characters", most=MAX_ERROR, nullable=True
            ),
        },
        "required": ["id", "state", "detail"],
        "additionalProperties": False,
    },
    "EntityChange": {
        "description": "one write of the client's application data",
        "type": "object",
        "properties": {
            # none of the three may hold NUL or an unpaired surrogate (checked beyond the schema)
            "id": _text("a non-empty string", least=1, most=MAX_KEY),
            "entity": _text("a non-empty string", least=1, most=MAX_KEY),
            "entity_id": _text("a non-empty string", least=1, most=MAX_KEY),
            "operation": {"description": "the kind of write", "enum": list(OPERATIONS)},
            "data": {"description": "an object or null", "type": ["object", "null"]},
            "schema_version": _version(nullable=True),
            "timestamp": {
                "description": "a number (seconds since the epoch)",
                "type": "number",
                "minimum": -MAX_TIMESTAMP,
                "maximum": MAX_TIMESTAMP,
            },
        },
        "required": ["id", "entity", "entity_id", "operation", "data", "schema_version", "timestamp"],
        "additionalProperties": False,
    },
    "OfferedMigration": _answer(
        "a published migration as the server offers it; the client verifies it before anything runs",
        {
            "version": _version(),
            "name": _text("the migration's name"),
            "content": _text("the canonical content (JSON text): exactly the bytes the signature covers"),
            "checksum": _CHECKSUM,
            "signature": _SIGNATURE,
            "signed_by": _KEY_ID,
            "problem": _text("why it could not be read whole (it is then refused, and reported)"),
        },
        optional=("problem",),
    ),
    "ActionRequest": _answer(
        "an admin's request to one client: re-apply or revert a migration",
        {
            "id": _id("the request's id: a client carries out each id once"),
            "action": {"description": "what to do", "enum": list(ACTIONS)},
            "version": _version(),
            "requested_by": _text("who asked"),
            "requested_at": {"description": "seconds since the epoch (the server's clock)", "type": "number"},
            "signature": _SIGNATURE,
            "signed_by": _KEY_ID,
        },
        optional=("signature", "signed_by"),
    ),
    # -- request bodies --------------------------------------------------------------------------
    "StatusReports": _body(
        "reports",
        "StatusReport",
        MAX_REPORTS,
        {"version": "1", "applied": True, "error": None, "attempts": 1, "checksum": "0" * 64},
    ),
    "ActionResults": _body(
        "results", "ActionResult", MAX_REPORTS, {"id": 1, "state": "done", "detail": None}
    ),
    "EntityChanges": _body(
        "changes",
        "EntityChange",
        MAX_CHANGES,
        {
            "id": "c-42",
            "entity": "note",
            "entity_id": "7",
            "operation": "insert",
            "data": {"title": "hello"},
            "schema_version": "1",
            "timestamp": 1764885000.5,
        },
    ),
    "ActionOrder": {
        "description": "an object with action, clients, requested_by, version",
        "type": "object",
        "properties": {
            "action": {"description": "what to ask", "enum": list(ACTIONS)},
            "version": _version(),
            "clients": {
                "description": "a list of client ids, or null for every client it makes sense for",
                "type": ["array", "null"],
                "items": _id("a client's id"),
            },
            # at most 200 printable characters once its spaces are squeezed (checked beyond the schema)
            "requested_by": _text("who asks", least=1, most=MAX_ERROR),
        },
        "required": ["action", "version", "clients", "requested_by"],
        "additionalProperties": False,
        "examples": [{"action": "revert", "version": "1", "clients": None, "requested_by": "alice"}],
    },
    "RolloutOrder": {
        "description": "an object with versions, stages, requested_by and optionally the rollout's policy",
        "type": "object",
        "properties": {
            "versions": {**_list_of(_version()), "minItems": 1, "maxItems": MAX_REPORTS},
            "stages": _text(
                "comma-separated stages: N%, a group name, key=value or all (1%,10%,100% or canary,all)",
                least=1,
                most=2000,
            ),
            "success_threshold": _RATIO,
            "error_threshold": _RATIO,
            "soak_seconds": {
                "description": "a number of seconds, at least 0",
                "type": "number",
                "minimum": 0,
                "maximum": 10**9,
            },
            "on_failure": {"description": "pause or revert", "enum": ["pause", "revert"]},
            # at most 200 printable characters (checked beyond the schema)
            "requested_by": _text("who starts it", least=1, most=MAX_ERROR),
        },
        "required": ["versions", "stages", "requested_by"],
        "additionalProperties": False,
        "examples": [
            {"versions": ["3"], "stages": "canary,all", "soak_seconds": 600, "requested_by": "alice"}
        ],
    },
    "RolloutOperation": {
        "description": "an object with rollout_id, operation and requested_by",
        "type": "object",
        "properties": {
            "rollout_id": {**_id("a rollout's id"), "minimum": 1},
            "operation": {"description": "pause, resume, advance or abort", "enum": list(ROLLOUT_OPERATIONS)},
            "requested_by": _text("who does it", least=1, most=MAX_ERROR),
        },
        "required": ["rollout_id", "operation", "requested_by"],
        "additionalProperties": False,
        "examples": [{"rollout_id": 1, "operation": "pause", "requested_by": "alice"}],
    },
    # -- answers ---------------------------------------------------------------------------------
    "SignedManifest": _answer(
        "the fleet manifest (every published version with its name and checksum, and a serial that only "
        "grows), signed by the offline migration key; the client verifies it before it acts on the answer",
        {
            "content": _text("the manifest's canonical JSON text: exactly the bytes the signature covers"),
            "signature": _SIGNATURE,
            "signed_by": _KEY_ID,
        },
    ),
    "Pending": _answer(
        "what a client has to do: its pending migrations in version order, the admin's requests, and the "
        "signed manifest (null when nothing was published with this release's publish: clients refuse that)",
        {
            "migrations": _list_of(ref("OfferedMigration")),
            "actions": _list_of(ref("ActionRequest")),
            "manifest": {"anyOf": [ref("SignedManifest"), {"type": "null"}]},
        },
    ),
    "ReportAck": _answer(
        "what the server recorded of a batch of reports",
        {
            "recorded": _VERSIONS,
            "unchanged": _VERSIONS,
            "drift": _list_of(
                _answer(
                    "a migration reported with other content than the published one",
                    {"version": _version(), "published_checksum": _CHECKSUM, "reported_checksum": _CHECKSUM},
                )
            ),
            "etag": _NEW_ETAG,
        },
        optional=("etag",),
    ),
    "ActionsAck": _answer(
        "which answers the server recorded, and which request ids it does not know",
        {
            "recorded": _list_of(_id("a request's id")),
            "unknown": _list_of(_id("a request's id")),
            "etag": _NEW_ETAG,
        },
        optional=("etag",),
    ),
    "ChangesAck": _answer(
        "the changes the server took, in order: accepted and duplicate together are a prefix of the "
        "batch; refused is the first it would not take (the ones after it must be sent again)",
        {
            "accepted": _list_of(_text("a change id")),
            "duplicate": _list_of(_text("a change id")),
            "refused": {
                "anyOf": [
                    {"type": "null"},
                    _answer(
                        "the change refused, and why", {"id": _text("a change id"), "reason": _text("why")}
                    ),
                ]
            },
        },
    ),
    "ActionRecord": _answer(
        "a request an admin made of one client, and where it stands",
        {
            "id": _id("the request's id"),
            "client_id": _id("the client's id"),
            "client": _text("the client's name"),
            "action": {"enum": list(ACTIONS)},
            "version": _version(),
            "requested_by": _text("who asked"),
            "requested_at": _ISO_TIME,
            "state": {"enum": list(REQUEST_STATES)},
            "detail": _text("the client's word on it, or why it was superseded", nullable=True),
            "updated_at": _ISO_TIME,
        },
    ),
    "ActionRecords": _answer("requests, newest first", {"actions": _list_of(ref("ActionRecord"))}),
    "PublishedMigration": _answer(
        "a migration the server publishes",
        {
            "version": _version(),
            "name": _text("its name"),
            "checksum": _CHECKSUM,
            "signature": _text("an Ed25519 signature (base64)"),
            "signed_by": _text("the id of the key that signed it"),
            "published_at": _ISO_TIME,
            "replaced_checksum": _text("the checksum it had before a forced publish, or null", nullable=True),
            "replaced_at": _ISO_TIME_OR_NULL,
        },
    ),
    "PublishedMigrations": _answer(
        "every published migration, in version order", {"migrations": _list_of(ref("PublishedMigration"))}
    ),
    "FleetEntry": _answer(
        "one client: what it applied, what failed, what drifted, when it was seen",
        {
            "client_id": _id("the client's id"),
            "name": _text("its name"),
            "applied": _VERSIONS,
            "latest_version": _version(nullable=True),
            "failed": _list_of(
                _answer(
                    "a migration that failed on the client",
                    {
                        "version": _version(),
                        "error": _text("why", nullable=True),
                        "attempts": {"type": "integer", "minimum": 0},
                        "dead": {"type": "boolean"},
                    },
                )
            ),
            "drift": _list_of(
                _answer(
                    "a migration reported with other content than the published one",
                    {"version": _version(), "published_checksum": _CHECKSUM, "reported_checksum": _CHECKSUM},
                )
            ),
            "pending": _VERSIONS,
            "held_from": _version(nullable=True),
            "created_at": _ISO_TIME,
            "last_seen": _ISO_TIME_OR_NULL,
            "labels": {"description": "its labels, key to value", "type": "object"},
            "app_version": _text("the app version it last said it runs, or null", nullable=True),
            "held_by_app": _list_of(
                _answer(
                    "a published version its app version does not satisfy",
                    {"version": _version(), "requires": _text("what the migration requires (app>=2.3)")},
                )
            ),
        },
    ),
    "Fleet": _answer(
        "a page of the fleet, in client id order, with the counts of the clients the filter leaves",
        {
            "clients": _list_of(ref("FleetEntry")),
            "next_cursor": _text(
                "pass it as ?cursor= for the next page; null: this is the last", nullable=True
            ),
            "total": {"description": "how many clients match the filter", "type": "integer", "minimum": 0},
            "counts": {
                "description": "how many clients match the filter but its state, per state",
                "type": "object",
                "properties": {s: {"type": "integer", "minimum": 0} for s in FLEET_STATES},
                "required": list(FLEET_STATES),
                "additionalProperties": False,
            },
        },
    ),
    "NewClient": {
        "description": "a client to register: its name, and optional labels",
        "type": "object",
        "properties": {
            "name": _text("its name (unique, at most 200 printable characters)", least=1, most=MAX_ERROR),
            # every value text (checked beyond the schema)
            "labels": {
                "description": "labels of the client (text to text), or null",
                "type": ["object", "null"],
            },
        },
        "required": ["name"],
        "additionalProperties": False,
    },
    "NewClients": _body("clients", "NewClient", MAX_NEW_CLIENTS, {"name": "shop-berlin"}),
    "RegisteredClients": _answer(
        "the clients registered, in the order given, each with its token (shown this once)",
        {
            "clients": _list_of(
                _answer(
                    "a registered client",
                    {
                        "client_id": _id("its id"),
                        "name": _text("its name"),
                        "token": _text("its bearer token"),
                    },
                )
            )
        },
    ),
    "Rollout": _answer("a staged rollout: its versions, stages, policy and where it is", _ROLLOUT),
    "Rollouts": _answer("every rollout, newest first", {"rollouts": _list_of(ref("Rollout"))}),
    "RolloutStatus": _answer(
        "a rollout with its stages' counts now and over time, and its audit",
        {
            **_ROLLOUT,
            "stage_counts": _list_of(
                _answer(
                    "one stage's clients now",
                    {
                        "name": _text("the stage as given"),
                        "started": {"type": "boolean"},
                        "members": _COUNT,
                        "applied": _COUNT,
                        "failed": _COUNT,
                        "pending": _COUNT,
                    },
                )
            ),
            "history": _list_of(
                _answer(
                    "the counts as of one time (evenly spaced since the rollout started)",
                    {"at": _ISO_TIME, "stages": _list_of(ref("StageCounts"))},
                )
            ),
            "audit": _list_of(
                _answer(
                    "what happened, who did it, when",
                    {"at": _ISO_TIME, "who": _text("an operator, or migsync"), "what": _text("what")},
                )
            ),
        },
    ),
    "StageCounts": _answer(
        "one stage's clients at one time",
        {"members": _COUNT, "applied": _COUNT, "failed": _COUNT, "pending": _COUNT},
    ),
    "Error": _answer(
        "a refusal: what is wrong, and where",
        {
            "error": _text("what is wrong, naming the field"),
            "versions": _list_of(_text("a version that is not published")),
        },
        optional=("versions",),
    ),
    # -- drop folder files -----------------------------------------------------------------------
    "Bundle": _answer(
        "a drop folder's migrations/<file>: one published migration, signed",
        {
            "format": {"const": "migsync-bundle/2"},
            "version": _version(),
            "name": _text("the migration's name"),
            "content": _text("the canonical content (JSON text): exactly the bytes the signature covers"),
            "checksum": _CHECKSUM,
            "signature": _SIGNATURE,
            "signed_by": _KEY_ID,
        },
    ),
    "DropManifest": _answer(
        "a drop folder's manifest.json: where each bundle is, and the server's signed manifest. The "
        "listing only says where files are; a client trusts the signed part alone",
        {
            "format": {"const": "migsync-manifest/2"},
            "generated_at": {"type": "number", "description": "when it was written (epoch seconds)"},
            "migrations": _list_of(
                _answer(
                    "one bundle of the folder",
                    {
                        "version": _version(),
                        "name": _text("the migration's name"),
                        "checksum": _CHECKSUM,
                        "file": {
                            "type": "string",
                            "description": "the bundle's file name under migrations/ (no folders, no '..')",
                            "pattern": "^[0-9]+(\\.[0-9]+)*(_[A-Za-z0-9_.-]{1,200})?\\.json$",
                        },
                    },
                )
            ),
            "signed": ref("SignedManifest"),
        },
        optional=("signed",),
    ),
    "ReportsFile": _file("migsync-reports/2", "StatusReport", "reports"),
    "AnswersFile": _file("migsync-answers/2", "ActionResult", "results"),
    "ChangesFile": _file("migsync-changes/2", "EntityChange", "changes"),
    "ActionsFile": {
        "description": "a drop folder's actions/<client-id>.json: the requests to a client, each signed",
        "type": "object",
        "properties": {
            "format": {"const": "migsync-actions/2"},
            "client_id": _text("the client's id"),
            "actions": {"type": "array", "items": ref("ActionRequest")},
        },
        "required": ["format", "client_id", "actions"],
        "additionalProperties": False,
    },
}


def standalone(name: str) -> Schema:
    """Schema ``name`` as a JSON Schema document of its own: what it refers to under ``$defs``."""
    needed: dict[str, Schema] = {}

    def collect(value: Any) -> Any:
        if isinstance(value, dict):
            if "$ref" in value:
                target = value["$ref"].removeprefix(_PREFIX)
                if target not in needed and target != name:
                    needed[target] = {}
                    needed[target] = collect(SCHEMAS[target])
                return {**value, "$ref": "#" if target == name else f"#/$defs/{target}"}
            return {key: collect(sub) for key, sub in value.items()}
        if isinstance(value, list):
            return [collect(sub) for sub in value]
        return value

    body = collect(SCHEMAS[name])
    document: Schema = {"$schema": JSON_SCHEMA_DIALECT, "$id": f"{name}.json", "title": name, **body}
    if needed:
        document["$defs"] = dict(sorted(needed.items()))
    return document
