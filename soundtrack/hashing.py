"""Content hashes of files, kept apart so storage and renders need neither YAML nor pydantic."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path


def file_sha256(path: Path) -> str:
    """Hex sha256 of a regular file, read in blocks; OSError for anything else."""
    digest = hashlib.sha256()
    # Non-blocking: opening a FIFO for reading waits for a writer, which may never come.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
