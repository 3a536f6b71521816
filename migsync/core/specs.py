"""The small frozen records that plugins register.

A registration hook does no I/O and imports nothing heavy: it hands over a
spec naming what it provides and where the implementation lives. The
implementation is imported the first time it is used (``spec.load()``), so
``migsync status`` never pays for a transport it does not touch.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any, cast

import attrs

from migsync.core.errors import PluginError

#: Either the object itself or ``"package.module:attribute"`` to import lazily.
Target = Callable[..., Any] | str


def _load_target(target: Target, what: str, field: str = "factory") -> Callable[..., Any]:
    if not isinstance(target, str):
        return target
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise PluginError(f"{what}: {field} {target!r} is not of the form 'package.module:attribute'")
    try:
        loaded: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            loaded = getattr(loaded, part)
    except Exception as exc:
        # Any exception: a plugin's module may fail at import for reasons of its own.
        raise PluginError(f"{what}: cannot import {target!r}: {type(exc).__name__}: {exc}") from exc
    if not callable(loaded):
        raise PluginError(f"{what}: {target!r} is {type(loaded).__name__}, not a class or function")
    return cast("Callable[..., Any]", loaded)


def _schemes(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    # A lone string is one scheme, not a sequence of one-letter schemes.
    items = (value,) if isinstance(value, str) else tuple(value)
    return tuple(s.lower() for s in items)


_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


def _check_schemes(instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not value:
        raise ValueError(f"{type(instance).__name__} needs at least one URL scheme")
    for scheme in value:
        if not _SCHEME.fullmatch(scheme):
            raise ValueError(
                f"{type(instance).__name__}: {scheme!r} is not a URL scheme (write 'sqlite', not 'sqlite://')"
            )


def _check_name(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{type(instance).__name__} needs a non-empty name, got {value!r}")


def _check_target(instance: object, attribute: attrs.Attribute[Any], value: Target) -> None:
    if not isinstance(value, str) and not callable(value):
        what = f"{type(instance).__name__}: {attribute.name}"
        raise TypeError(f"{what} must be callable or 'module:attribute', got {value!r}")


@attrs.frozen
class BackendSpec:
    """A storage backend: the URL schemes it serves and the class that serves them.

    ``factory(url, **options)`` returns an unopened backend (see
    :class:`migsync.core.backend.Backend`).
    """

    name: str = attrs.field(validator=_check_name)
    schemes: tuple[str, ...] = attrs.field(converter=_schemes, validator=_check_schemes)
    factory: Target = attrs.field(validator=_check_target)
    description: str = ""

    def load(self) -> Callable[..., Any]:
        return _load_target(self.factory, f"backend {self.name!r}")


@attrs.frozen
class TransportSpec:
    """A transport: the URL schemes it serves and the class that serves them."""

    name: str = attrs.field(validator=_check_name)
    schemes: tuple[str, ...] = attrs.field(converter=_schemes, validator=_check_schemes)
    factory: Target = attrs.field(validator=_check_target)
    description: str = ""

    def load(self) -> Callable[..., Any]:
        return _load_target(self.factory, f"transport {self.name!r}")


@attrs.frozen
class EventSinkSpec:
    """An event sink, built from a mapping of string options.

    ``factory(options)`` returns an object with ``async emit(event)``.
    ``default`` sinks are active when a deployment names none.
    """

    name: str = attrs.field(validator=_check_name)
    factory: Target = attrs.field(validator=_check_target)
    description: str = ""
    default: bool = False

    def load(self) -> Callable[..., Any]:
        return _load_target(self.factory, f"event sink {self.name!r}")


@attrs.frozen
class ChangeApplierSpec:
    """A change applier of the server, built from a mapping of string options.

    ``factory(options)`` returns an object with
    ``async apply(change, connection, dialect)`` (see
    :mod:`migsync.server.appliers`). ``default`` appliers are active when a
    deployment names none.
    """

    name: str = attrs.field(validator=_check_name)
    factory: Target = attrs.field(validator=_check_target)
    description: str = ""
    default: bool = False

    def load(self) -> Callable[..., Any]:
        return _load_target(self.factory, f"change applier {self.name!r}")


@attrs.frozen
class SourceFormatSpec:
    """A migration file format understood by the directory loader.

    ``factory()`` returns a :class:`migsync.core.formats.SourceFormat`.
    Formats are offered each file in ``priority`` order (lower first); the
    first whose ``match`` accepts a file name owns that file.
    """

    name: str = attrs.field(validator=_check_name)
    factory: Target = attrs.field(validator=_check_target)
    description: str = ""
    priority: int = 100

    def load(self) -> Callable[..., Any]:
        return _load_target(self.factory, f"source format {self.name!r}")


# -- SQLite functions and collations -------------------------------------------------------

_SQL_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def _sql_name(value: str) -> str:
    # SQLite looks names up case-insensitively: "Normalize" and "normalize" are one function.
    return value.lower() if isinstance(value, str) else value


def _check_sql_name(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not _SQL_NAME.fullmatch(value):
        raise ValueError(
            f"{type(instance).__name__}: {value!r} is not a SQL name "
            "(letters, digits and _, not starting with a digit)"
        )


def _check_narg(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= 127:
        raise ValueError(
            f"{type(instance).__name__}: narg must be -1 (any number of arguments) or 0 to 127, got {value!r}"
        )


@attrs.frozen
class SQLiteFunctionSpec:
    """A SQL function on every SQLite connection: ``name(...)`` in SQL calls ``function``.

    The fields follow ``sqlite3.Connection.create_function(name, narg, func,
    deterministic=...)``. ``narg`` is the number of arguments, -1 for any
    number. ``function`` returns ``None``, ``int``, ``float``, ``str`` or
    ``bytes``. ``deterministic=True`` promises the same result for the same
    arguments, which SQLite requires of a function used in an index, a
    ``CHECK`` constraint or a generated column. ``name`` is lower-cased, as
    SQLite compares names without case.
    """

    name: str = attrs.field(converter=_sql_name, validator=_check_sql_name)
    narg: int = attrs.field(validator=_check_narg)
    function: Target = attrs.field(validator=_check_target)
    deterministic: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    description: str = ""

    def load(self) -> Callable[..., Any]:
        return _load_target(self.function, f"sqlite function {self.name!r}", "function")


@attrs.frozen
class SQLiteCollationSpec:
    """A collation on every SQLite connection: ``COLLATE name`` orders text with ``function``.

    ``function(a, b)`` receives two ``str`` and returns a negative number, zero
    or a positive number, as ``sqlite3.Connection.create_collation`` expects.
    ``name`` is lower-cased.
    """

    name: str = attrs.field(converter=_sql_name, validator=_check_sql_name)
    function: Target = attrs.field(validator=_check_target)
    description: str = ""

    def load(self) -> Callable[..., Any]:
        return _load_target(self.function, f"sqlite collation {self.name!r}", "function")


SQLiteSpec = SQLiteFunctionSpec | SQLiteCollationSpec

Spec = (
    BackendSpec
    | TransportSpec
    | EventSinkSpec
    | SourceFormatSpec
    | ChangeApplierSpec
    | SQLiteFunctionSpec
    | SQLiteCollationSpec
)
