"""Stems on a synthesized mix of known parts (drums, bass, a lead): a separator registered under
a name, like Demucs, returns the known parts; the pipeline publishes each stem asked for beside
the mix, sample-aligned, as long as the mix, with its loop tags. A part missing fails the sum
gate: the stems are rejected and the mix is still published. The tiny Demucs runs the same path."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from mutagen.oggvorbis import OggVorbis

from soundtrack.build import BuildResult, Options, ThreadExecutor, build
from soundtrack.errors import AudioError
from soundtrack.separate import SEPARATORS, make_tiny_demucs, register_separator, residual_db
from soundtrack.stems import separate
from soundtrack.steps import _separator
from soundtrack.storage import LocalStorage
from tests.reference import assert_pictures_published

RATE = 44100
SECONDS = 8.0


def parts() -> dict[str, np.ndarray]:
    """Drums (noise bursts on each beat at 120 bpm), bass (a low two-note line), a lead
    (a sine melody): stereo float32, each placed differently across the channels."""
    rng = np.random.default_rng(7)
    t = np.arange(int(SECONDS * RATE)) / RATE
    beat = (t * 2.0) % 1.0  # 120 bpm
    drums = rng.standard_normal(t.size) * np.exp(-beat * 25.0) * 0.3
    bass = 0.25 * np.sin(2 * np.pi * np.where((t // 1.0) % 2 == 0, 55.0, 73.4) * t)
    lead = 0.15 * np.sin(
        2 * np.pi * np.array([440.0, 494.0, 523.0, 587.0])[(t * 2).astype(int) % 4] * t
    )
    return {
        "drums": np.stack([drums, drums]).astype(np.float32),
        "bass": np.stack([bass, bass * 0.8]).astype(np.float32),
        "other": np.stack([lead * 0.6, lead]).astype(np.float32),
    }


class KnownParts:
    """A separator that knows what the mix is made of: the parts, at the master's gain, with the
    lead taking whatever else mastering did (so they sum to the mix), or with it `missing`."""

    sources = ("drums", "bass", "other", "vocals")
    sample_rate = RATE
    channels = 2
    model_id = "known-parts"
    revision = "test"
    license = "MIT"

    def __init__(self, *, missing: bool = False) -> None:
        self.known = parts()
        self.missing = missing
        self.model_id = "missing-lead" if missing else "known-parts"  # their sources differ

    def separate(self, audio: np.ndarray) -> dict[str, np.ndarray]:
        frames = audio.shape[1]
        total = sum(part[:, :frames] for part in self.known.values())
        gain = float(np.sum(audio * total) / np.sum(total * total))
        drums = gain * self.known["drums"][:, :frames]
        bass = gain * self.known["bass"][:, :frames]
        other = np.zeros_like(audio) if self.missing else audio - drums - bass
        return {"drums": drums, "bass": bass, "other": other, "vocals": np.zeros_like(audio)}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    mix = sum(parts().values())
    sf.write(tmp_path / "mix.wav", mix.T, RATE, subtype="FLOAT")
    register_separator("known-parts", lambda device: KnownParts())
    register_separator("missing-lead", lambda device: KnownParts(missing=True))
    yield tmp_path
    SEPARATORS.pop("known-parts")
    SEPARATORS.pop("missing-lead")
    _separator.cache_clear()


def write_manifest(project: Path, stem_model: str, stems: str) -> None:
    (project / "m.yaml").write_text(
        f"""\
schema: 1
soundtrack: layers
storage: ./out
tracks:
  - id: boss
    source: mix.wav
    duration: 6
    loop: true
    formats: [wav, ogg]
    stems: {stems}
    stem_model: {stem_model}
"""
    )


def built(project: Path, stem_model: str, stems: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the mix with these stems (exit 0: the mix passes whatever its stems do); its lock
    entry and its stems by name."""
    write_manifest(project, stem_model, stems)
    result = run(project)
    assert result.exit_status == 0, result.failure
    track = lock(project)
    assert track["status"] == "approved"
    return track, {stem["name"]: stem for stem in track["stems"]}


def run(project: Path) -> BuildResult:
    return build(project / "m.yaml", Options(), executor=ThreadExecutor())


def lock(project: Path) -> dict[str, Any]:
    data = json.loads((project / "out" / "layers" / "soundtrack.lock.json").read_text())
    (track,) = data["tracks"]
    return track  # type: ignore[no-any-return]


