"""Odd files wherever migsync reads one: FIFOs, sockets, devices, symlink loops, NUL bytes, a
SQLite path that cannot be a database.

Each is one ``error:`` line and exit 2, or, among a client's files that ``import-reports``
takes one by one, a refusal that names the file: never a hang, never a traceback. A FIFO
hangs whoever opens it without ``O_NONBLOCK``, so those cases run the real ``migsync``
command, whose timeout (:func:`dbtools.run`) fails the test instead of stalling the run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import write_migrations
from dbtools import imported_name, query, run, sqlite_path, tables

from migsync.core.errors import SourceError
from migsync.core.sources import load_directory
from migsync.core.version import Version

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and symlinks: POSIX only")

MIGRATIONS = {
    "0001_a.sql": "-- migrate:up\nCREATE TABLE a (x INTEGER);\n",
    "0002_b.sql": "-- migrate:up\nCREATE TABLE b (x INTEGER);\n",
}


def one_error(result: subprocess.CompletedProcess[str], line: str) -> None:
    """``result`` exited 2 with ``line`` (after ``error: ``) as all of its stderr."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines() == [f"error: {line}"], result.stderr
    assert result.returncode == 2


def a_fifo(path: Path) -> None:
    os.mkfifo(path)


def a_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))  # the file stays when the socket is closed


def a_device(path: Path) -> None:
    path.symlink_to(os.devnull)


def a_loop(path: Path) -> None:
    path.symlink_to(path.name)


SPECIAL: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (a_fifo, "not a regular file (a FIFO)"),
    "socket": (a_socket, "not a regular file (a socket)"),
    "device": (a_device, "not a regular file (a character device)"),
}


# -- the migrations folder ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SPECIAL)
def test_a_special_file_in_the_migrations_folder_is_one_error_not_a_hang(
    tmp_path: Path, db_url: str, kind: str
) -> None:
    make, what = SPECIAL[kind]
    folder = write_migrations(tmp_path / "migrations", {"0001_a.sql": MIGRATIONS["0001_a.sql"]})
    make(folder / "0002_b.sql")
    result = run("apply", "--migrations", str(folder), "--db", db_url)
    one_error(result, f"{folder / '0002_b.sql'}: cannot read file: {what}")
    assert not Path(sqlite_path(db_url)).exists()  # the folder is read before the database is opened


def test_a_symlink_loop_in_the_migrations_folder_is_one_error(tmp_path: Path, db_url: str) -> None:
    folder = write_migrations(tmp_path / "migrations", {"0001_a.sql": MIGRATIONS["0001_a.sql"]})
    a_loop(folder / "0002_b.sql")
    with pytest.raises(SourceError) as info:
        load_directory(folder)
    assert str(info.value) == f"{folder / '0002_b.sql'}: cannot read file: a symlink loop"
    result = run("apply", "--migrations", str(folder), "--db", db_url)
    one_error(result, f"{folder / '0002_b.sql'}: cannot read file: a symlink loop")


def test_a_symlink_loop_the_loader_does_not_read_is_ignored(tmp_path: Path, db_url: str) -> None:
    folder = write_migrations(tmp_path / "migrations", MIGRATIONS)
    (folder / "notes").symlink_to("notes.md")
    (folder / "notes.md").symlink_to("notes")
    result = run("apply", "--migrations", str(folder), "--db", db_url)
    assert result.returncode == 0, result.stderr
    assert tables(db_url, bookkeeping=False) == {"a", "b"}


def test_a_nul_byte_in_a_migration_file_is_an_error_naming_its_line(tmp_path: Path, db_url: str) -> None:
    folder = write_migrations(tmp_path / "migrations", MIGRATIONS)
    path = folder / "0002_b.sql"
    data = b"-- migrate:up\nCREATE TABLE b (x INTEGER);\nINSERT INTO b VALUES (1)\0;\n"
    path.write_bytes(data)
    with pytest.raises(SourceError) as info:
        load_directory(folder)
    assert (info.value.path, info.value.line) == (path, 3)
    offset = data.index(b"\0")
    message = (
        f"{path}:3: NUL byte at line 3 (offset {offset}): migration files are text; save the file as UTF-8"
    )
    assert str(info.value) == message
    result = run("apply", "--migrations", str(folder), "--db", db_url)
    one_error(result, message)
    assert tables(db_url, bookkeeping=False) == set()  # refused before anything ran


