"""A conformance suite for transports, built-in and third-party.

Subclass :class:`TransportSuite` in a test module and provide a ``harness``
fixture: a :class:`TransportHarness` around a fresh server (or drop folder)
that your transport talks to. Every test of the suite then runs against it::

    import pytest
    from migsync.testing.transport_suite import TransportSuite

    class TestMyTransport(TransportSuite):
        @pytest.fixture
        async def harness(self, tmp_path):
            async with MyHarness.start(tmp_path) as harness:
                yield harness

The harness is the suite's only view of the other side: it publishes, builds
transports for registered clients, reads back what the server recorded, and
makes the server unreachable. Each test gets a fresh harness with nothing
published and no client registered.

The rules the suite holds a transport to, beyond :mod:`migsync.transports.base`:

* ``fetch()`` returns every pending migration in version order, its content,
  checksum (the sha256 of the content) and signature exactly as published,
  and the server's signed manifest (:mod:`migsync.protocol.manifest`) as it was
  signed: every published version, a serial that grows with each change.
* The ETag rule: ``fetch(etag)`` with the ETag of the last answer returns
  ``Offer(None, ...)`` while nothing changed for this client. A transport
  that has no ETags returns ``etag=None`` and then the full list each time;
  either way ``fetch()`` without an ETag, or with one it never gave out,
  returns the full list. After a publish or a report that changes the list,
  the old ETag gets the new list.
* A migration reported ``applied=True`` with the published checksum is no
  longer offered; failed ones and ones applied with another checksum are.
  Another checksum comes back as :class:`~migsync.protocol.wire.Drift`.
* Reports are idempotent: the same report again is acknowledged as
  ``unchanged`` and changes nothing on the server.
* A batch naming an unpublished version, or one version twice, is refused
  with :class:`ServerRefused` and records nothing.
* An unreachable server is :class:`ServerUnavailable` (never another error)
  within :attr:`TransportSuite.down_within` seconds; bad credentials are
  :class:`ServerRefused`.
* The admin's requests (when the harness is an :class:`ActionsHarness`; the
  tests skip otherwise): a request reaches its client only, with the next
  fetch (an old ETag gets the new offer), and is offered until the client
  answers it; answers are acknowledged as recorded, the same answer again
  changes nothing, and the server keeps the latest.
* Entity changes: ``push_changes`` takes a batch in order (accepted and
  duplicate together are all of it), a batch sent again is harmless, and
  (when the harness is a :class:`ChangesHarness`) the server stores each
  change once, in order, and refuses one written at a schema version it
  never published, taking the changes before it.
* ``aclose()`` releases the transport, and the class keeps every member of
  the protocol (:func:`migsync.core.contracts.problems`).

The tests are ``async def``: the suite needs pytest-asyncio with
``asyncio_mode = "auto"``. The harness fixture may be async; the suite
has no async fixtures of its own.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import pytest

from migsync.core import contracts
from migsync.core.errors import ServerRefused, ServerUnavailable
from migsync.core.migration import Migration
from migsync.core.version import Version
from migsync.protocol.manifest import verify_manifest
from migsync.protocol.signing import TrustedKey, verify
from migsync.protocol.wire import (
    ActionResult,
    ActionsAck,
    ChangesAck,
    Drift,
    EntityChange,
    Offer,
    ReportAck,
    StatusReport,
)
from migsync.testing.backend_suite import migration
from migsync.transports.base import Transport


class TransportHarness(Protocol):
    """One fresh server (or drop folder) and the means to drive it from the test's side."""

    #: the public keys that verify what :meth:`publish` signs
    trusted: Sequence[TrustedKey]

    async def publish(self, migrations: Sequence[Migration]) -> None:
        """Publish (sign with the harness's key and make available to every client) ``migrations``.

        Publishing a version again with the same content changes nothing.
        """

    async def transport(self, client: str) -> Transport:
        """A new transport for client ``client``, registered with the server on first use.

        The test enters it (``async with``) and so closes it.
        """

    async def reports(self, client: str) -> dict[int, StatusReport]:
        """What the server recorded for ``client``, by version, read on the server's side
        (its store or folder), never through a transport. Called only while the server is up."""

    async def take_down(self) -> None:
        """Make the server unreachable for every transport, old and new, until :meth:`bring_up`."""

    async def bring_up(self) -> None:
        """Make the server reachable again, with everything it held before."""

    async def refusing_transport(self) -> Transport:
        """A transport with credentials the server does not accept (an unknown client or token)."""


