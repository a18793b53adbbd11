"""Theme similarity: does a variation still carry its parent's melody?

Chroma of a mono mix at 22050 Hz (STFT of 4096 points every 93 ms); each pitch class holds its
peak for HOLD_S (a plucked note counts as long as a held one), and each frame is log-compressed,
loses its mean (drums and hiss fill every pitch class), is squared (the strongest pitch class,
usually the melody's, leads) and scaled to unit length. The variation was rendered from the
parent's start (the parent looped when shorter), perhaps at another tempo, so dynamic time
warping aligns it with the looped parent from both starts, the local tempo within 0.5-2x, to
wherever in the parent the variation's end fits best; under each of the 12 circular
transpositions, keeping the best: the mean cosine similarity of the aligned frames, 1 for the
same notes throughout. The warp's freedom lets frames with no melody in them match too (a drone
finds the parent frames of its own pitch class; noise finds something everywhere), so the same
frames are aligned again in shuffled orders: the melody is the part of the match their order
makes. `order` is that part of the distance from chance to 1; under ORDER_MIN, `similarity` is
scaled down in proportion. A parent whose chroma hardly moves (a trill of two notes under the
hold, a held chord: PARENT_MOVEMENT_MIN) has no order to follow, and only its pitch content is
compared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from soundtrack.audio import check_signal
from soundtrack.numba_cache import load_librosa

THEME_RATE = 22050
_N_FFT = 4096
_HOP = 2048
FRAME_S = _HOP / THEME_RATE
_HOLD_FRAMES = 9
HOLD_S = _HOLD_FRAMES * FRAME_S  # 0.84 s
_COMPRESSION = 10.0  # log(1 + C x / max): soft notes count, loud ones do not drown them
_SILENT_DB = -60.0  # frames this far under the loudest carry no pitch: uniform chroma
MAX_TEMPO_RATIO = 2.0  # the warp's steep and shallow steps: 2x faster or slower at most
MIN_DURATION_S = 1.0
# Provisional: midway between the worst variation and the best unrelated melody of
# bench/theme_calibration.py (synthesized pairs); recalibrate on real renders.
THEME_LIMIT = 0.79
# Midway between no melody (0.20 at most: drones, noise, drums) and variations (0.61 at least)
# in bench/theme_calibration.py's three draws.
ORDER_MIN = 0.41
# 1 - the mean cosine of the parent's frames with their mean: the calibration's parents move
# 0.20-0.46, a melody alternating two notes on every beat 0.004.
PARENT_MOVEMENT_MIN = 0.1
_SHUFFLES = 3


@dataclass(frozen=True)
class ThemeMatch:
    """How closely a variation follows its parent's melody, under the best transposition."""

    similarity: float  # 0..1: mean cosine similarity of the aligned frames (scaled by order)
    order: float  # 0..1: how much of the match, beyond shuffled frames', their order makes
    transposition_semitones: int  # the variation's pitch above the parent's, -5..+6
    tempo_ratio: float  # the variation's tempo over the parent's: the alignment's slope
    parent_span_s: float  # where in the (looped) parent the alignment ends

    def to_dict(self) -> dict[str, object]:
        """Plain values for JSON."""
        return asdict(self)


def melody_similarity(variation: np.ndarray, parent: np.ndarray, sample_rate: int) -> ThemeMatch:
    """How closely (channels, frames) `variation` follows `parent`'s melody (module doc)."""
    # 1. Check inputs
    for name, audio in (("variation", variation), ("parent", parent)):
        check_signal(
            audio,
            sample_rate,
            name=name,
            needs="the theme comparison",
            min_duration_s=MIN_DURATION_S,
        )
    # 2. Chroma of each, one unit vector per frame
    x = _chroma(variation, sample_rate)
    y = _chroma(parent, sample_rate)
    moves = _movement(y) >= PARENT_MOVEMENT_MIN
    # 3. The parent from its start, looped, as far as the warp's fastest tempo can reach
    frames = x.shape[1]
    y = y[:, np.arange(round(MAX_TEMPO_RATIO * frames) + 1) % y.shape[1]]
    # 4. Cosine distance of every pair of frames under each transposition k: (12, frames, m)
    shifted = np.stack([np.roll(x, k, axis=0) for k in range(12)])
    cost = 1.0 - np.matmul(shifted.transpose(0, 2, 1), y)
    # 5. Warp in time under every transposition; keep the best
    total, end, steps = _warp(cost)
    best = int(np.argmin(total))
    i, j = _path(steps, best, int(end[best]))
    matched = float(np.clip(1.0 - total[best] / frames, 0.0, 1.0))
    # 6. What the frames match in any order: chance, for these notes against this parent
    shuffles = np.random.default_rng(0)
    chance = np.mean(
        [
            1.0 - _warp(cost[:, shuffles.permutation(frames)])[0].min() / frames
            for _ in range(_SHUFFLES)
        ]
    )
    order = float(np.clip((matched - chance) / max(1.0 - chance, 1e-9), 0.0, 1.0))
    return ThemeMatch(
        similarity=matched * min(1.0, order / ORDER_MIN) if moves else matched,
        order=order,
        # x rolled up by k matches y: the variation lies k semitones under the parent
        transposition_semitones=(5 - best) % 12 - 5,
        tempo_ratio=float(i @ j) / max(float(i @ i), 1.0),  # least squares, through (0, 0)
        parent_span_s=(int(end[best]) + 1) * FRAME_S,
    )


