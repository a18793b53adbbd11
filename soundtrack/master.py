"""Mastering: a raw render becomes a master at the track's loudness, true-peak safe, loop-ready."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import soxr
from scipy.signal import butter, sosfilt, sosfilt_zi

from soundtrack.audio import to_channels
from soundtrack.errors import AudioError
from soundtrack.limiter import limit_true_peak, limiter_gain_db, sample_true_peaks
from soundtrack.loops import BarLoop, ends_at_its_loop, make_bar_loop, make_loop
from soundtrack.loudness import (
    BLOCK_S,
    FILTER_FRAMES,
    block_powers,
    gated_lufs,
    integrated_lufs,
)
from soundtrack.spec import Mastering

SILENCE_DBFS = -60.0  # leading/trailing samples below this (after normalisation) are trimmed
DC_HIGHPASS_HZ = 10.0  # removes drift as well as a constant offset
# Lossy encoding raises true peaks (about 0.5 dB for Vorbis q6 / LAME V2): the master is
# limited this far below the ceiling so the decoded OGG and MP3 stay under it.
ENCODING_HEADROOM_DB = 1.5
LOUDNESS_STEP_LU = 0.05  # normalisation stops once the limited master is this close to target
_MAX_LOUDNESS_PASSES = 8
_CIRCULAR_CONTEXT_S = 0.1  # a loop's wrap-around beside its ends, for soxr's filter to settle
MAX_MAKEUP_DB = 24.0  # gain beyond plain normalisation, for loudness the limiter takes away
_MIN_DURATION_S = 0.4  # one BS.1770 gating block


@dataclass(frozen=True)
class Master:
    """A mastered track at its final rate and channel count, plus what mastering measured."""

    audio: np.ndarray  # float32 (channels, frames), as many channels as the spec asks for
    sample_rate: int
    loop_start: int | None  # samples at sample_rate; None when not a loop
    loop_length: int | None
    input_lufs: float  # the prepared signal (DC removed, channels and rate converted) before gain
    gain_db: float  # normalisation gain applied
    limiter_reduction_db: float  # largest gain reduction by the true-peak limiter (0 when idle)


@dataclass(frozen=True)
class Prepared:
    """A render or recording on the master's timeline (rate, channels, DC, leading silence
    done), before its loop or fades and its gain: what the analysis listens to."""

    audio: np.ndarray  # float32 (channels, frames) at the output rate
    sample_rate: int
    input_lufs: float


def master(
    audio: np.ndarray, sample_rate: int, mastering: Mastering, *, loop: bool, duration_s: float
) -> Master:
    """DC removal, rate/channels, trim, loop crossfade or fades, loudness normalisation with
    true-peak limiting, re-measured until the limited master is on target.

    Non-loops longer than `duration_s` are cut to it (the fade-out ends there); loops need
    audio running `mastering.loop_crossfade_ms` (plus up to loops.SEARCH_S) past `duration_s`
    for the crossfade tail, and come back with loop_start 0 and loop_length == frames."""
    prepared = prepare(audio, sample_rate, mastering, loop=loop, duration_s=duration_s)
    return finish(prepared, mastering, loop=loop, duration_s=duration_s)


def prepare(
    audio: np.ndarray,
    sample_rate: int,
    mastering: Mastering,
    *,
    loop: bool,
    duration_s: float,
    recording: bool = False,
) -> Prepared:
    """Check the input, map channels and rate, remove DC, trim silence (only leading for loops,
    and none for a `recording` that is its loop already, as long as `duration_s`)."""
    # 1. Check inputs
    _check_inputs(audio, sample_rate, duration_s)
    # 2. Channel layout, DC removal and output sample rate
    sr = mastering.sample_rate
    x = _prepare(audio, sample_rate, sr, mastering.channels, circular=False)
    input_lufs = integrated_lufs(x, sr)
    if not np.isfinite(input_lufs):
        if audio.shape[0] > mastering.channels and _heard_apart(audio, sample_rate):
            raise AudioError(
                f"its {audio.shape[0]} channels cancel out when mixed down to "
                f"{mastering.channels} (out of phase): nothing is left above the -70 LUFS gate"
            )
        raise AudioError("audio is silent (no block above the -70 LUFS gate): cannot normalise")
    # 3. Trim silence at the level the file will have
    threshold_dbfs = SILENCE_DBFS - mastering.loudness.integrated_lufs + input_lufs
    if not loop:
        return Prepared(_long_enough(_trim_silence(x, threshold_dbfs), sr), sr, input_lufs)
    # A loop is its music from the first sound of the recording itself, filtered (and resampled)
    # as a circle from there. Found after filtering, the start came early: the filter's backward
    # pass, and a circle's wrap of the end, reach into the silence before the music, above the
    # trim's threshold, and put 25-33 ms of it into every loop.
    # A recording cut to its loop starts it on its first sample, a rest on the downbeat too.
    whole = recording and ends_at_its_loop(audio.shape[1], duration_s * sample_rate)
    start = 0 if whole else _loud(audio - audio.mean(axis=1, keepdims=True), threshold_dbfs)[0]
    looped = _prepare(
        audio[:, start:], sample_rate, sr, mastering.channels, circular=True, highpass=not whole
    )
    return Prepared(_long_enough(looped, sr), sr, input_lufs)


def _heard_apart(audio: np.ndarray, sample_rate: int) -> bool:
    """Whether each channel as it is, less its DC (whose filter's start alone reads as sound),
    has programme above the -70 LUFS gate."""
    apart = _prepare(audio, sample_rate, sample_rate, audio.shape[0], circular=False)
    return bool(np.isfinite(integrated_lufs(apart, sample_rate)))


def _long_enough(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """`x`, unless trimming its silence left less than one gating block (a click in silence):
    said so, before the analysis would say the trimmed length alone."""
    if x.shape[1] < BLOCK_S * sample_rate:
        raise AudioError(
            f"{x.shape[1] / sample_rate:.3f} s of audio once its silence is trimmed; loudness "
            f"needs at least {BLOCK_S} s"
        )
    return x


def finish(
    prepared: Prepared,
    mastering: Mastering,
    *,
    loop: bool,
    duration_s: float,
    bar_loop: BarLoop | None = None,
    recorded_loop: bool = False,
    headroom_db: float = ENCODING_HEADROOM_DB,
    max_gain_db: float = math.inf,
    loudness_out_of_reach_fails: bool = True,
) -> Master:
    """Loop or cut and fade, then normalise (with at most `max_gain_db`) and limit
    `headroom_db` under the true-peak ceiling. `bar_loop` (first downbeat, whole bars in
    samples) cuts a loop on the bar instead of near `duration_s`; `recorded_loop`: a recording
    that is its loop already, kept whole (nothing follows its end to search or crossfade; the
    seam gates judge its wrap). A loudness target out of reach is an AudioError, or, with
    `loudness_out_of_reach_fails` False, the nearest master, for the loudness gate to judge."""
    x, sr = prepared.audio, prepared.sample_rate
    # 4. Loop crossfade, or cut and fades
    loop_start = 0
    if loop and bar_loop is not None:
        loop_start = bar_loop.start
        x = make_bar_loop(x, sr, bar_loop, crossfade_ms=mastering.loop_crossfade_ms)
    elif loop and not recorded_loop:
        x = make_loop(x, sr, duration_s, mastering.loop_crossfade_ms)
    elif not loop:
        x = _fade(x[:, : round(duration_s * sr)], sr, mastering.fade_in_ms, mastering.fade_out_s)
    # 5. Normalise and limit: measure, apply, re-measure
    out, gain_db, reduction_db = _normalise(
        x,
        sr,
        mastering,
        loop_start=loop_start if loop else None,
        headroom_db=headroom_db,
        max_gain_db=max_gain_db,
        out_of_reach_fails=loudness_out_of_reach_fails,
    )
    return Master(
        audio=out.astype(np.float32),
        sample_rate=sr,
        loop_start=loop_start if loop else None,
        loop_length=out.shape[1] - loop_start if loop else None,
        input_lufs=prepared.input_lufs,
        gain_db=gain_db,
        limiter_reduction_db=reduction_db,
    )


def _check_inputs(audio: np.ndarray, sample_rate: int, duration_s: float) -> None:
    if audio.ndim != 2 or audio.shape[0] not in (1, 2):
        raise AudioError(f"audio must be shaped (1 or 2 channels, frames), got {audio.shape}")
    if sample_rate <= 0:
        raise AudioError(f"sample_rate must be positive, got {sample_rate}")
    if duration_s < _MIN_DURATION_S:
        raise AudioError(f"duration_s must be at least {_MIN_DURATION_S} s, got {duration_s}")
    if audio.shape[1] < _MIN_DURATION_S * sample_rate:
        raise AudioError(
            f"audio is {audio.shape[1] / sample_rate:.3f} s long; mastering needs at least "
            f"{_MIN_DURATION_S} s"
        )
    if not np.all(np.isfinite(audio)):
        raise AudioError("audio contains NaN or infinite samples")


def _prepare(
    audio: np.ndarray,
    rate_in: int,
    rate_out: int,
    channels: int,
    *,
    circular: bool,
    highpass: bool = True,
) -> np.ndarray:
    """Float32 audio with `channels` channels at `rate_out`, DC removed (with its drift, unless
    not `highpass`: its mean only). A downmix comes first and a mono render is duplicated last,
    so no channel is filtered twice; the channels are filtered and resampled on threads of their
    own (scipy and soxr let go of the GIL)."""
    x = audio if audio.shape[0] <= channels else to_channels(audio, channels)
    with ThreadPoolExecutor(max_workers=x.shape[0]) as pool:
        prepared = list(
            pool.map(
                lambda c: _prepare_channel(
                    c, rate_in, rate_out, circular=circular, highpass=highpass
                ),
                x,
            )
        )
    return to_channels(np.stack(prepared), channels)


def _prepare_channel(
    channel: np.ndarray, rate_in: int, rate_out: int, *, circular: bool, highpass: bool
) -> np.ndarray:
    # A recording that is its loop, as exported: a high-pass rang for 10 ms into a rest on its
    # downbeat (its wrap brings the end's last note there), above -60 dBFS, so the rest read
    # as no leading silence at all.
    filtered = (
        _without_dc(channel, rate_in, circular=circular)
        if highpass
        else (channel - channel.mean(dtype=np.float64)).astype(np.float32)
    )
    if rate_in == rate_out:
        return filtered
    # HQ is soxr's 20-bit quality: float32 carries it, at half the time of float64.
    if circular:
        # As a circle too, with whole blocks of samples on either side (160 at 48 kHz are 147
        # at 44.1 kHz), so the cut lands on the input's own first sample.
        block_in = rate_in // math.gcd(rate_in, rate_out)
        blocks = math.ceil(_CIRCULAR_CONTEXT_S * rate_in / block_in)
        wrapped = np.pad(filtered, blocks * block_in, mode="wrap")
        start = blocks * block_in * rate_out // rate_in
        resampled: np.ndarray = soxr.resample(wrapped, rate_in, rate_out, quality="HQ")
        # To the nearest sample: a recording that is its loop, 32 bars of 3/4 at 140 bpm
        # (1974857.14 samples at 48 kHz), looped a sample long.
        return resampled[start : start + round(filtered.size * rate_out / rate_in)]
    resampled = soxr.resample(filtered, rate_in, rate_out, quality="HQ")
    frames = math.ceil(filtered.size * rate_out / rate_in)
    # soxr rounds a fractional length down: 2.345 s at 48 kHz (112560 samples) came back as
    # 103414 at 44.1 kHz, a sample short of the track's 103415. The last sample, repeated,
    # makes up the fraction; the cut to the duration follows.
    if resampled.size < frames:
        resampled = np.pad(resampled, (0, frames - resampled.size), mode="edge")
    return resampled


def _without_dc(channel: np.ndarray, rate: int, *, circular: bool) -> np.ndarray:
    """The channel less its mean, then high-passed forwards and backwards (no phase shift) in
    float64 (a 10 Hz filter is too narrow for float32), as scipy's sosfiltfilt does it, a piece
    at a time into one float64 copy: sosfiltfilt's four took 1.8 GB for 10 minutes of stereo."""
    sos = butter(2, DC_HIGHPASS_HZ, btype="highpass", fs=rate, output="sos")
    mean = float(channel.mean(dtype=np.float64))
    frames = channel.size
    if circular:
        # A loop's end meets its start: filtered as a circle, a recording that is already its
        # loop keeps its seam (the filter's edges put a step there: a seam jump of 15).
        pad = 3 * round(rate / DC_HIGHPASS_HZ)  # the filter has settled well before
        head = channel.take(np.arange(-pad, 0), mode="wrap").astype(np.float64) - mean
        tail = channel.take(np.arange(frames, frames + pad), mode="wrap").astype(np.float64) - mean
    else:
        # sosfiltfilt's default: an odd extension of 3 x its taps at either end
        ntaps = 2 * len(sos) + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum())
        pad = 3 * int(ntaps)
        ends = (
            channel[: pad + 1].astype(np.float64) - mean,
            channel[-pad - 1 :].astype(np.float64) - mean,
        )
        head = 2.0 * ends[0][0] - ends[0][pad:0:-1]
        tail = 2.0 * ends[1][-1] - ends[1][-2::-1]
    y = np.empty(frames + 2 * pad)
    zi = sosfilt_zi(sos)
    state = zi * head[0]
    y[:pad], state = sosfilt(sos, head, zi=state)
    for start in range(0, frames, FILTER_FRAMES):
        piece = channel[start : start + FILTER_FRAMES].astype(np.float64) - mean
        y[pad + start : pad + start + piece.size], state = sosfilt(sos, piece, zi=state)
    y[pad + frames :], state = sosfilt(sos, tail, zi=state)
    state = zi * y[-1]
    for end in range(y.size, 0, -FILTER_FRAMES):
        start = max(0, end - FILTER_FRAMES)
        backwards, state = sosfilt(sos, y[start:end][::-1], zi=state)
        y[start:end] = backwards[::-1]
    filtered: np.ndarray = y[pad : pad + frames].astype(np.float32)
    return filtered


