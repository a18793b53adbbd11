"""The theme measure on synthesized tunes (tests/melody.py): the parent's melody in another
timbre, tempo or key holds THEME_LIMIT and reports its transposition; an unrelated melody in the
same key, timbre and tempo does not; a variation is compared with the parent from its start."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from soundtrack.errors import AudioError
from soundtrack.theme import ORDER_MIN, THEME_LIMIT, melody_similarity
from tests.melody import CHORDS, FRERE_JACQUES, ODE_TO_JOY, TWINKLE, Melody, tune

RATE = 32000
PHRASE_S = 19.2  # the tunes' 8 bars at 100 bpm


@functools.cache
def _tune(
    melody: Melody,
    duration_s: float,
    *,
    bpm: float = 100.0,
    timbre: str = "triangle",
    semitones: int = 0,
    parent_chords: bool = False,
) -> np.ndarray:
    chords = CHORDS[FRERE_JACQUES] if parent_chords else None
    return tune(
        melody, duration_s, RATE, bpm=bpm, timbre=timbre, semitones=semitones, chords=chords
    )


def _parent() -> np.ndarray:
    return _tune(FRERE_JACQUES, PHRASE_S)


def test_identical_audio_is_similar_to_one() -> None:
    match = melody_similarity(_parent(), _parent(), RATE)
    assert match.similarity > 0.99
    assert match.transposition_semitones == 0
    assert match.tempo_ratio == pytest.approx(1.0, abs=0.02)
    assert match.parent_span_s == pytest.approx(PHRASE_S, abs=0.2)


@pytest.mark.parametrize(("timbre", "tempo_ratio"), [("reed", 1.25), ("piano", 0.8)])
def test_the_melody_in_another_timbre_and_tempo_passes(timbre: str, tempo_ratio: float) -> None:
    variation = _tune(FRERE_JACQUES, PHRASE_S, bpm=100.0 * tempo_ratio, timbre=timbre)
    match = melody_similarity(variation, _parent(), RATE)
    assert match.similarity >= THEME_LIMIT
    assert match.transposition_semitones == 0
    assert match.tempo_ratio == pytest.approx(tempo_ratio, rel=0.04)


@pytest.mark.parametrize(("semitones", "timbre"), [(3, "reed"), (-5, "piano"), (9, "reed")])
def test_a_transposed_melody_passes_and_reports_its_transposition(
    semitones: int, timbre: str
) -> None:
    variation = _tune(FRERE_JACQUES, 15.0, bpm=110.0, timbre=timbre, semitones=semitones)
    match = melody_similarity(variation, _parent(), RATE)
    assert match.similarity >= THEME_LIMIT
    # Chroma has no octaves: 9 up is 3 down, reported within -5..+6.
    assert match.transposition_semitones == (semitones + 5) % 12 - 5


@pytest.mark.parametrize(
    ("melody", "parent_chords", "timbre"),
    [
        (TWINKLE, False, "triangle"),
        (TWINKLE, True, "piano"),
        (ODE_TO_JOY, False, "piano"),
        (ODE_TO_JOY, True, "triangle"),
    ],
    ids=["twinkle", "twinkle-parent-chords", "ode-to-joy", "ode-to-joy-parent-chords"],
)
def test_an_unrelated_melody_in_the_same_key_timbre_and_tempo_fails(
    melody: Melody, parent_chords: bool, timbre: str
) -> None:
    parent = _tune(FRERE_JACQUES, PHRASE_S, timbre=timbre)
    other = _tune(melody, PHRASE_S, timbre=timbre, parent_chords=parent_chords)
    assert melody_similarity(other, parent, RATE).similarity < THEME_LIMIT


def _no_melody(kind: str, seconds: float = 5.0) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    rng = np.random.default_rng(3)
    if kind == "saw drone on G":  # every harmonic of one note: a pitch class the tune uses
        mono = sum(0.3 / k * np.sin(2 * np.pi * 392.0 * k * t) for k in range(1, 12))
    elif kind == "white noise":
        mono = 0.1 * rng.standard_normal(t.size)
    else:  # drums: noise bursts on the beat at 100 bpm
        mono = 0.3 * rng.standard_normal(t.size) * np.exp(-((t * 100 / 60) % 1.0) * 30.0)
    return np.stack([mono, mono]).astype(np.float32)


@pytest.mark.parametrize("kind", ["saw drone on G", "white noise", "drums"])
@pytest.mark.parametrize("parent_chords", [False, True], ids=["melody", "melody-and-chords"])
def test_a_variation_without_a_melody_fails_however_its_notes_fit_the_parents(
    kind: str, parent_chords: bool
) -> None:
    """The warp lets a drone find the parent frames of its own pitch class (it read 0.83, over
    the limit): the frames' order must make the match."""
    parent = _tune(FRERE_JACQUES, PHRASE_S, parent_chords=parent_chords)
    match = melody_similarity(_no_melody(kind), parent, RATE)
    assert match.similarity < THEME_LIMIT and match.order < ORDER_MIN, match


