"""Calibrate the loop-seam gates: seam metrics of good loops (our mastering) vs mis-cut ones.

Good loops: master(loop=True) of synthetic renders at 32 kHz (MusicGen's rate), as mastered and
as decoded from their OGG and MP3. Mis-cuts: the master with its last 5-20000 samples dropped,
so the wrap lands at a random point.
Run: python bench/calibrate_seam.py  (about 1 min; prints the tables in docs/gates.md)
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
from tests.signals import music_like, pink_noise, sine, transients

RENDER_RATE = 32000
LOOP_S = 10.0
MISCUTS_PER_LOOP = 20


def renders() -> Iterator[tuple[str, str, np.ndarray]]:
    """(family, name, audio): tonal music, music with noise/drums, and noise-like beds."""
    n = LOOP_S + 3.0
    for seed in range(4):
        for bpm in (80, 120, 150):
            yield "tonal", f"music s{seed} {bpm}bpm", music_like(n, RENDER_RATE, bpm=bpm, seed=seed)
    chord = sum(sine(f, -12.0, n, RENDER_RATE) for f in (110.0, 277.2, 330.0))
    yield "tonal", "chord", np.asarray(chord, dtype=np.float32)
    for seed in range(3):
        bed = pink_noise(-30.0, n, RENDER_RATE, seed=seed)
        hits = 0.09 * transients(n, RENDER_RATE, seed=seed)
        yield "mixed", f"music+hiss s{seed}", music_like(n, RENDER_RATE, seed=seed) + hits + bed
        hits = 0.5 * transients(n, RENDER_RATE, seed=seed, hits_per_s=2.0)
        yield "mixed", f"music+drums s{seed}", music_like(n, RENDER_RATE, bpm=100, seed=seed) + hits
    yield "noisy", "pink noise", pink_noise(-20.0, n, RENDER_RATE)
    for seed in range(3):
        hits = transients(n, RENDER_RATE, seed=seed, hits_per_s=3.0 + seed)
        yield "noisy", f"drum hits s{seed}", hits


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
        "| render | family | good: jump (master / ogg / mp3) | good: loudness LU "
        "| mis-cut: jump (min / median) |"
    )
    print("|---|---|---|---|---|")
    good: dict[str, list[tuple[float, float]]] = {}
    bad: dict[str, list[float]] = {}
    for family, name, audio in renders():
        m = master(audio.astype(np.float32), RENDER_RATE, mastering, loop=True, duration_s=LOOP_S)
        frames = m.audio.shape[1]
        ok = measure(m.audio, m.sample_rate, loop_start=0, loop_length=frames)
        assert ok.seam_jump_ratio is not None and ok.seam_loudness_change_lu is not None
        ogg_jump, mp3_jump = decoded_jumps(m, out_dir)
        worst = max(ok.seam_jump_ratio, ogg_jump, mp3_jump)
        good.setdefault(family, []).append((worst, ok.seam_loudness_change_lu))
        cuts = []
        for _ in range(MISCUTS_PER_LOOP):
            length = frames - int(rng.integers(5, 20000))
            cut = measure(m.audio, m.sample_rate, loop_start=0, loop_length=length)
            assert cut.seam_jump_ratio is not None
            cuts.append(cut.seam_jump_ratio)
        bad.setdefault(family, []).extend(cuts)
        print(
            f"| {name} | {family} | {ok.seam_jump_ratio:.2f} / {ogg_jump:.2f} / {mp3_jump:.2f} "
            f"| {ok.seam_loudness_change_lu:.2f} "
            f"| {min(cuts):.2f} / {np.median(cuts):.1f} |"
        )
    print()
    print(
        "| family | good loops: max jump (any file) | max loudness change "
        "| mis-cuts passing at 2/3/4/6/8 |"
    )
    print("|---|---|---|---|")
    for family, values in good.items():
        jumps = np.array(bad[family])
        passing = " / ".join(f"{np.mean(jumps <= t):.0%}" for t in (2, 3, 4, 6, 8))
        print(
            f"| {family} | {max(v[0] for v in values):.2f} | {max(v[1] for v in values):.2f} "
            f"| {passing} |"
        )


if __name__ == "__main__":
    main()
