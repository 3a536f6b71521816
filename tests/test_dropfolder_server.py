"""The server side of drop folders: ``migsync export`` and ``migsync import-reports``, on real
folders and a real store (SQLite; Postgres once), through the functions and the console script."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from dbtools import drop_client_file, imported_name, run
from dbtools import table_migration as migration

from migsync.core.errors import ConfigError, SignatureError
from migsync.core.migration import Migration
from migsync.protocol.signing import load_private_key, load_public_keys, write_keypair
from migsync.protocol.verify import verify_offer
from migsync.protocol.wire import StatusReport
from migsync.server import Store
from migsync.server.export import STALE_TEMP_AGE, ExportResult, export
from migsync.server.import_reports import ImportResult, import_reports
from migsync.transports import dropfiles as files

V1, V2, V3 = migration(1), migration(2), migration(3)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'server.db'}"


async def make_store(
    url: str, key_path: Path, migrations: Sequence[Migration], clients: Sequence[str] = ("ship", "kiosk")
) -> dict[str, int]:
    """Publish ``migrations`` and register ``clients``: their ids by name."""
    async with Store.open(url) as store:
        if migrations:
            await store.publish(migrations, load_private_key(key_path))
        return {name: (await store.add_client(name))[0] for name in clients}


async def publish(url: str, key_path: Path, migrations: Sequence[Migration]) -> None:
    async with Store.open(url, create=False) as store:
        await store.publish(migrations, load_private_key(key_path))


async def export_to(url: str, to: Path) -> ExportResult:
    async with Store.open(url, create=False) as store:
        return await export(store, to)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime in ns) of the folder and everything in it: any write changes one of them."""
    paths = [root, *root.rglob("*")]
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


def applied(report_version: int, checksum: str, *, ok: bool = True) -> StatusReport:
    return StatusReport(report_version, ok, None if ok else "boom", 1, checksum)


def drop_report(
    reports: Path, folder: str, items: Sequence[StatusReport], at: int, *, client_id: str | None = None
) -> Path:
    """Write a report file the way a client does: ``reports/<folder>/<at (ms)>-<digest>.json``."""
    return drop_client_file(
        reports, folder, files.dump(files.reports_document(client_id or folder, items)), at
    )


async def fleet(url: str) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """name -> (applied versions, failed versions)."""
    async with Store.open(url, create=False) as store:
        return {e.client.name: (e.applied, tuple(f.version for f in e.failed)) for e in await store.fleet()}


async def import_from(url: str, source: Path) -> ImportResult:
    async with Store.open(url, create=False) as store:
        return await import_reports(store, source)


# -- export ----------------------------------------------------------------------------------------


async def test_export_writes_bundles_and_a_manifest_that_verify(
    tmp_path: Path, key_path: Path, store_url: str
) -> None:
    ids = await make_store(store_url, key_path, [V1, V2])
    drop = tmp_path / "drop"
    result = await export_to(store_url, drop)
    assert result.written == (V1.name, V2.name) and result.unchanged == ()
    assert result.manifest_written
    assert sorted(result.client_folders) == sorted(str(i) for i in ids.values())

    manifest = (drop / files.MANIFEST).read_bytes()
    entries = files.parse_manifest(manifest, "manifest")
    assert [(e.version, e.name, e.checksum) for e in entries] == [
        (m.version, m.name, m.checksum) for m in (V1, V2)
    ]
    trusted = load_public_keys([f"{key_path}.pub"])
    other_key = tmp_path / "other.key"
    write_keypair(other_key)
    for entry, original in zip(entries, (V1, V2), strict=True):
        data = (drop / files.MIGRATIONS_DIR / entry.file).read_bytes()
        offer = files.parse_bundle(data, entry.file, entry)
        verified = verify_offer(offer, trusted, source=str(drop))
        assert verified.checksum == original.checksum and verified.name == original.name
        with pytest.raises(SignatureError):
            verify_offer(offer, load_public_keys([f"{other_key}.pub"]), source=str(drop))
    for client_id in ids.values():
        assert (drop / files.REPORTS_DIR / str(client_id)).is_dir()
    assert not [p for p in drop.rglob("*") if p.name.startswith(".tmp-")]


