"""Measuring audio (numbers, no verdicts): loudness, peaks, silence, clipping, loop seam."""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from soundtrack.audio import check_signal, read_audio
from soundtrack.errors import AudioError
from soundtrack.loudness import BLOCK_S, integrated_lufs, played_peaks
from soundtrack.spec import GateLimits

BLOCK_MS = 10.0  # silence is judged per 10 ms block, so a zero crossing is never "silence"
SEAM_STEP_WINDOW_MS = 10.0  # the audio either side of the wrap that its click is compared to
# A click this far under the loop's RMS is masked by the music; it is also the size of the
# seam a lossy codec leaves (Vorbis q6 noise sits about 27 dB under the RMS of a master).
SEAM_MASKING_DB = -30.0
_BAR_LINE_SLACK = 2  # samples a bar line of a loop's exact grid may be off its attack (rounding)
_BAR_ATTACK_SPREAD = 1.5  # how much sharper one bar's attack may be than another's
SHORT_TERM_S = 3.0  # EBU Tech 3341 short-term loudness window
_PLATEAU_EDGE_MIN = 1e-4  # of the plateau level (-80 dB): about 3 LSB of 16-bit near full scale
_CLIP_SEARCH_DB = 6.0  # how far under the peak a clip level is looked for
_CLIP_PLATEAUS_PER_STRAY = 10  # a clip level under the peak: its plateaus per sample above it


@dataclass(frozen=True)
class Metrics:
    """What was measured on one piece of audio; `-inf` levels mean digital silence."""

    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    integrated_lufs: float  # BS.1770-4 gated; -inf when no block clears the -70 LUFS gate
    true_peak_dbtp: float  # 4x oversampled (BS.1770-4 Annex 2), across the loop seam too
    sample_peak_dbfs: float
    clipped_runs: int  # runs of >= clip_run_samples equal samples at the signal's clip level
    clip_run_samples: int
    dc_offset: float  # largest per-channel mean, as a fraction of full scale
    lead_silence_s: float
    trail_silence_s: float
    longest_dropout_s: float  # longest silent span between the first and last sound
    silence_threshold_dbfs: float
    loop_start: int | None = None  # frames
    loop_length: int | None = None  # frames
    seam_jump_ratio: float | None = None  # click at the wrap / local 90th percentile
    seam_loudness_change_lu: float | None = None  # short-term loudness, loop end vs loop start
    # The music's own change: the largest over the loop's bar lines (None: no usable bar line)
    bar_loudness_change_lu: float | None = None  # as seam_loudness_change_lu, across a bar line
    seam_loudness_excess_lu: float | None = None  # seam change beyond bar_loudness_change_lu

    def as_row(self) -> dict[str, float | int | None]:
        """The metrics as a flat dict (one row of the gates' table)."""
        return asdict(self)


