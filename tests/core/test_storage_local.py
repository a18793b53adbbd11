"""Local-folder storage: stable names, atomic replacement, verified copies, the index, gc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from soundtrack.cli import app
from soundtrack.errors import InputError, StorageError
from soundtrack.storage import LocalStorage, check_access, open_storage
from tests.publishing import Asset, make_asset, publish, publish_assets, sample_assets
from tests.reference import sha256_of

pytestmark = pytest.mark.usefixtures("no_storage_env")

SOUNDTRACK = "sky-odyssey"


@pytest.fixture
def assets(tmp_path: Path) -> list[Asset]:
    return sample_assets(tmp_path / "encoded")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def test_publish_writes_stable_names_in_the_manifests_folder(
    assets: list[Asset], tmp_path: Path
) -> None:
    storage = open_storage("assets", base_dir=tmp_path / "game")
    check_access(storage, "st")
    published, index = publish(storage, SOUNDTRACK, assets)

    root = tmp_path / "game" / "assets"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        f"{SOUNDTRACK}/credits.ogg",
        f"{SOUNDTRACK}/soundtrack.journal.jsonl",
        f"{SOUNDTRACK}/soundtrack.lock.json",
        f"{SOUNDTRACK}/title-theme.mp3",
        f"{SOUNDTRACK}/title-theme.ogg",
    ]
    assert [file.key for file in published] == [
        f"{SOUNDTRACK}/{asset.track_id}.{asset.ext}" for asset in assets
    ]
    assert (root / SOUNDTRACK / "soundtrack.lock.json").read_bytes() == index
    assert leftovers(root) == []


def test_second_publish_copies_nothing(assets: list[Asset], tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "assets"), base_dir=Path("/unused"))
    first, _ = publish(storage, SOUNDTRACK, assets)
    before = {f.key: os.stat(tmp_path / "assets" / f.key) for f in first}
    again, _ = publish(storage, SOUNDTRACK, assets)

    for file in again:
        after = os.stat(tmp_path / "assets" / file.key)
        assert (after.st_ino, after.st_mtime_ns) == (
            before[file.key].st_ino,
            before[file.key].st_mtime_ns,
        )


def test_changed_content_replaces_the_file_by_rename(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "assets"), base_dir=tmp_path)
    old = make_asset(tmp_path / "v1", "title-theme", "ogg", size=20_000, seed=1)
    new = make_asset(tmp_path / "v2", "title-theme", "ogg", size=25_000, seed=2)
    (first,), _ = publish(storage, SOUNDTRACK, [old])
    target = tmp_path / "assets" / first.key
    inode_before = target.stat().st_ino
    (second,), _ = publish(storage, SOUNDTRACK, [new])

    assert second.key == first.key
    assert second.uploaded
    assert sha256_of(target) == new.sha256
    assert target.stat().st_ino != inode_before  # a new file renamed over, not rewritten in place
    assert leftovers(tmp_path / "assets") == []


def test_a_copy_staged_by_an_earlier_try_does_not_replace_what_is_already_in_place(
    tmp_path: Path,
) -> None:
    """One take staged, then another whose content is the one published already: the first
    take's copy replaced the published file at the commit, and the lock named other bytes."""
    storage = open_storage(str(tmp_path / "assets"), base_dir=tmp_path)
    kept = make_asset(tmp_path / "v1", "title-theme", "ogg", size=20_000, seed=1)
    other = make_asset(tmp_path / "v2", "title-theme", "ogg", size=25_000, seed=2)
    (first,), _ = publish(storage, SOUNDTRACK, [kept])
    publish_assets(storage, SOUNDTRACK, [other])  # staged, never committed
    (again,), _ = publish(storage, SOUNDTRACK, [kept])
    assert not again.uploaded
    assert sha256_of(tmp_path / "assets" / first.key) == kept.sha256
    assert leftovers(tmp_path / "assets") == []


def test_relative_folder_resolves_against_the_manifest_folder_and_is_used_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage("./assets", base_dir=tmp_path / "game")
    assert isinstance(storage, LocalStorage)
    assert storage.root == tmp_path / "game" / "assets"
    assert storage.url == "./assets"

    # Which URL wins (--out, $SOUNDTRACK_STORAGE, the manifest) is the build's choice, made once.
    monkeypatch.setenv("SOUNDTRACK_STORAGE", str(tmp_path / "elsewhere"))
    again = open_storage("./assets", base_dir=tmp_path / "game")
    assert isinstance(again, LocalStorage)
    assert again.root == tmp_path / "game" / "assets"


def test_presign_is_a_file_uri(assets: list[Asset], tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "assets"), base_dir=tmp_path)
    (file,) = publish_assets(storage, SOUNDTRACK, assets[:1])
    link = storage.presign(file.key, expires_s=3600)
    assert link == (tmp_path / "assets" / file.key).as_uri()


