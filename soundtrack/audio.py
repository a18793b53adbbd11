"""Audio file I/O: read any file to float32 (channels, frames), write WAV atomically, run ffmpeg."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import imageio_ffmpeg
import numpy as np
import soundfile as sf

from soundtrack.atomic import atomic_path
from soundtrack.errors import AudioError


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg (libvorbis, libmp3lame, ebur128)."""
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def run_ffmpeg(args: Sequence[str], *, stdin: BinaryIO | None = None) -> str:
    """Run ffmpeg with `args` (no shell) reading `stdin` (an open file) if given; returns its
    stderr, raises AudioError when it fails."""
    cmd = [ffmpeg_exe(), "-hide_banner", *(["-nostdin"] if stdin is None else []), *args]
    try:
        proc = subprocess.run(cmd, stdin=stdin, capture_output=True, check=False)
    except OSError as exc:
        raise AudioError(f"cannot start ffmpeg ({cmd[0]}): {exc}") from exc
    stderr = proc.stderr.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        raise AudioError(
            f"ffmpeg {' '.join(args)} failed (exit {proc.returncode}): {stderr[-2000:]}"
        )
    return stderr


def check_signal(
    audio: np.ndarray,
    sample_rate: int,
    *,
    name: str,
    needs: str,
    min_duration_s: float,
    max_channels: int = 2,
) -> None:
    """Raise AudioError, naming `name`, unless `audio` is finite float (channels, frames), up
    to `max_channels`, of at least `min_duration_s`: what `needs` (a measurement) can take."""
    if audio.ndim != 2 or not 1 <= audio.shape[0] <= max_channels:
        channels = "1 or 2" if max_channels == 2 else f"1-{max_channels}"
        raise AudioError(f"{name} must be shaped ({channels} channels, frames), got {audio.shape}")
    if sample_rate <= 0:
        raise AudioError(f"sample_rate must be positive, got {sample_rate}")
    if audio.shape[1] < min_duration_s * sample_rate:
        raise AudioError(
            f"{name} is {_below(audio.shape[1] / sample_rate, min_duration_s)} s long; "
            f"{needs} needs at least {min_duration_s} s"
        )
    if not np.isfinite(audio).all():
        raise AudioError(f"{name} contains NaN or infinite samples")


def to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """(channels, frames) audio mapped to `channels`: mono repeated, or a mix down to mono."""
    if x.shape[0] == channels:
        return x
    if x.shape[0] == 1:
        return np.repeat(x, channels, axis=0)
    if channels == 1:
        mono: np.ndarray = x.mean(axis=0, keepdims=True)
        return mono
    raise AudioError(f"cannot map {x.shape[0]} channels to {channels}")


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """(channels, frames) float32 audio at `rate_out` (soxr, very high quality); as it is when
    the rates agree."""
    if rate_in == rate_out:
        return audio
    import soxr  # only a resample needs it: modules that read audio stay cheap to import

    out: np.ndarray = soxr.resample(audio.T, rate_in, rate_out, "VHQ").T
    return np.ascontiguousarray(out, dtype=np.float32)


def samples_sha256(audio: np.ndarray, sample_rate: int) -> str:
    """sha256 of a file's decoded samples (and their rate): its audio, whatever its tags say."""
    digest = hashlib.sha256(f"{sample_rate}:{audio.shape[0]}:".encode())
    digest.update(np.ascontiguousarray(audio, dtype=np.float32).tobytes())
    return digest.hexdigest()


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Read any audio file as float32 (channels, frames) and its sample rate; ffmpeg decodes
    what libsndfile cannot (AAC, ...) and every MP3."""
    check_file(path)
    promised_frames = 0
    is_mp3 = False
    try:
        # Bytes: libsndfile takes any name the file system does (soundfile encodes a str
        # strictly, so a name that is not UTF-8 raised).
        with sf.SoundFile(os.fsencode(path)) as f:
            is_mp3 = f.format == "MP3"
            # libsndfile reads an MP3 without a LAME header as long as its first frames say:
            # 27 s of a piped 60 s file, with no error. A length it does not know (a FLAC
            # written to a pipe) it gives as the largest count, which f.read would allocate.
            if f.format != "MP3" and f.frames != _UNKNOWN_LENGTH:
                if problem := cut_short(path, f.format, f.extra_info):
                    raise AudioError(problem)
                promised_frames = f.frames
                data = f.read(dtype="float32", always_2d=True)
                audio, sample_rate = np.ascontiguousarray(data.T), int(f.samplerate)
                return _checked(_whole(audio, promised_frames, path), sample_rate, path)
    except sf.LibsndfileError:
        pass  # a kind libsndfile cannot read, or a stream it loses (ffmpeg says how much is left)
    audio, sample_rate = decode_with_ffmpeg(path)
    # An Ogg file libsndfile cannot read (FLAC in Ogg) is cut short the same way.
    problem = _mp3_cut_short(path, audio.shape[1], sample_rate) if is_mp3 else _ogg_cut_short(path)
    if problem:
        raise AudioError(problem)
    return _whole(audio, promised_frames, path), sample_rate


_UNKNOWN_LENGTH = 2**63 - 1  # libsndfile's SF_COUNT_MAX
# libsndfile reads what a cut WAV holds without an error, and logs the header's size beside it.
_DATA_SIZE_LOG = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)
# What streaming writers put for the size they could not know: ffmpeg 0xFFFFFFFF, arecord
# 0x7FFFFFFF, SoX 0x7FFFF000. A size from here up is read as unknown, not as promised.
_UNKNOWN_SIZE_FROM = 0x7FFF0000


def cut_short(path: Path, file_format: str, log: str) -> str | None:
    """What is wrong with a WAV whose data chunk is cut short, or an Ogg file that does not end
    with its stream's last page, from libsndfile's format name and log (SoundFile.extra_info);
    None for any other file."""
    if file_format == "OGG":
        return _ogg_cut_short(path)
    found = _DATA_SIZE_LOG.search(log) if file_format in ("WAV", "WAVEX") else None
    if found is None:
        return None
    promised, held = int(found[1]), int(found[2])
    if not held < promised < _UNKNOWN_SIZE_FROM:
        return None
    return (
        f"{path} is cut short: its header promises {promised} bytes of audio, the file holds "
        f"{held} (an interrupted copy?)"
    )


_OGG_PAGE_MAX_BYTES = 27 + 255 + 255 * 255  # header, lacing values, data


def _ogg_cut_short(path: Path) -> str | None:
    """Why an Ogg file is not whole: its last page does not end its stream (libsndfile reads
    what is left of a cut one without an error); None for a whole one (bytes after its last
    page, as a tag, are no matter) or another kind of file."""
    with path.open("rb") as file:
        if file.read(4) != b"OggS":
            return None
        size = file.seek(0, os.SEEK_END)
        found = _last_ogg_page(file, size)
    if found is None:
        return f"{path} is cut short: not one page of it is whole (an interrupted copy?)"
    ends_stream, end = found
    if ends_stream:
        return None
    where = "inside a page" if end < size else "before its stream does"
    return f"{path} is cut short: it ends {where} (an interrupted copy?)"


def _last_ogg_page(file: BinaryIO, size: int) -> tuple[bool, int] | None:
    """(whether it ends its stream, where it ends) of a file's last whole page: the last
    "OggS" that reads as a page whose checksum holds (the pattern may also occur inside a
    page's data, a cut page or a tag after the stream), searched back from the end."""
    from mutagen.ogg import OggPage, error

    before = size  # pages starting before this offset are searched next
    while before > 0:
        start = max(0, before - _OGG_PAGE_MAX_BYTES)
        file.seek(start)
        block = file.read(before - start + _OGG_PAGE_MAX_BYTES)
        at = before - start
        while (at := block.rfind(b"OggS", 0, at)) >= 0:
            try:
                page = OggPage(io.BytesIO(block[at:]))
                written = page.write()  # with its checksum computed anew
            except (error, EOFError, ValueError):
                continue
            if block[at : at + len(written)] == written:
                return page.last, start + at + len(written)
        before = start
    return None


# An MP3's Xing or VBRI header counts its frames with the encoder's delay and padding (up to
# about two frames of 1152 samples), which decoders drop.
_MP3_SLACK_FRAMES = 3 * 1152


def _mp3_cut_short(path: Path, decoded_frames: int, sample_rate: int) -> str | None:
    """Why an MP3 is not whole: its Xing or VBRI header counts more than decodes. One without
    such a header says nothing of its length (libsndfile and mutagen guess it from its size)."""
    from mutagen import MutagenError
    from mutagen.mp3 import BitrateMode, MPEGInfo

    try:
        with path.open("rb") as file:
            info = MPEGInfo(file)
    except MutagenError:
        return None
    # Known only from a Xing or VBRI header: without one, the length is a guess.
    if info.bitrate_mode == BitrateMode.UNKNOWN:
        return None
    promised_frames = round(info.length * sample_rate)
    if decoded_frames >= promised_frames - _MP3_SLACK_FRAMES:
        return None
    return (
        f"{path} is cut short: its header promises {info.length:.2f} s, "
        f"{decoded_frames / sample_rate:.2f} s decode (an interrupted copy?)"
    )


def decode_with_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with ffmpeg, the independent decoder, to (channels, frames)."""
    check_file(path)
    # A float WAV on disk carries the rate and channel count that a raw pipe would lose.
    with tempfile.TemporaryDirectory() as tmp_dir:
        wav = Path(tmp_dir) / "decoded.wav"
        # The file, never a protocol: ffmpeg reads a name like `concat:a|b` as one.
        source = f"file:{path.absolute()}"
        try:
            run_ffmpeg(["-i", source, "-map", "0:a:0", "-c:a", "pcm_f32le", "-f", "wav", str(wav)])
        except AudioError as error:  # ffmpeg's last line says why; its command line does not
            said = str(error).strip().splitlines()
            if any("matches no streams" in line for line in said):  # a video, a subtitle file
                raise AudioError(f"{path}: no audio stream in it") from error
            raise AudioError(f"{path}: not audio that ffmpeg can decode ({said[-1]})") from error
        data, sample_rate = sf.read(wav, dtype="float32", always_2d=True)
    return _checked(np.ascontiguousarray(data.T), int(sample_rate), path)


def check_file(path: Path) -> None:
    """AudioError unless `path` is a regular file (or a link to one)."""
    if path.is_dir():
        raise AudioError(f"{path} is a directory, not an audio file")
    if not path.is_file():
        if path.exists():
            what = "not a regular file"
        elif path.is_symlink():
            what = "a link to nothing (or a loop of links)"
        else:
            what = "audio file not found"
        raise AudioError(f"{what}: {path}")


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write float32 (channels, frames) as a 32-bit float WAV, atomically."""
    if audio.ndim != 2:
        raise AudioError(f"audio must be shaped (channels, frames), got shape {audio.shape}")
    with atomic_path(path) as tmp:
        sf.write(os.fsencode(tmp), audio.T, sample_rate, subtype="FLOAT", format="WAV")


def _whole(audio: np.ndarray, promised_frames: int, path: Path) -> np.ndarray:
    """`audio` unless it is shorter than its header promised: a FLAC cut off in a copy decodes
    what is left without an error."""
    if audio.shape[1] < promised_frames:
        raise AudioError(
            f"{path} is cut short: its header promises {promised_frames} frames, "
            f"{audio.shape[1]} decode (an interrupted copy?)"
        )
    return audio


def _checked(audio: np.ndarray, sample_rate: int, path: Path) -> tuple[np.ndarray, int]:
    if audio.shape[1] == 0:
        raise AudioError(f"audio file has no samples: {path}")
    return audio, sample_rate


def _below(seconds: float, limit_s: float) -> str:
    """`seconds` with the fewest decimals that still show it short of `limit_s`."""
    for digits in range(2, 7):
        if round(seconds, digits) < limit_s:
            return f"{seconds:.{digits}f}"
    return f"{seconds:.6f}"
