"""``migsync import-reports``: the status reports and entity changes offline clients left in a
drop folder, into the store.

::

    result = await import_reports(store, Path("/media/usb/drop/reports"))
    result = await import_reports(store, Path("/media/usb/drop"))  # reports/ and changes/
    result = await import_reports(store, None, changes=Path("/srv/changes"))

``source`` is a reports folder: one ``<client-id>/`` folder per client (its
id in the store), each holding report files ``<milliseconds>-<digest>.json``
(formats in :mod:`migsync.transports.dropfiles`). A drop folder (one with a
``reports/`` or ``changes/`` folder in it) stands for both of those: its
reports, then its changes. ``changes`` names a changes folder of the same
layout explicitly (it wins over the drop folder's own).

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

A client's folder also holds its answers to the admin's requests
(``migsync-answers/1``, named like report files), imported in the same
oldest-first order: checked like the body of ``POST /api/actions/results``
(:func:`~migsync.server.validation.action_answers`), recorded with
:meth:`Store.record_answers`, and the file renamed ``NAME.imported``. Every
request it answers must be one made of that client: an answer to another
client's request, or to a request the store does not know, refuses the file
and nothing of it is recorded. Answers to requests that a newer imported
answers file answers are left out, as reports are.

Changes files (``migsync-changes/1``) are read with the same rules, checked
like the body of ``POST /api/changes`` (without its cap on their number) and
handed to :meth:`Store.receive_changes`, 1000 per transaction. A file is
renamed ``NAME.imported`` once every change in it is accepted or was stored
before. Order matters for changes: a file with a refused change (a schema
version never published) or that cannot be read is left in place with the
reason (naming the change), what came before the refused change stays
stored, and that client's newer changes files wait (they are reported, not
read) until it is imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from migsync.core.errors import ConfigError, MalformedAnswer
from migsync.core.version import Version
from migsync.protocol.wire import ActionResult, Drift, EntityChange, StatusReport
from migsync.server.store import Store
from migsync.server.validation import (
    MAX_CHANGES,
    MAX_REPORTS,
    InvalidChanges,
    InvalidReports,
    action_answers,
    entity_changes,
    status_reports,
)
from migsync.transports import dropfiles as files

#: The largest changes file read (bytes): changes carry rows.
MAX_CHANGES_FILE = 64 * 1024 * 1024
#: What a client's file of each format holds, in refusals
_WHAT = {files.REPORTS_FORMAT: "reports", files.ANSWERS_FORMAT: "answers", files.CHANGES_FORMAT: "changes"}


@attrs.frozen
class ImportedFile:
    """A report file whose reports are recorded."""

    #: where it was read (it is now at this path plus ``.imported``, unless ``not_marked``)
    path: Path
    recorded: tuple[Version, ...] = ()
    unchanged: tuple[Version, ...] = ()
    drift: tuple[Drift, ...] = ()
    #: versions left out because a newer imported file of the client reports them
    superseded: tuple[Version, ...] = ()
    #: why it could not be renamed (its reports are recorded all the same; the next import
    #: reads it again and changes nothing)
    not_marked: str | None = None


@attrs.frozen
class ImportedAnswers:
    """An answers file whose answers to the admin's requests are recorded."""

    #: where it was read (it is now at this path plus ``.imported``, unless ``not_marked``)
    path: Path
    #: ids of the requests whose answer is recorded (or was already)
    recorded: tuple[int, ...] = ()
    #: ids of the requests left out because a newer imported answers file answers them
    superseded: tuple[int, ...] = ()
    #: why it could not be renamed (its answers are recorded all the same)
    not_marked: str | None = None


@attrs.frozen
class ImportedChanges:
    """A changes file whose every change is stored (now, or before)."""

    #: where it was read (it is now at this path plus ``.imported``, unless ``not_marked``)
    path: Path
    #: ids of the changes stored now, and of those stored before
    accepted: tuple[str, ...] = ()
    duplicate: tuple[str, ...] = ()
    #: why it could not be renamed (the next import reads it again: all duplicates)
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
    #: changes files imported, refused (or waiting behind a refused one), and imported before
    changes_imported: tuple[ImportedChanges, ...] = ()
    changes_refused: tuple[RefusedFile, ...] = ()
    changes_already_imported: int = 0
    #: answers files imported (their refusals are in ``refused``, with the report files')
    answers_imported: tuple[ImportedAnswers, ...] = ()


