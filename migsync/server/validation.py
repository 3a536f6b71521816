"""Checking status reports a client sent, whatever carried them (the HTTP API, a drop folder's report file).

Pure: no Starlette, no I/O. A refusal is :class:`InvalidReports`, whose
message says what is wrong and where; the API answers it with a 422.
"""

from __future__ import annotations

import json
import re
from typing import Any

from migsync.core.wire import StatusReport

#: The most status reports one request may carry.
MAX_REPORTS = 1000
MAX_ERROR = 64 * 1024
_MAX_BIGINT = 2**63 - 1
_MAX_INT = 2**31 - 1
_CHECKSUM = re.compile(r"[0-9a-f]{64}")
_FIELDS = ("version", "applied", "error", "attempts", "checksum")


class InvalidReports(ValueError):
    """Status reports of the wrong shape; the message says what is wrong."""


def status_reports(body: Any, *, max_reports: int | None = MAX_REPORTS) -> list[StatusReport]:
    """``{"reports": [{version, applied, error, attempts, checksum}, ...]}`` as records.

    ``max_reports=None`` lifts the cap on their number (a report file's size cap bounds it instead).
    """
    if not isinstance(body, dict) or set(body) != {"reports"}:
        raise InvalidReports('the body must be an object with one key, "reports": {"reports": [...]}')
    items = body["reports"]
    if not isinstance(items, list):
        raise InvalidReports(f'"reports" must be a list, not {_kind(items)}')
    if max_reports is not None and len(items) > max_reports:
        raise InvalidReports(f'"reports" holds {len(items)} reports; at most {max_reports} per request')
    reports: list[StatusReport] = []
    seen: dict[int, int] = {}
    for index, item in enumerate(items):
        report = _report(f"reports[{index}]", item)
        if report.version in seen:
            raise InvalidReports(
                f"reports[{index}]: version {report.version} is reported twice "
                f"(see reports[{seen[report.version]}])"
            )
        seen[report.version] = index
        reports.append(report)
    return reports


def _report(where: str, item: Any) -> StatusReport:
    if not isinstance(item, dict):
        raise InvalidReports(f"{where} must be an object, not {_kind(item)}")
    missing = [f for f in _FIELDS if f not in item]
    if missing:
        raise InvalidReports(f"{where}: missing {', '.join(repr(f) for f in missing)}")
    unknown = sorted(str(k) for k in item if k not in _FIELDS)
    if unknown:
        raise InvalidReports(f"{where}: unknown field {', '.join(repr(f) for f in unknown)}")
    version, applied, error, attempts, checksum = (item[f] for f in _FIELDS)
    if not _is_int(version) or not 0 <= version <= _MAX_BIGINT:
        raise InvalidReports(f"{where}.version must be a non-negative integer, not {_show(version)}")
    if not isinstance(applied, bool):
        raise InvalidReports(f"{where}.applied must be true or false, not {_kind(applied)}")
    if error is not None and not isinstance(error, str):
        raise InvalidReports(f"{where}.error must be a string or null, not {_kind(error)}")
    if error is not None and len(error) > MAX_ERROR:
        raise InvalidReports(
            f"{where}.error is {len(error)} characters long; at most {MAX_ERROR} are accepted"
        )
    if not _is_int(attempts) or not 0 <= attempts <= _MAX_INT:
        raise InvalidReports(f"{where}.attempts must be a non-negative integer, not {_show(attempts)}")
    if not isinstance(checksum, str) or not _CHECKSUM.fullmatch(checksum):
        raise InvalidReports(
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
