"""Write the server's OpenAPI document and the wire formats' JSON Schemas into docs/schemas/.

The same documents the server serves (``GET /api/openapi.json``, ``GET /api/schemas/NAME.json``),
made by the same code (:mod:`migsync.server.openapi`, :mod:`migsync.protocol.wire_schema`), so that
the docs can link them and a client in another language can take them from the repository.
``--check`` only says which files differ and exits 1 (tests/test_openapi.py runs it so, so a
changed schema cannot leave the docs behind)::

    python scripts/api_schemas.py          # rewrite docs/schemas/
    python scripts/api_schemas.py --check  # exit 1 if a file is stale, missing or left over
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from migsync.protocol.wire_schema import SCHEMAS, standalone
from migsync.server.openapi import openapi_document

FOLDER = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def documents() -> dict[str, str]:
    """Every file of docs/schemas/ by name, as it should read."""
    files = {"openapi.json": dump(openapi_document())}
    files.update({f"{name}.json": dump(standalone(name)) for name in SCHEMAS})
    return files


def stale(folder: Path = FOLDER) -> list[str]:
    """The files of ``folder`` that differ from :func:`documents`, are missing or are left over."""
    wanted = documents()
    present = {path.name for path in folder.glob("*.json")} if folder.is_dir() else set()
    problems = [
        name
        for name, text in wanted.items()
        if name not in present or (folder / name).read_text(encoding="utf-8") != text
    ]
    return problems + sorted(present - set(wanted))


def write(folder: Path = FOLDER) -> list[str]:
    """Bring ``folder`` up to date; the names of the files written or removed."""
    changed = stale(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = documents()
    for name in changed:
        if name in wanted:
            (folder / name).write_text(wanted[name], encoding="utf-8")
        else:
            (folder / name).unlink()
    return changed


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        problems = stale()
        if problems:
            print(f"docs/schemas/ is stale ({', '.join(problems)}): run python scripts/api_schemas.py")
            return 1
        return 0
    if argv:
        print(__doc__)
        return 2
    for name in write():
        print(f"wrote docs/schemas/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
