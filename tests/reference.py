"""Independent references for tests: ffmpeg's ebur128 filter (EBU R128 / ITU-R BS.1770),
hashlib's sha256 of a file (not the code under test's own hashing) and a PNG's own header."""

from __future__ import annotations

import hashlib
import math
import re
import struct
import subprocess
from pathlib import Path
from typing import Any

import imageio_ffmpeg

_INTEGRATED = re.compile(r"Integrated loudness:\s*I:\s*(-?[\d.]+|-inf) LUFS")
_TRUE_PEAK = re.compile(r"True peak:\s*Peak:\s*(-?[\d.]+|-inf) dBFS")
_LRA = re.compile(r"Loudness range:\s*LRA:\s*([\d.]+) LU")
_FRAME = re.compile(r"\bt:\s*([\d.]+)\s.*?\bS:\s*(-?[\d.]+)")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _number(text: str) -> float:
    return -math.inf if text == "-inf" else float(text)


def ebur128(path: Path) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) of a file from ffmpeg's ebur128 summary (0.1 steps)."""
    summary = _ebur128_summary(path, "ebur128=peak=true:framelog=quiet")
    integrated = _INTEGRATED.search(summary)
    peak = _TRUE_PEAK.search(summary)
    if integrated is None or peak is None:
        raise RuntimeError(f"no ebur128 summary for {path}: {summary[-2000:]}")
    return _number(integrated.group(1)), _number(peak.group(1))


def ebur128_lra(path: Path) -> float:
    """Loudness range (EBU Tech 3342, LU) of a file from ffmpeg's ebur128 summary (0.1 steps)."""
    summary = _ebur128_summary(path, "ebur128=framelog=quiet")
    found = _LRA.search(summary)
    if found is None:
        raise RuntimeError(f"no loudness range in the ebur128 summary for {path}: {summary}")
    return float(found.group(1))


def ebur128_short_term(path: Path) -> list[tuple[float, float]]:
    """(time s, short-term LUFS) of a file every 100 ms from ffmpeg's ebur128 frame log (0.1
    steps); ffmpeg prints -120.7 until the 3 s window has filled."""
    log = _ebur128_log(path, "ebur128=framelog=verbose", "verbose")
    frames = [(float(t), float(s)) for t, s in _FRAME.findall(log)]
    if not frames:
        raise RuntimeError(f"no ebur128 frame log for {path}: {log[-2000:]}")
    return frames


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk, read with struct alone."""
    head = path.read_bytes()[:24]
    if head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def assert_pictures_published(folder: Path, track: dict[str, Any]) -> None:
    """A lock's track entry names its picture and each published stem's: files under `folder`
    (the storage root) with the entry's sha256 and bytes, of the pictures' fixed size."""
    from soundtrack.pictures import HEIGHT_PX, WIDTH_PX

    published = [stem for stem in track["stems"] if stem["status"] == "published"]
    for owner, entry in [(track["id"], track["picture"])] + [
        (f"{track['id']}.{stem['name']}", stem["picture"]) for stem in published
    ]:
        assert entry is not None, f"{owner} has no picture"
        assert entry["key"].endswith(f"{owner}.png") and entry["format"] == "png"
        path = folder / entry["key"]
        assert sha256_of(path) == entry["sha256"] and path.stat().st_size == entry["bytes"]
        assert png_size(path) == (WIDTH_PX, HEIGHT_PX) == (entry["width_px"], entry["height_px"])
    assert all(stem["picture"] is None for stem in track["stems"] if stem not in published)


def _ebur128_summary(path: Path, audio_filter: str) -> str:
    """The summary ffmpeg's ebur128 filter prints at the end of stderr."""
    log = _ebur128_log(path, audio_filter, "info")
    return log[log.rfind("Summary:") :]


def _ebur128_log(path: Path, audio_filter: str, level: str) -> str:
    """ffmpeg's stderr after running `audio_filter` over the file at log `level`."""
    proc = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-nostats",
            "-loglevel",
            level,
            "-i",
            str(path),
            "-af",
            audio_filter,
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg ebur128 failed on {path}: {proc.stderr[-2000:]}")
    return proc.stderr


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
