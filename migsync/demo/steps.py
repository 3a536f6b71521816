"""What both parts of the demo use: the broken and fixed fourth migration, how steps are shown."""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources
from pathlib import Path

import click

BROKEN = """-- migrate:up
ALTER TABLE customer ADD COLUMN email TEXT;  -- typo: the table is 'customers'
-- migrate:down
ALTER TABLE customers DROP COLUMN email;
"""
FIXED = BROKEN.replace("ALTER TABLE customer ADD", "ALTER TABLE customers ADD").replace(
    "  -- typo: the table is 'customers'", ""
)
#: The file name of BROKEN and FIXED.
FOURTH = "0004_add_customer_email.sql"


def command_to_type() -> str:
    """How the person who ran the demo runs migsync again: ``migsync`` if that is on their
    PATH, else the path of this very script (``.venv/bin/migsync`` after ``make demo``)."""
    script = os.path.abspath(sys.argv[0])
    found = shutil.which("migsync")
    if found is not None and os.path.exists(script) and os.path.samefile(found, script):
        return "migsync"
    if os.path.basename(script) == "migsync" and os.path.exists(script):
        return os.path.relpath(script)
    return "migsync"


def step(text: str) -> None:
    click.secho(f"\n== {text}", bold=True)


def part(text: str) -> None:
    click.secho(f"\n#### {text}", bold=True)


def copy_bundled(folder: Path) -> Path:
    """The bundled migrations, copied into ``folder`` (created)."""
    folder.mkdir(parents=True)
    bundled = resources.files("migsync.demo") / "migrations"
    for item in bundled.iterdir():
        if item.name.endswith(".sql"):
            (folder / item.name).write_text(item.read_text(encoding="utf-8"), encoding="utf-8")
    return folder