# -- a drop folder, on the client's side ----------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """A store with migrations 1 and 2 published and clients ship and kiosk, exported to a
    drop folder: made once, by the commands; each test takes a copy (:func:`drop`)."""
    root = tmp_path_factory.mktemp("exported")
    store = f"sqlite:///{root / 'server.db'}"
    assert run("keygen", "--out", str(root / "key")).returncode == 0
    ids = {}
    for name in ("ship", "kiosk"):
        added = run("clients", "add", name, "--store", store, "--json")
        assert added.returncode == 0, added.stderr
        ids[name] = str(json.loads(added.stdout)["client_id"])
    folder = write_migrations(root / "migrations", MIGRATIONS)
    steps = [
        ("publish", "--migrations", str(folder), "--signing-key", str(root / "key"), "--store", store),
        ("export", "--store", store, "--to", str(root / "drop")),
    ]
    for step in steps:
        result = run(*step)
        assert result.returncode == 0, result.stderr
    return {"root": root, "store": store, **ids}


@pytest.fixture
def drop(tmp_path: Path, exported: dict[str, Path | str]) -> dict[str, Path | str]:
    """This test's own copy of the exported drop folder and store."""
    root = Path(exported["root"])
    shutil.copytree(root / "drop", tmp_path / "drop", symlinks=True)
    shutil.copy(root / "server.db", tmp_path / "server.db")
    return {
        **exported,
        "drop": tmp_path / "drop",
        "store": f"sqlite:///{tmp_path / 'server.db'}",
        "pub": root / "key.pub",
    }


def client_sync(
    drop: dict[str, Path | str], db_url: str, client: str = "ship"
) -> subprocess.CompletedProcess[str]:
    return run(
        "client", "sync", "--db", db_url, "--server", f"file://{drop['drop']}",
        "--client-id", str(drop[client]), "--trust-key", str(drop["pub"]),
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["fifo", "loop"])
def test_a_manifest_that_is_no_file_is_one_error_not_a_hang(
    drop: dict[str, Path | str], db_url: str, kind: str
) -> None:
    manifest = Path(drop["drop"]) / "manifest.json"
    manifest.unlink()
    (a_fifo if kind == "fifo" else a_loop)(manifest)
    result = client_sync(drop, db_url)
    what = "not a regular file (a FIFO)" if kind == "fifo" else "a symlink loop; refusing to read it"
    one_error(result, f"{manifest}: {what}")


def test_a_bundle_that_is_a_fifo_is_refused_and_the_rest_applied(
    drop: dict[str, Path | str], db_url: str
) -> None:
    bundle = Path(drop["drop"]) / "migrations" / "0002_b.json"
    bundle.unlink()
    a_fifo(bundle)
    result = client_sync(drop, db_url)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1  # a refused migration, as for a bundle that does not verify
    [line] = [line for line in result.stderr.splitlines() if str(bundle) in line]
    assert line.startswith("refused") and line.endswith(f"{bundle}: not a regular file (a FIFO)")
    assert tables(db_url, bookkeeping=False) == {"a"}


def test_a_requests_file_that_is_a_fifo_is_a_warning_and_the_migrations_run(
    drop: dict[str, Path | str], db_url: str
) -> None:
    requests = Path(drop["drop"]) / "actions" / f"{drop['ship']}.json"
    requests.parent.mkdir()
    a_fifo(requests)
    result = client_sync(drop, db_url)
    assert result.returncode == 0, result.stderr
    warning = "WARNING migsync.filedrop: the admin's requests are not read"
    assert result.stderr.splitlines() == [f"{warning}: {requests}: not a regular file (a FIFO)"]
    assert tables(db_url, bookkeeping=False) == {"a", "b"}


# -- a drop folder, on the server's side: export and import-reports ----------------------------------


def test_export_replaces_a_fifo_where_its_manifest_goes(drop: dict[str, Path | str], db_url: str) -> None:
    manifest = Path(drop["drop"]) / "manifest.json"
    manifest.unlink()
    a_fifo(manifest)
    result = run("export", "--store", str(drop["store"]), "--to", str(drop["drop"]))
    assert result.returncode == 0, result.stderr
    assert "manifest written" in result.stdout and manifest.is_file()
    assert client_sync(drop, db_url).returncode == 0


