"""The per-track chain: bad sources are rejected by the right gate and leave nothing behind; good
ones are approved with files that an independent meter and decoder confirm."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from soundtrack.analysis import analyse
from soundtrack.audio import decode_with_ffmpeg
from soundtrack.errors import AudioError, InputError
from soundtrack.gates import evaluate, judge
from soundtrack.master import ENCODING_HEADROOM_DB, master
from soundtrack.measure import measure
from soundtrack.process import CODEC_MARGIN_DB, TrackOutcome, _bar_loop, process_track
from soundtrack.spec import LOUDNESS_PROFILES, LoudnessTarget, Mastering
from tests.music import held_chord, struck_bars
from tests.reference import ebur128
from tests.signals import music_like
from tests.specs import make_spec

RENDER_RATE = 32000  # MusicGen's rate: the chain resamples to 44.1 kHz


def _failed(outcome: TrackOutcome) -> set[str]:
    return {g.name for g in outcome.gates if not g.passed and g.severity == "fail"}


def _source(seconds: float) -> np.ndarray:
    return music_like(seconds, RENDER_RATE, peak_dbfs=-3.0)


def test_a_clean_source_is_approved_and_its_files_check_out(tmp_path: Path) -> None:
    spec = make_spec(id="clean", duration_s=10.0)
    outcome = process_track(spec, _source(12.0), RENDER_RATE, tmp_path)
    assert outcome.status == "approved", _failed(outcome)
    assert [f.format for f in outcome.files] == ["ogg", "mp3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clean.json",
        "clean.mp3",
        "clean.ogg",
        "clean.png",
    ]
    names = {g.name for g in outcome.gates}
    assert {"true_peak_ogg", "true_peak_mp3", "duration_ogg", "sample_rate_mp3"} <= names
    for file in outcome.files:
        lufs, peak_dbtp = ebur128(file.path)
        assert lufs == pytest.approx(-24.0, abs=0.5)
        assert peak_dbtp <= -1.0
        audio, rate = decode_with_ffmpeg(file.path)
        assert (rate, audio.shape[0]) == (44100, 2)
        assert audio.shape[1] == pytest.approx(10.0 * 44100, abs=0.5 * 44100)
    assert outcome.master is not None and outcome.master.sample_rate == 44100
    assert [row["label"] for row in outcome.qc.rows] == ["source", "master", "ogg", "mp3"]
    # The body gates are judged early, beside the encoders: the same verdicts as one run.
    assert outcome.gates == evaluate(outcome.qc)


def _rejected(tmp_path: Path, audio: np.ndarray, **spec: object) -> TrackOutcome:
    outcome = process_track(make_spec(**spec), audio, RENDER_RATE, tmp_path)
    assert outcome.status == "rejected"
    assert outcome.files == []
    assert list(tmp_path.iterdir()) == []  # nothing of a rejected track is kept
    return outcome


def test_a_master_an_encoder_overshoots_is_mastered_lower_once_and_encoded_again(
    tmp_path: Path,
) -> None:
    """Dense noise limited by 3 dB for a loud target: LAME overshot the master's headroom for
    the encoders, and the track was rejected for its MP3's true peak."""
    rate = 48000
    noise = np.random.default_rng(0).standard_normal((2, 10 * rate)).astype(np.float32) * 0.2
    loud = Mastering(loudness=LoudnessTarget(-8.5, -1.0, 1.0))
    outcome = process_track(make_spec(id="dense", mastering=loud), noise, rate, tmp_path)
    assert outcome.status == "approved", _failed(outcome)
    (master_row,) = [row for row in outcome.qc.rows if row["label"] == "master"]
    assert master_row["true_peak_dbtp"] < -1.0 - ENCODING_HEADROOM_DB - CODEC_MARGIN_DB
    for file in outcome.files:
        lufs, peak_dbtp = ebur128(file.path)
        assert lufs == pytest.approx(-8.5, abs=1.0) and peak_dbtp <= -1.0, file.format
    # Louder still, mastered that much lower misses the loudness: the first files are judged.
    seed2 = np.random.default_rng(2).standard_normal((2, 10 * rate)).astype(np.float32) * 0.2
    louder = Mastering(loudness=LoudnessTarget(-8.0, -1.0, 1.0))
    staging = tmp_path / "denser"
    staging.mkdir()
    rejected = process_track(make_spec(id="denser", mastering=louder), seed2, rate, staging)
    assert _failed(rejected) == {"true_peak_mp3"} and list(staging.iterdir()) == []
    # A track whose true peak is only a warning keeps the master it asked for.
    warned = replace(make_spec().gates, severities=(("true_peak", "warn"),))
    spec = make_spec(id="warned", mastering=loud, gates=warned)
    kept = process_track(spec, noise, rate, staging)
    (master_row,) = [row for row in kept.qc.rows if row["label"] == "master"]
    assert kept.status == "approved" and master_row["true_peak_dbtp"] > -2.6
    assert {g.name for g in kept.gates if not g.passed} == {"true_peak_mp3"}