class _Refusal(Exception):
    """Why one file is not imported."""


async def import_reports(store: Store, source: Path | None, *, changes: Path | None = None) -> ImportResult:
    """Record the reports in reports folder ``source`` (or drop folder ``source``'s reports and
    changes), and the changes in changes folder ``changes``; see the module docstring.

    A ``source`` or ``changes`` that is not a folder is a :class:`ConfigError`.
    """
    reports_folder, changes_folder = _sources(source, changes)
    registered = {str(c.client_id): c.client_id for c in await store.clients()}
    result = ImportResult()
    if reports_folder is not None:
        result = await _import_reports(store, reports_folder, registered)
    if changes_folder is not None:
        imported, refused, already = await _import_changes(store, changes_folder, registered)
        result = attrs.evolve(
            result, changes_imported=imported, changes_refused=refused, changes_already_imported=already
        )
    return result


def _sources(source: Path | None, changes: Path | None) -> tuple[Path | None, Path | None]:
    """The reports folder and the changes folder to import (either may be None)."""
    reports_folder: Path | None = None
    changes_folder = None if changes is None else Path(changes)
    if source is not None:
        source = Path(source)
        reports_in, changes_in = source / files.REPORTS_DIR, source / files.CHANGES_DIR
        # A drop folder: no client's id is "reports" or "changes" (ids are numbers).
        if reports_in.is_dir() or changes_in.is_dir():
            reports_folder = reports_in if reports_in.is_dir() else None
            if changes_folder is None and changes_in.is_dir():
                changes_folder = changes_in
        elif source.is_dir():
            reports_folder = source
        else:
            raise ConfigError(f"{source} is not a folder of client reports")
    elif changes_folder is None:
        raise ConfigError("nothing to import: name a reports folder, a drop folder or a changes folder")
    if changes_folder is not None and not changes_folder.is_dir():
        raise ConfigError(f"{changes_folder} is not a folder of client changes")
    return reports_folder, changes_folder


async def _import_reports(store: Store, source: Path, registered: dict[str, int]) -> ImportResult:
    published = {m.version for m in await store.migrations()}
    folders, refused = await asyncio.to_thread(_client_folders, source, "reports")
    imported: list[ImportedFile] = []
    answered: list[ImportedAnswers] = []
    already = 0
    for folder in folders:
        pending, done, misnamed = await asyncio.to_thread(_listing, folder, "report")
        already += len(done)
        refused += misnamed
        client_id = registered.get(folder.name)
        if client_id is None:
            reason = f"no registered client has id {folder.name!r} (see 'migsync clients list')"
            refused += [RefusedFile(folder / name, reason) for name in pending]
            continue
        requests: set[int] | None = None  # ids of the requests made of this client, once needed
        for name in pending:
            try:
                reports, answers = await asyncio.to_thread(_read_any, folder, name)
                if answers is not None:
                    if requests is None:
                        requests = {r.id for r in await store.actions(client_id)}
                    await _check_answered(store, client_id, answers, requests)
                    covered = await asyncio.to_thread(_covered_by_newer, folder, name, done)
                    path = folder / name
                    answered.append(await _record_answers(store, client_id, path, answers, covered[1]))
                    continue
                unpublished = sorted({r.version for r in reports} - published)
                if unpublished:
                    raise _Refusal(_unpublished(unpublished))
                covered = await asyncio.to_thread(_covered_by_newer, folder, name, done)
                done_file = await _record(store, client_id, folder / name, reports, covered[0])
            except FileNotFoundError:
                continue  # gone since the listing: another import took it
            except _Refusal as exc:
                refused.append(RefusedFile(folder / name, str(exc)))
                continue
            imported.append(done_file)
    return ImportResult(tuple(imported), tuple(refused), already, answers_imported=tuple(answered))


