"""The files of a drop folder: their layout, their formats, and how they are written and read.

A drop folder carries migrations to clients that never reach the server
(a USB stick, a synced folder, a network share), and their reports back::

    DIR/manifest.json                       what is published: versions, names, checksums, files,
                                            and the server's signed manifest ("signed")
    DIR/migrations/0001_create_users.json   one signed bundle per migration
    DIR/actions/<client-id>.json            the admin's requests to a client it has not answered
    DIR/reports/<client-id>/<time>-<digest>.json   one file per delivery of a client's reports,
                                                    or of its answers to the admin's requests
    DIR/changes/<client-id>/<time>-<digest>.json   one file per batch of a client's entity changes

A client's answers to requests (``migsync-answers/1``) are a file kind of their
own, beside its report files and named alike, rather than a key of the report
format: ``import-reports`` of a release that knows no answers refuses such a
file (not a report file) and leaves it in place, where a new key in a report
file would be imported without it and the file marked imported, the answers lost.

Writers (``migsync export``, the client's report delivery) write every file
atomically: a temporary file in the same folder (named ``.tmp-*``, which
readers never list), flushed and fsynced, then renamed over its final name,
then the folder fsynced. A reader sees a whole file or none. The manifest is
written last, so a reader that reads it finds every bundle it names, unless
a copy tool (rsync, a sync client) delivers them out of order: a bundle the
manifest names but that is not there yet is "not arrived", never an error.

Readers treat everything as untrusted: names must match a strict pattern (no
path separators, no ``..``), files must be regular files whose real path is
inside the folder (a symlink out of it is refused), and sizes are capped.
Signatures are checked by the client, not here (:mod:`migsync.protocol.verify`,
:mod:`migsync.protocol.manifest`): the listing of ``manifest.json`` only says which
file holds which version; what exists is what the signed part lists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from migsync.core.errors import MalformedAnswer
from migsync.core.files import UnreadableFile, read_regular
from migsync.core.version import Version, as_version
from migsync.protocol.wire import (
    CHECKSUM,
    ActionRequest,
    ActionResult,
    EntityChange,
    OfferedMigration,
    SignedManifest,
    StatusReport,
    actions_from_json,
    read_version,
    signed_from_json,
)

MANIFEST = "manifest.json"
MIGRATIONS_DIR = "migrations"
REPORTS_DIR = "reports"
# Version 2 of every file carries versions as strings (wire protocol 2). A file of version 1
# (whole numbers) that an older release wrote is still read; an older release refuses these.
MANIFEST_FORMAT = "migsync-manifest/2"
BUNDLE_FORMAT = "migsync-bundle/2"
REPORTS_FORMAT = "migsync-reports/2"
CHANGES_DIR = "changes"
CHANGES_FORMAT = "migsync-changes/2"
ACTIONS_DIR = "actions"
ACTIONS_FORMAT = "migsync-actions/2"
ANSWERS_FORMAT = "migsync-answers/2"


def is_format(document: dict[str, Any], written: str) -> bool:
    """Whether ``document`` is of the format this release writes as ``written``, or its version 1."""
    found = document.get("format")
    return found == written or found == written.replace("/2", "/1")


#: what each format of a client's file is called in messages
_CLIENT_FILES = {
    REPORTS_FORMAT: "report file",
    CHANGES_FORMAT: "changes file",
    ANSWERS_FORMAT: "answers file",
}
#: the suffix ``migsync import-reports`` gives a report file it has imported
IMPORTED_SUFFIX = ".imported"

#: Largest manifest, bundle and report file read (bytes).
MAX_MANIFEST = 16 * 1024 * 1024
MAX_BUNDLE = 4 * 1024 * 1024
MAX_REPORT_FILE = 4 * 1024 * 1024
#: Largest requests file read (bytes): a client has one pending request at a time, as a rule.
MAX_ACTIONS_FILE = 1024 * 1024
#: The most answers one answers file holds: as many as the HTTP API takes in one request
#: (``migsync.server.validation.MAX_REPORTS``), so the importer checks a file as one request.
MAX_ANSWERS = 1000

#: ``<version>[_<description>].json``; a version may be dotted (Flyway's ``1.1.json``)
BUNDLE_NAME = re.compile(r"[0-9]+(?:\.[0-9]+)*(_[A-Za-z0-9_.-]{1,200})?\.json")
REPORT_NAME = re.compile(r"[0-9]{13,}-(?P<digest>[0-9a-f]{16})\.json")
CLIENT_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
ACTIONS_NAME = re.compile(rf"(?P<client>{CLIENT_ID.pattern})\.json")
TEMP_PREFIX = ".tmp-"


def bundle_file(version: Version, name: str) -> str:
    """The file name of a migration's bundle: its name when that is a plain file name, else its version."""
    file = f"{name}.json"
    prefix = name.partition("_")[0]
    return (
        file
        if BUNDLE_NAME.fullmatch(file) and prefix.isdigit() and int(prefix) == version
        else f"{version.text}.json"
    )


