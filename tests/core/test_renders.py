"""The render cache and the hand-off of renders between machines through storage."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from soundtrack.renders import RenderCache, fetch_shared, is_shared, share_render
from soundtrack.storage import LocalStorage
from tests.specs import make_spec


def noise(seconds: float = 1.0) -> np.ndarray:
    return np.random.default_rng(0).uniform(-0.5, 0.5, (1, int(32000 * seconds))).astype(np.float32)


def test_cache_round_trip_and_corruption(tmp_path: Path) -> None:
    cache = RenderCache(tmp_path)
    audio = noise()
    stored = cache.put("k1", audio, 32000, model_id="m", revision="r", license="l")
    found = cache.get("k1")
    assert found == stored
    assert np.array_equal(cache.load(found)[0], audio)
    stored.path.write_bytes(stored.path.read_bytes()[:-100])  # a torn write
    assert cache.get("k1") is None
    assert cache.get("never-rendered") is None


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
