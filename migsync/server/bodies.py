"""Reading and checking request bodies: every refusal is an :class:`ApiError` that says what is wrong.

Nothing a client sends can make the API answer 500: the body is read with a
size limit (413), must be JSON (415, 400) and have the documented shape (422;
the checks of status reports are :mod:`migsync.server.validation`'s).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from migsync.protocol.wire import ActionResult
from migsync.server import validation
from migsync.server.records import StatusReport

#: The largest request body the API reads (1 MiB): a batch of 1000 reports with long errors fits.
MAX_BODY = 1024 * 1024
#: The most status reports one request may carry.
MAX_REPORTS = validation.MAX_REPORTS


class ApiError(Exception):
    """A refusal: its HTTP status and a JSON body ``{"error": message, **extra}``."""

    def __init__(
        self, status: int, message: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


async def read_json(request: Request, limit: int = MAX_BODY, *, finite: bool = False) -> Any:
    """The request's JSON body, read no further than ``limit`` bytes.

    ``finite``: a number too large for a float (``1e400``) is refused as Infinity is, rather
    than read as infinity (for the entity changes, whose data a client sends as the JSON text
    it stored: parsing it first, it used to send such a number as ``Infinity``, refused here).
    """
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise ApiError(415, f"the body must be JSON (Content-Type: application/json), not {kind!r}")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):  # isdigit alone takes "²"
            raise ApiError(400, f"Content-Length {declared[:20]!r} is not a number")
        if len(declared) > 15 or int(declared) > limit:  # int() of 5000 digits raises
            raise ApiError(413, f"the body is {declared[:20]} bytes; at most {limit} are accepted")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body is over {limit} bytes; at most {limit} are accepted")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(400, "the body is empty; expected a JSON object")
    try:
        if finite:
            return json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
        return json.loads(raw, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise ApiError(400, "malformed JSON: the body is not UTF-8") from None
    except ValueError as exc:  # NaN, Infinity
        raise ApiError(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value != 0:  # inf - inf is NaN (a float's text is never NaN)
        raise ValueError(f"{'-' if value < 0 else ''}Infinity is not a JSON number")
    return value


def status_reports(body: Any) -> list[StatusReport]:
    """``{"reports": [{version, applied, error, attempts, checksum}, ...]}`` as records (else 422)."""
    try:
        return validation.status_reports(body)
    except validation.InvalidReports as exc:
        raise ApiError(422, str(exc)) from None


def action_order(body: Any) -> validation.ActionOrder:
    """``{"action", "version", "clients", "requested_by"}``: what the admin asks (else 422)."""
    try:
        return validation.action_order(body)
    except validation.InvalidReports as exc:
        raise ApiError(422, str(exc)) from None


def action_answers(body: Any) -> list[ActionResult]:
    """``{"results": [{id, state, detail}, ...]}`` as records (else 422)."""
    try:
        return validation.action_answers(body)
    except validation.InvalidReports as exc:
        raise ApiError(422, str(exc)) from None
