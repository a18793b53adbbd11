"""Atomic writes: every writer renames over its target only once the data is on disk, then
flushes the folder; a failed write leaves the old file and no temporary one."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from soundtrack.atomic import atomic_path, link_twins
from soundtrack.audio import write_wav
from soundtrack.encode import encode
from soundtrack.master import Master
from soundtrack.renders import RenderCache
from soundtrack.storage import LocalStorage
from tests.publishing import make_asset, publish

Event = tuple[str, int]  # ("fsync", inode) of a file or folder, or ("replace", inode moved)


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """Every fsync and rename, in order, by inode (a renamed file keeps its inode)."""
    seen: list[Event] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        seen.append(("fsync dir" if stat.S_ISDIR(info.st_mode) else "fsync", info.st_ino))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return seen


def assert_durable(events: list[Event], *targets: Path) -> None:
    """Each target was fsynced, then renamed into place, then its folder fsynced."""
    for target in targets:
        inode, folder = target.stat().st_ino, target.parent.stat().st_ino
        renamed = events.index(("replace", inode))
        assert ("fsync", inode) in events[:renamed], f"{target.name} renamed before its fsync"
        assert ("fsync dir", folder) in events[renamed:], f"{target.name}'s folder not fsynced"


def master() -> Master:
    audio = np.random.default_rng(0).uniform(-0.3, 0.3, (2, 44100)).astype(np.float32)
    return Master(audio, 44100, None, None, -20.0, 0.0, 0.0)


TAGS = {"title": "Cue", "soundtrack": "sky-odyssey", "track_id": "cue", "spec_hash": "9f3e"}


def write_helper(tmp_path: Path) -> list[Path]:
    with atomic_path(tmp_path / "a.bin") as tmp:
        tmp.write_bytes(b"new")
    return [tmp_path / "a.bin"]


def write_render(tmp_path: Path) -> list[Path]:
    cache = RenderCache(tmp_path)
    render = cache.put("k1", master().audio, 44100, model_id="m", revision="r", license="l")
    return [render.path, render.path.with_suffix(".json")]


def write_encoded(tmp_path: Path) -> list[Path]:
    files = encode(master(), ["ogg", "mp3", "wav"], tmp_path / "out", "cue", tags=TAGS)
    return [f.path for f in files]


def write_published(tmp_path: Path) -> list[Path]:
    storage = LocalStorage("assets", tmp_path / "assets")
    asset = make_asset(tmp_path / "enc", "cue", "ogg", size=10_000, seed=1)
    ((file,), _) = publish(storage, "game", [asset])
    key = file.key
    storage.fetch(key, tmp_path / "fetched" / "cue.ogg", sha256=asset.sha256)
    index = storage.root / "game" / "soundtrack.lock.json"
    return [storage.root / key, index, tmp_path / "fetched" / "cue.ogg"]


@pytest.mark.parametrize(
    "write",
    [write_helper, write_render, write_encoded, write_published],
    ids=["atomic_path", "render cache", "encode", "folder storage"],
)
def test_every_writer_renames_only_after_fsync_then_flushes_the_folder(
    write: Callable[[Path], list[Path]], events: list[Event], tmp_path: Path
) -> None:
    targets = write(tmp_path)
    assert_durable(events, *targets)
    assert [p for p in tmp_path.rglob(".*") if p.is_file()] == [], "no temporary file left"


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer failed"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_a_failed_fsync_renames_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.wav"
    target.write_bytes(b"old")

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        write_wav(target, np.zeros((1, 100), np.float32), 8000)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]


def test_the_writer_creates_the_file_with_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644


def test_link_twins_links_only_files_of_the_same_bytes_and_follows_no_link(tmp_path: Path) -> None:
    folder, twin, outside = tmp_path / "new", tmp_path / "old", tmp_path / "outside"
    for root in (folder, twin, outside):
        (root / "fonts").mkdir(parents=True)
    for root in (folder, twin):
        (root / "fonts" / "a.woff").write_bytes(b"font")
    (folder / "style.css").write_text("new")
    (twin / "style.css").write_text("old")  # the same name, other bytes: a copy each
    (outside / "x.js").write_text("js")
    (twin / "x.js").write_text("js")
    (folder / "x.js").symlink_to(outside / "x.js")  # a link of folder's is none of its files

    link_twins(folder, twin)

    assert (folder / "fonts" / "a.woff").samefile(twin / "fonts" / "a.woff")
    assert (folder / "style.css").read_text() == "new"
    assert not (folder / "style.css").samefile(twin / "style.css")
    assert (folder / "x.js").is_symlink() and not (outside / "x.js").samefile(twin / "x.js")
    assert sorted(p.name for p in folder.rglob("*")) == ["a.woff", "fonts", "style.css", "x.js"]
    # A folder that is a link (to anywhere) is left alone, whole.
    (tmp_path / "linked").symlink_to(outside, target_is_directory=True)
    link_twins(tmp_path / "linked", twin)
    assert not (outside / "x.js").samefile(twin / "x.js")
