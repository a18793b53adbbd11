"""Seamless loops: pick a loop end that matches the start, bake an equal-power crossfade into it.

A loop cut on bars starts on a downbeat and ends whole bars later at the measured tempo: its
points come from the beat grid, not from a search."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from soundtrack.errors import AudioError
from soundtrack.loudness import BLOCK_S
from soundtrack.numba_cache import load_librosa
from soundtrack.spec import GateLimits

SEARCH_S = 0.4  # loop end within +-this of the requested duration (the duration gate allows 0.5)
# The seam's loudness compares two BS.1770 blocks, its end and its start (measure): no loop end
# is searched before this, and validate takes no shorter loop.
SHORTEST_LOOP_S = 2 * BLOCK_S
DISTANCE_PENALTY = 0.25  # score lost at the edge of the search window (a perfect match scores 2)
COMPARE_MAX_S = 1.5  # how much audio after a candidate end is compared with the start
_N_FFT = 2048
_HOP = 512
_MIN_COMPARE_SAMPLES = _N_FFT + 4 * _HOP  # after a candidate end: a few feature frames
# Audio that ends within this fraction of a loop's length from its end ends at its loop: a
# recording cut to it, kept as it is.
LOOP_END_FRACTION = 0.01
# How close the analysis comes to a steady tempo: 0.02-0.07 % on exact click tracks and chords.
# A measured tempo this close to the target is the target's.
TEMPO_PRECISION = 0.001
# A recording within this fraction of its bars at a measured tempo (with room for music less
# clean than a click track) is cut to them; more is a release, whose rhythm, kept, would skip
# at every wrap (120 ms after 8 bars at 120 bpm is 0.75 %).
BAR_END_FRACTION = 0.0025
# On the target's exact grid, a recording this close to its bars is cut to them.
CUT_TO_BARS_S = 0.001


@dataclass(frozen=True)
class BarLoop:
    """A loop cut on bars: its first downbeat, its whole bars and how close to their end the
    audio may end and be the loop as it is (a recording cut to its bars), in samples."""

    start: int
    length: float
    ends_within: float


# A bar loop is cut at the tempo heard, which the tempo gate lets run this much slower than its
# bpm: a render holds its bars at that tempo (resolve.seconds_to_render).
SLOWEST_BAR_RATIO = 1.0 + GateLimits.tempo_tolerance_pct / 100.0


def bar_loop_s(duration_s: float, bar_s: float) -> float:
    """How long a loop cut on bars near `duration_s` can be: the whole bars nearest it (at least
    one; process._bar_loop cuts them), or the duration when that is longer."""
    return max(duration_s, max(1, round(duration_s / bar_s)) * bar_s)


def render_duration_s(duration_s: float, crossfade_ms: float) -> float:
    """How much audio to render for a `duration_s` loop: room to search past the requested end,
    and the crossfade tail after the latest possible end."""
    return duration_s + SEARCH_S + crossfade_ms / 1000.0


def loop_tail_samples(crossfade_samples: int) -> int:
    """Samples that must follow a loop end: its crossfade, and audio to compare with the start."""
    return max(crossfade_samples, _MIN_COMPARE_SAMPLES)


def shortest_loop_s(crossfade_ms: float) -> float:
    """The shortest loop validate takes (resolve): two loudness blocks to judge its seam, and
    its crossfade twice before the earliest end searched (loop_end_range)."""
    crossfade_s = crossfade_ms / 1000.0
    return SHORTEST_LOOP_S if 2 * crossfade_s <= SHORTEST_LOOP_S else SEARCH_S + 2 * crossfade_s


def loop_end_range(
    duration_s: float, sample_rate: int, frames: int, crossfade_samples: int
) -> tuple[int, int]:
    """The earliest and latest loop end (in samples) searched in `frames` samples of audio: within
    SEARCH_S of `duration_s`, with the loop's tail after the latest, and never a loop shorter than
    SHORTEST_LOOP_S (a 1 s loop whose music repeats at 0.69 s failed its seam's measure there);
    the manifest checks it too."""
    earliest = round(max(duration_s - SEARCH_S, SHORTEST_LOOP_S) * sample_rate)
    latest = round((duration_s + SEARCH_S) * sample_rate)
    return earliest, min(latest, frames - loop_tail_samples(crossfade_samples))


def make_loop(
    audio: np.ndarray, sample_rate: int, duration_s: float, crossfade_ms: float
) -> np.ndarray:
    """The loop as (channels, loop_length) audio: loop start is sample 0, and playing it back to
    back is continuous. `audio` must run at least `crossfade_ms` past the chosen loop end."""
    crossfade = round(crossfade_ms / 1000.0 * sample_rate)
    loop_end = find_loop_end(audio, sample_rate, duration_s, crossfade_samples=crossfade)
    return bake_crossfade(audio, loop_end, crossfade)


def make_bar_loop(
    audio: np.ndarray, sample_rate: int, bar_loop: BarLoop, *, crossfade_ms: float
) -> np.ndarray:
    """`audio` up to the end of `bar_loop`, with the audio after its end crossfaded into its
    start (as much as there is, up to the crossfade). Audio that ends within its `ends_within`
    of the loop's end already ends at its loop (a recording cut to it): looped as it is."""
    crossfade = round(crossfade_ms / 1000.0 * sample_rate)
    start = bar_loop.start
    end = start + round(bar_loop.length)
    frames = audio.shape[1]
    if abs(frames - start - bar_loop.length) <= bar_loop.ends_within:
        # A recording cut to its bars: its own end is the loop's, not the measured tempo's
        # (a few hundredths of a percent off: cut there, 13-70 samples went, and the seam).
        return audio.copy()
    if frames > end:
        # A release shorter than the crossfade still flows into the start: cut, it clicked.
        return bake_crossfade(audio, end, min(crossfade, frames - end), start=start)
    raise AudioError(
        f"{(frames - start) / sample_rate:.2f} s of audio from the first downbeat; the loop's "
        f"bars need {bar_loop.length / sample_rate:.2f} s"
    )


def ends_at_its_loop(frames: float, loop_frames: float) -> bool:
    """Whether audio of `frames` ends where a loop of `loop_frames` from its start would (within
    LOOP_END_FRACTION): a recording cut to its loop, whose own end is the loop's."""
    return abs(frames - loop_frames) <= LOOP_END_FRACTION * loop_frames


def find_loop_end(
    audio: np.ndarray, sample_rate: int, duration_s: float, *, crossfade_samples: int
) -> int:
    """Loop end (exclusive, in samples) near `duration_s` whose continuation sounds like the
    start: best chroma + onset match on a hop grid, then the best-correlating zero crossing."""
    mono = audio.mean(axis=0)
    frames = mono.size
    lo, hi = loop_end_range(duration_s, sample_rate, frames, crossfade_samples)
    if crossfade_samples < 1 or 2 * crossfade_samples > lo:
        raise AudioError(
            f"loop crossfade of {crossfade_samples} samples does not fit a {duration_s} s loop"
        )
    if hi < lo:
        raise AudioError(
            f"audio is {frames / sample_rate:.2f} s long; a {duration_s} s loop needs at least "
            f"{(lo + loop_tail_samples(crossfade_samples)) / sample_rate:.2f} s (its earliest "
            "end, and its crossfade after it)"
        )
    compare = min(round(COMPARE_MAX_S * sample_rate), frames - hi)
    # The hop grid starts SEARCH_S before the duration even where the earliest end is later (a
    # short loop), so every loop that was found there before is found again, sample for sample.
    grid = round((duration_s - SEARCH_S) * sample_rate)
    scores = _feature_scores(mono, sample_rate, grid, hi, compare)
    candidates = grid + _HOP * np.arange(scores.size)
    # Between equally good matches, the one nearer the requested duration wins.
    distance = np.abs(candidates / sample_rate - duration_s) / SEARCH_S
    ranked = np.where(candidates >= lo, scores - DISTANCE_PENALTY * distance, -np.inf)
    coarse = int(candidates[np.argmax(ranked)])
    return _refine(mono, coarse, lo, hi, crossfade_samples)


def bake_crossfade(
    audio: np.ndarray, loop_end: int, crossfade_samples: int, *, start: int = 0
) -> np.ndarray:
    """audio[:, :loop_end] with the `crossfade_samples` after loop_end faded into the loop's
    head at `start` (equal power), so sample loop_end - 1 flows into `start` as into loop_end."""
    if loop_end + crossfade_samples > audio.shape[1] or crossfade_samples > loop_end - start:
        raise AudioError(
            f"cannot crossfade {crossfade_samples} samples at loop end {loop_end} "
            f"of {audio.shape[1]}-sample audio"
        )
    t = np.arange(crossfade_samples) / crossfade_samples
    fade_in = np.sin(0.5 * np.pi * t)
    fade_out = np.cos(0.5 * np.pi * t)
    looped = audio[:, :loop_end].copy()
    tail = audio[:, loop_end : loop_end + crossfade_samples]
    head = looped[:, start : start + crossfade_samples]
    looped[:, start : start + crossfade_samples] = head * fade_in + tail * fade_out
    return looped


def _feature_scores(
    mono: np.ndarray, sample_rate: int, lo: int, hi: int, compare: int
) -> np.ndarray:
    """Per candidate end lo + k*hop: chroma cosine similarity + onset-envelope correlation of the
    `compare` samples after it against the first `compare` samples."""
    librosa = load_librosa()  # numba compiles on first use: keep it off the import path

    def features(segment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        power = np.abs(librosa.stft(segment, n_fft=_N_FFT, hop_length=_HOP, center=False)) ** 2
        chroma = librosa.feature.chroma_stft(S=power, sr=sample_rate, tuning=0.0)
        chroma /= np.linalg.norm(chroma, axis=0, keepdims=True) + 1e-12
        mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sample_rate))
        onsets = librosa.onset.onset_strength(
            S=mel_db, sr=sample_rate, hop_length=_HOP, center=False
        )
        # The first value is padding (no earlier frame to differ from): drop it, or every
        # window that starts at a segment's start would share it and correlate falsely.
        return chroma, onsets[1:]

    head_chroma, head_onsets = features(mono[:compare].astype(np.float32))
    tail_chroma, tail_onsets = features(mono[lo : hi + compare].astype(np.float32))
    window = head_chroma.shape[1]
    candidates = (hi - lo) // _HOP + 1
    chroma_sim = np.zeros(candidates)
    for j in range(window):
        chroma_sim += head_chroma[:, j] @ tail_chroma[:, j : j + candidates]
    chroma_sim /= window
    onset_windows = np.lib.stride_tricks.sliding_window_view(tail_onsets, window - 1)
    onset_corr = _pearson(onset_windows[:candidates], head_onsets[: window - 1])
    scores: np.ndarray = chroma_sim + onset_corr
    return scores