def test_a_storage_beside_the_manifests_folder_is_named_without_dotdot(tmp_path: Path) -> None:
    """`storage: ../assets` beside a game's audio folder: the lock, JUnit and logs named every
    file file:///.../audio/../assets/..., through a link to the folder too."""
    (tmp_path / "game" / "audio").mkdir(parents=True)
    (tmp_path / "linked").symlink_to(tmp_path / "game" / "audio")
    for base in (tmp_path / "game" / "audio", tmp_path / "linked"):
        storage = open_storage("../assets", base_dir=base)
        assert isinstance(storage, LocalStorage) and storage.root == tmp_path / "game" / "assets"
        uri = storage.presign(f"{SOUNDTRACK}/a.ogg", expires_s=60)
        assert uri == (tmp_path / "game" / "assets" / SOUNDTRACK / "a.ogg").as_uri()
    assert open_storage("out", base_dir=tmp_path / "linked").root == tmp_path / "linked" / "out"
    # After the `..`, a link is still seen as one (a link to nothing is refused), and a loop of
    # links is bad input, not a traceback.
    (tmp_path / "game" / "dangling").symlink_to(tmp_path / "nowhere" / "x")
    with pytest.raises(StorageError, match=r"is a symbolic link to .*, which does not exist"):
        check_access(open_storage("../dangling", base_dir=tmp_path / "game" / "audio"), "st")
    (tmp_path / "game" / "loop1").symlink_to(tmp_path / "game" / "loop2")
    (tmp_path / "game" / "loop2").symlink_to(tmp_path / "game" / "loop1")
    with pytest.raises(InputError, match="a loop of symbolic links"):
        open_storage("../loop1/x/../y", base_dir=tmp_path / "game" / "audio")
    for looped in ("../loop1", "../loop1/x"):
        storage = open_storage(looped, base_dir=tmp_path / "game" / "audio")
        with pytest.raises(StorageError, match=r"loop1 is a symbolic link to .*loop2, which"):
            check_access(storage, "st")


def test_a_storage_folder_with_no_room_for_the_paths_under_it_is_bad_input(
    tmp_path: Path,
) -> None:
    """A folder path that fits the 4095 bytes a path holds, but not with this tool's paths
    under it, passed every check: its tracks were rendered, then failed at publishing."""
    longest = 4095 - 300 - len(os.fsencode(tmp_path)) - 1  # less the '/' after tmp_path
    folders = (longest - 1) // 201
    fits = ("d" * 200 + "/") * folders + "e" * (longest - 201 * folders)
    assert len(os.fsencode(tmp_path / fits)) == 4095 - 300
    assert open_storage(fits, base_dir=tmp_path).root == tmp_path / fits
    with pytest.raises(InputError, match=r"is 3796 bytes long: at most 3795 \(a path holds"):
        open_storage(fits + "e", base_dir=tmp_path)


def test_a_read_only_soundtrack_folder_is_refused_before_the_build(
    tmp_path: Path, file_system: Callable[[str], Path]
) -> None:
    """Its root writable, a read-only soundtrack folder (a mount) passed the access check: the
    build rendered, then failed at the build lock, exit 1."""
    folder = file_system("1m")
    remounted = subprocess.run(
        ["mount", "-o", "remount,ro", str(folder)], capture_output=True, check=False
    )
    assert remounted.returncode == 0, remounted.stderr
    storage = open_storage(str(folder.parent), base_dir=tmp_path)
    with pytest.raises(StorageError, match=f"{folder} is not writable") as caught:
        check_access(storage, folder.name)
    assert not caught.value.transient
    check_access(storage, "another")  # a new folder beside it can be made
    # The read-only mount as the storage's root: no soundtrack folder can be made in it.
    with pytest.raises(StorageError, match=f"storage folder {folder}: {folder} is not writable"):
        check_access(open_storage(str(folder), base_dir=tmp_path), "another")


def test_check_access_refuses_a_root_that_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    for root in (tmp_path / "file", tmp_path / "file" / "assets"):
        with pytest.raises(StorageError, match="is not a directory") as caught:
            check_access(open_storage(str(root), base_dir=tmp_path), "st")
        assert not caught.value.transient
    check_access(open_storage(str(tmp_path / "new" / "assets"), base_dir=tmp_path), "st")


