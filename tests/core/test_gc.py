"""gc on a local folder: only what the write journal proves ours is deleted; the rest is kept."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from soundtrack.cli import app
from soundtrack.storage import LocalStorage
from tests.publishing import Asset, folder_problems, make_asset, publish
from tests.running import SOUNDTRACK as SOUNDTRACK_CLI

pytestmark = pytest.mark.usefixtures("no_storage_env")

SOUNDTRACK = "sky-odyssey"
JOURNAL = "soundtrack.journal.jsonl"


def gc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SOUNDTRACK_CLI, "gc", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def two_builds(storage: LocalStorage, encoded: Path) -> None:
    """Build 1 publishes ogg and mp3, build 2 (mp3 dropped from the formats) only the ogg."""
    ogg = make_asset(encoded, "title-theme", "ogg", size=10_000, seed=1)
    mp3 = make_asset(encoded, "title-theme", "mp3", size=10_000, seed=2)
    publish(storage, SOUNDTRACK, [ogg, mp3])
    publish(storage, SOUNDTRACK, [ogg])


def test_gc_beside_a_game_checkout_deletes_only_our_superseded_asset(tmp_path: Path) -> None:
    # `storage: ..` in <games>/sky-odyssey/game.yaml: the soundtrack's folder is the game itself.
    root = tmp_path / "games"
    game = root / SOUNDTRACK
    for name, data in {
        ".git/HEAD": b"ref: refs/heads/main\n",
        ".git/objects/ab/cdef0123": b"blob",
        "game.yaml": b"schema: 1\nsoundtrack: sky-odyssey\nstorage: ..\n",
        "audio/credits.wav": b"RIFF recording",
        "src/main.gd": b"extends Node\n",
        "title-theme.ogg.meta": b"guid: 1234\n",  # Unity's sidecar beside a published asset
        "notes.txt": b"mix notes",
    }.items():
        (game / name).parent.mkdir(parents=True, exist_ok=True)
        (game / name).write_bytes(data)
    two_builds(LocalStorage("..", root), tmp_path / "enc")
    # Another soundtrack stored inside this one's folder (its storage root is the game folder).
    inner = make_asset(tmp_path / "enc", "menu", "ogg", size=5_000, seed=3)
    publish(LocalStorage(".", game), "ui-sounds", [inner])
    before = snapshot(game)

    listed = gc(root)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == [f"{SOUNDTRACK}/title-theme.mp3"]
    kept = [line for line in listed.stderr.splitlines() if line.startswith("not ours, kept: ")]
    assert [line.removeprefix("not ours, kept: ") for line in kept] == [
        f"{SOUNDTRACK}/{name}"
        for name in (".git/", "audio/", "game.yaml", "notes.txt", "src/", "title-theme.ogg.meta")
    ] + [f"{SOUNDTRACK}/ui-sounds/"]
    assert (
        "1 unreferenced file(s) of ours in 1 soundtrack(s) listed (use --delete to remove); "
        "7 not ours, kept"
    ) in " ".join(listed.stderr.split())
    assert snapshot(game) == before, "a dry run touches nothing"

    deleted = gc(root, "--delete")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.split() == [f"{SOUNDTRACK}/title-theme.mp3"]
    after = snapshot(game)
    assert set(before) - set(after) == {"title-theme.mp3"}
    assert all(after[name] == data for name, data in before.items() if name in after)
    assert json.loads(after["ui-sounds/soundtrack.lock.json"])["tracks"][0]["files"][0]["key"] == (
        "ui-sounds/menu.ogg"
    )


def test_gc_delete_while_a_build_holds_the_soundtrack_exits_75_deleting_nothing(
    tmp_path: Path,
) -> None:
    """A build publishing meanwhile may reuse a file its lock does not list yet: --delete
    waits for no build and deletes nothing; a listing reads on."""
    root = tmp_path / "games"
    storage = LocalStorage(".", root)
    two_builds(storage, tmp_path / "enc")
    with storage.hold(SOUNDTRACK, wait_s=0, on_wait=lambda _: None):
        deleted = gc(root, "--delete")
        listed = gc(root)
    assert deleted.returncode == 75, deleted.stderr
    assert f"is being built by process {os.getpid()}" in deleted.stderr
    assert (root / SOUNDTRACK / "title-theme.mp3").is_file()
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == [f"{SOUNDTRACK}/title-theme.mp3"]


def test_names_with_control_characters_are_listed_written_out(tmp_path: Path) -> None:
    """A file name is anyone's to choose: printed raw, one coloured or retitled the terminal
    and one with a newline read as two files."""
    root = tmp_path / "games"
    two_builds(LocalStorage(".", root), tmp_path / "enc")
    game = root / SOUNDTRACK
    for name in ("red\x1b[31m.ogg", "title\x1b]0;pwned\x07.ogg", "two\nlines.ogg"):
        (game / name).write_bytes(b"someone else's")
    listed = gc(root)
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stderr and "\x07" not in listed.stderr
    kept = [line for line in listed.stderr.splitlines() if line.startswith("not ours, kept: ")]
    assert [line.removeprefix(f"not ours, kept: {SOUNDTRACK}/") for line in kept] == [
        "red\\x1b[31m.ogg",
        "title\\x1b]0;pwned\\x07.ogg",
        "two\\nlines.ogg",
    ]


# Publishes build 2 (title-theme gains a wav) over build 1 with SIGKILL at the Nth change.
_KILLED_PUBLISH = """
import sys
from pathlib import Path
from soundtrack.storage import LocalStorage
from tests.core.test_gc import SOUNDTRACK, with_wav
from tests.corebuild import kill_at
from tests.publishing import publish