def _pearson(windows: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Correlation of each row of `windows` with `reference`; 0 where either is constant."""
    w = windows - windows.mean(axis=1, keepdims=True)
    r = reference - reference.mean()
    denom = np.linalg.norm(w, axis=1) * np.linalg.norm(r)
    corr: np.ndarray = np.divide(w @ r, denom, out=np.zeros(len(w)), where=denom > 1e-12)
    return corr


def _refine(mono: np.ndarray, coarse: int, lo: int, hi: int, length: int) -> int:
    """Within one hop of `coarse`, the rising zero crossing whose continuation best correlates
    with the start (in phase, so the crossfade does not comb-filter); any sample if none."""
    first = max(lo, coarse - _HOP, 1)
    last = min(hi, coarse + _HOP)
    head = mono[:length]
    region = mono[first : last + length]
    # scipy.signal costs a second to import; resolving a manifest imports this module.
    from scipy.signal import correlate

    dots = correlate(region, head, mode="valid")
    energy = np.concatenate([[0.0], np.cumsum(region**2)])
    window_norm = np.sqrt(energy[length : length + dots.size] - energy[: dots.size])
    corr = dots / (window_norm * np.linalg.norm(head) + 1e-12)
    ends = np.arange(first, last + 1)
    rising = (mono[ends - 1] < 0.0) & (mono[ends] >= 0.0)
    if rising.any():
        corr = np.where(rising, corr, -np.inf)
    return int(ends[np.argmax(corr)])
