"""Checking a plugin's class or object against the ``typing.Protocol`` of its kind.

The contracts themselves live beside the code that relies on them:
:class:`migsync.core.backend.Backend`, :class:`migsync.transports.base.Transport`
and :class:`migsync.core.events.EventSink`. This module reads their members
(methods, whether each is ``async def``, attributes) and says what a plugin's
class or object lacks, so that a missing ``report_actions`` is one line when
the plugin loads instead of an ``AttributeError`` in the middle of a sync.

``isinstance`` against a ``runtime_checkable`` protocol would only say yes or
no, would not look at ``async``, and needs an instance; a registration hook
hands over a class, which must be judged before anything is built from it.

The protocol modules are imported only when something of their kind is
checked: ``migsync apply`` never imports the transport contract (and its wire
records) for a transport it does not use.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

#: The kinds that have a contract: registry kind -> (module, protocol).
PROTOCOLS: dict[str, tuple[str, str]] = {
    "backend": ("migsync.core.backend", "Backend"),
    "transport": ("migsync.transports.base", "Transport"),
    "event sink": ("migsync.core.events", "EventSink"),
}

#: Dunder methods that are part of a contract (``async with``); other dunders are typing's.
_CONTRACT_DUNDERS = frozenset({"__aenter__", "__aexit__"})


class Member(NamedTuple):
    """One member of a protocol (a named tuple: defined at every start, where an attrs class
    costs more)."""

    name: str
    method: bool
    is_async: bool = False
    #: a class attribute, present on the class itself (``Backend.dialect``), not set in ``__init__``
    on_class: bool = False


_members: dict[str, tuple[Member, ...]] = {}

F = TypeVar("F", bound=Callable[..., Any])


def protocol(kind: str) -> type:
    """The ``typing.Protocol`` of ``kind`` (``"backend"``, ``"transport"``, ``"event sink"``)."""
    module_name, name = PROTOCOLS[kind]
    found: type = getattr(importlib.import_module(module_name), name)
    return found


def members(kind: str) -> tuple[Member, ...]:
    """Every member of ``kind``'s protocol, methods first, in the order the protocol declares them."""
    cached = _members.get(kind)
    if cached is not None:
        return cached
    methods: list[Member] = []
    attributes: list[Member] = []
    seen: set[str] = set()
    for klass in protocol(kind).__mro__:
        if klass is object or getattr(klass, "_is_protocol", False) is not True:
            continue
        if klass.__module__ == "typing":
            continue
        for name, value in vars(klass).items():
            if name in seen or (name.startswith("_") and name not in _CONTRACT_DUNDERS):
                continue
            if inspect.isfunction(value):
                seen.add(name)
                methods.append(Member(name, True, is_async=inspect.iscoroutinefunction(value)))
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            if name in seen or name.startswith("_"):
                continue
            seen.add(name)
            attributes.append(Member(name, False, on_class=str(annotation).startswith("ClassVar")))
    result = (*methods, *attributes)
    _members[kind] = result
    return result


def to_implement(function: F) -> F:
    """Mark a base class's stub (one that raises ``NotImplementedError``) as not an implementation.

    A subclass that inherits the stub does not keep the contract: the check says the method is
    missing, as it would if the base class had no stub at all.
    """
    function.__migsync_stub__ = True  # type: ignore[attr-defined]
    return function


def problems(kind: str, target: object) -> list[str]:
    """What ``target`` (a class, or an object built by a factory) lacks of ``kind``'s contract.

    Empty when it keeps the contract. On a class, attributes that instances
    get in ``__init__`` (a backend's ``url``, a transport's ``where``) cannot be
    seen and are left to the check of the object.
    """
    is_class = inspect.isclass(target)
    missing: list[str] = []
    wrong: list[str] = []
    for member in members(kind):
        if not member.method:
            if (member.on_class or not is_class) and not hasattr(target, member.name):
                missing.append(member.name)
            continue
        value = inspect.getattr_static(target, member.name, None)
        if isinstance(value, staticmethod | classmethod):
            value = value.__func__
        if value is None and _delegates(target, member.name):
            continue  # a proxy's __getattr__ answers for it: what it returns cannot be judged here
        if value is None or getattr(value, "__migsync_stub__", False):
            missing.append(f"{member.name}()")
            continue
        if not callable(value):
            wrong.append(f"{member.name} is {type(value).__name__}, not a method")
            continue
        if not (inspect.isfunction(value) or inspect.ismethod(value)):
            continue  # a callable object: whether it is async cannot be told without calling it
        # Not unwrapped: @asynccontextmanager's wrapper is the plain function callers see.
        if member.is_async and not inspect.iscoroutinefunction(value):
            wrong.append(f"{member.name}() must be 'async def'")
        elif not member.is_async and (
            inspect.iscoroutinefunction(value) or inspect.isasyncgenfunction(value)
        ):
            wrong.append(
                f"{member.name}() must be a plain 'def' that returns an async context manager "
                "(put @contextlib.asynccontextmanager on an 'async def' that yields)"
            )
    found = []
    if missing:
        found.append(f"missing {', '.join(missing)}")
    return found + wrong


def _delegates(target: object, name: str) -> bool:
    """Whether ``target`` hands ``name`` to a ``__getattr__`` (a wrapper around another object)."""
    klass = target if inspect.isclass(target) else type(target)
    if inspect.getattr_static(klass, "__getattr__", None) is None:
        return False
    if inspect.isclass(target):
        return True  # the instances' __getattr__ may well answer; the built object is checked too
    try:
        return callable(getattr(target, name))
    except Exception:
        return False


def describe(kind: str, target: object) -> str | None:
    """``problems`` as one clause (``"missing report_actions(), push_changes()"``), or None."""
    found = problems(kind, target)
    return "; ".join(found) if found else None
