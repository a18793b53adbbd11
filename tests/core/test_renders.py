"""The render cache and the hand-off of renders between machines through storage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundtrack.errors import InputError, StorageError
from soundtrack.renders import (
    Render,
    RenderCache,
    RenderFailure,
    fetch_handed_back,
    fetch_parent,
    fetch_shared,
    is_shared,
    render_batch,
    share_render,
    sidecar_json,
)
from soundtrack.spec import ParentAudio
from soundtrack.storage import LocalStorage
from tests.reference import sha256_of
from tests.specs import make_spec


def noise(seconds: float = 1.0) -> np.ndarray:
    return np.random.default_rng(0).uniform(-0.5, 0.5, (1, int(32000 * seconds))).astype(np.float32)


def test_cache_round_trip_and_corruption(tmp_path: Path) -> None:
    cache = RenderCache(tmp_path)
    audio = noise()
    stored = cache.put("k1", audio, 32000, model_id="m", revision="r", license="l")
    found = cache.get("k1")
    assert found == stored and cache.holds(make_spec(generation_key="k1"))
    assert np.array_equal(cache.load(found)[0], audio)
    stored.path.write_bytes(stored.path.read_bytes()[:-100])  # a torn write
    assert cache.get("k1") is None
    # Not held either: its batch renders again, so it waits for its turn on the device.
    assert not cache.holds(make_spec(generation_key="k1"))
    assert cache.lists(make_spec(generation_key="k1")), "listed, unread, for the log's count"
    assert cache.get("never-rendered") is None


def test_a_render_read_from_the_cache_is_marked_used(tmp_path: Path) -> None:
    """Pruning the cache by age (docs/operations.md) dropped the renders of tracks unchanged for a
    month, which a later mastering change then rendered again."""
    cache = RenderCache(tmp_path)
    stored = cache.put("k1", noise(), 32000, model_id="m", revision="r", license="l")
    files = (stored.path, stored.path.with_suffix(".json"))
    month_ago = stored.path.stat().st_mtime - 40 * 86400
    for path in files:
        os.utime(path, (month_ago, month_ago))
    stored.path.write_bytes(stored.path.read_bytes()[:-4])  # not this render: not used
    os.utime(stored.path, (month_ago, month_ago))
    assert cache.get("k1") is None
    assert [path.stat().st_mtime for path in files] == [month_ago, month_ago]
    stored = cache.put("k1", noise(), 32000, model_id="m", revision="r", license="l")
    for path in files:
        os.utime(path, (month_ago, month_ago))
    assert cache.get("k1") == stored
    assert all(path.stat().st_mtime > month_ago + 39 * 86400 for path in files)


@pytest.mark.timeout(60)  # a FIFO read waited for a writer: a hang fails here, not at 600 s
def test_an_entry_of_another_key_a_link_a_fifo_or_a_folder_is_no_render(tmp_path: Path) -> None:
    """An entry copied under another key published that track's audio as this one's (exit 0);
    a FIFO for a sidecar hung the build; a folder at a WAV's name failed every build after."""
    cache = RenderCache(tmp_path)
    kept = {
        key: cache.put(key, noise(seconds), 32000, model_id="m", revision="r", license="l")
        for key, seconds in (("k1", 1.0), ("k2", 2.0))
    }
    root = cache.root
    for ext in ("wav", "json"):
        shutil.copy(root / f"k2.{ext}", root / f"k1.{ext}")
    assert cache.get("k1") is None and cache.get("k2") == kept["k2"]
    # A sidecar written before sidecars named their key is its file name's.
    record = json.loads((root / "k2.json").read_text())
    del record["generation_key"]
    (root / "k2.json").write_text(json.dumps(record))
    assert cache.get("k2") == kept["k2"]

    outside = tmp_path / "outside.wav"
    shutil.move(root / "k2.wav", outside)
    (root / "k2.wav").symlink_to(outside)  # the right bytes, not in the cache
    assert cache.get("k2") is None
    (root / "k1.json").unlink()
    os.mkfifo(root / "k1.json")
    assert cache.get("k1") is None
    for entry in ("k1.json", "k1.wav"):
        (root / entry).unlink()
        (root / entry).mkdir()
        (root / entry / "inside").write_text("x")
    assert cache.get("k1") is None
    stored = cache.put("k1", noise(), 32000, model_id="m", revision="r", license="l")
    assert cache.get("k1") == stored


