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


def _number(text: str) -> float:
    return -math.inf if text == "-inf" else float(text)


def ebur128(path: Path) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) of a file from ffmpeg's ebur128 summary (0.1 steps)."""
    proc = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-nostats",
            "-i",
            str(path),
            "-af",
            "ebur128=peak=true:framelog=quiet",
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
    summary = proc.stderr[proc.stderr.rfind("Summary:") :]
    integrated = _INTEGRATED.search(summary)
    peak = _TRUE_PEAK.search(summary)
    if integrated is None or peak is None:
        raise RuntimeError(f"no ebur128 summary for {path}: {proc.stderr[-2000:]}")
    return _number(integrated.group(1)), _number(peak.group(1))


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
