"""The file-drop transport: migrations, reports, requests and answers travel as files, for clients
that never see the server.

URL ``file:///path/to/drop``; the folder's layout is in
:mod:`migsync.transports.dropfiles`. ``migsync export`` fills it on the
server's side; ``migsync import-reports`` reads the reports back.

The transport plays the server from what the folder holds:

* **registration**: ``export`` makes ``reports/<client-id>/`` for every
  registered client; a client whose folder is not there is refused.
* **pending**: the manifest's migrations, less those this client's own report
  files (imported or not) say it applied with the published checksum. The
  ETag is a digest of the manifest and of those reports.
* **requests**: the admin's requests to this client, from
  ``actions/<client-id>.json`` when ``export`` wrote one, less those its own
  answers files (imported or not) answer, as the server offers only requests
  it has no answer to. The file's bytes, and the answered ids, are part of the
  ETag, so a new request is a new offer. A requests file that cannot be read
  safely or is malformed is a warning (naming the file and what is wrong) and
  offers no request, but the migrations are offered all the same: they are
  what the folder is for, and a damaged or tampered requests file must
  neither be carried out nor keep a client from its migrations.
* **answers**: written like reports (same folder, same naming, atomic), one
  file per delivery (``migsync-answers/1``); an answer equal to the last one
  written for its request is not written again. Every answer is acknowledged
  as recorded: only ``import-reports`` can tell a request it does not know,
  and it says so on the server's side.
* **reports**: written as one file per delivery, atomically, into
  ``reports/<client-id>/`` of the drop folder, or of a separate ``reports``
  folder when the drop folder is read-only. A report equal to the last one
  written for its version is acknowledged as unchanged and not written again.
* **unreachable**: a drop folder that is not there (not mounted) is
  :class:`ServerUnavailable`; so is a bundle the manifest names that has not
  arrived yet (a copy in progress), for it and every migration after it.

A bundle that cannot be read safely (outside the folder, oversized, not
what the manifest names) is handed over with its problem, so the client
refuses it and reports why, and nothing of it runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from migsync.core.errors import ConfigError, MalformedAnswer, ServerRefused, ServerUnavailable
from migsync.core.version import Version
from migsync.protocol.wire import (
    ActionRequest,
    ActionResult,
    ActionsAck,
    ChangesAck,
    Drift,
    EntityChange,
    Offer,
    OfferedMigration,
    ReportAck,
    StatusReport,
)
from migsync.transports import dropfiles as files
from migsync.transports.base import BaseTransport

log = logging.getLogger("migsync.filedrop")


class FileDropTransport(BaseTransport):
    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        token: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        reports: str | None = None,
    ) -> None:
        del token, timeout, retries  # nothing to authenticate with, nothing to wait for
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path:
            raise ConfigError(f"drop folder URL {url!r} is not file:///PATH (an absolute path)")
        self.root = Path(unquote(parts.path))
        query = parse_qs(parts.query)
        if not reports and query.get("reports"):
            reports = query["reports"][0]
        if not client_id:
            raise ConfigError("the file-drop transport needs a client id (--client-id)")
        try:
            self.client_id = files.check_client_id(str(client_id))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.reports_root = Path(reports) if reports else self.root / files.REPORTS_DIR
        self.where = f"file://{self.root}"

    # -- fetch -----------------------------------------------------------------------------------

    async def fetch(self, etag: str | None = None) -> Offer:
        return await asyncio.to_thread(self._fetch, etag)

    def _fetch(self, etag: str | None) -> Offer:
        manifest_bytes = self._manifest_bytes()
        entries, signed = files.parse_signed_manifest(manifest_bytes, str(self.root / files.MANIFEST))
        self._check_registered()
        latest, answered = self._own_files()
        state = json.dumps(sorted((v.key, r.applied, r.checksum) for v, r in latest.items()))
        digest = hashlib.sha256(manifest_bytes + state.encode())
        requests, unreadable = self._requests_file()
        if requests is not None or unreadable is not None:  # neither: the ETag as before requests
            read = requests if requests is not None else f"unreadable: {unreadable}".encode()
            digest.update(b"\0" + read + b"\0" + json.dumps(sorted(answered)).encode())
        tag = '"' + digest.hexdigest()[:32] + '"'
        if etag == tag:
            return Offer(None, tag)
        actions = self._requests(requests, unreadable, answered)
        offers: list[OfferedMigration] = []
        for entry in entries:
            mine = latest.get(entry.version)
            if mine is not None and mine.applied and mine.checksum == entry.checksum:
                continue
            relative = f"{files.MIGRATIONS_DIR}/{entry.file}"
            try:
                data = files.read_inside(self.root, relative, files.MAX_BUNDLE)
                offers.append(files.parse_bundle(data, str(self.root / relative), entry))
            except FileNotFoundError:
                # Not arrived yet (a copy in progress): it and what follows wait for the next fetch.
                if not offers:
                    raise ServerUnavailable(
                        f"{self.root / relative}: listed in the manifest but not there (yet)"
                    ) from None
                return Offer(tuple(offers), None, actions, signed)
            except (MalformedAnswer, OSError) as exc:
                problem = str(exc) if isinstance(exc, MalformedAnswer) else f"{relative}: {exc.strerror}"
                offers.append(
                    OfferedMigration(entry.version, entry.name, "", entry.checksum, None, None, problem)
                )
        return Offer(tuple(offers), tag, actions, signed)

    def _manifest_bytes(self) -> bytes:
        if not self.root.is_dir():
            raise ServerUnavailable(f"drop folder {self.root} is not there (not mounted?)")
        try:
            return files.read_inside(self.root, files.MANIFEST, files.MAX_MANIFEST)
        except FileNotFoundError:
            raise ServerUnavailable(
                f"drop folder {self.root} has no {files.MANIFEST} yet "
                "(nothing exported, or a copy in progress)"
            ) from None

    def _check_registered(self) -> None:
        if not (self.root / files.REPORTS_DIR / self.client_id).is_dir():
            raise ServerRefused(
                f"client {self.client_id} is not registered in drop folder {self.root}: "
                f"{files.REPORTS_DIR}/{self.client_id}/ is missing (register it with 'migsync clients add', "
                "then 'migsync export' again)"
            )

    def _own_files(self) -> tuple[dict[Version, StatusReport], dict[int, ActionResult]]:
        """This client's last word on each version, and on each request, from its report and
        answers files (imported or not)."""
        latest: dict[Version, StatusReport] = {}
        answers: dict[int, ActionResult] = {}
        folder = self.reports_root / self.client_id
        for path in files.report_files(folder):
            try:
                data = files.read_inside(folder, path.name, files.MAX_REPORT_FILE)
                _, document = files.parse_client_file(
                    data, str(path), (files.REPORTS_FORMAT, files.ANSWERS_FORMAT)
                )
                if files.is_format(document, files.ANSWERS_FORMAT):
                    for item in document.get("results", []):
                        answer = ActionResult(**item)
                        answers[answer.id] = answer
                    continue
                for item in document.get("reports", []):
                    report = StatusReport(**item)
                    latest[report.version] = report
            except (OSError, MalformedAnswer, TypeError):
                continue  # not ours to judge: import-reports names bad files
        return latest, answers

    def _requests_file(self) -> tuple[bytes | None, str | None]:
        """The bytes of this client's requests file, or why it must not be read (a symlink out
        of the folder, too big); (None, None) when there is none."""
        relative = files.actions_file(self.client_id)
        try:
            return files.read_inside(self.root, relative, files.MAX_ACTIONS_FILE), None
        except FileNotFoundError:
            return None, None
        except MalformedAnswer as exc:
            return None, str(exc)
        except OSError as exc:
            return None, f"{self.root / relative}: {exc.strerror or exc}"

    def _requests(
        self, data: bytes | None, unreadable: str | None, answered: dict[int, ActionResult]
    ) -> tuple[ActionRequest, ...]:
        """The requests of this client's requests file it has not answered; none, and a
        warning, when the file cannot be read or is malformed."""
        try:
            if unreadable is not None:
                raise MalformedAnswer(unreadable)
            if data is None:
                return ()
            where = str(self.root / files.actions_file(self.client_id))
            requests = files.parse_actions(data, where, self.client_id)
        except MalformedAnswer as exc:
            log.warning("the admin's requests are not read: %s", exc)
            return ()
        return tuple(r for r in requests if r.id not in answered)

    # -- report ----------------------------------------------------------------------------------

    async def report(self, reports: Sequence[StatusReport]) -> ReportAck:
        return await asyncio.to_thread(self._report, list(reports))

    def _report(self, reports: list[StatusReport]) -> ReportAck:
        entries = {
            e.version: e
            for e in files.parse_manifest(self._manifest_bytes(), str(self.root / files.MANIFEST))
        }
        self._check_registered()
        versions = [r.version for r in reports]
        if len(set(versions)) != len(versions):
            raise ServerRefused("a batch of reports names a version twice; nothing was written")
        unpublished = sorted(v for v in versions if v not in entries)
        if unpublished:
            raise ServerRefused(
                f"versions {unpublished} are not in the drop folder's manifest; nothing was written"
            )
        latest, _ = self._own_files()
        changed = [r for r in reports if latest.get(r.version) != r]
        unchanged = tuple(r.version for r in reports if latest.get(r.version) == r)
        drift = tuple(
            Drift(r.version, entries[r.version].checksum, r.checksum)
            for r in reports
            if r.checksum != entries[r.version].checksum
        )
        if changed:
            self._write(changed)
        return ReportAck(tuple(r.version for r in changed), unchanged, drift)

    async def report_actions(self, results: Sequence[ActionResult]) -> ActionsAck:
        return await asyncio.to_thread(self._report_actions, list(results))

    def _report_actions(self, results: list[ActionResult]) -> ActionsAck:
        """Write the answers not written before as answers files (at most
        :data:`~migsync.transports.dropfiles.MAX_ANSWERS` each); every one is acknowledged as
        recorded, since what the folder holds is all the server will read."""
        self._manifest_bytes()  # not mounted: unavailable
        self._check_registered()
        ids = [r.id for r in results]
        if len(set(ids)) != len(ids):
            raise ServerRefused("a batch of answers names a request twice; nothing was written")
        _, latest = self._own_files()
        changed = [r for r in results if latest.get(r.id) != r]
        folder = self.reports_root / self.client_id
        for start in range(0, len(changed), files.MAX_ANSWERS):
            batch = changed[start : start + files.MAX_ANSWERS]
            data = files.dump(files.answers_document(self.client_id, batch))
            self._write_file(folder, data, parents=self.reports_root != self.root / files.REPORTS_DIR)
        return ActionsAck(recorded=tuple(ids))

    # -- entity changes ---------------------------------------------------------------------------

    async def push_changes(self, changes: Sequence[EntityChange]) -> ChangesAck:
        return await asyncio.to_thread(self._push_changes, list(changes))

    def _push_changes(self, changes: list[EntityChange]) -> ChangesAck:
        """Write the batch as one file; ``import-reports`` stores each change once, in order, and
        refuses a bad one there (the client cannot hear it: an offline client's refusals show on
        the server's side)."""
        self._manifest_bytes()  # not mounted: unavailable
        self._check_registered()
        if not changes:
            return ChangesAck()
        folder = self.root / files.CHANGES_DIR / self.client_id
        data = files.dump(files.changes_document(self.client_id, changes))
        self._write_file(folder, data, parents=True)
        return ChangesAck(accepted=tuple(c.id for c in changes))

    def _write(self, reports: list[StatusReport]) -> None:
        folder = self.reports_root / self.client_id
        data = files.dump(files.reports_document(self.client_id, reports))
        self._write_file(folder, data, parents=self.reports_root != self.root / files.REPORTS_DIR)

    def _write_file(self, folder: Path, data: bytes, *, parents: bool) -> None:
        """``data`` as a new file in ``folder``, named so that files sort by the time they were written."""
        try:
            folder.mkdir(parents=parents, exist_ok=True)
            # One written in the same millisecond as the last still sorts after it.
            last = max((files.report_millis(p) for p in files.report_files(folder)), default=0)
            millis = max(int(time.time() * 1000), last + 1)
            files.write_atomic(folder / files.report_file_name(millis, data), data)
        except OSError as exc:
            if not self.root.is_dir():
                raise ServerUnavailable(f"drop folder {self.root} is not there (not mounted?)") from None
            raise ServerRefused(
                f"cannot write to {folder}: {exc.strerror or exc}; if the drop folder is "
                "read-only, give a writable folder with --reports"
            ) from None
