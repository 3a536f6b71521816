"""Take the admin panel's screenshots for the docs: docs/images/panel-*.png (login, clients,
clients-held, client, migrations, actions, rollouts, rollout). The two at 10,000 clients
(panel-rollouts-10k, panel-clients-10k) come from ``bench/panel.py --screenshots docs/images``.

They come from the browser test itself (tests/test_panel_browser.py: a real server, clients
synced over HTTP, Debian's chromium through Playwright), so the pictures show what the test
checks. Run from anywhere: ``.venv/bin/python scripts/panel_screenshots.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "docs" / "images"


def main() -> int:
    env = {**os.environ, "MIGSYNC_PANEL_SCREENSHOTS": str(IMAGES), "CI": "true"}  # CI: never skip
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_panel_browser.py"]
    result = subprocess.run(command, cwd=REPO, env=env, check=False)
    if result.returncode == 0:
        for image in sorted(IMAGES.glob("panel-*.png")):
            print(f"{image.relative_to(REPO)} ({image.stat().st_size // 1024} KiB)")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