def test_a_loudness_out_of_reach_fails_only_where_its_gate_fails(tmp_path: Path) -> None:
    """-6 LUFS under -1 dBTP is out of reach for a held chord: the track failed even where the
    manifest made the loudness gate a warning, or turned it off."""
    rate = 44100
    chord = held_chord(120.0, 12.0, rate)
    reach = Mastering(loudness=LoudnessTarget(-6.0, -1.0, 1.0))
    with pytest.raises(AudioError, match=r"cannot reach -6.0 LUFS"):
        process_track(make_spec(id="strict", mastering=reach), chord, rate, tmp_path)
    for severity in ("warn", "off"):
        gates = replace(make_spec().gates, severities=(("loudness", severity),))
        spec = make_spec(id=severity, duration_s=10.0, mastering=reach, gates=gates)
        outcome = process_track(spec, chord, rate, tmp_path / severity)
        assert outcome.status == "approved", _failed(outcome)
        loudness = [g for g in outcome.gates if g.name == "loudness"]
        assert [(g.passed, g.severity) for g in loudness] == (
            [(False, "warn")] if severity == "warn" else []
        )
        # The nearest master: limited as hard as mastering goes, short of the target.
        (master_row,) = [row for row in outcome.qc.rows if row["label"] == "master"]
        assert -10.0 < master_row["integrated_lufs"] < -7.0
        for file in outcome.files:
            lufs, peak_dbtp = ebur128(file.path)
            assert lufs == pytest.approx(master_row["integrated_lufs"], abs=0.5), file.format
            assert peak_dbtp <= -1.0, file.format


def test_a_silent_source_is_rejected_by_the_silence_gate(tmp_path: Path) -> None:
    silent = np.zeros((2, 12 * RENDER_RATE), dtype=np.float32)
    outcome = _rejected(tmp_path, silent)
    assert _failed(outcome) == {"silence"}
    assert outcome.master is None


