"""Reading and checking request bodies: every refusal is an :class:`ApiError` that says what is wrong.

Nothing a client sends can make the API answer 500: the body is read with a
size limit (413), must be JSON (415, 400) and have the documented shape (422).
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request

from migsync.server.records import StatusReport

#: The largest request body the API reads (1 MiB): a batch of 1000 reports with long errors fits.
MAX_BODY = 1024 * 1024
#: The most status reports one request may carry.
MAX_REPORTS = 1000
_MAX_ERROR = 64 * 1024
_MAX_BIGINT = 2**63 - 1
_MAX_INT = 2**31 - 1
_CHECKSUM = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("version", "applied", "error", "attempts", "checksum")


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


async def read_json(request: Request, limit: int = MAX_BODY) -> Any:
    """The request's JSON body, read no further than ``limit`` bytes."""
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise ApiError(415, f"the body must be JSON (Content-Type: application/json), not {kind!r}")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise ApiError(413, f"the body is {int(declared)} bytes; at most {limit} are accepted")
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


def status_reports(body: Any) -> list[StatusReport]:
    """``{"reports": [{version, applied, error, attempts, checksum}, ...]}`` as records."""
    if not isinstance(body, dict) or set(body) != {"reports"}:
        raise _shape('the body must be an object with one key, "reports": {"reports": [...]}')
    items = body["reports"]
    if not isinstance(items, list):
        raise _shape(f'"reports" must be a list, not {_kind(items)}')
    if len(items) > MAX_REPORTS:
        raise _shape(f'"reports" holds {len(items)} reports; at most {MAX_REPORTS} per request')
    reports: list[StatusReport] = []
    seen: dict[int, int] = {}
    for index, item in enumerate(items):
        report = _report(f"reports[{index}]", item)
        if report.version in seen:
            raise _shape(
                f"reports[{index}]: version {report.version} is reported twice "
                f"(see reports[{seen[report.version]}])"
            )
        seen[report.version] = index
        reports.append(report)
    return reports


def _report(where: str, item: Any) -> StatusReport:
    if not isinstance(item, dict):
        raise _shape(f"{where} must be an object, not {_kind(item)}")
    missing = [f for f in _FIELDS if f not in item]
    if missing:
        raise _shape(f"{where}: missing {', '.join(repr(f) for f in missing)}")
    unknown = sorted(str(k) for k in item if k not in _FIELDS)
    if unknown:
        raise _shape(f"{where}: unknown field {', '.join(repr(f) for f in unknown)}")
    version, applied, error, attempts, checksum = (item[f] for f in _FIELDS)
    if not _is_int(version) or not 0 <= version <= _MAX_BIGINT:
        raise _shape(f"{where}.version must be a non-negative integer, not {_show(version)}")
    if not isinstance(applied, bool):
        raise _shape(f"{where}.applied must be true or false, not {_kind(applied)}")
    if error is not None and not isinstance(error, str):
        raise _shape(f"{where}.error must be a string or null, not {_kind(error)}")
    if error is not None and len(error) > _MAX_ERROR:
        raise _shape(f"{where}.error is {len(error)} characters long; at most {_MAX_ERROR} are accepted")
    if not _is_int(attempts) or not 0 <= attempts <= _MAX_INT:
        raise _shape(f"{where}.attempts must be a non-negative integer, not {_show(attempts)}")
    if not isinstance(checksum, str) or not _CHECKSUM.fullmatch(checksum):
        raise _shape(
            f"{where}.checksum must be a sha256 in lower-case hex (64 characters), not {_show(checksum)}"
        )
    return StatusReport(version, applied, error, attempts, checksum)


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _shape(message: str) -> ApiError:
    return ApiError(422, message)
