"""Reading a file that a user or a remote party controls, without blocking on it.

::

    data = read_regular("migrations/0001_a.sql")
    data = read_regular(real_path, limit=4 * 1024 * 1024, follow_symlinks=False)

A path in a migrations folder or a drop folder may name anything: a FIFO (whose
``open()`` blocks until a writer comes, which may be never), a device, a socket,
a directory, a symlink loop. :func:`read_regular` opens without blocking
(``O_NONBLOCK``), checks the open descriptor (``fstat``) and reads only a
regular file; anything else is an :class:`UnreadableFile` saying what it is,
before a byte is read.

Errors are :class:`OSError`\\ s, so that each caller maps them to its own error
type the way it maps any other (``exc.strerror`` is the reason in a few words):
a missing file is the plain :class:`FileNotFoundError`, a permission problem
the plain :class:`PermissionError`; what this module refuses is an
:class:`UnreadableFile`.
"""

from __future__ import annotations

import errno
import os
import stat

#: POSIX only; elsewhere (Windows) there are no FIFOs to block on
_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symlink"),
)


class UnreadableFile(OSError):
    """A file that is refused: not a regular file, a symlink loop, a symlink not to be
    followed, over a size limit. ``strerror`` says which, ``filename`` names it."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def kind_of(mode: int) -> str:
    """What a file of ``mode`` (``st_mode``) is, in words: ``"a FIFO"``, ``"a directory"``, ..."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "a regular file" if stat.S_ISREG(mode) else "an unknown kind of file"


def reason(exc: OSError) -> str:
    """Why ``exc`` happened, in a few words (a symlink loop says so, where the OS says
    "Too many levels of symbolic links")."""
    if exc.errno == errno.ELOOP and not isinstance(exc, UnreadableFile):
        return "a symlink loop"
    return exc.strerror or str(exc)


def _not_regular(mode: int) -> str:
    return f"not a regular file ({kind_of(mode)})"


def _loop_or_link(path: str, follow_symlinks: bool) -> str:
    """What an ELOOP from opening ``path`` means: O_NOFOLLOW on a symlink fails with it too."""
    if follow_symlinks or not os.path.islink(path):
        return "a symlink loop"
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
    return "a symlink, not followed"


def read_regular(
    path: str | os.PathLike[str], *, limit: int | None = None, follow_symlinks: bool = True
) -> bytes:
    """The bytes of regular file ``path``, read without ever blocking on a special file.

    Raises :class:`UnreadableFile` for anything but a regular file (a FIFO, a
    device, a socket, a directory), for a symlink loop, for a symlink when
    ``follow_symlinks`` is false, and for a file over ``limit`` bytes; other
    :class:`OSError`\\ s (not there, no permission) as the OS raised them.
    """
    name = os.fspath(path)
    flags = os.O_RDONLY | _NONBLOCK | getattr(os, "O_NOCTTY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(name, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableFile(errno.ELOOP, _loop_or_link(name, follow_symlinks), name) from None
        if exc.errno == errno.ENXIO:  # a socket, or a device with no driver behind it
            mode = os.stat(name, follow_symlinks=follow_symlinks).st_mode
            raise UnreadableFile(errno.EINVAL, _not_regular(mode), name) from None
        raise
    try:
        # Checked on the descriptor before anything reads it (a read of a directory would
        # fail, but in its own words).
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFile(errno.EINVAL, _not_regular(info.st_mode), name)
        if limit is not None and info.st_size > limit:
            raise UnreadableFile(errno.EFBIG, f"{info.st_size} bytes, over the limit of {limit}", name)
        if _NONBLOCK:  # a regular file never blocks, but a network or FUSE file system may honour it
            os.set_blocking(descriptor, True)
        # os.read on the descriptor, not a file object: this runs per migration file on every
        # start, and the object (and its own fstat) cost as much as the read.
        cap = None if limit is None else limit + 1
        parts: list[bytes] = []
        size = 0
        while cap is None or size < cap:
            want = max(info.st_size + 1 - size, 65536) if cap is None else cap - size
            chunk = os.read(descriptor, want)
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
    finally:
        os.close(descriptor)
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    if limit is not None and len(data) > limit:  # it grew after the fstat
        raise UnreadableFile(errno.EFBIG, f"over the limit of {limit} bytes", name)
    return data
