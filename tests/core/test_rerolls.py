"""Re-rolls on the tiny model: a take a gate rejects is rendered again with the next seed; the
first take that passes is published and the lock records every take; a rebuild renders nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from soundtrack import models
from soundtrack.build import BuildResult, Options, ThreadExecutor, build
from soundtrack.measure import measure
from soundtrack.models import GenerationRequest, get_generator
from soundtrack.spec import Sampling
from tests.reference import sha256_of
from tests.signals import music_like

SEED = 20
PROMPT = "driving taiko battle loop"
MANIFEST = f"""\
schema: 1
soundtrack: rolls
storage: ./out
expectations: checks.json
tracks:
  - id: battle
    prompt: {PROMPT}
    duration: 4
    seed: {SEED}
    attempts: 3
"""


def raw_peaks_dbfs(model: Path) -> list[float]:
    """The sample peak of the tiny model's raw render for the track's first three seeds: what
    the team's expectation below holds each take to (they differ by hundredths of a dB)."""
    generator = get_generator(str(model), None, "cpu")
    requests = [
        GenerationRequest(
            track_id=f"take{k}",
            prompt=PROMPT,
            duration_s=4.0,
            seed=SEED + k,
            sampling=Sampling(),
            overlap_s=10.0,
        )
        for k in range(3)
    ]
    peaks = []
    for output in generator.generate(requests):
        assert not isinstance(output, Exception)
        peaks.append(measure(output.audio, output.sample_rate).sample_peak_dbfs)
    return peaks


def expect_source_peak(low: float, high: float) -> list[dict[str, object]]:
    """A team expectation on the raw render's (the source row's) sample peak."""
    return [
        {
            "type": "expect_column_max_to_be_between",
            "kwargs": {
                "column": "sample_peak_dbfs",
                "min_value": low,
                "max_value": high,
                "row_condition": {
                    "type": "comparison",
                    "column": {"name": "label"},
                    "operator": "==",
                    "parameter": "source",
                },
            },
            "meta": {"gate": "house_raw_peak"},
        }
    ]


def run(project: Path, model: Path) -> BuildResult:
    models._loaded.clear()
    return build(project / "m.yaml", Options(model=str(model)), executor=ThreadExecutor())


def renders(project: Path) -> set[str]:
    return {p.name for p in (project / "cache" / "renders").glob("*.wav")}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "m.yaml").write_text(MANIFEST)
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SOUNDTRACK_STORAGE", raising=False)
    return tmp_path


def test_a_rejected_take_is_rerolled_until_one_passes_and_a_rebuild_renders_nothing(
    project: Path, tiny_model_dir: Path
) -> None:
    peaks = raw_peaks_dbfs(tiny_model_dir)
    # Only the third take's peak is inside the bounds: the first two are rejected.
    others = [abs(p - peaks[2]) for p in peaks[:2]]
    assert min(others) > 0.001, f"the seeds' peaks must differ: {peaks}"
    margin = min(others) / 2
    checks = expect_source_peak(peaks[2] - margin, peaks[2] + margin)
    (project / "checks.json").write_text(json.dumps(checks))

    first = run(project, tiny_model_dir)
    (track,) = first.report.tracks
    assert track.status == "approved" and first.exit_status == 0
    assert track.seed == SEED + 2
    assert [(t.take, t.seed, t.status, t.rejected_by) for t in track.takes] == [
        (0, SEED, "rejected", ["house_raw_peak"]),
        (1, SEED + 1, "rejected", ["house_raw_peak"]),
        (2, SEED + 2, "approved", []),
    ]
    assert len(renders(project)) == 3 and first.report.model_loads == 1

    # The lock beside the assets says the same, and the files are that take's.
    out = project / "out" / "rolls"
    lock = json.loads((out / "soundtrack.lock.json").read_text())
    (locked,) = lock["tracks"]
    assert locked["seed"] == SEED + 2
    assert [t["status"] for t in locked["takes"]] == ["rejected", "rejected", "approved"]
    for entry in locked["files"]:
        assert sha256_of(out / f"battle.{entry['format']}") == entry["sha256"]

    # A rebuild with nothing changed reuses the passing take: no render, no model load.
    before = renders(project)
    again = run(project, tiny_model_dir)
    (cached,) = again.report.tracks
    assert cached.status == "cached" and cached.seed == SEED + 2 and len(cached.takes) == 3
    assert again.report.model_loads == 0 and renders(project) == before


def test_a_gate_no_take_passes_rejects_the_track_after_exactly_its_attempts(
    project: Path, tiny_model_dir: Path
) -> None:
    (project / "checks.json").write_text(json.dumps(expect_source_peak(-200.0, -199.0)))
    result = run(project, tiny_model_dir)
    (track,) = result.report.tracks
    assert track.status == "rejected" and result.exit_status == 1
    assert [(t.seed, t.status, t.rejected_by) for t in track.takes] == [
        (SEED + k, "rejected", ["house_raw_peak"]) for k in range(3)
    ]
    assert len(renders(project)) == 3
    assert not list((project / "out" / "rolls").glob("battle.*"))


def test_any_take_leads_to_the_same_takes_as_the_first_and_a_review_rejection_skips_ahead() -> None:
    from soundtrack.approval import first_take, rejections
    from soundtrack.report import TrackRecord
    from soundtrack.resolve import take
    from tests.specs import make_spec

    first = make_spec(seed=40, generation_key="g" * 64)
    third = take(first, 2)
    assert (third.seed, third.take, third.take_of) == (42, 2, first.generation_key)
    # From the third take, the second and the first are the ones take() makes from the first.
    assert take(third, 1) == take(first, 1)
    assert take(third, 0) == first
    assert len({take(first, k).generation_key for k in range(4)}) == 4

    # A take a reviewer rejected is skipped by the next build of the same spec only.
    record = TrackRecord(
        id=first.id,
        status="rejected",
        spec_hash=first.spec_hash,
        rejected_in_review=rejections(third, None, "too loud"),
    )
    assert first_take(first, record) == take(first, 3)
    assert first_take(make_spec(seed=40, generation_key="h" * 64, prompt="other"), record).take == 0
    assert first_take(first, None) == first


def test_a_rejected_recording_is_not_rerolled_whatever_the_defaults_attempts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The defaults' attempts reached `source:` tracks, and a rejected one crashed the build."""
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    sf.write(tmp_path / "groove.wav", music_like(6.0, 44100).T, 44100)
    (tmp_path / "m.yaml").write_text(
        "schema: 1\nsoundtrack: rolls\nstorage: ./out\ndefaults: {attempts: 3}\ntracks:\n"
        "  - id: groove\n    source: groove.wav\n    gates: {silence_floor_lufs: -20}\n"
    )
    result = build(tmp_path / "m.yaml", Options(), executor=ThreadExecutor())
    (track,) = result.report.tracks
    assert track.status == "rejected" and result.exit_status == 1, result.failure
    assert track.takes == [] and track.seed is None
    assert "silence" in (track.reason or "")