async def test_export_again_writes_nothing(tmp_path: Path, key_path: Path, store_url: str) -> None:
    await make_store(store_url, key_path, [V1, V2])
    drop = tmp_path / "drop"
    await export_to(store_url, drop)
    before = snapshot(drop)
    manifest = (drop / files.MANIFEST).read_bytes()
    again = await export_to(store_url, drop)
    assert again.written == () and again.unchanged == (V1.name, V2.name)
    assert not again.manifest_written and again.client_folders == ()
    assert snapshot(drop) == before
    assert (drop / files.MANIFEST).read_bytes() == manifest


async def test_a_publish_then_export_writes_the_new_bundle_and_the_manifest(
    tmp_path: Path, key_path: Path, store_url: str
) -> None:
    await make_store(store_url, key_path, [V1, V2])
    drop = tmp_path / "drop"
    await export_to(store_url, drop)
    before = snapshot(drop)
    await publish(store_url, key_path, [V3])
    result = await export_to(store_url, drop)
    assert result.written == (V3.name,) and result.unchanged == (V1.name, V2.name)
    assert result.manifest_written
    after = snapshot(drop)
    changed = {path for path in after if after[path] != before.get(path)}
    new_bundle = f"{files.MIGRATIONS_DIR}/{files.bundle_file(3, V3.name)}"
    # the folders that got a file change their mtime; no other file does
    assert changed == {".", files.MIGRATIONS_DIR, files.MANIFEST, new_bundle}
    entries = files.parse_manifest((drop / files.MANIFEST).read_bytes(), "manifest")
    assert [e.version for e in entries] == [1, 2, 3]
    assert not [p for p in drop.rglob("*") if p.name.startswith(".tmp-")]


async def test_export_rewrites_a_changed_bundle_and_the_manifest(
    tmp_path: Path, key_path: Path, store_url: str
) -> None:
    await make_store(store_url, key_path, [V1, V2])
    drop = tmp_path / "drop"
    await export_to(store_url, drop)
    bundle = drop / files.MIGRATIONS_DIR / files.bundle_file(1, V1.name)
    good = bundle.read_bytes()
    old_manifest = (drop / files.MANIFEST).read_bytes()
    bundle.write_bytes(good.replace(b"CREATE TABLE t1", b"CREATE TABLE tx"))
    result = await export_to(store_url, drop)
    assert result.written == (V1.name,) and result.unchanged == (V2.name,)
    assert bundle.read_bytes() == good
    # generated_at moves with every change of the folder, so the manifest is written too
    assert result.manifest_written and (drop / files.MANIFEST).read_bytes() != old_manifest


async def test_export_leaves_unlisted_bundles_and_removes_stale_temporary_files(
    tmp_path: Path, key_path: Path, store_url: str
) -> None:
    await make_store(store_url, key_path, [V1])
    drop = tmp_path / "drop"
    (drop / files.MIGRATIONS_DIR).mkdir(parents=True)
    extra = drop / files.MIGRATIONS_DIR / "9.json"
    extra.write_text("{}")
    stale = [drop / ".tmp-0123-manifest.json", drop / files.MIGRATIONS_DIR / ".tmp-4567-1.json"]
    fresh = drop / files.MIGRATIONS_DIR / ".tmp-89ab-2.json"
    hour_ago = time.time() - STALE_TEMP_AGE - 60
    for path in [*stale, fresh]:
        path.write_text("half a file")
    for path in stale:
        os.utime(path, (hour_ago, hour_ago))
    result = await export_to(store_url, drop)
    assert sorted(result.removed) == sorted(str(p) for p in stale)
    assert not any(p.exists() for p in stale) and fresh.exists()  # a live writer's file stays
    assert extra.read_text() == "{}"
    entries = files.parse_manifest((drop / files.MANIFEST).read_bytes(), "manifest")
    assert [e.file for e in entries] == [files.bundle_file(1, V1.name)]


async def test_export_makes_the_folder_but_not_its_parent(
    tmp_path: Path, key_path: Path, store_url: str
) -> None:
    await make_store(store_url, key_path, [V1])
    with pytest.raises(FileNotFoundError):
        await export_to(store_url, tmp_path / "unmounted" / "drop")
    assert not (tmp_path / "unmounted").exists()


# -- import-reports --------------------------------------------------------------------------------


