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