def _trim_silence(x: np.ndarray, threshold_dbfs: float) -> np.ndarray:
    """Drop leading and trailing samples below `threshold_dbfs` in all channels."""
    loud = _loud(x, threshold_dbfs)
    return x[:, loud[0] : loud[-1] + 1]


def _loud(x: np.ndarray, threshold_dbfs: float) -> np.ndarray:
    """The frames where any channel reaches `threshold_dbfs`; AudioError when there is none."""
    loud = np.flatnonzero(np.abs(x).max(axis=0) >= 10.0 ** (threshold_dbfs / 20.0))
    if loud.size == 0:
        raise AudioError(f"audio has no sample above {threshold_dbfs:.1f} dBFS: nothing to keep")
    return loud


def _fade(x: np.ndarray, sample_rate: int, fade_in_ms: float, fade_out_s: float) -> np.ndarray:
    """Linear fade-in and fade-out (linear, so the tail is below -60 dBFS only at its very end)."""
    fade_in = round(fade_in_ms / 1000.0 * sample_rate)
    fade_out = round(fade_out_s * sample_rate)
    if fade_in + fade_out > x.shape[1]:
        raise AudioError(
            f"audio is {x.shape[1] / sample_rate:.2f} s long after trimming: too short for a "
            f"{fade_in_ms} ms fade-in plus a {fade_out_s} s fade-out; shorten fade_out_s"
        )
    out = x.copy()
    if fade_in:
        out[:, :fade_in] *= np.arange(fade_in) / fade_in
    if fade_out:
        out[:, x.shape[1] - fade_out :] *= np.arange(fade_out, 0, -1) / fade_out
    return out