def measure(
    audio: np.ndarray,
    sample_rate: int,
    *,
    loop_start: int | None = None,
    loop_length: int | None = None,
    clip_run_samples: int = GateLimits.clip_run_samples,
    silence_threshold_dbfs: float = GateLimits.dropout_threshold_dbfs,
    bar_lines: Sequence[int] = (),
) -> Metrics:
    """Measure float (channels, frames) audio; the seam is measured when loop points are given,
    and set against the music's own change across the `bar_lines` (frames) inside the loop."""
    if audio.ndim == 2 and audio.shape[0] > 2:
        # BS.1770 weighs a surround channel by where it plays (LFE left out, surrounds 1.41),
        # which a channel count alone does not say.
        raise AudioError(
            f"{audio.shape[0]} channels: the gates measure mono and stereo audio, what soundtrack "
            "masters and delivers; downmix it to stereo first"
        )
    check_signal(audio, sample_rate, name="audio", needs="loudness", min_duration_s=BLOCK_S)
    if (loop_start is None) != (loop_length is None):
        raise AudioError("loop_start and loop_length must be given together")
    frames = audio.shape[1]
    outside = [b for b in bar_lines if not 0 <= b <= frames]
    if outside:
        raise AudioError(
            f"bar lines must lie within the audio's {frames} frames, got {outside[:3]}"
        )
    threshold = 10.0 ** (silence_threshold_dbfs / 20.0)
    lead_s, trail_s, dropout_s = _silences(audio, sample_rate, threshold)
    seam = _Seam()
    loop = None
    if loop_start is not None and loop_length is not None:
        if loop_length < 1:  # a smpl loop ending before it starts, a LOOPSTART past the end
            raise AudioError(
                f"the loop starts at frame {loop_start} and ends at frame "
                f"{loop_start + loop_length}: its end must come after its start"
            )
        if loop_length < 2:
            raise AudioError(
                f"the loop from frame {loop_start} is {loop_length} frame(s) long; a loop needs "
                "at least 2"
            )
        if loop_start < 0 or loop_start + loop_length > frames:
            raise AudioError(
                f"loop [{loop_start}, {loop_start + loop_length}) frames lies outside the "
                f"audio's {frames} frames"
            )
        region = audio[:, loop_start : loop_start + loop_length]
        inside = [int(b) - loop_start for b in bar_lines if 0 < b - loop_start < loop_length]
        seam = _measure_seam(region, sample_rate, inside)
        loop = (loop_start, loop_length)
    sample_peak = float(np.max(np.abs(audio)))
    return Metrics(
        sample_rate=sample_rate,
        channels=audio.shape[0],
        frames=frames,
        duration_s=frames / sample_rate,
        integrated_lufs=integrated_lufs(audio, sample_rate),
        true_peak_dbtp=_dbfs(float(played_peaks(audio, loop=loop).max())),
        sample_peak_dbfs=_dbfs(sample_peak),
        clipped_runs=_clipped_runs(audio, clip_run_samples, threshold),
        clip_run_samples=clip_run_samples,
        dc_offset=float(np.max(np.abs(np.mean(audio, axis=1, dtype=np.float64)))),
        lead_silence_s=lead_s,
        trail_silence_s=trail_s,
        longest_dropout_s=dropout_s,
        silence_threshold_dbfs=silence_threshold_dbfs,
        loop_start=loop_start,
        loop_length=loop_length,
        seam_jump_ratio=seam.jump_ratio,
        seam_loudness_change_lu=seam.loudness_change_lu,
        bar_loudness_change_lu=seam.bar_loudness_change_lu,
        seam_loudness_excess_lu=seam.loudness_excess_lu,
    )


def measure_file(
    path: Path,
    *,
    clip_run_samples: int = GateLimits.clip_run_samples,
    silence_threshold_dbfs: float = GateLimits.dropout_threshold_dbfs,
    bar_lines: Sequence[int] = (),
) -> Metrics:
    """Decode `path` and measure it, with the loop points from its OGG or WAV loop tags (its
    seam judged against `bar_lines`, frames of the file, when given)."""
    audio, sample_rate = read_audio(path)
    return measure_decoded(
        path,
        audio,
        sample_rate,
        clip_run_samples=clip_run_samples,
        silence_threshold_dbfs=silence_threshold_dbfs,
        bar_lines=bar_lines,
    )


def measure_decoded(
    path: Path,
    audio: np.ndarray,
    sample_rate: int,
    *,
    clip_run_samples: int = GateLimits.clip_run_samples,
    silence_threshold_dbfs: float = GateLimits.dropout_threshold_dbfs,
    bar_lines: Sequence[int] = (),
) -> Metrics:
    """measure_file of `path` already decoded to `audio`: its samples are read once."""
    loop = read_loop_tags(path, audio.shape[-1])
    return measure(
        audio,
        sample_rate,
        loop_start=None if loop is None else loop[0],
        loop_length=None if loop is None else loop[1],
        clip_run_samples=clip_run_samples,
        silence_threshold_dbfs=silence_threshold_dbfs,
        bar_lines=bar_lines,
    )


def read_loop_tags(path: Path, frames: int) -> tuple[int, int] | None:
    """(loop start, loop length) in frames from OGG or FLAC LOOPSTART with LOOPLENGTH (RPG
    Maker, Godot) or LOOPEND (SDL_mixer), or a WAV or RF64 `smpl` chunk's forward loop; None
    when the file carries no loop. `frames`: the decoded file's length."""
    with path.open("rb") as f:
        magic = f.read(12)
    if magic[:4] in (b"OggS", b"fLaC"):
        return _vorbis_loop(path, frames)
    if magic[:4] in (b"RIFF", b"RF64") and magic[8:12] == b"WAVE":
        return _wav_smpl_loop(path)
    return None


