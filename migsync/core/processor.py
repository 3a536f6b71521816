"""The changes-table processor: a queue table worked in strict order.

It is generic over the queue and what a change means: a
:class:`ChangeHandler` names its queue table and does the work of one
change. The migration handler (:mod:`migsync.core.ledger`) is one; the
entity-change outbox is another.

The rules, for every queue:

* Changes are taken in ``seq`` order. A change that failed blocks the ones
  after it until it succeeds: they wait, they are never skipped.
* Each change runs in one transaction that also marks it processed. The
  work itself runs in a savepoint inside that transaction; the attempt
  counter and the error are written outside the savepoint, so a failure
  still counts while none of the failed work remains. A process killed
  mid-change leaves nothing at all: the change is as if never started.
* A failure sets ``next_attempt_at`` by exponential backoff with jitter; at
  ``max_attempts`` failures the change is dead, and stays so until someone
  revives it.
* One pass at a time: in-process by a lock, across processes by the
  backend's processor lock. Inside the transaction the change is re-read,
  so a change another processor finished is skipped, never run twice.
* Events go to the sinks after the transaction has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

import attrs

from migsync.core.backend import Backend, Connection, Row
from migsync.core.clock import Clock, RetryPolicy, SystemClock
from migsync.core.errors import MigsyncError
from migsync.core.events import Event, EventDispatcher, PassCompleted

log = logging.getLogger("migsync.processor")


class ChangeHandler(Protocol):
    """What a queue's changes mean."""

    #: The queue table; it has the columns of ``migration_changes``.
    queue: str

    def describe(self, change: Row) -> str:
        """A short label for logs and errors, e.g. ``apply 0003_add_email``."""

    async def handle(self, tx: Connection, change: Row) -> Event | None:
        """Do the change's work inside the open transaction; raise to fail it.

        Returns the event to emit once the transaction has committed.
        """

    async def record_failure(
        self, tx: Connection, change: Row, error: str, attempts: int, dead: bool
    ) -> list[Event]:
        """Write what the failure means beyond the queue row; return the events to emit."""


@attrs.frozen
class Outcome:
    """What happened to one change in a pass."""

    change_id: str
    label: str
    ok: bool
    attempts: int = 0
    max_attempts: int = 0
    error: str | None = None
    dead: bool = False
    next_attempt_at: float | None = None


@attrs.define
class PassResult:
    """The result of one pass: what ran, and why the pass stopped where it did."""

    processed: list[Outcome] = attrs.field(factory=list)
    #: The change that failed in this pass, if any (it blocks the rest).
    failure: Outcome | None = None
    #: A dead change at the head of the queue that blocks everything after it.
    blocked: Outcome | None = None
    #: The head of the queue is waiting for its backoff to expire until then.
    waiting_until: float | None = None
    remaining: int = 0

    @property
    def ok(self) -> bool:
        return self.failure is None and self.blocked is None


_SKIPPED = object()