def test_every_stem_asked_for_is_published_aligned_with_the_mix(project: Path) -> None:
    track, stems = built(project, "known-parts", "[drums, bass, other]")
    assert {name: s["status"] for name, s in stems.items()} == dict.fromkeys(
        ("drums", "bass", "other"), "published"
    )
    assert track["stem_model"] == {"id": "known-parts", "revision": "test", "license": "MIT"}
    assert stems["drums"]["gates"][0]["name"] == "stems_sum"
    assert stems["drums"]["gates"][0]["passed"]
    files = {(f["stem"], f["format"]): f for f in track["files"]}
    out = project / "out"
    mix, rate = sf.read(out / files[(None, "wav")]["key"], always_2d=True)
    decoded = {
        name: sf.read(out / files[(name, "wav")]["key"], always_2d=True)[0] for name in stems
    }
    assert rate == RATE
    assert all(stem.shape == mix.shape for stem in decoded.values())
    # Sample-aligned, at the mix's gain: the stems sum back to the published mix (16-bit WAV).
    assert residual_db(mix.T, [s.T for s in decoded.values()]) > 60
    known = parts()["drums"][:, : mix.shape[0]].T
    lags = [
        np.sum(decoded["drums"][100 + lag : -100 + lag or None] * known[100:-100])
        for lag in (-2, 0, 2)
    ]
    assert lags[1] > 2 * max(lags[0], lags[2])
    mix_tags = OggVorbis(out / files[(None, "ogg")]["key"])
    for name in stems:
        assert files[(name, "ogg")]["key"].endswith(f"boss.{name}.ogg")
        tags = OggVorbis(out / files[(name, "ogg")]["key"])
        assert tags["LOOPSTART"] == mix_tags["LOOPSTART"]
        assert tags["LOOPLENGTH"] == mix_tags["LOOPLENGTH"]
        assert files[(name, "ogg")]["loop_length"] == files[(None, "ogg")]["loop_length"]
    assert_pictures_published(out, track)
    garbage = LocalStorage("./out", out).unreferenced("layers")
    assert (garbage.ours, garbage.kept) == ([], []), "gc would take a published stem's files"
    again = run(project)
    assert [r.status for r in again.report.tracks] == ["cached"]


class Split:
    """A separator at its own rate whose sources are shares of what it was given (by default
    drums and bass, half each)."""

    model_id = "split"
    revision = "test"
    license = "MIT"

    def __init__(self, sample_rate: int, channels: int, **shares: float) -> None:
        self.sample_rate, self.channels = sample_rate, channels
        self.shares = shares or {"drums": 0.5, "bass": 0.5}

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self.shares)

    def separate(self, audio: np.ndarray) -> dict[str, np.ndarray]:
        return {name: audio * share for name, share in self.shares.items()}


def built_with(project: Path, separator: Split) -> dict[str, Any]:
    """Each of its stems, of the mix built with `separator`."""
    register_separator("split", lambda device: separator)
    try:
        return built(project, "split", f"[{', '.join(separator.sources)}]")[1]
    finally:
        SEPARATORS.pop("split")


@pytest.mark.parametrize("frames", [44102, 44105])  # back at 44.1 kHz: a frame short, one long
def test_sources_at_the_separators_rate_come_back_at_the_mixs_length(frames: int) -> None:
    mix = np.random.default_rng(1).uniform(-0.3, 0.3, (2, frames)).astype(np.float32)
    sources = separate(mix, 44100, Split(32000, 1), None).sources
    assert {name: audio.shape for name, audio in sources.items()} == {
        "drums": mix.shape,
        "bass": mix.shape,
    }


def test_a_separator_returning_other_sources_than_its_own_is_named() -> None:
    """The build plans which stems it can publish from the sources a separator declares."""

    class Other(Split):
        def separate(self, audio: np.ndarray) -> dict[str, np.ndarray]:
            return {"drums": audio, "vocals": audio * 0}

    mix = np.zeros((2, RATE), dtype=np.float32)
    with pytest.raises(AudioError, match="returned sources drums, vocals, not its own drums, bass"):
        separate(mix, RATE, Other(RATE, 2), None)


def test_stems_that_sum_to_the_mix_exactly_put_a_number_in_the_lock(project: Path) -> None:
    """The residual of an exact sum is infinite, which JSON cannot hold."""
    stems = built_with(project, Split(RATE, 2))
    assert {name: stem["status"] for name, stem in stems.items()} == {
        "drums": "published",
        "bass": "published",
    }
    assert stems["drums"]["gates"][0] == stems["bass"]["gates"][0]
    assert stems["drums"]["gates"][0]["value"] == 300


def test_a_stem_more_than_30_lu_below_the_mix_is_near_silent(project: Path) -> None:
    bass, other = 10 ** (-25 / 20), 10 ** (-35 / 20)  # 25 and 35 LU below the mix
    stems = built_with(project, Split(RATE, 2, drums=1 - bass - other, bass=bass, other=other))
    assert {name: stem["status"] for name, stem in stems.items()} == {
        "drums": "published",
        "bass": "published",
        "other": "silent",
    }


