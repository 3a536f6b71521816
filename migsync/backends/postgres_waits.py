"""Who blocks a Postgres migration that waits on a lock.

A migration's ``ALTER TABLE`` waits for every transaction that touched the
table to end; one idle-in-transaction session can make it wait forever, and
every query on the table queues behind it meanwhile. While a migration's
script runs longer than ``lock_wait_report`` seconds, :class:`WaitWatch`
asks Postgres, on a connection of its own, whether the script's session is
waiting on a lock and, if so, which sessions hold it
(``pg_blocking_pids``) and what they run. Each finding goes to the log and
to the backend's ``wait_listener`` (the client turns it into a
``migration_waiting`` event), and is repeated every ``lock_wait_report``
seconds while the wait lasts.

Set ``migration_lock_timeout`` to make such a wait an ordinary failure
(retried with backoff) instead of a long block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg

from migsync.core.backend import Blocker, LockWait

log = logging.getLogger("migsync.postgres")

_BLOCKERS = """
SELECT b.pid, b.usename AS user, b.application_name AS application, host(b.client_addr) AS client,
       b.state, extract(epoch FROM now() - b.xact_start)::float8 AS transaction_seconds,
       left(b.query, 200) AS query
FROM unnest(pg_blocking_pids($1)) AS blocker(pid)
JOIN pg_stat_activity b ON b.pid = blocker.pid
ORDER BY b.pid
"""


WaitListener = Callable[[LockWait], None]


class WaitWatch:
    """Watches one running script; ``last`` is the latest wait it saw, if any."""

    def __init__(self, dsn: str, pid: int, label: str, every: float, listener: WaitListener | None):
        self._dsn = dsn
        self._pid = pid
        self._label = label
        self._every = every
        self._listener = listener
        self.last: LockWait | None = None

    async def run(self, started: float) -> None:
        """Ask now, then every ``every`` seconds, until cancelled (``started``: when the script did)."""
        conn: asyncpg.Connection | None = None
        try:
            while True:
                if conn is None:
                    conn = await asyncpg.connect(
                        self._dsn, timeout=10, server_settings={"application_name": "migsync"}
                    )
                rows = await conn.fetch(_BLOCKERS, self._pid, timeout=10)
                if rows:
                    self._report(time.monotonic() - started, rows)
                await asyncio.sleep(self._every)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a helper for messages must never fail the migration
            log.debug("could not ask Postgres who blocks %s: %s", self._label, exc)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    def _report(self, waited: float, rows: list[Any]) -> None:
        blockers = tuple(Blocker(**dict(row)) for row in rows)
        self.last = LockWait(self._label, self._pid, waited, blockers)
        log.warning("%s", self.last.describe())
        if self._listener is not None:
            try:
                self._listener(self.last)
            except Exception:
                log.exception("the lock-wait listener failed")


@contextlib.asynccontextmanager
async def watching(
    dsn: str, pid: int, label: str, every: float, listener: WaitListener | None
) -> AsyncIterator[WaitWatch | None]:
    """Watch the script that runs in the block (``every`` 0: do not watch)."""
    if every <= 0:
        yield None
        return
    watch = WaitWatch(dsn, pid, label, every, listener)
    # A timer, not a task, until the script has run ``every`` seconds: nearly every script ends
    # sooner, and a timer costs next to nothing to cancel (a task per migration cost more than
    # the rest of its bookkeeping in Python).
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    task: asyncio.Task[None] | None = None

    def start() -> None:
        nonlocal task
        task = loop.create_task(watch.run(started), name=f"migsync-lock-wait-{pid}")

    timer = loop.call_later(every, start)
    try:
        yield watch
    finally:
        timer.cancel()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
