"""ITU-R BS.1770-4 meters: K-weighted gated integrated loudness, and the 4x-oversampled true peak.

One implementation serves mastering (which measures the same track several times while it
normalises), the limiter and the gates, so it is vectorised: the gating follows pyloudnorm's
blocks, without its per-block Python loop, and its K-weighting is BS.1770's own filter at any
rate (De Man's derivation, as libebur128 and ffmpeg's ebur128 design it), not pyloudnorm's
default approximation (0.04 LU high at 48 kHz, 0.2 LU at 8 kHz). Only whole gating blocks count,
as BS.1770 and ffmpeg count them. The tests hold it to pyloudnorm and to ffmpeg's ebur128.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
from pyloudnorm.iirfilter import IIRfilter
from scipy.signal import firwin, sosfilt, tf2sos

from soundtrack.audio import resample

BLOCK_S = 0.4  # BS.1770 gating block
_OVERLAP = 0.75
ABSOLUTE_GATE_LUFS = -70.0
_RELATIVE_GATE_LU = -10.0
_CHANNEL_WEIGHTS = (1.0, 1.0, 1.0, 1.41, 1.41)  # L, R, C, Ls, Rs (BS.1770-4 eq. 2)
# BS.1770-4 Annex 2: 4x oversampling (its example interpolator has 12 taps per phase). A 97-tap
# Kaiser-windowed sinc cut at the original Nyquist keeps phase 0 equal to the samples themselves,
# so only the three in-between phases are computed. Its 24 taps per phase keep it within 0.1 dB
# to 18.8 kHz at 44.1 kHz: with 12 (-0.5 dB at 18 kHz), the limiter let through the peaks of
# hi-hats and clicks it read low.
OVERSAMPLING = 4
INTERPOLATOR_TAPS = 24  # per phase: what lies beyond the ends reaches this far in
_INTERPOLATOR = OVERSAMPLING * firwin(
    INTERPOLATOR_TAPS * OVERSAMPLING + 1, 1.0 / OVERSAMPLING, window=("kaiser", 7.0)
)
# The point n + p/4 is sum_k h[p + 4k] * x[n + 12 - k]: row p-1 of this matrix, applied to the
# window x[n-11 .. n+12], gives it (one matrix product runs the three phases through BLAS).
_BEFORE = INTERPOLATOR_TAPS // 2 - 1
_AFTER = INTERPOLATOR_TAPS - _BEFORE - 1
_PHASE_MATRIX = np.array(
    [
        [
            _INTERPOLATOR[p + OVERSAMPLING * (INTERPOLATOR_TAPS - 1 - i)]
            for i in range(INTERPOLATOR_TAPS)
        ]
        for p in (1, 2, 3)
    ],
    dtype=np.float32,
)
_CHUNK = 8192  # frames per matrix product: its 24 windows (768 KiB) stay in the L2 cache
FILTER_FRAMES = 1 << 18  # frames a float64 filter runs over at a time (2 MiB)


# BS.1770's K-weighting as analog prototypes whose bilinear transform at 48 kHz gives its
# published coefficients (B. De Man's derivation; pyloudnorm's "DeMan" filters).
_SHELF = (3.99984385397, 0.7071752369554193, 1681.9744509555319)  # gain dB, Q, Hz
_HIGH_PASS = (0.0, 0.5003270373253953, 38.13547087613982)
# Under it the shelf's 1.68 kHz nears the Nyquist frequency and the design fails (2 kHz audio
# read -inf, and ffmpeg's ebur128, which designs at the file's rate too, reads -70): such audio
# is measured resampled to 48 kHz.
MIN_FILTER_RATE = 8000
_MEASURE_RATE = 48000


@functools.cache
def _k_weighting(sample_rate: int) -> np.ndarray:
    """The K-weighting pre-filter (high shelf, then RLB high-pass) as second-order sections,
    designed for `sample_rate` (BS.1770's coefficients at 48 kHz)."""
    shelf = IIRfilter(*_SHELF, sample_rate, "high_shelf_DeMan")
    high_pass = IIRfilter(*_HIGH_PASS, sample_rate, "high_pass_DeMan")
    return np.vstack([tf2sos(f.b, f.a) for f in (shelf, high_pass)])


def integrated_lufs(audio: np.ndarray, sample_rate: int, *, block_s: float = BLOCK_S) -> float:
    """Gated integrated loudness of (channels, frames) audio in LUFS (-inf when no block clears
    the absolute gate); a `block_s` of the whole length gives one ungated-by-time block."""
    return gated_lufs(block_powers(audio, sample_rate, block_s=block_s))


def block_powers(audio: np.ndarray, sample_rate: int, *, block_s: float = BLOCK_S) -> np.ndarray:
    """Per gating block, the channel-weighted sum of the K-weighted mean squares (the power
    inside BS.1770-4 eq. 4). A gain g scales every value by g**2, so gating these again gives
    the loudness of the scaled audio without filtering it again."""
    audio, sample_rate = _filterable(audio, sample_rate)
    # Block j spans [int(T_g * j * step * rate), int(T_g * (j * step + 1) * rate)): the same
    # float expressions as pyloudnorm, so the blocks match it sample for sample. Only whole
    # blocks count: pyloudnorm rounds the count and cuts the last block at the end, which
    # read a 0.46 s file 0.3 LU low (its part-block's power divided by a whole block's length).
    frames = audio.shape[1]
    step = 1.0 - _OVERLAP
    blocks = round((frames / sample_rate - block_s) / (block_s * step)) + 1
    j = np.arange(max(blocks, 0), dtype=np.float64)
    lower = (block_s * (j * step) * sample_rate).astype(np.int64)
    upper = (block_s * (j * step + 1.0) * sample_rate).astype(np.int64)
    whole = upper <= frames
    lower, upper = lower[whole], upper[whole]
    powers: np.ndarray = _window_sums(audio, sample_rate, lower, upper) / (block_s * sample_rate)
    return powers  # eq. 1


def _filterable(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
    """The audio at a rate the K-weighting can be designed for: as it is from MIN_FILTER_RATE
    up, else resampled to 48 kHz."""
    if sample_rate >= MIN_FILTER_RATE:
        return audio, sample_rate
    return resample(audio, sample_rate, _MEASURE_RATE), _MEASURE_RATE


def _window_sums(
    audio: np.ndarray, sample_rate: int, lower: np.ndarray, upper: np.ndarray
) -> np.ndarray:
    """Per window [lower, upper) of frames, the channel-weighted sum of the K-weighted squares."""
    # The window edges cut the signal into segments (100 ms for overlapping gating blocks),
    # and a window is the sum of its segments: summing each segment once costs less than a
    # running sum over every sample, and loses nothing to cancellation.
    frames = audio.shape[1]
    edges = np.unique(np.concatenate(([0], lower, upper)))
    edges = edges[edges < frames]
    sos = _k_weighting(sample_rate)
    # One thread per channel: sosfilt lets go of the GIL, and the filter is most of the cost.
    with ThreadPoolExecutor(max_workers=audio.shape[0]) as pool:
        sums = list(pool.map(lambda c: _segment_sums(audio[c], sos, c, edges), range(len(audio))))
    cumulative = np.concatenate(([0.0], np.cumsum(functools.reduce(np.add, sums))))
    within: np.ndarray = (
        cumulative[np.searchsorted(edges, upper)] - cumulative[np.searchsorted(edges, lower)]
    )
    return within


def _segment_sums(
    channel: np.ndarray, sos: np.ndarray, index: int, edges: np.ndarray
) -> np.ndarray:
    """Sums of the K-weighted channel's squares between `edges`, times its channel weight."""
    # Filtered a piece at a time, its state carried over: the same filter as one pass, without
    # float64 copies of the whole channel (a 10-minute track's took 0.9 GB).
    sums = np.zeros(edges.size)
    state = np.zeros((sos.shape[0], 2))
    for start in range(0, channel.size, FILTER_FRAMES):
        end = min(start + FILTER_FRAMES, channel.size)
        weighted, state = sosfilt(sos, channel[start:end].astype(np.float64), zi=state)
        np.square(weighted, out=weighted)
        # The segment open at `start`, then each one beginning inside this piece.
        first = int(np.searchsorted(edges, start, side="right")) - 1
        stop = int(np.searchsorted(edges, end, side="left"))
        within = np.concatenate(([start], edges[first + 1 : stop])) - start
        sums[first:stop] += np.add.reduceat(weighted, within)
    weighted_sums: np.ndarray = sums * _CHANNEL_WEIGHTS[index]
    return weighted_sums


def gated_lufs(powers: np.ndarray) -> float:
    """BS.1770-4 gating of `block_powers`: the absolute gate, then the relative gate 10 LU
    under the loudness of what passed it (eq. 6), then the loudness of what is left (eq. 7)."""
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10.0 * np.log10(powers)  # eq. 4
    above_absolute = block_lufs >= ABSOLUTE_GATE_LUFS
    if not above_absolute.any():
        return -math.inf
    relative_gate = _lufs(powers[above_absolute]) + _RELATIVE_GATE_LU
    gated = (block_lufs > relative_gate) & (block_lufs > ABSOLUTE_GATE_LUFS)
    return _lufs(powers[gated]) if gated.any() else -math.inf


def _lufs(powers: np.ndarray) -> float:
    power = float(powers.mean())
    return -math.inf if power <= 0.0 else -0.691 + 10.0 * math.log10(power)


# What lies beyond the audio's ends: itself mirrored, as ffmpeg's ebur128 (libswresample)
# reads a file's start; silence, as a player starts and stops it (a file that starts or ends
# loud then overshoots by up to 1 dB: the click into and out of silence); or its own other
# end, as a loop plays (the end flows into the start).
Ends = Literal["mirrored", "silent", "loop"]


def oversampled_peaks(audio: np.ndarray, *, ends: Ends = "mirrored") -> np.ndarray:
    """Per frame n, the largest magnitude over all channels of the 4x-oversampled signal at
    n, n + 1/4, n + 2/4 and n + 3/4, with `ends` beyond the audio."""
    samples = np.asarray(audio, dtype=np.float32)
    peaks: np.ndarray = np.abs(samples[0])
    for channel in samples[1:]:
        np.maximum(peaks, np.abs(channel), out=peaks)
    # One thread per channel: the matrix products let go of the GIL.
    with ThreadPoolExecutor(max_workers=len(samples)) as pool:
        for between in pool.map(lambda channel: _between_peaks(channel, ends), samples):
            np.maximum(peaks, between, out=peaks)
    return peaks


# The frames of a slice this long that a reading of it reads as they are: its own cut ends reach
# only its outer INTERPOLATOR_TAPS frames.
JOIN_REACH = 2 * INTERPOLATOR_TAPS


def reread_join(
    peaks: np.ndarray, before: np.ndarray, before_end: int, after: np.ndarray, after_start: int
) -> None:
    """Raise `peaks` near a join to its reading where `before` (JOIN_REACH frames, or none: an
    end, read mirrored), ending at frame `before_end`, flows into `after`, from `after_start`."""
    joined = oversampled_peaks(np.concatenate([before, after], axis=1))
    cut, near = before.shape[1], INTERPOLATOR_TAPS
    ahead = slice(max(0, before_end - near), before_end)
    np.maximum(peaks[ahead], joined[max(0, cut - near) : cut], out=peaks[ahead])
    behind = slice(after_start, after_start + min(near, after.shape[1]))
    np.maximum(peaks[behind], joined[cut : cut + near], out=peaks[behind])


def played_peaks(
    audio: np.ndarray, *, loop: tuple[int, int] | None = None, ends: Ends = "mirrored"
) -> np.ndarray:
    """oversampled_peaks with `ends` beyond the audio, and where a `loop` (first frame, length)
    joins its end to its first frame the larger of both readings: every pass crosses that seam."""
    peaks = oversampled_peaks(audio, ends=ends)
    if loop is None:
        return peaks
    first, length = loop
    end = first + length
    if length <= 2 * JOIN_REACH:
        wrapped = oversampled_peaks(audio[:, first:end], ends="loop")
        np.maximum(peaks[first:end], wrapped, out=peaks[first:end])
        return peaks
    reread_join(
        peaks, audio[:, end - JOIN_REACH : end], end, audio[:, first : first + JOIN_REACH], first
    )
    return peaks


def _between_peaks(channel: np.ndarray, ends: Ends) -> np.ndarray:
    """Per frame n, the largest magnitude of one channel at n + 1/4, n + 2/4 and n + 3/4."""
    frames = channel.size
    peaks = np.empty(frames, np.float32)
    windows = np.empty((INTERPOLATOR_TAPS, min(_CHUNK, frames)), np.float32)
    for start in range(0, frames, _CHUNK):
        stop = min(start + _CHUNK, frames)
        segment = _padded(channel, ends, start, stop)
        # Row i holds the frames i - _BEFORE from each: contiguous rows let matmul hand the
        # product to BLAS (a strided view it multiplies in its own loop, at twice the time).
        block = windows[:, : stop - start]
        for i in range(INTERPOLATOR_TAPS):
            block[i] = segment[i : i + stop - start]
        between = _PHASE_MATRIX @ block
        np.abs(between, out=between)
        np.maximum.reduce(between, out=peaks[start:stop])
    return peaks


def _padded(channel: np.ndarray, ends: Ends, start: int, stop: int) -> np.ndarray:
    """channel[start - _BEFORE : stop + _AFTER], with `ends` beyond the channel as np.pad of the
    whole channel reads them."""
    # Made from the frames near the chunk alone: a copy of a channel is 100 MB for ten minutes.
    frames = channel.size
    low, high = start - _BEFORE, stop + _AFTER
    if low >= 0 and high <= frames:
        return channel[low:high]
    if ends == "loop":
        return channel.take(np.arange(low, high), mode="wrap")
    # A mirror reads as far inside an end as it reaches beyond it.
    first, last = max(0, low - _AFTER), min(frames, high + _BEFORE)
    before, beyond = max(0, -low), max(0, high - frames)
    piece = np.pad(
        channel[first:last], (before, beyond), mode="reflect" if ends == "mirrored" else "constant"
    )
    return piece[low - first + before : high - first + before]


SHORT_TERM_S = 3.0  # EBU Tech 3341 short-term window
_SHORT_TERM_STEP_S = 0.1  # how often Tech 3342 reads it (10 Hz), as ffmpeg's ebur128 does
_LRA_RELATIVE_GATE_LU = -20.0
_LRA_PERCENTILES = (10.0, 95.0)


def short_term_lufs(
    audio: np.ndarray, sample_rate: int, *, hop_s: float = _SHORT_TERM_STEP_S
) -> tuple[np.ndarray, np.ndarray]:
    """EBU Tech 3341 short-term loudness of (channels, frames) audio: (end times in s, LUFS) of
    the 3 s windows ending at every multiple of `hop_s` (-inf where silent); none under 3 s."""
    times_s, powers = _short_term_powers(audio, sample_rate, hop_s)
    with np.errstate(divide="ignore"):
        lufs: np.ndarray = -0.691 + 10.0 * np.log10(powers)  # eq. 4, ungated
    return times_s, lufs


def _short_term_powers(
    audio: np.ndarray, sample_rate: int, hop_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """(end times in s, channel-weighted K-weighted mean squares) of the short-term windows."""
    if not hop_s > 0.0:
        raise ValueError(f"hop_s must be above 0 s (got {hop_s})")
    audio, sample_rate = _filterable(audio, sample_rate)
    window = round(SHORT_TERM_S * sample_rate)
    hop = hop_s * sample_rate
    # A window ends on a hop, at 3 s at the earliest (as ffmpeg's ebur128 reads it: nothing
    # before the window has filled) and at the last hop inside the audio at the latest.
    first = math.ceil(window / hop - 1e-9)
    last = math.floor(audio.shape[1] / hop + 1e-9)
    upper = np.rint(np.arange(first, last + 1) * hop).astype(np.int64)
    if upper.size == 0:
        return np.zeros(0), np.zeros(0)
    powers = _window_sums(audio, sample_rate, upper - window, upper) / window
    return upper / sample_rate, powers


def loudness_range_lu(audio: np.ndarray, sample_rate: int) -> float:
    """EBU Tech 3342 loudness range (LRA) of (channels, frames) audio: the spread between the
    10th and 95th percentiles of the gated short-term loudness; 0.0 when nothing passes."""
    powers = _short_term_powers(audio, sample_rate, _SHORT_TERM_STEP_S)[1]
    if powers.size == 0:
        return 0.0
    with np.errstate(divide="ignore"):
        short_term = -0.691 + 10.0 * np.log10(powers)
    # Tech 3342: the absolute gate, then a relative gate 20 LU under the power mean of the
    # windows that passed it.
    above_absolute = short_term > ABSOLUTE_GATE_LUFS
    if not above_absolute.any():
        return 0.0
    relative_gate = _lufs(powers[above_absolute]) + _LRA_RELATIVE_GATE_LU
    gated = short_term[above_absolute & (short_term > relative_gate)]
    low, high = np.percentile(gated, _LRA_PERCENTILES)
    return float(high - low)
