"""Calibrate the theme gate: melody_similarity of variations of a melody against unrelated
melodies, on synthesized music (numpy only; melodies, seeds and timbres of its own, kept apart
from the tests' tests/melody.py).

A parent is a random melody of 8-16 notes from a major or minor scale, over a triad per bar and
a bass line, with drums and hiss under it, 20-30 s at 80-140 bpm, at 32 kHz (MusicGen's rate).
Positives: the same melody rendered as the renderer makes a variation (from the parent's start,
the parent looped when shorter, 15-30 s) in another timbre, at 0.8-1.3x the tempo, transposed
-5..+6 semitones, with a harmony a third under the melody or the chords arpeggiated.
Negatives, in the parent's key, timbre and tempo: another melody over other chords, and (the
hardest case) another melody over the parent's own chords and bass. No melody at all: a drone on
one of the key's notes in any timbre, and noise or the drums alone (15-30 s each).
Run: python bench/theme_calibration.py  (about 1.5 min; prints the table in docs/gates.md);
--seed N draws other pairs, to check the limit on pairs it was not chosen on.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soundtrack.theme import ORDER_MIN, THEME_LIMIT, melody_similarity

RATE = 32000
PARENTS = 40
SEED = 20250917
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
TIMBRES = ("sine", "saw", "square", "pluck", "fm", "organ")
CHORD_DEGREES = (0, 1, 3, 4, 5)  # I ii IV V vi (i ii° iv v VI in minor)
POSITIVES = ("variation, harmony a third under", "variation, chords arpeggiated")
NEGATIVES = ("unrelated melody, own chords", "unrelated melody, parent's chords")
NO_MELODY = ("drone on a note of the key", "noise or drums alone")


@dataclass(frozen=True)
class Event:
    """One note: times in seconds, pitch as a scale degree (0 = tonic, 7 = its octave)."""

    start_s: float
    length_s: float
    degree: int
    voice: str  # melody, harmony, chord, bass


@dataclass(frozen=True)
class Piece:
    """A melody over one chord per bar, in beats; repeated, it fills any length."""

    tonic: int  # pitch class
    mode: str
    melody: tuple[tuple[float, float, int], ...]  # (start beat, beats, degree)
    chords: tuple[int, ...]  # chord root degree, one per bar of 4 beats

    @property
    def phrase_beats(self) -> int:
        return 4 * len(self.chords)


def random_piece(rng: np.random.Generator, tonic: int, mode: str) -> Piece:
    """8-16 notes, mostly steps, some leaps, a few rests; a random diatonic progression."""
    notes = []
    beat = 0.0
    degree = int(rng.integers(2, 8))
    for _ in range(int(rng.integers(8, 17))):
        length = float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0]))
        notes.append((beat, length, degree))
        beat += length + float(rng.choice([0.0, 0.0, 0.0, 0.5]))
        step = int(rng.choice([-2, -1, -1, 1, 1, 2, -4, 3, 4]))
        # Turn back at the range's ends: clipped, a walk sticks there and repeats one note.
        degree = degree + step if 0 <= degree + step <= 11 else degree - step
    bars = int(np.ceil(beat / 4.0))
    chords = (0, *(int(rng.choice(CHORD_DEGREES)) for _ in range(bars - 1)))
    return Piece(tonic, mode, tuple(notes), chords)


def events(piece: Piece, bpm: float, span_s: float, *, arpeggio: bool = False) -> list[Event]:
    """The piece repeated over `span_s` seconds at `bpm`: melody, triads, a bass on each beat."""
    beat_s = 60.0 / bpm
    out = []
    phrase_s = piece.phrase_beats * beat_s
    for k in range(int(np.ceil(span_s / phrase_s))):
        at = k * phrase_s
        for start, beats, degree in piece.melody:
            out.append(Event(at + start * beat_s, beats * beat_s, degree, "melody"))
        for bar, root in enumerate(piece.chords):
            bar_s = at + 4 * bar * beat_s
            for i in range(4):
                out.append(Event(bar_s + i * beat_s, 0.9 * beat_s, root - 7, "bass"))
            for n, third in enumerate((0, 2, 4)):
                if arpeggio:
                    for i in range(n, 8, 3):
                        out.append(Event(bar_s + i * beat_s / 2, beat_s, root + third, "chord"))
                else:
                    out.append(Event(bar_s, 4 * beat_s, root + third, "chord"))
    return [e for e in out if e.start_s < span_s]


def variation_events(
    parent: list[Event], parent_s: float, tempo_ratio: float, length_s: float
) -> list[Event]:
    """What a renderer conditioned on the parent plays: the parent from its start, looped when
    shorter, over length_s * tempo_ratio of its time, played tempo_ratio times faster."""
    span = length_s * tempo_ratio
    out = []
    for k in range(int(np.ceil(span / parent_s))):
        for e in parent:
            start = e.start_s + k * parent_s
            if start < span:
                out.append(
                    replace(e, start_s=start / tempo_ratio, length_s=e.length_s / tempo_ratio)
                )
    return out


def with_harmony(notes: list[Event]) -> list[Event]:
    """The melody doubled a diatonic third under it."""
    thirds = [
        replace(e, degree=e.degree - 2, voice="harmony") for e in notes if e.voice == "melody"
    ]
    return notes + thirds


def midi(degree: int, tonic: int, mode: str, octave_base: int) -> int:
    scale = SCALES[mode]
    return octave_base + tonic + 12 * (degree // 7) + scale[degree % 7]


def tone(freq_hz: float, length_s: float, timbre: str) -> np.ndarray:
    """One note in a timbre: additive harmonics under an envelope, 30 ms release."""
    n = round((length_s + 0.03) * RATE)
    t = np.arange(n) / RATE
    release = np.clip((length_s + 0.03 - t) / 0.03, 0.0, 1.0)
    attack = np.clip(t / 0.01, 0.0, 1.0)
    phase = 2.0 * np.pi * freq_hz * t
    if timbre == "fm":
        index = 2.5 * np.exp(-t / 0.25)
        return np.sin(phase + index * np.sin(phase)) * attack * release * np.exp(-t / 1.5)
    partials: dict[str, Callable[[int], float]] = {
        "sine": lambda h: 1.0 if h == 1 else 0.0,
        "saw": lambda h: 1.0 / h,
        "square": lambda h: 1.0 / h if h % 2 else 0.0,
        "pluck": lambda h: 1.0 / h,
        "organ": lambda h: {1: 1.0, 2: 0.8, 3: 0.6, 4: 0.35, 6: 0.2, 8: 0.2}.get(h, 0.0),
    }
    wave = np.zeros(n)
    for h in range(1, 13):
        amplitude = partials[timbre](h)
        if amplitude == 0.0 or h * freq_hz > 0.45 * RATE:
            continue
        partial = amplitude * np.sin(h * phase)
        if timbre == "pluck":
            partial *= np.exp(-t * (2.0 + 1.5 * h))
        wave += partial
    return wave * attack * release


def drums(bpm: float, length_s: float, rng: np.random.Generator) -> np.ndarray:
    """Kick on 1 and 3, snare on 2 and 4, hats on the eighths, and hiss throughout."""
    out = rng.standard_normal(round(length_s * RATE)) * 0.01
    t = np.arange(round(0.3 * RATE)) / RATE
    kick = np.sin(2.0 * np.pi * np.cumsum(45.0 + 100.0 * np.exp(-t / 0.04)) / RATE)
    kick *= np.exp(-t / 0.1)
    snare = rng.standard_normal(t.size) * np.exp(-t / 0.05) * 0.6
    hat = np.diff(rng.standard_normal(t.size + 1)) * np.exp(-t / 0.01) * 0.15
    eighth = 30.0 / bpm
    for k in range(int(length_s / eighth) + 1):
        hit = hat if k % 2 else (kick if k % 4 == 0 else snare)
        add(out, round(k * eighth * RATE), hit)
    return out


def add(out: np.ndarray, start: int, sound: np.ndarray) -> None:
    end = min(out.size, start + sound.size)
    if end > start:
        out[start:end] += sound[: end - start]


def render(
    notes: list[Event],
    tonic: int,
    mode: str,
    timbre: str,
    bpm: float,
    length_s: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Stereo float32 at RATE, peak -3 dBFS: the lead and its harmony in `timbre`, chords in a
    soft pad, a plucked bass, drums at `bpm`."""
    out = np.zeros(round(length_s * RATE))
    voices = {
        "melody": (timbre, 72, 1.0),
        "harmony": (timbre, 72, 0.5),
        "chord": ("organ" if timbre != "organ" else "sine", 60, 0.25),
        "bass": ("pluck", 48, 0.6),
    }
    for e in notes:
        name, base, level = voices[e.voice]
        freq = 440.0 * 2.0 ** ((midi(e.degree, tonic, mode, base) - 69) / 12.0)
        add(out, round(e.start_s * RATE), level * tone(freq, e.length_s, name))
    out += 0.5 * drums(bpm, length_s, rng)
    out *= 10 ** (-3.0 / 20.0) / np.abs(out).max()
    return np.stack([out, 0.95 * out]).astype(np.float32)