def test_a_loop_renders_the_room_its_end_is_found_in(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A loop is rendered longer than it plays, to find where its bars end: rendered at its
    own length, its seam was searched for past the audio."""
    spec = make_spec(
        loop=True,
        duration_s=2.0,
        model=str(tiny_model_dir),
        prompt="calm piano",
        generation_key="loop",
    )
    assert spec.render_duration_s > spec.duration_s + 0.5
    (render,) = render_batch([spec], RenderCache(tmp_path), device="cpu")
    assert isinstance(render, Render)
    info = sf.info(render.path)
    assert info.frames == round(spec.render_duration_s * info.samplerate)


def test_render_travels_between_machines_through_storage(tmp_path: Path) -> None:
    storage = LocalStorage("shared", tmp_path / "shared")
    spec = make_spec(id="cue", generation_key="abc123")
    gpu_machine = RenderCache(tmp_path / "gpu-cache")
    build_machine = RenderCache(tmp_path / "build-cache")
    assert not is_shared(storage, spec) and fetch_shared(storage, build_machine, spec) is None

    render = gpu_machine.put("abc123", noise(), 32000, model_id="m", revision="r", license="l")
    share_render(storage, spec, render)
    assert is_shared(storage, spec)
    fetched = fetch_shared(storage, build_machine, spec)
    assert fetched is not None and fetched.sha256 == render.sha256
    assert fetched.path.parent == build_machine.root
    assert build_machine.get("abc123") == fetched
    shared = tmp_path / "shared"
    files = sorted(p.relative_to(shared).as_posix() for p in shared.rglob("*") if p.is_file())
    assert files == sorted([".renders/abc123.json", f".renders/{render.sha256}.wav"])
    # Handed over as a build of an earlier version reads it: with no field it does not know.
    assert "generation_key" not in (shared / ".renders" / "abc123.json").read_text()
    # One that names another track's key hands over no render of this track.
    (shared / ".renders" / "def456.json").write_text(sidecar_json(render, "abc123"))
    other = make_spec(id="other", generation_key="def456")
    with pytest.raises(StorageError, match=r"is the sidecar of another track's render \(abc123\)"):
        fetch_shared(storage, build_machine, other)
    assert build_machine.get("def456") is None


def test_a_render_handed_over_under_its_generation_key_is_still_fetched(tmp_path: Path) -> None:
    """Renders shared before WAVs were keyed by their sha256 lie at <generation key>.wav: their
    sidecar said shared, and the fetch failed for good."""
    storage = LocalStorage("shared", tmp_path / "shared")
    spec = make_spec(id="cue", generation_key="abc123")
    render = RenderCache(tmp_path / "gpu").put(
        "abc123", noise(), 32000, model_id="m", revision="r", license="l"
    )
    share_render(storage, spec, render)
    renders = tmp_path / "shared" / ".renders"
    (renders / f"{render.sha256}.wav").rename(renders / "abc123.wav")
    fetched = fetch_shared(storage, RenderCache(tmp_path / "build"), spec)
    assert fetched is not None and fetched.sha256 == render.sha256


def test_the_first_take_handed_over_stands(tmp_path: Path) -> None:
    """Two runs of one batch at once (a build restarted while its first pool run still
    rendered): the second's hand-over replaced the sidecar the build may have fetched by."""
    storage = LocalStorage("shared", tmp_path / "shared")
    spec = make_spec(id="cue", generation_key="abc123")
    first = RenderCache(tmp_path / "gpu-a").put(
        "abc123", noise(), 32000, model_id="m", revision="r", license="l"
    )
    second = RenderCache(tmp_path / "gpu-b").put(
        "abc123", noise(2.0), 32000, model_id="m", revision="r", license="l"
    )
    share_render(storage, spec, first)
    share_render(storage, spec, second)
    fetched = fetch_shared(storage, RenderCache(tmp_path / "build"), spec)
    assert fetched is not None and fetched.sha256 == first.sha256
    assert not (tmp_path / "shared" / ".renders" / f"{second.sha256}.wav").exists()


def _handed_over(tmp_path: Path, *keys: str) -> tuple[LocalStorage, dict[str, Render]]:
    """Renders of tracks `keys` (track ids too) handed over to a shared folder by a pool."""
    storage = LocalStorage("shared", tmp_path / "shared")
    gpu = RenderCache(tmp_path / "gpu")
    renders = {}
    for n, key in enumerate(keys):
        renders[key] = gpu.put(key, noise(1.0 + n), 32000, model_id="m", revision="r", license="l")
        share_render(storage, make_spec(id=key, generation_key=key), renders[key])
    return storage, renders


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"model_id": 5}, "no render's sidecar (model_id: "),
        ({"license": ["MIT"]}, "no render's sidecar (license: "),
        ({"sample_rate": "lots"}, "no render's sidecar (sample_rate: "),
        ({"sample_rate": 0}, "no render's sidecar (sample_rate: "),
        ({"sha256": 7}, "no render's sidecar (sha256: "),
        ({"sha256": "../../etc/passwd"}, "no render's sidecar (sha256: "),
        ({"generation_key": "k2"}, "the sidecar of another track's render (k2)"),  # copied
    ],
)
def test_a_handed_over_sidecar_of_another_shape_or_track_fails_that_track_alone(
    tmp_path: Path, change: dict[str, object], said: str
) -> None:
    """A wrong-typed field crashed the whole build in a traceback; a sidecar copied from another
    track published that track's audio; one bad hand-over failed every track of its batch."""
    storage, renders = _handed_over(tmp_path, "k1", "k2")
    sidecar = tmp_path / "shared" / ".renders" / "k1.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), **change}))
    build = RenderCache(tmp_path / "build")
    specs = [make_spec(id=key, generation_key=key) for key in ("k1", "k2")]

    bad, good = fetch_handed_back(storage, build, specs, "not handed back")

    assert isinstance(bad, RenderFailure) and bad.track_id == "k1"
    assert bad.reason.startswith(
        f"fetching its render failed: .renders/k1.json, handed over for this track, is {said}"
    ), bad.reason
    assert bad.reason.endswith(
        "; remove .renders/k1.json (and the WAV it names) to render it again"
    )
    assert isinstance(good, Render) and good.sha256 == renders["k2"].sha256
    assert build.get("k1") is None
    # The same sidecar in this machine's own cache is no entry.
    shutil.copy(sidecar, build.root / "k1.json")
    shutil.copy(renders["k1"].path, build.root / "k1.wav")
    assert build.get("k1") is None