async def test_import_records_reports_oldest_first_and_marks_the_files(
    tmp_path: Path, key_path: Path, store_url: str
) -> None:
    ids = await make_store(store_url, key_path, [V1, V2])
    reports = tmp_path / "drop" / files.REPORTS_DIR
    ship, kiosk = str(ids["ship"]), str(ids["kiosk"])
    older = drop_report(reports, ship, [applied(1, V1.checksum, ok=False)], at=1000)
    newer = drop_report(reports, ship, [applied(1, V1.checksum), applied(2, V2.checksum)], at=2000)
    other = drop_report(reports, kiosk, [applied(1, V1.checksum)], at=1500)
    result = await import_from(store_url, reports)
    assert result.refused == ()
    assert [i.path for i in result.imported] == [older, newer, other]
    assert [(i.recorded, i.unchanged) for i in result.imported] == [((1,), ()), ((1, 2), ()), ((1,), ())]
    # the newer file was imported last, so the failure it overrides is gone
    assert await fleet(store_url) == {"ship": ((1, 2), ()), "kiosk": ((1,), ())}
    for path in (older, newer, other):
        assert not path.exists() and imported_name(path).is_file()


async def test_importing_twice_changes_nothing(tmp_path: Path, key_path: Path, store_url: str) -> None:
    ids = await make_store(store_url, key_path, [V1, V2])
    drop = tmp_path / "drop"
    drop_report(drop / files.REPORTS_DIR, str(ids["ship"]), [applied(1, V1.checksum)], at=1000)
    first = await import_from(store_url, drop)  # a drop folder stands for its reports/
    assert len(first.imported) == 1
    async with Store.open(store_url, create=False) as store:
        generation, fleet_before = await store.generation(), await store.fleet()
    listing = snapshot(drop)
    second = await import_from(store_url, drop)
    assert second.imported == () and second.refused == () and second.already_imported == 1
    async with Store.open(store_url, create=False) as store:
        assert await store.generation() == generation
        assert await store.fleet() == fleet_before
    assert snapshot(drop) == listing


async def test_bad_files_are_refused_and_named_and_the_rest_is_imported(
    tmp_path: Path, key_path: Path, store_url: str
) -> None:
    ids = await make_store(store_url, key_path, [V1, V2])
    reports = tmp_path / "reports"
    ship, kiosk = str(ids["ship"]), str(ids["kiosk"])
    good = [
        drop_report(reports, ship, [applied(1, V1.checksum)], at=1000),
        drop_report(reports, kiosk, [applied(2, V2.checksum)], at=1000),
        drop_report(reports, ship, [applied(2, V2.checksum)], at=9000),  # after the bad ones
    ]
    unknown = drop_report(reports, "99", [applied(1, V1.checksum)], at=1001)
    bad_folder = reports / "no such client!"
    bad_folder.mkdir()
    (bad_folder / "1000000000000-0123456789abcdef.json").write_text("{}")
    bad_json = reports / ship / "0000000002000-00000000000000aa.json"
    bad_json.write_text('{"format": "migsync-reports/1", "client_id": ')
    other_client = drop_report(reports, ship, [applied(1, V1.checksum)], at=3000, client_id=kiosk)
    unpublished = drop_report(reports, ship, [applied(1, V1.checksum), applied(7, "7" * 64)], at=4000)
    oversized = reports / ship / "0000000005000-00000000000000bb.json"
    oversized.write_bytes(b" " * (files.MAX_REPORT_FILE + 1))
    outside = drop_report(tmp_path / "elsewhere", ship, [applied(1, V1.checksum)], at=6000)
    symlink = reports / ship / outside.name
    symlink.symlink_to(outside)
    malformed = drop_report(reports, ship, [StatusReport(1, True, None, -1, V1.checksum)], at=7000)
    misnamed = reports / ship / "notes.json"
    misnamed.write_text("{}")
    stray = reports / "README.txt"
    stray.write_text("reports go here")
    (reports / ship / ".tmp-0123-0000000008000-00000000000000cc.json").write_text("half")  # ignored

    result = await import_from(store_url, reports)
    reasons = {r.path: r.reason for r in result.refused}
    assert set(reasons) == {
        unknown,
        bad_folder,
        bad_json,
        other_client,
        unpublished,
        oversized,
        symlink,
        malformed,
        misnamed,
        stray,
    }
    assert "no registered client has id '99'" in reasons[unknown]
    assert "cannot name a reports folder" in reasons[bad_folder]
    assert "not JSON" in reasons[bad_json]
    assert f"reports of client {kiosk!r}, not of {ship!r}" in reasons[other_client]
    assert "version 7 is not published" in reasons[unpublished]
    assert f"over the limit of {files.MAX_REPORT_FILE}" in reasons[oversized]
    assert "outside" in reasons[symlink]
    assert "reports[0].attempts must be a non-negative integer, not -1" in reasons[malformed]
    assert "not a report file" in reasons[misnamed]
    assert "not a client's folder" in reasons[stray]
    for path in reasons:
        assert path.exists() and not imported_name(path).exists(), path  # left where it was
    assert [i.path for i in result.imported] == [good[0], good[2], good[1]]
    assert all(not p.exists() and imported_name(p).exists() for p in good)
    assert await fleet(store_url) == {"ship": ((1, 2), ()), "kiosk": ((2,), ())}


