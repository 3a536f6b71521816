"""``migsync export``: the published migrations as a drop folder, for clients that never reach the server.

::

    result = await export(store, Path("/media/usb/drop"))

Writes, into the folder (layout and formats in :mod:`migsync.transports.dropfiles`):

1. ``reports/<client-id>/`` for every registered client (the file-drop
   transport refuses a client whose folder is not there);
2. ``migrations/<file>`` for every published migration: a bundle holding its
   canonical content, checksum and signature;
3. ``manifest.json``, last, listing every published version, name, checksum and file.

Only what changed is written: a file that already holds the same bytes is
left alone, so running it again writes nothing. The manifest's
``generated_at`` is when the folder last changed: it is kept while the
manifest lists the same entries and no bundle was rewritten, so an export
that changes nothing leaves the manifest's bytes (and mtime) as they were.
Bundles of versions the store no longer lists are left in place but not
listed. Temporary files (``.tmp-*``) older than an hour, left by a writer
that crashed, are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from pathlib import Path

import attrs

from migsync.core.errors import ConfigError, MalformedAnswer
from migsync.core.wire import OfferedMigration
from migsync.server.records import PublishedMigration
from migsync.server.store import Store
from migsync.transports import dropfiles as files

#: A temporary file older than this (seconds) belongs to a writer that died: it is removed.
STALE_TEMP_AGE = 3600


@attrs.frozen
class ExportResult:
    """What :func:`export` did: names of the migrations whose bundle it wrote or left alone."""

    written: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    manifest_written: bool = False
    #: ``reports/<client-id>/`` folders it made (client ids)
    client_folders: tuple[str, ...] = ()
    #: stale temporary files it removed (paths)
    removed: tuple[str, ...] = ()


async def export(store: Store, to: Path) -> ExportResult:
    """Write every migration ``store`` publishes into drop folder ``to``; see the module docstring.

    ``to`` is made if missing, but not its parent (an unmounted stick must not
    become a folder on the local disk): a missing parent is :class:`FileNotFoundError`.
    """
    published = await store.migrations()
    clients = [str(c.client_id) for c in await store.clients()]
    return await asyncio.to_thread(_write_folder, published, clients, Path(to))


def _write_folder(published: list[PublishedMigration], clients: list[str], to: Path) -> ExportResult:
    entries = _entries(published)
    bundles = to / files.MIGRATIONS_DIR
    reports = to / files.REPORTS_DIR
    for folder in (to, bundles, reports):
        folder.mkdir(exist_ok=True)
    removed = [*_remove_stale_temps(to), *_remove_stale_temps(bundles)]
    made = []
    for client_id in clients:
        with contextlib.suppress(FileExistsError):
            (reports / files.check_client_id(client_id)).mkdir()
            made.append(client_id)
    written: list[str] = []
    unchanged: list[str] = []
    for item, entry in zip(published, entries, strict=True):
        offer = OfferedMigration(
            item.version,
            item.name,
            item.migration.canonical_content(),
            item.checksum,
            item.signature,
            item.signed_by,
        )
        changed = files.write_atomic(bundles / entry.file, files.dump(files.bundle_document(offer)))
        (written if changed else unchanged).append(item.name)
    previous = _previous_manifest(to)
    same = previous is not None and previous[0] == entries and not written
    generated_at = previous[1] if previous is not None and same else time.time()
    manifest = files.dump(files.manifest_document(entries, generated_at))
    manifest_written = files.write_atomic(to / files.MANIFEST, manifest)  # last: it names the rest
    return ExportResult(tuple(written), tuple(unchanged), manifest_written, tuple(made), tuple(removed))


def _entries(published: list[PublishedMigration]) -> list[files.ManifestEntry]:
    entries = []
    owners: dict[str, str] = {}
    for item in published:
        file = files.bundle_file(item.version, item.name)
        if file in owners:  # only names that mimic another version's number can get here
            raise ConfigError(
                f"migrations {owners[file]} and {item.name} would both be exported as {file}; "
                "rename one of them"
            )
        owners[file] = item.name
        entries.append(files.ManifestEntry(item.version, item.name, item.checksum, file))
    return entries


def _previous_manifest(to: Path) -> tuple[list[files.ManifestEntry], float] | None:
    """The entries and ``generated_at`` of the manifest already there, if it is a readable one."""
    where = str(to / files.MANIFEST)
    try:
        data = files.read_inside(to, files.MANIFEST, files.MAX_MANIFEST)
        entries = files.parse_manifest(data, where)
        generated_at = files.load(data, where).get("generated_at")
    except (OSError, MalformedAnswer):
        return None
    if not isinstance(generated_at, int | float) or isinstance(generated_at, bool):
        return None
    return entries, generated_at


def _remove_stale_temps(folder: Path) -> list[str]:
    removed = []
    cutoff = time.time() - STALE_TEMP_AGE
    for entry in os.scandir(folder):
        if not entry.name.startswith(files.TEMP_PREFIX):
            continue
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                os.unlink(entry.path)
                removed.append(entry.path)
    return removed
