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
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SchemaViolation", "check", "compiled_pattern", "supported", "validator"]

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
    To check many values against one schema, make a :func:`validator` once.
    """
    validator(schema, registry or {})(value, where)


def validator(schema: Schema, registry: Mapping[str, Schema]) -> Callable[[Any, str], None]:
    """``check`` for one schema, compiled once: a function of the value and its name."""
    checker = _Compiler(registry).compile(schema)

    def validate(value: Any, where: str = "the body") -> None:
        try:
            checker(value, ())
        except _Refused as refused:
            at = _where(refused.path, where)
            raise SchemaViolation(refused.say(at), at) from None

    return validate


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


Path = tuple[str | int, ...]
Checker = Callable[[Any, Path], None]


class _Refused(Exception):
    """Inside the checkers: where the value is wrong, and what to say given that place's name."""

    def __init__(self, path: Path, say: Callable[[str], str]) -> None:
        self.path = path
        self.say = say


class _Compiler:
    """A schema as a tree of small functions, each knowing its part of the schema already:
    checking a value then reads no schema, only the value (the cost of a batch of reports)."""

    def __init__(self, registry: Mapping[str, Schema]) -> None:
        self.registry = registry
        self.named: dict[str, Checker] = {}
        self.compiling: set[str] = set()

    def compile(self, schema: Schema) -> Checker:
        if "$ref" in schema:
            name = _ref_name(schema["$ref"])
            if len(schema) == 1:
                return self._named(name)
            schema = {**self.registry[name], **{k: v for k, v in schema.items() if k != "$ref"}}
        steps: list[Checker] = []
        if "anyOf" in schema:
            steps.append(self._any_of(schema))
        if "type" in schema:
            steps.append(_typed(schema))
        if "enum" in schema or "const" in schema:
            steps.append(_one_of(schema))
        if "properties" in schema or "required" in schema or "additionalProperties" in schema:
            steps.append(self._object(schema))
        if "items" in schema or "maxItems" in schema or "minItems" in schema:
            steps.append(self._array(schema))
        if "pattern" in schema or "maxLength" in schema or "minLength" in schema:
            steps.append(_string(schema))
        if "minimum" in schema or "maximum" in schema:
            steps.append(_number(schema))
        if len(steps) == 1:
            return steps[0]

        def every(value: Any, path: Path) -> None:
            for step in steps:
                step(value, path)

        return every

    def _named(self, name: str) -> Checker:
        if name not in self.named:
            if name in self.compiling:
                raise ValueError(f"schema {name!r} refers to itself: not supported")
            self.compiling.add(name)
            self.named[name] = self.compile(self.registry[name])
        return self.named[name]

    def _any_of(self, schema: Schema) -> Checker:
        options = [self.compile(option) for option in schema["anyOf"]]
        resolved = [self.registry[_ref_name(o["$ref"])] if "$ref" in o else o for o in schema["anyOf"]]
        fits = [_type_test(o["type"]) if "type" in o else None for o in resolved]

        def any_of(value: Any, path: Path) -> None:
            for option in options:
                try:
                    option(value, path)
                except _Refused:
                    continue
                return
            type_wrong = not any(fit is None or fit(value) for fit in fits)
            raise _must(schema, value, path, type_wrong=type_wrong)

        return any_of

    def _object(self, schema: Schema) -> Checker:
        properties = [(name, self.compile(sub)) for name, sub in schema.get("properties", {}).items()]
        known = frozenset(schema.get("properties", {}))
        required = tuple(schema.get("required", ()))
        closed = "additionalProperties" in schema
        whole = "description" in schema  # at the top, say what the body must be as a whole

        def object_(value: Any, path: Path) -> None:
            if type(value) is not dict:
                return
            if (closed and not value.keys() <= known) or not all(name in value for name in required):
                missing = [name for name in required if name not in value]
                unknown = sorted(str(k) for k in value if k not in known) if closed else []
                if not path and whole:
                    raise _must(schema, value, path, type_wrong=True)
                if missing:
                    listed = ", ".join(repr(f) for f in missing)
                    raise _Refused(path, lambda at: f"{at}: missing {listed}")
                listed = ", ".join(repr(f) for f in unknown)
                raise _Refused(path, lambda at: f"{at}: unknown field {listed}")
            for name, checker in properties:
                if name in value:
                    checker(value[name], (*path, name))

        return object_

    def _array(self, schema: Schema) -> Checker:
        items = self.compile(schema["items"]) if "items" in schema else None
        most, least = schema.get("maxItems"), schema.get("minItems", 0)

        def array(value: Any, path: Path) -> None:
            if type(value) is not list:
                return
            if most is not None and len(value) > most:
                what = path[-1] if path and isinstance(path[-1], str) else "items"
                count = len(value)
                raise _Refused(path, lambda at: f"{at} holds {count} {what}; at most {most} per request")
            if len(value) < least:
                raise _must(schema, value, path, type_wrong=False)
            if items is not None:
                for index, item in enumerate(value):
                    items(item, (*path, index))

        return array


