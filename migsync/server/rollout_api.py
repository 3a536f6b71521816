"""The rollouts' part of the HTTP API: ``GET/POST /api/rollouts``, ``GET /api/rollouts/{rollout_id}``,
``POST /api/rollouts/operations``. :mod:`migsync.server.app` routes them (its handlers call these);
the bodies are checked against the ``RolloutOrder`` and ``RolloutOperation`` schemas of
:mod:`migsync.protocol.wire_schema`. And the client's ``Migsync-App-Version`` header.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request

from migsync.core.errors import ConfigError
from migsync.core.version import Version
from migsync.protocol.json_check import SchemaViolation, validator
from migsync.protocol.wire import APP_VERSION_HEADER, APP_VERSION_PATTERN, read_version
from migsync.protocol.wire_schema import SCHEMAS
from migsync.server import rollouts
from migsync.server.bodies import ApiError
from migsync.server.rollout_store import Rollout, RolloutStatus, who
from migsync.server.store import Store
from migsync.server.validation import storable

_APP_VERSION = re.compile(APP_VERSION_PATTERN)

_ORDER = validator(SCHEMAS["RolloutOrder"], SCHEMAS)
_OPERATION = validator(SCHEMAS["RolloutOperation"], SCHEMAS)


def app_version(request: Request) -> str | None:
    """The app version the request's header says (None: no header); 422 if it is not one."""
    value = request.headers.get(APP_VERSION_HEADER)
    if value is None:
        return None
    if not _APP_VERSION.match(value):
        raise ApiError(
            422,
            f"{APP_VERSION_HEADER} must be a version such as 2.3.1 (letters, digits and .+_-, at most 64), "
            f"not {value[:70]!r}",
        )
    return value


def _by(text: str) -> str:
    if not storable(text):
        raise ApiError(422, "requested_by must not hold NUL characters or unpaired surrogates")
    try:
        return who(text)
    except ConfigError as exc:
        raise ApiError(422, f"requested_by: {exc}") from None


def _checked(check: Any, body: Any) -> None:
    try:
        check(body, "the body")
    except SchemaViolation as exc:
        raise ApiError(422, str(exc)) from None


async def start(store: Store, body: Any) -> Rollout:
    _checked(_ORDER, body)
    versions: list[Version] = []
    for index, raw in enumerate(body["versions"]):
        version = read_version(raw)
        if version is None:
            raise ApiError(422, f"versions[{index}] must be {SCHEMAS['Version']['description']}")
        versions.append(version)
    by = _by(body["requested_by"])
    try:
        stages = rollouts.parse_stages(body["stages"])
        policy = rollouts.Policy(
            float(body.get("success_threshold", rollouts.DEFAULT_SUCCESS)),
            float(body.get("error_threshold", rollouts.DEFAULT_ERROR)),
            float(body.get("soak_seconds", rollouts.DEFAULT_SOAK)),
            body.get("on_failure", "pause"),
        )
    except rollouts.RolloutError as exc:
        raise ApiError(422, str(exc)) from None
    try:
        return await store.start_rollout(versions, stages, policy, by)
    except ConfigError as exc:
        raise ApiError(422, str(exc)) from None


def rollout_id(request: Request) -> int:
    text = request.path_params["rollout_id"]
    if not (text.isascii() and text.isdigit() and len(text) <= 10 and 1 <= int(text) <= 2**31 - 1):
        raise ApiError(422, f"rollout_id must be a whole number from 1 to {2**31 - 1}, not {text[:20]!r}")
    return int(text)


async def status(store: Store, rollout_id: int) -> RolloutStatus:
    try:
        return await store.rollout_status(rollout_id)
    except ConfigError as exc:
        raise ApiError(404, str(exc)) from None


async def operate(store: Store, body: Any) -> Rollout:
    _checked(_OPERATION, body)
    by = _by(body["requested_by"])
    try:
        return await store.rollout_operate(body["rollout_id"], body["operation"], by)
    except rollouts.RolloutError as exc:
        raise ApiError(409, str(exc)) from None
    except ConfigError as exc:
        status = 404 if str(exc).startswith("no rollout") else 409
        raise ApiError(status, str(exc)) from None
