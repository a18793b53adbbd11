"""A local folder always matches its lock: nothing changes until the lock is written, a failed
rename is undone, a build killed at any step of publishing is repaired by the next one, and two
builds of one soundtrack never interleave (the second waits, or exits 75)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf
from typer.testing import CliRunner

from soundtrack.build import Options, ThreadExecutor, build, prepare, run
from soundtrack.cli import app
from soundtrack.errors import InputError, StorageBusy, StorageError
from soundtrack.storage import open_storage
from soundtrack.storage.local import LocalStorage
from soundtrack.storage.staging import Publishing
from tests.corebuild import second_waits_for_first, start, stop, wait_for
from tests.publishing import (
    Asset,
    folder_problems,
    index_bytes,
    make_asset,
    publish,
    publish_assets,
)
from tests.reference import ebur128, sha256_of
from tests.signals import music_like

ROOT = Path(__file__).resolve().parents[2]
SOUNDTRACK = "sky"


def version(folder: Path, seed: int) -> list[Asset]:
    """Three files of two tracks; another seed is other content under the same names."""
    return [
        make_asset(folder, "boss", "ogg", size=20_000, seed=seed, spec_hash="b"),
        make_asset(folder, "boss", "mp3", size=10_000, seed=seed + 1, spec_hash="b"),
        make_asset(folder, "title", "ogg", size=30_000, seed=seed + 2, spec_hash="t"),
    ]


def contents(folder: Path) -> dict[str, str]:
    """sha256 of each file a reader sees (gc's write journal aside: it grows with every write)."""
    return {
        p.name: sha256_of(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != "soundtrack.journal.jsonl"
    }


def test_nothing_in_the_folder_changes_until_the_lock_is_written(tmp_path: Path) -> None:
    storage = LocalStorage(str(tmp_path / "out"), tmp_path / "out")
    folder = tmp_path / "out" / SOUNDTRACK
    publish(storage, SOUNDTRACK, version(tmp_path / "v1", 1))
    (folder / "boss.ogg.meta").write_text("guid: 0123\n")  # Unity's, beside our file
    before = contents(folder)

    v2 = version(tmp_path / "v2", 10)
    published = publish_assets(storage, SOUNDTRACK, v2)
    assert contents(folder) == before, "files staged, none replaced yet"
    assert all(p.uploaded for p in published)

    storage.write_index(SOUNDTRACK, index_bytes(SOUNDTRACK, v2, published))
    assert folder_problems(folder) == ["boss.ogg.meta: not in the lock"]
    assert (folder / "boss.ogg.meta").read_text() == "guid: 0123\n", "updated in place"
    assert sha256_of(folder / "boss.ogg") == v2[0].sha256
    assert not (folder / ".publishing").exists()


def test_a_stopped_builds_cleanup_waits_for_its_commit_and_then_allows_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM during the commit: the flow's cleanup, on the main thread, deleted the commit's
    record and staged files under it, on a task's thread; the folder had the new files and
    the old lock, and nothing was left for the next build to repair."""
    import threading

    from soundtrack.errors import StorageError
    from soundtrack.storage import staging

    storage = LocalStorage(str(tmp_path / "out"), tmp_path / "out")
    folder = tmp_path / "out" / SOUNDTRACK
    publish(storage, SOUNDTRACK, version(tmp_path / "v1", 1))
    storage.repair(SOUNDTRACK)  # as a build starts
    v2 = version(tmp_path / "v2", 10)
    published = publish_assets(storage, SOUNDTRACK, v2)
    committing, go_on = threading.Event(), threading.Event()
    forward = staging.Publishing._forward

    def slow_forward(self: staging.Publishing, files: list[dict[str, object]]) -> None:
        committing.set()
        go_on.wait(30)  # the commit is under way when the cleanup comes
        forward(self, files)

    monkeypatch.setattr(staging.Publishing, "_forward", slow_forward)
    commit = threading.Thread(
        target=storage.write_index, args=(SOUNDTRACK, index_bytes(SOUNDTRACK, v2, published))
    )
    commit.start()
    assert committing.wait(30)
    cleanup = threading.Thread(target=storage.discard, args=(SOUNDTRACK,))
    cleanup.start()
    cleanup.join(0.5)
    assert cleanup.is_alive(), "the cleanup waits for the commit"
    go_on.set()
    commit.join(30)
    cleanup.join(30)
    assert folder_problems(folder) == [] and sha256_of(folder / "boss.ogg") == v2[0].sha256
    # A commit after the build's end publishes nothing.
    before = contents(folder)
    v3 = version(tmp_path / "v3", 20)
    late = publish_assets(storage, SOUNDTRACK, v3)
    with pytest.raises(StorageError, match="stopped before its lock was written"):
        storage.write_index(SOUNDTRACK, index_bytes(SOUNDTRACK, v3, late))
    assert contents(folder) == before and folder_problems(folder) != []  # v3 staged, not in
    storage.repair(SOUNDTRACK)  # the next build drops it
    assert folder_problems(folder) == [] and contents(folder) == before


def test_a_rebuilt_track_takes_its_files_the_new_lock_no_longer_names_with_it(
    tmp_path: Path,
) -> None:
    """A mix published again whose new stems were rejected left the old mix's stems at their
    stable names, where an engine would load them as the new mix's layers."""
    storage = LocalStorage(str(tmp_path / "out"), tmp_path / "out")
    folder = tmp_path / "out" / SOUNDTRACK

    def lock(version: int, files: dict[str, list[tuple[str | None, Asset]]]) -> bytes:
        tracks = []
        for track_id, assets in files.items():
            entries = []
            for stem, asset in assets:
                key = storage.asset_key(
                    SOUNDTRACK, track_id, "s", asset.ext, sha256=asset.sha256, stem=stem
                )
                storage.put_asset(
                    asset.path, key, sha256=asset.sha256, content_type="audio/ogg", metadata={}
                )
                entries.append({"format": asset.ext, "key": key, "sha256": asset.sha256})
            tracks.append({"id": track_id, "status": "approved", "files": entries})
        return json.dumps({"soundtrack": SOUNDTRACK, "version": version, "tracks": tracks}).encode()

    def asset(name: str, seed: int) -> Asset:
        return make_asset(tmp_path / "files", name, "ogg", size=2000, seed=seed)

    first = {
        "boss": [(None, asset("boss", 1)), ("drums", asset("d", 2)), ("bass", asset("b", 3))],
        "title": [(None, asset("title", 4)), ("drums", asset("t", 5))],
        "credits": [(None, asset("credits", 6))],
    }
    storage.write_index(SOUNDTRACK, lock(1, first))
    (folder / "boss.bass.ogg").write_bytes(b"edited by hand since")
    # boss: a new mix, no stems; title: unchanged; credits: gone from the manifest.
    storage.write_index(
        SOUNDTRACK, lock(2, {"boss": [(None, asset("boss", 7))], "title": first["title"]})
    )
    names = {p.name for p in folder.iterdir() if p.is_file()}
    assert "boss.drums.ogg" not in names, "the old mix's stem went with it"
    assert {"boss.bass.ogg", "credits.ogg", "title.drums.ogg"} <= names  # not ours / gc's / kept
    assert sha256_of(folder / "boss.ogg") == asset("boss", 7).sha256
    assert not (folder / ".publishing").exists()


def test_a_rename_that_fails_midway_leaves_the_folder_matching_the_previous_lock(
    tmp_path: Path,
) -> None:
    storage = LocalStorage(str(tmp_path / "out"), tmp_path / "out")
    folder = tmp_path / "out" / SOUNDTRACK
    publish(storage, SOUNDTRACK, version(tmp_path / "v1", 1))
    before = contents(folder)
    # A folder where a new file must go: "boss.ogg" is replaced first (sorted), then "credits"
    # cannot be, and what was replaced must come back.
    (folder / "credits.ogg").mkdir()
    (folder / "credits.ogg" / "keep").write_text("someone's")
    credits = make_asset(tmp_path / "v2", "credits", "ogg", size=9, seed=5)
    v2 = [*version(tmp_path / "v2", 10), credits]

    with pytest.raises(Exception, match="undone, the folder still matches its previous lock") as e:
        publish(storage, SOUNDTRACK, v2)
    assert f": {folder / 'credits.ogg'}): undone" in str(e.value), "the file in the way is named"

    assert contents(folder) == before
    assert folder_problems(folder) == ["credits.ogg/keep: not in the lock"]
    assert not (folder / ".publishing").exists()


def _a_full_disk(monkeypatch: pytest.MonkeyPatch, *, undone: int | None = None) -> None:
    """From now on the disk is full where a rename needs room: the commit record turning back
    (a new file), and, after `undone` kept versions are put back, the next one too."""
    replace = os.replace
    put_back = []

    def full(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        back = Path(dst).name == "commit.json" and b'"back"' in Path(src).read_bytes()
        if Path(src).parent.name == "previous":
            put_back.append(dst)
            back = undone is not None and len(put_back) > undone
        if back:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)


def test_a_commit_that_fails_on_a_full_disk_is_undone_or_left_to_the_next_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The undo of a failed commit first wrote its record, which a full disk refused: nothing
    was undone, and the build's cleanup then deleted the versions it had kept aside. The folder
    held new files under the old lock, and nothing was left to repair."""
    storage = LocalStorage(str(tmp_path / "out"), tmp_path / "out")
    folder = tmp_path / "out" / SOUNDTRACK
    publish(storage, SOUNDTRACK, version(tmp_path / "v1", 1))
    before = contents(folder)
    (folder / "credits.ogg").mkdir()  # "boss.ogg" is replaced, then "credits.ogg" cannot be
    v2 = [
        *version(tmp_path / "v2", 10),
        make_asset(tmp_path / "v2", "credits", "ogg", size=9, seed=5),
    ]

    with monkeypatch.context() as patched:
        _a_full_disk(patched)
        with pytest.raises(StorageError, match="undone, the folder still matches its previous"):
            publish(storage, SOUNDTRACK, v2)
    storage.discard(SOUNDTRACK)
    assert contents(folder) == before
    assert not (folder / ".publishing").exists()

    # The undo fails half way: the next build undoes the rest (some previous versions are
    # back, over new ones: finished, the folder would not match the new lock).
    assert storage.repair(SOUNDTRACK) == []  # the next build's turn begins
    with monkeypatch.context() as patched:
        _a_full_disk(patched, undone=1)
        with pytest.raises(StorageError, match="undoing it failed too"):
            publish(storage, SOUNDTRACK, v2)
        storage.discard(SOUNDTRACK)
    assert (folder / ".publishing" / "commit.json").is_file()
    assert storage.repair(SOUNDTRACK) == [f"{folder}: undid the failed publish of a stopped build"]
    assert contents(folder) == before
    assert not (folder / ".publishing").exists()

    # The undo fails at once: all is left for the next build, which finishes the publish.
    with monkeypatch.context() as patched:
        _a_full_disk(patched, undone=0)
        with pytest.raises(StorageError, match="undoing it failed too") as failed:
            publish(storage, SOUNDTRACK, v2)
        storage.discard(SOUNDTRACK)  # the build's end, the disk still full
    assert "the next build finishes or undoes it from" in str(failed.value)
    assert (folder / ".publishing" / "commit.json").is_file()
    assert (folder / ".publishing" / "previous" / "boss.ogg").is_file()
    (folder / "credits.ogg").rmdir()  # room made
    said = storage.repair(SOUNDTRACK)
    assert said == [
        f"{folder}: finished the publish a stopped build had begun (4 files and the lock)"
    ]
    assert folder_problems(folder) == []
    assert sha256_of(folder / "credits.ogg") == v2[-1].sha256


# Publishes version 2 over version 1 with the real LocalStorage, in a process of its own that
# `tests.corebuild.kill_at` kills at its Nth change under the folder.
CHILD = """
import sys
from pathlib import Path
from tests.corebuild import kill_at
from tests.core.test_publishing import SOUNDTRACK, version
from tests.publishing import publish
from soundtrack.storage.local import LocalStorage
out, n, work = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
assets = version(work, 10)
kill_at(n, out)
publish(LocalStorage(str(out), out), SOUNDTRACK, assets)
"""


def publish_killed_at(n: int, out: Path, work: Path) -> subprocess.CompletedProcess[str]:
    """CHILD, killed at its `n`th change under `out` (exit 0 when it made fewer)."""
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(out), str(n), str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_kill_9_at_every_step_of_publishing_is_repaired_by_the_next_build(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    folder = out / SOUNDTRACK
    publish(LocalStorage(str(out), out), SOUNDTRACK, version(tmp_path / "v1", 1))
    old, new = contents(folder), None
    outcomes = []
    for n in range(1, 100):
        killed = publish_killed_at(n, out, tmp_path / "v2")
        if killed.returncode == 0:
            new = contents(folder)
            break
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        said = LocalStorage(str(out), out).repair(SOUNDTRACK)  # what the next build does first
        assert folder_problems(folder) == [], (n, said)
        now = contents(folder)
        outcomes.append("new" if now != old else "old")
        # Back to version 1 for the next step (a repaired folder is a valid start).
        publish(LocalStorage(str(out), out), SOUNDTRACK, version(tmp_path / "v1", 1))
        assert contents(folder) == old
    assert new is not None and new != old
    assert len(outcomes) >= 8, "staging, the commit record, each rename and the lock"
    # Killed before the commit record: the old folder; after it: the new one, finished.
    assert outcomes == sorted(outcomes, key=["old", "new"].index), outcomes
    assert "old" in outcomes and "new" in outcomes


def test_gc_finishes_a_first_publish_a_killed_build_left_before_its_lock(tmp_path: Path) -> None:
    """gc refuses a soundtrack with no lock (a mistyped name made folders), but not a first
    publish killed after its commit record and before its lock: gc finishes it first."""
    out = tmp_path / "out"
    folder = out / SOUNDTRACK
    for n in range(1, 100):
        shutil.rmtree(out, ignore_errors=True)
        killed = publish_killed_at(n, out, tmp_path / "v2")
        assert killed.returncode == -signal.SIGKILL, "no step left with a commit pending"
        if Publishing(folder).pending_lock() is not None:
            break
    assert not (folder / "soundtrack.lock.json").exists()

    result = CliRunner().invoke(app, ["gc", str(out), "--soundtrack", SOUNDTRACK, "--delete"])
    assert result.exit_code == 0, result.output
    assert "finished the publish a stopped build had begun" in " ".join(result.output.split())
    assert (folder / "soundtrack.lock.json").exists() and folder_problems(folder) == []


MANIFEST = """\
schema: 1
soundtrack: {name}
storage: ./out
defaults:
  loudness: {{integrated: {lufs}, true_peak: -1, tolerance: 1}}
  formats: [ogg, mp3]
tracks:
{tracks}"""


def recordings(tmp_path: Path, count: int) -> str:
    (tmp_path / "audio").mkdir(exist_ok=True)
    tracks = ""
    for n in range(count):
        path = tmp_path / "audio" / f"cue-{n}.wav"
        sf.write(path, music_like(3.0, 32000, seed=n).T, 32000)
        tracks += f"  - id: cue-{n}\n    source: audio/cue-{n}.wav\n"
    return tracks


@pytest.mark.slow
def test_a_second_build_waits_for_the_first_and_the_lock_matches_every_file(
    tmp_path: Path,
) -> None:
    tracks = recordings(tmp_path, 6)
    (tmp_path / "a.yaml").write_text(MANIFEST.format(name="sky", lufs=-24, tracks=tracks))
    (tmp_path / "b.yaml").write_text(MANIFEST.format(name="sky", lufs=-20, tracks=tracks))
    folder = tmp_path / "out" / "sky"
    staged = folder / ".publishing" / "staged"

    second_waits_for_first(
        tmp_path / "a.yaml",
        tmp_path / "b.yaml",
        published_some=lambda: staged.is_dir() and any(staged.iterdir()),
        lock_written=(folder / "soundtrack.lock.json").exists,
    )

    assert folder_problems(folder) == []
    lock = json.loads((folder / "soundtrack.lock.json").read_text())
    assert {t["status"] for t in lock["tracks"]} == {"approved"}
    # The second build's loudness, on every file: it published after the first, whole.
    for track in lock["tracks"]:
        lufs, _ = ebur128(folder / f"{track['id']}.ogg")
        assert abs(lufs - -20.0) <= 1.0, (track["id"], lufs)


def test_a_build_planned_before_another_published_plans_again_and_keeps_its_tracks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two builds, each --only one track, the second planned while the first held the storage:
    its lock, written on its own plan, would put the first's track back as it was before."""
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    tracks = recordings(tmp_path, 2)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST.format(name="sky", lufs=-24, tracks=tracks))
    assert build(manifest, Options(), executor=ThreadExecutor()).exit_status == 0
    manifest.write_text(MANIFEST.format(name="sky", lufs=-20, tracks=tracks))
    later = prepare(manifest, Options(only=("cue-1",)), logging.getLogger(__name__))

    first = build(manifest, Options(only=("cue-0",)), executor=ThreadExecutor())
    second = run(later, Options(only=("cue-1",)), executor=ThreadExecutor())

    assert (first.exit_status, second.exit_status) == (0, 0), (first.failure, second.failure)
    folder = tmp_path / "out" / "sky"
    assert folder_problems(folder) == []
    lock = json.loads((folder / "soundtrack.lock.json").read_text())
    assert [track["id"] for track in lock["tracks"]] == ["cue-0", "cue-1"]
    for track in lock["tracks"]:
        lufs, _ = ebur128(folder / f"{track['id']}.ogg")
        assert abs(lufs - -20.0) <= 1.0, (track["id"], lufs)


@pytest.mark.slow
def test_a_build_that_cannot_wait_exits_75_naming_the_holder(tmp_path: Path) -> None:
    tracks = recordings(tmp_path, 6)
    (tmp_path / "m.yaml").write_text(MANIFEST.format(name="sky", lufs=-24, tracks=tracks))
    staged = tmp_path / "out" / "sky" / ".publishing" / "staged"
    first = start(tmp_path / "m.yaml")
    try:
        wait_for(lambda: staged.is_dir() and any(staged.iterdir()))
        os.kill(first.pid, signal.SIGSTOP)
        started = time.monotonic()
        second = start(tmp_path / "m.yaml", "--storage-wait-s", "1")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 75, err
        assert f"is being built by process {first.pid}" in err
        assert time.monotonic() - started < 60
    finally:
        stop(first)
    # The first was killed mid-publish: the next build repairs the folder, says so, and builds.
    third = start(tmp_path / "m.yaml")
    _, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert "dropped" in err and "staged by a build that stopped before its lock" in err
    assert folder_problems(tmp_path / "out" / "sky") == []


@pytest.mark.slow
def test_a_build_killed_while_it_replaces_files_is_finished_by_the_next(tmp_path: Path) -> None:
    tracks = recordings(tmp_path, 2)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST.format(name="sky", lufs=-24, tracks=tracks))
    assert start(manifest).wait(timeout=120) == 0
    folder = tmp_path / "out" / "sky"
    manifest.write_text(MANIFEST.format(name="sky", lufs=-20, tracks=tracks))
    # Killed inside the commit: its record written, no file replaced yet.
    old_lock = (folder / "soundtrack.lock.json").read_bytes()
    commit = folder / ".publishing" / "commit.json"
    killed = start(manifest, "--kill-once-made", str(commit), str(folder))
    assert killed.wait(timeout=120) == -signal.SIGKILL
    assert commit.exists() and (folder / "soundtrack.lock.json").read_bytes() == old_lock

    again = start(manifest)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert "finished the publish a stopped build had begun" in err
    assert folder_problems(folder) == []
    storage = open_storage(str(tmp_path / "out"), base_dir=tmp_path)
    assert storage.repair("sky") == [], "nothing left to repair"