def test_import_reports_names_and_skips_a_fifo_and_imports_every_other_file(
    drop: dict[str, Path | str], tmp_path: Path
) -> None:
    folder = Path(drop["drop"])
    ship, kiosk = str(drop["ship"]), str(drop["kiosk"])
    for client in ("ship", "kiosk"):
        synced = client_sync(drop, f"sqlite:///{tmp_path / client}.db", client)
        assert synced.returncode == 0, synced.stderr
    [ship_report] = (folder / "reports" / ship).iterdir()
    [kiosk_report] = (folder / "reports" / kiosk).iterdir()
    # Named like report and changes files, and older than the clients' own: read first.
    fifos = [
        folder / "reports" / ship / "0000000001000-0123456789abcdef.json",
        folder / "reports" / kiosk / "0000000001000-0123456789abcdef.json",
        folder / "changes" / ship / "0000000001000-0123456789abcdef.json",
    ]
    fifos[-1].parent.mkdir(parents=True)
    for fifo in fifos:
        a_fifo(fifo)
    result = run("import-reports", "--store", str(drop["store"]), "--from", str(folder))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1  # as for any refused file
    assert sorted(result.stderr.splitlines()) == sorted(
        f"refused {p}: not a regular file (a FIFO)" for p in fifos
    )
    assert imported_name(ship_report).exists() and imported_name(kiosk_report).exists()
    assert all(fifo.exists() for fifo in fifos)  # left where they are
    applied = query(str(drop["store"]), "SELECT client_id, version FROM store_client_status WHERE applied")
    assert sorted(applied) == sorted((int(c), Version.parse(v).key) for c in (ship, kiosk) for v in (1, 2))


# -- keys and the configuration file ---------------------------------------------------------------------


@pytest.mark.parametrize("which", ["trusted key", "signing key", "configuration file"])
def test_a_key_or_configuration_file_that_is_a_fifo_is_one_error_not_a_hang(
    tmp_path: Path, db_url: str, which: str
) -> None:
    fifo = tmp_path / "fifo"
    a_fifo(fifo)
    store = f"sqlite:///{tmp_path / 'server.db'}"
    folder = write_migrations(tmp_path / "migrations", MIGRATIONS)
    sync = ["client", "sync", "--db", db_url, "--server", f"file://{tmp_path}", "--client-id", "1"]
    message = f"cannot read {which} {fifo}: not a regular file (a FIFO)"
    if which == "configuration file":  # a bad option value, in click's words
        result = run("client", "sync", "--config", str(fifo))
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"error: Invalid value for '--config': {message}" in result.stderr.splitlines()
        return
    command = {
        "trusted key": [*sync, "--trust-key", str(fifo)],
        "signing key": ["publish", "--migrations", str(folder), "--store", store, "--signing-key", str(fifo)],
    }[which]
    one_error(run(*command), message)


# -- a SQLite path that cannot be a database ---------------------------------------------------------------


def a_folder(path: Path) -> None:
    path.mkdir()


UNOPENABLE: dict[str, tuple[Callable[[Path], None], str]] = {
    "a folder": (a_folder, "not a regular file (a directory)"),
    "a FIFO": (a_fifo, "not a regular file (a FIFO)"),
    "a device": (a_device, "not a regular file (a character device)"),
    "a symlink loop": (a_loop, "a symlink loop"),
}


@pytest.mark.parametrize("kind", UNOPENABLE)
@pytest.mark.parametrize("command", ["apply", "status"])
def test_a_sqlite_path_that_is_no_database_file_is_one_error(tmp_path: Path, kind: str, command: str) -> None:
    make, what = UNOPENABLE[kind]
    path = tmp_path / "client.db"
    make(path)
    folder = write_migrations(tmp_path / "migrations", MIGRATIONS)
    args = ["--migrations", str(folder)] if command == "apply" else []
    result = run(command, *args, "--db", f"sqlite:///{path}")
    one_error(result, f"cannot open SQLite database {path}: {what}")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_sqlite_file_that_cannot_be_made_is_one_error_and_no_thread_traceback(tmp_path: Path) -> None:
    # Its folder is there, but nothing can be made in it, not even by root: SQLite's own
    # refusal, which used to leave aiosqlite's worker thread printing a traceback at exit.
    path = Path("/proc/self/client.db")
    folder = write_migrations(tmp_path / "migrations", MIGRATIONS)
    result = run("apply", "--migrations", str(folder), "--db", f"sqlite:///{path}")
    one_error(result, f"cannot open SQLite database {path}: unable to open database file")
