"""Checking a JSON value against a JSON Schema: the small part of JSON Schema (2020-12) that
migsync's wire formats use, with refusals that name the field and say what it must be.

::

    check(SCHEMAS["StatusReports"], body, registry=SCHEMAS)
    # SchemaViolation: reports[0].applied must be true or false, not a number

Why not the ``jsonschema`` package: the server would carry a dependency (and its import
time) to check a dozen small shapes, and its messages name a schema path rather than the
field a client got wrong. The keywords understood here are ``type``, ``properties``,
``required``, ``additionalProperties: false``, ``items``, ``minItems``/``maxItems``,
``enum``/``const``, ``pattern``, ``minLength``/``maxLength``, ``minimum``/``maximum``,
``anyOf`` and ``$ref`` (to a named schema of the registry given); any other keyword in a
schema is refused when it is checked (:func:`supported`), so a schema never says more than is
enforced. A schema's ``description`` is what a refusal says the value must be ("true or
false"), so the documentation and the message are the same words.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["SchemaViolation", "check", "compiled_pattern", "supported"]

Schema = Mapping[str, Any]

#: Keywords that :func:`check` enforces, and those that only document.
ENFORCED = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "anyOf",
        "$ref",
    }
)
DOCUMENTING = frozenset({"description", "title", "examples", "default", "$schema", "$id", "$defs", "format"})

_KINDS = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "boolean": "a boolean",
    "null": "null",
    "number": "a number",
    "integer": "a number",
}


class SchemaViolation(ValueError):
    """A value that does not match its schema; the message names where, and what it must be."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


def check(
    schema: Schema, value: Any, *, where: str = "the body", registry: Mapping[str, Schema] | None = None
) -> None:
    """Raise :class:`SchemaViolation` if ``value`` (parsed JSON) does not match ``schema``.

    ``where`` names the value itself in a message; a field in it is named by its path
    (``reports[0].applied``). ``registry`` resolves ``{"$ref": ".../NAME"}`` by its last part.
    """
    _check(schema, value, [], where, registry or {})


def supported(schema: Any, registry: Mapping[str, Schema]) -> list[str]:
    """What in ``schema`` :func:`check` would not enforce (keywords unknown, refs unresolved):
    a test asserts it is empty for every schema migsync serves."""
    problems: list[str] = []
    if isinstance(schema, Mapping):
        for key, sub in schema.items():
            if key not in ENFORCED and key not in DOCUMENTING:
                problems.append(f"keyword {key!r}")
            if key == "additionalProperties" and sub is not False:
                problems.append("additionalProperties other than false")
            if key == "$ref" and _ref_name(sub) not in registry:
                problems.append(f"unresolved {sub!r}")
            if key == "properties":
                for prop in sub.values():
                    problems += supported(prop, registry)
            elif key in ("items",):
                problems += supported(sub, registry)
            elif key == "anyOf":
                for option in sub:
                    problems += supported(option, registry)
    return problems