async def test_a_refused_file_imported_later_does_not_undo_a_newer_one(
    tmp_path: Path, key_path: Path, store_url: str
) -> None:
    ids = await make_store(store_url, key_path, [V1, V2])
    reports = tmp_path / "reports"
    ship = str(ids["ship"])
    old = drop_report(reports, ship, [applied(1, V1.checksum, ok=False), applied(3, V3.checksum)], at=1000)
    drop_report(reports, ship, [applied(1, V1.checksum)], at=2000)
    first = await import_from(store_url, reports)
    assert [r.path for r in first.refused] == [old] and len(first.imported) == 1
    await publish(store_url, key_path, [V3])
    second = await import_from(store_url, reports)
    assert second.refused == ()
    [late] = second.imported
    assert (late.path, late.recorded, late.superseded) == (old, (3,), (1,))
    assert await fleet(store_url) == {"ship": ((1, 3), ()), "kiosk": ((), ())}


async def test_a_file_may_hold_more_reports_than_one_request(
    tmp_path: Path, key_path: Path, store_url: str
) -> None:
    from migsync.server.validation import MAX_REPORTS

    many = [migration(v) for v in range(1, MAX_REPORTS + 2)]
    ids = await make_store(store_url, key_path, many, clients=("ship",))
    reports = tmp_path / "reports"
    drop_report(reports, str(ids["ship"]), [applied(m.version, m.checksum) for m in many], at=1000)
    result = await import_from(store_url, reports)
    assert result.refused == ()
    assert len(result.imported[0].recorded) == MAX_REPORTS + 1
    assert len((await fleet(store_url))["ship"][0]) == MAX_REPORTS + 1


async def test_a_missing_reports_folder_is_a_config_error(
    tmp_path: Path, key_path: Path, store_url: str
) -> None:
    await make_store(store_url, key_path, [V1])
    with pytest.raises(ConfigError, match="is not a folder of client reports"):
        await import_from(store_url, tmp_path / "nowhere")


async def test_export_and_import_on_postgres(tmp_path: Path, key_path: Path, pg_url: str) -> None:
    ids = await make_store(pg_url, key_path, [V1, V2])
    drop = tmp_path / "drop"
    result = await export_to(pg_url, drop)
    assert result.written == (V1.name, V2.name) and result.manifest_written
    assert not (await export_to(pg_url, drop)).manifest_written
    path = drop_report(drop / files.REPORTS_DIR, str(ids["kiosk"]), [applied(2, V2.checksum)], at=1000)
    imported = await import_from(pg_url, drop)
    assert [i.path for i in imported.imported] == [path] and imported.refused == ()
    assert await fleet(pg_url) == {"ship": ((), ()), "kiosk": ((2,), ())}
    assert (await import_from(pg_url, drop)).imported == ()


# -- the commands ----------------------------------------------------------------------------------


