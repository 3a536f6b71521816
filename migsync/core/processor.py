"""The changes-table processor: a queue table worked in strict order.

It is generic over the queue and what a change means: a
:class:`ChangeHandler` names its queue table and does the work of one
change. The migration handler (:mod:`migsync.core.ledger`) is one; the
entity-change outbox is another.

The rules, for every queue:

* Changes are taken in ``seq`` order. A change that failed blocks the ones
  after it until it succeeds: they wait, they are never skipped.
* Each change runs in one transaction that also marks it processed and
  counts the attempt. When the work fails, that transaction is rolled back
  whole and a second one records the failure (the attempt, the error, the
  retry time), so a failure still counts while none of the failed work
  remains. No savepoint is involved: a script's own error (a syntax error
  that Postgres reports before running anything, a full disk after which
  SQLite has already rolled back) can never be replaced by a bookkeeping
  error about a savepoint. When the rollback or the record fails too, the
  change's own error is kept first and the second one added. A process
  killed mid-change leaves nothing at all: the change is as if never started.
* A failure sets ``next_attempt_at`` by exponential backoff with jitter; at
  ``max_attempts`` failures the change is dead, and stays so until someone
  revives it.
* One pass at a time: in-process by a lock, across processes by the
  backend's processor lock. Each batch of changes is read once, outside any
  transaction (with what the handler needs: a migration's content). The
  statement that records a change's outcome is also its claim: it changes
  the queue row only if the row is still as read (unprocessed, same attempt
  count, due, and the handler's pin, e.g. the migration's checksum,
  unchanged); a row count of 0 (:class:`~migsync.core.errors.ClaimLost`)
  rolls everything back and the queue is read again. A change another
  processor finished (or a revert cancelled) is never run twice, and a
  failure is recorded only for a change still ours.
* Work that cannot run in a transaction (``ChangeHandler.load`` says so) is
  marked in progress and committed first, runs with no transaction open, and
  is recorded done in a new transaction. If it stops half-way the handler
  says the database is dirty: nothing more runs until a person repairs it,
  and a processor that meets a dirty database undoes its claim and stops.
* Events go to the sinks after the transaction has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

import attrs

from migsync.core.backend import TRANSACTIONAL_DDL, Backend, Row
from migsync.core.clock import Clock, RetryPolicy, SystemClock
from migsync.core.errors import (
    BackendError,
    ClaimLost,
    DirtyDatabase,
    MigrationError,
    MigsyncError,
    NotYet,
    PermanentFailure,
    Postponed,
    WriteLockTimeout,
)
from migsync.core.events import Event, EventDispatcher, PassCompleted
from migsync.core.work import (
    Begin,
    Commit,
    Execute,
    Fetch,
    Flush,
    Rollback,
    Work,
)

log = logging.getLogger("migsync.processor")


@attrs.frozen
class Loaded:
    """What a change needs for its work, made ready inside its transaction.

    ``outside_transaction``: the work cannot run in a transaction. The
    processor then marks the change in progress and commits, lets the handler
    work with no transaction open, and records the outcome in a new one.
    """

    data: Any = None
    outside_transaction: bool = False


class ChangeHandler(Protocol):
    """What a queue's changes mean. Its methods are unit-of-work programs
    (:mod:`migsync.core.work`): they yield database requests, so the same
    handler runs on every backend."""

    #: The queue table; it has the columns of ``migration_changes``.
    queue: str
    #: Its changes run migration scripts (see :class:`~migsync.core.work.Begin`).
    changes_schema: bool

    def describe(self, change: Row) -> str:
        """A short label for logs and errors, e.g. ``apply 0003_add_email``."""

    def check(self) -> Work[None]:
        """Raise :class:`~migsync.core.errors.DirtyDatabase` when nothing in the queue may run now.

        Asked once per batch, before the queue's head is judged.
        """

    def load(self, change: Row) -> Work[Loaded]:
        """Make ready what the change needs (in its transaction, before the work).

        Raise :class:`~migsync.core.errors.DirtyDatabase` when nothing may run
        now: the transaction is undone (no attempt counted) and the pass stops.
        """

    def handle(self, change: Row, loaded: Loaded) -> Work[Event | None]:
        """Do the change's work inside the open transaction; raise to fail it.

        Returns the event to emit once the transaction has committed.
        """

    def explain(self, change: Row, loaded: Loaded, error: Exception) -> Exception:
        """The error to record for a failure of the work in the transaction (or its commit).

        A backend may report a script's failure at the commit (see
        :class:`~migsync.core.work.Execute`): what the handler adds to an
        error (the migration's file and line) belongs here, not in ``handle``.
        """

    def begin_outside(self, change: Row, loaded: Loaded) -> Work[None]:
        """Mark the change in progress, in the claim transaction, before work outside one."""

    def handle_outside(self, change: Row, loaded: Loaded) -> Work[None]:
        """Do the work with no transaction open. Raise DirtyDatabase if it stopped half-way."""

    def finish_outside(self, change: Row, loaded: Loaded, duration: float) -> Work[Event | None]:
        """Record the success of work done outside a transaction (in a new transaction)."""

    def record_failure(
        self, change: Row, error: str, attempts: int, next_attempt_at: float | None, dirty: bool
    ) -> Work[list[Event]]:
        """Write what the failure means beyond the queue row; return the events to emit.

        ``next_attempt_at`` is None when the change is now dead; ``dirty`` when
        work outside a transaction stopped half-way and a person must look.
        """


@attrs.define
class _Run:
    """One change of an atomic run."""

    change: Row
    label: str
    claim: tuple[Any, ...]
    attempts: int
    max_attempts: int
    loaded: Loaded | None = None
    event: Event | None = None

    @classmethod
    def of(cls, change: Row, label: str, claim: tuple[Any, ...]) -> _Run:
        return cls(change, label, claim, int(change["attempts"]) + 1, int(change["max_attempts"]))


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
    #: Work outside a transaction stopped half-way (or is still running elsewhere).
    dirty: bool = False
    #: False when nothing ran: the change was found blocked and its claim undone.
    ran: bool = True
    #: Put off for a reason outside the change (:class:`~migsync.core.errors.Postponed`);
    #: the attempt was not counted and ``next_attempt_at`` says when it is tried again.
    postponed: bool = False


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
    #: The pass stopped early because :meth:`ChangesProcessor.halt` was called.
    halted: bool = False
    #: Why nothing in the queue may run yet (:class:`~migsync.core.errors.NotYet`), if so.
    gated: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and self.blocked is None


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
        self._halted = False
        q = handler.queue
        head = getattr(handler, "head", None)
        self._sql_head = (
            head(int(batch_size))
            if head is not None
            else f"SELECT * FROM {q} WHERE processed = FALSE ORDER BY seq LIMIT {int(batch_size)}"
        )
        # The claim: the change is still as the batch read it. Part of the statement that
        # records the outcome, so it costs no statement of its own; the row count tells.
        self._pin: str | None = None
        pin = getattr(handler, "claim_pin", None)

        def claim(first: int) -> str:
            sql = (
                f"seq = ${first} AND processed = FALSE AND attempts = ${first + 1} "
                f"AND next_attempt_at <= ${first + 2}"
            )
            return sql if pin is None else f"{sql} AND COALESCE({pin[0]}, '') = COALESCE(${first + 3}, '')"

        if pin is not None:
            self._pin = pin[1]
        self._sql_finish = (
            f"UPDATE {q} SET processed = TRUE, processed_at = $1, error = NULL, attempts = $2 "
            f"WHERE {claim(3)}"
        )
        self._sql_started = f"UPDATE {q} SET attempts = $1 WHERE {claim(2)}"
        self._sql_claimed_failed = (
            f"UPDATE {q} SET attempts = $1, error = $2, next_attempt_at = $3 WHERE {claim(4)}"
        )
        self._sql_claimed_dead = (
            f"UPDATE {q} SET error = $1, next_attempt_at = 0, attempts = max_attempts WHERE {claim(2)}"
        )
        # After work outside a transaction, which was claimed before it ran.
        self._sql_done = (
            f"UPDATE {q} SET processed = TRUE, processed_at = $1, error = NULL, attempts = $2 WHERE seq = $3"
        )
        self._sql_failed = f"UPDATE {q} SET attempts = $1, error = $2, next_attempt_at = $3 WHERE seq = $4"
        self._sql_dead = (
            f"UPDATE {q} SET error = $1, next_attempt_at = 0, attempts = max_attempts WHERE seq = $2"
        )
        self._sql_postponed = (
            f"UPDATE {q} SET attempts = attempts - 1, error = $1, next_attempt_at = $2 WHERE seq = $3"
        )
        self._sql_remaining = f"SELECT COUNT(*) AS n FROM {q} WHERE processed = FALSE"
        # ``--atomic``: the whole queue at once (the head query's LIMIT, as large as SQLite takes).
        self._sql_everything = (
            head(2**31 - 1) if head is not None else f"SELECT * FROM {q} WHERE processed = FALSE ORDER BY seq"
        )

    # -- one pass ------------------------------------------------------------------

    async def run_pass(self, *, ignore_backoff: bool = False, atomic: bool = False) -> PassResult:
        """Work the queue in order until it is empty, blocked, or waiting on backoff.

        ``atomic``: every change of the queue in one transaction, all or nothing
        (:meth:`_atomic`); only on a backend with transactional DDL, and never for
        work that cannot run in a transaction (``MigrationError``, before anything runs).
        """
        if atomic and TRANSACTIONAL_DDL not in self.backend.capabilities:
            raise MigrationError(
                f"--atomic needs a database whose schema changes are transactional; "
                f"{self.backend.name} has none: apply without --atomic"
            )
        result = PassResult()
        async with (
            self._pass_lock,
            self.backend.processor_lock(self.handler.queue, self.lock_timeout),
        ):
            due_by = float("inf") if ignore_backoff else None
            more = True
            while more:
                work = self._atomic(result, due_by) if atomic else self._batch(result, due_by)
                more, events = await self.backend.run(work)
                # The batch's transactions have committed: now its events may go out.
                for event in events:
                    self.events.emit(event)
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

    def _judge(self, result: PassResult, head: list[Row]) -> Work[bool]:
        """Whether the head of the queue may run now (``result`` says why not)."""
        if head:
            try:
                yield from self.handler.check()
            except NotYet as exc:  # not a failure: the queue waits for something else to happen
                result.gated = str(exc)
                return False
            except DirtyDatabase as exc:  # before "dead": a dirty change waits for repair, not revival
                result.blocked = Outcome(
                    head[0]["id"],
                    self.handler.describe(head[0]),
                    False,
                    error=str(exc),
                    dirty=True,
                    ran=False,
                )
                return False
        return True

    def _batch(self, result: PassResult, due_by: float | None) -> Work[tuple[bool, list[Event]]]:
        """Up to ``batch_size`` changes, each in its own transaction.

        Returns whether the pass should go on, and the events to emit.
        """
        events: list[Event] = []
        head: list[Row] = yield Fetch(self._sql_head)
        if not (yield from self._judge(result, head)):
            return False, events
        for change in head:
            if self._halted:
                result.halted = True
                return False, events
            if change["attempts"] >= change["max_attempts"]:
                result.blocked = self._dead(change)
                return False, events
            now = self.clock.now()
            if due_by is None and change["next_attempt_at"] > now:
                result.waiting_until = float(change["next_attempt_at"])
                return False, events
            outcome = yield from self._change(change, now if due_by is None else due_by, events)
            if outcome is None:
                return True, events  # another processor got there first: read the queue again
            if outcome.postponed:
                result.waiting_until = outcome.next_attempt_at
                return False, events
            if not outcome.ran:
                result.blocked = outcome
                return False, events
            result.processed.append(outcome)
            if not outcome.ok:
                result.failure = outcome
                return False, events
        return len(head) == self.batch_size, events

    def _atomic(self, result: PassResult, due_by: float | None) -> Work[tuple[bool, list[Event]]]:
        """Every open change in one transaction: all of them commit, or none does.

        Refuses (``MigrationError``, nothing run) when one cannot run in a transaction.
        A failure rolls everything back and is recorded on the change it belongs to
        (a failure at the commit, on the last change), as a pass would record it.
        Returns whether to read the queue again (the claim was lost), and the events.
        """
        events: list[Event] = []
        head: list[Row] = yield Fetch(self._sql_everything)
        if not head or not (yield from self._judge(result, head)):
            return False, events
        now = self.clock.now()
        for change in head:  # all of them may run now, or none runs
            if change["attempts"] >= change["max_attempts"]:
                result.blocked = self._dead(change)
                return False, events
            if due_by is None and change["next_attempt_at"] > now:
                result.waiting_until = float(change["next_attempt_at"])
                return False, events
        handler = self.handler
        due = now if due_by is None else due_by
        runs = [_Run.of(change, handler.describe(change), self._claim(change, due)) for change in head]
        yield Begin(schema_change=handler.changes_schema)
        current: _Run | None = None
        try:
            for run in runs:
                current = run
                run.loaded = yield from handler.load(run.change)
            outside = [run.label for run in runs if run.loaded is not None and run.loaded.outside_transaction]
            if outside:
                raise MigrationError(
                    f"--atomic runs every pending migration in one transaction, and "
                    f"{', '.join(outside)} cannot run in one (transaction:false); nothing was run: "
                    "apply without --atomic"
                )
            for run in runs:
                current = run
                assert run.loaded is not None
                run.event = yield from handler.handle(run.change, run.loaded)
                yield Execute(self._sql_finish, (self.clock.now(), run.attempts, *run.claim), expect=1)
                yield Flush()  # a failure is raised here, with the migration it belongs to
            current = runs[-1]  # a failure at the commit (a deferred check): the last one's
            yield Commit()
        except ClaimLost:
            yield from self._undo("atomic apply")
            return True, events
        except MigrationError as exc:
            if "--atomic" not in str(exc):
                raise
            yield Rollback()
            raise
        except WriteLockTimeout:  # the transaction never began: nothing ran, no attempt counts
            yield from self._undo("atomic apply")
            raise
        except DirtyDatabase as exc:
            if current is None or current.loaded is not None:
                raise
            yield Rollback()  # from load: nothing may run now, and it is no one's failure
            result.blocked = Outcome(
                current.change["id"], current.label, False, current.attempts - 1,
                current.max_attempts, str(exc), dirty=True, ran=False,
            )  # fmt: skip
            return False, events
        except Exception as exc:
            assert current is not None
            error = exc if current.loaded is None else handler.explain(current.change, current.loaded, exc)
            if error is not exc and error.__cause__ is None:
                error.__cause__ = exc
            outcome = yield from self._rolled_back(
                current.change, current.label, error, current.attempts, current.max_attempts, events,
                current.claim,
            )  # fmt: skip
            if outcome is None:
                return True, events
            result.processed.append(outcome)
            result.failure = outcome
            return False, events
        for run in runs:
            result.processed.append(
                Outcome(run.change["id"], run.label, True, run.attempts, run.max_attempts)
            )
            if run.event is not None:
                events.append(run.event)
        return False, events

    def _dead(self, change: Row) -> Outcome:
        return Outcome(
            change["id"],
            self.handler.describe(change),
            ok=False,
            attempts=change["attempts"],
            max_attempts=change["max_attempts"],
            error=change["error"],
            dead=True,
        )

    def _claim(self, change: Row, due_by: float) -> tuple[Any, ...]:
        """The values the claim checks: the change is still as the batch read it."""
        claim: tuple[Any, ...] = (change["seq"], int(change["attempts"]), due_by)
        return claim if self._pin is None else (*claim, change[self._pin])

    def _change(self, change: Row, due_by: float, events: list[Event]) -> Work[Outcome | None]:
        handler = self.handler
        before = int(change["attempts"])
        attempts, max_attempts = before + 1, int(change["max_attempts"])
        claim = self._claim(change, due_by)
        label = handler.describe(change)
        yield Begin(schema_change=handler.changes_schema)
        try:
            loaded = yield from handler.load(change)  # reads only: nothing to undo if it fails
        except DirtyDatabase as exc:
            yield Rollback()  # not this change's failure: leave no trace of it
            return Outcome(change["id"], label, False, before, max_attempts, str(exc), dirty=True, ran=False)
        except WriteLockTimeout:  # the transaction never began: no one's failure
            yield from self._undo(label)
            raise
        except Exception as exc:
            mark = len(events)
            try:
                outcome = yield from self._failed(change, label, exc, attempts, max_attempts, events, claim)
                yield Commit()
            except ClaimLost:
                del events[mark:]
                yield Rollback()
                return None
            return outcome
        if loaded.outside_transaction:
            return (
                yield from self._change_outside(change, loaded, label, attempts, max_attempts, events, claim)
            )
        try:
            event = yield from handler.handle(change, loaded)
            # Counts the attempt and marks it done; its row count is the claim.
            yield Execute(self._sql_finish, (self.clock.now(), attempts, *claim), expect=1)
            yield Commit()  # deferred checks fail here: the change's failure like any other
        except ClaimLost:
            yield from self._undo(label)
            return None
        except WriteLockTimeout:  # the transaction never began: nothing ran, no attempt counts
            yield from self._undo(label)
            raise
        except Exception as exc:
            error = handler.explain(change, loaded, exc)
            if error is not exc and error.__cause__ is None:
                error.__cause__ = exc
            return (yield from self._rolled_back(change, label, error, attempts, max_attempts, events, claim))
        if event is not None:
            events.append(event)
        return Outcome(change["id"], label, True, attempts, max_attempts)

    def _undo(self, label: str) -> Work[None]:
        """Roll back a transaction whose claim was lost (the database may have ended it already)."""
        try:
            yield Rollback()
        except Exception as rollback_error:
            log.warning("%s: rollback after a lost claim failed too: %s", label, rollback_error)

    def _rolled_back(
        self,
        change: Row,
        label: str,
        exc: Exception,
        attempts: int,
        max_attempts: int,
        events: list[Event],
        claim: tuple[Any, ...],
    ) -> Work[Outcome | None]:
        """Undo a failed change's transaction, then record the failure in a new one.

        The change's own error stays the one reported: a rollback or record that fails
        too is added to it, never put in its place. None: the change was no longer ours
        to fail (another processor, or a person, changed it meanwhile).
        """
        try:
            yield Rollback()
        except Exception as rollback_error:  # the database may already have ended it (disk full)
            log.warning("%s: rollback after a failure failed too: %s", label, rollback_error)
        mark = len(events)
        try:
            yield Begin()
            outcome = yield from self._failed(change, label, exc, attempts, max_attempts, events, claim)
            yield Commit()
        except ClaimLost:
            del events[mark:]
            yield from self._undo(label)
            return None
        except Exception as record_error:
            raise BackendError(
                f"{label} failed: {_message(exc)}; and recording the failure failed too: "
                f"{_message(record_error)}"
            ) from exc
        return outcome

    def _change_outside(
        self,
        change: Row,
        loaded: Loaded,
        label: str,
        attempts: int,
        max_attempts: int,
        events: list[Event],
        claim: tuple[Any, ...],
    ) -> Work[Outcome | None]:
        """A change whose work cannot run in a transaction: claim and mark, commit, work, record."""
        handler = self.handler
        try:
            yield Execute(self._sql_started, (attempts, *claim), expect=1)
            yield from handler.begin_outside(change, loaded)
            yield Commit()
        except ClaimLost:
            yield from self._undo(label)
            return None
        started = time.perf_counter()
        try:
            yield from handler.handle_outside(change, loaded)
        except Postponed as exc:
            next_at = self.clock.now() + self.retry.delay(1)
            yield Begin()
            yield Execute(self._sql_postponed, (str(exc), next_at, change["seq"]))
            yield Commit()
            return Outcome(
                change["id"], label, False, attempts - 1, max_attempts, str(exc), False, next_at, ran=False,
                postponed=True,
            )  # fmt: skip
        except Exception as exc:
            yield Begin()
            outcome = yield from self._failed(change, label, exc, attempts, max_attempts, events)
            yield Commit()
            return outcome
        yield Begin()
        event = yield from handler.finish_outside(change, loaded, time.perf_counter() - started)
        yield Execute(self._sql_done, (self.clock.now(), attempts, change["seq"]))
        yield Commit()
        if event is not None:
            events.append(event)
        return Outcome(change["id"], label, True, attempts, max_attempts)

    def _failed(
        self,
        change: Row,
        label: str,
        exc: Exception,
        attempts: int,
        max_attempts: int,
        events: list[Event],
        claim: tuple[Any, ...] | None = None,
    ) -> Work[Outcome]:
        """Record a failed attempt (inside an open transaction) and say what it means.

        ``claim``: the change was not claimed yet; the record claims it (raising
        :class:`~migsync.core.errors.ClaimLost` if it is no longer as read).
        """
        if not isinstance(exc, MigsyncError):
            log.error("unexpected error in %s", label, exc_info=exc)
        error = _message(exc)
        dirty = isinstance(exc, DirtyDatabase)
        permanent = isinstance(exc, PermanentFailure) and not dirty
        dead = (attempts >= max_attempts or permanent) and not dirty
        next_at = None if dead or dirty else self.clock.now() + self.retry.delay(attempts)
        if permanent:  # dead now, however many attempts were left
            attempts = max_attempts
            if claim is None:
                yield Execute(self._sql_dead, (error, change["seq"]))
            else:
                yield Execute(self._sql_claimed_dead, (error, *claim), expect=1)
        else:
            # A dirty change waits for a person: no retry time, however many attempts are left.
            retry_at = next_at if next_at is not None else 0.0
            if claim is None:
                yield Execute(self._sql_failed, (attempts, error, retry_at, change["seq"]))
            else:
                yield Execute(self._sql_claimed_failed, (attempts, error, retry_at, *claim), expect=1)
        events.extend((yield from self.handler.record_failure(change, error, attempts, next_at, dirty)))
        return Outcome(change["id"], label, False, attempts, max_attempts, error, dead, next_at, dirty)

    # -- the loop --------------------------------------------------------------------

    def start(self, interval: float = 5.0) -> None:
        """Run passes every ``interval`` seconds in the background until :meth:`stop`."""
        if self._task is not None and not self._task.done():
            return
        self._stopping = False
        self._task = asyncio.create_task(self._loop(interval), name=f"migsync-{self.handler.queue}")

    def halt(self) -> None:
        """Stop the pass in progress after the change it is working on, and every later pass,
        until :meth:`resume`. Safe to call from a signal handler."""
        self._halted = True
        self._stopping = True
        self._wake.set()

    def resume(self) -> None:
        self._halted = False

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


def _message(exc: BaseException) -> str:
    """An error as a change's record keeps it: ours as written, anything else with its type."""
    return str(exc) if isinstance(exc, MigsyncError) else f"{type(exc).__name__}: {exc}"
