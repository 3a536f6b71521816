"""A clock for code that runs in the test's own event loop and sleeps in the background.

:class:`migsync.testing.FakeClock` moves time on when slept on, which suits code that backs
off once and goes on. A background loop (the server's flush of seen marks, say) would spin on
it; :class:`SteppedClock` instead keeps its sleepers waiting until the test moves time on.
For a ``migsync`` subprocess, see ``dbtools.ClockFile``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


class SteppedClock:
    """A :class:`migsync.core.clock.Clock` whose time moves only by :meth:`advance`.

    Move it by steps that a float holds exactly at this size (0.5, 0.25, whole seconds):
    ``1_700_000_000.0 + 0.3`` is a little less than 0.3 later, and a test of a 0.3 s period
    would see it not yet over.
    """

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.current = now
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.current

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.current + max(seconds, 0.0), future))
        self._wake()
        await future

    def advance(self, seconds: float) -> None:
        """Move time on; every sleep whose end has come returns (at the loop's next turn)."""
        self.current += seconds
        self._wake()

    def _wake(self) -> None:
        waiting = []
        for due, future in self._sleepers:
            if future.done():
                continue
            if due <= self.current:
                future.set_result(None)
            else:
                waiting.append((due, future))
        self._sleepers = waiting


async def eventually(
    what: str, condition: Callable[[], bool | Awaitable[bool]], timeout: float = 30.0
) -> None:
    """Let the event loop run until ``condition`` (a function or a coroutine function) holds; an
    AssertionError naming ``what`` after ``timeout`` seconds (a generous deadline for a loaded
    machine, not a measure of anything)."""

    async def holds() -> bool:
        result = condition()
        return bool(await result) if inspect.isawaitable(result) else bool(result)

    deadline = time.monotonic() + timeout
    while not await holds():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)
