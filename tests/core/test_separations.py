"""Sources handed between a build and a render-pool machine through storage: they come back
bit-exact, and an index someone else left in storage fails cleanly, writing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from soundtrack.errors import StorageError
from soundtrack.hashing import file_sha256
from soundtrack.separations import Separation, SeparationJob, fetch_separation, share_separation
from soundtrack.storage import Storage, open_storage

RATE = 44100


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return open_storage(str(tmp_path / "out"), base_dir=tmp_path)


def _job() -> SeparationJob:
    return SeparationJob(track_id="harbour", mix_sha256="ab" * 32, stem_model="demucs")


def _separation() -> Separation:
    rng = np.random.default_rng(7)
    sources = {
        name: rng.uniform(-0.5, 0.5, (2, RATE // 10)).astype(np.float32)
        for name in ("drums", "bass")
    }
    return Separation(sources, "tiny-demucs", "r1", "MIT")


def _hand_back_index(storage: Storage, tmp_path: Path, index: object) -> None:
    """Leave `index` where a pool machine hands back the job's sources, as anyone with write
    access to the storage could."""
    path = tmp_path / "index.json"
    path.write_text(json.dumps(index))
    key = storage.render_key(_job().key, "json")
    storage.put_asset(
        path, key, sha256=file_sha256(path), content_type="application/json", metadata={}
    )


def test_sources_come_back_bit_exact_with_their_separator(storage: Storage) -> None:
    separation = _separation()
    assert fetch_separation(storage, _job()) is None

    share_separation(storage, _job(), separation, RATE)
    fetched = fetch_separation(storage, _job())

    assert fetched is not None
    assert (fetched.model_id, fetched.revision, fetched.license) == ("tiny-demucs", "r1", "MIT")
    assert fetched.sources.keys() == separation.sources.keys()
    for name, audio in separation.sources.items():
        np.testing.assert_array_equal(fetched.sources[name], audio)


def test_another_stem_model_or_mix_is_another_job(storage: Storage) -> None:
    """Switching a track's stem model reused the other model's sources, credited to it."""
    share_separation(storage, _job(), _separation(), RATE)
    for other in (
        _job().model_copy(update={"stem_model": "htdemucs_ft"}),
        _job().model_copy(update={"mix_sha256": "cd" * 32}),
    ):
        assert other.key != _job().key
        assert fetch_separation(storage, other) is None


def test_a_source_changed_in_storage_since_it_was_handed_back_is_refused(
    storage: Storage, tmp_path: Path
) -> None:
    share_separation(storage, _job(), _separation(), RATE)
    index = json.loads(storage.read(storage.render_key(_job().key, "json")) or b"")
    drums = tmp_path / "out" / storage.render_key(index["sources"]["drums"], "wav")
    audio = drums.read_bytes()
    drums.write_bytes(audio[:-4] + bytes(4))  # its last sample zeroed, the size kept

    with pytest.raises(StorageError, match="changed since"):
        fetch_separation(storage, _job())


def test_a_source_name_that_is_a_path_is_refused_and_nothing_is_written_out(
    storage: Storage, tmp_path: Path
) -> None:
    # A real source's WAV under its sha256, named by the index as a path out of the temp folder.
    share_separation(storage, _job(), _separation(), RATE)
    index = json.loads(storage.read(storage.render_key(_job().key, "json")) or b"")
    sha = index["sources"]["drums"]
    escape = f"../../../../../../../..{tmp_path}/escaped"
    _hand_back_index(storage, tmp_path, {**index, "sources": {escape: sha}})

    with pytest.raises(StorageError, match=r"no separation's index: sources\..*escaped") as caught:
        fetch_separation(storage, _job())

    assert not caught.value.transient
    assert not (tmp_path / "escaped.wav").exists()


@pytest.mark.parametrize(
    ("index", "field"),
    [
        ({"model_id": "m", "revision": "r", "license": "MIT"}, "sources"),
        ({"model_id": "m", "revision": "r", "license": "MIT", "sources": {"drums": "x"}}, "drums"),
        ([], "top level"),
    ],
)
def test_an_index_of_another_shape_names_what_is_wrong(
    storage: Storage, tmp_path: Path, index: object, field: str
) -> None:
    _hand_back_index(storage, tmp_path, index)

    with pytest.raises(StorageError, match=f"no separation's index: .*{field}"):
        fetch_separation(storage, _job())
