"""Built-in event sinks: logging (the default), an in-process bus, a JSON-lines file."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from migsync.core.errors import ConfigError
from migsync.core.events import BaseEventSink, Event, EventBus
from migsync.core.hookspecs import hookimpl
from migsync.core.specs import EventSinkSpec

_LEVELS = {
    "migration_failed": logging.WARNING,
    "migration_dead": logging.ERROR,
    "migration_dirty": logging.ERROR,
    "pass_completed": logging.DEBUG,
}


class LoggingSink(BaseEventSink):
    """Writes each event to the ``migsync.events`` logger (failures as warnings, dead as errors)."""

    name = "logging"

    def __init__(self, options: Mapping[str, str] | None = None):
        options = dict(options or {})
        self.logger = logging.getLogger(options.pop("logger", "migsync.events"))
        if options:
            raise ConfigError(f"logging sink: unknown options {sorted(options)} (valid: logger)")

    async def emit(self, event: Event) -> None:
        self.logger.log(_LEVELS.get(event.kind, logging.INFO), "%s", event.describe())


class JsonLinesSink(BaseEventSink):
    """Appends one JSON object per event to a file: ``--sink jsonl:path=events.jsonl``."""

    name = "jsonl"

    def __init__(self, options: Mapping[str, str] | None = None):
        options = dict(options or {})
        path = options.pop("path", None)
        if not path:
            raise ConfigError("jsonl sink needs a path: --sink jsonl:path=events.jsonl")
        if options:
            raise ConfigError(f"jsonl sink: unknown options {sorted(options)} (valid: path)")
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ConfigError(f"jsonl sink: folder {self.path.parent} does not exist")
        self._file: Any = None

    async def emit(self, event: Event) -> None:
        line = json.dumps(event.to_dict(), sort_keys=True, default=str) + "\n"
        await asyncio.to_thread(self._write, line)

    def _write(self, line: str) -> None:
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(line)
        self._file.flush()

    async def aclose(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@hookimpl
def migsync_register_event_sinks(register: Callable[[EventSinkSpec], None]) -> None:
    register(EventSinkSpec("logging", LoggingSink, "log each event (migsync.events logger)", default=True))
    register(EventSinkSpec("bus", EventBus, "in-process bus that application code subscribes to"))
    register(EventSinkSpec("jsonl", JsonLinesSink, "append events as JSON lines: jsonl:path=FILE"))
