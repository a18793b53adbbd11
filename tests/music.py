"""Synthesized music with a known tempo, bar grid and key (numpy only), float32 shaped
(channels, frames): a drum-and-bass groove for the analysis, an exactly periodic chord cycle
for loop seams."""

from __future__ import annotations

import numpy as np

from soundtrack.keys import parse_key

# One chord per bar, as (semitones of the chord root above the tonic, chord quality).
# Minor: i-iv-V-i in the harmonic minor, whose raised 7th (in V) tells it from its relative major.
_MAJOR_PROGRESSION = ((0, "major"), (5, "major"), (7, "major"), (0, "major"))
_MINOR_PROGRESSION = ((0, "minor"), (5, "minor"), (7, "major"), (0, "minor"))
_TRIADS = {"major": (0, 4, 7), "minor": (0, 3, 7)}
# chord_cycle's default levels, one per bar: the jump from the last bar to the first (+5 dB)
# is as large as the changes at its other bar lines (-4, +3, -5, +4, -6, +5, -2 dB), no larger.
_CYCLE_LEVELS_DB = (0.0, -4.0, -1.0, -6.0, -2.0, -8.0, -3.0, -5.0)
_CYCLE_ROOTS = (0, 9, 5, 7, 0, 9, 2, 7)  # I vi IV V I vi ii V in C major (MIDI 60 = C)


def _midi_hz(note: float, a4_hz: float = 440.0) -> float:
    return float(a4_hz * 2.0 ** ((note - 69.0) / 12.0))


def _add(out: np.ndarray, start: int, sound: np.ndarray) -> None:
    """Mix `sound` into `out` from sample `start`, cut at the end of `out`."""
    end = min(out.shape[-1], start + sound.shape[-1])
    if end > start:
        out[..., start:end] += sound[..., : end - start]


def _tone(freqs_hz: tuple[float, ...], length: int, rate: int, tau_s: float) -> np.ndarray:
    """Notes with 4 decaying harmonics each, a 5 ms attack and an exponential decay."""
    t = np.arange(length) / rate
    wave = np.zeros(length)
    for f in freqs_hz:
        for h in range(1, 5):
            wave += np.sin(2.0 * np.pi * f * h * t) / h**1.5
    envelope = (1.0 - np.exp(-t / 0.005)) * np.exp(-t / tau_s)
    return wave * envelope


def _drum_kit(rate: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One kick (a falling sine), snare (a tone under noise) and closed hi-hat (bright noise)."""
    t = np.arange(round(0.35 * rate)) / rate
    sweep_hz = 50.0 + 90.0 * np.exp(-t / 0.03)
    kick = np.sin(2.0 * np.pi * np.cumsum(sweep_hz) / rate) * np.exp(-t / 0.12)
    t = np.arange(round(0.2 * rate)) / rate
    snare = (0.5 * np.sin(2.0 * np.pi * 190.0 * t) + rng.standard_normal(t.size)) * np.exp(
        -t / 0.06
    )
    t = np.arange(round(0.06 * rate)) / rate
    hat = np.diff(rng.standard_normal(t.size + 1)) * np.exp(-t / 0.015)
    return {"kick": kick, "snare": 0.5 * snare, "hat": 0.12 * hat}


def drum_and_bass(
    bpm: float,
    key: str,
    duration_s: float,
    sample_rate: int = 44100,
    *,
    beats_per_bar: int = 4,
    lead_in_s: float = 0.0,
    seed: int = 0,
    a4_hz: float = 440.0,
) -> tuple[np.ndarray, list[int]]:
    """Stereo groove (peak -6 dBFS) and its true downbeats in samples. Kick on beat 1 (and on
    the middle beat when beats_per_bar is even), snare on the others, hats on eighths, a bass
    note and a chord pad attacked on each downbeat (I-IV-V-I; minor i-iv-V-i). The first
    downbeat is at `lead_in_s`, after a pickup of hats on the eighths before it; the notes are
    tuned to `a4_hz` (A=432 is 32 cents flat)."""
    tonic = parse_key(key)
    rng = np.random.default_rng(seed)
    frames = round(duration_s * sample_rate)
    beat = 60.0 / bpm * sample_rate
    bar = beats_per_bar * beat
    lead_in = lead_in_s * sample_rate
    drums = _drum_kit(sample_rate, rng)
    out = np.zeros((2, frames))
    progression = _MAJOR_PROGRESSION if tonic.mode == "major" else _MINOR_PROGRESSION
    downbeats = [round(lead_in + b * bar) for b in range(int((frames - lead_in) / bar) + 1)]
    downbeats = [d for d in downbeats if d < frames]
    for b, start in enumerate(downbeats):
        root, quality = progression[b % len(progression)]
        root_midi = 48 + (tonic.tonic + root) % 12  # C3..B3
        length = round(bar) + round(0.5 * sample_rate)
        bass_hz = _midi_hz(root_midi - 12, a4_hz)
        bass = _tone((bass_hz,), length, sample_rate, 0.8 * bar / sample_rate)
        chord = tuple(_midi_hz(root_midi + 12 + i, a4_hz) for i in _TRIADS[quality])
        pad = _tone(chord, length, sample_rate, bar / sample_rate)
        _add(out, start, np.stack([0.5 * bass + 0.12 * pad, 0.5 * bass + 0.18 * pad]))
        for i in range(beats_per_bar):
            onset = start + round(i * beat)
            middle = beats_per_bar % 2 == 0 and i == beats_per_bar // 2
            hit = drums["kick"] if i == 0 or middle else drums["snare"]
            _add(out, onset, np.stack([hit, hit]))
    # Hats on every eighth from the pickup on; slightly right of centre.
    eighth = beat / 2.0
    first = -int(lead_in // eighth)
    for k in range(first, int((frames - lead_in) / eighth) + 1):
        _add(out, round(lead_in + k * eighth), np.stack([0.8 * drums["hat"], drums["hat"]]))
    out *= 10 ** (-6.0 / 20.0) / np.abs(out).max()
    return out.astype(np.float32), downbeats


def compound_groove(
    eighth_bpm: float,
    duration_s: float,
    sample_rate: int = 44100,
    *,
    eighths_level: float = 0.5,
    lead_in_s: float = 0.5,
) -> tuple[np.ndarray, list[int]]:
    """A 6/8 groove counted in eighths (peak -6 dBFS) and its true downbeats in samples: kick
    and a bass note on each bar's first eighth, snare on its fourth (the dotted-quarter pulse),
    a hi-hat on every eighth at `eighths_level` of its full level (0: the eighths unheard, as
    in a slow jig or a barcarolle)."""
    drums = _drum_kit(sample_rate, np.random.default_rng(0))
    frames = round(duration_s * sample_rate)
    eighth = 60.0 / eighth_bpm * sample_rate
    out = np.zeros((2, frames))
    downbeats = []
    k = 0
    while (start := round(lead_in_s * sample_rate + k * eighth)) < frames:
        if k % 6 == 0:
            downbeats.append(start)
            root = 36 + (0, 5, 7, 0)[(k // 6) % 4]
            bass = 0.5 * _tone((_midi_hz(root),), round(6.5 * eighth), sample_rate, 1.0)
            _add(out, start, np.stack([drums["kick"], drums["kick"]]))
            _add(out, start, np.stack([bass, bass]))
        elif k % 6 == 3:
            _add(out, start, np.stack([drums["snare"], drums["snare"]]))
        _add(out, start, eighths_level * np.stack([drums["hat"], drums["hat"]]))
        k += 1
    out *= 10 ** (-6.0 / 20.0) / np.abs(out).max()
    return out.astype(np.float32), downbeats


def chord_cycle(
    duration_s: float,
    sample_rate: int,
    *,
    bpm: float = 120.0,
    bars_per_cycle: int = 8,
    beats_per_bar: int = 4,
    levels_db: tuple[float, ...] = _CYCLE_LEVELS_DB,
    peak_dbfs: float = -6.0,
) -> np.ndarray:
    """Stereo chords, one attacked on each bar's downbeat at its own level (`levels_db`, one per
    bar), a phrase that repeats exactly every cycle of round(bars * bar length) samples (16 s at
    120 bpm: 705600 samples at 44.1 kHz); each chord's tail rings on into the next cycle."""
    if len(levels_db) != bars_per_cycle:
        raise ValueError(f"levels_db needs {bars_per_cycle} levels, got {len(levels_db)}")
    bar = beats_per_bar * 60.0 / bpm * sample_rate
    cycle = round(bars_per_cycle * bar)
    tail = round(4.0 * sample_rate)
    one = np.zeros(cycle + tail)
    for b, level_db in enumerate(levels_db):
        degree = _CYCLE_ROOTS[b % len(_CYCLE_ROOTS)]
        quality = "minor" if degree in (2, 9) else "major"  # ii and vi
        chord = (_midi_hz(48 + degree), *(_midi_hz(60 + degree + i) for i in _TRIADS[quality]))
        sound = _tone(chord, tail, sample_rate, 0.7)
        _add(one, round(b * bar), 10 ** (level_db / 20.0) * sound)
    # Fold what rings past the cycle's end onto its start: tiled, the cycle is seamless.
    periodic = one[:cycle].copy()
    overflow = one[cycle:]
    for start in range(0, overflow.size, cycle):
        piece = overflow[start : start + cycle]
        periodic[: piece.size] += piece
    frames = round(duration_s * sample_rate)
    mono = np.resize(periodic, frames)
    mono *= 10 ** (peak_dbfs / 20.0) / np.abs(periodic).max()
    return np.stack([0.9 * mono, mono]).astype(np.float32)


