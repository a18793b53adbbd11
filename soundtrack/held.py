"""Folders a live process holds: an flock in each, which the kernel releases however the process
ends, so what a killed process left can be told apart from what another process is using."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOLD = ".held"
_MAX_SLOTS = 64


def first_free(root: Path) -> tuple[Path, int]:
    """The first numbered folder under `root` that no live process holds, and the descriptor
    holding it: keep it open for as long as the folder is used. A number whose lock or folder
    is unusable (a folder where the lock goes, a file where the folder goes) is passed over;
    OSError when none of the first _MAX_SLOTS is usable."""
    root.mkdir(parents=True, exist_ok=True)
    for number in range(_MAX_SLOTS):
        try:
            fd = _try_hold(root / f"{number}.lock", create=True)
        except OSError:
            continue
        if fd is None:
            continue
        folder = root / str(number)
        try:
            folder.mkdir(exist_ok=True)
            if folder.is_symlink() or not folder.is_dir():
                raise NotADirectoryError(folder)
        except OSError:
            os.close(fd)
            continue
        return folder, fd
    raise OSError(f"no usable numbered folder under {root} (tried {_MAX_SLOTS})")


@contextmanager
def scratch_folder(root: Path, prefix: str) -> Iterator[Path]:
    """A new folder under `root`, held while in use and deleted after; folders there that
    killed processes left are deleted first."""
    root.mkdir(parents=True, exist_ok=True)
    for folder in root.iterdir():
        _delete_if_left(folder)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    # Held before the hold file has its name: a folder without one is being made, not left.
    making = folder / f"{_HOLD}.new"
    fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    making.rename(folder / _HOLD)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def _delete_if_left(folder: Path) -> None:
    try:
        fd = _try_hold(folder / _HOLD, create=False)
    except OSError:  # no hold file: being made, or not one of these folders
        return
    if fd is None:
        return  # in use
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(fd)


def _try_hold(path: Path, *, create: bool) -> int | None:
    """A descriptor holding an exclusive flock on `path`, or None when a live process has it."""
    # Never through a link: a lock planted as one would open (or make) a file elsewhere.
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT if create else 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