@runtime_checkable
class ActionsHarness(TransportHarness, Protocol):
    """A harness whose server takes the admin's requests to clients (re-apply, revert)."""

    async def request(self, client: str, action: str, version: int, requested_by: str) -> int:
        """Ask ``client`` (registered on first use) to ``action`` ``version``, as an admin does
        from the panel; the request's id. ``version`` is published."""

    async def answers(self, client: str) -> dict[int, tuple[str, str | None]]:
        """The server's record of ``client``'s answers (request id -> state, detail), for the
        requests it answered, read on the server's side. Called only while the server is up."""


@runtime_checkable
class ChangesHarness(TransportHarness, Protocol):
    """A harness that can read back the entity changes its server stored (a drop folder cannot:
    its changes are stored by ``import-reports`` later)."""

    async def changes(self, client: str) -> list[str]:
        """The ids of the changes the server stored for ``client``, in the order it took them,
        read on the server's side."""


def change(change_id: str, n: int, *, schema: Migration | None = None) -> EntityChange:
    """An entity change to table ``todo``, written at the version of ``schema`` (default: V1)."""
    return EntityChange(
        change_id, "todo", str(n), "insert", {"id": n, "title": f"item {n}"},
        (schema or V1).version, 1_700_000_000.0 + n,
    )  # fmt: skip


def applied(m: Migration, *, checksum: str | None = None, attempts: int = 1) -> StatusReport:
    """``m`` reported applied (with its own checksum unless another is given)."""
    return StatusReport(m.version, True, None, attempts, checksum or m.checksum)


def failed(m: Migration, error: str = "boom", *, attempts: int = 1) -> StatusReport:
    return StatusReport(m.version, False, error, attempts, m.checksum)


def versions(offer: Offer) -> list[Version]:
    assert offer.migrations is not None, "expected a list of migrations, got 'unchanged'"
    return [m.version for m in offer.migrations]


def vs(*numbers: int) -> tuple[Version, ...]:
    """Versions, written as numbers: ``vs(1, 2)``."""
    return tuple(Version.parse(n) for n in numbers)


V1 = migration(1, "0001_one", "CREATE TABLE t1 (x INTEGER)", "DROP TABLE t1")
V2 = migration(2, "0002_two", "CREATE TABLE t2 (x INTEGER);\nINSERT INTO t2 VALUES ('a''b')", "DROP TABLE t2")
V3 = migration(3, "0003_three", "CREATE TABLE t3 (note TEXT DEFAULT 'größe ✓')", "DROP TABLE t3")
V4 = migration(4, "0004_four", "CREATE TABLE t4 (x INTEGER)", "DROP TABLE t4")
#: version 2 with other content: what a client that applied something else reports
V2_OTHER = migration(2, "0002_two", "CREATE TABLE t2 (x INTEGER, y INTEGER)", "DROP TABLE t2")
#: a version that is never published
UNPUBLISHED = migration(99, "0099_never", "SELECT 1")