def test_a_missing_part_fails_the_sum_gate_and_the_mix_is_still_published(project: Path) -> None:
    track, stems = built(project, "missing-lead", "[drums, bass]")
    assert {s["status"] for s in stems.values()} == {"rejected"}
    assert not stems["bass"]["gates"][0]["passed"]
    assert stems["bass"]["gates"][0]["value"] < 25
    assert {f["stem"] for f in track["files"]} == {None}
    assert not list((project / "out" / "layers").glob("boss.*.*"))


def test_a_silent_stem_is_reported_and_not_published(project: Path) -> None:
    _, stems = built(project, "known-parts", "[drums, vocals]")
    assert stems["drums"]["status"] == "published"
    assert stems["vocals"]["status"] == "silent"
    assert "near-silent" in stems["vocals"]["reason"]
    assert not (project / "out" / "layers" / "boss.vocals.ogg").exists()


def test_the_tiny_demucs_runs_the_same_path_and_fails_the_sum_gate(project: Path) -> None:
    make_tiny_demucs(project / "demucs")
    _, stems = built(project, "demucs", "[drums, bass]")
    assert {s["status"] for s in stems.values()} == {"rejected"}
    assert "do not sum to the mix" in stems["drums"]["reason"]


def test_stems_without_their_separation_model_exit_2_before_anything_renders(project: Path) -> None:
    from typer.testing import CliRunner

    from soundtrack.cli import app

    write_manifest(project, "nowhere", "[drums]")
    result = CliRunner().invoke(app, ["build", str(project / "m.yaml")])
    assert result.exit_code == 2, result.output
    # Named as resolved against the manifest's folder, wherever the build was started.
    assert f"stem_model '{(project / 'nowhere').resolve()}'" in result.output.replace("\n", "")
    assert "convert-demucs" in result.output.replace("\n", "")
    assert not (project / "out").exists()


# What the config changes in a tiny model's folder, and what the message says of it.
UNLOADABLE_CONFIGS = {
    "weights of another size": ({"kwargs": {"channels": 8}}, "of another shape"),
    "weights for other sources": ({"kwargs": {"sources": ["drums"]}}, "of another shape"),
    "kwargs the class refuses": ({"kwargs": {"no_such_argument": 1}}, "(**kwargs) fails"),
    "a negative size": ({"kwargs": {"t_hidden_scale": -1.0}}, "(**kwargs) fails"),
    "an overflowing size": ({"kwargs": {"channels": 1_000_000_000}}, "(**kwargs) fails"),
    "sources unlike the model's": ({"sources": ["drums", "bass"]}, "declares"),
}


@pytest.mark.parametrize(
    "broken", ["garbage config", "weights not safetensors", "musicgen", *UNLOADABLE_CONFIGS]
)
def test_a_stem_model_folder_that_cannot_load_exits_2_before_anything_renders(
    broken: str, project: Path, tiny_model_dir: Path
) -> None:
    """Only a config.json's presence was checked: these built, rendered, and published no stems
    with exit 0. Then a config whose model its weights do not fit did the same."""
    import shutil

    from typer.testing import CliRunner

    from soundtrack.cli import app

    folder = project / "stems-model"
    reason = ""
    if broken == "musicgen":
        shutil.copytree(tiny_model_dir, folder)
    else:
        make_tiny_demucs(folder)
        if broken == "garbage config":
            (folder / "config.json").write_text("{not json")
        elif broken == "weights not safetensors":
            (folder / "model.safetensors").write_bytes(os.urandom(1024))
        else:
            change, reason = UNLOADABLE_CONFIGS[broken]
            config = json.loads((folder / "config.json").read_text())
            config["kwargs"].update(change.get("kwargs", {}))
            config.update({k: v for k, v in change.items() if k != "kwargs"})
            (folder / "config.json").write_text(json.dumps(config))
    write_manifest(project, "stems-model", "[drums]")
    for command in ("validate", "build"):
        result = CliRunner().invoke(app, [command, str(project / "m.yaml")])
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and f"stem_model '{folder.resolve()}" in said, said
        assert reason in said, said
    assert not (project / "out").exists()


def test_other_stems_of_an_unchanged_mix_do_not_run_the_separator_again(
    project: Path,
) -> None:
    calls = []

    class Counted(KnownParts):
        def separate(self, audio: np.ndarray) -> dict[str, np.ndarray]:
            calls.append(audio.shape)
            return super().separate(audio)

    register_separator("counted", lambda device: Counted())
    try:
        _, first = built(project, "counted", "[drums]")
        _, second = built(project, "counted", "[drums, bass]")
    finally:
        SEPARATORS.pop("counted")
    assert first["drums"]["status"] == second["bass"]["status"] == "published"
    assert len(calls) == 1, "the second build took the sources from the separation cache"


