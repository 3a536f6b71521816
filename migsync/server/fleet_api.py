"""The admin API's fleet endpoints: ``GET /api/clients`` (a page of the fleet) and
``POST /api/clients`` (clients registered in bulk). The app's handlers call these, so that
``app.py`` keeps to routing, authentication and the poll path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from migsync.core.errors import ConfigError
from migsync.core.version import Version, VersionError
from migsync.protocol.json_check import SchemaViolation, validator
from migsync.protocol.wire_schema import SCHEMAS
from migsync.server.bodies import ApiError
from migsync.server.fleet import DEFAULT_LIMIT, FleetFilter
from migsync.server.openapi import FLEET_QUERY, QueryInt, QueryText
from migsync.server.registration import from_body
from migsync.server.store import Store

_PARAMS = {q.name: q for q in FLEET_QUERY}
_NEW_CLIENTS = validator(SCHEMAS["NewClients"], SCHEMAS)


async def fleet_page(store: Store, query: Mapping[str, str]) -> dict[str, Any]:
    """``GET /api/clients``'s answer to ``query`` (its names checked already); 422 for a bad value."""
    try:
        which = FleetFilter(
            state=_text(query, "state"),
            applied=_version(query, "applied"),
            lacking=_version(query, "lacking"),
            failing=_text(query, "failing") == "1",
            stale=_int(query, "stale"),
            name=_text(query, "q"),
        )
        page = await store.fleet_page(
            which,
            limit=_int(query, "limit") or DEFAULT_LIMIT,
            cursor=_text(query, "cursor"),
            counts=_text(query, "counts") != "0",
        )
    except ConfigError as exc:
        raise ApiError(422, str(exc)) from None
    return page.to_json()


async def register(store: Store, body: Any) -> dict[str, Any]:
    """``POST /api/clients``'s answer to ``body``: every client registered, or none (422)."""
    try:
        _NEW_CLIENTS(body, "the body")
    except SchemaViolation as exc:
        raise ApiError(422, str(exc)) from None
    try:
        rows = from_body(body["clients"])
        added = await store.add_clients(
            [r.name for r in rows], [r.labels for r in rows], sources=[r.where for r in rows]
        )
    except ConfigError as exc:
        raise ApiError(422, str(exc)) from None
    return {"clients": [{"client_id": i, "name": n, "token": tok} for i, n, tok in added]}


def _text(query: Mapping[str, str], name: str) -> str | None:
    param = _PARAMS[name]
    assert isinstance(param, QueryText)
    value = query.get(name)
    if value is None:
        return None
    if param.choices and value not in param.choices:
        raise ConfigError(f"{name} must be one of {', '.join(param.choices)}, not {value[:20]!r}")
    if len(value) > param.most:
        raise ConfigError(f"{name} is {len(value)} characters long; at most {param.most} are allowed")
    return value


def _int(query: Mapping[str, str], name: str) -> int | None:
    param = _PARAMS[name]
    assert isinstance(param, QueryInt)
    text = query.get(name)
    if text is None:
        return None
    value = int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None
    if value is None or not param.minimum <= value <= param.maximum:
        raise ConfigError(
            f"{name} must be a whole number from {param.minimum} to {param.maximum}, not {text[:20]!r}"
        )
    return value


def _version(query: Mapping[str, str], name: str) -> Version | None:
    text = _text(query, name)
    if text is None:
        return None
    try:
        return Version.parse(text)
    except VersionError:
        raise ConfigError(f"{name} must be a version (like 3 or 2.1), not {text[:20]!r}") from None
