"""A look-ahead true-peak limiter: smooth gain keeping the 4x-oversampled peak under a ceiling."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import minimum_filter1d, uniform_filter1d

from soundtrack.errors import AudioError
from soundtrack.loudness import JOIN_REACH, oversampled_peaks, played_peaks, reread_join

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
    after = _limited_peaks(audio, loop_start)
    peaks = after.copy()
    np.maximum(peaks[1:], after[:-1], out=peaks[1:])
    if loop_start is not None:  # the loop's first frame also follows its last
        peaks[loop_start] = max(peaks[loop_start], after[-1])
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
    if peaks.size <= 2 * JOIN_REACH:
        both: np.ndarray = np.maximum(peaks, oversampled_peaks(audio))
        return both
    nothing, frames = audio[:, :0], audio.shape[1]
    reread_join(peaks, nothing, 0, audio[:, :JOIN_REACH], 0)
    reread_join(peaks, audio[:, -JOIN_REACH:], frames, nothing, frames)
    return peaks


def limit_true_peak(
    audio: np.ndarray, sample_rate: int, ceiling_dbtp: float, *, loop_start: int | None = None
) -> tuple[np.ndarray, float]:
    """Keep the true peak at or below `ceiling_dbtp` with a smooth gain envelope (look-ahead
    attack, exponential release); returns the limited audio and its largest reduction in dB."""
    out = audio
    total_gain_db = np.zeros(audio.shape[1], np.float32)
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
    """The limiter's gain (dB, <= 0, float32) per sample for `sample_true_peaks` output: at or
    below what each peak needs to meet the ceiling, ramped down ahead of it and released after."""
    aim_dbtp = ceiling_dbtp - _AIM_BELOW_DB
    if peaks.max() <= 10.0 ** (aim_dbtp / 20.0):
        return np.zeros(peaks.shape, np.float32)  # nothing to limit
    # float32 throughout, in place where it can be: a 10-minute track is 26 million samples.
    with np.errstate(divide="ignore"):
        needed_db = np.log10(peaks, dtype=np.float32)
    needed_db *= -20.0
    needed_db += aim_dbtp
    np.minimum(needed_db, 0.0, out=needed_db)
    log_a = -1.0 / (RELEASE_MS / 1000.0 * sample_rate)
    released = np.empty_like(needed_db)
    # A loop's end releases into its start: the reduction its end carries, from a first pass.
    carry = _release(needed_db, log_a, -np.inf) if circular else -np.inf
    _release(needed_db, log_a, carry, out=released)
    # Attack: hold each minimum over +-half, then average over the same span. Every sample in the
    # averaging window saw the current sample's requirement, so the result never exceeds it.
    half = max(1, round(ATTACK_MS / 2000.0 * sample_rate))
    mode = "wrap" if circular else "nearest"
    held = minimum_filter1d(released, size=2 * half + 1, mode=mode)
    gain_db: np.ndarray = uniform_filter1d(held, size=2 * half + 1, mode=mode, output=released)
    # uniform_filter1d's running sum can round a hair above the held values: never above needed.
    np.minimum(gain_db, needed_db, out=gain_db)
    return gain_db


_RELEASE_BLOCK = 1 << 16  # frames per step of the release's running maximum


def _release(
    needed_db: np.ndarray, log_a: float, carry: float, out: np.ndarray | None = None
) -> float:
    """The released reduction r[n] = max(-needed_db[n], a * r[n-1]), negated into `out`, from
    log r = `carry` the frame before the first; returns log r of the last frame."""
    # Unrolled, r[n] = max over k <= n of -needed_db[k] * a^(n-k): a running maximum in the
    # log domain, taken block by block (the offsets stay small, and so does the memory).
    offsets = log_a * np.arange(min(_RELEASE_BLOCK, needed_db.size))
    for start in range(0, needed_db.size, _RELEASE_BLOCK):
        block = needed_db[start : start + _RELEASE_BLOCK].astype(np.float64)
        steps = offsets[: block.size]
        with np.errstate(divide="ignore"):
            log_r = np.log(-block)
        log_r -= steps
        np.maximum.accumulate(log_r, out=log_r)
        np.maximum(log_r, carry + log_a, out=log_r)
        log_r += steps
        carry = float(log_r[-1])
        if out is not None:
            np.exp(log_r, out=log_r)
            out[start : start + block.size] = -log_r
    return carry
