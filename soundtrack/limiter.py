"""A look-ahead true-peak limiter: smooth gain keeping the 4x-oversampled peak under a ceiling."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import minimum_filter1d, uniform_filter1d

from soundtrack.errors import AudioError
from soundtrack.loudness import INTERPOLATOR_TAPS, oversampled_peaks, played_peaks

ATTACK_MS = 5.0  # the gain ramps down over this time before a peak (look-ahead)
RELEASE_MS = 80.0  # the gain reduction (in dB) decays with this time constant, whatever its depth
_MAX_PASSES = 6
# The envelope aims a little under the ceiling: a time-varying gain adds a little bandwidth, so
# aiming exactly at it leaves overs of a few thousandths of a dB for further passes to chase.
_AIM_BELOW_DB = 0.02


def sample_true_peaks(audio: np.ndarray, *, loop_start: int | None = None) -> np.ndarray:
    """Per input sample, the largest 4x-oversampled magnitude over all channels between it and
    its neighbours; with a `loop_start`, the audio loops from there to its end (the end flows
    into that frame), otherwise it is a one-shot, played from and into silence."""
    # oversampled_peaks covers n .. n + 3/4; a gain applied at n must also cover the points
    # between n - 1 and n.
    after = _limited_peaks(audio, loop_start).astype(np.float64)
    before = np.concatenate([after[:1], after[:-1]])
    if loop_start is not None:  # the loop's first frame also follows its last
        before[loop_start] = max(before[loop_start], after[-1])
    peaks: np.ndarray = np.maximum(after, before)
    return peaks


def true_peak_dbtp(audio: np.ndarray, *, loop_start: int | None = None) -> float:
    """True peak of (channels, frames) audio in dBTP (-inf for digital silence), as the limiter
    reads it (`loop_start` as for sample_true_peaks)."""
    peak = float(_limited_peaks(audio, loop_start).max())
    return -np.inf if peak == 0.0 else float(20.0 * np.log10(peak))


def _limited_peaks(audio: np.ndarray, loop_start: int | None) -> np.ndarray:
    if loop_start is not None:  # read as measure() reads a file with these loop points
        return played_peaks(audio, loop=(loop_start, audio.shape[1] - loop_start))
    # A one-shot is held under its ceiling both as a player starts it from silence (a master
    # whose fades are off clicks in) and as a measurement reads it (mirrored, as ffmpeg does).
    # The two differ only within the interpolator's reach of either end.
    peaks = oversampled_peaks(audio, ends="silent")
    reach = 2 * INTERPOLATOR_TAPS
    if peaks.size <= 2 * reach:
        both: np.ndarray = np.maximum(peaks, oversampled_peaks(audio))
        return both
    near = INTERPOLATOR_TAPS  # of a `reach` slice, the frames its cut end does not reach
    head, tail = oversampled_peaks(audio[:, :reach]), oversampled_peaks(audio[:, -reach:])
    np.maximum(peaks[:near], head[:near], out=peaks[:near])
    np.maximum(peaks[-near:], tail[-near:], out=peaks[-near:])
    return peaks


def limit_true_peak(
    audio: np.ndarray, sample_rate: int, ceiling_dbtp: float, *, loop_start: int | None = None
) -> tuple[np.ndarray, float]:
    """Keep the true peak at or below `ceiling_dbtp` with a smooth gain envelope (look-ahead
    attack, exponential release); returns the limited audio and its largest reduction in dB."""
    out = audio
    total_gain_db = np.zeros(audio.shape[1])
    for _ in range(_MAX_PASSES):
        peaks = sample_true_peaks(out, loop_start=loop_start)
        if peaks.max() <= 10.0 ** (ceiling_dbtp / 20.0):
            return out, max(0.0, -float(total_gain_db.min()))
        gain_db = limiter_gain_db(peaks, sample_rate, ceiling_dbtp, circular=loop_start is not None)
        out = out * 10.0 ** (gain_db / 20.0)
        total_gain_db += gain_db
    raise AudioError(
        f"true-peak limiter did not reach {ceiling_dbtp} dBTP in {_MAX_PASSES} passes "
        f"(true peak {true_peak_dbtp(out, loop_start=loop_start):.2f} dBTP)"
    )


def limiter_gain_db(
    peaks: np.ndarray, sample_rate: int, ceiling_dbtp: float, *, circular: bool = False
) -> np.ndarray:
    """The limiter's gain (dB, <= 0) per sample for `sample_true_peaks` output: at or below what
    each peak needs to meet the ceiling, ramped down ahead of it and released after it."""
    aim_dbtp = ceiling_dbtp - _AIM_BELOW_DB
    if peaks.max() <= 10.0 ** (aim_dbtp / 20.0):
        return np.zeros_like(peaks)  # nothing to limit
    with np.errstate(divide="ignore"):
        needed_db: np.ndarray = np.minimum(0.0, aim_dbtp - 20.0 * np.log10(peaks))
    # Release: the reduction r = -gain_db decays as r[n] = max(-needed_db[n], a * r[n-1]), which
    # unrolls to max_k<=n -needed_db[k] * a^(n-k): a running maximum in the log domain. A loop runs
    # it over two periods so the end releases into the start.
    log_a = -1.0 / (RELEASE_MS / 1000.0 * sample_rate)
    reduction = np.tile(-needed_db, 2) if circular else -needed_db
    decay = log_a * np.arange(reduction.size)
    with np.errstate(divide="ignore"):
        log_reduction = np.log(reduction)
    released = -np.exp(np.maximum.accumulate(log_reduction - decay) + decay)
    if circular:
        released = released[needed_db.size :]
    # Attack: hold each minimum over +-half, then average over the same span. Every sample in the
    # averaging window saw the current sample's requirement, so the result never exceeds it.
    half = max(1, round(ATTACK_MS / 2000.0 * sample_rate))
    mode = "wrap" if circular else "nearest"
    held = minimum_filter1d(released, size=2 * half + 1, mode=mode)
    smoothed: np.ndarray = uniform_filter1d(held, size=2 * half + 1, mode=mode)
    # uniform_filter1d's running sum can round a hair above the held values: never above needed.
    gain_db: np.ndarray = np.minimum(smoothed, needed_db)
    return gain_db