def _check(
    schema: Schema, value: Any, path: list[str | int], root: str, registry: Mapping[str, Schema]
) -> None:
    if "$ref" in schema:
        target = registry[_ref_name(schema["$ref"])]
        schema = (
            target if len(schema) == 1 else {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        )
    if "anyOf" in schema:
        for option in schema["anyOf"]:
            try:
                _check(option, value, path, root, registry)
            except SchemaViolation:
                continue
            break
        else:
            raise _must(schema, value, path, root, type_wrong=not _any_type_fits(schema, value, registry))
    types = schema.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else list(types)
        if not any(_is(kind, value) for kind in allowed):
            raise _must(schema, value, path, root, type_wrong=True)
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        options = ", ".join(json.dumps(option) for option in schema["enum"])
        raise SchemaViolation(
            f"{_where(path, root)} must be one of {options}, not {_show(value)}", _where(path, root)
        )
    if "const" in schema and not _same(value, schema["const"]):
        raise SchemaViolation(
            f"{_where(path, root)} must be {json.dumps(schema['const'])}, not {_show(value)}",
            _where(path, root),
        )
    if isinstance(value, dict):
        _check_object(schema, value, path, root, registry)
    elif isinstance(value, list):
        _check_array(schema, value, path, root, registry)
    elif isinstance(value, str):
        _check_string(schema, value, path, root)
    elif _is("number", value):
        low, high = schema.get("minimum"), schema.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            raise _must(schema, value, path, root, type_wrong=False)


def _check_object(
    schema: Schema, value: dict[str, Any], path: list[str | int], root: str, registry: Mapping[str, Schema]
) -> None:
    properties: Mapping[str, Schema] = schema.get("properties", {})
    # At the top, the body's own shape is wrong: say what it must be as a whole.
    missing = [name for name in schema.get("required", ()) if name not in value]
    unknown = sorted(str(k) for k in value if k not in properties) if "additionalProperties" in schema else []
    if missing or unknown:
        if not path and "description" in schema:
            raise _must(schema, value, path, root, type_wrong=True)
        where = _where(path, root)
        if missing:
            raise SchemaViolation(f"{where}: missing {', '.join(repr(f) for f in missing)}", where)
        raise SchemaViolation(f"{where}: unknown field {', '.join(repr(f) for f in unknown)}", where)
    for name, sub in properties.items():
        if name in value:
            _check(sub, value[name], [*path, name], root, registry)


def _check_array(
    schema: Schema, value: list[Any], path: list[str | int], root: str, registry: Mapping[str, Schema]
) -> None:
    most, least = schema.get("maxItems"), schema.get("minItems", 0)
    if most is not None and len(value) > most:
        where = _where(path, root)
        what = path[-1] if path and isinstance(path[-1], str) else "items"
        raise SchemaViolation(f"{where} holds {len(value)} {what}; at most {most} per request", where)
    if len(value) < least:
        raise _must(schema, value, path, root, type_wrong=False)
    items = schema.get("items")
    if items is not None:
        for index, item in enumerate(value):
            _check(items, item, [*path, index], root, registry)


def _check_string(schema: Schema, value: str, path: list[str | int], root: str) -> None:
    most = schema.get("maxLength")
    if most is not None and len(value) > most:
        where = _where(path, root)
        raise SchemaViolation(f"{where} is {len(value)} characters long; at most {most} are accepted", where)
    if len(value) < schema.get("minLength", 0):
        raise _must(schema, value, path, root, type_wrong=False)
    pattern = schema.get("pattern")
    if pattern is not None and not compiled_pattern(pattern).search(value):
        raise _must(schema, value, path, root, type_wrong=False)


@functools.lru_cache(maxsize=256)
def compiled_pattern(pattern: str) -> re.Pattern[str]:
    # JSON Schema's "$" is the end of the text; Python's also matches before a final newline.
    return re.compile(
        pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern
    )


def _must(
    schema: Schema, value: Any, path: list[str | int], root: str, *, type_wrong: bool
) -> SchemaViolation:
    """``WHERE must be DESCRIPTION, not VALUE``: the value's kind when its type is wrong (the
    value itself may be long), else the value (a -1 where only 0 and up is accepted)."""
    where = _where(path, root)
    # A record's description says what it is, not what it must be: a field holding no object
    # must be "an object". The body's own description says both ("an object with one key, ...").
    record = schema.get("type") == "object" and path
    what = _describe_type(schema) if record or "description" not in schema else schema["description"]
    shown = _kind(value) if type_wrong else _show(value)
    return SchemaViolation(f"{where} must be {what}, not {shown}", where)


def _describe_type(schema: Schema) -> str:
    types = schema.get("type", "any JSON value")
    allowed = [types] if isinstance(types, str) else list(types)
    return " or ".join(_KINDS.get(t, t) for t in allowed)


def _any_type_fits(schema: Schema, value: Any, registry: Mapping[str, Schema]) -> bool:
    for option in schema["anyOf"]:
        if "$ref" in option:
            option = registry[_ref_name(option["$ref"])]
        types = option.get("type")
        if types is None or any(_is(t, value) for t in ([types] if isinstance(types, str) else types)):
            return True
    return False


def _is(kind: str, value: Any) -> bool:
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        # Stricter than JSON Schema, which counts 1.0 as an integer: a count or an id is sent as one.
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        if isinstance(value, float):
            return math.isfinite(value)
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    raise ValueError(f"unknown JSON Schema type {kind!r}")


def _same(value: Any, option: Any) -> bool:
    # JSON Schema: true is not 1; Python: True == 1.
    return type(value) is type(option) and value == option


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _where(path: list[str | int], root: str) -> str:
    if not path:
        return root
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")
