"""What the panel's forms carry: an urlencoded body, read with limits, and the fields of a
request to clients, checked. Whatever is wrong is an :class:`HTTPException` (an HTML error page).

A request form (a client's page, the migrations page) posts ``csrf`` (checked by the app
before anything here), ``action`` (one of :data:`~migsync.protocol.wire.ACTIONS`), the version
(a field on a client's page, the path on the migrations page) and, for a revert, ``confirm``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.requests import Request

from migsync.core.version import Version
from migsync.protocol.wire import ACTIONS, read_version

__all__ = ["MAX_FORM", "action_fields", "flag", "read_form", "requested_count"]

#: Forms are small: a body past this is refused before it is parsed.
MAX_FORM = 8 * 1024
#: the longest version text a form may carry (a version's parts hold at most 99 digits each)
_MAX_VERSION_TEXT = 1000


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body (no multipart: the panel's forms have no files); no body: no fields."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise HTTPException(413, "The form is too large.")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if body and kind != "application/x-www-form-urlencoded":
        raise HTTPException(415, "Forms must be sent as application/x-www-form-urlencoded.")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "The form could not be read.") from None
    return dict(reversed(pairs))  # the first value of a repeated field wins


def flag(value: str | None) -> bool:
    """A checkbox or query flag: ``1``, ``true``, ``yes`` or ``on`` (a browser's default) is set."""
    return (value or "").lower() in ("1", "true", "yes", "on")


def action_fields(form: dict[str, str], version_text: str | None) -> tuple[str, Version]:
    """The action and version a request form asks for; a 400 page if they make no sense.

    A revert must carry its ``confirm`` box: the browser insists on it (``required``), and so
    does the server, for a form sent some other way.
    """
    action = form.get("action", "")
    if action not in ACTIONS:
        raise HTTPException(400, f"Unknown action {action!r}: use one of {', '.join(ACTIONS)}.")
    text = (version_text or "").strip()
    version = read_version(text) if len(text) <= _MAX_VERSION_TEXT else None
    if version is None:
        raise HTTPException(400, f"{text[:_MAX_VERSION_TEXT]!r} is not a migration version.")
    if action == "revert" and not flag(form.get("confirm")):
        raise HTTPException(
            400,
            "A revert must be confirmed: tick the box that says what it reverts, and send the form again.",
        )
    return action, version


def requested_count(request: Request) -> int | None:
    """How many requests the redirect after a request form says were recorded (None: no word)."""
    value = request.query_params.get("requested", "")
    return int(value) if value.isdigit() and value.isascii() and len(value) <= 6 else None