def test_a_track_handed_nothing_back_says_why_and_its_wav_mismatch_is_named(
    tmp_path: Path,
) -> None:
    storage, renders = _handed_over(tmp_path, "k1")
    wav = tmp_path / "shared" / ".renders" / f"{renders['k1'].sha256}.wav"
    wav.write_bytes(wav.read_bytes()[:-10])
    specs = [make_spec(id=key, generation_key=key) for key in ("k1", "k9")]
    build = RenderCache(tmp_path / "build")

    changed, missing = fetch_handed_back(storage, build, specs, "the run ended without it")

    assert isinstance(changed, RenderFailure), changed
    assert f"has sha256 {sha256_of(wav)}, but {renders['k1'].sha256} was" in changed.reason
    assert f"{renders['k1'].sha256}.wav" in changed.reason, "the content-keyed file, not the old"
    assert missing == RenderFailure("k9", "the run ended without it")


def test_a_parent_whose_names_are_paths_is_refused_before_anything_is_made(
    tmp_path: Path,
) -> None:
    """A render-batch run's parameters named a parent's format `wav/../../x`: the pool machine
    made that folder before the storage refused the key."""
    cache = RenderCache(tmp_path / "cache")
    parent = ParentAudio("theme", "sky/theme.ogg", "ab" * 32, f"wav/../../../{tmp_path}/made/x")
    with pytest.raises(InputError, match="cannot be part of a storage key"):
        fetch_parent(LocalStorage("s", tmp_path / "s"), cache, parent, "sky/theme.ogg")
    assert not (tmp_path / "made").exists()
