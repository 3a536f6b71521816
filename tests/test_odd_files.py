"""Odd files wherever migsync reads one: FIFOs, sockets, devices, symlink loops, NUL bytes, a
SQLite path that cannot be a database.

Each is one ``error:`` line and exit 2, or, among a client's files that ``import-reports``
takes one by one, a refusal that names the file: never a hang, never a traceback. A FIFO
hangs whoever opens it without ``O_NONBLOCK``, so those cases run the real ``migsync``
command, whose timeout (:func:`dbtools.run`) fails the test instead of stalling the run.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import write_migrations
from dbtools import run, sqlite_path, tables

from migsync.core.errors import SourceError
from migsync.core.sources import load_directory

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
