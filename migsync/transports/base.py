"""The transport contract: what a client asks of the way to its server.

A transport fetches the client's pending migrations (with the admin's
requests to it, see :mod:`migsync.client.actions`) and carries its status
reports, its answers to those requests and its entity changes back. It
never touches a database and never decides what is trusted: the client
verifies everything a transport hands over (see :mod:`migsync.protocol.verify`).
A transport is built by its plugin's factory::

    factory(url, *, client_id: str, token: str | None, timeout: float, retries: int) -> Transport

and used as an async context manager. Its failures are
:class:`~migsync.core.errors.ServerUnavailable` (down, timed out, 5xx:
the client keeps working offline and tries again later),
:class:`~migsync.core.errors.ServerRefused` (a bad token or request:
trying again will not help) and :class:`~migsync.core.errors.MalformedAnswer`.
:mod:`migsync.testing.transport_suite` checks a transport against this contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from migsync.protocol.wire import (
    ActionResult,
    ActionsAck,
    ChangesAck,
    EntityChange,
    Offer,
    ReportAck,
    StatusReport,
)


@runtime_checkable
class Transport(Protocol):
    """Every member is required; a transport that lacks one is refused when it loads.

    Optional, read with a default: ``client_id`` (the client it speaks for: the admin's requests
    must be signed for it, :func:`migsync.protocol.signing.verify_request`); ``held_etag`` (an
    attribute the syncer sets to the pending ETag the client holds before it reports, and reads
    back after: a transport that learns the client's new ETag from the report's answer puts it
    there, so that the next fetch is "unchanged"; see :data:`migsync.protocol.wire.HELD_ETAG_HEADER`).
    """

    #: where it goes, for messages (never a token)
    where: str

    async def fetch(self, etag: str | None = None) -> Offer:
        """The client's pending migrations; ``Offer(None, etag)`` if unchanged since ``etag``."""

    async def report(self, reports: Sequence[StatusReport]) -> ReportAck:
        """Deliver status reports. Sending the same report again must be harmless."""

    async def report_actions(self, results: Sequence[ActionResult]) -> ActionsAck:
        """Deliver the client's answers to the admin's requests. Sending one again must be harmless.
        Only called with answers to requests this transport's offers carried."""

    async def push_changes(self, changes: Sequence[EntityChange]) -> ChangesAck:
        """Deliver a batch of entity changes, in order. Sending a change again must be harmless
        (the server answers ``duplicate``)."""

    async def aclose(self) -> None:
        """Release what the transport holds (connections, files)."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class BaseTransport:
    """The context-manager part of :class:`Transport`; subclasses add fetch and report."""

    where: str = ""

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
