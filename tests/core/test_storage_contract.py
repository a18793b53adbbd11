"""The Storage contract: the same cases on a local folder and on S3 (the session's SeaweedFS).

What only one backend does (stable names and renames, content-addressed keys and headers,
multipart, faults, credentials, the CLI's gc) is in test_storage_local.py, test_storage_s3.py
and test_gc.py. Each case reads what was stored with the backend's own means (the file's
bytes, the server's GET), not through the Storage under test.
"""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from soundtrack.errors import InputError, StorageError
from soundtrack.storage import INDEX_NAME, Storage, check_access, open_storage
from tests.publishing import Asset, make_asset, publish, publish_assets, sample_assets
from tests.reference import sha256_of

SOUNDTRACK = "sky-odyssey"


@dataclass
class Backend:
    """A storage under test and independent ways to look behind its back."""

    storage: Storage
    root: str  # what every key of this storage starts with ("" for a folder)
    asset_key: Callable[[Asset], str]  # where the layout puts an asset of SOUNDTRACK
    uri: Callable[[str], str]  # the URI of a key
    stored: Callable[[str], bytes | None]  # a key's bytes, read without the storage
    put_foreign: Callable[[str, bytes], None]  # someone else writes a key
    listing: Callable[[], list[str]]  # every key there, temporary files included


def folder_backend(tmp_path: Path) -> Backend:
    root = tmp_path / "assets"

    def stored(key: str) -> bytes | None:
        path = root / key
        return path.read_bytes() if path.is_file() else None

    def put_foreign(key: str, data: bytes) -> None:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)

    return Backend(
        storage=open_storage("assets", base_dir=tmp_path),
        root="",
        asset_key=lambda a: f"{SOUNDTRACK}/{a.track_id}.{a.ext}",
        uri=lambda key: (root / key).as_uri(),
        stored=stored,
        put_foreign=put_foreign,
        listing=lambda: sorted(
            p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()
        ),
    )


def s3_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    bucket: str = request.getfixturevalue("s3_bucket")
    client = request.getfixturevalue("s3_server").client()

    def stored(key: str) -> bytes | None:
        try:
            body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            return None
        return body

    def listing() -> list[str]:
        listing = client.list_objects_v2(Bucket=bucket)
        return sorted(obj["Key"] for obj in listing.get("Contents", []))

    return Backend(
        storage=open_storage(f"s3://{bucket}/games", base_dir=tmp_path),
        root="games/",
        asset_key=lambda a: (
            f"games/{SOUNDTRACK}/{a.track_id}/{a.spec_hash}.{a.sha256[:16]}.{a.ext}"
        ),
        uri=lambda key: f"s3://{bucket}/{key}",
        stored=stored,
        # With a SHA-256 checksum of its own, as a current CLI uploads: only ours may prove it.
        put_foreign=lambda key, data: client.put_object(
            Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256"
        ),
        listing=listing,
    )