class ChangesProcessor:
    def __init__(
        self,
        backend: Backend,
        handler: ChangeHandler,
        *,
        events: EventDispatcher | None = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        lock_timeout: float = 60.0,
        batch_size: int = 100,
    ):
        self.backend = backend
        self.handler = handler
        self.events = events or EventDispatcher()
        self.clock = clock or SystemClock()
        self.retry = retry or RetryPolicy()
        self.lock_timeout = lock_timeout
        self.batch_size = batch_size
        self._pass_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        q = handler.queue
        self._sql_head = f"SELECT * FROM {q} WHERE processed = FALSE ORDER BY seq LIMIT {int(batch_size)}"
        self._sql_claim = (
            f"UPDATE {q} SET attempts = attempts + 1 WHERE id = $1 AND processed = FALSE "
            "AND attempts < max_attempts AND next_attempt_at <= $2 RETURNING attempts, max_attempts"
        )
        self._sql_done = f"UPDATE {q} SET processed = TRUE, processed_at = $1, error = NULL WHERE id = $2"
        self._sql_failed = f"UPDATE {q} SET error = $1, next_attempt_at = $2 WHERE id = $3"
        self._sql_remaining = f"SELECT COUNT(*) AS n FROM {q} WHERE processed = FALSE"

    # -- one pass ------------------------------------------------------------------

    async def run_pass(self, *, ignore_backoff: bool = False) -> PassResult:
        """Work the queue in order until it is empty, blocked, or waiting on backoff."""
        async with (
            self._pass_lock,
            self.backend.processor_lock(self.handler.queue, self.lock_timeout),
        ):
            result = await self._work(ignore_backoff)
            rows = await self.backend.fetch(self._sql_remaining)
            result.remaining = int(rows[0]["n"])
        blocked = result.failure or result.blocked
        self.events.emit(
            PassCompleted(
                queue=self.handler.queue,
                processed=sum(1 for o in result.processed if o.ok),
                failed=0 if result.failure is None else 1,
                remaining=result.remaining,
                blocked_by=blocked.label if blocked else None,
            )
        )
        return result

    async def _work(self, ignore_backoff: bool) -> PassResult:
        result = PassResult()
        due_by = float("inf") if ignore_backoff else None
        while True:
            head = await self.backend.fetch(self._sql_head)
            if not head:
                return result
            for change in head:
                if change["attempts"] >= change["max_attempts"]:
                    result.blocked = Outcome(
                        change["id"],
                        self.handler.describe(change),
                        ok=False,
                        attempts=change["attempts"],
                        max_attempts=change["max_attempts"],
                        error=change["error"],
                        dead=True,
                    )
                    return result
                if not ignore_backoff and change["next_attempt_at"] > self.clock.now():
                    result.waiting_until = float(change["next_attempt_at"])
                    return result
                outcome = await self._process(change, due_by or self.clock.now())
                if outcome is None:
                    break  # another processor got there first: read the queue again
                result.processed.append(outcome)
                if not outcome.ok:
                    result.failure = outcome
                    return result

    async def _process(self, change: Row, due_by: float) -> Outcome | None:
        handler = self.handler
        label = handler.describe(change)
        events: list[Event] = []
        async with self.backend.transaction() as tx:
            # Re-read inside the write transaction: only a change that is still
            # unprocessed, alive and due is ours to work.
            claim = await tx.fetchone(self._sql_claim, (change["id"], due_by))
            if claim is None:
                return None
            attempts, max_attempts = int(claim["attempts"]), int(claim["max_attempts"])
            try:
                async with tx.savepoint():
                    event = await handler.handle(tx, change)
                    await tx.execute(self._sql_done, (self.clock.now(), change["id"]))
            except Exception as exc:
                error = str(exc) if isinstance(exc, MigsyncError) else f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, MigsyncError):
                    log.exception("unexpected error in %s", label)
                dead = attempts >= max_attempts
                next_at = self.clock.now() + self.retry.delay(attempts)
                await tx.execute(self._sql_failed, (error, next_at, change["id"]))
                events = await handler.record_failure(tx, change, error, attempts, dead)
                outcome = Outcome(
                    change["id"],
                    label,
                    False,
                    attempts,
                    max_attempts,
                    error,
                    dead,
                    None if dead else next_at,
                )
            else:
                if event is not None:
                    events = [event]
                outcome = Outcome(change["id"], label, True, attempts, max_attempts)
        for event in events:
            self.events.emit(event)
        return outcome

    # -- the loop --------------------------------------------------------------------

    def start(self, interval: float = 5.0) -> None:
        """Run passes every ``interval`` seconds in the background until :meth:`stop`."""
        if self._task is not None and not self._task.done():
            return
        self._stopping = False
        self._task = asyncio.create_task(self._loop(interval), name=f"migsync-{self.handler.queue}")

    def trigger(self) -> None:
        """Start the next pass now instead of at the end of the interval."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop the loop after the pass in progress (if any) has finished."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _loop(self, interval: float) -> None:
        while not self._stopping:
            wait = interval
            try:
                result = await self.run_pass()
                if result.waiting_until is not None:
                    wait = max(0.0, min(interval, result.waiting_until - self.clock.now()))
            except MigsyncError as exc:
                log.error("%s pass failed: %s", self.handler.queue, exc)
            except Exception:
                log.exception("%s pass crashed", self.handler.queue)
            if self._stopping:
                break
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)


def monotonic() -> float:
    return time.perf_counter()
