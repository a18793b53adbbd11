"""Scratch folders: what a killed process left is deleted, what a live one uses is not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from soundtrack.held import first_free, scratch_folder
from soundtrack.renders import user_cache_home

# Takes a scratch folder, prints it, and holds it until stdin closes (or it is killed).
_HOLDER = """
import sys
from pathlib import Path
from soundtrack.held import scratch_folder
with scratch_folder(Path(sys.argv[1]), "build-") as folder:
    (folder / "staged.ogg").write_bytes(b"take")
    print(folder, flush=True)
    sys.stdin.read()
"""


def _holder(root: Path) -> tuple[subprocess.Popen[str], Path]:
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def test_a_killed_processs_folder_goes_and_a_live_ones_and_a_strangers_stay(
    tmp_path: Path,
) -> None:
    root = tmp_path / "staging"
    live, used = _holder(root)
    killed, left = _holder(root)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    stranger = root / "notes"
    stranger.mkdir()
    assert left.is_dir() and used.is_dir()

    with scratch_folder(root, "build-") as mine:
        assert not left.exists(), "the killed process's folder is deleted"
        assert (used / "staged.ogg").read_bytes() == b"take", "the live one's is kept"
        assert stranger.is_dir(), "a folder without a hold file is not ours to judge"
        assert mine.is_dir() and mine not in (left, used)
    assert not mine.exists()

    live.communicate("", timeout=30)
    assert live.returncode == 0 and not used.exists()


def test_numbers_whose_lock_or_folder_is_unusable_are_passed_over(tmp_path: Path) -> None:
    root = tmp_path / "numba"
    root.mkdir()
    (root / "0").write_text("a file where slot 0's folder goes")
    (root / "1.lock").mkdir()  # a folder where slot 1's lock goes
    elsewhere = tmp_path / "elsewhere"
    (root / "2.lock").symlink_to(elsewhere)  # a lock planted as a link
    linked = tmp_path / "linked"
    linked.mkdir()
    (root / "3").symlink_to(linked)  # a folder planted as a link: written through, elsewhere
    folder, fd = first_free(root)
    try:
        assert folder == root / "4" and folder.is_dir()
        assert not elsewhere.exists(), "a link is never followed to make a file"
    finally:
        os.close(fd)


def test_a_relative_xdg_cache_home_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/caches")
    assert user_cache_home() == Path.home() / ".cache"
    monkeypatch.setenv("XDG_CACHE_HOME", "/srv/caches")
    assert user_cache_home() == Path("/srv/caches")
