"""The docs stay true to the code: docs/cli.md's help blocks are the commands' own help."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _script() -> object:
    spec = importlib.util.spec_from_file_location("cli_help_docs", REPO / "scripts" / "cli_help_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cli_help_docs"] = module
    spec.loader.exec_module(module)
    return module


def test_every_help_block_in_cli_md_is_the_commands_current_help() -> None:
    script = _script()
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    new, stale = script.refreshed(text)  # type: ignore[attr-defined]
    assert stale == [], f"stale help in docs/cli.md for {stale}: run python scripts/cli_help_docs.py"
    assert new == text


def test_a_changed_option_is_caught() -> None:
    script = _script()
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    tampered = text.replace("Show every migration the database knows and its state.", "Show things.", 1)
    assert tampered != text
    _, stale = script.refreshed(tampered)  # type: ignore[attr-defined]
    assert "migsync" in stale or "migsync status" in stale
