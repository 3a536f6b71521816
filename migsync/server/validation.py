"""Checking what a client sent, whatever carried it (the HTTP API, a drop folder's file):
status reports, answers to the admin's requests, entity changes, and the admin's requests.

The shapes are the JSON Schemas of :mod:`migsync.protocol.wire_schema` (the same ones the
OpenAPI document shows); what a schema cannot say (no NUL or unpaired surrogate in a text,
each version or id once per batch) is checked here after it.

Pure: no Starlette, no I/O. A refusal is :class:`InvalidReports` (reports and
answers) or :class:`InvalidChanges` (changes), whose message says what is
wrong and where; the API answers it with a 422.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable
from operator import attrgetter
from typing import Any, TypeVar, cast

import attrs

from migsync.core.changes import OPERATIONS
from migsync.core.version import Version
from migsync.protocol.json_check import Schema, SchemaViolation, compiled_pattern, validator
from migsync.protocol.wire import (
    ActionResult,
    EntityChange,
    StatusReport,
    read_version,
)
from migsync.protocol.wire_schema import (
    MAX_CHANGES,
    MAX_ERROR,
    MAX_ID,
    MAX_KEY,
    MAX_REPORTS,
    MAX_TIMESTAMP,
    SCHEMAS,
)
from migsync.server.change_batch import ChangeBatch

__all__ = [
    "MAX_CHANGES",
    "MAX_ERROR",
    "MAX_ID",
    "MAX_KEY",
    "MAX_REPORTS",
    "ActionOrder",
    "InvalidChanges",
    "InvalidReports",
    "action_answers",
    "action_order",
    "entity_change_batch",
    "entity_changes",
    "status_reports",
    "storable",
    "storable_text",
]

_VERSION = attrgetter("version")
_ID = attrgetter("id")
R = TypeVar("R")


def _without_cap(schema: Schema) -> Schema:
    [(key, items)] = schema["properties"].items()
    return {**schema, "properties": {key: {k: v for k, v in items.items() if k != "maxItems"}}}


_BODIES = ("StatusReports", "ActionResults", "EntityChanges", "ActionOrder")
#: The request bodies' validators, compiled once; "NAME uncapped": without the cap on how many
#: records the list holds (a file's size cap bounds a drop folder's files instead).
_VALIDATORS = {name: validator(SCHEMAS[name], SCHEMAS) for name in _BODIES} | {
    f"{name} uncapped": validator(_without_cap(SCHEMAS[name]), SCHEMAS) for name in _BODIES[:3]
}


def _checked(name: str, body: Any, error: type[ValueError], *, uncapped: bool = False) -> None:
    """``body`` against schema ``name`` of :mod:`migsync.protocol.wire_schema` (else ``error``)."""
    try:
        _VALIDATORS[f"{name} uncapped" if uncapped else name](body, "the body")
    except SchemaViolation as exc:
        raise error(str(exc)) from None


def _each_once(
    key: str,
    items: list[Any],
    parse: Callable[[str, Any], R],
    identity: Callable[[R], Hashable],
    twice: Callable[[Hashable], str],
    error: type[ValueError],
) -> list[R]:
    """``items`` (the list under ``key``, of the schema's shape) as records, in order, none of
    them twice by ``identity``."""
    return _once(key, [parse(f"{key}[{i}]", item) for i, item in enumerate(items)], identity, twice, error)


def _once(
    key: str,
    records: list[R],
    identity: Callable[[R], Hashable],
    twice: Callable[[Hashable], str],
    error: type[ValueError],
) -> list[R]:
    seen: dict[Hashable, int] = {}
    for index, record in enumerate(records):
        name = identity(record)
        if name in seen:
            raise error(f"{key}[{index}]: {twice(name)} (see {key}[{seen[name]}])")
        seen[name] = index
    return records


class InvalidReports(ValueError):
    """Status reports of the wrong shape; the message says what is wrong."""


def status_reports(body: Any, *, max_reports: int | None = MAX_REPORTS) -> list[StatusReport]:
    """``{"reports": [{version, applied, error, attempts, checksum}, ...]}`` (schema
    ``StatusReports``) as records.

    ``max_reports=None`` lifts the cap on their number (a report file's size cap bounds it instead).
    """
    assert max_reports in (None, MAX_REPORTS), "the cap is the schema's"
    if isinstance(body, dict) and body.keys() == {"reports"} and isinstance(body["reports"], list):
        items = body["reports"]
        if max_reports is None or len(items) <= max_reports:
            plain = [_plainly_valid_report(item) for item in items]  # most of the cost, else
            if all(report is not None for report in plain):
                return _once(
                    "reports",
                    cast(list[StatusReport], plain),
                    _VERSION,
                    lambda v: f"version {v} is reported twice",
                    InvalidReports,
                )
    _checked("StatusReports", body, InvalidReports, uncapped=max_reports is None)
    return _each_once(
        "reports",
        body["reports"],
        _report,
        _VERSION,
        lambda v: f"version {v} is reported twice",
        InvalidReports,
    )


def _report(where: str, item: dict[str, Any]) -> StatusReport:
    parsed = _version(where, item["version"], InvalidReports)
    error = item["error"]
    if error is not None:
        # An error message is the client's free text (a driver's message, a file name): kept
        # readable rather than refused, since a refused report would be sent again forever.
        error = storable_text(error)
    applied = item["applied"]
    dead = item.get("dead", False)
    return StatusReport(parsed, applied, error, item["attempts"], item["checksum"], dead and not applied)


def _version(where: str, value: Any, error: type[ValueError]) -> Version:
    parsed = read_version(value)
    if parsed is None:  # the schema's pattern is Version.parse's: only a guard
        raise error(f"{where}.version must be {SCHEMAS['Version']['description']}, not {_show(value)}")
    return parsed


def action_answers(body: Any) -> list[ActionResult]:
    """``{"results": [{id, state, detail}, ...]}`` (schema ``ActionResults``: a client's answers
    to requests) as records."""
    _checked("ActionResults", body, InvalidReports)
    return _each_once(
        "results", body["results"], _answer, _ID, lambda i: f"request {i} is answered twice", InvalidReports
    )


def _answer(where: str, item: dict[str, Any]) -> ActionResult:
    detail = item["detail"]
    if detail is not None and not storable(detail):
        raise InvalidReports(f"{where}.detail must not hold a NUL character or an unpaired surrogate")
    return ActionResult(item["id"], item["state"], detail)


@attrs.frozen
class ActionOrder:
    """What an admin asks of clients through ``POST /api/actions``."""

    action: str
    version: Version
    #: None: every client it makes sense for
    clients: list[int] | None
    requested_by: str


def action_order(body: Any) -> ActionOrder:
    """``{"action", "version", "clients": [ids] | null, "requested_by"}`` (schema
    ``ActionOrder``) as a record; :class:`InvalidReports` otherwise."""
    _checked("ActionOrder", body, InvalidReports)
    by = body["requested_by"]
    if not storable(by):
        raise InvalidReports("requested_by must not hold NUL characters or unpaired surrogates")
    version = read_version(body["version"])
    if version is None:
        raise InvalidReports(
            f"version must be {SCHEMAS['Version']['description']}, not {_show(body['version'])}"
        )
    return ActionOrder(body["action"], version, body["clients"], by)


# -- entity changes ------------------------------------------------------------------------------

_CHANGE_FIELDS = ("id", "entity", "entity_id", "operation", "data", "schema_version", "timestamp")


class InvalidChanges(ValueError):
    """Entity changes of the wrong shape; the message says what is wrong."""


def entity_changes(body: Any, *, max_changes: int | None = MAX_CHANGES) -> list[EntityChange]:
    """``{"changes": [{id, entity, entity_id, operation, data, schema_version, timestamp}, ...]}``
    (schema ``EntityChanges``) as records, in the order sent.

    ``max_changes=None`` lifts the cap on their number (a changes file's size cap bounds it instead).
    """
    return entity_change_batch(body, max_changes=max_changes).changes()


def entity_change_batch(body: Any, *, max_changes: int | None = MAX_CHANGES) -> ChangeBatch:
    """:func:`entity_changes` as columns (:class:`ChangeBatch`), with no object made per change:
    what the server stores a pushed batch from. The same checks, the same errors."""
    assert max_changes in (None, MAX_CHANGES), "the cap is the schema's"
    if isinstance(body, dict) and body.keys() == {"changes"} and isinstance(body["changes"], list):
        items = body["changes"]
        if max_changes is None or len(items) <= max_changes:
            versions: dict[str, Version] = {}
            rows = []
            for item in items:  # most of the cost of a batch, else
                row = _plain_fields(item, versions)
                if row is None:
                    break
                rows.append(row)
            else:
                batch = ChangeBatch(*map(list, zip(*rows, strict=True))) if rows else ChangeBatch()
                if len(set(batch.ids)) != len(batch.ids):
                    _once("changes", batch.ids, _same, _twice, InvalidChanges)  # raises, naming both
                return batch
    _checked("EntityChanges", body, InvalidChanges, uncapped=max_changes is None)
    return ChangeBatch.of(_each_once("changes", body["changes"], _change, _ID, _twice, InvalidChanges))


def _same(value: Any) -> Any:
    return value


def _twice(change_id: Hashable) -> str:
    return f"id {_show(change_id)} is sent twice"


def _change(where: str, item: dict[str, Any]) -> EntityChange:
    for name in ("id", "entity", "entity_id"):
        if not storable(item[name]):
            raise InvalidChanges(f"{where}.{name} holds a NUL character or an unpaired surrogate")
    schema_version = item["schema_version"]
    version = None if schema_version is None else read_version(schema_version)
    if schema_version is not None and version is None:  # the schema's pattern is Version.parse's
        raise InvalidChanges(f"{where}.schema_version must be null or a version, not {_show(schema_version)}")
    return EntityChange(
        item["id"],
        item["entity"],
        item["entity_id"],
        item["operation"],
        item["data"],
        version,
        float(item["timestamp"]),
    )


_CHANGE_KEYS = frozenset(_CHANGE_FIELDS)
_VERSION_TEXT = compiled_pattern(SCHEMAS["Version"]["pattern"])


def _plainly_valid(item: Any) -> EntityChange | None:
    """``item`` as a change when it is valid in the plain way clients send them, checked fast
    (most of the cost of a batch, else); None: the schema and :func:`_change` look closer and
    say what is wrong.

    Narrower than the schema ``EntityChange`` on purpose (exact types, ASCII keys, a float
    timestamp): whatever it lets through, the schema and ``_change`` accept as well, and the
    same way (a test holds it to that).
    """
    fields = _plain_fields(item, {})
    return None if fields is None else EntityChange(*fields)


_Fields = tuple[str, str, str, str, Any, "Version | None", float]


def _plain_fields(item: Any, versions: dict[str, Version]) -> _Fields | None:
    """:func:`_plainly_valid`'s check, the change's fields as a tuple (no object per change);
    ``versions``: the versions parsed so far in the batch, by their text (a batch has few)."""
    if type(item) is not dict or item.keys() != _CHANGE_KEYS:
        return None
    change_id, entity, entity_id = item["id"], item["entity"], item["entity_id"]
    for value in (change_id, entity, entity_id):
        if type(value) is not str or not 0 < len(value) <= MAX_KEY or not value.isascii() or "\x00" in value:
            return None
    operation, data, text, timestamp = (
        item["operation"],
        item["data"],
        item["schema_version"],
        item["timestamp"],
    )
    if type(operation) is not str or operation not in OPERATIONS:
        return None
    if data is not None and type(data) is not dict:
        return None
    version = None
    if text is not None:
        if type(text) is not str:
            return None
        version = versions.get(text)
        if version is None:
            if not _VERSION_TEXT.search(text):
                return None
            version = versions[text] = Version.parse(text)
    if type(timestamp) is not float or not -MAX_TIMESTAMP <= timestamp <= MAX_TIMESTAMP:  # NaN: False
        return None
    return change_id, entity, entity_id, operation, data, version, timestamp


_REPORT_KEYS = frozenset(("version", "applied", "error", "attempts", "checksum"))
_REPORT_KEYS_DEAD = _REPORT_KEYS | {"dead"}
_HEX64 = re.compile("[0-9a-f]{64}")


def _plainly_valid_report(item: Any) -> StatusReport | None:
    """``item`` as a report when it is valid in the plain way clients send them, checked fast;
    None: the schema and :func:`_report` look closer and say what is wrong.

    Narrower than the schema ``StatusReport`` on purpose (exact types, an ASCII error without
    NUL): whatever it lets through, the schema and ``_report`` accept as well, and the same way
    (a test holds it to that).
    """
    if type(item) is not dict:
        return None
    keys = item.keys()
    if keys != _REPORT_KEYS and keys != _REPORT_KEYS_DEAD:
        return None
    version, applied, error, attempts, checksum = (
        item["version"],
        item["applied"],
        item["error"],
        item["attempts"],
        item["checksum"],
    )
    dead = item.get("dead", False)
    if type(version) is not str or not _VERSION_TEXT.search(version):
        return None
    if type(applied) is not bool or type(dead) is not bool:
        return None
    if error is not None and (
        type(error) is not str or len(error) > MAX_ERROR or not error.isascii() or "\x00" in error
    ):
        return None
    if type(attempts) is not int or not 0 <= attempts <= MAX_ID:
        return None
    if type(checksum) is not str or not _HEX64.fullmatch(checksum):
        return None
    return StatusReport(Version.parse(version), applied, error, attempts, checksum, dead and not applied)


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(value: str) -> str:
    """``value`` with what no database stores as text (NUL, and surrogates: JSON's ``"\\ud800"``
    decodes to one, unpaired, which is not UTF-8) replaced by U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", value)


def storable(value: str) -> bool:
    """Whether every database can store ``value`` as text (Postgres refuses NUL; UTF-8, surrogates)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