def check_client_id(client_id: str) -> str:
    """``client_id`` if it is safe as one folder name (letters, digits, ``_ - .``; not ``.``/``..``)."""
    if not CLIENT_ID.fullmatch(client_id) or client_id in (".", ".."):
        raise ValueError(
            f"client id {client_id!r} cannot name a reports folder: use letters, digits, '_', '-' and '.'"
        )
    return client_id


# -- writing -------------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` all at once (temporary file, fsync, rename, fsync of the folder).

    Returns False, writing nothing, when ``path`` already holds exactly ``data``.
    """
    with contextlib.suppress(OSError):  # not there, or not a file to keep: write it
        if read_regular(path, limit=len(data), follow_symlinks=False) == data:
            return False
    temp = path.with_name(f"{TEMP_PREFIX}{secrets.token_hex(8)}-{path.name}")
    try:
        with open(temp, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_dir(path.parent)
    return True


def fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def dump(document: dict[str, Any]) -> bytes:
    """The bytes a drop file holds: JSON with sorted keys, so equal documents are equal files."""
    return (json.dumps(document, sort_keys=True, indent=1) + "\n").encode()


# -- reading -------------------------------------------------------------------------------------


def read_inside(root: Path, relative: str, limit: int) -> bytes:
    """The bytes of ``root/relative``, refused unless it is a regular file inside ``root``.

    Raises :class:`FileNotFoundError` when it is not there (yet), :class:`MalformedAnswer`
    for a file that must not be read (outside the folder, a symlink loop, not a regular
    file, too big), other :class:`OSError`\\ s (no permission) as they come. Never blocks
    on a FIFO or a device (:func:`migsync.core.files.read_regular`).
    """
    path = root / relative
    try:
        real_root = root.resolve()
        real = path.resolve()
    except RuntimeError:  # a symlink loop (before Python 3.13; 3.13 leaves it to the open)
        raise MalformedAnswer(f"{path}: a symlink loop; refusing to read it") from None
    if real != real_root and real_root not in real.parents:
        raise MalformedAnswer(f"{path}: it leads outside {root} (a symlink?); refusing to read it")
    try:
        # ``real`` has no symlink left in it: one there now was put there since, so refuse it.
        return read_regular(real, limit=limit, follow_symlinks=False)
    except UnreadableFile as exc:
        raise MalformedAnswer(f"{path}: {exc.strerror}") from None


def load(data: bytes, where: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedAnswer(f"{where}: not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise MalformedAnswer(f"{where}: expected a JSON object")
    return document


# -- the manifest ----------------------------------------------------------------------------------


@attrs.frozen
class ManifestEntry:
    version: Version = attrs.field(converter=as_version)
    name: str
    checksum: str
    file: str


def manifest_document(
    entries: Sequence[ManifestEntry], generated_at: float, signed: SignedManifest | None = None
) -> dict[str, Any]:
    """The folder's manifest: where each bundle is, and (``"signed"``) the server's signed list of
    every published version, copied as the store holds it (:mod:`migsync.protocol.manifest`). The
    listing only says where files are; the client trusts the signed part alone."""
    document: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "generated_at": generated_at,
        "migrations": [{**attrs.asdict(e), "version": e.version.text} for e in entries],
    }
    if signed is not None:
        document["signed"] = signed.to_json()
    return document


def parse_manifest(data: bytes, where: str) -> list[ManifestEntry]:
    """The entries of a folder's manifest, each file it names."""
    return _entries(load(data, where), where)