def test_gc_lists_then_deletes_only_our_unreferenced_files_of_indexed_soundtracks(
    tmp_path: Path,
) -> None:
    root = tmp_path / "assets"
    storage = open_storage(str(root), base_dir=tmp_path)
    ogg = make_asset(tmp_path / "enc", "title-theme", "ogg", size=10_000, seed=1)
    mp3 = make_asset(tmp_path / "enc", "title-theme", "mp3", size=10_000, seed=2)
    publish(storage, SOUNDTRACK, [ogg, mp3])
    publish(storage, SOUNDTRACK, [ogg])  # mp3 dropped from the formats
    # Left by a killed copy: written but never recorded, so not provably ours.
    stray = root / SOUNDTRACK / ".title-theme.ogg.abc.tmp"
    stray.write_bytes(b"partial")
    not_ours = root / "sfx" / "boom.wav"  # the game's own files, no index: never looked at
    not_ours.parent.mkdir()
    not_ours.write_bytes(b"boom")

    assert storage.soundtracks() == [SOUNDTRACK]
    garbage = storage.unreferenced(SOUNDTRACK)
    assert garbage.ours == [f"{SOUNDTRACK}/title-theme.mp3"]
    assert garbage.kept == [f"{SOUNDTRACK}/.title-theme.ogg.abc.tmp"]
    listed = CliRunner().invoke(app, ["gc", str(root)])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.split() == [f"{SOUNDTRACK}/title-theme.mp3"]
    assert f"not ours, kept: {SOUNDTRACK}/.title-theme.ogg.abc.tmp" in listed.stderr
    assert (root / SOUNDTRACK / "title-theme.mp3").exists()

    deleted = CliRunner().invoke(app, ["gc", str(root), "--soundtrack", SOUNDTRACK, "--delete"])
    assert deleted.exit_code == 0, deleted.output
    assert sorted(p.name for p in (root / SOUNDTRACK).iterdir()) == [
        ".title-theme.ogg.abc.tmp",
        "soundtrack.journal.jsonl",
        "soundtrack.lock.json",
        "title-theme.ogg",
    ]
    assert not_ours.read_bytes() == b"boom"
    lock = json.loads((root / SOUNDTRACK / "soundtrack.lock.json").read_text())
    assert lock["tracks"][0]["files"][0]["key"] == f"{SOUNDTRACK}/title-theme.ogg"


def test_gc_deletes_nothing_through_a_soundtrack_folder_that_is_a_link(tmp_path: Path) -> None:
    """A link at <root>/<soundtrack> to a folder outside the root, holding a lock and a journal
    naming a file there: gc --delete deleted that file, outside the storage."""
    elsewhere = tmp_path / "elsewhere"
    storage = open_storage(str(elsewhere), base_dir=tmp_path)
    ogg = make_asset(tmp_path / "enc", "title-theme", "ogg", size=10_000, seed=1)
    mp3 = make_asset(tmp_path / "enc", "title-theme", "mp3", size=10_000, seed=2)
    publish(storage, SOUNDTRACK, [ogg, mp3])
    publish(storage, SOUNDTRACK, [ogg])  # its mp3: unreferenced, and recorded as written
    root = tmp_path / "assets"
    root.mkdir()
    (root / SOUNDTRACK).symlink_to(elsewhere / SOUNDTRACK)
    mp3_there = elsewhere / SOUNDTRACK / "title-theme.mp3"
    assert mp3_there.exists()

    assert open_storage(str(root), base_dir=tmp_path).soundtracks() == []
    every = CliRunner().invoke(app, ["gc", str(root), "--delete"])  # a link is not its own
    assert every.exit_code == 2 and "no soundtrack is published here" in every.output
    named = CliRunner().invoke(app, ["gc", str(root), "--soundtrack", SOUNDTRACK, "--delete"])
    assert named.exit_code == 2, named.output
    assert "is a symbolic link to" in " ".join(named.output.split())
    assert mp3_there.exists()


@pytest.mark.parametrize("published_there", [False, True])
def test_gc_delete_of_a_linked_soundtrack_touches_nothing_where_the_link_points(
    tmp_path: Path, published_there: bool
) -> None:
    """gc --delete --soundtrack through a link took the build lock and repaired there first:
    it made a lock in the folder the link names, and deleted what a build had left in it."""
    elsewhere = tmp_path / "elsewhere" / SOUNDTRACK
    if published_there:
        publish(open_storage(str(elsewhere.parent), base_dir=tmp_path), SOUNDTRACK, [])
    staged = elsewhere / ".publishing" / "staged" / "important.txt"
    staged.parent.mkdir(parents=True)
    staged.write_text("precious")
    part = elsewhere / ".notes.0123456789abcdef.part"
    part.write_text("p2")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / SOUNDTRACK).symlink_to(elsewhere)
    before = sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*"))

    result = CliRunner().invoke(
        app, ["gc", str(tmp_path / "assets"), "--soundtrack", SOUNDTRACK, "--delete"]
    )
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "is a symbolic link to" in said, said
    assert sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*")) == before
    assert staged.read_text() == "precious" and part.read_text() == "p2"