@pytest.fixture(params=["folder", pytest.param("s3", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest, tmp_path: Path, no_storage_env: None) -> Backend:
    if request.param == "folder":
        return folder_backend(tmp_path)
    return s3_backend(request, tmp_path)


@pytest.fixture
def assets(tmp_path: Path) -> list[Asset]:
    return sample_assets(tmp_path / "encoded")


def index_key(backend: Backend) -> str:
    return f"{backend.root}{SOUNDTRACK}/{INDEX_NAME}"


def test_publish_puts_every_file_verified_then_the_index(
    backend: Backend, assets: list[Asset]
) -> None:
    storage = backend.storage
    check_access(storage, "st")
    published, index = publish(storage, SOUNDTRACK, assets)

    for asset, file in zip(assets, published, strict=True):
        assert file.key == backend.asset_key(asset)
        assert file.uri == backend.uri(file.key)
        assert file.uploaded
        assert file.bytes == asset.path.stat().st_size
        stored = backend.stored(file.key)
        assert stored is not None
        assert hashlib.sha256(stored).hexdigest() == asset.sha256 == file.sha256
    assert backend.stored(index_key(backend)) == index
    assert storage.read_index(SOUNDTRACK) == index
    assert storage.read(index_key(backend)) == index
    # A folder no soundtrack can be named is someone else's, whatever it holds.
    backend.put_foreign(f"{backend.root}My Stuff/soundtrack.lock.json", b"{}")
    assert storage.soundtracks() == [SOUNDTRACK]


def test_second_publish_sends_nothing(backend: Backend, assets: list[Asset]) -> None:
    publish(backend.storage, SOUNDTRACK, assets)
    before = {key: backend.stored(key) for key in backend.listing()}
    again = publish_assets(backend.storage, SOUNDTRACK, assets)

    assert [f.uploaded for f in again] == [False] * len(assets)
    assert {key: backend.stored(key) for key in backend.listing()} == before


def test_a_file_that_does_not_match_its_sha256_leaves_the_published_one_untouched(
    backend: Backend, tmp_path: Path
) -> None:
    storage = backend.storage
    good = make_asset(tmp_path / "v1", "title-theme", "ogg", size=20_000, seed=1)
    other = make_asset(tmp_path / "v2", "title-theme", "ogg", size=20_000, seed=2)
    (file,), _ = publish(storage, SOUNDTRACK, [good])
    before = backend.listing()
    with pytest.raises(StorageError, match="changed after it was hashed") as caught:
        storage.put_asset(
            other.path, file.key, sha256="0" * 64, content_type="audio/ogg", metadata={}
        )
    assert not caught.value.transient
    assert storage.has_asset(file.key, good.sha256)
    assert hashlib.sha256(backend.stored(file.key) or b"").hexdigest() == good.sha256
    assert backend.listing() == before, "nothing written, no temporary file left"

    fresh = storage.asset_key(SOUNDTRACK, "credits", "abc123", "ogg", sha256="0" * 64)
    with pytest.raises(StorageError, match="changed after it was hashed"):
        storage.put_asset(other.path, fresh, sha256="0" * 64, content_type="audio/ogg", metadata={})
    assert backend.stored(fresh) is None
    assert backend.listing() == before


def test_has_asset_compares_content(backend: Backend, assets: list[Asset]) -> None:
    storage = backend.storage
    (file,), _ = publish(storage, SOUNDTRACK, assets[:1])
    assert storage.has_asset(file.key, assets[0].sha256)
    assert not storage.has_asset(file.key, assets[1].sha256)
    assert not storage.has_asset(file.key, "0" * 64)
    missing = storage.asset_key(SOUNDTRACK, "missing", "abc123", "ogg", sha256="0" * 64)
    assert not storage.has_asset(missing, assets[0].sha256)


def test_index_is_none_until_written_and_replaced_whole(backend: Backend) -> None:
    storage = backend.storage
    assert storage.read_index(SOUNDTRACK) is None
    assert storage.read(index_key(backend)) is None
    assert storage.soundtracks() == []
    uri = storage.write_index(SOUNDTRACK, b'{"tracks": []}')
    storage.write_index(SOUNDTRACK, b'{"tracks": [], "build": 2}')
    assert uri == backend.uri(index_key(backend))
    assert storage.read_index(SOUNDTRACK) == b'{"tracks": [], "build": 2}'
    assert backend.stored(index_key(backend)) == b'{"tracks": [], "build": 2}'
    assert backend.listing() == [index_key(backend)], "nothing else, no temporary file left"
    assert storage.soundtracks() == [SOUNDTRACK]


def test_the_review_page_lies_beside_the_lock_replaced_whole_and_is_never_garbage(
    backend: Backend, assets: list[Asset]
) -> None:
    storage = backend.storage
    publish(storage, SOUNDTRACK, assets)
    key = storage.review_key(SOUNDTRACK)
    assert key == f"{backend.root}{SOUNDTRACK}/review.html"
    uri = storage.write_review(SOUNDTRACK, b"<p>build 1</p>")
    storage.write_review(SOUNDTRACK, b"<p>build 2</p>")
    assert uri == backend.uri(key)
    assert backend.stored(key) == b"<p>build 2</p>"
    assert [k for k in backend.listing() if "review" in k] == [key], "no temporary file left"
    garbage = storage.unreferenced(SOUNDTRACK)
    assert key not in garbage.ours + garbage.kept, "gc neither deletes nor lists it"


def test_fetch_brings_a_verified_copy_and_refuses_other_content(
    backend: Backend, assets: list[Asset], tmp_path: Path
) -> None:
    storage = backend.storage
    (file,), _ = publish(storage, SOUNDTRACK, assets[:1])
    dest = tmp_path / "cache" / "renders" / "copy.ogg"
    storage.fetch(file.key, dest, sha256=assets[0].sha256)
    assert sha256_of(dest) == assets[0].sha256

    elsewhere = tmp_path / "other" / "copy.ogg"
    with pytest.raises(StorageError):
        storage.fetch(file.key, elsewhere, sha256=assets[1].sha256)
    folder = elsewhere.parent  # a folder may be made on the way, but nothing put in it
    assert not folder.exists() or list(folder.iterdir()) == [], "no file, no temporary file"


def test_presigned_links_fetch_the_bytes_and_the_expiry_is_bounded(
    backend: Backend, assets: list[Asset]
) -> None:
    storage = backend.storage
    (file,), _ = publish(storage, SOUNDTRACK, assets[:1])
    link = storage.presign(file.key, expires_s=600)
    with urllib.request.urlopen(link, timeout=10) as response:
        assert hashlib.sha256(response.read()).hexdigest() == assets[0].sha256
    storage.presign(file.key)  # the default, seven days, is allowed
    for bad in (0, -1, 7 * 24 * 3600 + 1):
        with pytest.raises(InputError, match="expiry"):
            storage.presign(file.key, expires_s=bad)


@pytest.mark.parametrize(
    "key",
    ["{root}../outside.ogg", "/etc/passwd", "{root}a/../../b", "", "{root}a//b", "{root}./a.ogg"],
)
def test_keys_cannot_leave_the_root(key: str, backend: Backend, assets: list[Asset]) -> None:
    storage = backend.storage
    key = key.format(root=backend.root)
    asset = assets[0]
    with pytest.raises(InputError, match="inside"):
        storage.put_asset(
            asset.path, key, sha256=asset.sha256, content_type="audio/ogg", metadata={}
        )
    for call in (
        lambda: storage.delete([key]),
        lambda: storage.has_asset(key, asset.sha256),
        lambda: storage.read(key),
        lambda: storage.presign(key),
        lambda: storage.fetch(key, asset.path.with_name("fetched"), sha256=asset.sha256),
    ):
        with pytest.raises(InputError, match="inside"):
            call()
    assert backend.listing() == []


@pytest.mark.parametrize(
    ("soundtrack", "track_id"), [("..", "theme"), ("game", "a/b"), ("game", ".hidden")]
)
def test_unsafe_names_are_refused(soundtrack: str, track_id: str, backend: Backend) -> None:
    with pytest.raises(InputError, match="cannot be part of a storage key"):
        backend.storage.asset_key(soundtrack, track_id, "abc123", "ogg", sha256="0" * 64)


@pytest.mark.parametrize("generation_key", ["..", "a/b", ".hidden", ""])
def test_unsafe_generation_keys_are_refused(generation_key: str, backend: Backend) -> None:
    with pytest.raises(InputError, match="cannot be part of a storage key"):
        backend.storage.render_key(generation_key, "wav")


def test_the_journal_proves_superseded_files_ours_and_nothing_else(
    backend: Backend, tmp_path: Path
) -> None:
    storage = backend.storage
    folder = tmp_path / "encoded"
    ogg = make_asset(folder, "title-theme", "ogg", size=10_000, seed=1)
    mp3 = make_asset(folder, "title-theme", "mp3", size=10_000, seed=2)
    credits = make_asset(folder, "credits", "ogg", size=10_000, seed=3)
    publish(storage, SOUNDTRACK, [ogg, mp3, credits])
    publish(storage, SOUNDTRACK, [ogg])  # mp3 dropped, credits cut
    # Someone else's file beside ours, and one of ours changed by hand since we wrote it.
    notes = f"{backend.root}{SOUNDTRACK}/notes.txt"
    backend.put_foreign(notes, b"mix notes")
    backend.put_foreign(backend.asset_key(credits), b"re-encoded by hand")
    # A render handed to another machine is outside every soundtrack and never journaled.
    render = make_asset(folder, "render", "wav", size=1_000, seed=4)
    render_key = storage.render_key("abc123", "wav")
    assert render_key == f"{backend.root}.renders/abc123.wav"
    storage.put_asset(render.path, render_key, sha256=render.sha256, content_type="", metadata={})

    garbage = storage.unreferenced(SOUNDTRACK)
    assert garbage.soundtrack == SOUNDTRACK
    assert garbage.journaled
    assert backend.asset_key(mp3) in garbage.ours
    assert backend.asset_key(ogg) not in garbage.ours + garbage.kept
    assert notes in garbage.kept and notes not in garbage.ours
    assert backend.asset_key(credits) in garbage.kept
    assert not [key for key in garbage.ours + garbage.kept if ".renders" in key]
    assert storage.soundtracks() == [SOUNDTRACK]

    storage.delete(garbage.ours)
    storage.delete(garbage.ours)  # missing keys are fine
    assert backend.stored(backend.asset_key(mp3)) is None
    assert backend.stored(notes) == b"mix notes"
    assert backend.stored(backend.asset_key(credits)) == b"re-encoded by hand"
    assert storage.has_asset(backend.asset_key(ogg), ogg.sha256)
    assert storage.has_asset(render_key, render.sha256)
    assert storage.unreferenced(SOUNDTRACK).ours == []


def test_unreferenced_without_an_index_is_an_input_error(backend: Backend) -> None:
    with pytest.raises(InputError, match="no index"):
        backend.storage.unreferenced(SOUNDTRACK)
