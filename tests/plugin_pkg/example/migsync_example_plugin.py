"""A third-party migsync plugin: an event sink, a backend for a new URL scheme, SQL functions.

``--sink example-file:path=FILE`` appends each event's kind to FILE, one a
line. ``examplesqlite:///app.db`` is SQLite under another scheme name. On
every SQLite database, ``normalize(text)`` folds case and runs of blanks (and
refuses anything but text), and ``COLLATE unicase`` orders text without case.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from migsync import (
    BackendSpec,
    BaseEventSink,
    ConfigError,
    Event,
    EventSinkSpec,
    SQLiteCollationSpec,
    SQLiteFunctionSpec,
    hookimpl,
)
from migsync.backends.sqlite import SQLiteBackend

SCHEME = "examplesqlite"


class KindFileSink(BaseEventSink):
    name = "example-file"

    def __init__(self, options: Mapping[str, str]):
        if set(options) != {"path"}:
            raise ConfigError(f"example-file sink takes exactly one option, path; got {sorted(options)}")
        self.path = Path(options["path"])

    async def emit(self, event: Event) -> None:
        with self.path.open("a", encoding="utf-8") as file:
            file.write(event.kind + "\n")


class ExampleSQLiteBackend(SQLiteBackend):
    name = "example-sqlite"

    def __init__(self, url: str, **options: Any):
        scheme, sep, rest = url.partition(":")
        if scheme.lower() == SCHEME and sep:
            url = "sqlite:" + rest
        super().__init__(url, **options)


@hookimpl
def migsync_register_event_sinks(register: Callable[[EventSinkSpec], None]) -> None:
    register(EventSinkSpec("example-file", KindFileSink, "append event kinds to path=FILE"))


@hookimpl
def migsync_register_backends(register: Callable[[BackendSpec], None]) -> None:
    register(BackendSpec("example-sqlite", (SCHEME,), ExampleSQLiteBackend, "SQLite as examplesqlite://"))


def normalize(text: object) -> str:
    if not isinstance(text, str):
        raise ValueError(f"normalize() takes text, not {type(text).__name__}")
    return " ".join(text.split()).casefold()


def unicase(a: str, b: str) -> int:
    a, b = a.casefold(), b.casefold()
    return (a > b) - (a < b)


@hookimpl
def migsync_register_sqlite_functions(
    register: Callable[[SQLiteFunctionSpec | SQLiteCollationSpec], None],
) -> None:
    register(
        SQLiteFunctionSpec("normalize", 1, normalize, deterministic=True, description="fold case and blanks")
    )
    register(SQLiteCollationSpec("unicase", unicase, "text without case"))