def _client_folders(source: Path, kind: str) -> tuple[list[Path], list[RefusedFile]]:
    folders: list[Path] = []
    refused: list[RefusedFile] = []
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            refused.append(RefusedFile(path, "a symlink; a client's folder must be a real folder"))
        elif not entry.is_dir():
            refused.append(RefusedFile(path, f"not a client's folder ({kind} go in <client-id>/)"))
        else:
            try:
                files.check_client_id(entry.name)
            except ValueError as exc:
                refused.append(RefusedFile(path, str(exc)))
                continue
            folders.append(path)
    return folders, refused


def _listing(folder: Path, kind: str) -> tuple[list[str], list[str], list[RefusedFile]]:
    """The ``kind`` files to import (oldest first), those imported before, and misnamed entries.

    Report and changes files are named alike: ``<milliseconds>-<digest>.json``.
    """
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
            reason = f"not a {kind} file: {kind} files are named <milliseconds>-<digest>.json"
            misnamed.append(RefusedFile(folder / name, reason))
    return sorted(pending), sorted(done), misnamed


def _read_any(folder: Path, name: str) -> tuple[list[StatusReport], list[ActionResult] | None]:
    """The reports in report file ``folder/name``, or the answers in answers file ``folder/name``
    (then the reports are none), checked; :class:`_Refusal` says why they cannot be imported."""
    formats = (files.REPORTS_FORMAT, files.ANSWERS_FORMAT)
    document = _read_client_file(folder, name, files.MAX_REPORT_FILE, formats)
    try:
        if files.is_format(document, files.ANSWERS_FORMAT):
            return [], action_answers({"results": document.get("results")})
        return status_reports({"reports": document.get("reports")}, max_reports=None), None
    except InvalidReports as exc:
        raise _Refusal(str(exc)) from None


def _read_client_file(folder: Path, name: str, limit: int, format_: str | tuple[str, ...]) -> dict[str, Any]:
    """The document of a client's file ``folder/name``, which must be of that client (its folder)."""
    where = str(folder / name)
    try:
        data = files.read_inside(folder, name, limit)
        client_id, document = files.parse_client_file(data, where, format_)
    except FileNotFoundError:
        if os.path.islink(where):
            raise _Refusal("a symlink that leads nowhere") from None
        raise
    except MalformedAnswer as exc:  # symlink loops and escapes included (read_inside says so)
        raise _Refusal(str(exc).removeprefix(f"{where}: ")) from None
    except OSError as exc:
        raise _Refusal(f"cannot read it: {exc.strerror or exc}") from None
    if client_id != folder.name:
        what = _WHAT[document["format"]]
        raise _Refusal(f"it holds {what} of client {client_id!r}, not of {folder.name!r} (its folder)")
    return document


def _covered_by_newer(folder: Path, name: str, done: list[str]) -> tuple[set[Version], set[int]]:
    """Versions that report files, and request ids that answers files, imported before and newer
    than ``name`` hold."""
    versions: set[Version] = set()
    requests: set[int] = set()
    for imported in done:
        if imported.removesuffix(files.IMPORTED_SUFFIX) > name:
            with contextlib.suppress(FileNotFoundError, _Refusal):  # it was fine when it was imported
                reports, answers = _read_any(folder, imported)
                versions |= {r.version for r in reports}
                requests |= {a.id for a in answers or ()}
    return versions, requests


async def _record(
    store: Store, client_id: int, path: Path, reports: list[StatusReport], covered: set[Version]
) -> ImportedFile:
    kept = [r for r in reports if r.version not in covered]
    recorded: list[Version] = []
    unchanged: list[Version] = []
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


async def _check_answered(
    store: Store, client_id: int, answers: list[ActionResult], requests: set[int]
) -> None:
    """Every answer must be to a request made of ``client_id`` (ids in ``requests``)."""
    strays = sorted({a.id for a in answers} - requests)
    if not strays:
        return
    owners = {r.id: r.client_name for r in await store.actions()}
    foreign = [f"{i} (made of client {owners[i]!r})" for i in strays if i in owners]
    unknown = [str(i) for i in strays if i not in owners]
    reasons = []
    if foreign:
        reasons.append(f"it answers requests to another client: {', '.join(foreign)}")
    if unknown:
        reasons.append(f"it answers requests this store does not know: {', '.join(unknown)}")
    raise _Refusal("; ".join(reasons) + "; nothing of it was recorded")