def _vorbis_loop(path: Path, frames: int) -> tuple[int, int] | None:
    import mutagen  # lazy: only inspect and decoded-file checks read tags
    from mutagen.flac import FLAC
    from mutagen.oggflac import OggFLAC
    from mutagen.oggopus import OggOpus
    from mutagen.oggspeex import OggSpeex
    from mutagen.oggvorbis import OggVorbis

    try:
        # These kinds only: left to choose, mutagen trusts a .wav name over the OggS inside.
        tags = mutagen.File(path, options=[OggVorbis, OggOpus, OggFLAC, OggSpeex, FLAC])
    except mutagen.MutagenError as exc:
        raise AudioError(f"cannot read the tags of {path}: {exc}") from exc
    if tags is None or tags.tags is None:
        return None
    start, length, end = (tags.tags.get(name) for name in ("LOOPSTART", "LOOPLENGTH", "LOOPEND"))
    if not start and not length:
        return None
    first = _frame_count(path, "LOOPSTART", start)
    if length:
        return first, _frame_count(path, "LOOPLENGTH", length)
    if end:  # SDL_mixer's: the first frame after the loop
        return first, _frame_count(path, "LOOPEND", end) - first
    return first, frames - first  # a loop to the end, as RPG Maker reads LOOPSTART alone


# Plain ASCII digits (int() also takes '٣' and '1_000'), few enough for any file's length.
_FRAME_COUNT = re.compile(r"[0-9]{1,15}")


def _frame_count(path: Path, name: str, values: list[str] | None) -> int:
    if not values:
        raise AudioError(f"{path}: LOOPLENGTH without {name}: a loop needs its start")
    value = values[0].strip()
    if not _FRAME_COUNT.fullmatch(value):
        shown = value if len(value) <= 24 else f"{value[:24]}..."
        raise AudioError(f"{path}: {name}={shown!r} is not a whole number of frames")
    return int(value)


_SMPL_LOOP_KINDS = {1: "ping-pong", 2: "backward"}


def _wav_smpl_loop(path: Path) -> tuple[int, int] | None:
    """The first loop of a RIFF or RF64 WAVE file's `smpl` chunk, read chunk by chunk (a long
    WAV is not read whole to find it)."""
    file_size = path.stat().st_size
    with path.open("rb") as f:
        rf64 = f.read(4) == b"RF64"
        f.seek(12)
        data_size = None  # RF64: the data chunk's size is in its ds64 chunk
        while len(head := f.read(8)) == 8:
            chunk_id, size = struct.unpack("<4sI", head)
            if rf64 and chunk_id == b"ds64" and size >= 16:
                data_size = struct.unpack("<8xQ", f.read(16))[0]
                size -= 16
            elif rf64 and chunk_id == b"data" and size == 0xFFFFFFFF and data_size is not None:
                size = data_size
            # smpl: 9 header words, then 6 words per loop (cue id, type, start, end, fraction,
            # count)
            elif chunk_id == b"smpl" and size >= 36:
                if size > file_size - f.tell():  # not read: its size may claim gigabytes
                    raise AudioError(f"{path}: its smpl chunk (loop points) is cut short")
                body = f.read(size)
                if struct.unpack_from("<I", body, 28)[0] == 0 or size < 60:
                    return None
                kind, start, end = struct.unpack_from("<III", body, 36 + 4)
                if kind != 0:
                    named = _SMPL_LOOP_KINDS.get(kind, f"of type {kind}")
                    raise AudioError(
                        f"{path}: its smpl loop is {named}; a game engine's loop plays forward, "
                        "and only a forward loop (type 0) is read"
                    )
                return start, end - start + 1  # the smpl end is the last sample played
            f.seek(size + (size & 1), 1)  # RIFF chunks are padded to even sizes
    return None


