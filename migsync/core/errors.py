"""Every error migsync raises, in one tree.

::

    MigsyncError
    ├── ConfigError            a bad URL, option or unknown plugin name
    ├── PluginError            a plugin that cannot load or that clashes with another
    ├── SourceError            a migration file that cannot be read or parsed
    ├── BackendError           anything the database driver reported
    │   ├── ConnectError       the database cannot be opened or reached
    │   │   └── DatabaseMissing  it does not exist, and the command may not create it
    │   ├── LockTimeout        the processor lock was held by someone else too long
    │   ├── StatementError     a SQL statement failed (names migration, statement, line)
    │   ├── ConstraintViolation a migration left data that breaks a constraint checked at commit
    │   └── TransactionLost    a script ended the transaction migsync opened for it
    ├── MigrationError         the migration history does not allow the request
    │   ├── UnknownMigration   no migration of that name or version
    │   ├── ChecksumMismatch   an applied migration's content changed (drift)
    │   └── DirtyDatabase      a non-transactional migration died half-way
    ├── SignatureError         a migration is unsigned or its signature does not verify
    └── ClaimLost              a queued change was taken or changed by someone else after
                               the processor read it (the processor reads the queue again)

Backends map their driver's exceptions to these in one place, so no raw
``sqlite3`` or ``asyncpg`` exception reaches a caller.
"""

from __future__ import annotations

from pathlib import Path


class MigsyncError(Exception):
    """Base of every error migsync raises on purpose."""


class ConfigError(MigsyncError):
    """A URL, option or plugin name that does not make sense."""


class PluginError(MigsyncError):
    """A plugin failed to load, or two plugins claim the same name."""


class SourceError(MigsyncError):
    """A migration source (file or directory) is malformed.

    ``str(error)`` starts with ``path:line:`` when a file and line are known,
    the way compilers report, so editors can jump to it.
    """

    def __init__(self, message: str, path: Path | str | None = None, line: int | None = None):
        self.path = Path(path) if path is not None else None
        self.line = line
        self.reason = message
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(f"{where}{message}")


class BackendError(MigsyncError):
    """The database reported an error."""


class ConnectError(BackendError):
    """The database could not be opened or reached."""


class DatabaseMissing(ConnectError):
    """The database does not exist, and the command may not create it (``status``, a read-only open)."""


class LockTimeout(BackendError):
    """The processor lock could not be taken in time."""


class WriteLockTimeout(LockTimeout):
    """migsync's write lock was not free in time, found when a change's transaction was sent.

    A backend may begin a change's transaction in the same message as its work (Postgres);
    then a busy write lock is found only there. Nothing of the change ran: the processor
    ends the pass as it does when its ``BEGIN`` times out, and counts no attempt.
    """