def test_a_mono_mix_is_separated_as_the_separator_takes_it_and_its_stems_are_mono(
    project: Path,
) -> None:
    write_manifest(project, "known-parts", "[drums, bass, other]")
    manifest = project / "m.yaml"
    manifest.write_text(manifest.read_text().replace("    loop: true\n", "    channels: 1\n"))
    result = run(project)
    assert result.exit_status == 0, result.failure
    track = lock(project)
    stems = {stem["name"]: stem["status"] for stem in track["stems"]}
    assert stems == dict.fromkeys(("drums", "bass", "other"), "published"), track["stems"]
    files = {f["stem"]: f for f in track["files"] if f["format"] == "wav"}
    out = project / "out"
    mix, _ = sf.read(out / files[None]["key"], always_2d=True)
    decoded = [sf.read(out / files[n]["key"], always_2d=True)[0] for n in stems]
    assert mix.shape[1] == 1 and all(stem.shape == mix.shape for stem in decoded)
    assert residual_db(mix.T, [s.T for s in decoded]) > 60


def test_a_separation_that_failed_is_tried_again_by_the_next_build(project: Path) -> None:
    """A separation that failed (out of GPU memory) left the track cached with its stems
    rejected: every later build kept it so, and only --force brought the stems."""
    failures = [RuntimeError("CUDA out of memory")]

    class FailsOnce(KnownParts):
        def separate(self, audio: np.ndarray) -> dict[str, np.ndarray]:
            if failures:
                raise failures.pop()
            return super().separate(audio)

    register_separator("fails-once", lambda device: FailsOnce())
    try:
        write_manifest(project, "fails-once", "[drums, bass]")
        first = run(project)
        assert first.exit_status == 0, first.failure
        assert {s["status"] for s in lock(project)["stems"]} == {"rejected"}
        # In one line, an error of ours: a Prefect log shows it without a traceback.
        assert {s["reason"] for s in lock(project)["stems"]} == {
            "separation failed: the separator known-parts failed: RuntimeError: CUDA out of memory"
        }
        _separator.cache_clear()
        track, stems = built(project, "fails-once", "[drums, bass]")
    finally:
        SEPARATORS.pop("fails-once")
    assert {name: stem["status"] for name, stem in stems.items()} == dict.fromkeys(
        ("drums", "bass"), "published"
    )
    assert {f["stem"] for f in track["files"]} >= {"drums", "bass"}


@pytest.mark.timeout(60)  # a FIFO read waited for a writer: a hang fails here, not at 600 s
def test_a_separation_entry_that_is_a_fifo_a_link_or_a_folder_is_separated_again(
    tmp_path: Path,
) -> None:
    """A FIFO for the index hung the build; a folder at a source's name failed every build."""
    from soundtrack.stems import INDEX, SeparationCache

    cache = SeparationCache(tmp_path)
    sources = {"drums": np.full((2, 800), 0.25, np.float32), "bass": np.zeros((2, 800), np.float32)}
    cache.put("k", sources, 8000)
    assert cache.get("k") is not None
    folder = cache.root / "k"
    index = (folder / INDEX).read_bytes()
    (folder / INDEX).write_text("{}")  # names no source: the separation is done again
    assert cache.get("k") is None
    (folder / INDEX).unlink()
    os.mkfifo(folder / INDEX)
    assert cache.get("k") is None
    (folder / INDEX).unlink()
    (folder / INDEX).symlink_to(tmp_path / "index-elsewhere.json")
    (tmp_path / "index-elsewhere.json").write_bytes(index)
    assert cache.get("k") is None
    (folder / "drums.wav").unlink()
    (folder / "drums.wav").mkdir()
    cache.put("k", sources, 8000)
    found = cache.get("k")
    assert found is not None and np.array_equal(found["drums"], sources["drums"])


def test_a_separator_naming_its_sources_as_paths_writes_nothing_outside_its_cache(
    project: Path,
) -> None:
    """A source named '../../x' (from a stem model's config) wrote x.wav beside the cache."""

    class Escapes(KnownParts):
        sources = ("drums", "bass", "other", "../../../escaped")

        def separate(self, audio: np.ndarray) -> dict[str, np.ndarray]:
            parts = super().separate(audio)
            return {**parts, "../../../escaped": parts.pop("vocals")}

    register_separator("escapes", lambda device: Escapes())
    try:
        write_manifest(project, "escapes", "[drums, bass]")
        result = run(project)
    finally:
        SEPARATORS.pop("escapes")
    assert result.exit_status == 0, result.failure  # the mix is published, its stems are not
    assert {s["status"] for s in lock(project)["stems"]} == {"rejected"}
    assert {s["reason"] for s in lock(project)["stems"]} == {
        "separation failed: the separator known-parts returned '../../../escaped', which is "
        "not a source's name (lower-case letters, digits and _, as drums: it names files)"
    }
    assert not list(project.rglob("escaped*"))
