"""librosa, with numba's cache of its compiled functions in a folder no other process writes.

By default numba caches librosa's compiled functions beside librosa's own source, shared by every
process. Two processes compiling one function at once can write their machine code under the
same file name and leave an index pointing at the other's code: from then on every call of it,
in every process, segfaults (two builds on a fresh install did this). Each process here takes the
first numbered folder under ~/.cache/soundtrack/numba that no other live process holds (an flock
the kernel releases when the process ends), so later processes reuse the compiled code and no two
write the same folder at once. The folders are the user's, not a project's: compiled code depends
on the machine and librosa alone, so a build with a cache of its own ($SOUNDTRACK_CACHE_DIR)
compiles nothing again.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from pathlib import Path
from types import ModuleType

from soundtrack.held import first_free
from soundtrack.renders import cache_root, user_cache_home

_GUARD = threading.Lock()
_held: list[int] = []  # the lock file of this process's folder, open for the process's life
_chosen: list[Path] = []


def load_librosa() -> ModuleType:
    """librosa, its numba cache in this process's own folder (or $NUMBA_CACHE_DIR when set)."""
    with _GUARD:
        if not _chosen and not os.environ.get("NUMBA_CACHE_DIR"):
            # Before librosa: each of its functions picks its cache folder when it is defined.
            from numba.core import config

            _chosen.append(_own_folder())
            config.CACHE_DIR = str(_chosen[0])  # type: ignore[attr-defined]  # set from env
        import librosa
    return librosa


def _own_folder() -> Path:
    """The user's cache, else the soundtrack cache (a read-only home), else a folder of this
    process's own that goes with it: compiled anew, but never in a folder another writes."""
    for root in (user_cache_home() / "soundtrack" / "numba", cache_root() / "numba"):
        try:
            folder, fd = first_free(root)
        except OSError:
            continue
        _held.append(fd)
        _seed(folder)
        return folder
    private = Path(tempfile.mkdtemp(prefix="soundtrack-numba-"))
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    return private


def _seed(folder: Path) -> None:
    """A new folder starts as a copy of the fullest other one, so that each process that runs
    beside others does not compile everything again (14 s on two cores). Safe while another
    process writes there: numba replaces each file whole, never rewrites a data file under a
    name its index gives, and reads a data file an index names but that is missing as not
    cached; indexes are copied first, so every data file one names comes after it."""
    if any(folder.iterdir()):
        return
    others = [f for f in folder.parent.iterdir() if f.is_dir() and not f.is_symlink()]
    source = max(others, key=lambda f: len(list(f.rglob("*.nbi"))), default=folder)
    files = [p for p in source.rglob("*.nb[ic]") if p.is_file() and not p.is_symlink()]
    try:
        for path in sorted(files, key=lambda p: p.suffix != ".nbi"):
            target = folder / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    except OSError:
        return  # what is not copied is compiled
