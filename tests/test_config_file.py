"""``migsync.toml`` for every command: top-level keys, command and group tables, paths, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_migrations
from dbtools import run_in_clean_env, tables

from migsync.cli import main
from migsync.cli.config import default_map
from migsync.core.errors import ConfigError

USERS = "-- migrate:up\nCREATE TABLE users (id INTEGER PRIMARY KEY);\n-- migrate:down\nDROP TABLE users;\n"


def test_top_level_keys_serve_every_command_and_tables_win(tmp_path: Path) -> None:
    config = tmp_path / "migsync.toml"
    config.write_text(
        'db = "sqlite:///top.db"\n'
        'migrations = "db/migrations"\n'
        "max_attempts = 5\n"
        "[status]\n"
        'db = "sqlite:///status.db"\n'
        "[client]\n"
        'server = "http://127.0.0.1:1"\n'
        'trust_key = "keys/server.pub"\n'
        "[client.run]\n"
        "interval = 60\n"
    )
    defaults = default_map(config, main)
    assert defaults["apply"]["db_url"] == "sqlite:///top.db"
    assert defaults["apply"]["directory"] == str(tmp_path / "db" / "migrations"), "relative to the file"
    assert defaults["apply"]["max_attempts"] == 5
    # status --migrations DIR compares the folder with the database: the top-level key serves it too.
    assert defaults["status"] == {
        "db_url": "sqlite:///status.db",
        "directory": str(tmp_path / "db" / "migrations"),
    }
    assert defaults["client"]["sync"]["trust_keys"] == [str(tmp_path / "keys" / "server.pub")]
    assert defaults["client"]["sync"]["db_url"] == "sqlite:///top.db"
    assert "interval" not in defaults["client"]["sync"] and defaults["client"]["run"]["interval"] == 60


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('dbb = "x"\n', "unknown key dbb at the top of the file"),
        ("[aply]\n", "no command aply for a table in the file"),
        ('[apply]\nstore = "x"\n', r"unknown key store in \[apply\] \(known: .*db"),
        ("[client.snyc]\n", r"no command snyc for a table in \[client\]"),
        ("[apply]\ndb = [1, 2]\n", r"\[apply\] db must be a single value"),
        ("[apply]\ndb = \n", "is not valid TOML"),
    ],
)
def test_a_mistake_in_the_file_is_named(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "migsync.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        default_map(config, main)


def test_apply_and_status_read_the_file_and_the_command_line_wins(tmp_path: Path) -> None:
    write_migrations(tmp_path / "project" / "db" / "migrations", {"0001_users.sql": USERS})
    (tmp_path / "project" / "migsync.toml").write_text(
        f'db = "sqlite:///{tmp_path / "app.db"}"\nmigrations = "db/migrations"\n'
    )
    applied = run_in_clean_env("apply", cwd=tmp_path / "project")
    assert applied.returncode == 0, applied.stderr
    assert "users" in tables(f"sqlite:///{tmp_path / 'app.db'}")

    status = run_in_clean_env("status", "--json", cwd=tmp_path / "project")
    assert status.returncode == 0, status.stderr
    assert [m["state"] for m in json.loads(status.stdout)["migrations"]] == ["applied"]

    # From elsewhere, with --config: the migrations path is still the file's.
    other = run_in_clean_env(
        "--config",
        str(tmp_path / "project" / "migsync.toml"),
        "apply",
        "--db",
        f"sqlite:///{tmp_path / 'b.db'}",
        cwd=tmp_path,
    )
    assert other.returncode == 0, other.stderr
    assert "users" in tables(f"sqlite:///{tmp_path / 'b.db'}")
    # The environment wins over the file.
    env = run_in_clean_env("apply", cwd=tmp_path / "project", MIGSYNC_DB=f"sqlite:///{tmp_path / 'c.db'}")
    assert env.returncode == 0, env.stderr
    assert (tmp_path / "c.db").exists()


def test_a_bad_file_stops_every_command_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "migsync.toml").write_text('[serve]\nport = "eighty"\nstroe = "x"\n')
    result = run_in_clean_env("status", "--db", "sqlite:///x.db", cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: migsync.toml: unknown key stroe in [serve] (known: admin_token, ")
    missing = run_in_clean_env("--config", "nope.toml", "status", "--db", "sqlite:///x.db", cwd=tmp_path)
    assert (
        missing.returncode == 2 and missing.stderr == "error: configuration file nope.toml does not exist\n"
    )
