"""Test doubles that ship with migsync, for its own tests and for plugin authors."""

from __future__ import annotations

import attrs


@attrs.define
class FakeClock:
    """A clock that moves only when told: ``clock.advance(30)``.

    ``sleep`` advances the clock instead of waiting, so code that backs off
    runs instantly in tests while seeing time pass.
    """

    current: float = 1_700_000_000.0
    slept: list[float] = attrs.field(factory=list)

    def now(self) -> float:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.current += max(seconds, 0.0)


__all__ = ["FakeClock"]
