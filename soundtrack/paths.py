"""Paths as a user types them (manifest fields, flags, environment variables)."""

from __future__ import annotations

import os
from pathlib import Path


def user_path(text: str) -> Path:
    """`text` as a path, with a leading `~` or `~user` expanded as a shell does: left as it is
    when that user has no home (where pathlib's expanduser raises)."""
    return Path(os.path.expanduser(text))
