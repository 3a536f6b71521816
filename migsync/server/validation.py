"""Checking what a client sent, whatever carried it (the HTTP API, a drop folder's file):
status reports, answers to the admin's requests and entity changes.

Pure: no Starlette, no I/O. A refusal is :class:`InvalidReports` (reports and
answers) or :class:`InvalidChanges` (changes), whose message says what is
wrong and where; the API answers it with a 422.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Hashable, Iterable
from operator import attrgetter
from typing import Any, TypeVar

from migsync.core.wire import (
    ACTION_STATES,
    OPERATIONS,
    ActionResult,
    EntityChange,
    StatusReport,
    read_version,
)

#: The most status reports one request may carry.
MAX_REPORTS = 1000
MAX_ERROR = 64 * 1024
_MAX_INT = 2**31 - 1
#: The largest id of a client or a request: the store's ids are 32-bit integers (Postgres ``integer``).
MAX_ID = _MAX_INT
_CHECKSUM = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("version", "applied", "error", "attempts", "checksum")
_VERSION = attrgetter("version")
_ID = attrgetter("id")
R = TypeVar("R")
#: Fields a report may leave out (a client of an earlier release does): their defaults.
_OPTIONAL_FIELDS = {"dead": False}


def _list_of(body: Any, key: str, limit: int | None, error: type[ValueError]) -> list[Any]:
    """The list ``body`` holds under its one key ``key``, at most ``limit`` long (None: any)."""
    if not isinstance(body, dict) or set(body) != {key}:
        raise error(f'the body must be an object with one key, "{key}": {{"{key}": [...]}}')
    items = body[key]
    if not isinstance(items, list):
        raise error(f'"{key}" must be a list, not {_kind(items)}')
    if limit is not None and len(items) > limit:
        raise error(f'"{key}" holds {len(items)} {key}; at most {limit} per request')
    return items


def _each_once(
    key: str,
    items: list[Any],
    parse: Callable[[str, Any], R],
    identity: Callable[[R], Hashable],
    twice: Callable[[Hashable], str],
    error: type[ValueError],
) -> list[R]:
    """``items`` (the list under ``key``) parsed in order, none of them twice by ``identity``."""
    records: list[R] = []
    seen: dict[Hashable, int] = {}
    for index, item in enumerate(items):
        record = parse(f"{key}[{index}]", item)
        name = identity(record)
        if name in seen:
            raise error(f"{key}[{index}]: {twice(name)} (see {key}[{seen[name]}])")
        seen[name] = index
        records.append(record)
    return records


def _check_fields(
    where: str, item: Any, fields: tuple[str, ...], error: type[ValueError], optional: Iterable[str] = ()
) -> None:
    """``item`` must be an object with exactly ``fields``, and any of ``optional``."""
    if not isinstance(item, dict):
        raise error(f"{where} must be an object, not {_kind(item)}")
    missing = [f for f in fields if f not in item]
    if missing:
        raise error(f"{where}: missing {', '.join(repr(f) for f in missing)}")
    unknown = sorted(str(k) for k in item if k not in fields and k not in optional)
    if unknown:
        raise error(f"{where}: unknown field {', '.join(repr(f) for f in unknown)}")


class InvalidReports(ValueError):
    """Status reports of the wrong shape; the message says what is wrong."""


def status_reports(body: Any, *, max_reports: int | None = MAX_REPORTS) -> list[StatusReport]:
    """``{"reports": [{version, applied, error, attempts, checksum}, ...]}`` as records.

    ``max_reports=None`` lifts the cap on their number (a report file's size cap bounds it instead).
    """
    items = _list_of(body, "reports", max_reports, InvalidReports)
    return _each_once(
        "reports", items, _report, _VERSION, lambda v: f"version {v} is reported twice", InvalidReports
    )


def _report(where: str, item: Any) -> StatusReport:
    _check_fields(where, item, _FIELDS, InvalidReports, _OPTIONAL_FIELDS)
    version, applied, error, attempts, checksum = (item[f] for f in _FIELDS)
    dead = item.get("dead", _OPTIONAL_FIELDS["dead"])
    if not isinstance(dead, bool):
        raise InvalidReports(f"{where}.dead must be true or false, not {_kind(dead)}")
    parsed = read_version(version)
    if parsed is None:
        raise InvalidReports(
            f'{where}.version must be a version such as "42" or "1.2.10", not {_show(version)}'
        )
    if not isinstance(applied, bool):
        raise InvalidReports(f"{where}.applied must be true or false, not {_kind(applied)}")
    if error is not None and not isinstance(error, str):
        raise InvalidReports(f"{where}.error must be a string or null, not {_kind(error)}")
    if error is not None and len(error) > MAX_ERROR:
        raise InvalidReports(
            f"{where}.error is {len(error)} characters long; at most {MAX_ERROR} are accepted"
        )
    if error is not None:
        # An error message is the client's free text (a driver's message, a file name): kept
        # readable rather than refused, since a refused report would be sent again forever.
        error = storable_text(error)
    if not _is_int(attempts) or not 0 <= attempts <= _MAX_INT:
        raise InvalidReports(f"{where}.attempts must be a non-negative integer, not {_show(attempts)}")
    if not isinstance(checksum, str) or not _CHECKSUM.fullmatch(checksum):
        raise InvalidReports(
            f"{where}.checksum must be a sha256 in lower-case hex (64 characters), not {_show(checksum)}"
        )
    return StatusReport(parsed, applied, error, attempts, checksum, dead and not applied)


_ANSWER_FIELDS = ("id", "state", "detail")


def action_answers(body: Any) -> list[ActionResult]:
    """``{"results": [{id, state, detail}, ...]}`` (a client's answers to requests) as records."""
    items = _list_of(body, "results", MAX_REPORTS, InvalidReports)
    return _each_once(
        "results", items, _answer, _ID, lambda i: f"request {i} is answered twice", InvalidReports
    )


def _answer(where: str, item: Any) -> ActionResult:
    _check_fields(where, item, _ANSWER_FIELDS, InvalidReports)
    action_id, state, detail = (item[f] for f in _ANSWER_FIELDS)
    if not _is_int(action_id) or not 0 <= action_id <= _MAX_INT:
        raise InvalidReports(f"{where}.id must be a non-negative integer, not {_show(action_id)}")
    if state not in ACTION_STATES:
        valid = ", ".join(f'"{s}"' for s in ACTION_STATES)
        raise InvalidReports(f"{where}.state must be one of {valid}, not {_show(state)}")
    if detail is not None and (
        not isinstance(detail, str) or len(detail) > MAX_ERROR or not storable(detail)
    ):
        raise InvalidReports(
            f"{where}.detail must be null or a text of at most {MAX_ERROR} characters, not {_show(detail)}"
        )
    return ActionResult(action_id, state, detail)


# -- entity changes ------------------------------------------------------------------------------

#: The most entity changes one request may carry.
MAX_CHANGES = 1000
#: The longest change id, entity name and entity id.
MAX_KEY = 200
_CHANGE_FIELDS = ("id", "entity", "entity_id", "operation", "data", "schema_version", "timestamp")


class InvalidChanges(ValueError):
    """Entity changes of the wrong shape; the message says what is wrong."""


def entity_changes(body: Any, *, max_changes: int | None = MAX_CHANGES) -> list[EntityChange]:
    """``{"changes": [{id, entity, entity_id, operation, data, schema_version, timestamp}, ...]}``
    as records, in the order sent.

    ``max_changes=None`` lifts the cap on their number (a changes file's size cap bounds it instead).
    """
    items = _list_of(body, "changes", max_changes, InvalidChanges)
    return _each_once(
        "changes", items, _change, _ID, lambda i: f"id {_show(i)} is sent twice", InvalidChanges
    )


def _change(where: str, item: Any) -> EntityChange:
    change = _plainly_valid(item)
    if change is not None:
        return change
    _check_fields(where, item, _CHANGE_FIELDS, InvalidChanges)
    change_id, entity, entity_id, operation, data, schema_version, timestamp = (
        item[f] for f in _CHANGE_FIELDS
    )
    for name, value in (("id", change_id), ("entity", entity), ("entity_id", entity_id)):
        if not isinstance(value, str) or not value:
            raise InvalidChanges(f"{where}.{name} must be a non-empty string, not {_show(value)}")
        if len(value) > MAX_KEY:
            raise InvalidChanges(
                f"{where}.{name} is {len(value)} characters long; at most {MAX_KEY} are accepted"
            )
        if not storable(value):
            raise InvalidChanges(f"{where}.{name} holds a NUL character or an unpaired surrogate")
    if operation not in OPERATIONS:
        valid = ", ".join(f'"{o}"' for o in OPERATIONS)
        raise InvalidChanges(f"{where}.operation must be one of {valid}, not {_show(operation)}")
    if data is not None and not isinstance(data, dict):
        raise InvalidChanges(f"{where}.data must be an object or null, not {_kind(data)}")
    version = None if schema_version is None else read_version(schema_version)
    if schema_version is not None and version is None:
        raise InvalidChanges(
            f'{where}.schema_version must be null or a version such as "42", not {_show(schema_version)}'
        )
    if not isinstance(timestamp, int | float) or isinstance(timestamp, bool) or not math.isfinite(timestamp):
        raise InvalidChanges(
            f"{where}.timestamp must be a number (seconds since the epoch), not {_show(timestamp)}"
        )
    return EntityChange(change_id, entity, entity_id, operation, data, version, float(timestamp))


_CHANGE_KEYS = frozenset(_CHANGE_FIELDS)


def _plainly_valid(item: Any) -> EntityChange | None:
    """``item`` as a change when it is valid in the plain way clients send them, checked fast
    (most of the cost of a batch, else); None: :func:`_change` looks closer and says what is wrong.

    Narrower than :func:`_change` on purpose (exact types, ASCII keys, a float timestamp):
    whatever it lets through, ``_change`` accepts as well, and the same way.
    """
    if type(item) is not dict or item.keys() != _CHANGE_KEYS:
        return None
    change_id, entity, entity_id = item["id"], item["entity"], item["entity_id"]
    for value in (change_id, entity, entity_id):
        if type(value) is not str or not 0 < len(value) <= MAX_KEY or not value.isascii() or "\x00" in value:
            return None
    operation, data, version, timestamp = (
        item["operation"],
        item["data"],
        item["schema_version"],
        item["timestamp"],
    )
    if type(operation) is not str or operation not in OPERATIONS:
        return None
    if data is not None and type(data) is not dict:
        return None
    if version is not None and (type(version) is not str or (version := read_version(version)) is None):
        return None
    if type(timestamp) is not float or not math.isfinite(timestamp):
        return None
    return EntityChange(change_id, entity, entity_id, operation, data, version, timestamp)


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