def parse_signed_manifest(data: bytes, where: str) -> tuple[list[ManifestEntry], SignedManifest | None]:
    """A folder's manifest read once: its entries, and the signed manifest it carries (None:
    none, which the client refuses)."""
    document = load(data, where)
    return _entries(document, where), signed_from_json(document.get("signed"), f"{where}: signed")


def _entries(document: dict[str, Any], where: str) -> list[ManifestEntry]:
    if not is_format(document, MANIFEST_FORMAT):
        raise MalformedAnswer(f"{where}: not a migsync manifest (format {document.get('format')!r})")
    items = document.get("migrations")
    if not isinstance(items, list):
        raise MalformedAnswer(f"{where}: 'migrations' is not a list")
    entries = []
    for index, item in enumerate(items):
        at = f"{where}: migrations[{index}]"
        if not isinstance(item, dict):
            raise MalformedAnswer(f"{at} is not an object")
        name, checksum, file = (item.get(k) for k in ("name", "checksum", "file"))
        version = read_version(item.get("version"))
        if version is None:
            raise MalformedAnswer(f"{at}.version is not a version")
        if not isinstance(name, str) or not isinstance(checksum, str) or not CHECKSUM.fullmatch(checksum):
            raise MalformedAnswer(f"{at}: name or checksum missing or malformed")
        if not isinstance(file, str) or not BUNDLE_NAME.fullmatch(file):
            raise MalformedAnswer(f"{at}.file {file!r} is not a bundle file name (no folders, no '..')")
        entries.append(ManifestEntry(version, name, checksum, file))
    versions = [e.version for e in entries]
    if versions != sorted(set(versions)):
        raise MalformedAnswer(f"{where}: versions are not in strictly increasing order")
    return entries


# -- bundles ---------------------------------------------------------------------------------------


def bundle_document(offer: OfferedMigration) -> dict[str, Any]:
    return {"format": BUNDLE_FORMAT, **offer.to_json()}


def parse_bundle(data: bytes, where: str, entry: ManifestEntry) -> OfferedMigration:
    """The offer a bundle holds; it must be the one the manifest names. Not verified here."""
    document = load(data, where)
    if not is_format(document, BUNDLE_FORMAT):
        raise MalformedAnswer(f"{where}: not a migsync bundle (format {document.get('format')!r})")
    fields = {
        k: document.get(k) for k in ("version", "name", "content", "checksum", "signature", "signed_by")
    }
    if not isinstance(fields["content"], str) or not isinstance(fields["checksum"], str):
        raise MalformedAnswer(f"{where}: 'content' and 'checksum' must be strings")
    for key in ("signature", "signed_by"):
        if fields[key] is not None and not isinstance(fields[key], str):
            raise MalformedAnswer(f"{where}: '{key}' must be a string or null")
    held = (read_version(fields["version"]), fields["name"], fields["checksum"])
    if held != (entry.version, entry.name, entry.checksum):
        raise MalformedAnswer(
            f"{where}: it holds {fields['name']!r} (version {fields['version']!r}), "
            f"not what the manifest lists ({entry.name}, version {entry.version}, "
            f"checksum {entry.checksum[:12]})"
        )
    return OfferedMigration(
        entry.version,
        entry.name,
        fields["content"],
        fields["checksum"],
        fields["signature"],
        fields["signed_by"],
    )


# -- reports ---------------------------------------------------------------------------------------


def reports_document(client_id: str, reports: Sequence[StatusReport]) -> dict[str, Any]:
    return {"format": REPORTS_FORMAT, "client_id": client_id, "reports": [r.to_json() for r in reports]}


def report_file_name(millis: int, data: bytes) -> str:
    """``<milliseconds>-<digest>.json``: report files sort by the time they were written."""
    return f"{millis:013d}-{digest_of(data)}.json"


