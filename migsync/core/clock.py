"""Time, injectable: the processor asks a clock, so tests can move time by hand."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Protocol

import attrs


def iso(timestamp: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 UTC (``2026-11-24T21:45:56Z``), for output."""
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@attrs.define
class RetryPolicy:
    """Exponential backoff with jitter, for the ``next_attempt_at`` of a failed change.

    The n-th failure waits ``min(cap, base * factor**(n-1))`` seconds, of which
    up to ``jitter`` (a fraction) is taken off at random, so that a fleet of
    clients failing together does not retry together.
    """

    base: float = 2.0
    factor: float = 2.0
    cap: float = 600.0
    jitter: float = 0.5
    rng: random.Random = attrs.field(factory=random.Random, repr=False)

    def delay(self, attempt: int) -> float:
        exponent = min(max(attempt - 1, 0), 60)  # 2**60 s is past any cap
        capped = min(self.cap, self.base * self.factor**exponent)
        return capped * (1.0 - self.jitter * self.rng.random())
