"""What the panel's forms carry: an urlencoded body, read with limits, and the fields of a
request to clients, checked. Whatever is wrong is an :class:`HTTPException` (an HTML error page).

A request form (a client's page, the migrations page) posts ``csrf`` (checked by the app
before anything here), ``action`` (one of :data:`~migsync.protocol.wire.ACTIONS`), the version
(a field on a client's page, the path on the migrations page) and, for a revert, ``confirm``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

import attrs
from starlette.exceptions import HTTPException
from starlette.requests import Request

from migsync.core.errors import ConfigError
from migsync.core.version import Version
from migsync.protocol.wire import ACTIONS, read_version
from migsync.server.client_list import SORTS, ClientFilter
from migsync.server.rollouts import parse_label

__all__ = [
    "MAX_FORM",
    "PAGE_SIZES",
    "ClientsQuery",
    "action_fields",
    "check_typed_name",
    "clients_query",
    "flag",
    "read_form",
    "requested_count",
]

#: the page sizes the clients page offers (the first is the default)
PAGE_SIZES = (50, 25, 100, 200)
#: what the app-version filter is set to for clients that never said theirs
NO_APP_VERSION = "-"

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


def action_fields(
    form: dict[str, str], version_text: str | None, *, confirm_box: bool = True
) -> tuple[str, Version]:
    """The action and version a request form asks for; a 400 page if they make no sense.

    A revert must carry its ``confirm`` box (``confirm_box``; a request for every client is
    confirmed by typing the migration's name instead: :func:`check_typed_name`): the browser
    insists on it (``required``), and so does the server, for a form sent some other way.
    """
    action = form.get("action", "")
    if action not in ACTIONS:
        raise HTTPException(400, f"Unknown action {action!r}: use one of {', '.join(ACTIONS)}.")
    text = (version_text or "").strip()
    version = read_version(text) if len(text) <= _MAX_VERSION_TEXT else None
    if version is None:
        raise HTTPException(400, f"{text[:_MAX_VERSION_TEXT]!r} is not a migration version.")
    if confirm_box and action == "revert" and not flag(form.get("confirm")):
        raise HTTPException(
            400,
            "A revert must be confirmed: tick the box that says what it reverts, and send the form again.",
        )
    return action, version


def requested_count(request: Request) -> int | None:
    """How many requests the redirect after a request form says were recorded (None: no word)."""
    value = request.query_params.get("requested", "")
    return int(value) if value.isdigit() and value.isascii() and len(value) <= 6 else None


@attrs.frozen
class ClientsQuery:
    """What the clients page's query string asks for (see :func:`clients_query`)."""

    name: str = ""
    failing: bool = False
    stale: bool = False
    held: bool = False
    app: str = ""
    label: str = ""
    sort: str = "name"
    size: int = PAGE_SIZES[0]
    after: str | None = None

    def which(self, now: float) -> ClientFilter:
        from migsync.server.panel.views import STALE_AFTER

        return ClientFilter(
            name=self.name or None,
            failing=self.failing,
            stale_before=now - STALE_AFTER if self.stale else None,
            held=self.held,
            app_version=None if not self.app else ("" if self.app == NO_APP_VERSION else self.app),
            label=parse_label(self.label) if self.label else None,
        )

    @property
    def filtered(self) -> bool:
        return bool(self.name or self.failing or self.stale or self.held or self.app or self.label)

    def url(self, root: str, *, after: str | None) -> str:
        """This query's page URL, at ``after`` (None: the first page)."""
        fields: list[tuple[str, str]] = []
        for key, value in (("q", self.name), ("app", self.app), ("label", self.label)):
            if value:
                fields.append((key, value))
        for key, on in (("failing", self.failing), ("stale", self.stale), ("held", self.held)):
            if on:
                fields.append((key, "1"))
        if self.sort != "name":
            fields.append(("sort", self.sort))
        if self.size != PAGE_SIZES[0]:
            fields.append(("size", str(self.size)))
        if after:
            fields.append(("after", after))
        return f"{root}/clients" + (f"?{urlencode(fields)}" if fields else "")


def clients_query(request: Request) -> ClientsQuery:
    """The clients page's query string, checked: a 400 page naming what is wrong."""
    params = request.query_params
    name = params.get("q", "").strip()
    app = params.get("app", "").strip()
    label = params.get("label", "").strip()
    sort = params.get("sort", "name") or "name"
    size_text = params.get("size", "") or str(PAGE_SIZES[0])
    after = params.get("after") or None
    if len(name) > 200 or len(app) > 200 or len(label) > 300 or (after is not None and len(after) > 2000):
        raise HTTPException(400, "A search or filter is too long.")
    if sort not in SORTS:
        raise HTTPException(400, f"Unknown sort {sort[:20]!r}: use one of {', '.join(SORTS)}.")
    if not (size_text.isascii() and size_text.isdigit() and int(size_text) in PAGE_SIZES):
        raise HTTPException(
            400, f"Page size {size_text[:10]!r}: use one of {', '.join(map(str, sorted(PAGE_SIZES)))}."
        )
    if label:
        try:
            parse_label(label)
        except ConfigError as exc:
            raise HTTPException(400, f"Label filter: {exc}.") from None
    return ClientsQuery(
        name=name,
        failing=flag(params.get("failing")),
        stale=flag(params.get("stale")),
        held=flag(params.get("held")),
        app=app,
        label=label,
        sort=sort,
        size=int(size_text),
        after=after,
    )


def check_typed_name(form: dict[str, str], action: str, name: str, clients: int) -> None:
    """A request for every client must carry the migration's name, typed (``confirm_name``):
    a 400 page saying what was typed and what is wanted otherwise (nothing is requested)."""
    typed = form.get("confirm_name", "").strip()
    if typed != name:
        what = "nothing" if not typed else repr(typed[:80])
        raise HTTPException(
            400,
            f"Nothing was requested: to {action} migration {name!r} on every client "
            f"({clients} client{'s' if clients != 1 else ''}), type its name exactly; you typed {what}.",
        )
