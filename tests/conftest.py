from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests build their own plugin managers; never pick up whatever is installed
# in the environment unless a test asks for it.
os.environ.setdefault("MIGSYNC_DISABLE_PLUGIN_AUTOLOAD", "1")

REPO = Path(__file__).resolve().parent.parent
MIGSYNC = str(Path(sys.executable).with_name("migsync"))


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh SQLite database file in the test's own folder."""
    return f"sqlite:///{tmp_path / 'client.db'}"


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory
