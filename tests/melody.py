"""Synthesized tunes for the theme measure (numpy only), float32 shaped (channels, frames): a
known melody over a chord per bar, a bass and brushed noise hits, in one of a few timbres, at
any tempo and transposition. The tunes and timbres are not those of bench/theme_calibration.py,
which calibrates the limit these tests hold the measure to."""

from __future__ import annotations

import numpy as np

Melody = tuple[tuple[int, float], ...]  # (MIDI note, beats); note 0 is a rest

# 32 beats each, in C major.
FRERE_JACQUES: Melody = (
    *((60, 1), (62, 1), (64, 1), (60, 1)) * 2,
    *((64, 1), (65, 1), (67, 2)) * 2,
    *((67, 0.5), (69, 0.5), (67, 0.5), (65, 0.5), (64, 1), (60, 1)) * 2,
    *((60, 1), (55, 1), (60, 2)) * 2,
)
TWINKLE: Melody = (
    (60, 1), (60, 1), (67, 1), (67, 1), (69, 1), (69, 1), (67, 2),
    (65, 1), (65, 1), (64, 1), (64, 1), (62, 1), (62, 1), (60, 2),
    *((67, 1), (67, 1), (65, 1), (65, 1), (64, 1), (64, 1), (62, 2)) * 2,
)  # fmt: skip
ODE_TO_JOY: Melody = (
    (64, 1), (64, 1), (65, 1), (67, 1), (67, 1), (65, 1), (64, 1), (62, 1),
    (60, 1), (60, 1), (62, 1), (64, 1), (64, 1.5), (62, 0.5), (62, 2),
    (64, 1), (64, 1), (65, 1), (67, 1), (67, 1), (65, 1), (64, 1), (62, 1),
    (60, 1), (60, 1), (62, 1), (64, 1), (62, 1.5), (60, 0.5), (60, 2),
)  # fmt: skip
# One chord root per bar of 4 beats (C major triads on I, IV, V).
CHORDS: dict[Melody, tuple[int, ...]] = {
    FRERE_JACQUES: (0, 0, 0, 0, 0, 0, 0, 0),
    TWINKLE: (0, 5, 0, 7, 0, 5, 0, 7),
    ODE_TO_JOY: (0, 7, 0, 7, 0, 7, 0, 0),
}
_TRIAD = {0: (0, 4, 7), 5: (5, 9, 12), 7: (7, 11, 14)}
TIMBRES = ("triangle", "reed", "piano")


def _hz(note: float) -> float:
    return float(440.0 * 2.0 ** ((note - 69.0) / 12.0))


def _note(freq_hz: float, length_s: float, timbre: str, rate: int) -> np.ndarray:
    """One note of `timbre`: a triangle wave, a reed (strong 2nd-5th harmonics, slow attack), or
    a piano-like tone whose partials die away (0.5 s and faster)."""
    t = np.arange(round((length_s + 0.02) * rate)) / rate
    envelope = np.clip((length_s + 0.02 - t) / 0.02, 0.0, 1.0)
    if timbre == "triangle":
        amplitudes = {h: (-1.0) ** (h // 2) / h**2 for h in range(1, 12, 2)}
        envelope = envelope * np.clip(t / 0.005, 0.0, 1.0)
    elif timbre == "reed":
        amplitudes = {1: 0.4, 2: 1.0, 3: 0.8, 4: 0.6, 5: 0.5, 6: 0.2, 7: 0.1}
        envelope = envelope * np.clip(t / 0.06, 0.0, 1.0)
    elif timbre == "piano":
        amplitudes = {h: 1.0 / h for h in range(1, 9)}
        envelope = envelope * np.clip(t / 0.003, 0.0, 1.0) * np.exp(-t / 0.5)
    else:
        raise ValueError(f"timbre must be one of {TIMBRES}, got {timbre!r}")
    # sin(h x) by the recurrence sin((h + 1) x) = 2 cos(x) sin(h x) - sin((h - 1) x)
    x = 2.0 * np.pi * freq_hz * t
    twice_cos = 2.0 * np.cos(x)
    below, partial = np.zeros(t.size), np.sin(x)
    wave = np.zeros(t.size)
    for h in range(1, max(amplitudes) + 1):
        if h in amplitudes and h * freq_hz < 0.45 * rate:
            wave += amplitudes[h] * partial
        below, partial = partial, twice_cos * partial - below
    return wave * envelope


def _add(out: np.ndarray, start: int, sound: np.ndarray) -> None:
    end = min(out.size, start + sound.size)
    if end > start:
        out[start:end] += sound[: end - start]


def tune(
    melody: Melody,
    duration_s: float,
    sample_rate: int,
    *,
    bpm: float = 100.0,
    timbre: str = "triangle",
    semitones: int = 0,
    chords: tuple[int, ...] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Stereo `melody` repeated for `duration_s` at `bpm`, transposed by `semitones`, over its
    chords (a soft pad and a bass note per bar; `chords` replaces them) and a noise hit on every
    beat; peak -3 dBFS."""
    rng = np.random.default_rng(seed)
    beat_s = 60.0 / bpm
    out = np.zeros(round(duration_s * sample_rate))
    roots = CHORDS[melody] if chords is None else chords
    phrase_s = 4 * len(roots) * beat_s
    for k in range(int(np.ceil(duration_s / phrase_s))):
        at = k * phrase_s
        start_s = at
        for pitch, beats in melody:
            if pitch:
                sound = _note(_hz(pitch + 12 + semitones), beats * beat_s, timbre, sample_rate)
                _add(out, round(start_s * sample_rate), sound)
            start_s += beats * beat_s
        for bar, root in enumerate(roots):
            start = round((at + 4 * bar * beat_s) * sample_rate)
            for i in _TRIAD[root]:
                pad = _note(_hz(48 + i + semitones), 4 * beat_s, "triangle", sample_rate)
                _add(out, start, 0.15 * pad)
            bass = _note(_hz(36 + root + semitones), 4 * beat_s, "piano", sample_rate)
            _add(out, start, 0.5 * bass)
    hit_length = round(0.08 * sample_rate)
    hit = rng.standard_normal(hit_length) * np.exp(-np.arange(hit_length) / (0.02 * sample_rate))
    for b in range(int(duration_s / beat_s) + 1):
        _add(out, round(b * beat_s * sample_rate), 0.3 * hit)
    out *= 10 ** (-3.0 / 20.0) / np.abs(out).max()
    return np.stack([out, 0.9 * out]).astype(np.float32)