def test_export_command(tmp_path: Path, key_path: Path, store_url: str) -> None:
    asyncio.run(make_store(store_url, key_path, [V1, V2], clients=("ship",)))
    drop = tmp_path / "drop"
    first = run("export", "--store", store_url, "--to", str(drop))
    assert first.returncode == 0, first.stderr
    assert f"wrote: {V1.name}, {V2.name}" in first.stdout
    assert "wrote 2 bundles, 0 unchanged, manifest written" in first.stdout
    again = run("export", "--store", store_url, "--to", str(drop))
    assert again.returncode == 0, again.stderr
    assert again.stdout == "wrote 0 bundles, 2 unchanged, manifest unchanged\n"

    no_parent = run("export", "--store", store_url, "--to", str(tmp_path / "unmounted" / "drop"))
    assert no_parent.returncode == 2
    assert "error: cannot write drop folder" in no_parent.stderr and "No such file" in no_parent.stderr
    no_store = run("export", "--store", f"sqlite:///{tmp_path / 'none.db'}", "--to", str(drop))
    assert no_store.returncode == 2 and "does not exist" in no_store.stderr
    assert not (tmp_path / "none.db").exists()


def test_import_reports_command(tmp_path: Path, key_path: Path, store_url: str) -> None:
    ids = asyncio.run(make_store(store_url, key_path, [V1, V2], clients=("ship",)))
    drop = tmp_path / "drop"
    ship = str(ids["ship"])
    good = drop_report(
        drop / files.REPORTS_DIR, ship, [applied(1, V1.checksum), applied(2, V2.checksum)], at=1000
    )
    ok = run("import-reports", "--store", store_url, "--from", str(drop))
    assert ok.returncode == 0, ok.stderr
    assert f"imported {good}: 2 recorded, 0 unchanged" in ok.stdout
    assert "imported 1 file, refused 0, 0 imported before" in ok.stdout and ok.stderr == ""

    bad = drop / files.REPORTS_DIR / ship / "0000000002000-00000000000000aa.json"
    bad.write_text("not json")
    good2 = drop_report(drop / files.REPORTS_DIR, ship, [applied(2, V2.checksum, ok=False)], at=3000)
    refused = run("import-reports", "--store", store_url, "--from", str(drop / files.REPORTS_DIR))
    assert refused.returncode == 1
    assert f"refused {bad}: not JSON" in refused.stderr
    assert f"imported {good2}: 1 recorded, 0 unchanged" in refused.stdout
    assert "imported 1 file, refused 1, 1 imported before" in refused.stdout

    missing = run("import-reports", "--store", store_url, "--from", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "is not a folder of client reports" in missing.stderr
    no_store = run("import-reports", "--store", f"sqlite:///{tmp_path / 'none.db'}", "--from", str(drop))
    assert no_store.returncode == 2 and "does not exist" in no_store.stderr


def test_report_validation_needs_no_starlette() -> None:
    code = (
        "import sys, migsync.server.validation, migsync.server.import_reports, migsync.server.export; "
        "sys.exit('starlette' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_export_import_and_publish_speak_json(tmp_path: Path, key_path: Path, store_url: str) -> None:
    ids = asyncio.run(make_store(store_url, key_path, [V1], clients=("ship",)))
    migrations = tmp_path / "m"
    migrations.mkdir()
    (migrations / "0007_a.sql").write_text("-- migrate:up\nCREATE TABLE a (x INTEGER);\n")
    published = run(
        "publish",
        "--migrations",
        str(migrations),
        "--store",
        store_url,
        "--signing-key",
        str(key_path),
        "--json",
    )
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout) == {
        "added": ["0007_a"],
        "unchanged": [],
        "replaced": [],
        "resigned": [],
        "rollout_id": None,
    }

    drop = tmp_path / "drop"
    exported = run("export", "--store", store_url, "--to", str(drop), "--json")
    assert exported.returncode == 0, exported.stderr
    body = json.loads(exported.stdout)
    assert body["written"] == [V1.name, "0007_a"] and body["manifest_written"] is True
    assert body["client_folders"] == [str(ids["ship"])]

    ship = str(ids["ship"])
    good = drop_report(drop / files.REPORTS_DIR, ship, [applied(1, V1.checksum)], at=1000)
    (drop / files.REPORTS_DIR / ship / "0000000002000-00000000000000aa.json").write_text("not json")
    imported = run("import-reports", "--store", store_url, "--from", str(drop), "--json")
    assert imported.returncode == 1, "a refused file still makes it exit 1"
    body = json.loads(imported.stdout)
    assert [f["path"] for f in body["imported"]] == [str(good)]
    assert [f["reason"].split(" (")[0] for f in body["refused"]] == ["not JSON"]
    assert body["imported"][0]["recorded"] == ["1"], "versions are strings in JSON, as everywhere"
