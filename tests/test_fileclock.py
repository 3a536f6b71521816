"""The test clock of ``migsync`` subprocesses (``MIGSYNC_TEST_CLOCK``): what it reads, how it moves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import write_migrations
from dbtools import ClockFile, run

from migsync.core.errors import ConfigError
from migsync.testing.fileclock import ENV, FileClock, from_environment, write_now


def test_the_clock_reads_its_file_and_a_sleep_moves_it_on(tmp_path: Path) -> None:
    path = tmp_path / "now"
    write_now(path, 1000.5)
    clock = FileClock(path)
    assert clock.now() == 1000.5
    asyncio.run(clock.sleep(30))
    assert clock.now() == 1030.5 and path.read_text().strip() == "1030.5"
    asyncio.run(clock.sleep(-5))  # never backwards
    assert clock.now() == 1030.5


def test_the_environment_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert from_environment() is None
    monkeypatch.setenv(ENV, str(tmp_path / "now"))
    clock = from_environment()
    assert clock is not None and clock.path == tmp_path / "now"


@pytest.mark.parametrize("text", [None, "soon"])
def test_a_missing_or_bad_file_is_a_config_error_naming_it(tmp_path: Path, text: str | None) -> None:
    path = tmp_path / "now"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=rf"{path}: MIGSYNC_TEST_CLOCK must name a file"):
        FileClock(path).now()


def test_the_command_dates_what_it_records_by_the_file(tmp_path: Path, db_url: str) -> None:
    migrations = write_migrations(tmp_path / "m", {"0001_t.sql": "-- migrate:up\nCREATE TABLE t (x);\n"})
    clock = ClockFile(tmp_path / "now", now=1_800_000_000.0)
    applied = run("apply", "--migrations", str(migrations), "--db", db_url, env=clock.env)
    assert applied.returncode == 0, applied.stderr
    status = run("status", "--db", db_url, "--json")
    assert '"applied_at": "2027-01-15T08:00:00Z"' in status.stdout, status.stdout
    other = f"sqlite:///{tmp_path / 'other.db'}"
    bad = run("apply", "--migrations", str(migrations), "--db", other, env={ENV: str(tmp_path / "missing")})
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "missing" in bad.stderr, bad.stderr