root, n = Path(sys.argv[1]), int(sys.argv[2])
kill_at(n, root)
publish(LocalStorage(str(root), root), SOUNDTRACK, with_wav(root.parent / "enc"))
"""


def with_wav(encoded: Path) -> list[Asset]:
    return [
        make_asset(encoded, "title-theme", "ogg", size=10_000, seed=1),
        make_asset(encoded, "title-theme", "mp3", size=10_000, seed=2),
        make_asset(encoded, "title-theme", "wav", size=10_000, seed=3),
    ]


def test_gc_finishes_a_stopped_publish_before_it_judges_what_is_garbage(tmp_path: Path) -> None:
    """A build killed mid-commit had moved its new wav in; gc --delete took it for garbage and
    deleted it, and the next build finished the publish with a lock naming a missing file."""
    root = tmp_path / "assets"
    folder = root / SOUNDTRACK
    publish(LocalStorage("assets", root), SOUNDTRACK, with_wav(tmp_path / "enc")[:2])
    for n in range(1, 40):
        killed = subprocess.run(
            [sys.executable, "-c", _KILLED_PUBLISH, str(root), str(n)],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert killed.returncode == -9, killed.stderr
        if (folder / ".publishing" / "commit.json").exists() and (
            folder / "title-theme.wav"
        ).exists():
            break
    assert (folder / "title-theme.wav").exists(), "killed with the wav moved in, lock old"
    assert "title-theme.wav" not in (folder / "soundtrack.lock.json").read_text()

    listed = gc(root)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == "", "the stopped publish's files are its lock's, not garbage"
    deleted = gc(root, "--delete")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout == ""
    assert "finished the publish a stopped build had begun" in deleted.stderr
    assert "title-theme.wav" in (folder / "soundtrack.lock.json").read_text()
    assert folder_problems(folder) == []


def test_a_file_we_wrote_but_someone_changed_since_is_kept(tmp_path: Path) -> None:
    storage = LocalStorage("assets", tmp_path / "assets")
    two_builds(storage, tmp_path / "enc")
    mp3 = tmp_path / "assets" / SOUNDTRACK / "title-theme.mp3"
    mp3.write_bytes(mp3.read_bytes() + b"edited by hand")

    garbage = storage.unreferenced(SOUNDTRACK)
    assert garbage.journaled
    assert garbage.ours == []
    assert garbage.kept == [f"{SOUNDTRACK}/title-theme.mp3"]


def test_a_link_someone_put_where_we_wrote_a_file_is_kept(tmp_path: Path) -> None:
    """The link's target holds the very bytes we wrote there, but the link is not ours."""
    storage = LocalStorage("assets", tmp_path / "assets")
    two_builds(storage, tmp_path / "enc")
    mp3 = tmp_path / "assets" / SOUNDTRACK / "title-theme.mp3"
    kept_aside = tmp_path / "kept-aside.mp3"
    mp3.rename(kept_aside)
    mp3.symlink_to(kept_aside)

    garbage = storage.unreferenced(SOUNDTRACK)
    assert garbage.ours == []
    assert garbage.kept == [f"{SOUNDTRACK}/title-theme.mp3"]


