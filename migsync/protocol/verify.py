"""Turning what a transport delivered into a migration the client may store and run.

Nothing a transport hands over is trusted. :func:`verify_offer` accepts a
migration only when

* its content is the canonical JSON of a migration (so what was signed is
  exactly what will run, byte for byte),
* its version, name and checksum agree with that content, and
* its signature verifies under one of the client's trusted public keys.

Anything else is a :class:`SignatureError` naming the migration and the reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from migsync.core.errors import SignatureError
from migsync.core.migration import Migration
from migsync.protocol.signing import TrustedKey, verify
from migsync.protocol.wire import OfferedMigration


def verify_offer(offer: OfferedMigration, trusted: Sequence[TrustedKey], *, source: str) -> Migration:
    """The migration ``offer`` carries, once it is proven signed by a trusted key."""
    label = f"migration {offer.name} (version {offer.version}) from {source}"
    if offer.problem is not None:
        raise SignatureError(f"{label}: {offer.problem}")
    digest = hashlib.sha256(offer.content.encode()).hexdigest()
    if digest != offer.checksum:
        raise SignatureError(
            f"{label}: its content does not match its checksum ({digest[:12]} != {offer.checksum[:12]}); "
            "it was changed on the way"
        )
    try:
        migration = Migration.from_json(json.loads(offer.content), source=source)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SignatureError(
            f"{label}: its content is not a migration ({type(exc).__name__}: {exc})"
        ) from None
    if migration.canonical_content() != offer.content:
        raise SignatureError(f"{label}: its content is not in canonical form; refusing to run it")
    if (migration.version, migration.name) != (offer.version, offer.name):
        raise SignatureError(
            f"{label}: its content is migration {migration.name} (version {migration.version})"
        )
    verify(migration, offer.signature, trusted)
    return migration