class StatementError(BackendError):
    """A SQL statement failed.

    Carries what a person needs to find it: the migration, the statement's
    position in the script, the line it starts on, and the driver's message.
    """

    def __init__(
        self,
        message: str,
        *,
        migration: str | None = None,
        statement: str | None = None,
        index: int | None = None,
        line: int | None = None,
        origin: tuple[str, int] | None = None,
        committed: int | None = None,
    ):
        self.driver_message = message
        self.migration = migration
        self.statement = statement
        self.index = index
        self.line = line
        #: (file, line the script starts on) when the migration came from a file
        self.origin = origin
        #: For a script run outside a transaction: how many of its statements had committed
        #: when it failed (a transaction the script opened itself and that was rolled back
        #: does not count). None when the backend cannot tell.
        self.committed = committed
        super().__init__(self._describe())

    @property
    def location(self) -> str | None:
        """``path:line`` of the failing statement in its migration file, if known."""
        if self.origin is None or self.line is None:
            return None
        path, first_line = self.origin
        return f"{path}:{first_line + self.line - 1}"

    def _describe(self) -> str:
        where = []
        if self.migration:
            where.append(f"migration {self.migration}")
        if self.index is not None and self.location is not None:
            where.append(f"statement {self.index + 1} ({self.location})")
        elif self.index is not None and self.line is not None:
            where.append(f"statement {self.index + 1} (line {self.line} of the script)")
        elif self.index is not None:
            where.append(f"statement {self.index + 1}")
        elif self.origin is not None:
            where.append(f"a statement of the script at {self.origin[0]}:{self.origin[1]}")
        prefix = ", ".join(where)
        text = f"{prefix}: {self.driver_message}" if prefix else self.driver_message
        if self.statement:
            snippet = " ".join(self.statement.split())
            if len(snippet) > 120:
                snippet = snippet[:117] + "..."
            text += f" [in: {snippet}]"
        return text

    def in_migration(self, name: str, origin: tuple[str, int] | None = None) -> StatementError:
        """The same error, naming the migration (and the file it came from) it happened in."""
        error = self.amended(self.driver_message)
        error.migration, error.origin = name, origin
        error.args = (error._describe(),)
        return error

    def amended(self, driver_message: str) -> StatementError:
        """The same error with another message from the driver (one with more said about it)."""
        return type(self)(
            driver_message,
            migration=self.migration,
            statement=self.statement,
            index=self.index,
            line=self.line,
            origin=self.origin,
            committed=self.committed,
        )


class ConstraintViolation(BackendError):
    """A migration left data that breaks a constraint checked before its commit (SQLite's
    foreign keys, which are not enforced while a migration runs): the migration is rolled back."""


class TransactionLost(StatementError):
    """A script ended the transaction migsync opened for it (a ``COMMIT`` or ``ROLLBACK`` that the
    script check could not see): what ran before it may have committed without the bookkeeping."""


class MigrationError(MigsyncError):
    """The migration history does not allow what was asked."""


class UnknownMigration(MigrationError):
    """No migration matches the given name or version."""


class ChecksumMismatch(MigrationError):
    """A migration's content differs from what this database applied."""


class DirtyDatabase(MigrationError):
    """A migration that ran outside a transaction stopped half-way."""


class ClaimLost(MigsyncError):
    """A statement's row count says its rows changed since they were read.

    The processor reads a batch of the queue outside any transaction and
    claims each change with the statement that records its outcome; when that
    statement finds the change no longer as read (another processor did it, a
    revert cancelled it, its content was recorded anew), the transaction is
    rolled back and the queue read again. Never a change's failure.
    """


class SignatureError(MigsyncError):
    """A migration is unsigned, or signed by no trusted key: nothing of it may run."""


class NotYet(MigsyncError):
    """Nothing in a queue may run yet (entity changes wait for the schema): no attempt is counted."""


class Postponed(MigsyncError):
    """A change could not be done now for a reason outside it (the server is down): it is tried
    again later, and the attempt is not counted against it."""


class PermanentFailure(MigsyncError):
    """A change failed in a way no retry can fix (the server refused it): it is dead at once."""


class TransportError(MigsyncError):
    """A transport could not do what was asked."""


class ServerUnavailable(TransportError):
    """The server cannot be reached now, or answered 5xx: try again later; nothing is lost."""


class ServerRefused(TransportError):
    """The server refused the request (bad token, bad request): retrying the same will not help."""


class MalformedAnswer(TransportError):
    """What came back from the server (or a drop folder) does not have the documented shape."""


__all__ = [
    "BackendError",
    "ChecksumMismatch",
    "ConfigError",
    "ConnectError",
    "ConstraintViolation",
    "DirtyDatabase",
    "LockTimeout",
    "MalformedAnswer",
    "MigrationError",
    "MigsyncError",
    "NotYet",
    "PermanentFailure",
    "PluginError",
    "Postponed",
    "ServerRefused",
    "ServerUnavailable",
    "SignatureError",
    "SourceError",
    "StatementError",
    "TransactionLost",
    "TransportError",
    "UnknownMigration",
]
