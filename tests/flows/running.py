"""Running the `soundtrack` CLI the way a user does, for the end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

SOUNDTRACK = str(Path(sys.executable).with_name("soundtrack"))


def build(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`soundtrack build m.yaml ARGS` in `workdir`; never raises on a non-zero exit."""
    return subprocess.run(
        [SOUNDTRACK, "build", "m.yaml", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def statuses(report: dict[str, Any]) -> dict[str, str]:
    """Track id -> status of a report or lock."""
    return {track["id"]: track["status"] for track in report["tracks"]}