def _dbfs(amplitude: float) -> float:
    return -math.inf if amplitude <= 0.0 else 20.0 * math.log10(amplitude)


def _run_lengths(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the runs of True in a 1-D boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    starts, ends = edges[::2], edges[1::2]
    return starts, ends - starts


def _silences(audio: np.ndarray, sample_rate: int, threshold: float) -> tuple[float, float, float]:
    """Leading, trailing and longest inner silence in seconds: runs of BLOCK_MS blocks with no
    sample above `threshold`, each run reaching to the loud samples either side of it."""
    block = max(1, round(BLOCK_MS / 1000.0 * sample_rate))
    frames = audio.shape[1]
    blocks = -(-frames // block)
    peak = np.zeros(blocks * block, dtype=np.float32)
    peak[:frames] = np.max(np.abs(audio), axis=0)
    quiet = peak.reshape(blocks, block).max(axis=1) <= threshold
    duration_s = frames / sample_rate
    if quiet.all():
        return duration_s, duration_s, duration_s

    # Where a loud block's loud samples begin and end: a silence of a block or more ends (or
    # begins) there, not at the block's edge (up to 10 ms short: a 2.0 s gap read 1.99 s).
    def loud_in(b: int) -> np.ndarray:
        return np.flatnonzero(peak[b * block : (b + 1) * block] > threshold)

    loud = np.flatnonzero(~quiet)
    first, last = int(loud[0]), int(loud[-1])
    # Less than a block at either end is no silence: a wave that starts or ends at a zero
    # crossing (a loop's wrap may lie anywhere) is not silent for those few samples.
    lead_s = (first * block + int(loud_in(first)[0])) / sample_rate if first else 0.0
    end = last * block + int(loud_in(last)[-1]) + 1 if last < blocks - 1 else frames
    trail_s = max(0.0, duration_s - end / sample_rate)
    starts, lengths = _run_lengths(quiet[first : last + 1])
    if not lengths.size:
        return lead_s, trail_s, 0.0
    # Reaching out adds less than two blocks: only runs that long or nearly can be the longest.
    near = lengths >= lengths.max() - 1
    gaps = [
        n * block + int(loud_in(first + s + n)[0]) + block - 1 - int(loud_in(first + s - 1)[-1])
        for s, n in zip(starts[near].tolist(), lengths[near].tolist(), strict=True)
    ]
    return lead_s, trail_s, max(gaps) / sample_rate


def _clipped_runs(audio: np.ndarray, min_run: int, floor: float) -> int:
    """Clipped plateaus in every channel, at its positive and its negative clip level."""
    return sum(
        _clip_plateaus(channel * side, _lsb(channel), min_run, floor)
        for channel in audio
        for side in (1.0, -1.0)
    )


def _clip_plateaus(signed: np.ndarray, lsb: float, min_run: int, floor: float) -> int:
    """Runs of >= `min_run` equal samples at the level `signed`'s tops were clipped at,
    entered or left steeply from its own side: clipped plateaus, even turned down later."""
    top = float(signed.max())
    if top <= floor:
        return 0
    # Few samples lie near the peak: read the runs off their indices.
    near = np.flatnonzero(signed >= top * 10.0 ** (-_CLIP_SEARCH_DB / 20.0))
    values = signed[near]
    breaks = np.flatnonzero((np.diff(near) != 1) | (values[1:] != values[:-1]))
    starts = near[np.concatenate(([0], breaks + 1))]
    ends = near[np.concatenate((breaks, [near.size - 1]))]
    n = ends - starts + 1
    long_enough = n >= min_run
    starts, ends, n = starts[long_enough], ends[long_enough], n[long_enough]
    level = signed[starts]
    before = signed[np.maximum(starts - 1, 0)]
    after = signed[np.minimum(ends + 1, signed.size - 1)]
    edge = np.maximum(level - before, level - after)
    # A rounded crest (a slow wave quantised to integers) leaves its top gently; a clipped wave
    # hits the plateau at speed. n samples within one step of the crest hold its curvature to
    # 4 / (n - 1)^2 steps per sample^2, so a smooth wave steps off them by at most
    # 4n / (n - 1)^2, plus a step of rounding.
    smooth = lsb * (1.0 + 4.0 * n / np.maximum(n - 1, 1) ** 2)
    steep = np.maximum(_PLATEAU_EDGE_MIN * level, smooth)
    # A plateau entered from zero or beyond and left back there in one step each is a pulse or
    # square wave's (a chiptune's): a clipped wave comes from its own side.
    from_far = (starts == 0) | (before <= 0)  # a file's edge holds no side
    to_far = (ends == signed.size - 1) | (after <= 0)
    # Several voices of squares step between flat levels on one side of zero: the three
    # samples either side hold two values at most, where a clipped wave moves.
    pulse = (from_far & to_far) | (_stepped(signed, starts - 1, -1) & _stepped(signed, ends + 1, 1))
    levels, plateaus = np.unique(level[(edge > steep) & ~pulse], return_counts=True)
    # The clip level is the peak, or a level under it that many plateaus share: clipping
    # repeats one level, which a part mixed in after the clip passes only now and then, where
    # the samples of noisy crests pass the level each of their runs sits at many times over.
    above = values.size - np.searchsorted(np.sort(values), levels, side="right")
    clip_level = above * _CLIP_PLATEAUS_PER_STRAY < plateaus
    return int(plateaus[clip_level].max(initial=0))


def _stepped(channel: np.ndarray, first: np.ndarray, direction: int) -> np.ndarray:
    """Whether the three samples from each of `first` on, going `direction`, hold two values
    at most (a step signal's levels), rather than three (a wave moving)."""
    a, b, c = (channel[np.clip(first + direction * k, 0, channel.size - 1)] for k in range(3))
    out: np.ndarray = (a == b) | (b == c) | (a == c)
    return out


def _lsb(channel: np.ndarray) -> float:
    """The step of the integer samples `channel` was read from (8, 16 or 24 bits); 0 for audio
    that never was integers (a render, a decoded OGG or MP3)."""
    for bits in (8, 16, 24):
        scale = float(2 ** (bits - 1))
        head = channel[:4096] * scale
        if np.array_equal(head, np.round(head)):
            scaled = channel * scale
            if np.array_equal(scaled, np.round(scaled)):
                return 1.0 / scale
    return 0.0


@dataclass(frozen=True)
class _Seam:
    """The seam's measures; all None when no loop is measured."""

    jump_ratio: float | None = None
    loudness_change_lu: float | None = None
    bar_loudness_change_lu: float | None = None
    loudness_excess_lu: float | None = None


def _measure_seam(region: np.ndarray, sample_rate: int, bar_lines: Sequence[int]) -> _Seam:
    """The click and loudness change at the wrap of `region`, the music's largest loudness change
    across `bar_lines` (frames of `region`) and how far the wrap's change goes beyond it; without
    a usable bar line the excess is the raw change."""
    change_lu = _seam_loudness_change_lu(region, sample_rate)  # first: it refuses short loops
    jump = _seam_jump_ratio(region, sample_rate, bar_lines)
    bar_lu = _bar_loudness_change_lu(region, sample_rate, bar_lines)
    lu_excess = change_lu
    if bar_lu is not None:
        # Compared, not subtracted: inf - inf (silence at the seam and at a bar) is no number.
        lu_excess = 0.0 if bar_lu >= change_lu else change_lu - bar_lu
    return _Seam(jump, change_lu, bar_lu, lu_excess)


def _seam_jump_ratio(region: np.ndarray, sample_rate: int, bar_lines: Sequence[int] = ()) -> float:
    """The click at the wrap: the second difference across it (last sample -> first sample)
    over the 90th percentile of second differences within SEAM_STEP_WINDOW_MS either side (or
    the masking floor if higher, or a kink the wave itself makes there that is no smaller than
    the wrap's, or one on its `bar_lines` that the wrap's exceeds by no more than one bar's
    attack may exceed another's), worst channel.
    A seamless wrap reads about 1 or less; a cut through a tone reads tens."""
    width = max(3, round(SEAM_STEP_WINDOW_MS / 1000.0 * sample_rate))
    width = min(width, int(region.shape[1]) // 2)
    around = np.concatenate([region[:, -width:], region[:, :width]], axis=1)
    curvature = np.abs(np.diff(around, n=2, axis=1))
    # Second difference k spans frames k..k+2: k = width-2 and width-1 straddle the wrap.
    click = np.maximum(curvature[:, width - 2], curvature[:, width - 1])
    beside = np.concatenate([curvature[:, : width - 2], curvature[:, width:]], axis=1)
    # The masking floor: the curvature the loop's music masks, SEAM_MASKING_DB under its RMS.
    rms = np.sqrt(np.mean(np.square(region, dtype=np.float64), axis=1))
    floor = rms * 10.0 ** (SEAM_MASKING_DB / 20.0)
    typical = np.maximum(np.percentile(beside, 90, axis=1), floor)
    # A square wave steps at every edge: a wrap kinking no more than the wave itself does
    # within the window (the second largest: one step's two kinks, not one stray sample) is
    # its own shape. A drum hit's attack there passes it too, as it masks a click.
    own_step = np.sort(beside, axis=1)[:, -2]
    typical = np.where(click <= own_step, np.maximum(typical, own_step), typical)
    # A bar loop's wrap is a bar line: a wrap that kinks no more than the music's own attack
    # on one of its bar lines (a tone struck at zero phase on every downbeat: one kink, no
    # second), give or take how much one bar's attack differs from another's, is that attack.
    # The bar lines are the loop's exact grid, on the sample give or take rounding; a mis-cut's
    # grid misses the music's attacks by hundreds of samples.
    edge = _BAR_LINE_SLACK + 1
    on_bars = [
        np.abs(np.diff(region[:, b - edge : b + edge], n=2, axis=1)).max(axis=1)
        for b in bar_lines
        if edge <= b <= region.shape[1] - edge
    ]
    if on_bars:
        attack = np.max(on_bars, axis=0)
        typical = np.where(
            click <= _BAR_ATTACK_SPREAD * attack, np.maximum(typical, attack), typical
        )
    ratio = np.divide(click, typical, out=np.zeros_like(typical), where=typical > 0)
    ratio[(typical == 0) & (click > 0)] = math.inf
    return float(ratio.max())


def _short_term_width(region: np.ndarray, sample_rate: int) -> int:
    """Frames in the seam's loudness windows: SHORT_TERM_S, or half a shorter loop."""
    window_s = min(SHORT_TERM_S, int(region.shape[1]) / sample_rate / 2.0)
    if window_s < BLOCK_S:
        raise AudioError(
            f"loop is {region.shape[1] / sample_rate:.2f} s long; the seam needs at least "
            f"{2 * BLOCK_S} s"
        )
    return round(window_s * sample_rate)


def _seam_loudness_change_lu(region: np.ndarray, sample_rate: int) -> float:
    """Short-term loudness (3 s, or half a shorter loop) of the loop's end vs its start."""
    width = _short_term_width(region, sample_rate)
    return _loudness_change_lu(region[:, -width:], region[:, :width], sample_rate)


def _bar_loudness_change_lu(
    region: np.ndarray, sample_rate: int, bar_lines: Sequence[int]
) -> float | None:
    """The largest short-term loudness change, window before vs after, across the bar lines
    whose windows lie inside the loop; None when none does."""
    width = _short_term_width(region, sample_rate)
    # Windows may overlap the seam's: a phrase's largest change is as likely next to the wrap
    # as anywhere. A fade into the wrap then shows in part at the last bar lines too.
    changes = [
        _loudness_change_lu(region[:, bar - width : bar], region[:, bar : bar + width], sample_rate)
        for bar in bar_lines
        if width <= bar <= region.shape[1] - width
    ]
    return max(changes) if changes else None


def _loudness_change_lu(before: np.ndarray, after: np.ndarray, sample_rate: int) -> float:
    """Absolute difference of the loudness of two windows, each measured as one block."""
    a = integrated_lufs(before, sample_rate, block_s=before.shape[1] / sample_rate)
    b = integrated_lufs(after, sample_rate, block_s=after.shape[1] / sample_rate)
    if math.isinf(a) and math.isinf(b):
        return 0.0
    return abs(a - b)
