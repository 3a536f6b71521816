"""``.env`` files and ``DATABASE_URL``, the conventions dbmate users bring with them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_migrations
from dbtools import run_in_clean_env, tables

from migsync.cli.dotenv import load, parse
from migsync.core.errors import ConfigError

USERS = "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n-- migrate:down\nDROP TABLE users;\n"


def test_the_forms_dbmate_reads() -> None:
    text = (
        "# a comment\n"
        "\n"
        "DATABASE_URL=sqlite:///app.db\n"
        "export MIGSYNC_TOKEN = s3cret   # trailing comment\n"
        "PASSWORD_URL=postgres://u:p#ss@h/db\n"
        "SINGLE='kept \\n as # written'\n"
        'DOUBLE="line\\nnext \\"quoted\\""  # comment\n'
        "EMPTY=\n"
    )
    assert parse(text) == {
        "DATABASE_URL": "sqlite:///app.db",
        "MIGSYNC_TOKEN": "s3cret",
        "PASSWORD_URL": "postgres://u:p#ss@h/db",
        "SINGLE": "kept \\n as # written",
        "DOUBLE": 'line\nnext "quoted"',
        "EMPTY": "",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("GOOD=1\nnot a line\n", r"\.env:2: not a KEY=value line: 'not a line'"),
        ("A='open\n", r"\.env:1: the value's ' quote is never closed"),
        ('A="x" y\n', r"\.env:1: text after the quoted value: 'y'"),
        ("1A=x\n", r"\.env:1: not a KEY=value line"),
    ],
)
def test_a_line_it_cannot_read_is_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(text)


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    env_file = tmp_path / "deploy.env"
    env_file.write_text("A=from-file\nB=from-file\n")
    environ = {"A": "from-shell"}
    assert load(str(env_file), environ) == {"B": "from-file"}
    assert environ == {"A": "from-shell", "B": "from-file"}
    with pytest.raises(ConfigError, match=r"environment file .*missing\.env does not exist"):
        load(str(tmp_path / "missing.env"), {})


def test_apply_takes_its_database_from_dot_env_in_the_working_folder(tmp_path: Path) -> None:
    write_migrations(tmp_path / "db" / "migrations", {"0001_users.sql": USERS})
    (tmp_path / ".env").write_text(f"DATABASE_URL=sqlite:///{tmp_path / 'from-env.db'}\n")

    applied = run_in_clean_env("apply", "--migrations", "db/migrations", cwd=tmp_path)

    assert applied.returncode == 0, applied.stderr
    assert "users" in tables(f"sqlite:///{tmp_path / 'from-env.db'}")


def test_migsync_db_wins_over_database_url_and_the_shell_over_the_file(tmp_path: Path) -> None:
    write_migrations(tmp_path / "m", {"0001_users.sql": USERS})
    (tmp_path / ".env").write_text("MIGSYNC_DB=sqlite:///file.db\nDATABASE_URL=sqlite:///other.db\n")

    run_in_clean_env("apply", "--migrations", "m", cwd=tmp_path, MIGSYNC_DB="sqlite:///shell.db")
    assert (tmp_path / "shell.db").exists() and not (tmp_path / "file.db").exists()

    run_in_clean_env("apply", "--migrations", "m", cwd=tmp_path)
    assert (tmp_path / "file.db").exists() and not (tmp_path / "other.db").exists()

    run_in_clean_env("apply", "--migrations", "m", cwd=tmp_path, DATABASE_URL="sqlite:///url.db")
    assert not (tmp_path / "url.db").exists(), "MIGSYNC_DB from .env still comes before DATABASE_URL"


def test_env_file_names_another_file_and_a_bad_one_is_one_line_and_exit_2(tmp_path: Path) -> None:
    write_migrations(tmp_path / "m", {"0001_users.sql": USERS})
    (tmp_path / "staging.env").write_text("DATABASE_URL=sqlite:///staging.db\n")
    assert (
        run_in_clean_env("--env-file", "staging.env", "apply", "--migrations", "m", cwd=tmp_path).returncode
        == 0
    )
    assert (tmp_path / "staging.env").exists() and (tmp_path / "staging.db").exists()

    missing = run_in_clean_env("--env-file", "nope.env", "status", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr == "error: environment file nope.env does not exist\n"

    (tmp_path / ".env").write_text("DATABASE_URL sqlite:///x.db\n")
    bad = run_in_clean_env("status", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr == "error: .env:1: not a KEY=value line: 'DATABASE_URL sqlite:///x.db'\n"
