"""Independent references for tests: ffmpeg's ebur128 filter (EBU R128 / ITU-R BS.1770) and
hashlib's sha256 of a file (not the code under test's own hashing)."""

from __future__ import annotations

import hashlib
import math
import re
import subprocess
from pathlib import Path

import imageio_ffmpeg

_INTEGRATED = re.compile(r"Integrated loudness:\s*I:\s*(-?[\d.]+|-inf) LUFS")
_TRUE_PEAK = re.compile(r"True peak:\s*Peak:\s*(-?[\d.]+|-inf) dBFS")
_LRA = re.compile(r"Loudness range:\s*LRA:\s*([\d.]+) LU")


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


def _ebur128_summary(path: Path, audio_filter: str) -> str:
    """The summary ffmpeg's ebur128 filter prints at the end of stderr."""
    proc = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-nostats",
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
    return proc.stderr[proc.stderr.rfind("Summary:") :]


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