@dataclass(frozen=True)
class _Pass:
    """One pass of the normalisation: the gain tried, the loudness it gave, the limiter's
    envelope (the audio is made again from them: a long track's copies add up)."""

    gain_db: float
    lufs: float
    envelope_db: np.ndarray
    limiting: bool


def _gained(x: np.ndarray, gain_db: float, envelope_db: np.ndarray | None) -> np.ndarray:
    """`x` at `gain_db`, under the limiter's envelope when it limits."""
    scale = 10.0 ** (gain_db / 20.0)
    out: np.ndarray = x * (scale if envelope_db is None else scale * 10.0 ** (envelope_db / 20.0))
    return out


def _normalise(
    x: np.ndarray,
    sample_rate: int,
    mastering: Mastering,
    *,
    loop_start: int | None,
    headroom_db: float,
    max_gain_db: float,
    out_of_reach_fails: bool,
) -> tuple[np.ndarray, float, float]:
    """Gain to the loudness target, limit, re-measure and correct the gain (limiting lowers the
    loudness, more the harder it works); returns the master, its gain and the largest reduction."""
    _long_enough(x, sample_rate)  # gating blocks to measure
    target_lufs = mastering.loudness.integrated_lufs
    ceiling_dbtp = mastering.loudness.true_peak_max_dbtp - headroom_db
    # A constant gain scales the true peaks and the blocks' powers: measure both once (at the
    # same time: they are independent), and measure again only what the limiter changed.
    with ThreadPoolExecutor(max_workers=1) as pool:
        powers_job = pool.submit(block_powers, x, sample_rate)
        peaks = sample_true_peaks(x, loop_start=loop_start)
        powers = powers_job.result()
    gain_db = target_lufs - gated_lufs(powers)
    # Past this much gain the limiter takes what the gain adds: a master brick-walled by +110 dB
    # (the secant chasing -8 LUFS under -2.5 dBTP) is no master.
    most_gain_db = min(gain_db + MAX_MAKEUP_DB, max_gain_db)
    # Secant steps on loudness(gain): under heavy limiting 1 dB of gain adds well under 1 LU.
    slope = 1.0
    previous: tuple[float, float] | None = None
    best: _Pass | None = None
    for _ in range(_MAX_LOUDNESS_PASSES):
        scale = 10.0 ** (gain_db / 20.0)
        envelope_db = limiter_gain_db(
            peaks * scale, sample_rate, ceiling_dbtp, circular=loop_start is not None
        )
        limiting = bool(envelope_db.any())
        if limiting:
            lufs = integrated_lufs(_gained(x, gain_db, envelope_db), sample_rate)
        else:
            lufs = gated_lufs(powers * scale**2)
        if best is None or abs(target_lufs - lufs) < abs(target_lufs - best.lufs):
            best = _Pass(gain_db, lufs, envelope_db, limiting)
        if abs(target_lufs - lufs) <= LOUDNESS_STEP_LU:
            break
        if previous is not None and previous[0] != gain_db:
            slope = float(np.clip((lufs - previous[1]) / (gain_db - previous[0]), 0.05, 1.0))
        previous = (gain_db, lufs)
        next_db = min(gain_db + (target_lufs - lufs) / slope, most_gain_db)
        if next_db == gain_db:
            break
        gain_db = next_db
    assert best is not None
    # Near the ceiling more gain mostly feeds the limiter: a pass within the track's own
    # tolerance is a master the loudness gate passes, not a failure.
    if out_of_reach_fails and abs(target_lufs - best.lufs) > mastering.loudness.tolerance_lu:
        raise AudioError(
            f"cannot reach {target_lufs} LUFS under a {mastering.loudness.true_peak_max_dbtp} "
            f"dBTP true-peak ceiling (the master limited to {ceiling_dbtp:g}, headroom for the "
            f"encoders) within {mastering.loudness.tolerance_lu:g} LU: {best.lufs:.2f} LUFS at "
            f"best, with {MAX_MAKEUP_DB:g} dB of gain beyond plain normalisation for the limiter"
        )
    limited = _gained(x, best.gain_db, best.envelope_db if best.limiting else None)
    if not best.limiting:
        # Every scaled peak is already under the ceiling (limiter_gain_db found none over it).
        return limited, best.gain_db, 0.0
    # The envelope's own modulation can leave a few peaks a hair over: verify (and catch them).
    limited, extra_db = limit_true_peak(limited, sample_rate, ceiling_dbtp, loop_start=loop_start)
    return limited, best.gain_db, -float(best.envelope_db.min()) + extra_db