class TransportSuite:
    """The contract of :class:`migsync.transports.base.Transport`, as tests.

    Subclasses provide the ``harness`` fixture; they may lower or raise
    :attr:`down_within` for a transport whose harness waits longer.
    """

    #: the most seconds a fetch or report may take to give up on an unreachable server
    down_within: float = 5.0

    @pytest.fixture
    def harness(self) -> TransportHarness:
        raise NotImplementedError("a TransportSuite subclass must define the harness fixture")

    # -- declarations ----------------------------------------------------------------------

    async def test_is_a_transport_and_an_async_context_manager(self, harness: TransportHarness) -> None:
        transport = await harness.transport("a")
        assert isinstance(transport, Transport)
        # Every member of the protocol, async where it must be: the check migsync makes on load.
        assert contracts.problems("transport", transport) == []
        assert isinstance(transport.where, str) and transport.where
        async with transport as entered:
            assert entered is transport
            assert isinstance(await entered.fetch(), Offer)

    async def test_aclose_releases_it_once_used(self, harness: TransportHarness) -> None:
        await harness.publish([V1])
        transport = await harness.transport("a")
        assert versions(await transport.fetch()) == [1]
        await transport.aclose()
        async with await harness.transport("a") as again:  # the server is none the worse
            assert versions(await again.fetch()) == [1]

    # -- fetch -----------------------------------------------------------------------------

    async def test_fetch_returns_every_published_migration_in_order_intact(
        self, harness: TransportHarness
    ) -> None:
        async with await harness.transport("a") as transport:
            assert (await transport.fetch()).migrations == ()
            await harness.publish([V3, V1])
            await harness.publish([V2])
            offer = await transport.fetch()
        assert offer.migrations is not None
        assert versions(offer) == [1, 2, 3]
        for item, expected in zip(offer.migrations, (V1, V2, V3), strict=True):
            assert item.name == expected.name
            assert item.content == expected.canonical_content()
            assert item.checksum == expected.checksum
            assert hashlib.sha256(item.content.encode()).hexdigest() == item.checksum
            received = Migration.from_json(json.loads(item.content))
            assert received == expected
            signer = verify(received, item.signature, harness.trusted)
            assert item.signed_by in (None, signer.fingerprint)

    async def test_a_full_answer_carries_the_signed_manifest_of_what_is_published(
        self, harness: TransportHarness
    ) -> None:
        await harness.publish([V1, V2])
        async with await harness.transport("a") as transport:
            first = verify_manifest((await transport.fetch()).manifest, harness.trusted, "the harness")
            assert [(m.version, m.checksum) for m in first.migrations] == [
                (m.version, m.checksum) for m in (V1, V2)
            ]
            await harness.publish([V3])
            second = verify_manifest((await transport.fetch()).manifest, harness.trusted, "the harness")
        assert [m.version for m in second.migrations] == [V1.version, V2.version, V3.version]
        assert second.serial > first.serial, "a publish that changes the list moves the serial on"

    async def test_the_etag_rule(self, harness: TransportHarness) -> None:
        await harness.publish([V1, V2])
        async with await harness.transport("a") as transport:
            first = await transport.fetch()
            assert versions(first) == [1, 2]
            again = await transport.fetch(first.etag)
            if first.etag is None:  # no ETags: the full list every time
                assert again == first
            else:
                assert again.migrations is None and again.unchanged
                assert again.etag == first.etag
            # Without an ETag, or with one this transport never gave out: the full list.
            assert await transport.fetch() == first
            assert (await transport.fetch('"not-an-etag-of-yours"')).migrations == first.migrations

    async def test_a_publish_changes_the_answer_to_the_old_etag(self, harness: TransportHarness) -> None:
        await harness.publish([V1])
        async with await harness.transport("a") as transport:
            first = await transport.fetch()
            await harness.publish([V4])
            after = await transport.fetch(first.etag)
            assert versions(after) == [1, 4]
            assert after.migrations is not None and after.migrations[1].checksum == V4.checksum
            if after.etag is not None:
                assert after.etag != first.etag
                assert (await transport.fetch(after.etag)).unchanged

    # -- report ----------------------------------------------------------------------------

    async def test_applied_are_no_longer_offered_failed_still_are(self, harness: TransportHarness) -> None:
        await harness.publish([V1, V2, V3])
        reports = [applied(V1), failed(V2, "no such table: t0", attempts=2)]
        async with await harness.transport("a") as transport:
            first = await transport.fetch()
            ack = await transport.report(reports)
            assert ack == ReportAck(recorded=vs(1, 2), unchanged=vs(), drift=())
            after = await transport.fetch(first.etag)
            assert versions(after) == [2, 3]
        assert await harness.reports("a") == {1: reports[0], 2: reports[1]}

    async def test_another_checksum_is_drift_and_stays_offered(self, harness: TransportHarness) -> None:
        await harness.publish([V1, V2])
        report = applied(V2, checksum=V2_OTHER.checksum)
        async with await harness.transport("a") as transport:
            ack = await transport.report([applied(V1), report])
            assert ack.recorded == vs(1, 2)
            assert ack.drift == (Drift(2, V2.checksum, V2_OTHER.checksum),)
            offer = await transport.fetch()
            assert versions(offer) == [2]
            assert offer.migrations is not None and offer.migrations[0].checksum == V2.checksum
        assert (await harness.reports("a"))[2] == report

    async def test_a_report_sent_twice_is_recorded_once(self, harness: TransportHarness) -> None:
        await harness.publish([V1, V2])
        reports = [applied(V1), failed(V2)]
        async with await harness.transport("a") as transport:
            assert (await transport.report(reports)).recorded == vs(1, 2)
            recorded = await harness.reports("a")
            again = await transport.report(reports)
            assert again == ReportAck(recorded=vs(), unchanged=vs(1, 2), drift=())
            assert await harness.reports("a") == recorded
            # A report that does say something new is recorded again.
            retried = applied(V2, attempts=2)
            assert (await transport.report([retried])) == ReportAck(recorded=vs(2))
            assert versions(await transport.fetch()) == []
        assert await harness.reports("a") == {1: reports[0], 2: retried}

    async def test_reporting_nothing_is_harmless(self, harness: TransportHarness) -> None:
        await harness.publish([V1])
        async with await harness.transport("a") as transport:
            assert await transport.report([]) == ReportAck()
            assert versions(await transport.fetch()) == [1]
        assert await harness.reports("a") == {}

    async def test_two_clients_see_their_own_status_only(self, harness: TransportHarness) -> None:
        await harness.publish([V1, V2])
        async with await harness.transport("a") as a, await harness.transport("b") as b:
            etag_b = (await b.fetch()).etag
            await a.report([applied(V1), applied(V2)])
            assert versions(await a.fetch()) == []
            b_after = await b.fetch(etag_b)
            assert b_after.unchanged or versions(b_after) == [1, 2]
            assert versions(await b.fetch()) == [1, 2]
            assert await harness.reports("b") == {}
            await b.report([failed(V1, "disk full")])
            assert versions(await b.fetch()) == [1, 2]
            assert versions(await a.fetch()) == []
        assert await harness.reports("a") == {1: applied(V1), 2: applied(V2)}
        assert await harness.reports("b") == {1: failed(V1, "disk full")}

    # -- refusals --------------------------------------------------------------------------

    async def test_an_unpublished_version_is_refused_and_records_nothing(
        self, harness: TransportHarness
    ) -> None:
        await harness.publish([V1])
        async with await harness.transport("a") as transport:
            with pytest.raises(ServerRefused):
                await transport.report([applied(V1), applied(UNPUBLISHED)])
            assert versions(await transport.fetch()) == [1]
        assert await harness.reports("a") == {}

    async def test_a_version_twice_in_one_batch_is_refused_and_records_nothing(
        self, harness: TransportHarness
    ) -> None:
        await harness.publish([V1])
        async with await harness.transport("a") as transport:
            with pytest.raises(ServerRefused):
                await transport.report([failed(V1), applied(V1)])
        assert await harness.reports("a") == {}

    async def test_bad_credentials_are_refused(self, harness: TransportHarness) -> None:
        await harness.publish([V1])
        async with await harness.refusing_transport() as transport:
            with pytest.raises(ServerRefused):
                await transport.fetch()
            with pytest.raises(ServerRefused):
                await transport.report([applied(V1)])

    # -- the admin's requests ------------------------------------------------------------------

    async def test_a_request_reaches_its_client_and_is_offered_until_answered(
        self, harness: TransportHarness
    ) -> None:
        if not isinstance(harness, ActionsHarness):
            pytest.skip("the harness cannot make requests (not an ActionsHarness)")
        await harness.publish([V1, V2])
        async with await harness.transport("a") as a, await harness.transport("b") as b:
            first, first_b = await a.fetch(), await b.fetch()
            assert first.actions == () and first_b.actions == ()
            action_id = await harness.request("a", "revert", 2, "alice")
            offer = await a.fetch(first.etag)
            assert versions(offer) == [1, 2]
            [request] = offer.actions
            assert (request.id, request.action, request.version) == (action_id, "revert", Version.parse(2))
            assert request.requested_by == "alice"
            if offer.etag is not None:
                assert (await a.fetch(offer.etag)).unchanged
            assert (await a.fetch()).actions == offer.actions  # offered again until answered
            after_b = await b.fetch(first_b.etag)
            assert after_b.unchanged or after_b.actions == ()
            assert (await b.fetch()).actions == ()

            answer = ActionResult(action_id, "queued", "reverting 0002_two")
            assert await a.report_actions([answer]) == ActionsAck(recorded=(action_id,))
            answered = await a.fetch(offer.etag)
            assert not answered.unchanged and answered.actions == ()
            assert versions(answered) == [1, 2]
        assert await harness.answers("a") == {action_id: ("queued", "reverting 0002_two")}
        assert await harness.answers("b") == {}

    async def test_answers_are_idempotent_and_the_latest_one_counts(self, harness: TransportHarness) -> None:
        if not isinstance(harness, ActionsHarness):
            pytest.skip("the harness cannot make requests (not an ActionsHarness)")
        await harness.publish([V1])
        async with await harness.transport("a") as transport:
            action_id = await harness.request("a", "reapply", 1, "bob")
            assert [r.id for r in (await transport.fetch()).actions] == [action_id]
            queued = ActionResult(action_id, "queued", None)
            done = ActionResult(action_id, "done", "0001_one applied")
            assert (await transport.report_actions([queued])).recorded == (action_id,)
            assert (await transport.report_actions([queued])).recorded == (action_id,)
            assert await harness.answers("a") == {action_id: ("queued", None)}
            assert (await transport.report_actions([done])).recorded == (action_id,)
            assert await transport.report_actions([]) == ActionsAck()
            assert (await transport.fetch()).actions == ()
        assert await harness.answers("a") == {action_id: ("done", "0001_one applied")}

    # -- entity changes ------------------------------------------------------------------------

    async def test_push_changes_takes_a_batch_in_order_and_again_harmlessly(
        self, harness: TransportHarness
    ) -> None:
        await harness.publish([V1])
        batch = [change("c1", 1), change("c2", 2), change("c3", 3)]
        async with await harness.transport("a") as transport:
            assert await transport.push_changes([]) == ChangesAck()
            first = await transport.push_changes(batch)
            assert isinstance(first, ChangesAck) and first.refused is None
            assert first.accepted + first.duplicate == ("c1", "c2", "c3")  # all of it, in order
            again = await transport.push_changes(batch[1:])
            assert again.refused is None
            assert sorted(again.accepted + again.duplicate) == ["c2", "c3"]
        if isinstance(harness, ChangesHarness):
            assert await harness.changes("a") == ["c1", "c2", "c3"]  # each once, in order
            assert await harness.changes("b") == []

    async def test_a_change_of_an_unpublished_schema_version_is_refused(
        self, harness: TransportHarness
    ) -> None:
        if not isinstance(harness, ChangesHarness):
            pytest.skip("the harness cannot read the changes back (not a ChangesHarness)")
        await harness.publish([V1])
        async with await harness.transport("a") as transport:
            ack = await transport.push_changes(
                [change("c1", 1), change("c2", 2, schema=UNPUBLISHED), change("c3", 3)]
            )
        assert ack.accepted == ("c1",)
        assert ack.refused is not None and ack.refused.id == "c2" and ack.refused.reason
        assert await harness.changes("a") == ["c1"]

    # -- an unreachable server ---------------------------------------------------------------

    async def test_an_unreachable_server_is_server_unavailable_in_bounded_time(
        self, harness: TransportHarness
    ) -> None:
        await harness.publish([V1])
        async with await harness.transport("a") as transport:
            first = await transport.fetch()  # a connection the transport may keep
            await harness.take_down()
            try:
                for attempt in (lambda: transport.fetch(), lambda: transport.report([applied(V1)])):
                    began = time.monotonic()
                    with pytest.raises(ServerUnavailable):
                        await attempt()
                    took = time.monotonic() - began
                    assert took < self.down_within, f"gave up after {took:.1f}s"
                async with await harness.transport("b") as fresh:
                    with pytest.raises(ServerUnavailable):
                        await fresh.fetch()
            finally:
                await harness.bring_up()
            # Nothing was lost or half-done: the same transport works again.
            assert (await transport.fetch(first.etag)).migrations in (None, first.migrations)
            assert (await transport.report([applied(V1)])).recorded == vs(1)
        assert await harness.reports("a") == {1: applied(V1)}


__all__ = [
    "UNPUBLISHED",
    "V1",
    "V2",
    "V2_OTHER",
    "V3",
    "V4",
    "ActionsHarness",
    "ChangesHarness",
    "TransportHarness",
    "TransportSuite",
    "applied",
    "change",
    "failed",
    "versions",
]