def test_a_folder_without_a_journal_keeps_everything_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "assets"
    two_builds(LocalStorage("assets", root), tmp_path / "enc")
    (root / SOUNDTRACK / JOURNAL).unlink()  # as a build before the journal existed left it
    before = snapshot(root)

    result = CliRunner().invoke(app, ["gc", str(root), "--delete"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    message = " ".join(result.stderr.split())
    assert f"{SOUNDTRACK}: no journal at {(root / SOUNDTRACK / JOURNAL).as_uri()}" in message
    assert "nothing provably ours, nothing deleted" in message
    assert f"not ours, kept: {SOUNDTRACK}/title-theme.mp3" in message
    assert snapshot(root) == before


def test_the_journal_records_each_content_once_and_never_render_handoffs(tmp_path: Path) -> None:
    storage = LocalStorage("assets", tmp_path / "assets")
    assets = [
        make_asset(tmp_path / "enc", "title-theme", "ogg", size=1_000, seed=1),
        make_asset(tmp_path / "enc", "credits", "ogg", size=1_000, seed=2),
    ]
    publish(storage, SOUNDTRACK, assets)
    # Another process finds identical content already there: recorded once all the same.
    publish(LocalStorage("assets", tmp_path / "assets"), SOUNDTRACK, assets)
    render = make_asset(tmp_path / "enc", "render", "wav", size=1_000, seed=3)
    key = storage.render_key("abc123", "wav")
    storage.put_asset(render.path, key, sha256=render.sha256, content_type="audio/wav", metadata={})

    lines = (tmp_path / "assets" / SOUNDTRACK / JOURNAL).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"key": f"{SOUNDTRACK}/{a.track_id}.ogg", "sha256": a.sha256} for a in assets
    ]
    assert sorted(p.name for p in (tmp_path / "assets").iterdir()) == [".renders", SOUNDTRACK]


def test_a_journal_line_torn_by_a_crash_proves_nothing_and_the_next_one_is_whole(
    tmp_path: Path,
) -> None:
    root = tmp_path / "assets"
    storage = LocalStorage("assets", root)
    old = make_asset(tmp_path / "v1", "title-theme", "ogg", size=1_000, seed=1)
    new = make_asset(tmp_path / "v2", "credits", "ogg", size=1_000, seed=2)
    publish(storage, SOUNDTRACK, [old])
    journal = root / SOUNDTRACK / JOURNAL
    journal.write_bytes(journal.read_bytes()[:-20])  # killed mid-append
    publish(LocalStorage("assets", root), SOUNDTRACK, [new])

    assert journal.read_text().splitlines()[-1] == json.dumps(
        {"key": f"{SOUNDTRACK}/credits.ogg", "sha256": new.sha256}
    )
    garbage = storage.unreferenced(SOUNDTRACK)
    assert garbage.ours == []  # the credits build superseded title-theme, whose line is torn
    assert garbage.kept == [f"{SOUNDTRACK}/title-theme.ogg"]


