"""What ``migsync`` imports to start: the import set of a no-op ``apply``, ``--help`` and
``--version`` is pinned here, so that start-up (paid by every client run) cannot grow unnoticed.

The pins are on modules, not on time: time is measured by hand (bench/startup.py,
docs/performance.md). A module that joins the apply path on purpose is added to
``APPLY_MIGSYNC_MODULES`` with the reason in the commit.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import click
import pytest
from conftest import write_migrations
from dbtools import migsync_env, run

from migsync.cli import COMMANDS, main
from migsync.cli.lazy import load_command

GOOD = {
    "0001_users.sql": "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n"
    "-- migrate:down\nDROP TABLE users;\n",
    "0002_email.up.sql": "ALTER TABLE users ADD COLUMN email TEXT;",
}

#: The packages outside the standard library that a no-op SQLite apply may import.
APPLY_PACKAGES = {"migsync", "click", "attrs", "attr", "pluggy", "aiosqlite"}

#: Every migsync module a no-op SQLite apply may import.
APPLY_MIGSYNC_MODULES = {
    "migsync",
    "migsync.backends",
    "migsync.backends.filelock",
    "migsync.backends.sqlite",
    "migsync.backends.sqlite_functions",
    "migsync.backends.sqlite_keys",
    "migsync.cli",
    "migsync.cli.lazy",
    "migsync.cli.queue",
    "migsync.cli.support",
    "migsync.core",
    "migsync.core.assembly",
    "migsync.core.backend",
    "migsync.core.client",
    "migsync.core.clock",
    "migsync.core.contracts",
    "migsync.core.detect",
    "migsync.core.dialects",
    "migsync.core.errors",
    "migsync.core.events",
    "migsync.core.files",
    "migsync.core.formats",
    "migsync.core.formats.base",
    "migsync.core.formats.flyway",
    "migsync.core.formats.golang_migrate",
    "migsync.core.formats.goose",
    "migsync.core.formats.native",
    "migsync.core.formats.paired",
    "migsync.core.formats.prisma",
    "migsync.core.formats.sqlx",
    "migsync.core.handler",
    "migsync.core.history_sql",
    "migsync.core.hookspecs",
    "migsync.core.ledger",
    "migsync.core.migration",
    "migsync.core.plugins",
    "migsync.core.processor",
    "migsync.core.schema",
    "migsync.core.sources",
    "migsync.core.specs",
    "migsync.core.splitter",
    "migsync.core.tables",
    "migsync.core.version",
    "migsync.core.work",
    "migsync.plugins",
    "migsync.plugins.appliers",
    "migsync.plugins.sinks",
    "migsync.output",
    "migsync.output.report",
    "migsync.output.table",
    "migsync.transports",
}

#: Standard-library modules that cost a start more than they are worth to apply.
SLOW_STDLIB = ("importlib.metadata", "email", "zipfile", "csv", "tomllib", "http", "xml", "unittest")


def imported_by(*argv: str, cwd: Path | None = None) -> set[str]:
    """The modules in ``sys.modules`` after ``migsync ARGV`` ran in a fresh interpreter."""
    probe = (
        "import sys\n"
        "from migsync.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as exit:\n"
        "    assert not exit.code, exit.code\n"
        "print('-- modules --', *sorted(sys.modules), sep='\\n')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *argv],
        capture_output=True, text=True, env=migsync_env(), cwd=cwd, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split("-- modules --\n", 1)[1].split())


def outside_stdlib(modules: set[str]) -> set[str]:
    tops = {name.split(".")[0] for name in modules}
    # The interpreter's own (__main__) and what an editable install or setuptools puts on the path.
    return {t for t in tops if t not in sys.stdlib_module_names and not t.startswith("_")}


def test_a_no_op_apply_imports_only_what_it_needs(tmp_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", GOOD)
    db = f"sqlite:///{tmp_path / 'app.db'}"
    assert run("apply", "--migrations", str(migrations), "--db", db).returncode == 0

    imported = imported_by("apply", "--migrations", str(migrations), "--db", db, cwd=tmp_path)

    assert outside_stdlib(imported) == APPLY_PACKAGES, "a package joined (or left) the apply path"
    ours = {m for m in imported if m == "migsync" or m.startswith("migsync.")}
    assert ours - APPLY_MIGSYNC_MODULES == set(), "migsync modules joined the apply path"
    assert APPLY_MIGSYNC_MODULES - ours == set(), "the apply path lost modules: shrink the pin"
    for slow in SLOW_STDLIB:
        assert slow not in imported, f"a no-op apply imported {slow}"


def test_version_and_help_need_neither_asyncio_nor_a_command_module() -> None:
    for argv in (["--version"], ["--help"]):
        imported = imported_by(*argv)
        ours = {m for m in imported if m.startswith("migsync.")}
        assert ours == {"migsync.cli", "migsync.cli.lazy", "migsync.cli.support"}, argv
        assert outside_stdlib(imported) == {"migsync", "click"}, argv
        for heavy in ("asyncio", "importlib.metadata", "sqlite3", "logging"):
            assert heavy not in imported, f"migsync {argv[0]} imported {heavy}"


def test_help_lists_every_command_with_its_own_short_help() -> None:
    shown = run("--help")
    assert shown.returncode == 0
    listed = shown.stdout.split("Commands:", 1)[1]
    for name in COMMANDS:
        assert f"\n  {name} " in listed, name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_lazy_table_says_what_each_command_says(name: str) -> None:
    # migsync --help shows COMMANDS' short helps without importing a command: they must be the
    # commands' own, and each entry must lead to the command of that name.
    command = load_command(COMMANDS[name].target)
    assert command.name == name
    assert COMMANDS[name].short_help == command.get_short_help_str(limit=10**6)
    assert not command.hidden


def test_every_command_module_registers_what_the_table_lists() -> None:
    ctx = click.Context(main)
    assert main.list_commands(ctx) == sorted(COMMANDS)
    assert all(main.get_command(ctx, name) is not None for name in COMMANDS)


def test_a_status_in_a_pipe_draws_no_rich_table(tmp_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", GOOD)
    db = f"sqlite:///{tmp_path / 'app.db'}"
    assert run("apply", "--migrations", str(migrations), "--db", db).returncode == 0

    imported = imported_by("status", "--db", db)

    assert "rich" not in outside_stdlib(imported)


def test_the_plain_status_is_the_text_rich_draws_in_a_pipe(capsys: pytest.CaptureFixture[str]) -> None:
    from migsync.core.ledger import MigrationState
    from migsync.core.version import Version
    from migsync.output.report import _print_status_rich, print_status

    def state(version: int, name: str, state: str, **more: object) -> MigrationState:
        return MigrationState(Version.parse(version), name, state, "c" * 64, **more)  # type: ignore[arg-type]

    states = [
        state(1, "0001_[x]_漢字", "applied", applied_at=1_700_000_000.0, attempts=1, queued="revert"),
        state(2, "0002_failed", "failed", attempts=2, error="no such table: t [in: INSERT INTO t]"),
        state(3, "0003_dead", "dead", attempts=3, error="boom"),
        state(4, "0004_dirty", "dirty", attempts=1, error="stopped half-way"),
        state(5, "0005_held", "pending", held=True),
        state(20240101120000, "20240101120000_pending", "pending"),
    ]
    for shown in (states, []):
        print_status(shown, sqlite_version="3.40.1")  # capsys: not a terminal, so the plain table
        plain = capsys.readouterr().out
        _print_status_rich(shown, "3.40.1")
        assert plain == capsys.readouterr().out
        assert ("0001_[x]_漢字" in plain) == bool(shown)


def test_a_migsync_process_freezes_its_objects_before_it_ends() -> None:
    # The shutdown's garbage collections would walk every object the imports made (~25 ms of a
    # no-op apply's CPU): the process's own command line freezes them on its way out.
    probe = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count()))\n"
        "from migsync.cli import main\n"
        "sys.argv = ['migsync', '--version']\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=migsync_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    frozen = int(result.stdout.split("frozen ", 1)[1])
    assert frozen > 1000, result.stdout


def test_a_caller_that_passes_its_own_arguments_keeps_its_garbage_collected() -> None:
    # Tests and applications call main([...]) in their own process, which goes on afterwards.
    before = gc.get_freeze_count()
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert gc.get_freeze_count() == before