def _typed(schema: Schema) -> Checker:
    fits = _type_test(schema["type"])

    def typed(value: Any, path: Path) -> None:
        if not fits(value):
            raise _must(schema, value, path, type_wrong=True)

    return typed


def _one_of(schema: Schema) -> Checker:
    options = list(schema["enum"]) if "enum" in schema else [schema["const"]]
    if "enum" in schema:
        listed = ", ".join(json.dumps(option) for option in options)
        what = f"one of {listed}"
    else:
        what = json.dumps(schema["const"])

    def one_of(value: Any, path: Path) -> None:
        if not any(_same(value, option) for option in options):
            shown = _show(value)
            raise _Refused(path, lambda at: f"{at} must be {what}, not {shown}")

    return one_of


def _string(schema: Schema) -> Checker:
    most, least = schema.get("maxLength"), schema.get("minLength", 0)
    pattern = compiled_pattern(schema["pattern"]) if "pattern" in schema else None

    def string(value: Any, path: Path) -> None:
        if type(value) is not str:
            return
        if most is not None and len(value) > most:
            length = len(value)
            raise _Refused(path, lambda at: f"{at} is {length} characters long; at most {most} are accepted")
        if len(value) < least or (pattern is not None and not pattern.search(value)):
            raise _must(schema, value, path, type_wrong=False)

    return string


def _number(schema: Schema) -> Checker:
    low, high = schema.get("minimum"), schema.get("maximum")

    def number(value: Any, path: Path) -> None:
        if not _is("number", value):
            return
        if (low is not None and value < low) or (high is not None and value > high):
            raise _must(schema, value, path, type_wrong=False)

    return number


def _type_test(types: str | list[str]) -> Callable[[Any], bool]:
    allowed = [types] if isinstance(types, str) else list(types)
    for kind in allowed:
        _is(kind, None)  # an unknown type name is refused now, not when a value comes
    return lambda value: any(_is(kind, value) for kind in allowed)


@functools.lru_cache(maxsize=256)
def compiled_pattern(pattern: str) -> re.Pattern[str]:
    # JSON Schema's "$" is the end of the text; Python's also matches before a final newline.
    return re.compile(
        pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern
    )


def _must(schema: Schema, value: Any, path: Path, *, type_wrong: bool) -> _Refused:
    """``WHERE must be DESCRIPTION, not VALUE``: the value's kind when its type is wrong (the
    value itself may be long), else the value (a -1 where only 0 and up is accepted)."""
    # A record's description says what it is, not what it must be: a field holding no object
    # must be "an object". The body's own description says both ("an object with one key, ...").
    record = schema.get("type") == "object" and path
    what = _describe_type(schema) if record or "description" not in schema else schema["description"]
    shown = _kind(value) if type_wrong else _show(value)
    return _Refused(path, lambda at: f"{at} must be {what}, not {shown}")


def _describe_type(schema: Schema) -> str:
    types = schema.get("type", "any JSON value")
    allowed = [types] if isinstance(types, str) else list(types)
    return " or ".join(_KINDS.get(t, t) for t in allowed)


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


def _where(path: Path, root: str) -> str:
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
