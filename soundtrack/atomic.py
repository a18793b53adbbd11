"""Writing a file so that readers see the old content or the new, never part of either, even
after a crash: a temporary name beside the target, fsynced, renamed over it, folder fsynced."""

from __future__ import annotations

import contextlib
import filecmp
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield an unused temporary path beside `path` for the caller to write and close. On
    success it is fsynced, renamed over `path` (os.replace, atomic) and the folder fsynced, so
    the rename happens only once the data is on disk and survives a crash; on failure it is
    deleted and `path` is untouched. The writer creates the file, so it gets the usual
    permissions (what `cp` gives under the umask; mkstemp's would be 0600)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.part")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries (a rename or a new file in it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clear_folder(path: Path) -> None:
    """Remove a folder (not a link) where a file of a cache of ours is to be written: nothing
    renames over one, so each write there would fail, build after build."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)


def link_twins(folder: Path, twin: Path) -> None:
    """Make each file under `folder` that holds the same bytes as its twin under `twin` a hard
    link to it (never written in place after), else leave it a copy; links are not followed."""
    if folder.is_symlink() or twin.is_symlink():
        return
    for path in folder.rglob("*"):
        other = twin / path.relative_to(folder)
        try:
            if path.is_symlink() or other.is_symlink() or not (path.is_file() and other.is_file()):
                continue
            if os.path.samefile(path, other) or not filecmp.cmp(path, other, shallow=False):
                continue
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.part")
            os.link(other, tmp)
        except OSError:
            continue
        try:
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