@pytest.mark.parametrize("delete", [[], ["--delete"]])
def test_gc_without_an_index_is_an_input_error_and_makes_no_folder(
    tmp_path: Path, delete: list[str]
) -> None:
    # A mistyped storage or --soundtrack: taking the build lock made the folders on the way.
    storage = tmp_path / "nowhere" / "deep"
    result = CliRunner().invoke(app, ["gc", str(storage), "--soundtrack", SOUNDTRACK, *delete])
    assert result.exit_code == 2
    assert "no index" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "nowhere").exists()


def test_gc_refuses_an_index_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / SOUNDTRACK).mkdir()
    (tmp_path / SOUNDTRACK / "soundtrack.lock.json").write_text('{"tracks": [{"files": [{}]}]}')
    result = CliRunner().invoke(app, ["gc", str(tmp_path), "--soundtrack", SOUNDTRACK, "--delete"])
    assert result.exit_code == 1
    assert "its lock is unreadable (soundtrack: Field required" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("lock", "said"),
    [
        (b"[" * 100_000, "Invalid JSON: recursion limit exceeded"),
        (
            b'{"model_loads": 1' + b"0" * 5000 + b', "tracks": []}',
            "Invalid JSON: number out of range",
        ),
    ],
)
def test_gc_and_the_next_build_take_a_lock_too_deep_or_too_long_to_read(
    tmp_path: Path, lock: bytes, said: str
) -> None:
    """Such a lock crashed gc in a RecursionError or ValueError traceback, and every build of
    the soundtrack in write-index (reading what the old lock named), so none replaced it."""
    folder = tmp_path / SOUNDTRACK
    folder.mkdir()
    (folder / "soundtrack.lock.json").write_bytes(lock)
    result = CliRunner().invoke(app, ["gc", str(tmp_path), "--soundtrack", SOUNDTRACK])
    assert result.exit_code == 1 and said in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    storage = LocalStorage(str(tmp_path), tmp_path)
    publish(storage, SOUNDTRACK, sample_assets(tmp_path / "assets"))
    assert json.loads((folder / "soundtrack.lock.json").read_bytes())["tracks"]


@pytest.mark.timeout(60)  # a FIFO read waited for a writer: a hang fails here, not at 600 s
def test_a_fifo_for_the_lock_or_the_journal_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A FIFO at the lock's or the journal's name hung build, gc and review for ever."""
    storage = LocalStorage(str(tmp_path), tmp_path)
    publish(storage, SOUNDTRACK, sample_assets(tmp_path / "assets"))
    for name in ("soundtrack.lock.json", "soundtrack.journal.jsonl"):
        path = tmp_path / SOUNDTRACK / name
        kept = path.read_bytes()
        path.unlink()
        os.mkfifo(path)
        result = CliRunner().invoke(app, ["gc", str(tmp_path), "--soundtrack", SOUNDTRACK])
        assert result.exit_code == 1, result.output
        assert "not a regular file" in " ".join(result.output.split()), result.output
        if name == "soundtrack.journal.jsonl":  # taking lines it kept none of
            with pytest.raises(StorageError, match="not a regular file"):
                publish(storage, SOUNDTRACK, sample_assets(tmp_path / "again", scale=2))
        path.unlink()
        path.write_bytes(kept)
    record = tmp_path / SOUNDTRACK / ".publishing" / "commit.json"  # a commit under way
    record.parent.mkdir(exist_ok=True)
    os.mkfifo(record)
    result = CliRunner().invoke(app, ["gc", str(tmp_path), "--soundtrack", SOUNDTRACK, "--delete"])
    assert result.exit_code == 1, result.output  # it repairs first: reads the commit's record
    assert "commit.json: not a regular file" in " ".join(result.output.split()), result.output


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux's setpriv")
def test_a_soundtrack_folder_this_user_cannot_enter_is_a_storage_error_not_a_traceback(
    tmp_path: Path,
) -> None:
    """A soundtrack folder the build's user may not enter (mode 000, or owned by another
    user) ended build and gc's access check in a PermissionError traceback."""
    folder = tmp_path / SOUNDTRACK
    folder.mkdir()
    folder.chmod(0)
    check = (
        "from pathlib import Path\n"
        "from soundtrack.errors import StorageError\n"
        "from soundtrack.storage import LocalStorage\n"
        "try:\n"
        f"    LocalStorage('out', Path({str(tmp_path)!r})).check_access({SOUNDTRACK!r})\n"
        "except StorageError as exc:\n"
        "    print(exc)\n"
    )
    try:
        # Root enters any folder: without these capabilities it is held to the modes.
        denied = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
        result = subprocess.run(
            [*denied, sys.executable, "-c", check], capture_output=True, text=True, check=False
        )
    finally:
        folder.chmod(0o755)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip() == f"storage folder {tmp_path}: {folder} is not writable"
