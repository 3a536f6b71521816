"""README.md's tour, run as a newcomer pastes it: every ``migsync`` command in its shell blocks.

The commands and files are read from README.md itself, so the README cannot drift from what
migsync does: a transcript line (``$ migsync ...``) must exit as its comment says (0, or 1 when
it says ``exit 1``) and print what the README shows below it, with times and timings left
out of the comparison. Plain command blocks must run; only their host names, ports and
secrets are replaced by the test's own.
"""

from __future__ import annotations

import json
import re
import shlex
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbtools import MIGSYNC, migsync_env
from forkserver import run_forked
from servers import free_port

README = Path(__file__).resolve().parent.parent / "README.md"


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def block_with(first_words: str) -> str:
    [block] = [b for b in shell_blocks() if first_words in b]
    return block


def transcript(block: str) -> Iterator[tuple[str, list[str]]]:
    """Each ``$ command`` of ``block`` with the output lines the README shows under it."""
    command: str | None = None
    shown: list[str] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            if command is not None:
                yield command, shown
            command, shown = line[2:], []
        elif command is not None and line.strip():
            shown.append(line)
    if command is not None:
        yield command, shown


def commands(block: str) -> list[str]:
    """The commands of a plain block: comments dropped, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", block)
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def normalised(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        line = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "<time>", line)
        line = re.sub(r"in \d+ ms", "in <n> ms", line)
        line = re.sub(r"SQLite \d+(\.\d+)+", "SQLite <version>", line)
        out.append(" ".join(line.split()))
    return out


def migsync(command: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    words = shlex.split(command, comments=True)
    assert words[0] == "migsync", command
    return run_forked(MIGSYNC, words[1:], {**migsync_env(), **(env or {})}, cwd, timeout=120)


def write_readme_migrations(folder: Path) -> None:
    """The files the tour shows: the native 0001 file and the golang-migrate pair of 0002."""
    (folder / "migrations").mkdir()
    [sql] = re.findall(r"```sql\n(-- migrations/.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    first, _, body = sql.partition("\n")
    (folder / first.removeprefix("-- ")).write_text(body)
    for command, shown in transcript(block_with("$ cat migrations/")):
        (folder / command.removeprefix("cat ")).write_text("\n".join(shown) + "\n")


def check(command: str, shown: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = migsync(command, cwd)
    expected = 1 if "exit 1" in command else 0
    assert result.returncode == expected, f"README: {command}\n{result.stdout}{result.stderr}"
    if shown:
        assert normalised(result.stdout.splitlines()) == normalised(shown), f"README: {command}"
    return result


def test_apply_inspect_revert_new_as_the_readme_shows(tmp_path: Path) -> None:
    write_readme_migrations(tmp_path)
    ran = []
    for command, shown in transcript(block_with("$ migsync apply --migrations migrations")):
        result = check(command, shown, tmp_path)
        if "--json" in command:
            assert json.loads(result.stdout)["migrations"]
        ran.append(command.split()[1])
    assert ran == ["apply", "status", "status", "revert", "new", "status"]
    assert (tmp_path / "migrations" / "0003_add_orders.up.sql").is_file()


def test_postgres_only_the_url_changes(tmp_path: Path, pg_url: str) -> None:
    write_readme_migrations(tmp_path)
    [command] = commands(block_with("--db 'postgresql://"))
    readme_url = re.search(r"'(postgresql://[^?']+)", command)
    assert readme_url is not None
    result = migsync(command.replace(readme_url.group(1), pg_url), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "applied 2 migrations" in result.stdout


def test_baseline_takes_over_a_database_migrated_by_hand(tmp_path: Path) -> None:
    write_readme_migrations(tmp_path)
    with sqlite3.connect(tmp_path / "app.db") as conn:  # migrated by hand, before migsync
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        conn.execute("ALTER TABLE users ADD COLUMN email TEXT")
    [(baseline, shown), (adopt, _)] = list(transcript(block_with("$ migsync baseline")))
    check(baseline, shown, tmp_path)
    again = migsync("migsync apply --migrations migrations --db sqlite:///app.db", tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    # adopt, on a database with no other tool's history table, says what it looked for.
    refused = migsync(adopt, tmp_path)
    assert refused.returncode == 2 and refused.stderr.startswith("error: ")


def test_a_dead_migration_is_revived_as_the_readme_shows(tmp_path: Path) -> None:
    write_readme_migrations(tmp_path)
    index = tmp_path / "migrations" / "0003_add_index.sql"
    index.write_text("-- migrate:up\nCREATE INDEX audit_at ON audit (at);\n")  # audit: not there yet
    apply = "migsync apply --migrations migrations --db sqlite:///app.db --max-attempts 1"
    assert migsync(apply, tmp_path).returncode == 1
    with sqlite3.connect(tmp_path / "app.db") as conn:  # the cause, fixed outside the file
        conn.execute("CREATE TABLE audit (at TEXT)")
    queue, process = commands(block_with("migsync queue --db"))
    assert migsync(queue, tmp_path).returncode == 0
    processed = migsync(process, tmp_path)
    assert processed.returncode == 0, processed.stderr
    assert "0003_add_index" in processed.stdout


def test_a_server_and_its_clients_as_the_readme_shows(tmp_path: Path) -> None:
    write_readme_migrations(tmp_path)
    steps = commands(block_with("# the publishing side"))
    port = free_port()
    env = {"ADMIN_TOKEN": "admin-secret"}
    server = None
    try:
        for step in steps:
            step = step.replace("--port 8000", f"--port {port}").replace(
                "http://server:8000", f"http://127.0.0.1:{port}"
            )
            step = step.replace('"$ADMIN_TOKEN"', env["ADMIN_TOKEN"]).replace(
                '"$TOKEN"', env.get("TOKEN", "")
            )
            if step.startswith("migsync client run ..."):
                continue  # the same options as client sync, forever: client sync stands for it
            if step.startswith("migsync serve"):
                words = shlex.split(step, comments=True)
                server = subprocess.Popen(
                    [MIGSYNC, *words[1:]], cwd=tmp_path, env=migsync_env(), stdout=subprocess.PIPE, text=True
                )
                assert server.stdout is not None
                line = server.stdout.readline()
                assert line == f"migsync: API at http://127.0.0.1:{port}/api/\n"
                continue
            result = migsync(step, tmp_path)
            assert result.returncode == 0, f"README: {step}\n{result.stdout}{result.stderr}"
            if step.startswith("migsync clients add"):
                env["TOKEN"] = result.stdout.split()[-1]  # the last line, indented: the token
            if step.startswith("migsync fleet"):
                assert "shop-berlin" in result.stdout
        assert server is not None and server.poll() is None
        fleet = migsync("migsync fleet --store sqlite:///server.db --json", tmp_path)
        [client] = json.loads(fleet.stdout)["clients"]
        assert client["name"] == "shop-berlin" and client["applied"] == ["1", "2"]
    finally:
        if server is not None:
            server.terminate()
            server.communicate(timeout=30)


def every_doc_block() -> list[tuple[str, str]]:
    docs = [README, *sorted((README.parent / "docs").glob("*.md"))]
    return [
        (f"{path.name}#{n}", block)
        for path in docs
        for n, block in enumerate(
            re.findall(r"```(?:sh|console|bash)\n(.*?)```", path.read_text(), re.DOTALL)
        )
        if re.search(r"^\$? ?migsync ", block, re.MULTILINE)
    ]


@pytest.mark.parametrize(("where", "block"), every_doc_block(), ids=[w for w, _ in every_doc_block()])
def test_every_documented_command_is_a_real_one(where: str, block: str) -> None:
    """No command in README.md or docs/ names a subcommand or option that migsync does not have."""
    for command in [c for c, _ in transcript(block)] or commands(block):
        if not command.startswith("migsync "):
            continue
        command = re.split(r" \| | && | > ", command)[0]  # migsync's own words, before a pipe
        words = shlex.split(command, comments=True)
        if words[0] != "migsync" or "..." in words:
            continue
        path = [w for w in words[1:] if not w.startswith("-")][:2]
        help_result = run_forked(MIGSYNC, [*path[:1], "--help"], migsync_env(), None, timeout=60)
        assert help_result.returncode == 0, f"{where}: {command}"
        if path and path[0] in ("client", "clients", "actions", "changes", "rollout") and len(path) > 1:
            help_result = run_forked(MIGSYNC, [*path, "--help"], migsync_env(), None, timeout=60)
            assert help_result.returncode == 0, f"{where}: {command}"
        for option in [w.split("=")[0] for w in words if w.startswith("--")]:
            assert option in help_result.stdout, f"{where}: {command}: no option {option}"