async def _record_answers(
    store: Store, client_id: int, path: Path, answers: list[ActionResult], covered: set[int]
) -> ImportedAnswers:
    kept = [a for a in answers if a.id not in covered]
    ack, _ = await store.record_answers(client_id, kept)
    if ack.unknown:  # checked before; only a store changed under the import could get here
        listed = ", ".join(map(str, ack.unknown))
        raise _Refusal(f"requests {listed} are not this client's any more; the other answers are recorded")
    not_marked = await asyncio.to_thread(_mark_imported, path)
    superseded = tuple(sorted(a.id for a in answers if a.id in covered))
    return ImportedAnswers(path, ack.recorded, superseded, not_marked)


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


# -- changes -----------------------------------------------------------------------------------------


async def _import_changes(
    store: Store, source: Path, registered: dict[str, int]
) -> tuple[tuple[ImportedChanges, ...], tuple[RefusedFile, ...], int]:
    folders, refused = await asyncio.to_thread(_client_folders, source, "changes")
    imported: list[ImportedChanges] = []
    already = 0
    for folder in folders:
        pending, done, misnamed = await asyncio.to_thread(_listing, folder, "changes")
        already += len(done)
        refused += misnamed
        client_id = registered.get(folder.name)
        if client_id is None:
            reason = f"no registered client has id {folder.name!r} (see 'migsync clients list')"
            refused += [RefusedFile(folder / name, reason) for name in pending]
            continue
        blocked: str | None = None
        for name in pending:
            path = folder / name
            if blocked is not None:
                refused.append(
                    RefusedFile(
                        path,
                        f"not read: an older changes file of this client, {blocked}, is not imported "
                        "(changes are taken in order)",
                    )
                )
                continue
            try:
                changes = await asyncio.to_thread(_read_changes, folder, name)
                imported.append(await _receive(store, client_id, path, changes))
            except FileNotFoundError:
                continue  # gone since the listing: another import took it
            except _Refusal as exc:
                refused.append(RefusedFile(path, str(exc)))
                blocked = name
    return tuple(imported), tuple(refused), already


def _read_changes(folder: Path, name: str) -> list[EntityChange]:
    """The changes in ``folder/name``, checked; :class:`_Refusal` says why they cannot be imported."""
    document = _read_client_file(folder, name, MAX_CHANGES_FILE, files.CHANGES_FORMAT)
    try:
        return entity_changes({"changes": document.get("changes")}, max_changes=None)
    except InvalidChanges as exc:
        raise _Refusal(str(exc)) from None


async def _receive(store: Store, client_id: int, path: Path, changes: list[EntityChange]) -> ImportedChanges:
    accepted: list[str] = []
    duplicate: list[str] = []
    # One transaction per MAX_CHANGES, as the HTTP API takes them. A failure half-way leaves the
    # file in place; importing it again finds what was stored as duplicates.
    for start in range(0, len(changes), MAX_CHANGES):
        ack = await store.receive_changes(client_id, changes[start : start + MAX_CHANGES])
        accepted += ack.accepted
        duplicate += ack.duplicate
        if ack.refused is not None:
            stored = len(accepted) + len(duplicate)
            raise _Refusal(
                f"change {ack.refused.id!r} is refused: {ack.refused.reason}; the {stored} change"
                f"{'' if stored == 1 else 's'} before it {'is' if stored == 1 else 'are'} stored, "
                "the rest of the file is not"
            )
    not_marked = await asyncio.to_thread(_mark_imported, path)
    return ImportedChanges(path, tuple(accepted), tuple(duplicate), not_marked)


def _unpublished(versions: Sequence[Version]) -> str:
    listed = ", ".join(str(v) for v in versions)
    many = len(versions) > 1
    return (
        f"version{'s' if many else ''} {listed} {'are' if many else 'is'} not published in this store; "
        "nothing of it was recorded"
    )
