"""Music analysis on synthesized music with a known answer (tests/music.py): tempo within 0.2 %,
beats and bars within 30 ms, the key, loudness range against ffmpeg's ebur128, and compare()."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from soundtrack import analysis
from soundtrack.analysis import Analysis, analyse, analysis_row, compare, timbre_distance
from soundtrack.audio import write_wav
from soundtrack.errors import AudioError
from soundtrack.loudness import loudness_range_lu
from soundtrack.master import prepare
from soundtrack.spec import LOUDNESS_PROFILES, Mastering
from tests.music import chord_cycle, clicks, compound_groove, drone, drum_and_bass, held_chord
from tests.reference import ebur128_lra
from tests.signals import fading, music_like, pink_noise

RATE = 44100
DURATION_S = 24.0
TOLERANCE_S = 0.03
BPMS = (70.0, 100.0, 128.0, 174.0)


@functools.cache
def _groove(
    bpm: float, key: str = "A minor", lead_in_s: float = 0.0, beats_per_bar: int = 4, seed: int = 0
) -> tuple[np.ndarray, tuple[int, ...]]:
    audio, downbeats = drum_and_bass(
        bpm, key, DURATION_S, RATE, beats_per_bar=beats_per_bar, lead_in_s=lead_in_s, seed=seed
    )
    return audio, tuple(downbeats)


@functools.cache
def _analysed(
    bpm: float,
    key: str = "A minor",
    lead_in_s: float = 0.0,
    beats_per_bar: int = 4,
    seed: int = 0,
    hint: bool = True,
) -> Analysis:
    audio, _ = _groove(bpm, key, lead_in_s, beats_per_bar, seed)
    return analyse(audio, RATE, beats_per_bar=beats_per_bar, bpm_hint=bpm if hint else None)


def _distances_s(found: tuple[int, ...], truth: np.ndarray) -> np.ndarray:
    """For each found position, the distance to the nearest true one, in seconds."""
    distances: np.ndarray = np.abs(np.subtract.outer(np.array(found), truth)).min(axis=1) / RATE
    return distances


def _true_beats(bpm: float, lead_in_s: float) -> np.ndarray:
    beat = 60.0 / bpm * RATE
    first = -int(lead_in_s * RATE / beat)  # the pickup's beats count too
    return np.round(lead_in_s * RATE + beat * np.arange(first, int(DURATION_S * bpm / 60) + 1))


@pytest.mark.parametrize("bpm", BPMS)
def test_tempo_with_the_nominal_bpm_as_hint_is_within_0_2_percent(bpm: float) -> None:
    measured = _analysed(bpm).tempo_bpm
    assert measured is not None
    assert abs(measured / bpm - 1.0) < 0.002  # measured: under 0.03 %


@pytest.mark.parametrize("bpm", (*BPMS, 60.0, 140.0))
def test_without_a_hint_the_accent_rule_picks_the_notated_level(bpm: float) -> None:
    # The 120 bpm prior alone picks 120 for the 60 bpm groove (its hi-hat eighths), 70 for the
    # 140 bpm one and 87 for 174 (half time): the accent rule halves or doubles those.
    measured = _analysed(bpm, hint=False).tempo_bpm
    assert measured is not None
    assert abs(measured / bpm - 1.0) < 0.002


@pytest.mark.parametrize(
    ("eighth_bpm", "eighths_level"),
    [
        (150.0, 0.8),
        (150.0, 0.2),
        (150.0, 0.0),
        (210.0, 0.8),
        (210.0, 0.0),
        (60.0, 0.2),
        (88.0, 0.2),
    ],
)
def test_a_compound_metre_is_counted_in_its_eighths_whether_they_sound_or_not(
    eighth_bpm: float, eighths_level: float
) -> None:
    """6/8 felt at the dotted quarter (a third of the eighths' bpm): read a third or two
    thirds of an octave off (33 % off, rejected) or as no pulse at all once the eighths were
    quiet; its beats are the eighths, its bars every six. A slow one (60, 88: a pulse under
    30 bpm) is felt in its eighths, as before."""
    audio, downbeats = compound_groove(eighth_bpm, 16.0, RATE, eighths_level=eighths_level)
    heard = analyse(audio, RATE, beats_per_bar=6, bpm_hint=eighth_bpm)
    assert heard.tempo_bpm is not None and abs(heard.tempo_bpm / eighth_bpm - 1.0) < 0.002
    eighth = 60.0 / eighth_bpm * RATE
    truth = np.round(downbeats[0] + eighth * np.arange(-1, 16.0 * eighth_bpm / 60))
    assert np.max(_distances_s(heard.beats, truth)) <= 0.02
    assert len(heard.beats) >= 6 * (len(downbeats) - 1)
    assert np.max(_distances_s(heard.downbeats, np.array(downbeats))) <= 0.02


@pytest.mark.parametrize(("bpm", "hint", "level"), [(70.0, 150.0, 140.0), (174.0, 90.0, 87.0)])
def test_a_hint_picks_half_or_double_the_level(bpm: float, hint: float, level: float) -> None:
    audio, _ = _groove(bpm)
    measured = analyse(audio, RATE, bpm_hint=hint).tempo_bpm
    assert measured is not None
    assert abs(measured / level - 1.0) < 0.002


@pytest.mark.parametrize(("bpm", "beats_per_bar"), [(120.0, 3), (150.0, 3), (120.0, 4)])
def test_a_chord_every_bar_reads_the_bars_tempo_with_the_hint_as_without(
    bpm: float, beats_per_bar: int
) -> None:
    """A chord every bar of 3/4 at 120 pulses at 40 bpm: without a hint it read 120, with the
    hint 120 it read 160 (the octave of 40 nearest 120) and failed the tempo gate at 33 %."""
    audio = chord_cycle(24.0, RATE, bpm=bpm, beats_per_bar=beats_per_bar)
    for hint in (bpm, None):
        heard = analyse(audio, RATE, beats_per_bar=beats_per_bar, bpm_hint=hint)
        assert heard.tempo_bpm is not None and abs(heard.tempo_bpm / bpm - 1.0) < 0.002, hint


@pytest.mark.parametrize("bpm", (90.0, 102.0, 111.0, 138.0, 159.0, 189.0, 195.0))
def test_a_hint_at_half_or_double_the_tempo_finds_the_pulse(bpm: float) -> None:
    # The tempo gate takes a manifest's bpm as the hint, and passes music at half or double it.
    # Clicks' autocorrelation peaks are a frame wide: a grid of whole lags once missed the beat
    # and read 2/3 of it here (90 bpm, hint 45: 60).
    audio = clicks(bpm, 12.0, 22050)
    for hint in (bpm / 2.0, bpm, 2.0 * bpm):
        measured = analyse(audio, 22050, bpm_hint=hint).tempo_bpm
        assert measured is not None, hint
        assert min(abs(measured / (m * bpm) - 1.0) for m in (0.5, 1.0, 2.0)) < 0.002, hint


@pytest.mark.parametrize("duration_s", [12.0, 24.0])
def test_a_held_chord_does_not_vote_on_the_downbeats(duration_s: float) -> None:
    """A chord held through every bar changes by rounding error (1e-7), which scaled to unit
    spread outvoted a kick twice as strong on each downbeat: bars read from beat 2 or 4."""
    audio = held_chord(120.0, duration_s, RATE, downbeat_accent=2.0)
    mastering = Mastering(loudness=LOUDNESS_PROFILES["console"])
    prepared = prepare(audio, RATE, mastering, loop=True, duration_s=duration_s)  # as a build
    result = analyse(prepared.audio, RATE, bpm_hint=120.0)
    truth = np.arange(duration_s / 2.0 + 1) * 2.0 * RATE
    assert result.downbeats and _distances_s(result.downbeats, truth).max() < TOLERANCE_S


@pytest.mark.parametrize("bpm", BPMS)
def test_beats_fall_on_the_true_beats(bpm: float) -> None:
    result = _analysed(bpm)
    truth = _true_beats(bpm, 0.0)
    assert _distances_s(result.beats, truth).max() < TOLERANCE_S
    # The tracker may leave out the last beat of the take, no more.
    assert len(result.beats) >= len(truth) - 2


@pytest.mark.parametrize(("bpm", "lead_in_s"), [(bpm, 0.0) for bpm in BPMS] + [(100.0, 1.3)])
def test_a_steady_grooves_beats_are_on_its_grid_to_a_few_milliseconds(
    bpm: float, lead_in_s: float
) -> None:
    """An engine schedules stingers on them: snapped to whole 23 ms analysis frames, they were
    up to 16 ms off."""
    result = _analysed(bpm, lead_in_s=lead_in_s)
    truth = _true_beats(bpm, lead_in_s)
    assert _distances_s(result.beats, truth).max() < 0.005


@pytest.mark.parametrize("bpm", [100.0, 128.0, 174.0])
def test_beats_through_a_break_in_the_music_stay_on_the_grid(bpm: float) -> None:
    """A beat in silence was put on the first frame of its silent window, SNAP_FRAMES early,
    and those beats kept the whole groove off its fitted grid: up to 27 ms off. Now every
    beat is within a quarter of an analysis frame (5.8 ms), as on a groove with no break."""
    audio = _groove(bpm)[0].copy()
    audio[:, round(8.0 * RATE) : round(15.0 * RATE)] = 0.0
    result = analyse(audio, RATE, bpm_hint=bpm)
    truth = _true_beats(bpm, 0.0)
    quarter_frame_s = 0.25 * analysis._HOP / analysis.ANALYSIS_RATE
    assert _distances_s(result.beats, truth).max() < quarter_frame_s
    assert len(result.beats) >= len(truth) - 2, "the break's beats are counted"


def test_beats_before_the_first_onset_heard_stay_on_the_train() -> None:
    """Placed from the heard beats around them, beats outside them all took the nearest one's
    frame: three beats on one frame."""
    period = 20
    onsets, accents = np.zeros(200), np.zeros(200)
    accents[::period] = 1.0
    onsets[60::period] = 1.0  # nothing heard near the first beats but the accents' low band
    onsets[120] = 0.0  # a beat in a break, between heard ones
    beats = analysis._beats(onsets, accents, 60.0 * analysis._FRAME_RATE / period)
    assert np.all(np.diff(beats) == period), beats


@pytest.mark.parametrize(
    ("bpm", "lead_in_s", "beats_per_bar"),
    [
        (70.0, 0.0, 4),
        (100.0, 0.0, 4),
        (128.0, 0.0, 4),
        (174.0, 0.0, 4),
        (100.0, 1.3, 4),  # two beats of hi-hat pickup before the first bar
        (128.0, 0.37, 4),
        (174.0, 2.9, 4),
        (100.0, 0.0, 3),
        (128.0, 0.37, 3),
    ],
)
def test_downbeats_are_the_bar_starts(bpm: float, lead_in_s: float, beats_per_bar: int) -> None:
    _, truth = _groove(bpm, "A minor", lead_in_s, beats_per_bar)
    result = _analysed(bpm, "A minor", lead_in_s, beats_per_bar)
    assert _distances_s(result.downbeats, np.array(truth)).max() < TOLERANCE_S
    assert len(result.downbeats) >= len(truth) - 2
    assert set(result.downbeats) <= set(result.beats)
    if lead_in_s < 60.0 / bpm:
        assert abs(result.downbeats[0] - truth[0]) / RATE < TOLERANCE_S


@pytest.mark.parametrize(("bpm", "skipped_beats"), [(100.0, 1), (100.0, 2), (174.0, 3)])
def test_downbeats_of_a_take_that_starts_mid_bar(bpm: float, skipped_beats: int) -> None:
    # The first beats are not bar starts: the phase must come from the music.
    audio, truth = _groove(bpm)
    cut = round(skipped_beats * 60.0 / bpm * RATE)
    result = analyse(audio[:, cut:], RATE, bpm_hint=bpm)
    moved = np.array([d - cut for d in truth if d >= cut])
    assert _distances_s(result.downbeats, moved).max() < TOLERANCE_S
    assert len(result.downbeats) >= len(moved) - 2


@pytest.mark.parametrize("skipped_beats", [0, 2])
def test_downbeats_of_arpeggios_follow_the_chord_changes(skipped_beats: int) -> None:
    # No kick: each beat is a different note, the chord changes every 4 beats.
    bpm = 95.0
    beat = 60.0 / bpm * RATE
    cut = round(skipped_beats * beat)
    audio = music_like(DURATION_S, RATE, bpm=bpm)[:, cut:]
    result = analyse(audio, RATE)
    # A bar line right at the end counts: the tracker may put a beat there.
    truth = np.round(4 * beat * np.arange(int(DURATION_S * RATE / (4 * beat)) + 1)) - cut
    truth = truth[(truth >= 0) & (truth <= audio.shape[1])]
    assert _distances_s(result.downbeats, truth).max() < TOLERANCE_S
    assert len(result.downbeats) >= len(truth) - 2


@pytest.mark.parametrize(
    ("bpm", "key"),
    [
        (100.0, "C major"),
        (128.0, "E major"),
        (174.0, "Bb major"),
        (100.0, "A minor"),
        (128.0, "F# minor"),
        (70.0, "C minor"),
    ],
)
def test_the_key_of_a_groove(bpm: float, key: str) -> None:
    result = _analysed(bpm, key)
    assert result.key == key
    assert 0.05 < result.key_confidence <= 1.0


@pytest.mark.parametrize("cents", (-45.0, -32.0, 32.0))
@pytest.mark.parametrize("key", ("C major", "Eb major", "A major", "F# minor"))
def test_the_key_of_music_tuned_away_from_a440(key: str, cents: float) -> None:
    # A=432 is 32 cents flat; before the tuning was estimated, C major at +32 read F minor.
    audio, _ = drum_and_bass(100.0, key, 12.0, 32000, a4_hz=440.0 * 2.0 ** (cents / 1200.0))
    assert analyse(audio, 32000, bpm_hint=100.0).key == key


def test_two_keys_at_once_give_less_confidence_than_one() -> None:
    """The confidence is the margin over the runner-up key, not how well the best one fits."""
    c_major, _ = drum_and_bass(100.0, "C major", 12.0, 32000)
    g_major, _ = drum_and_bass(100.0, "G major", 12.0, 32000, seed=1)
    clear = analyse(c_major, 32000, bpm_hint=100.0)
    torn = analyse(c_major + g_major, 32000, bpm_hint=100.0)  # measured: 0.17 and 0.07
    assert clear.key == "C major"
    assert torn.key_confidence < 0.6 * clear.key_confidence


def test_transposing_changes_only_the_key() -> None:
    a, b = _analysed(100.0, "A minor"), _analysed(100.0, "B minor", seed=5)
    assert (a.key, b.key) == ("A minor", "B minor")
    assert b.tempo_bpm == pytest.approx(a.tempo_bpm, rel=0.002)


def test_no_pulse_means_no_tempo_beats_or_bars() -> None:
    for audio in (drone("D major", 20.0, RATE), pink_noise(-20.0, 20.0, RATE)):
        result = analyse(audio, RATE, bpm_hint=120.0)
        assert (result.tempo_bpm, result.beats, result.downbeats) == (None, (), ())
    assert analyse(drone("A minor", 20.0, RATE), RATE).key == "A minor"
    noise = analyse(pink_noise(-20.0, 20.0, RATE), RATE)
    assert (noise.key, noise.key_confidence) == (None, 0.0)


@pytest.mark.parametrize("rate", [44100, 48000])
@pytest.mark.parametrize("seconds", [2.0, 3.0, 8.0])
def test_a_steady_tone_has_no_tempo(rate: int, seconds: float) -> None:
    """A plain sine crashed `compare` and `inspect --analysis`: a peak search fitted a parabola
    through a flat stretch, and its vertex landed outside the lags it searched."""
    t = np.arange(int(seconds * rate)) / rate
    tone = np.float32(0.1) * np.sin(2 * np.pi * 440.0 * t, dtype=np.float32)
    result = analyse(np.stack([tone, tone]), rate, bpm_hint=120.0)
    assert (result.tempo_bpm, result.beats, result.downbeats) == (None, (), ())
    assert analyse(np.stack([tone, tone]), rate).tempo_bpm is None


def test_silence_measures_nothing() -> None:
    result = analyse(np.zeros((2, 3 * RATE), np.float32), RATE)
    assert result.tempo_bpm is None and result.key is None
    assert result.beats == () and result.downbeats == ()
    assert result.loudness_range_lu == 0.0
    assert result.onset_rate_per_s == 0.0


def _steps(rate: int) -> np.ndarray:
    """Pink noise in 5 s steps falling 3 dB each: a wide loudness range."""
    noise = pink_noise(-18.0, 30.0, rate)
    gains = np.repeat(10 ** (-np.arange(6) * 3.0 / 20.0), 5 * rate).astype(np.float32)
    return noise * gains[None, :]


@pytest.mark.parametrize(
    ("name", "make", "rate", "within_lu"),
    [
        ("chord cycle, bars at different levels", lambda: chord_cycle(32.0, RATE), RATE, 0.2),
        ("falling steps of pink noise", lambda: _steps(48000), 48000, 0.2),
        ("steady groove, mono", lambda: _groove(128.0)[0][:1], RATE, 0.2),
        # Every level over 40 dB: the 95th percentile and the relative gate show.
        (
            "a fade",
            lambda: fading(music_like(20.0, 44100, peak_dbfs=-3.0, seed=5), 40.0),
            44100,
            0.2,
        ),
        # At -64 LUFS and below: the absolute gate at -70 shows (17 LU wider without it).
        (
            "a quiet fade",
            lambda: fading(music_like(20.0, 48000, peak_dbfs=-50.0, seed=5), 40.0),
            48000,
            1.0,
        ),
    ],
)
def test_loudness_range_matches_ffmpeg(
    name: str, make: Callable[[], np.ndarray], rate: int, within_lu: float, tmp_path: Path
) -> None:
    audio = make()
    write_wav(tmp_path / "signal.wav", audio, rate)
    reference = ebur128_lra(tmp_path / "signal.wav")
    # Measured: 0.12 LU at most, 0.32 on the quiet fade (ffmpeg counts in 0.1 LU bins).
    assert loudness_range_lu(audio, rate) == pytest.approx(reference, abs=within_lu)


def test_loudness_ranges_differ_as_the_signals_do() -> None:
    # Without this, a meter that always answered the same would pass the ffmpeg comparison
    # only if the signals happened to match; here they span 1.2 to 14 LU.
    steady = loudness_range_lu(_groove(128.0)[0], RATE)
    cycle = loudness_range_lu(chord_cycle(32.0, RATE), RATE)
    steps = loudness_range_lu(_steps(RATE), RATE)
    assert steady < 2.0 < cycle < 7.0 < 10.0 < steps
    assert analyse(chord_cycle(32.0, RATE), RATE).loudness_range_lu == cycle
    assert loudness_range_lu(_steps(RATE)[:, : 2 * RATE], RATE) == 0.0  # shorter than 3 s


def test_compare_a_faster_variant() -> None:
    result = compare(_analysed(100.0, seed=0), _analysed(125.0, seed=3))
    assert result.tempo_ratio == pytest.approx(1.25, rel=0.002)
    assert result.key_relation == "same"
    assert result.verdict == "b is 1.25x faster, same key, similar timbre"
    rows = {row.name: row for row in result.rows}
    assert rows["tempo_bpm"].difference == "b/a = 1.250"
    assert json.loads(json.dumps(result.to_dict()))["tempo_ratio"] == result.tempo_ratio


def test_compare_a_transposition_and_a_relative_key() -> None:
    a_minor = _analysed(100.0, "A minor")
    up_two = compare(a_minor, _analysed(100.0, "B minor", seed=5))
    assert (up_two.key_relation, up_two.key_semitones) == ("transposed", 2)
    assert "b is a +2 semitone transposition" in up_two.verdict
    down = compare(_analysed(100.0, "B minor", seed=5), a_minor)
    assert (down.key_relation, down.key_semitones) == ("transposed", -2)
    assert compare(a_minor, _analysed(100.0, "C major")).key_relation == "relative"


def test_a_dc_offset_changes_neither_brightness_nor_timbre() -> None:
    """An offset of 0.1 read a groove 2.6x darker and at a timbre distance of 4.5 from itself."""
    groove = _analysed(100.0)
    shifted = analyse(_groove(100.0)[0] + np.float32(0.1), RATE, bpm_hint=100.0)
    assert shifted.spectral_centroid_hz == pytest.approx(groove.spectral_centroid_hz, rel=0.01)
    assert timbre_distance(groove, shifted) < 0.05
    assert shifted.tempo_bpm == pytest.approx(groove.tempo_bpm, rel=0.002)


def test_timbre_distance_is_small_for_the_same_sound_and_large_for_another() -> None:
    groove = _analysed(100.0)
    same = [
        _analysed(125.0, seed=3),  # faster
        _analysed(100.0, "B minor", seed=5),  # transposed
        _analysed(128.0, "E major", seed=7),
        analyse(_groove(100.0)[0] * 0.1, RATE),  # 20 dB quieter
    ]
    different = [
        analyse(music_like(DURATION_S, RATE), RATE),  # plucks over a pad
        analyse(chord_cycle(DURATION_S, RATE), RATE),  # bell-like chords
        analyse(pink_noise(-20.0, DURATION_S, RATE), RATE),
    ]
    near = [timbre_distance(groove, other) for other in same]
    far = [timbre_distance(groove, other) for other in different]
    assert max(near) < analysis.SIMILAR_TIMBRE_MAX < min(far)  # measured: 0-4.8, 17-23
    assert timbre_distance(groove, same[-1]) < 0.1  # the level is not timbre
    assert compare(groove, different[0]).verdict.endswith("different timbre")


def test_analysis_row_holds_scalars_only() -> None:
    row = analysis_row(_analysed(128.0, lead_in_s=0.5))
    assert row["beat_count"] == len(_analysed(128.0, lead_in_s=0.5).beats)
    assert row["first_downbeat_s"] == pytest.approx(0.5, abs=TOLERANCE_S)
    assert row["key"] == "A minor"
    assert all(v is None or isinstance(v, str | int | float) for v in row.values())
    json.dumps(row)


def test_a_beat_at_the_very_end_is_past_the_last_sample_and_left_out() -> None:
    """The sidecar's positions index samples: one at the length would be past the audio."""
    frames = np.array([10, 50, 90])
    positions = analysis._to_samples(frames, RATE, 10**9)
    assert analysis._to_samples(frames, RATE, positions[-1]) == positions[:-1]
    assert analysis._to_samples(frames, RATE, positions[-1] + 1) == positions


def test_any_sample_rate_and_mono_give_the_same_positions() -> None:
    audio, truth = drum_and_bass(128.0, "A minor", 12.0, 48000)
    result = analyse(audio[:1], 48000, bpm_hint=128.0)
    assert result.sample_rate == 48000 and result.frames == audio.shape[1]
    assert np.abs(np.subtract.outer(result.downbeats, truth)).min(axis=1).max() < 0.03 * 48000


@pytest.mark.parametrize(
    ("audio", "kwargs", "error", "message"),
    [
        (np.zeros((3, RATE * 2), np.float32), {}, AudioError, "1 or 2 channels"),
        (np.zeros(RATE * 2, np.float32), {}, AudioError, "1 or 2 channels"),
        (np.zeros((2, RATE // 4), np.float32), {}, AudioError, "audio is 0.25 s long"),
        (np.full((2, RATE * 2), np.nan, np.float32), {}, AudioError, "NaN or infinite"),
        (np.zeros((2, RATE * 2), np.float32), {"beats_per_bar": 0}, ValueError, "got 0"),
        (np.zeros((2, RATE * 2), np.float32), {"bpm_hint": -120.0}, ValueError, "got -120.0"),
    ],
)
def test_bad_input_is_refused(
    audio: np.ndarray, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        analyse(audio, RATE, **kwargs)


def test_beats_that_drift_off_a_line_stay_as_snapped() -> None:
    """Beats that speed up by 1% halfway lie 1.5 frames off one line: forced onto it, a groove
    going from 120 to 123 bpm had its beats 43 ms off; snapped, 9 ms."""
    first = np.arange(20) * 21.5
    drifting = np.round(np.concatenate([first, first[-1] + np.arange(1, 30) * 21.3])).astype(int)
    assert np.array_equal(analysis._steady(drifting), drifting)
    jittered = np.round(np.arange(40) * 21.53 + 0.4 * np.sin(np.arange(40))).astype(int)
    line = analysis._steady(jittered)
    assert np.max(np.abs(line - np.arange(40) * 21.53)) < 0.5
