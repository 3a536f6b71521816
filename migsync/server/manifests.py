"""The store's signed fleet manifest (:mod:`migsync.protocol.manifest`): written by ``publish``,
served with every full answer, copied into drop folders by ``export``.

It lives in ``store_meta`` (three keys: its text, signature and signer), so no
new table: a store of an older release gets one at its next ``migsync
publish``, which writes it even when no migration changed. Its serial grows
by one each time it is written, which is only when the list of versions,
names or checksums changes, or another key signs it (a key rotated).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from migsync.core.version import as_version
from migsync.protocol.manifest import FleetManifest, Listed, sign_manifest
from migsync.protocol.wire import SignedManifest
from migsync.server import tables as t

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_CONTENT, _SIGNATURE, _SIGNER = "manifest_content", "manifest_signature", "manifest_signed_by"


async def read(conn: AsyncConnection) -> SignedManifest | None:
    """The store's signed manifest; None before the first publish of this release."""
    rows = await conn.execute(
        select(t.store_meta.c.key, t.store_meta.c.value).where(
            t.store_meta.c.key.in_((_CONTENT, _SIGNATURE, _SIGNER))
        )
    )
    values = {row.key: row.value for row in rows}
    if _CONTENT not in values:
        return None
    return SignedManifest(values[_CONTENT], values.get(_SIGNATURE), values.get(_SIGNER))


async def write(conn: AsyncConnection, key: Ed25519PrivateKey) -> bool:
    """Sign and keep the manifest of what the store publishes now, unless the one it has lists the
    same under the same key; whether it wrote one. The caller holds the publish lock."""
    columns = t.store_migrations.c
    rows = await conn.execute(select(columns.version, columns.name, columns.checksum))
    listed = tuple(
        sorted((Listed(as_version(r.version), r.name, r.checksum) for r in rows), key=lambda m: m.version)
    )
    previous = await read(conn)
    serial = 0
    if previous is not None:
        old = json.loads(previous.content)
        serial = int(old["serial"])
        same = FleetManifest(serial, listed).content() == previous.content
        signed = sign_manifest(key, FleetManifest(serial, listed))
        if same and signed.signature == previous.signature:  # Ed25519 is deterministic
            return False
    signed = sign_manifest(key, FleetManifest(serial + 1, listed))
    keys = (_CONTENT, _SIGNATURE, _SIGNER)
    await conn.execute(delete(t.store_meta).where(t.store_meta.c.key.in_(keys)))
    await conn.execute(
        insert(t.store_meta),
        [
            {"key": _CONTENT, "value": signed.content},
            {"key": _SIGNATURE, "value": signed.signature or ""},
            {"key": _SIGNER, "value": signed.signed_by or ""},
        ],
    )
    return True
