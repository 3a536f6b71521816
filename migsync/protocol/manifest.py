"""The signed fleet manifest: what the server publishes, as a whole, under the offline key.

A signature on each migration proves its content, but not what exists: a
server, a network or a drop folder could leave a migration out (a client would
apply 4 and 5 without 3, then refuse 3 forever), or replay what it sent last
month. So, as in The Update Framework (TUF), ``migsync publish`` also signs a
*manifest*: every published version with its name and checksum, and a
``serial`` that grows with every publish that changes the list::

    {"format": "migsync-fleet/1", "serial": 7,
     "migrations": [{"version": "1", "name": "0001_init", "checksum": "ab12..."}, ...]}

It travels with every full answer (the HTTP pending answer's ``"manifest"``,
the drop folder's ``manifest.json`` ``"signed"``) as a :class:`SignedManifest`:
its canonical JSON text, the signature over exactly those bytes, and the
signer's fingerprint. The client (:mod:`migsync.client.sync`) acts on an answer
only when

* the manifest verifies under a key it trusts for migrations,
* its serial is not older than the last one it accepted (kept in the client's
  own ``migsync_meta``, see :func:`last_serial`): an old manifest replayed is
  refused, and
* every version it lists is either offered, or already in the client's own
  database with the listed checksum: a version missing from the answer is an
  error, and nothing after it is stored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from migsync.core.errors import SignatureError
from migsync.core.version import Version, as_version
from migsync.protocol.wire import CHECKSUM, OfferedMigration, SignedManifest, read_version

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from migsync.core.backend import Backend
    from migsync.protocol.signing import TrustedKey

FORMAT = "migsync-fleet/1"
#: the ``migsync_meta`` key under which a client keeps the serial of the last manifest it accepted
SERIAL_KEY = "manifest_serial"


@attrs.frozen
class Listed:
    """One published version, as the manifest lists it."""

    version: Version = attrs.field(converter=as_version)
    name: str
    checksum: str


@attrs.frozen
class FleetManifest:
    """A verified manifest: every published version, and its serial."""

    serial: int
    migrations: tuple[Listed, ...]

    def content(self) -> str:
        """The canonical JSON text the signature covers."""
        document = {
            "format": FORMAT,
            "serial": self.serial,
            "migrations": [
                {"version": m.version.text, "name": m.name, "checksum": m.checksum} for m in self.migrations
            ],
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def by_version(self) -> dict[Version, Listed]:
        return {m.version: m for m in self.migrations}


def sign_manifest(key: Ed25519PrivateKey, manifest: FleetManifest) -> SignedManifest:
    import base64

    from migsync.protocol.signing import fingerprint

    content = manifest.content()
    signature = base64.b64encode(key.sign(content.encode())).decode()
    return SignedManifest(content, signature, fingerprint(key.public_key()))


def verify_manifest(
    signed: SignedManifest | None, trusted: Sequence[TrustedKey], where: str
) -> FleetManifest:
    """The manifest ``signed`` holds, once proven signed by a trusted key; :class:`SignatureError` if not."""
    from migsync.protocol.signing import verify_bytes

    what = f"the manifest from {where}"
    if signed is None:
        raise SignatureError(
            f"{where} sent no signed manifest (the list of published versions); refusing its migrations "
            "(a server of an older release, or one whose migrations were published before manifests: "
            "run 'migsync publish' again there)"
        )
    verify_bytes(signed.content.encode(), signed.signature, trusted, what)
    try:
        document = json.loads(signed.content)
        manifest = _parse(document)
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{what} is signed but not a manifest ({exc})") from None
    if manifest.content() != signed.content:
        raise SignatureError(f"{what} is not in canonical form; refusing it")
    return manifest


def _parse(document: Any) -> FleetManifest:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"format is not {FORMAT!r}")
    serial = document.get("serial")
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        raise ValueError("serial is not a non-negative integer")
    items = document.get("migrations")
    if not isinstance(items, list):
        raise ValueError("migrations is not a list")
    listed = []
    for item in items:
        version = read_version(item.get("version")) if isinstance(item, dict) else None
        if version is None or not isinstance(item.get("name"), str):
            raise ValueError(f"{item!r} is not a version with a name")
        if not isinstance(item.get("checksum"), str) or not CHECKSUM.fullmatch(item["checksum"]):
            raise ValueError(f"version {version}: the checksum is malformed")
        listed.append(Listed(version, item["name"], item["checksum"]))
    versions = [m.version for m in listed]
    if versions != sorted(set(versions)):
        raise ValueError("versions are not in strictly increasing order")
    return FleetManifest(serial, tuple(listed))


async def last_serial(backend: Backend) -> int | None:
    """The serial of the last manifest this client database accepted (None: none yet)."""
    rows = await backend.fetch(f"SELECT value FROM {backend.tables.meta} WHERE key = $1", (SERIAL_KEY,))
    return int(rows[0]["value"]) if rows else None


async def accept_serial(backend: Backend, serial: int) -> None:
    """Remember ``serial`` as the last accepted one; never lower it (two syncs may race)."""
    async with backend.transaction() as tx:
        rows = await tx.fetch(f"SELECT value FROM {backend.tables.meta} WHERE key = $1", (SERIAL_KEY,))
        if rows and int(rows[0]["value"]) >= serial:
            return
        await tx.execute(
            f"INSERT INTO {backend.tables.meta} (key, value) VALUES ($1, $2) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (SERIAL_KEY, str(serial)),
        )


@attrs.frozen
class Problem:
    """A version the answer and the manifest disagree on, and why (see :func:`check_offers`)."""

    version: Version
    name: str
    #: the checksum the manifest lists (or, for an offer it does not list, the offer's)
    checksum: str
    reason: str
    #: "withheld" (listed, not sent, not here, and a later one sent), "unlisted" (sent, not
    #: listed as sent), "withdrawn" (here from the server, no longer listed), "unsent" (listed,
    #: not sent, with nothing after it sent), "waiting" (after one of those)
    kind: str


def check_offers(
    manifest: FleetManifest,
    offers: Sequence[OfferedMigration],
    stored: dict[Version, tuple[str, str]],
    from_server: set[Version],
    where: str,
) -> tuple[list[OfferedMigration], list[Problem]]:
    """The offers that agree with ``manifest``, and the problems.

    ``stored`` is every migration in the client's own database (version -> name, checksum):
    the client's word, never the server's or a folder's, on what it has. A listed version
    that is neither offered nor stored with its checksum was withheld: it and every offer
    after it are refused, so nothing is applied past the gap. When nothing after it was offered
    either, nothing is skipped: it is "unsent" (a drop folder's copy in progress), no error.
    ``from_server`` are the versions stored from a server: one the manifest no longer lists
    is an error too (it does not stop the others: they are listed, and in order).
    """
    listed = manifest.by_version()
    offered = {o.version for o in offers}
    serial = f"the signed manifest (serial {manifest.serial})"
    problems: list[Problem] = []
    gap: Version | None = None
    for entry in manifest.migrations:
        if entry.version not in offered and stored.get(entry.version, ("", ""))[1] != entry.checksum:
            gap = entry.version
            if any(v > gap for v in offered):
                reason = (
                    f"listed in {serial}, but {where} did not send it and this client does not have "
                    "it; nothing after it is stored (a server or folder that leaves a migration out)"
                )
                problems.append(Problem(entry.version, entry.name, entry.checksum, reason, "withheld"))
            else:  # nothing after it was sent either: not there yet (a copy in progress), not skipped
                reason = (
                    f"listed in {serial}, not sent to this client yet (a rollout holds it back, or a "
                    "drop folder's copy is in progress): waits for a later sync"
                )
                problems.append(Problem(entry.version, entry.name, entry.checksum, reason, "unsent"))
            break
    kept: list[OfferedMigration] = []
    for offer in offers:
        found = listed.get(offer.version)
        if gap is not None and offer.version > gap:
            reason = f"waits for version {gap}, which {where} did not send"
            problems.append(Problem(offer.version, offer.name, offer.checksum, reason, "waiting"))
        elif found is None or found.checksum != offer.checksum or found.name != offer.name:
            reason = (
                f"not in {serial}"
                if found is None
                else f"{serial} lists {found.name} with checksum {found.checksum[:12]}, "
                f"not {offer.name} with {offer.checksum[:12]}"
            )
            problems.append(Problem(offer.version, offer.name, offer.checksum, reason, "unlisted"))
            gap = offer.version
        else:
            kept.append(offer)
    for version in sorted(from_server - set(listed)):
        reason = f"stored here from the server, but {serial} no longer lists it"
        name, checksum = stored.get(version, (version.text, ""))
        problems.append(Problem(version, name, checksum, reason, "withdrawn"))
    return kept, problems
