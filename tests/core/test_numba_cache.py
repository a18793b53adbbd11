"""librosa's compiled code is cached per live process: two processes never write one cache."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from soundtrack import numba_cache

# Compiles one of librosa's cached numba functions, prints where numba cached it, and then
# holds its folder until its stdin closes.
_PROCESS = """
import sys
import numpy as np
from soundtrack.numba_cache import load_librosa
from pathlib import Path
librosa = load_librosa()
from numba.core import config
found = len(list(Path(config.CACHE_DIR).rglob("*localmax*.nbi")))
librosa.util.localmax(np.arange(5.0))
print(config.CACHE_DIR, found, flush=True)
sys.stdin.read()
"""


def _start(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _PROCESS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _folder(process: subprocess.Popen[str]) -> Path:
    return _started(process)[0]


def _started(process: subprocess.Popen[str]) -> tuple[Path, bool]:
    """Where the process compiled, and whether that folder held compiled code before it did."""
    assert process.stdout is not None
    folder, found = process.stdout.readline().split()
    return Path(folder), int(found) > 0


def _end(process: subprocess.Popen[str]) -> None:
    process.communicate("", timeout=60)
    assert process.returncode == 0


def test_processes_at_once_compile_into_folders_of_their_own_and_later_ones_reuse_them(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    root = tmp_path / "soundtrack" / "numba"
    first = _start(env)
    assert _started(first) == (root / "0", False), "the first compiles"
    second = _start(env)
    # Beside it, a folder of its own, which starts as a copy of the first's: nothing compiled.
    assert _started(second) == (root / "1", True)
    folders = {root / "0", root / "1"}
    for folder in folders:
        assert list(folder.rglob("*localmax*.nbi")), f"nothing compiled into {folder}"
    _end(first)
    _end(second)
    compiled = {path: path.stat().st_mtime_ns for path in (root / "0").rglob("*.nb?")}
    later = _start(env)
    assert _folder(later) == root / "0"
    _end(later)
    assert {path: path.stat().st_mtime_ns for path in (root / "0").rglob("*.nb?")} == compiled


def test_a_numba_cache_dir_the_user_set_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "caches"))
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setattr(numba_cache, "_chosen", [])
    numba_cache.load_librosa()
    assert numba_cache._chosen == [] and not (tmp_path / "caches").exists()


def test_without_a_writable_cache_home_it_compiles_in_the_soundtrack_cache_or_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only home crashed every analysis with a traceback."""
    (tmp_path / "not-a-folder").write_text("a file where the cache home would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "builds"))
    held: list[int] = []
    monkeypatch.setattr(numba_cache, "_held", held)
    assert numba_cache._own_folder() == tmp_path / "builds" / "numba" / "0"
    os.close(held.pop())

    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "not-a-folder" / "builds"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    exits: list[object] = []
    monkeypatch.setattr(atexit, "register", lambda *call, **_: exits.append(call))
    private = numba_cache._own_folder()
    assert private.parent == tmp_path and private.name.startswith("soundtrack-numba-")
    assert held == [] and len(exits) == 1, "a folder of its own, deleted when the process ends"
