"""What the commands print, on a terminal and in a pipe: one error style, whole tables, UTC times,
NO_COLOR."""

from __future__ import annotations

import os
import pty
import re
import subprocess
from pathlib import Path

from conftest import write_migrations
from dbtools import MIGSYNC, ClockFile, migsync_env, run

LONG = "20240101120000_a_rather_long_migration_name_that_no_eighty_column_table_would_hold"
UP = "-- migrate:up\nCREATE TABLE a (x INTEGER);\n"
BROKEN = "-- migrate:up\nCREATE TABLE b (x INTEGER) oops;\n"
ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def on_a_terminal(*args: str, columns: int = 80, **env: str) -> str:
    """``migsync ARGS`` with its stdout on a pseudo-terminal of ``columns`` columns: what a person sees."""
    controller, terminal = pty.openpty()
    environ = {**migsync_env(), "COLUMNS": str(columns), "TERM": "xterm", **env}
    if "NO_COLOR" not in env:
        environ.pop("NO_COLOR", None)
    proc = subprocess.Popen([MIGSYNC, *args], stdout=terminal, stderr=subprocess.DEVNULL, env=environ)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the other end closed: the process is done writing
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(controller)
    return b"".join(chunks).decode()


def test_usage_errors_speak_like_every_other_error() -> None:
    unknown = run("apply", "--nope")
    assert unknown.returncode == 2
    lines = unknown.stderr.splitlines()
    assert lines[0] == "Usage: migsync apply [OPTIONS]" and lines[1] == "Try 'migsync apply -h' for help."
    assert lines[-1].startswith("error: No such option '--nope'")
    assert "Error:" not in unknown.stderr
    missing = run("status")
    assert missing.returncode == 2 and missing.stderr.splitlines()[-1] == "error: Missing option '--db'."
    assert run("nosuch").stderr.splitlines()[-1] == "error: No such command 'nosuch'."
    assert run("client", "sync", "--bogus").stderr.splitlines()[-1].startswith("error: No such option")
    assert run("--help").returncode == 0 and run("--version").returncode == 0


def test_a_status_table_in_a_pipe_is_never_cut(tmp_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", {f"{LONG}.sql": UP})
    db = f"sqlite:///{tmp_path / 'a.db'}"
    assert run("apply", "--migrations", str(migrations), "--db", db).returncode == 0

    piped = run("status", "--db", db, env={"COLUMNS": "40"})

    assert LONG in piped.stdout and "…" not in piped.stdout
    [row] = [line for line in piped.stdout.splitlines() if LONG in line]
    assert re.search(rf"20240101120000\s+{LONG}\s+applied\s+{ISO_UTC}\s+1$", row.strip())


def test_on_a_narrow_terminal_the_name_folds_and_the_rest_stays_whole(tmp_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", {f"{LONG}.sql": UP})
    db = f"sqlite:///{tmp_path / 'a.db'}"
    assert run("apply", "--migrations", str(migrations), "--db", db).returncode == 0

    shown = on_a_terminal("status", "--db", db, columns=80, NO_COLOR="1")

    assert "20240101120000 " in shown and "applied" in shown and "…" not in shown
    assert max(len(line) for line in shown.splitlines()) <= 80
    lines = shown.splitlines()
    header = next(line for line in lines if "name" in line and "state" in line)
    start, end = header.index("name"), header.index("state")
    assert LONG not in shown  # folded onto several lines, every character still there
    assert "".join(line[start:end].strip() for line in lines[lines.index(header) + 1 :]).startswith(LONG)


def test_no_color_turns_off_every_style(tmp_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", {"0001_a.sql": UP})
    db = f"sqlite:///{tmp_path / 'a.db'}"
    assert run("apply", "--migrations", str(migrations), "--db", db).returncode == 0

    styled = on_a_terminal("status", "--db", db)
    plain = on_a_terminal("status", "--db", db, NO_COLOR="1")

    assert "\x1b[" in styled  # bold headers and coloured states on a terminal ...
    assert "\x1b[" not in plain and "applied" in plain  # ... and not one escape code with NO_COLOR


def test_retry_times_are_iso_utc(tmp_path: Path) -> None:
    migrations = write_migrations(tmp_path / "m", {"0001_b.sql": BROKEN})
    db = f"sqlite:///{tmp_path / 'a.db'}"
    clock = ClockFile(tmp_path / "now")  # the backoff cannot run out between the two runs
    first = run("apply", "--migrations", str(migrations), "--db", db, env=clock.env)
    assert first.returncode == 1
    assert re.search(rf"next attempt after {ISO_UTC}; later migrations wait for it", first.stderr)
    second = run("apply", "--migrations", str(migrations), "--db", db, env=clock.env)
    assert re.search(
        rf"waiting: the next queued change retries after {ISO_UTC} \(use --retry-now", second.stderr
    )


def test_shell_completion_as_cli_md_shows_it() -> None:
    script = run("--help", env={"_MIGSYNC_COMPLETE": "bash_source"})
    assert script.returncode == 0 and "_migsync_completion()" in script.stdout
    words = run(
        env={"_MIGSYNC_COMPLETE": "bash_complete", "COMP_WORDS": "migsync apply --mi", "COMP_CWORD": "2"}
    )
    assert words.stdout.split() == ["plain,--migrations"]
