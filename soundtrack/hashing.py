"""Reading and hashing files that may not be what their names say (a FIFO, a folder, a link),
kept apart so storage and renders need neither YAML nor pydantic."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO


def open_regular(path: Path, *, follow_links: bool = True) -> BinaryIO:
    """`path` opened to read when it is a regular file; OSError for anything else (a FIFO,
    which would wait for a writer, a folder, or a link when `follow_links` is off)."""
    # Non-blocking: opening a FIFO for reading waits for a writer, which may never come.
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        regular_stat(fd, path)
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def regular_stat(fd: int, path: Path) -> os.stat_result:
    """The stat of the open file `fd` (at `path`); OSError unless it is a regular file."""
    found = os.fstat(fd)
    if not stat.S_ISREG(found.st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return found


def read_regular(path: Path, *, follow_links: bool = True) -> bytes:
    """The bytes of a regular file (as open_regular)."""
    with open_regular(path, follow_links=follow_links) as handle:
        return handle.read()


def file_sha256(path: Path, *, follow_links: bool = True) -> str:
    """Hex sha256 of a regular file (as open_regular), read in blocks."""
    digest = hashlib.sha256()
    with open_regular(path, follow_links=follow_links) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