TRILL: Melody = ((60, 1), (64, 1)) * 16  # two notes on every beat: one chroma under the hold


@pytest.mark.parametrize("seconds", [15.0, 25.0])
def test_a_variation_of_a_parent_whose_chroma_never_moves_is_judged_by_its_notes(
    seconds: float,
) -> None:
    """Shuffled frames of a two-note trill match as well as the trill: the order says nothing,
    and a true variation (faster, a tone up) failed on it."""
    chords = (0,) * 8  # C major held under it
    parent = tune(TRILL, 24.0, RATE, timbre="reed", chords=chords)
    variation = tune(TRILL, seconds, RATE, bpm=115.0, timbre="piano", semitones=2, chords=chords)
    assert melody_similarity(variation, parent, RATE).similarity >= THEME_LIMIT


def test_a_shorter_variation_is_compared_with_the_parents_start() -> None:
    # The parent plays Frere Jacques, then Twinkle: a 10 s variation of its start is Frere
    # Jacques, and Twinkle (heard later in the parent) is not the parent's start.
    parent = np.concatenate([_parent(), _tune(TWINKLE, PHRASE_S)], axis=1)
    start = melody_similarity(_tune(FRERE_JACQUES, 10.0, timbre="reed"), parent, RATE)
    assert start.similarity >= THEME_LIMIT
    assert start.parent_span_s == pytest.approx(10.0, abs=0.5)
    later = melody_similarity(_tune(TWINKLE, 10.0, timbre="reed"), parent, RATE)
    assert later.similarity < THEME_LIMIT


def test_a_variation_longer_than_its_parent_follows_the_parent_looped() -> None:
    # 30 s at 1.25x the tempo plays 37.5 s of the parent: it loops once and a half.
    variation = _tune(FRERE_JACQUES, 30.0, bpm=125.0, timbre="piano")
    match = melody_similarity(variation, _parent(), RATE)
    assert match.similarity >= THEME_LIMIT
    assert match.parent_span_s == pytest.approx(37.5, rel=0.05)


def test_mono_and_stereo_are_measured_alike() -> None:
    variation = _tune(FRERE_JACQUES, 15.0, bpm=110.0, timbre="reed", semitones=3)
    stereo = melody_similarity(variation, _parent(), RATE)
    mono = melody_similarity(variation[:1], _parent().mean(axis=0, keepdims=True), RATE)
    assert mono.similarity == pytest.approx(stereo.similarity, abs=0.01)
    assert mono.transposition_semitones == stereo.transposition_semitones


@pytest.mark.parametrize(
    ("variation", "message"),
    [
        (np.zeros((3, RATE * 2), np.float32), "variation must be shaped (1 or 2 channels"),
        (np.zeros(RATE * 2, np.float32), "variation must be shaped (1 or 2 channels"),
        (np.zeros((2, RATE // 2), np.float32), "variation is 0.50 s long"),
        (np.full((2, RATE * 2), np.nan, np.float32), "variation contains NaN"),
    ],
)
def test_bad_audio_is_refused_with_its_name(variation: np.ndarray, message: str) -> None:
    with pytest.raises(AudioError, match=message.replace("(", r"\(")):
        melody_similarity(variation, _parent(), RATE)


def test_a_bad_sample_rate_is_refused() -> None:
    with pytest.raises(AudioError, match="sample_rate must be positive, got 0"):
        melody_similarity(_parent(), _parent(), 0)
