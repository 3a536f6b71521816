"""A clock read from a file: how tests move time for a ``migsync`` subprocess.

A testing aid, never meant for production. When the environment variable
:data:`ENV` (``MIGSYNC_TEST_CLOCK``) names a file, every CLI command that opens a
client database takes its time from that file instead of the system clock. The file
holds one number, seconds since the epoch. A test writes it, runs ``migsync``, moves
it on (:func:`write_now`), runs ``migsync`` again: backoffs and retry times are then
exact, whatever the machine's load, and nothing waits for real.

``sleep`` moves the file's time on instead of waiting (as :class:`migsync.testing.FakeClock`
does in-process), so ``apply --wait`` runs through a backoff at once.

The CLI imports this module only when the variable is set, so it costs a normal start-up
nothing (see ``migsync.cli.support.connect``).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

#: The environment variable that names the clock's file.
ENV = "MIGSYNC_TEST_CLOCK"


def read_now(path: Path) -> float:
    """The time in the clock file ``path``: one number, seconds since the epoch."""
    from migsync.core.errors import ConfigError

    try:
        text = path.read_text(encoding="utf-8").strip()
        return float(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: {ENV} must name a file holding seconds since the epoch ({exc})") from None


def write_now(path: Path, now: float) -> None:
    """Set the clock file ``path`` to ``now``, atomically (a reader never sees half a number)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(f"{now!r}\n", encoding="utf-8")
    os.replace(temporary, path)


class FileClock:
    """A :class:`migsync.core.clock.Clock` whose time is the number in a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def now(self) -> float:
        return read_now(self.path)

    async def sleep(self, seconds: float) -> None:
        write_now(self.path, self.now() + max(seconds, 0.0))
        await asyncio.sleep(0)  # still a point where other tasks run, as a real sleep is


def from_environment() -> FileClock | None:
    """The clock :data:`ENV` names, or ``None`` when it is not set."""
    path = os.environ.get(ENV)
    return FileClock(Path(path)) if path else None