@dataclass(frozen=True)
class Pair:
    family: str
    name: str
    variation: np.ndarray
    parent: np.ndarray
    shift: int  # semitones the variation is transposed by (positives)


def pairs(rng: np.random.Generator, parents: int, quiet: np.random.Generator) -> list[Pair]:
    """For each parent: one variation and one unrelated melody of each kind, and one of each
    kind without a melody (drawn from `quiet`, so the others are the draws they always were)."""
    out = []
    for p in range(parents):
        mode = "major" if p % 2 else "minor"
        tonic = int(rng.integers(0, 12))
        piece = random_piece(rng, tonic, mode)
        bpm = float(rng.uniform(80.0, 140.0))
        timbre = str(rng.choice(TIMBRES))
        parent_s = float(rng.uniform(20.0, 30.0))
        notes = events(piece, bpm, parent_s)
        parent = render(notes, tonic, mode, timbre, bpm, parent_s, rng)
        for v in range(2):
            ratio = float(rng.uniform(0.8, 1.3))
            shift = int(rng.integers(-5, 7))
            length_s = float(rng.uniform(15.0, 30.0))
            other = str(rng.choice([t for t in TIMBRES if t != timbre]))
            if v == 0:
                moved = with_harmony(variation_events(notes, parent_s, ratio, length_s))
            else:
                arpeggiated = events(piece, bpm, parent_s, arpeggio=True)
                moved = variation_events(arpeggiated, parent_s, ratio, length_s)
            audio = render(moved, tonic + shift, mode, other, bpm * ratio, length_s, rng)
            family = POSITIVES[v]
            name = f"p{p} {timbre}->{other} x{ratio:.2f} {shift:+d} st {length_s:.0f} s"
            out.append(Pair(family, name, audio, parent, shift))
        for family in NEGATIVES:
            other_piece = random_piece(rng, tonic, mode)
            if family == NEGATIVES[1]:
                other_piece = replace(other_piece, chords=piece.chords)
            length_s = float(rng.uniform(15.0, 30.0))
            notes_b = events(other_piece, bpm, length_s)
            audio = render(notes_b, tonic, mode, timbre, bpm, length_s, rng)
            out.append(Pair(family, f"p{p} {timbre} {length_s:.0f} s", audio, parent, 0))
        length_s = float(quiet.uniform(15.0, 30.0))
        degree = int(quiet.integers(0, 7))
        drone = [Event(0.0, length_s, degree, "melody")]
        other = str(quiet.choice(TIMBRES))
        audio = render(drone, tonic, mode, other, bpm, length_s, quiet)
        out.append(Pair(NO_MELODY[0], f"p{p} {other} degree {degree}", audio, parent, 0))
        hiss = quiet.standard_normal(round(length_s * RATE)) * (0.1 if p % 2 else 0.0)
        noise = hiss + (0.0 if p % 2 else drums(bpm, length_s, quiet))
        noise = (10 ** (-3.0 / 20.0) * noise / np.abs(noise).max()).astype(np.float32)
        name = "white noise" if p % 2 else "drums"
        out.append(Pair(NO_MELODY[1], f"p{p} {name}", np.stack([noise, noise]), parent, 0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--parents", type=int, default=PARENTS)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    all_pairs = pairs(rng, args.parents, np.random.default_rng(args.seed + 1))
    print(f"synthesized {len(all_pairs)} pairs in {time.perf_counter() - started:.0f} s")
    families = (*POSITIVES, *NEGATIVES, *NO_MELODY)
    scores: dict[str, list[float]] = {family: [] for family in families}
    orders: dict[str, list[float]] = {family: [] for family in families}
    wrong_shift = 0
    seconds = []
    for pair in all_pairs:
        started = time.perf_counter()
        match = melody_similarity(pair.variation, pair.parent, RATE)
        seconds.append(time.perf_counter() - started)
        scores[pair.family].append(match.similarity)
        orders[pair.family].append(match.order)
        if pair.family in POSITIVES and (match.transposition_semitones - pair.shift) % 12:
            wrong_shift += 1
            print(f"  wrong transposition: {pair.name}: {match}")
    print()
    print("| pairs | count | similarity: min | median | max | order: min | max |")
    print("|---|---|---|---|---|---|---|")
    for family, values in scores.items():
        v, o = np.array(values), np.array(orders[family])
        print(
            f"| {family} | {v.size} | {v.min():.3f} | {np.median(v):.3f} | {v.max():.3f} "
            f"| {o.min():.3f} | {o.max():.3f} |"
        )
    worst_positive = min(min(scores[f]) for f in POSITIVES)
    best_negative = max(max(scores[f]) for f in (*NEGATIVES, *NO_MELODY))
    lowest_order = min(min(orders[f]) for f in POSITIVES)
    highest_order = max(max(orders[f]) for f in NO_MELODY)
    print()
    print(f"margin (worst variation - best unrelated): {worst_positive - best_negative:.3f}")
    print(f"limit midway: {(worst_positive + best_negative) / 2:.3f} (THEME_LIMIT: {THEME_LIMIT})")
    print(
        f"order: variations {lowest_order:.3f} at least, no melody {highest_order:.3f} at most; "
        f"midway {(lowest_order + highest_order) / 2:.3f} (ORDER_MIN: {ORDER_MIN})"
    )
    total = len(POSITIVES) * args.parents
    print(f"variations with a wrong transposition: {wrong_shift} of {total}")
    print(f"melody_similarity: median {np.median(seconds) * 1000:.0f} ms per pair")


if __name__ == "__main__":
    main()
