"""What a migration file format is: it claims file names and turns a file into sections.

A format claims file names (:meth:`SourceFormat.match`), may say whether a
claimed file's content is its own (:meth:`SourceFormat.sniff`), and turns a
claimed file's text into :class:`Section` records (:meth:`SourceFormat.parse`).
The directory loader (:mod:`migsync.core.sources`) decides which format a
folder is in and groups sections into migrations.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import attrs

from migsync.core.migration import ANY_DIALECT, Direction
from migsync.core.version import Version, as_version


@attrs.frozen
class FileName:
    """What a format read from a file name."""

    version: Version = attrs.field(converter=as_version)
    name: str  # the migration's name: "<version>_<description>" as written
    direction: Direction | None = None  # None: the file holds both directions
    dialect: str = ANY_DIALECT
    autocommit: bool = False
    #: The file joins the migration of its version whatever that one's name: Flyway's
    #: ``U2__undo_it.sql`` is the down script of ``V2__do_it.sql``.
    companion: bool = False
    #: A repeatable migration (Flyway's ``R__x.sql``): no version of its own (``version`` is
    #: 0), applied after the versioned ones and again whenever its content changes.
    repeatable: bool = False


@attrs.frozen
class NewMigration:
    """What ``migsync new`` asks a format to write (:meth:`SourceFormat.new_files`)."""

    #: The version as it goes into the file name: ``"20261204203000"``, ``"0007"``, ``"1_3"``.
    version: str
    #: The description, slugged: ``add_users``.
    name: str
    #: Whether the folder keeps down scripts in files of their own (Flyway's ``U`` files,
    #: sqlx's ``.down.sql``); None when the folder is empty and says nothing.
    down: bool | None = None


@attrs.frozen
class Section:
    """One direction's SQL for one dialect, with where it came from."""

    direction: Direction
    sql: str
    dialect: str = ANY_DIALECT
    autocommit: bool = False
    path: Path | None = None
    line: int = 1


class SourceFormat:
    """Base class for migration file formats (see the module docstring).

    ``group``: formats of one group may share a folder; the built-in native and
    paired formats make the group ``"migsync"``, which a plugin's format joins
    unless it names a group of its own. Every other built-in format is a group
    by itself: a folder is in that format or it is not.
    """

    name: ClassVar[str] = ""
    #: Other names ``--format`` accepts for it (a tool's name: ``dbmate`` for ``native``).
    aliases: ClassVar[tuple[str, ...]] = ()
    group: ClassVar[str] = "migsync"
    #: File suffixes this format is responsible for. A file with one of these
    #: suffixes that no format matches is an error, not silently ignored.
    suffixes: ClassVar[tuple[str, ...]] = (".sql",)
    #: What a valid file name looks like, for error messages.
    pattern_help: ClassVar[str] = ""
    #: What :meth:`sniff` looks for, for error messages ("'-- migrate:up' markers").
    mark: ClassVar[str] = ""
    #: Its files live one folder down (``<migration>/migration.sql``, Prisma's layout):
    #: ``match`` is offered ``"<folder>/<file>"`` for the files of each sub-folder.
    nested: ClassVar[bool] = False

    def match(self, filename: str) -> FileName | None:
        """A :class:`FileName` if the name is one of this format's, else None.

        May raise :class:`~migsync.core.errors.SourceError` for a name that is
        unmistakably this format's but cannot be read (it refuses the folder).
        """
        raise NotImplementedError

    def sniff(self, file: FileName, data: bytes) -> bool | None:
        """Whether a file whose name this format claims is in this format, by its content.

        ``True``: it carries this format's own marks (dbmate's ``-- migrate:up``,
        goose's ``-- +goose Up``), or its name does (a dialect infix): the file is
        this format's, whatever else its name fits. ``False``: it is not (a file
        without the markers the format needs). ``None`` (the default): the content
        says nothing; then the format must read the file as one plain script, as
        any other format that gives it the same :class:`FileName` does.
        """
        return None

    def parse(self, file: FileName, text: str, path: Path) -> list[Section]:
        raise NotImplementedError

    def new_files(self, new: NewMigration) -> dict[str, str] | None:
        """The files of a new, empty migration, as the format's own tool writes them: each
        path relative to the folder (``<folder>/<file>`` for a nested format) and its text.

        Both directions where the format has them. None (the default): this format cannot
        author migrations (``migsync new`` says so).
        """
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