def test_links_planted_in_a_soundtrack_folder_are_refused_and_what_they_name_kept(
    tmp_path: Path,
) -> None:
    """A `.publishing` linked to another folder was emptied by the next build's repair (with
    `../..`, the manifest and its recordings went); a linked build lock was truncated and
    overwritten; a linked journal took the build's lines (a manifest grew four)."""
    storage = LocalStorage(str(tmp_path / "out"), tmp_path / "out")
    folder = tmp_path / "out" / SOUNDTRACK
    publish(storage, SOUNDTRACK, version(tmp_path / "v1", 1))
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "important.txt").write_text("keep")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("schema: 1\n")
    journal = folder / "soundtrack.journal.jsonl"
    journal.rename(tmp_path / "journal.kept")
    for name, target in {
        ".publishing": victim,
        ".publishing/build.lock": manifest,
        "soundtrack.journal.jsonl": manifest,
    }.items():
        link = folder / name
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(target)
        with (
            pytest.raises(InputError, match="is a symbolic link"),
            storage.hold(SOUNDTRACK, wait_s=0, on_wait=print),
        ):
            storage.repair(SOUNDTRACK)
        link.unlink()
    assert sorted(p.name for p in victim.iterdir()) == ["important.txt", "sub"]
    assert manifest.read_text() == "schema: 1\n"
    # A file of someone else's in a real control folder stays there too; a link at the name
    # of a folder builds write in goes itself, and what it names stays.
    (tmp_path / "journal.kept").rename(journal)
    (folder / ".publishing" / "notes.txt").write_text("mine")
    (folder / ".publishing" / "staged").symlink_to(victim)
    with storage.hold(SOUNDTRACK, wait_s=0, on_wait=print):
        storage.repair(SOUNDTRACK)
    assert (folder / ".publishing" / "notes.txt").read_text() == "mine"
    assert not (folder / ".publishing" / "staged").is_symlink()
    assert sorted(p.name for p in victim.iterdir()) == ["important.txt", "sub"]


