"""Calibrate the loop-seam gates: seam metrics of good loops (our mastering) vs mis-cut ones.

Good loops: master(loop=True) of synthetic renders at 32 kHz (MusicGen's rate), as mastered and
as decoded from their OGG and MP3. Mis-cuts: the master with its last 5-20000 samples dropped,
so the wrap lands at a random point, each judged against its own (wrong) exact bar grid. Each
master is also measured against its bar lines (its tempo's grid, or 120 bpm for beds; each off
by up to BAR_JITTER_MS, as an analysis places them), for the loudness excess; then loudness
defects, raw and against bar lines.
Run: python bench/calibrate_seam.py  (about 2 min; prints the tables in docs/gates.md)
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soundtrack.audio import read_audio
from soundtrack.encode import encode
from soundtrack.master import Master, master
from soundtrack.measure import measure
from soundtrack.spec import LOUDNESS_PROFILES, Mastering
from tests.music import chord_cycle
from tests.signals import music_like, pink_noise, sine, transients

RENDER_RATE = 32000
LOOP_S = 10.0
MISCUTS_PER_LOOP = 20
BAR_JITTER_MS = 10.0
THRESHOLDS = (2, 3, 4, 6, 8)


def renders() -> Iterator[tuple[str, str, float, np.ndarray]]:
    """(family, name, bpm, audio): tonal music, music with noise/drums, and noise-like beds."""
    n = LOOP_S + 3.0
    for seed in range(4):
        for bpm in (80, 120, 150):
            audio = music_like(n, RENDER_RATE, bpm=bpm, seed=seed)
            yield "tonal", f"music s{seed} {bpm}bpm", bpm, audio
    chord = sum(sine(f, -12.0, n, RENDER_RATE) for f in (110.0, 277.2, 330.0))
    yield "tonal", "chord", 120, np.asarray(chord, dtype=np.float32)
    yield "tonal", "chord cycle (a chord per bar)", 120, chord_cycle(n, RENDER_RATE)
    for seed in range(3):
        bed = pink_noise(-30.0, n, RENDER_RATE, seed=seed)
        hits = 0.09 * transients(n, RENDER_RATE, seed=seed)
        audio = music_like(n, RENDER_RATE, seed=seed) + hits + bed
        yield "mixed", f"music+hiss s{seed}", 120, audio
        hits = 0.5 * transients(n, RENDER_RATE, seed=seed, hits_per_s=2.0)
        audio = music_like(n, RENDER_RATE, bpm=100, seed=seed) + hits
        yield "mixed", f"music+drums s{seed}", 100, audio
    yield "noisy", "pink noise", 120, pink_noise(-20.0, n, RENDER_RATE)
    for seed in range(3):
        hits = transients(n, RENDER_RATE, seed=seed, hits_per_s=3.0 + seed)
        yield "noisy", f"drum hits s{seed}", 120, hits


def bar_lines(bpm: float, frames: int, rate: int, rng: np.random.Generator) -> list[int]:
    """Downbeats in 4/4 from the first frame, each off by up to BAR_JITTER_MS."""
    bar = 4 * 60.0 / bpm * rate
    jitter = BAR_JITTER_MS / 1000.0 * rate
    bars = (k * bar + rng.uniform(-jitter, jitter) for k in range(1, int(frames / bar) + 1))
    return [round(b) for b in bars if 0 < b < frames]


def decoded_jumps(m: Master, out_dir: Path) -> list[float]:
    """Seam jump of the loop as decoded from its OGG and MP3."""
    tags = {"title": "t", "soundtrack": "calibration", "track_id": "t", "spec_hash": "0"}
    jumps = []
    for file in encode(m, ("ogg", "mp3"), out_dir, "loop", tags=tags):
        audio, rate = read_audio(file.path)
        seam = measure(audio, rate, loop_start=0, loop_length=m.audio.shape[1]).seam_jump_ratio
        assert seam is not None
        jumps.append(seam)
    return jumps


def main() -> None:
    rng = np.random.default_rng(1)
    mastering = Mastering(loudness=LOUDNESS_PROFILES["console"])
    out_dir = Path(tempfile.mkdtemp())
    print(
        "| render | family | good: jump (master / ogg / mp3) "
        "| good: loudness LU (raw / excess) | mis-cut: jump (min / median) |"
    )
    print("|---|---|---|---|---|")
    good: dict[str, list[tuple[float, float, float]]] = {}
    bad: dict[str, list[float]] = {}
    for family, name, bpm, audio in renders():
        m = master(audio.astype(np.float32), RENDER_RATE, mastering, loop=True, duration_s=LOOP_S)
        frames = m.audio.shape[1]
        bars = bar_lines(bpm, frames, m.sample_rate, rng)
        ok = measure(m.audio, m.sample_rate, loop_start=0, loop_length=frames, bar_lines=bars)
        assert ok.seam_jump_ratio is not None and ok.seam_loudness_change_lu is not None
        assert ok.seam_loudness_excess_lu is not None
        ogg_jump, mp3_jump = decoded_jumps(m, out_dir)
        worst = max(ok.seam_jump_ratio, ogg_jump, mp3_jump)
        good.setdefault(family, []).append(
            (worst, ok.seam_loudness_change_lu, ok.seam_loudness_excess_lu)
        )
        cuts = []
        bar_frames = 4 * 60.0 / bpm * m.sample_rate
        for _ in range(MISCUTS_PER_LOOP):
            length = frames - int(rng.integers(5, 20000))
            # Judged as a bar loop is, against its own exact grid: a mis-cut's is wrong too.
            count = max(1, round(length / bar_frames))
            grid = [round(length * k / count) for k in range(1, count)]
            cut = measure(m.audio, m.sample_rate, loop_start=0, loop_length=length, bar_lines=grid)
            assert cut.seam_jump_ratio is not None
            cuts.append(cut.seam_jump_ratio)
        bad.setdefault(family, []).extend(cuts)
        raw = np.array(cuts)
        print(
            f"| {name} | {family} | {ok.seam_jump_ratio:.2f} / {ogg_jump:.2f} / {mp3_jump:.2f} "
            f"| {ok.seam_loudness_change_lu:.2f} / {ok.seam_loudness_excess_lu:.2f} "
            f"| {raw.min():.2f} / {np.median(raw):.1f} |"
        )
    print()
    print(
        "| family | good loops: max jump (any file) | max loudness change / excess "
        "| mis-cuts passing at 2/3/4/6/8: jump |"
    )
    print("|---|---|---|---|")
    for family, values in good.items():
        raw = np.array(bad[family])
        passing = " / ".join(f"{np.mean(raw <= t):.0%}" for t in THRESHOLDS)
        print(
            f"| {family} | {max(v[0] for v in values):.2f} "
            f"| {max(v[1] for v in values):.2f} / {max(v[2] for v in values):.2f} "
            f"| {passing} |"
        )
    print()
    loudness_defects(mastering, rng)


def loudness_defects(mastering: Mastering, rng: np.random.Generator) -> None:
    """Seam loudness, raw and in excess of the bar lines, of loops with a level defect at the
    wrap, and of a seamless 16 s chord cycle whose level changes at every bar line."""
    print("| loop | seam loudness change LU | bar lines' largest | excess |")
    print("|---|---|---|---|")
    cases = []
    for bpm in (100, 120, 150):
        render = music_like(LOOP_S + 3.0, RENDER_RATE, bpm=bpm)
        faded = master(render, RENDER_RATE, mastering, loop=False, duration_s=LOOP_S)
        cases.append((f"non-loop master (2 s fade-out), {bpm} bpm", bpm, faded.audio))
        looped = master(render, RENDER_RATE, mastering, loop=True, duration_s=LOOP_S).audio.copy()
        looped[:, looped.shape[1] // 2 :] *= 0.5
        cases.append((f"second half 6 dB quieter, {bpm} bpm", bpm, looped))
    cycle = chord_cycle(16.0 + 1.0, RENDER_RATE)
    looped = master(cycle, RENDER_RATE, mastering, loop=True, duration_s=16.0).audio
    cases.append(("chord cycle (a chord per bar, each its own level), 16 s", 120, looped))
    for name, bpm, audio in cases:
        frames = audio.shape[1]
        bars = bar_lines(bpm, frames, mastering.sample_rate, rng)
        r = measure(audio, mastering.sample_rate, loop_start=0, loop_length=frames, bar_lines=bars)
        print(
            f"| {name} | {r.seam_loudness_change_lu:.2f} | {number(r.bar_loudness_change_lu)} "
            f"| {r.seam_loudness_excess_lu:.2f} |"
        )


def number(value: float | None) -> str:
    """A table cell: two decimals, or a dash for no value."""
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
