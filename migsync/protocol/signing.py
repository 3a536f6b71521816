"""Ed25519 signatures over migrations, and over the admin's requests that travel by drop folder.

The server signs what it publishes; a client verifies each migration against
the public keys it trusts before it stores it, whatever transport brought it.
The signed bytes are the migration's canonical content: the same document
its checksum covers, so a signature also vouches for the checksum.

Keys are PEM files: ``KEY`` holds the private key (PKCS#8, written with mode
0600), ``KEY.pub`` the public key (SubjectPublicKeyInfo). A client may trust
several public keys at once, which is how a key is rotated: trust the new
key, publish with it, then drop the old one.

A request to a client (re-apply, revert) is signed, whatever the transport,
by the server's *request key*: a key of its own, which a server may hold
online (``migsync serve --request-key``), unlike the offline key that signs
migrations. A client pins both, each for its own use: a request key cannot
sign a migration a client would run, and a stolen request key can only ask a
client to revert or re-apply what is published. The signed bytes are
:func:`request_message`, which names the client, so a request to one client
cannot be replayed to another. The fleet manifest (:mod:`migsync.protocol.manifest`)
is signed by the migration key.

``cryptography`` is imported only here, and only by the commands that sign
or verify: ``migsync apply`` of a local folder does not pay for it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from migsync.core.errors import ConfigError, SignatureError
from migsync.core.files import read_regular, reason
from migsync.core.migration import Migration
from migsync.protocol.wire import ActionRequest


@attrs.frozen
class TrustedKey:
    """A public key a client accepts signatures from, and where it was read."""

    key: Ed25519PublicKey = attrs.field(eq=False)
    source: str
    fingerprint: str


def fingerprint(key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key (for messages and reports)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b32encode(raw).decode()[:16].lower()


def write_keypair(path: str | Path, *, overwrite: bool = False) -> TrustedKey:
    """Create a new key pair: the private key at ``path``, the public key at ``path.pub``."""
    private_path = Path(path)
    public_path = private_path.with_name(private_path.name + ".pub")
    for existing in (private_path, public_path):
        if existing.exists() and not overwrite:
            raise ConfigError(f"{existing} exists; refusing to overwrite a key (use --force)")
    try:
        # A new folder for a private key is the owner's alone, as ssh-keygen makes ~/.ssh.
        private_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        folder = private_path.parent
        raise ConfigError(f"cannot write key {private_path}: {exc.strerror} ({folder})") from None
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = private.public_key()
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # The private key is created unreadable to others from its first byte on.
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(private_pem)
    os.chmod(private_path, 0o600)
    public_path.write_bytes(public_pem)
    return TrustedKey(public, str(public_path), fingerprint(public))


def load_private_key(path: str | Path, what: str = "signing key") -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file at ``path`` (``what``: the key's role, for errors)."""
    data = _read(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def load_public_keys(paths: Iterable[str | Path]) -> list[TrustedKey]:
    """The Ed25519 public keys in the PEM files at ``paths``."""
    keys = []
    for path in paths:
        data = _read(path, "trusted key")
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{path}: not an Ed25519 key ({type(key).__name__})")
        keys.append(TrustedKey(key, str(path), fingerprint(key)))
    return keys


def sign(key: Ed25519PrivateKey, migration: Migration) -> str:
    """The signature of ``migration``'s canonical content, base64."""
    return base64.b64encode(key.sign(migration.canonical_content().encode())).decode()


def verify(migration: Migration, signature: str | None, trusted: Sequence[TrustedKey]) -> TrustedKey:
    """The trusted key that signed ``migration``; :class:`SignatureError` if none did."""
    if not trusted:
        raise ConfigError("no trusted public key configured to verify migrations with")
    return _verify(migration.canonical_content().encode(), signature, trusted, f"migration {migration.name}")


def request_message(request: ActionRequest, client_id: str) -> bytes:
    """The bytes a request's signature covers: every field that decides what it does, and the client."""
    fields = {
        "action": request.action,
        "client_id": client_id,
        "id": request.id,
        "requested_at": request.requested_at,
        "requested_by": request.requested_by,
        "version": request.version.text,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_request(key: Ed25519PrivateKey, request: ActionRequest, client_id: str) -> ActionRequest:
    """``request`` to ``client_id`` with its signature (base64) and the signer's fingerprint."""
    signature = base64.b64encode(key.sign(request_message(request, client_id))).decode()
    return attrs.evolve(request, signature=signature, signed_by=fingerprint(key.public_key()))


def verify_request(request: ActionRequest, client_id: str, trusted: Sequence[TrustedKey]) -> TrustedKey:
    """The trusted key that signed ``request`` to ``client_id``; :class:`SignatureError` if none did."""
    what = f"request {request.id} ({request.action} version {request.version})"
    if not trusted:
        raise SignatureError(
            f"{what}: no request key is trusted here (--trust-request-key), so no request is carried out"
        )
    return _verify(request_message(request, client_id), request.signature, trusted, what)


def verify_bytes(
    message: bytes, signature: str | None, trusted: Sequence[TrustedKey], what: str
) -> TrustedKey:
    """The trusted key that signed ``message`` (``what`` names it in the error); :class:`SignatureError`
    if none did, or no key is trusted."""
    if not trusted:
        raise SignatureError(f"{what}: no trusted public key to verify it with")
    return _verify(message, signature, trusted, what)


def _verify(message: bytes, signature: str | None, trusted: Sequence[TrustedKey], what: str) -> TrustedKey:
    if not signature:
        raise SignatureError(f"{what} is not signed; refusing to store or run it")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{what}: the signature is not base64") from None
    for candidate in trusted:
        try:
            candidate.key.verify(raw, message)
        except InvalidSignature:
            continue
        return candidate
    names = ", ".join(k.fingerprint for k in trusted)
    raise SignatureError(
        f"{what}: the signature does not match its content under any "
        f"trusted key ({names}); it was changed after signing, or signed by an unknown key"
    )


def _read(path: str | Path, what: str) -> bytes:
    try:
        return read_regular(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {reason(exc)}") from None
