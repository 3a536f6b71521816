"""Plugins' SQL functions and collations on the SQLite backend's connection.

The backend installs them (:func:`install`) on its connection as it opens it,
before anything runs, so that a migration, and the triggers, indexes and
views it creates, can use them.

SQLite reports any function that raises as "user-defined function raised
exception", naming neither the function nor what it raised, and a collation
has no way to fail at all: a comparison that raises is counted as "equal"
and the statement runs on. So each callable is wrapped. A failure is kept on
the connection; a collation's also interrupts the statement, which SQLite
then undoes. :func:`explain` turns the driver's message into one that says
which function raised what; for "no such function" it adds the SQLite
version and the functions plugins registered, because the usual causes are a
function newer than the linked SQLite (``unhex`` is 3.41) or a plugin that is
not installed.
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from migsync.core.specs import SQLiteCollationSpec, SQLiteFunctionSpec, SQLiteSpec

_RESULTS = (int, float, str, bytes, bytearray, memoryview)
_INT64 = range(-(2**63), 2**63)
#: What sqlite3 says when a wrapped callable failed: a function raised (an OverflowError is
#: told as "too big"), or a collation interrupted its statement.
_FAILED = frozenset({"user-defined function raised exception", "string or blob too big", "interrupted"})


@attrs.define
class Installed:
    """What is installed on one connection, and the last failure of one of them."""

    functions: tuple[str, ...] = ()
    collations: tuple[str, ...] = ()
    #: (what failed, e.g. "function normalize()", and the exception it raised)
    failure: tuple[str, Exception] | None = None


class FunctionsConnection(sqlite3.Connection):
    """``sqlite3.Connection`` that knows what :func:`install` put on it."""

    installed: Installed | None = None


Loaded = Sequence[tuple[SQLiteSpec, Callable[..., Any]]]


def load(specs: Sequence[SQLiteSpec]) -> Loaded:
    """Each spec with its callable, imported now (a ``PluginError`` before any connection opens)."""
    return [(spec, spec.load()) for spec in specs]


def install(conn: FunctionsConnection, loaded: Loaded) -> None:
    installed = Installed(
        functions=tuple(spec.name for spec, _ in loaded if isinstance(spec, SQLiteFunctionSpec)),
        collations=tuple(spec.name for spec, _ in loaded if isinstance(spec, SQLiteCollationSpec)),
    )
    conn.installed = installed
    for spec, function in loaded:
        if isinstance(spec, SQLiteFunctionSpec):
            conn.create_function(
                spec.name,
                spec.narg,
                _function(spec.name, function, installed),
                deterministic=spec.deterministic,
            )
        else:
            conn.create_collation(spec.name, _collation(spec.name, function, installed, weakref.ref(conn)))


def _function(name: str, function: Callable[..., Any], installed: Installed) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        try:
            result = function(*args)
            # Checked here: sqlite3 would refuse these with the same anonymous message.
            if result is not None and not isinstance(result, _RESULTS):
                kind = type(result).__name__
                raise TypeError(f"it returned a {kind}; SQL functions return None, int, float, str or bytes")
            if isinstance(result, int) and result not in _INT64:
                raise OverflowError(f"it returned {result}, which does not fit SQLite's 64-bit integer")
        except Exception as exc:
            installed.failure = (f"function {name}()", exc)
            raise
        return result

    return call


def _collation(
    name: str,
    function: Callable[[str, str], Any],
    installed: Installed,
    conn: weakref.ref[FunctionsConnection],
) -> Callable[[str, str], int]:
    def compare(a: str, b: str) -> int:
        try:
            result = function(a, b)
            if isinstance(result, bool) or not isinstance(result, int):
                raise TypeError(f"it returned a {type(result).__name__}; a collation returns an int")
        except Exception as exc:
            installed.failure = (f"collation {name}", exc)
            # SQLite cannot fail a statement from a collation; interrupting it makes the
            # statement fail ("interrupted") and undoes what it did.
            connection = conn()
            if connection is not None:
                connection.interrupt()
            return 0
        return (result > 0) - (result < 0)

    return compare


def explain(exc: sqlite3.Error, conn: sqlite3.Connection | None) -> str:
    """The driver's message, with what it leaves out about functions and collations said."""
    message = str(exc)
    installed = getattr(conn, "installed", None)
    if installed is not None:
        failure, installed.failure = installed.failure, None
        if failure is not None and message in _FAILED:
            what, error = failure
            exc.__cause__ = error  # -vv shows the function's own traceback
            return f"user-defined {what} raised {type(error).__name__}: {error}"
    if message.startswith("no such function: "):
        return f"{message} ({_known(installed, 'functions')})"
    if message.startswith("no such collation sequence: "):
        return f"{message} ({_known(installed, 'collations')})"
    return message


def _known(installed: Installed | None, kind: str) -> str:
    names: tuple[str, ...] = getattr(installed, kind, ()) if installed is not None else ()
    registered = f"{kind} from plugins: {', '.join(names)}" if names else f"no {kind} from plugins"
    return f"SQLite {sqlite3.sqlite_version}; {registered}"
