"""A lock that holds across processes: ``flock`` on a file beside a SQLite database.

SQLite has no lock that a processor pass could hold between its
transactions, so the SQLite backend's processor lock is a lock file,
``<database>-migsync-<queue>.lock``, one per queue (``migration_changes``
and the ``changes`` outbox do not block each other).

``flock`` locks belong to an open file description, not to a process: every
acquisition opens the file anew, so two backend instances in one process
exclude each other as two processes do (POSIX ``fcntl``/``lockf`` record
locks would not: a process never conflicts with itself). The kernel drops
the lock when its holder exits, however it exits, so a killed process never
leaves the lock taken. The file itself stays: deleting it while a process
holds it would let the next one lock a new file beside the old, so it is
never removed, and holds only the pid of the last holder (for messages).

Waiting does not block the event loop: ``LOCK_NB`` attempts with backoff,
as the Postgres backend polls ``pg_try_advisory_lock``.

Where ``fcntl`` is missing (Windows), :data:`AVAILABLE` is False and the
SQLite backend keeps its in-process lock only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

from migsync.core.errors import BackendError, ConnectError, LockTimeout

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Whether this platform has ``flock`` (then the lock holds across processes).
AVAILABLE = fcntl is not None

_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def lock_path(database: str, name: str) -> Path:
    """The lock file of queue ``name`` for the SQLite file ``database``.

    Beside the database's real file (symlinks resolved), so every path to one
    database finds one lock.
    """
    if not _SAFE_NAME.fullmatch(name):
        name = hashlib.sha256(name.encode()).hexdigest()[:16]
    real = Path(os.path.realpath(database))
    return real.with_name(f"{real.name}-migsync-{name}.lock")


@contextlib.asynccontextmanager
async def hold(path: Path, deadline: float, timed_out: str) -> AsyncIterator[None]:
    """Hold the lock on ``path`` for the block; LockTimeout(``timed_out`` + holder) at ``deadline``.

    ``deadline`` is on :func:`time.monotonic`'s clock.
    """
    assert fcntl is not None, "filelock.hold needs fcntl (see AVAILABLE)"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise ConnectError(
            f"cannot open the processor lock file {path}: {exc.strerror}; migsync keeps it "
            "beside the database, so that folder must be writable"
        ) from exc
    try:
        delay = 0.01
        while not _try_lock(fd, path):
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockTimeout(f"{timed_out}{_holder(fd, path)}")
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.25)
        _write_pid(fd)
        yield
    finally:
        os.close(fd)  # drops the lock, if this description holds it


def _try_lock(fd: int, path: Path) -> bool:
    assert fcntl is not None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        raise BackendError(f"cannot lock {path}: {exc.strerror}") from exc
    return True


def _write_pid(fd: int) -> None:
    # For the messages of whoever waits; the lock works without it.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _holder(fd: int, path: Path) -> str:
    """Who holds the lock, as far as the file tells: for error messages."""
    try:
        pid = int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return f" (lock file {path})"
    if pid == os.getpid():
        return f" (held by this process, pid {pid}; lock file {path})"
    return f" (held by pid {pid}; lock file {path})"


__all__ = ["AVAILABLE", "hold", "lock_path"]