@pytest.mark.slow
def test_a_build_stopped_by_ctrl_c_lets_its_steps_end_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C removed the staging folders under masters and publishes still running: they
    failed with tracebacks, a master made its staging folder again (left for ever), and the
    storage's staged files stayed behind."""
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST.format(name="sky", lufs=-24, tracks=recordings(tmp_path, 12)))
    folder = tmp_path / "out" / "sky"
    stopped = start(manifest)
    try:
        wait_for(lambda: any((folder / ".publishing" / "staged").glob("*")) or stopped.poll())
        stopped.send_signal(signal.SIGINT)
        _, err = stopped.communicate(timeout=120)
    finally:
        stop(stopped)
    assert stopped.returncode != 0
    assert "step(s) under way end first" in err, err
    assert "FileNotFoundError" not in err and "No such file" not in err, err
    assert list((tmp_path / "cache" / "staging").iterdir()) == []
    assert sorted(p.name for p in folder.iterdir()) == ["soundtrack.journal.jsonl"]

    again = start(manifest)
    assert again.wait(timeout=180) == 0, again.communicate()
    assert folder_problems(folder) == []


def test_a_lock_naming_another_soundtracks_file_is_unreadable_and_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A hand-edited lock naming a file of another soundtrack (with its sha256) had its track
    kept as cached, the foreign key written into every later lock, and each build's review
    page crash; a key outside the storage stopped every build with exit 2."""
    from soundtrack.build import Options, ThreadExecutor, build
    from soundtrack.build import log as build_log

    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    tracks = recordings(tmp_path, 1)
    for name in ("sky", "moon"):
        (tmp_path / f"{name}.yaml").write_text(MANIFEST.format(name=name, lufs=-24, tracks=tracks))
        result = build(tmp_path / f"{name}.yaml", Options(), executor=ThreadExecutor())
        assert result.exit_status == 0, result.failure
    lock_path = tmp_path / "out" / "sky" / "soundtrack.lock.json"
    moon = json.loads((tmp_path / "out" / "moon" / "soundtrack.lock.json").read_text())
    for foreign in (moon["tracks"][0]["files"][0], {"key": "elsewhere/cue-0.ogg"}):
        lock = json.loads(lock_path.read_text())
        lock["tracks"][0]["files"][0].update(foreign)
        lock_path.write_text(json.dumps(lock))

        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=build_log.name):
            again = build(tmp_path / "sky.yaml", Options(), executor=ThreadExecutor())

        assert again.exit_status == 0, again.failure
        (warning,) = again.report.warnings
        assert caplog.text.count("unreadable") == 1, "said once, not at the plan and again"
        assert f"names {foreign['key']}, outside its folder sky/" in warning, warning
        assert "rebuilding it" in warning
        keys = [f["key"] for f in json.loads(lock_path.read_text())["tracks"][0]["files"]]
        assert keys == ["sky/cue-0.ogg", "sky/cue-0.mp3"], keys
    assert folder_problems(tmp_path / "out" / "sky") == []


def test_a_newer_versions_lock_is_refused_and_an_older_ones_said_to_be_published_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A lock with a field this version does not know (a newer version's) was "unreadable,
    rebuilding it": the new lock left out what an --only build did not build, and the files a
    rejected track still served, and gc then deleted them. A later schema's or pipeline
    version's lock is refused too; an earlier pipeline version's is said to be published again."""
    from soundtrack import PIPELINE_VERSION
    from soundtrack.build import Options, ThreadExecutor, build
    from soundtrack.build import log as build_log

    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    manifest = tmp_path / "sky.yaml"
    manifest.write_text(MANIFEST.format(name="sky", lufs=-24, tracks=recordings(tmp_path, 2)))
    assert build(manifest, Options(), executor=ThreadExecutor()).exit_status == 0
    folder = tmp_path / "out" / "sky"
    lock_path = folder / "soundtrack.lock.json"
    good = json.loads(lock_path.read_text())
    first, *others = good["tracks"]
    later = str(int(PIPELINE_VERSION) + 1)
    newer = {
        "tracks.0.pinned: Extra inputs": {**good, "tracks": [{**first, "pinned": True}, *others]},
        # A gate's result is a dataclass: pydantic words its unknown fields another way.
        "tracks.0.gates.0.unit: Unexpected keyword": {
            **good,
            "tracks": [{**first, "gates": [{**first["gates"][0], "unit": "LU"}]}, *others],
        },
        "report_schema: schema 2": {**good, "report_schema": 2},
        f"pipeline version '{later}', later than this one's ({PIPELINE_VERSION})": {
            **good,
            "pipeline_version": later,
        },
    }
    for said, lock in newer.items():
        lock_path.write_text(json.dumps(lock))
        before = contents(folder)
        for only in ((), ("cue-0",)):
            with pytest.raises(InputError) as caught:
                build(manifest, Options(only=only), executor=ThreadExecutor())
            assert said in str(caught.value), caught.value
            assert "delete the lock and build every track (without --only" in str(caught.value)
            assert contents(folder) == before, "nothing written"

    # An earlier version's lock (its spec hashes had its version in them) is read, and why
    # every track is published again is said, once.
    earlier = str(int(PIPELINE_VERSION) - 1)
    tracks = [{**track, "spec_hash": "0" * 64} for track in good["tracks"]]
    lock_path.write_text(json.dumps({**good, "pipeline_version": earlier, "tracks": tracks}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=build_log.name):
        again = build(manifest, Options(), executor=ThreadExecutor())
    assert again.exit_status == 0, again.failure
    (warning,) = again.report.warnings
    assert f"written by pipeline version '{earlier}'; this is {PIPELINE_VERSION}: each" in warning
    assert caplog.text.count(f"pipeline version '{earlier}'") == 1
    assert {t.id: t.status for t in again.report.tracks} == {
        "cue-0": "approved",
        "cue-1": "approved",
    }
    assert json.loads(lock_path.read_text())["pipeline_version"] == PIPELINE_VERSION


def test_a_review_page_that_cannot_be_written_leaves_the_published_lock_a_success(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The review page is written after the lock: its write failing (a full disk) failed the
    build with "writing the index failed", its lock and files published all the same."""
    from soundtrack.build import Options, ThreadExecutor, build
    from soundtrack.build import log as build_log

    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    manifest = tmp_path / "sky.yaml"
    manifest.write_text(MANIFEST.format(name="sky", lufs=-24, tracks=recordings(tmp_path, 1)))
    folder = tmp_path / "out" / "sky"
    (folder / "review.html").mkdir(parents=True)  # in the page's way, as a full disk would be
    with caplog.at_level(logging.WARNING, logger=build_log.name):
        result = build(manifest, Options(), executor=ThreadExecutor())
    assert result.failure is None, result.failure
    said = f"the lock is published; its review page is not: cannot write {folder}"
    assert said in caplog.text
    assert [w for w in result.report.warnings if w.startswith(said)], result.report.warnings
    lock = json.loads((folder / "soundtrack.lock.json").read_text())
    assert [t["status"] for t in lock["tracks"]] == ["approved"]


def test_a_track_a_full_disk_fails_names_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_disk: Path
) -> None:
    """A master failing on a full cache said "System error." (libsndfile), "Conversion
    failed!" (ffmpeg) or "N requested and M written" (numpy), and named no disk; a track
    with takes left then rendered another, to fail the same way."""
    from soundtrack.build import Options, ThreadExecutor, build

    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(small_disk))
    manifest = tmp_path / "sky.yaml"
    manifest.write_text(MANIFEST.format(name="sky", lufs=-24, tracks=recordings(tmp_path, 2)))
    result = build(manifest, Options(), executor=ThreadExecutor())
    assert result.failure == "0 track(s) rejected, 2 failed", result.failure
    for track in result.report.tracks:
        assert track.reason is not None and track.reason.startswith(f"{small_disk}/"), track
        assert " MiB free, a full disk? (" in track.reason, track.reason


def test_a_first_build_whose_publish_fails_says_nothing_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_disk: Path
) -> None:
    """It said "the previous index is untouched" of an index that never was."""
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    manifest = tmp_path / "sky.yaml"
    tracks = recordings(tmp_path, 2)
    manifest.write_text(MANIFEST.format(name="sky", lufs=-24, tracks=tracks))
    result = build(manifest, Options(out=str(small_disk)), executor=ThreadExecutor())
    assert result.failure is not None, "256 KiB holds no two tracks"
    assert result.failure.startswith("publishing failed, nothing is published: "), result.failure
    assert "No space left on device" in result.failure
    assert not (small_disk / "sky" / "soundtrack.lock.json").exists()


def test_the_storage_is_let_go_before_the_ui_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UI's QC report of 130 tracks took 27 s after the lock, with the storage still held:
    another build of the soundtrack waited for it."""
    from soundtrack.build import Options, ThreadExecutor, build

    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    manifest = tmp_path / "sky.yaml"
    manifest.write_text(MANIFEST.format(name="sky", lufs=-24, tracks=recordings(tmp_path, 1)))
    storage = LocalStorage("./out", tmp_path / "out")
    held: list[bool] = []

    class Watcher:
        def track_done(self, record: object) -> None:
            pass

        def finished(self, report: object, outcomes: object, index: object, why: object) -> None:
            try:
                with storage.hold("sky", wait_s=0, on_wait=print):
                    held.append(False)
            except StorageBusy:
                held.append(True)

    result = build(manifest, Options(), executor=ThreadExecutor(), observer=Watcher())
    assert result.failure is None, result.failure
    assert held == [False]


def test_a_track_the_manifest_no_longer_has_leaves_the_lock_said_out_loud(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second manifest publishing the same soundtrack name into the same storage dropped the
    first's tracks from the lock without a word, and gc --delete then removed their files."""
    from soundtrack.build import Options, ThreadExecutor, build

    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    tracks = recordings(tmp_path, 3)
    (tmp_path / "a.yaml").write_text(MANIFEST.format(name="sky", lufs=-24, tracks=tracks))
    first = build(tmp_path / "a.yaml", Options(), executor=ThreadExecutor())
    assert first.exit_status == 0 and first.report.warnings == [], first.report.warnings
    one = "".join(tracks.splitlines(keepends=True)[:2])  # cue-0 alone
    (tmp_path / "b.yaml").write_text(MANIFEST.format(name="sky", lufs=-24, tracks=one))

    second = build(tmp_path / "b.yaml", Options(), executor=ThreadExecutor())

    assert second.exit_status == 0, second.failure
    (warning,) = second.report.warnings
    assert warning.startswith("the lock of sky listed cue-1, cue-2, which this manifest has not")
    assert "gc --delete may then remove their files" in warning
    lock = json.loads((tmp_path / "out" / "sky" / "soundtrack.lock.json").read_text())
    assert [t["id"] for t in lock["tracks"]] == ["cue-0"]