def test_each_publish_reads_only_what_was_appended_to_the_journal_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build opens a storage for each publish, and each read the journal whole: a year of
    nightly builds' lines for every file it published (a 200-track build, 26 s more). Now what
    was appended since; a journal written over in place is read again whole."""
    from soundtrack.storage import local

    lines_read: list[int] = []
    entries = local._entries

    def counted(lines: list[bytes]) -> Any:
        lines_read.append(len(lines))
        return entries(lines)

    monkeypatch.setattr(local, "_entries", counted)
    root = tmp_path / "assets"
    journal = root / SOUNDTRACK / JOURNAL
    journal.parent.mkdir(parents=True)
    year = [{"key": f"{SOUNDTRACK}/old-{n}.ogg", "sha256": f"{n:064x}"} for n in range(5000)]
    journal.write_text("".join(json.dumps(entry) + "\n" for entry in year))
    assets = [make_asset(tmp_path / "enc", f"t{n}", "ogg", size=1_000, seed=n) for n in range(3)]
    for asset in assets:
        publish(LocalStorage("assets", root), SOUNDTRACK, [asset])
    assert lines_read == [5000, 1, 1]

    # Written over in place (same file, same length): t0's line is gone, and recorded again.
    first = json.dumps({"key": f"{SOUNDTRACK}/t0.ogg", "sha256": assets[0].sha256})
    forged = json.dumps({"key": f"{SOUNDTRACK}/t0.ogg", "sha256": "0" * 64})
    journal.write_text(journal.read_text().replace(first, forged))
    publish(LocalStorage("assets", root), SOUNDTRACK, [assets[0]])
    assert lines_read[3:] == [5003]
    recorded = [json.loads(line) for line in journal.read_text().splitlines()]
    assert recorded[5000:] == [
        json.loads(forged),
        *({"key": f"{SOUNDTRACK}/{a.track_id}.ogg", "sha256": a.sha256} for a in assets[1:]),
        json.loads(first),
    ]


def test_gc_frees_a_full_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing its name into the build lock raised a traceback on a full disk: gc --delete,
    the command that frees space, could not run."""
    root = tmp_path / "assets"
    two_builds(LocalStorage("assets", root), tmp_path / "enc")

    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    monkeypatch.setattr(os, "ftruncate", full)
    result = CliRunner().invoke(app, ["gc", str(root), "--delete"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [f"{SOUNDTRACK}/title-theme.mp3"]
    assert not (root / SOUNDTRACK / "title-theme.mp3").exists()


def test_a_storage_with_no_soundtrack_published_is_bad_input(tmp_path: Path) -> None:
    """A mistyped path, a file, or a soundtrack's own folder listed 0 files and exited 0: a
    nightly `gc` would have checked nothing, silently."""
    root = tmp_path / "assets"
    two_builds(LocalStorage("assets", root), tmp_path / "enc")
    (tmp_path / "notes.txt").write_text("not storage")
    before = snapshot(root)
    for wrong in (tmp_path / "asets", tmp_path / "notes.txt", root / SOUNDTRACK):
        result = CliRunner().invoke(app, ["gc", str(wrong), "--delete"])
        assert result.exit_code == 2, result.output
        assert "no soundtrack is published here" in " ".join(result.stderr.split())
    assert snapshot(root) == before
    assert CliRunner().invoke(app, ["gc", str(root)]).exit_code == 0
    # An empty name (a CI variable unset) names no soundtrack: not every soundtrack there.
    empty = CliRunner().invoke(app, ["gc", str(root), "--soundtrack", "", "--delete"])
    assert empty.exit_code == 2 and "soundtrack '' cannot be part" in empty.stderr, empty.output
    assert "unreferenced" not in empty.output and snapshot(root) == before


def test_a_folder_no_soundtrack_can_be_named_is_passed_over(tmp_path: Path) -> None:
    """A folder of the root with a space in its name holding a file named like a lock made gc
    of the whole root exit 2 ("cannot be part of a storage key")."""
    root = tmp_path / "assets"
    two_builds(LocalStorage("assets", root), tmp_path / "enc")
    foreign = root / "My Stuff"
    foreign.mkdir()
    (foreign / "soundtrack.lock.json").write_text("{}")
    listed = gc(root)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == [f"{SOUNDTRACK}/title-theme.mp3"]
    assert (foreign / "soundtrack.lock.json").read_text() == "{}"


def test_a_lock_naming_a_file_through_dot_dot_deletes_nothing(tmp_path: Path) -> None:
    """`sky-odyssey/../sky-odyssey/title-theme.ogg` for the lock's file: the build reads such a
    lock as unreadable, yet gc took it as naming another file and listed the real one as ours."""
    root = tmp_path / "assets"
    two_builds(LocalStorage("assets", root), tmp_path / "enc")
    lock_path = root / SOUNDTRACK / "soundtrack.lock.json"
    lock = json.loads(lock_path.read_text())
    key = lock["tracks"][0]["files"][0]["key"]
    lock["tracks"][0]["files"][0]["key"] = f"{SOUNDTRACK}/../{key}"
    lock_path.write_text(json.dumps(lock))
    before = snapshot(root)

    result = CliRunner().invoke(app, ["gc", str(root), "--delete"])

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert "not a relative path inside the storage" in " ".join(result.stderr.split())
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            lambda lock: {"tracks": []},
            "soundtrack: Field required (and 1 more)): gc cannot tell which files are in use, "
            "and deletes none; a build of every track writes the lock again",
        ),
        (
            lambda lock: {**lock, "report_schema": 2, "tracks": []},
            "schema 2; this version reads schema 1: a newer soundtrack-pipeline's lock, or an "
            "edited one): gc cannot tell which files are in use, and deletes none; run gc with "
            "the version that wrote it",
        ),
        (lambda lock: {**lock, "tracks": [{"id": "title-theme"}]}, "Field required"),
    ],
    ids=["bare", "newer schema", "fields missing"],
)
def test_a_lock_a_build_would_not_read_deletes_nothing(
    tmp_path: Path, change: Callable[[dict[str, Any]], dict[str, Any]], why: str
) -> None:
    """gc took any JSON with a `tracks` list for the lock, where a build reads it as unreadable:
    `{"tracks": []}`, or a newer version's lock, listed every published file as ours."""
    root = tmp_path / "assets"
    two_builds(LocalStorage("assets", root), tmp_path / "enc")
    lock_path = root / SOUNDTRACK / "soundtrack.lock.json"
    lock_path.write_text(json.dumps(change(json.loads(lock_path.read_text()))))
    before = snapshot(root)

    named = CliRunner().invoke(app, ["gc", str(root), "--soundtrack", SOUNDTRACK, "--delete"])
    every = CliRunner().invoke(app, ["gc", str(root), "--delete"])

    for result in (named, every):
        assert result.exit_code == 1, result.output
        assert result.stdout == ""
        said = " ".join(result.stderr.split())
        assert f"{SOUNDTRACK}: its lock is unreadable (" in said and why in said, said
        assert "gc cannot tell which files are in use, and deletes none" in said
    assert "1 soundtrack(s) skipped" in " ".join(every.stderr.split())
    assert snapshot(root) == before


