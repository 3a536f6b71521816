"""Pushing the entity changes a client recorded (:mod:`migsync.core.changes`) to the server.

Pushing is the work of :class:`EntityChangeHandler`, run by the same
:class:`~migsync.core.processor.ChangesProcessor` as migrations, with the
same rules: strict order, retries with backoff, dead after ``max_attempts``,
events after commit. Its particulars:

* **After the schema.** Nothing is pushed while a migration change is open
  (pending, failed or dead) or a migration is dirty: the data waits for the
  schema it needs (:class:`~migsync.core.errors.NotYet`, no attempt counted).
* **In batches.** The head change carries the changes after it (up to
  ``batch_size``) in one request, sent with no transaction open; each change
  the server took, a prefix of the batch, is marked processed. While the
  server stores a batch, the next one is read (and, by a transport with
  ``encode_change_rows`` or ``encode_changes``, encoded): it is sent only if
  the queue still holds those rows when its turn comes, else read again.
  Each change's data is the JSON text the client stored: the HTTP transport
  sends it as it is, unparsed (the server parses and checks it).
* **Two in flight, in order** (``send_ahead``, on by default). To a server
  that keeps a client's batches in order (HTTP: ``orders_changes``), the
  batch read ahead is also sent at once, naming the last change of the batch before; the server stores it
  only after that batch (else answers "not yet", and it is sent again once
  that batch is answered). If the batch before is not taken whole, or the
  queue is no longer as read, it is dropped.
* **Idempotent delivery.** A change sent twice (a lost answer) is stored
  once by the server: it answers "duplicate", which counts as delivered.
* **Server down** is :class:`~migsync.core.errors.Postponed`: retried later,
  the attempt not counted. **A refusal** (a schema version the server never
  published) is :class:`~migsync.core.errors.PermanentFailure`: the change is
  dead at once with the server's reason, and blocks the ones after it until
  a person revives or discards it. Nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol, TypeVar

import attrs

from migsync.core.backend import Row
from migsync.core.clock import Clock
from migsync.core.errors import (
    ConfigError,
    MalformedAnswer,
    NotYet,
    PermanentFailure,
    Postponed,
    ServerUnavailable,
)
from migsync.core.events import Event
from migsync.core.history_sql import history_sql
from migsync.core.processor import Loaded
from migsync.core.schema import Tables
from migsync.core.sync_events import ChangeDead, ChangeFailed, ChangesPushed
from migsync.core.version import Version
from migsync.core.work import Await, Execute, Fetch, Work
from migsync.protocol.wire import ChangesAck, EntityChange

T = TypeVar("T")


class ChangePusher(Protocol):
    """The part of a transport the handler uses (:class:`migsync.transports.base.Transport` is one).

    A transport may also have ``encode_changes(changes)``, pure and safe in any thread, returning
    the changes (a sequence of them) with what it sends made ahead (HTTP: the request bodies);
    or, better, ``encode_change_rows(rows)``, the same made from the queue's rows as they are,
    each change's data the JSON text the client stored (HTTP sends it unparsed). And
    ``push_changes_after(changes, after)`` with ``orders_changes``: a push of a batch before the
    batch before it (whose last change is ``after``) is answered, which the server stores only
    once it has ``after`` (answer None: it had not, nothing stored); used only while
    ``orders_changes`` says the server honours ``after``.
    """

    @property
    def where(self) -> str: ...

    async def push_changes(self, changes: Sequence[EntityChange]) -> ChangesAck: ...


@functools.lru_cache(maxsize=256)
def _schema_version(key: str) -> Version:
    # Cached: a batch's changes share a few versions, and parsing a key per change was a tenth of
    # what a push cost the client.
    return Version.from_key(key)


def change_of(row: Row) -> EntityChange:
    data, version = row["data"], row["schema_version"]
    return EntityChange(
        row["id"],
        row["entity"],
        row["entity_id"],
        row["operation"],
        None if data is None else json.loads(data),
        None if version is None else _schema_version(version),
        float(row["timestamp"]),
    )


#: How many changes one UPDATE marks processed (well under SQLite's limit on bound parameters).
_MARK_CHUNK = 500


@attrs.define
class _Batch:
    rows: list[Row]
    #: the rows as the transport sends them, when read ahead (else made from the rows when sent)
    changes: Sequence[EntityChange] | None = None
    #: its push, when it was sent ahead (see :class:`_Ahead`)
    push: asyncio.Future[ChangesAck | None] | None = None
    done: list[str] = attrs.field(factory=list)


@attrs.frozen
class _Ahead:
    """The batch after the one being pushed, read while the server stores that one; and, to a
    server that stores a client's batches in its order, already sent (``push``: its answer,
    None if the server had not stored the batch before when it came)."""

    rows: list[Row]
    changes: Sequence[EntityChange]
    push: asyncio.Future[ChangesAck | None] | None = None


async def _started(push: Awaitable[T]) -> asyncio.Future[T]:
    future = asyncio.ensure_future(push)
    future.add_done_callback(_retrieved)
    return future


def _retrieved(future: asyncio.Future[Any]) -> None:
    # A push sent ahead and then dropped is never awaited: its error is no one's to report.
    if not future.cancelled():
        future.exception()


async def _finished(push: asyncio.Future[T]) -> T:
    return await push


async def _dropped(push: asyncio.Future[Any]) -> None:
    push.cancel()
    with contextlib.suppress(BaseException):
        await push


class EntityChangeHandler:
    """Pushes the ``entity_changes`` queue to the server through a transport, in batches."""

    changes_schema = False

    def __init__(
        self,
        tables: Tables,
        transport: ChangePusher,
        clock: Clock,
        *,
        batch_size: int = 1000,
        send_ahead: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        #: send the batch read ahead at once, to a server that keeps the order (two requests in
        #: flight). Off by default: measured on a loaded 2-core machine, a third of such batches
        #: came before the batch before and were sent again, which cost the server more than the
        #: overlap saved (see docs/performance.md)
        self.send_ahead = send_ahead
        self.queue = tables.changes
        self.transport = transport
        self.clock = clock
        self.batch_size = batch_size
        #: changes the server took since this handler was made (a batch counts each of its changes)
        self.pushed = 0
        self._sql_gate = (
            f"SELECT (SELECT COUNT(*) FROM {tables.queue} WHERE seq >= {history_sql(tables).open_from} "
            "AND processed = FALSE) AS open, "
            f"(SELECT COUNT(*) FROM {tables.status} WHERE dirty = TRUE) AS dirty"
        )
        # What a push needs of each change (a row is a dict: every column costs).
        self._sql_batch = (
            "SELECT seq, id, entity, entity_id, operation, data, schema_version, timestamp "
            f"FROM {tables.changes} WHERE processed = FALSE AND seq >= $1 "
            f"AND attempts < max_attempts ORDER BY seq LIMIT {int(batch_size)}"
        )
        self._sql_done = (
            f"UPDATE {tables.changes} SET processed = TRUE, processed_at = $1, error = NULL WHERE seq IN "
        )
        # Whether the rows after a head are still those read ahead: their number and the last seq
        # (seqs only grow, so a row gone or come back among them changes one or the other).
        self._sql_still = (
            f"SELECT COUNT(*) AS n, MAX(seq) AS last FROM (SELECT seq FROM {tables.changes} "
            "WHERE processed = FALSE AND seq > $1 AND attempts < max_attempts "
            f"ORDER BY seq LIMIT {int(batch_size) - 1}) AS after_head"
        )
        #: the next batch, read while the last one was pushed
        self._ahead: _Ahead | None = None
        #: the seqs of the batch pushed last: the processor's next head after a batch is one of
        #: them (its claim fails, as the batch took it): nothing to read for it
        self._pushed_seqs: frozenset[int] = frozenset()

    def describe(self, change: Row) -> str:
        return f"push {change['operation']} {change['entity']} {change['entity_id']}"

    def check(self) -> Work[None]:
        rows: list[Row] = yield Fetch(self._sql_gate)
        open_changes, dirty = int(rows[0]["open"]), int(rows[0]["dirty"])
        if open_changes or dirty:
            raise NotYet(
                "entity changes wait for the schema: "
                + (f"{open_changes} migration change(s) not done" if open_changes else "a migration is dirty")
            )

    def load(self, change: Row) -> Work[Loaded]:
        seq = int(change["seq"])
        if seq in self._pushed_seqs:
            # Pushed with the last batch: the processor's claim on it fails, and it reads the
            # queue again. (Were it claimed after all, it is pushed alone: the server stores a
            # change once.)
            return Loaded(_Batch([change]), outside_transaction=True)
        self._pushed_seqs = frozenset()
        ahead, self._ahead = self._ahead, None
        if ahead is not None and int(ahead.rows[0]["seq"]) == seq:
            rest = ahead.rows[1:]
            still: list[Row] = yield Fetch(self._sql_still, (seq,))
            count, last = int(still[0]["n"]), still[0]["last"]
            if count == len(rest) and (count == 0 or int(last) == int(rest[-1]["seq"])):
                return Loaded(_Batch([change, *rest], ahead.changes, ahead.push), outside_transaction=True)
        if ahead is not None and ahead.push is not None:
            # Sent ahead, but the queue is no longer as read: its answer is not waited for. (What
            # the server stored of it, if anything, follows the batch before: the batch read now
            # finds it there, as duplicates.)
            ahead.push.cancel()
        rows: list[Row] = yield Fetch(self._sql_batch, (seq,))
        # The head itself was claimed (its attempts went up): keep it whatever its count says now.
        batch = [change, *(r for r in rows if r["seq"] != change["seq"])]
        return Loaded(_Batch(batch), outside_transaction=True)

    def _read_ahead(self, batch: _Batch) -> Work[_Ahead | None]:
        """The batch after ``batch``, as :meth:`load` would read it, and its records (None: none,
        or it could not be read: :meth:`load` reads it then, and says what is wrong)."""
        try:
            last = max(int(r["seq"]) for r in batch.rows)
            rows: list[Row] = yield Fetch(self._sql_batch, (last + 1,))
            if not rows:
                return None
            encoded = self._encoded(rows)
            push_after = getattr(self.transport, "push_changes_after", None)
            if (
                not self.send_ahead
                or push_after is None
                or not getattr(self.transport, "orders_changes", False)
            ):
                return _Ahead(rows, encoded)
            # Sent now, before the answer to ``batch``: the server stores it only after ``batch``
            # (it names ``batch``'s last change), so the two requests may arrive in any order.
            after = str(batch.rows[-1]["id"])
            push = yield Await(lambda: _started(push_after(encoded, after)))
            return _Ahead(rows, encoded, push)
        except Exception:  # any: reading ahead is only a head start
            return None

    def _encoded(self, rows: list[Row]) -> Sequence[EntityChange]:
        """``rows`` as the transport sends them: a transport that encodes a batch ahead of
        sending it (HTTP) does it now, from the rows as they are if it can (the data's JSON text
        not parsed), else from their records."""
        encode_rows = getattr(self.transport, "encode_change_rows", None)
        if encode_rows is not None:
            encoded: Sequence[EntityChange] = encode_rows(rows)
            return encoded
        changes = [change_of(row) for row in rows]
        encode = getattr(self.transport, "encode_changes", None)
        return changes if encode is None else encode(changes)

    def handle(self, change: Row, loaded: Loaded) -> Work[Event | None]:
        raise AssertionError("entity changes are pushed outside a transaction")  # load says so
        yield  # pragma: no cover

    def explain(self, change: Row, loaded: Loaded, error: Exception) -> Exception:
        return error  # never called: nothing is pushed in a transaction

    def begin_outside(self, change: Row, loaded: Loaded) -> Work[None]:
        return  # a push stopped half-way is simply sent again: the server stores a change once
        yield  # pragma: no cover

    def handle_outside(self, change: Row, loaded: Loaded) -> Work[None]:
        batch: _Batch = loaded.data
        changes = batch.changes if batch.changes is not None else self._encoded(batch.rows)
        # The push runs on the event loop while the next batch is read (and made records of, and
        # maybe sent) here: the client's share of a batch overlaps the server's, instead of adding
        # to it. A batch sent ahead is on its way already.
        push = batch.push
        if push is None:
            push = yield Await(lambda: _started(self.transport.push_changes(changes)))
        try:
            self._ahead = yield from self._read_ahead(batch)
        except Exception:  # it catches its own: this is a stop from outside (a halt)
            yield Await(lambda: _dropped(push))
            raise
        try:
            answer = yield Await(lambda: _finished(push))
            if answer is None:  # sent ahead, it came before the batch before was stored: again
                answer = yield Await(lambda: self.transport.push_changes(changes))
            ack: ChangesAck = answer
        except ServerUnavailable as exc:
            self._drop_ahead()
            raise Postponed(f"the server cannot be reached: {exc}") from None
        except Exception:
            self._drop_ahead()
            raise
        taken = [*ack.accepted, *ack.duplicate]
        sent = [row["id"] for row in batch.rows]
        prefix = sent[: len(taken)]
        if sorted(taken) != sorted(prefix):
            raise MalformedAnswer(
                f"{self.transport.where}: the server's answer does not name a prefix of the batch it was sent"
            )
        batch.done = prefix
        if len(prefix) < len(sent):
            self._drop_ahead()  # the batch sent ahead, if any, was not stored: the server lacks its "after"
        if change["id"] not in batch.done:
            if ack.refused is not None and ack.refused.id == change["id"]:
                raise PermanentFailure(f"refused by the server: {ack.refused.reason}")
            raise MalformedAnswer(
                f"{self.transport.where}: the server neither took nor refused {change['id']}"
            )

    def _drop_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.push is not None:
            ahead.push.cancel()

    def finish_outside(self, change: Row, loaded: Loaded, duration: float) -> Work[Event | None]:
        batch: _Batch = loaded.data
        now = self.clock.now()
        done = set(batch.done)
        seqs = [int(r["seq"]) for r in batch.rows if r["id"] in done]
        # One statement per chunk, not one per change; the processor marks the head itself.
        rest = [seq for seq in seqs if seq != int(change["seq"])]
        for start in range(0, len(rest), _MARK_CHUNK):
            chunk = rest[start : start + _MARK_CHUNK]
            marks = ", ".join(f"${i}" for i in range(2, len(chunk) + 2))
            yield Execute(f"{self._sql_done}({marks})", (now, *chunk))
        self.pushed += len(seqs)
        self._pushed_seqs = frozenset(seqs)
        return ChangesPushed(count=len(seqs), first_seq=min(seqs), last_seq=max(seqs))

    def record_failure(
        self, change: Row, error: str, attempts: int, next_attempt_at: float | None, dirty: bool
    ) -> Work[list[Event]]:
        ids = {"change_id": change["id"], "entity": change["entity"], "entity_id": change["entity_id"]}
        if next_attempt_at is None:
            return [ChangeDead(error=error, attempts=attempts, **ids)]
        return [
            ChangeFailed(
                error=error,
                attempts=attempts,
                max_attempts=int(change["max_attempts"]),
                next_attempt_at=next_attempt_at,
                **ids,
            )
        ]
        yield  # pragma: no cover
