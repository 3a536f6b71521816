"""``migsync export``: the published migrations as a drop folder, for clients that never reach the server.

::

    result = await export(store, Path("/media/usb/drop"))

Writes, into the folder (layout and formats in :mod:`migsync.transports.dropfiles`):

1. ``reports/<client-id>/`` for every registered client (the file-drop
   transport refuses a client whose folder is not there);
2. ``migrations/<file>`` for every published migration: a bundle holding its
   canonical content, checksum and signature;
3. ``actions/<client-id>.json`` for every client with requests it has not
   answered (``pending`` in the store, exactly what the HTTP API would offer
   it), by id, each signed for that client with the request key (anyone who
   can write to the folder could write requests; a client carries out only
   signed ones); the
   file of a client with none is removed, so an answer imported with
   ``import-reports`` takes its request out of the folder at the next export.
   Without a request key ``actions/`` is left as it is, and the result names
   the clients whose requests wait for a signed export;
4. ``manifest.json``, last, listing every published version, name, checksum and file,
   with the store's signed manifest (``"signed"``, written by ``publish``): the
   listing only tells a client where the files are, the signed part what exists.

Only what changed is written: a file that already holds the same bytes is
left alone, so running it again writes nothing. The manifest's
``generated_at`` is when the folder last changed: it is kept while the
manifest lists the same entries and no bundle was rewritten, so an export
that changes nothing leaves the manifest's bytes (and mtime) as they were.
Bundles of versions the store no longer lists are left in place but not
listed. Temporary files (``.tmp-*``) older than an hour, left by a writer
that crashed, are removed. ``actions/`` is made only when a client has a
request; files in it that are not named like a client's requests file are
left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from migsync.core.errors import ConfigError, MalformedAnswer
from migsync.protocol.wire import ActionRequest, OfferedMigration, SignedManifest
from migsync.server.records import PublishedMigration
from migsync.server.store import Store
from migsync.transports import dropfiles as files

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
    #: clients whose requests file ``actions/<client-id>.json`` it wrote (new or changed)
    actions_written: tuple[str, ...] = ()
    #: clients whose requests file it removed (no request of theirs is pending any more)
    actions_removed: tuple[str, ...] = ()
    #: clients with pending requests it did not write, for want of a request key
    actions_unsigned: tuple[str, ...] = ()
    #: the store has no signed manifest (published before this release): clients refuse the folder
    #: until 'migsync publish' runs again
    manifest_unsigned: bool = False


async def export(store: Store, to: Path, request_key: Ed25519PrivateKey | None = None) -> ExportResult:
    """Write every migration ``store`` publishes into drop folder ``to``; see the module docstring.

    ``request_key`` signs the admin's pending requests to each client (without it they are not
    written: see :attr:`ExportResult.actions_unsigned`).

    ``to`` is made if missing, but not its parent (an unmounted stick must not
    become a folder on the local disk): a missing parent is :class:`FileNotFoundError`.
    """
    published = await store.migrations()
    signed_manifest = await store.manifest()
    registered = await store.clients()
    clients = [str(c.client_id) for c in registered]
    # The same requests the HTTP API offers each client's poll, read for all clients at once.
    pending = await store.pending_actions_by_client()
    requests = {str(c.client_id): pending.get(c.client_id, []) for c in registered}
    if request_key is None:
        unsigned = tuple(client_id for client_id, items in requests.items() if items)
        result = await asyncio.to_thread(_write_folder, published, signed_manifest, clients, None, Path(to))
        return attrs.evolve(result, actions_unsigned=unsigned, manifest_unsigned=signed_manifest is None)
    from migsync.protocol.signing import sign_request

    signed = {
        client_id: [sign_request(request_key, r, client_id) for r in items]
        for client_id, items in requests.items()
    }
    result = await asyncio.to_thread(_write_folder, published, signed_manifest, clients, signed, Path(to))
    return attrs.evolve(result, manifest_unsigned=signed_manifest is None)


def _write_folder(
    published: list[PublishedMigration],
    signed_manifest: SignedManifest | None,
    clients: list[str],
    requests: dict[str, list[ActionRequest]] | None,
    to: Path,
) -> ExportResult:
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
    actions_written: list[str] = []
    actions_removed: list[str] = []
    if requests is not None:  # None: no signing key, the requests are left as they are
        actions_written, actions_removed, stale = _write_requests(to, requests)
        removed += stale
    previous = _previous_manifest(to)
    same = previous is not None and previous[0] == entries and not written
    generated_at = previous[1] if previous is not None and same else time.time()
    manifest = files.dump(files.manifest_document(entries, generated_at, signed_manifest))
    manifest_written = files.write_atomic(to / files.MANIFEST, manifest)  # last: it names the rest
    return ExportResult(
        tuple(written),
        tuple(unchanged),
        manifest_written,
        tuple(made),
        tuple(removed),
        tuple(actions_written),
        tuple(actions_removed),
    )


def _write_requests(
    to: Path, requests: dict[str, list[ActionRequest]]
) -> tuple[list[str], list[str], list[str]]:
    """Write ``actions/<client-id>.json`` for each client with requests, remove the others';
    the clients whose file was written, those whose file was removed, and stale temporary files."""
    folder = to / files.ACTIONS_DIR
    pending = {client_id: items for client_id, items in requests.items() if items}
    written: list[str] = []
    removed: list[str] = []
    if pending:
        folder.mkdir(exist_ok=True)
    if not folder.is_dir():
        return written, removed, []
    stale = _remove_stale_temps(folder)
    for client_id, items in sorted(pending.items()):
        data = files.dump(files.actions_document(client_id, items))
        if files.write_atomic(to / files.actions_file(client_id), data):
            written.append(client_id)
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        match = files.ACTIONS_NAME.fullmatch(entry.name)
        if match is None or match["client"] in pending or entry.is_dir(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):  # gone already: another export took it
            os.unlink(entry.path)
            removed.append(match["client"])
    if removed:
        files.fsync_dir(folder)
    return written, removed, stale


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
