"""``migsync import-reports``: the status reports offline clients left in a drop folder, into the store.

::

    result = await import_reports(store, Path("/media/usb/drop/reports"))

``source`` is a reports folder: one ``<client-id>/`` folder per client (its
id in the store), each holding report files ``<milliseconds>-<digest>.json``
(formats in :mod:`migsync.transports.dropfiles`). A drop folder (one with a
``reports/`` folder in it) stands for that folder.

Each client's files are imported oldest first. A file's reports are checked
like the body of ``POST /api/migrations/status`` (:mod:`migsync.server.validation`,
with no cap on their number: the file's size is capped), recorded with
:meth:`Store.report`, and the file is renamed to ``NAME.imported``, so
importing the same folder again changes nothing.

Everything in the folder is untrusted. A file is refused, and left where it
is, when it cannot be read safely (a symlink out of its client's folder, not a
regular file, over :data:`~migsync.transports.dropfiles.MAX_REPORT_FILE`), is not
a report file, names another client than its folder, holds malformed reports,
or reports a version the store has not published; the rest of the folder is
still imported. A folder whose name is not a registered client's id has each
of its files refused. Hidden entries (names starting with ``.``, such as a
writer's temporary files) are ignored.

A file imported after a newer one of the same client (it was refused at
first, then a missing version was published) does not undo what the newer
one said: its reports for versions a newer imported file covers are left out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import attrs

from migsync.core.errors import ConfigError, MalformedAnswer
from migsync.core.wire import Drift, StatusReport
from migsync.server.store import Store
from migsync.server.validation import MAX_REPORTS, InvalidReports, status_reports
from migsync.transports import dropfiles as files


@attrs.frozen
class ImportedFile:
    """A report file whose reports are recorded."""

    #: where it was read (it is now at this path plus ``.imported``, unless ``not_marked``)
    path: Path
    recorded: tuple[int, ...] = ()
    unchanged: tuple[int, ...] = ()
    drift: tuple[Drift, ...] = ()
    #: versions left out because a newer imported file of the client reports them
    superseded: tuple[int, ...] = ()
    #: why it could not be renamed (its reports are recorded all the same; the next import
    #: reads it again and changes nothing)
    not_marked: str | None = None


@attrs.frozen
class RefusedFile:
    """A file (or folder) that was not imported, left where it is, and why."""

    path: Path
    reason: str


@attrs.frozen
class ImportResult:
    imported: tuple[ImportedFile, ...] = ()
    refused: tuple[RefusedFile, ...] = ()
    #: report files found already imported (``.imported``), left alone
    already_imported: int = 0


class _Refusal(Exception):
    """Why one file is not imported."""


async def import_reports(store: Store, source: Path) -> ImportResult:
    """Record the reports in reports folder ``source``; see the module docstring.

    A ``source`` that is not a folder is a :class:`ConfigError`.
    """
    source = Path(source)
    if (source / files.REPORTS_DIR).is_dir():  # a drop folder: no client's id is "reports"
        source = source / files.REPORTS_DIR
    if not source.is_dir():
        raise ConfigError(f"{source} is not a folder of client reports")
    registered = {str(c.client_id): c.client_id for c in await store.clients()}
    published = {m.version for m in await store.migrations()}
    folders, refused = await asyncio.to_thread(_client_folders, source)
    imported: list[ImportedFile] = []
    already = 0
    for folder in folders:
        pending, done, misnamed = await asyncio.to_thread(_listing, folder)
        already += len(done)
        refused += misnamed
        client_id = registered.get(folder.name)
        if client_id is None:
            reason = f"no registered client has id {folder.name!r} (see 'migsync clients list')"
            refused += [RefusedFile(folder / name, reason) for name in pending]
            continue
        for name in pending:
            try:
                reports = await asyncio.to_thread(_read, folder, name)
                unpublished = sorted({r.version for r in reports} - published)
                if unpublished:
                    raise _Refusal(_unpublished(unpublished))
                covered = await asyncio.to_thread(_covered_by_newer, folder, name, done)
                done_file = await _record(store, client_id, folder / name, reports, covered)
            except FileNotFoundError:
                continue  # gone since the listing: another import took it
            except _Refusal as exc:
                refused.append(RefusedFile(folder / name, str(exc)))
                continue
            imported.append(done_file)
    return ImportResult(tuple(imported), tuple(refused), already)


def _client_folders(source: Path) -> tuple[list[Path], list[RefusedFile]]:
    folders: list[Path] = []
    refused: list[RefusedFile] = []
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            refused.append(RefusedFile(path, "a symlink; a client's folder must be a real folder"))
        elif not entry.is_dir():
            refused.append(RefusedFile(path, "not a client's folder (reports go in <client-id>/)"))
        else:
            try:
                files.check_client_id(entry.name)
            except ValueError as exc:
                refused.append(RefusedFile(path, str(exc)))
                continue
            folders.append(path)
    return folders, refused


def _listing(folder: Path) -> tuple[list[str], list[str], list[RefusedFile]]:
    """The report files to import (oldest first), those imported before, and misnamed entries."""
    pending: list[str] = []
    done: list[str] = []
    misnamed: list[RefusedFile] = []
    for entry in os.scandir(folder):
        name = entry.name
        if name.startswith("."):
            continue
        if files.REPORT_NAME.fullmatch(name):
            pending.append(name)
        elif name.endswith(files.IMPORTED_SUFFIX) and files.REPORT_NAME.fullmatch(
            name.removesuffix(files.IMPORTED_SUFFIX)
        ):
            done.append(name)
        else:
            reason = "not a report file: report files are named <milliseconds>-<digest>.json"
            misnamed.append(RefusedFile(folder / name, reason))
    return sorted(pending), sorted(done), misnamed


def _read(folder: Path, name: str) -> list[StatusReport]:
    """The reports in ``folder/name``, checked; :class:`_Refusal` says why they cannot be imported."""
    where = str(folder / name)
    try:
        data = files.read_inside(folder, name, files.MAX_REPORT_FILE)
        client_id, document = files.parse_reports(data, where)
    except FileNotFoundError:
        if os.path.islink(where):
            raise _Refusal("a symlink that leads nowhere") from None
        raise
    except MalformedAnswer as exc:
        raise _Refusal(str(exc).removeprefix(f"{where}: ")) from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: Python 3.11's Path.resolve on a symlink loop
        raise _Refusal(f"cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    if client_id != folder.name:
        raise _Refusal(f"it holds reports of client {client_id!r}, not of {folder.name!r} (its folder)")
    try:
        return status_reports({"reports": document.get("reports")}, max_reports=None)
    except InvalidReports as exc:
        raise _Refusal(str(exc)) from None


def _covered_by_newer(folder: Path, name: str, done: list[str]) -> set[int]:
    """Versions that files imported before and newer than ``name`` report."""
    covered: set[int] = set()
    for imported in done:
        if imported.removesuffix(files.IMPORTED_SUFFIX) > name:
            with contextlib.suppress(FileNotFoundError, _Refusal):  # it was fine when it was imported
                covered |= {r.version for r in _read(folder, imported)}
    return covered


async def _record(
    store: Store, client_id: int, path: Path, reports: list[StatusReport], covered: set[int]
) -> ImportedFile:
    kept = [r for r in reports if r.version not in covered]
    recorded: list[int] = []
    unchanged: list[int] = []
    drift: list[Drift] = []
    # One transaction per MAX_REPORTS, as the HTTP API takes them: a file has no cap on their
    # number. A failure half-way leaves the file in place; importing it again is idempotent.
    for start in range(0, max(len(kept), 1), MAX_REPORTS):
        result = await store.report(client_id, kept[start : start + MAX_REPORTS])
        if result.unpublished:  # checked before; only an unpublish could get here
            raise _Refusal(_unpublished(result.unpublished))
        recorded += result.recorded
        unchanged += result.unchanged
        drift += result.drift
    not_marked = await asyncio.to_thread(_mark_imported, path)
    superseded = tuple(sorted(r.version for r in reports if r.version in covered))
    return ImportedFile(path, tuple(recorded), tuple(unchanged), tuple(drift), superseded, not_marked)


def _mark_imported(path: Path) -> str | None:
    """Rename ``path`` to ``path.imported``; the reason it could not, or None."""
    target = path.with_name(path.name + files.IMPORTED_SUFFIX)
    try:
        os.replace(path, target)
        if os.name == "posix":
            files.fsync_dir(path.parent)
    except FileNotFoundError:
        if not target.exists():
            return f"it disappeared before it could be renamed to {target.name}"
    except OSError as exc:
        return f"cannot rename it to {target.name}: {exc.strerror or exc}"
    return None


def _unpublished(versions: list[int] | tuple[int, ...]) -> str:
    listed = ", ".join(str(v) for v in versions)
    many = len(versions) > 1
    return (
        f"version{'s' if many else ''} {listed} {'are' if many else 'is'} not published in this store; "
        "nothing of it was recorded"
    )