def _chroma(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(12, frames) chroma as the module doc describes, each frame of unit length."""
    librosa = load_librosa()  # numba compiles on first use: keep it off the import path
    import soxr
    from scipy.ndimage import maximum_filter1d

    mono = audio.mean(axis=0, dtype=np.float32)
    if sample_rate != THEME_RATE:
        mono = soxr.resample(mono, sample_rate, THEME_RATE)
    power = np.abs(librosa.stft(mono, n_fft=_N_FFT, hop_length=_HOP)) ** 2
    chroma = librosa.feature.chroma_stft(
        S=power, sr=THEME_RATE, n_fft=_N_FFT, tuning=0.0, norm=None
    )
    # Each value is the largest of its pitch class over the last _HOLD_FRAMES frames.
    origin = (_HOLD_FRAMES - 1) // 2
    held = maximum_filter1d(chroma, _HOLD_FRAMES, axis=1, mode="nearest", origin=origin)
    level = held.sum(axis=0)
    silent = level <= level.max() * 10 ** (_SILENT_DB / 10.0)
    compressed = np.log1p(_COMPRESSION * held / max(float(held.max()), 1e-20))
    peaks = np.maximum(compressed - compressed.mean(axis=0), 0.0) ** 2
    norms = np.linalg.norm(peaks, axis=0)
    flat = silent | (norms <= 1e-12)
    peaks[:, flat] = 1.0
    norms[flat] = np.sqrt(12.0)
    unit: np.ndarray = peaks / norms
    return unit


def _movement(chroma: np.ndarray) -> float:
    """How far unit chroma frames stray from their mean direction: 0 when they never change."""
    mean = chroma.mean(axis=1)
    return float(1.0 - np.mean(mean @ chroma) / max(float(np.linalg.norm(mean)), 1e-12))


def _warp(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dynamic time warping of each transposition's (variation frame i, parent frame j) costs,
    from (0, 0) to the variation's last frame and any parent frame. Steps (1, 1), (1, 2) and
    (2, 1), every variation frame counted once. Each transposition's least total, the parent
    frame where it ends, and the step taken into each (i, k, j): 0, 1 or 2 as listed."""
    transpositions, n, m = cost.shape
    steps = np.zeros((n, transpositions, m), dtype=np.int8)
    before = np.full((transpositions, m), np.inf)  # row i - 2
    last = np.full((transpositions, m), np.inf)  # row i - 1
    last[:, 0] = cost[:, 0, 0]
    for i in range(1, n):
        row = np.full((transpositions, m), np.inf)
        row[:, 1:] = last[:, :-1]  # (1, 1)
        faster = last[:, :-2] < row[:, 2:]  # (1, 2): the parent moves faster
        row[:, 2:][faster] = last[:, :-2][faster]
        steps[i, :, 2:][faster] = 1
        if i >= 2:  # (2, 1): the variation moves faster; frame i - 1 meets parent frame j
            via = before[:, :-1] + cost[:, i - 1, 1:]
            slower = via < row[:, 1:]
            row[:, 1:][slower] = via[slower]
            steps[i, :, 1:][slower] = 2
        row += cost[:, i]
        before, last = last, row
    end = np.argmin(last, axis=1)
    return last[np.arange(transpositions), end], end, steps


def _path(steps: np.ndarray, k: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """The (variation frame, parent frame) pairs of transposition k's warp, back from its end."""
    i, j = steps.shape[0] - 1, end
    frames, parent_frames = [i], [j]
    while i > 0:
        step = steps[i, k, j]
        i, j = i - (2 if step == 2 else 1), j - (2 if step == 1 else 1)
        frames.append(i)
        parent_frames.append(j)
    return np.array(frames[::-1]), np.array(parent_frames[::-1])