def report_millis(path: Path) -> int:
    """The time a report file was written, in milliseconds, from its name."""
    return int(path.name.partition("-")[0])


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def parse_client_file(data: bytes, where: str, format_: str | tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """The client id a client's file (reports, answers or changes) names, and its document; the
    records in it are checked by the importer. ``format_`` may name several formats the file
    may have (its document's ``"format"`` says which it is)."""
    document = load(data, where)
    formats = (format_,) if isinstance(format_, str) else format_
    if not any(is_format(document, f) for f in formats):
        what = " or ".join(_CLIENT_FILES[f] for f in formats)
        raise MalformedAnswer(f"{where}: not a migsync {what} (format {document.get('format')!r})")
    client_id = document.get("client_id")
    if not isinstance(client_id, str):
        raise MalformedAnswer(f"{where}: 'client_id' is not a string")
    return client_id, document


def report_files(folder: Path) -> Iterator[Path]:
    """The report files in ``folder`` (imported or not), oldest first; temporary files never."""
    if not folder.is_dir():
        return
    names = [
        entry.name
        for entry in os.scandir(folder)
        if REPORT_NAME.fullmatch(entry.name.removesuffix(IMPORTED_SUFFIX))
    ]
    for name in sorted(names):
        yield folder / name


# -- entity changes ----------------------------------------------------------------------------------


def changes_document(client_id: str, changes: Sequence[EntityChange]) -> dict[str, Any]:
    """A batch of a client's entity changes, in the order it recorded them (a file under ``changes/``)."""
    return {"format": CHANGES_FORMAT, "client_id": client_id, "changes": [c.to_json() for c in changes]}


# -- the admin's requests, and the client's answers ------------------------------------------------

_ACTIONS_KEYS = {"format", "client_id", "actions"}
#: A request in a drop folder is signed: the folder is no proof of who wrote it.
_REQUEST_FIELDS = {"id", "action", "version", "requested_by", "requested_at", "signature", "signed_by"}


def actions_file(client_id: str) -> str:
    """Where, relative to the drop folder, the requests to ``client_id`` are: ``actions/<id>.json``."""
    return f"{ACTIONS_DIR}/{check_client_id(client_id)}.json"


def actions_document(client_id: str, requests: Sequence[ActionRequest]) -> dict[str, Any]:
    """The requests to ``client_id`` it has not answered, by id: a file under ``actions/``."""
    return {
        "format": ACTIONS_FORMAT,
        "client_id": client_id,
        "actions": [r.to_json() for r in sorted(requests, key=lambda r: r.id)],
    }


def parse_actions(data: bytes, where: str, client_id: str) -> tuple[ActionRequest, ...]:
    """The requests an actions file holds, which must be ``client_id``'s; strict: exactly the
    keys the format has, each request whole, ids in strictly increasing order."""
    document = load(data, where)
    if not is_format(document, ACTIONS_FORMAT):
        raise MalformedAnswer(f"{where}: not a migsync actions file (format {document.get('format')!r})")
    if set(document) != _ACTIONS_KEYS:
        keys = ", ".join(sorted(map(repr, set(document) ^ _ACTIONS_KEYS)))
        raise MalformedAnswer(f"{where}: keys {keys} are missing or unknown")
    if document["client_id"] != client_id:
        raise MalformedAnswer(
            f"{where}: it holds the requests to client {document['client_id']!r}, not to {client_id!r}"
        )
    items = document["actions"]
    if not isinstance(items, list):
        raise MalformedAnswer(f"{where}: 'actions' is not a list")
    for index, item in enumerate(items):
        if isinstance(item, dict) and set(item) != _REQUEST_FIELDS:
            fields = ", ".join(sorted(map(repr, set(item) ^ _REQUEST_FIELDS)))
            raise MalformedAnswer(f"{where}: actions[{index}]: fields {fields} are missing or unknown")
    requests = actions_from_json(document, where)  # each item's types, as over HTTP
    ids = [item["id"] for item in items]
    if ids != [r.id for r in requests] or len(set(ids)) != len(ids):
        raise MalformedAnswer(f"{where}: the requests' ids are not in strictly increasing order")
    return requests


def answers_document(client_id: str, results: Sequence[ActionResult]) -> dict[str, Any]:
    """A delivery of ``client_id``'s answers to requests (a file beside its report files), in
    the shape of the body of ``POST /api/actions/results``."""
    return {"format": ANSWERS_FORMAT, "client_id": client_id, "results": [r.to_json() for r in results]}