def test_a_lock_naming_another_soundtracks_file_deletes_nothing(tmp_path: Path) -> None:
    """A lock naming another soundtrack's file (the build reads it as unreadable) left this
    soundtrack's real file unreferenced, and gc --delete deleted it as ours."""
    root = tmp_path / "assets"
    two_builds(LocalStorage("assets", root), tmp_path / "enc")
    lock_path = root / SOUNDTRACK / "soundtrack.lock.json"
    lock = json.loads(lock_path.read_text())
    lock["tracks"][0]["files"][0]["key"] = "other-game/title-theme.ogg"
    lock_path.write_text(json.dumps(lock))
    before = snapshot(root)

    result = CliRunner().invoke(app, ["gc", str(root), "--delete"])

    assert result.exit_code == 2, result.output
    said = " ".join(result.stderr.split())
    assert f"names {(root / 'other-game' / 'title-theme.ogg').as_uri()}, outside" in said
    assert "gc deletes nothing" in said
    assert snapshot(root) == before


def test_one_soundtrack_whose_lock_tells_nothing_leaves_the_others_collected(
    tmp_path: Path,
) -> None:
    """One copied or hand-edited lock stopped gc of every soundtrack in the storage: a
    studio-wide nightly gc then never collected anything."""
    root = tmp_path / "assets"
    storage = LocalStorage("assets", root)
    two_builds(storage, tmp_path / "enc")  # sky-odyssey: its dropped mp3 is ours to delete
    broken = make_asset(tmp_path / "enc2", "theme", "ogg", size=5_000, seed=7)
    publish(storage, "copied", [broken])
    lock_path = root / "copied" / "soundtrack.lock.json"
    lock_path.write_text(lock_path.read_text().replace('"copied/', f'"{SOUNDTRACK}/'))
    copied_before = snapshot(root / "copied")

    result = CliRunner().invoke(app, ["gc", str(root), "--delete"])

    assert result.exit_code == 2, result.output
    assert result.stdout.split() == [f"{SOUNDTRACK}/title-theme.mp3"]
    assert not (root / SOUNDTRACK / "title-theme.mp3").exists()
    said = " ".join(result.stderr.split())
    assert "in 1 soundtrack(s) deleted" in said and "; 1 soundtrack(s) skipped" in said
    assert f"error: the lock {lock_path.as_uri()} names" in said and "gc deletes nothing" in said
    assert snapshot(root / "copied") == copied_before
    assert folder_problems(root / SOUNDTRACK) == []
