"""The fork server (tests/forkserver.py) runs a command as the console script does: same output,
exit code, environment and working directory, and nothing carried from one command to the next."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import write_migrations
from dbtools import MIGSYNC, long_statement, migsync_env
from forkserver import run_forked


def fresh(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The console script in a new interpreter, as every command ran before the fork server."""
    return subprocess.run(
        [MIGSYNC, *args], capture_output=True, text=True, cwd=cwd, env={**migsync_env(), **env}, timeout=60
    )


def same(text: str, folder: str) -> str:
    """``text`` without what differs between two runs: the folder's name, milliseconds."""
    return re.sub(r"\d+ ms\b", "<n> ms", text.replace(folder, "<dir>"))


def forked(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_forked(MIGSYNC, args, {**migsync_env(), **env}, cwd, timeout=60)


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["--help"],
        ["apply", "--nosuch"],  # click's usage error: exit 2
        ["status", "--db", "sqlite:///missing.db"],  # relative to the working directory
        ["apply", "--migrations", "m", "--db", "sqlite:///app.db"],
    ],
    ids=["version", "help", "usage-error", "status-missing", "apply"],
)
def test_a_forked_command_answers_as_a_new_process_does(tmp_path: Path, args: list[str]) -> None:
    for run, where in ((fresh, "fresh"), (forked, "forked")):
        folder = tmp_path / where
        write_migrations(folder / "m", {"0001_a.up.sql": "CREATE TABLE a (x INTEGER);\n"})
        result = run(args, folder)
        if run is fresh:
            expected = result
        else:
            assert result.returncode == expected.returncode
            assert same(result.stdout, "forked") == same(expected.stdout, "fresh")
            assert same(result.stderr, "forked") == same(expected.stderr, "fresh")
    # Written where the command ran: its own working directory.
    assert os.path.exists(tmp_path / "forked" / "app.db") == ("sqlite:///app.db" in args)


def test_the_environment_is_the_commands_own_and_nothing_leaks_to_the_next(tmp_path: Path) -> None:
    write_migrations(tmp_path / "m", {"0001_a.up.sql": "CREATE TABLE a (x INTEGER);\n"})
    quiet = forked(["apply", "--migrations", "m"], tmp_path, MIGSYNC_DB=f"sqlite:///{tmp_path / 'a.db'}")
    assert quiet.returncode == 0 and "migsync.events" not in quiet.stderr, quiet.stderr
    # The variable went with that command only ...
    assert forked(["status"], tmp_path).returncode == 2
    # ... and so did its logging set-up (events silenced without -v): -v shows them again.
    verbose = forked(["-v", "apply", "--migrations", "m", "--db", f"sqlite:///{tmp_path / 'b.db'}"], tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    assert "INFO migsync.events: migration_applied name='0001_a'" in verbose.stderr


def test_a_command_that_outlives_its_timeout_is_killed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    folder = write_migrations(tmp_path / "m", {"0001_slow.up.sql": f"{long_statement(url, 60)};\n"})
    with pytest.raises(subprocess.TimeoutExpired):
        run_forked(MIGSYNC, ["apply", "--migrations", str(folder), "--db", url], migsync_env(), tmp_path, 1)
    # The fork server is still there for the next command.
    assert forked(["--version"], tmp_path).returncode == 0