def drone(key: str, duration_s: float, sample_rate: int) -> np.ndarray:
    """Stereo sustained tonic triad over its root, swelling slowly (peak -6 dBFS): no pulse."""
    tonic = parse_key(key)
    root = 48 + tonic.tonic
    notes = (root - 12, *(root + i for i in _TRIADS[tonic.mode]))
    t = np.arange(round(duration_s * sample_rate)) / sample_rate
    mono = sum(np.sin(2.0 * np.pi * _midi_hz(n) * t) for n in notes)
    mono = mono * (0.7 + 0.3 * np.sin(2.0 * np.pi * t / 7.0))
    mono *= 10 ** (-6.0 / 20.0) / np.abs(mono).max()
    return np.stack([mono, mono]).astype(np.float32)


def clicks(bpm: float, duration_s: float, sample_rate: int) -> np.ndarray:
    """Mono metronome (peak -6 dBFS): a 1500 Hz ping with an instant attack and a 4 ms decay on
    every beat, each the sharpest onset a frame can hold."""
    t = np.arange(round(0.03 * sample_rate)) / sample_rate
    ping = np.sin(2.0 * np.pi * 1500.0 * t) * np.exp(-t / 0.004)
    out = np.zeros(round(duration_s * sample_rate))
    for k in range(int(duration_s * bpm / 60.0) + 1):
        _add(out, round(k * 60.0 / bpm * sample_rate), ping)
    return (0.5 * out / np.abs(out).max())[None].astype(np.float32)


def held_chord(
    bpm: float, duration_s: float, sample_rate: int, *, downbeat_accent: float = 1.0
) -> np.ndarray:
    """Stereo (peak -10.5 dBFS): one chord held throughout, nothing changing, and a 55 Hz
    kick on every beat, the first of each 4/4 bar `downbeat_accent` times as strong: the kicks
    are the peaks, the chord most of the loudness, and only the accent marks the bars."""
    t = np.arange(round(duration_s * sample_rate)) / sample_rate
    mono = sum(np.sin(2.0 * np.pi * f * t) for f in (110.0, 165.0, 220.0, 275.0, 330.0)) / 5
    kick_t = t[: round(0.1 * sample_rate)]
    attack = np.minimum(1.0, kick_t / 0.001)  # 1 ms, as a drum's: not a click at a loop's seam
    kick = 2.0 * np.sin(2.0 * np.pi * 55.0 * kick_t) * np.exp(-kick_t / 0.02) * attack
    for k in range(int(duration_s * bpm / 60.0) + 1):
        _add(
            mono, round(k * 60.0 / bpm * sample_rate), kick * (downbeat_accent if k % 4 == 0 else 1)
        )
    mono *= 0.3 / np.abs(mono).max()
    return np.stack([mono, np.roll(mono, 3)]).astype(np.float32)


def struck_bars(bars: int, rate: int, *, tail_s: float = 0.0) -> np.ndarray:
    """Beats at exactly 120 bpm, each a 1 kHz tone struck at zero phase (one sharp kink, as a
    synth pluck with no attack makes), the downbeats louder, over a 220 Hz bed whole in every
    bar: music that repeats bar for bar to the sample; `tail_s` of a last beat after the bars."""
    beat = rate // 2
    frames = bars * 4 * beat + round(tail_s * rate)
    t = np.arange(frames) / rate
    audio = 0.1 * np.sin(2 * np.pi * 220.0 * t)
    hit = np.arange(beat) / rate
    pluck = np.sin(2 * np.pi * 1000.0 * hit) * np.exp(-hit / 0.05)
    for n, start in enumerate(range(0, frames, beat)):
        piece = pluck[: frames - start] * (0.5 if n % 4 == 0 else 0.25)
        audio[start : start + piece.size] += piece
    return np.stack([audio, audio]).astype(np.float32)
