"""The small frozen records that plugins register.

A registration hook does no I/O and imports nothing heavy: it hands over a
spec naming what it provides and where the implementation lives. The
implementation is imported the first time it is used (``spec.load()``), so
``migsync status`` never pays for a transport it does not touch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import attrs

from migsync.core.errors import PluginError

#: Either the object itself or ``"package.module:attribute"`` to import lazily.
Target = Callable[..., Any] | str


def _load_target(target: Target, what: str) -> Callable[..., Any]:
    if not isinstance(target, str):
        return target
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        loaded: Callable[..., Any] = getattr(module, attribute) if attribute else module
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"{what}: cannot import {target!r}: {exc}") from exc
    return loaded


def _schemes(value: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(s.lower() for s in value)


@attrs.frozen
class BackendSpec:
    """A storage backend: the URL schemes it serves and the class that serves them.

    ``factory(url, **options)`` returns an unopened backend (see
    :class:`migsync.core.backend.Backend`).
    """

    name: str
    schemes: tuple[str, ...] = attrs.field(converter=_schemes)
    factory: Target
    description: str = ""

    def load(self) -> Callable[..., Any]:
        return _load_target(self.factory, f"backend {self.name!r}")


@attrs.frozen
class TransportSpec:
    """A transport: the URL schemes it serves and the class that serves them."""

    name: str
    schemes: tuple[str, ...] = attrs.field(converter=_schemes)
    factory: Target
    description: str = ""

    def load(self) -> Callable[..., Any]:
        return _load_target(self.factory, f"transport {self.name!r}")


@attrs.frozen
class EventSinkSpec:
    """An event sink, built from a mapping of string options.

    ``factory(options)`` returns an object with ``async emit(event)``.
    ``default`` sinks are active when a deployment names none.
    """

    name: str
    factory: Target
    description: str = ""
    default: bool = False

    def load(self) -> Callable[..., Any]:
        return _load_target(self.factory, f"event sink {self.name!r}")


@attrs.frozen
class SourceFormatSpec:
    """A migration file format understood by the directory loader.

    ``factory()`` returns a :class:`migsync.core.formats.SourceFormat`.
    Formats are offered each file in ``priority`` order (lower first); the
    first whose ``match`` accepts a file name owns that file.
    """

    name: str
    factory: Target
    description: str = ""
    priority: int = 100

    def load(self) -> Callable[..., Any]:
        return _load_target(self.factory, f"source format {self.name!r}")


Spec = BackendSpec | TransportSpec | EventSinkSpec | SourceFormatSpec