def test_a_click_in_silence_says_its_silence_was_trimmed(tmp_path: Path) -> None:
    """A single full-scale sample in 5 s of silence failed with "audio is 0.05 s long; the
    analysis needs at least 0.4 s", which misled about a 5 s file."""
    click = np.zeros((2, 5 * RENDER_RATE), dtype=np.float32)
    click[:, 2 * RENDER_RATE] = 1.0
    with pytest.raises(AudioError, match=r"s of audio once its silence is trimmed"):
        process_track(make_spec(duration_s=5.0), click, RENDER_RATE, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_source_with_a_3s_dropout_is_rejected_by_the_dropout_gate(tmp_path: Path) -> None:
    audio = _source(12.0)
    audio[:, 4 * RENDER_RATE : 7 * RENDER_RATE] = 0.0
    outcome = _rejected(tmp_path, audio)
    assert _failed(outcome) == {"dropout"}
    dropout = next(g for g in outcome.gates if g.name == "dropout")
    assert dropout.value == pytest.approx(3.0, abs=0.05)


def test_a_hard_clipped_source_is_rejected_by_the_clipping_gate(tmp_path: Path) -> None:
    clipped = np.clip(_source(12.0) * 4.0, -1.0, 1.0)  # 12 dB into the rails
    outcome = _rejected(tmp_path, clipped)
    assert _failed(outcome) == {"clipping"}  # mastering turned it down: only the plateaus tell


def test_a_source_10s_too_short_is_rejected_by_the_duration_gate(tmp_path: Path) -> None:
    outcome = _rejected(tmp_path, _source(10.0), duration_s=20.0)
    assert _failed(outcome) == {"duration", "duration_ogg", "duration_mp3"}


def test_a_recording_padded_with_silence_is_as_long_as_what_mastering_keeps(
    tmp_path: Path,
) -> None:
    """A recording with 5 s of silence at each end and no duration asked was held to its
    whole length, 22 s, after mastering had trimmed it to 12 s: rejected on duration."""
    silence = np.zeros((2, 5 * RENDER_RATE), dtype=np.float32)
    audio = np.concatenate([silence, _source(12.0), silence], axis=1)
    spec = make_spec(id="padded", duration_s=22.0, own_length=True)
    outcome = process_track(spec, audio, RENDER_RATE, tmp_path)
    assert outcome.status == "approved", _failed(outcome)
    assert outcome.master is not None
    assert outcome.master.duration_s == pytest.approx(12.0, abs=0.05)
    for file in outcome.files:
        decoded, _ = decode_with_ffmpeg(file.path)
        assert decoded.shape[1] == outcome.master.frames, file.format
    # A duration asked for is held to, silence or not.
    (tmp_path / "asked").mkdir()
    rejected = _rejected(tmp_path / "asked", audio, duration_s=22.0)
    assert "duration" in _failed(rejected)


@pytest.mark.parametrize("rate", [22050, 44100, 48000, 96000])
def test_a_recording_of_exactly_its_bars_loops_on_them(tmp_path: Path, rate: int) -> None:
    """A recording of exactly 4 bars (a DAW's loop export) is its loop from its first sample.
    Its bars were read as starting on beat 4 (an accent is a weak cue) and the loop failed with
    6.5 s of audio for its 8 s of bars; the DC filter's and the resampler's edges put a step at
    a seam the recording did not have (a seam jump of 15); and the loop was cut at the measured
    tempo's bars (120.02 bpm: 70 samples short of the file)."""
    audio = held_chord(120.0, 8.0, rate, downbeat_accent=1.5)
    spec = make_spec(id="bars", duration_s=8.0, loop=True, bpm=120, bars=4)
    outcome = process_track(spec, audio, rate, tmp_path)
    assert outcome.status == "approved", _failed(outcome)
    assert outcome.master is not None and outcome.master.loop_start == 0
    assert outcome.master.loop_length == 8 * 44100, "the recording's own length"


@pytest.mark.parametrize("tail_s", [0.0, 0.12])
def test_a_bar_loop_struck_on_its_downbeat_loops_on_its_exact_bars(
    tmp_path: Path, tail_s: float
) -> None:
    """A loop of exactly 4 bars whose downbeat is struck on its first sample failed the seam
    gate (a jump of 13: the attack read as a click), and one with a 120 ms tail after its bars
    (0.75 %, under the 1 % then allowed) was looped as it was: its rhythm skipped 120 ms at
    every wrap, its tempo read off that length as 119.1 bpm."""
    audio = struck_bars(4, 44100, tail_s=tail_s)
    spec = make_spec(
        id="struck",
        duration_s=audio.shape[1] / 44100,
        loop=True,
        bpm=120,
        own_length=True,
        source=tmp_path / "struck.wav",
    )
    outcome = process_track(spec, audio, 44100, tmp_path)
    assert outcome.status == "approved", _failed(outcome)
    m = outcome.master
    assert m is not None and (m.loop_start, m.loop_length) == (0, 4 * 2 * 44100)
    jump = {g.name: g.value for g in outcome.gates}["loop_seam_jump"]
    assert jump is not None and jump <= 1.5
    assert outcome.sidecar is not None
    sidecar = json.loads(outcome.sidecar.path.read_text())
    assert sidecar["tempo"]["measured_bpm"] == pytest.approx(120.0, abs=1e-9)
    assert sidecar["bars"][:4] == [0, 88200, 176400, 264600]


@pytest.mark.parametrize("measured_bpm", [119.85, 120.0, 120.15])
def test_a_recording_of_exactly_its_bars_is_its_loop_however_its_tempo_measures(
    measured_bpm: float,
) -> None:
    """A DAW's export of 4 bars at the track's 120 bpm is its loop from its first sample, even
    when the tempo measures 0.125 % off (beyond the snap to the target): at the measured
    tempo's bars it was a crossfade that skipped 10 ms, or too short to loop at all. A release
    after the bars is crossfaded in, at any measured tempo."""
    audio = struck_bars(4, 44100)
    heard = analyse(audio, 44100, beats_per_bar=4, bpm_hint=120.0)
    spec = make_spec(id="daw", duration_s=8.0, loop=True, bpm=120, bars=4, own_length=True)
    exported = _bar_loop(spec, replace(heard, tempo_bpm=measured_bpm))
    assert exported is not None
    assert (exported.start, exported.length) == (0, 8 * 44100)
    released = replace(heard, tempo_bpm=measured_bpm, frames=8 * 44100 + round(0.12 * 44100))
    looped = _bar_loop(spec, released)
    assert looped is not None and looped.length < released.frames - 0.1 * 44100
    assert looped.length == pytest.approx(8 * 44100 * 120 / measured_bpm)


@pytest.mark.parametrize(("bpm", "release_ms"), [(120, 100), (None, 100), (None, 3)])
def test_a_recorded_loop_that_starts_on_a_rest_keeps_it(
    tmp_path: Path, bpm: int | None, release_ms: int
) -> None:
    """A 4-bar loop export whose downbeat is a rest lost the rest to the silence trim: with a
    bpm it was published as 3 bars (6.005 s), without one it failed for want of 0.1 s. Its last
    chord released in 3 ms, the DC filter rang from the wrap into the rest, above -60 dBFS for
    10 ms: the rest read as no leading silence, and the track was approved."""
    audio = held_chord(120.0, 8.0, 48000, downbeat_accent=1.5)
    audio -= audio.mean(axis=1, keepdims=True)  # as a DAW exports it: no offset under the rest
    audio[:, : 48000 // 4] = 0.0  # an eighth-note rest at 120 bpm
    release = 48 * release_ms  # the last chord's
    audio[:, -release:] *= np.linspace(1.0, 0.0, release, dtype=np.float32)
    spec = make_spec(id="rest", duration_s=8.0, loop=True, bpm=bpm, source=tmp_path / "rest.wav")
    strict = process_track(spec, audio, 48000, tmp_path / "strict")
    assert strict.status == "rejected", "a rest longer than lead_silence allows is said"
    assert _failed(strict) == {"lead_silence"}
    allowed = replace(spec, gates=replace(spec.gates, lead_silence_max_ms=300.0))
    outcome = process_track(allowed, audio, 48000, tmp_path / "allowed")
    assert outcome.status == "approved", _failed(outcome)
    assert outcome.master is not None and outcome.master.loop_start == 0
    assert outcome.master.loop_length == outcome.master.frames == 8 * 44100
    lead = {g.name: g.value for g in outcome.gates}["lead_silence"]
    assert 0.2 <= lead <= 0.25, "the rest, to where the chord's attack rises above -60 dBFS"


def test_a_recorded_loop_that_ends_on_a_rest_is_rejected_for_its_trailing_silence(
    tmp_path: Path,
) -> None:
    """The DC filter rang from the wrap (the downbeat's chord) back into a closing rest: a
    loop with a gap at every wrap read no trailing silence, and was approved."""
    audio = held_chord(120.0, 8.0, 48000, downbeat_accent=1.5)
    audio -= audio.mean(axis=1, keepdims=True)
    audio[:, :144] *= np.linspace(0.0, 1.0, 144, dtype=np.float32)  # 3 ms attack, no click
    rest = 8 * 48000 - 48000 // 4  # an eighth-note rest closes the loop
    audio[:, rest - 144 : rest] *= np.linspace(1.0, 0.0, 144, dtype=np.float32)
    audio[:, rest:] = 0.0
    spec = make_spec(id="rest", duration_s=8.0, loop=True, source=tmp_path / "rest.wav")
    outcome = process_track(spec, audio, 48000, tmp_path / "out")
    assert outcome.status == "rejected" and _failed(outcome) == {"trail_silence"}
    trail = {g.name: g.value for g in outcome.gates}["trail_silence"]
    assert trail == pytest.approx(0.25, abs=0.005)


def test_a_loop_plays_twice_in_a_row_without_a_click(tmp_path: Path) -> None:
    spec = make_spec(id="loop", duration_s=10.0, loop=True)
    outcome = process_track(spec, _source(13.0), RENDER_RATE, tmp_path)
    assert outcome.status == "approved", _failed(outcome)
    seam = {g.name: g for g in outcome.gates if g.name.startswith("loop_seam")}
    assert seam["loop_seam_jump"].passed and seam["loop_seam_loudness"].passed
    # Independent check on the decoded OGG: the loop region twice in a row has no sample-to-
    # sample curvature at the join larger than anywhere inside the loop itself.
    ogg = next(f.path for f in outcome.files if f.format == "ogg")
    audio, _ = decode_with_ffmpeg(ogg)
    assert outcome.master is not None and outcome.master.loop_length is not None
    loop = audio[:, : outcome.master.loop_length]
    twice = np.concatenate([loop, loop], axis=1)
    curvature = np.abs(np.diff(twice, n=2, axis=1)).max(axis=0)
    join = loop.shape[1] - 1
    assert curvature[join - 1 : join + 1].max() <= curvature[: loop.shape[1] - 2].max()


def test_a_mis_cut_loop_fails_the_seam_gate() -> None:
    spec = make_spec(duration_s=10.0, loop=True)
    m = master(_source(13.0), RENDER_RATE, spec.mastering, loop=True, duration_s=10.0)
    assert m.loop_length is not None
    args = {
        "limits": spec.gates,
        "loudness": spec.mastering.loudness,
        "duration_s": None,
        "loop": True,
        "sample_rate": 44100,
        "channels": 2,
    }
    good = judge(measure(m.audio, m.sample_rate, loop_start=0, loop_length=m.loop_length), **args)
    cut = measure(m.audio, m.sample_rate, loop_start=0, loop_length=m.loop_length - 3001)
    bad = judge(cut, **args)
    verdict = {g.name: g.passed for g in good}
    assert verdict["loop_seam_jump"] and verdict["loop_seam_loudness"]
    assert {g.name for g in bad if not g.passed} == {"loop_seam_jump"}


def test_team_expectations_can_reject_a_track(tmp_path: Path) -> None:
    strict = {
        "type": "expect_column_max_to_be_between",
        "kwargs": {"column": "true_peak_dbtp", "max_value": -20.0},
        "meta": {"gate": "team_quiet_peaks"},
    }
    spec = make_spec(duration_s=5.0)
    outcome = process_track(spec, _source(6.0), RENDER_RATE, tmp_path, extra_expectations=[strict])
    assert _failed(outcome) == {"team_quiet_peaks"}
    assert list(tmp_path.iterdir()) == []
    # A team's gate may not take a built-in gate's name, judged early or late.
    clash = {**strict, "meta": {"gate": "loudness"}}
    with pytest.raises(InputError, match="unique"):
        process_track(spec, _source(6.0), RENDER_RATE, tmp_path, extra_expectations=[clash])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("duration_s", [0.4, 0.7, 0.99])
def test_a_cue_shorter_than_a_second_is_approved_at_its_length(
    tmp_path: Path, duration_s: float
) -> None:
    """A manifest may ask for 0.4 s: the analysis, which needs a second for beats and a key,
    measures the rest of a shorter cue instead of stopping its build."""
    import soundfile as sf

    mastering = Mastering(loudness=LOUDNESS_PROFILES["console"], fade_out_s=0.1)
    spec = make_spec(id="blip", duration_s=duration_s, mastering=mastering, formats=("ogg", "wav"))
    outcome = process_track(spec, _source(duration_s + 0.005), RENDER_RATE, tmp_path)
    assert outcome.status == "approved", _failed(outcome)
    assert outcome.analysis is not None and outcome.analysis.tempo_bpm is None
    for suffix in ("ogg", "wav"):
        info = sf.info(str(tmp_path / f"blip.{suffix}"))
        assert info.samplerate == 44100 and info.frames == round(duration_s * 44100), suffix
    integrated_lufs, _ = ebur128(tmp_path / "blip.wav")
    assert integrated_lufs == pytest.approx(-24.0, abs=1.0)


def test_a_cue_too_short_for_a_tempo_fails_its_tempo_gate(tmp_path: Path) -> None:
    mastering = Mastering(loudness=LOUDNESS_PROFILES["console"], fade_out_s=0.1)
    spec = make_spec(id="blip", duration_s=0.6, bpm=120.0, mastering=mastering, formats=("ogg",))
    outcome = process_track(spec, _source(0.6), RENDER_RATE, tmp_path)
    assert outcome.status == "rejected" and "tempo" in _failed(outcome)


def test_a_loop_recording_as_long_as_its_loop_is_kept_whole(tmp_path: Path) -> None:
    """A seamless 8 s loop recording given no bpm was cut to 7.64 s and crossfaded: nothing
    follows a recording's end, so the search for its loop end stopped a crossfade early."""
    t = np.arange(8 * 44100) / 44100
    swell = 0.6 + 0.4 * np.cos(2 * np.pi * 0.25 * t)
    recording = (0.5 * np.cos(2 * np.pi * 441.0 * t) * swell)[None, :].repeat(2, axis=0)
    spec = make_spec(
        loop=True, duration_s=8.0, source=tmp_path / "loop.wav", own_length=True, formats=("wav",)
    )
    outcome = process_track(spec, recording.astype(np.float32), 44100, tmp_path / "out")
    assert outcome.status == "approved", _failed(outcome)
    assert outcome.master is not None and outcome.master.loop_length == 8 * 44100


@pytest.mark.parametrize(
    ("bars", "whole"),
    [(4.0, True), (64.04, True), (4.4, False), (4.5, False), (60.5, False), (150.5, False)],
)
def test_a_loop_is_put_on_a_bar_grid_only_when_it_is_whole_bars(bars: float, whole: bool) -> None:
    """Judged on tempo alone, a long loop with half a bar left over (60.5 bars: 0.8 %) read
    as whole bars, its tempo rewritten and its grid out of step with the music."""
    from soundtrack.analysis import Analysis
    from soundtrack.process import as_bar_loop

    heard = Analysis(44100, 10**8, 120.0, (), (), 4, None, 0.0, 0.0, 0.0, 0.0, ())
    found = as_bar_loop(heard, 0, round(bars * 2.0 * 44100), 4)
    assert (found is not None) == whole
