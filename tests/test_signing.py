"""Ed25519 signing and verification of migrations, and `migsync keygen`."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from dbtools import run

from migsync import Migration, Script
from migsync.core.errors import ConfigError, SignatureError
from migsync.protocol.signing import load_private_key, load_public_keys, sign, verify, write_keypair


def migration(sql: str = "CREATE TABLE users (id INTEGER)") -> Migration:
    return Migration(1, "0001_users", {"*": Script(sql)}, {"*": Script("DROP TABLE users")})


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    key = tmp_path / "signing"
    result = run("keygen", "--out", str(key))
    assert result.returncode == 0, result.stderr
    assert f"public key:  {key}.pub" in result.stdout and "fingerprint: " in result.stdout
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert Path(f"{key}.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = run("keygen", "--out", str(key))
    assert again.returncode == 2 and "refusing to overwrite a key" in again.stderr
    assert run("keygen", "--out", str(key), "--force").returncode == 0


def test_keygen_makes_the_folders_it_needs_for_the_owner_alone(tmp_path: Path) -> None:
    """The README's first server step, ``migsync keygen --out keys/signing``, in a fresh clone."""
    made = run("keygen", "--out", str(tmp_path / "keys" / "prod" / "signing"))
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "keys" / "prod" / "signing.pub").is_file()
    assert stat.S_IMODE((tmp_path / "keys" / "prod").stat().st_mode) == 0o700
    (tmp_path / "a-file").write_text("")
    blocked = run("keygen", "--out", str(tmp_path / "a-file" / "signing"))
    assert blocked.returncode == 2 and blocked.stderr.startswith("error: cannot write key ")
    assert "a-file" in blocked.stderr and "Traceback" not in blocked.stderr


def test_sign_and_verify_round_trip(tmp_path: Path) -> None:
    public = write_keypair(tmp_path / "k")
    private = load_private_key(tmp_path / "k")
    [trusted] = load_public_keys([tmp_path / "k.pub"])
    assert trusted.fingerprint == public.fingerprint
    signature = sign(private, migration())
    assert len(base64.b64decode(signature)) == 64
    assert verify(migration(), signature, [trusted]).fingerprint == public.fingerprint


def test_changed_content_unsigned_or_unknown_key_is_refused(tmp_path: Path) -> None:
    write_keypair(tmp_path / "k")
    write_keypair(tmp_path / "other")
    private = load_private_key(tmp_path / "k")
    trusted = load_public_keys([tmp_path / "k.pub"])
    signature = sign(private, migration())
    with pytest.raises(SignatureError, match="0001_users: the signature does not match its content"):
        verify(migration("DROP TABLE everything"), signature, trusted)
    with pytest.raises(SignatureError, match="0001_users is not signed"):
        verify(migration(), None, trusted)
    with pytest.raises(SignatureError, match="not base64"):
        verify(migration(), "***", trusted)
    stranger = sign(load_private_key(tmp_path / "other"), migration())
    with pytest.raises(SignatureError, match="signed by an unknown key"):
        verify(migration(), stranger, trusted)
    with pytest.raises(ConfigError, match="no trusted public key"):
        verify(migration(), signature, [])


def test_rotation_trusts_old_and_new_keys_at_once(tmp_path: Path) -> None:
    old, new = write_keypair(tmp_path / "old"), write_keypair(tmp_path / "new")
    trusted = load_public_keys([tmp_path / "old.pub", tmp_path / "new.pub"])
    by_old = sign(load_private_key(tmp_path / "old"), migration())
    by_new = sign(load_private_key(tmp_path / "new"), migration())
    assert verify(migration(), by_old, trusted).fingerprint == old.fingerprint
    assert verify(migration(), by_new, trusted).fingerprint == new.fingerprint


def test_bad_key_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(ConfigError, match="junk: not a PEM private key"):
        load_private_key(tmp_path / "junk")
    with pytest.raises(ConfigError, match="junk: not a PEM public key"):
        load_public_keys([tmp_path / "junk"])
    with pytest.raises(ConfigError, match="cannot read trusted key"):
        load_public_keys([tmp_path / "missing.pub"])
    write_keypair(tmp_path / "k")
    with pytest.raises(ConfigError, match="not a PEM private key"):
        load_private_key(tmp_path / "k.pub")
