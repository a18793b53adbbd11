"""Memory of one long track's post-processing, against the track's own size in the same run.

Input: 600 s of stereo 48 kHz audio (ACE-Step's longest render): 30 s of music played 20
times, with a click on every beat, made apart as a float32 WAV. It is mastered to `console`
(-24 LUFS, the limiter idle) and to `web` (-16 LUFS, the limiter taking a few dB off the
clicks). Ours: process_track (master, analysis, OGG + MP3 + WAV, each decoded and judged) in a
fresh process warmed up on 10 s of it: its resident memory before, its peak (ru_maxrss) after.
The baseline is the track itself, its float32 samples: the ratio is how many copies of the
track the chain adds at its peak. A build masters several tracks at once, up to
MASTERING_BUDGET_S seconds of audio (soundtrack/build.py), so this sets a worker's memory.
Run: python bench/long_master.py   (prints a markdown section)
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
INPUT_S = 600.0
INPUT_RATE = 48000
PROFILES = ("console", "web")


def make_input(path: Path) -> None:
    """The input as a float32 WAV: made apart, so its making is not in the child's peak."""
    import numpy as np
    import soundfile as sf

    from tests.signals import music_like, transients

    # 30 s of music played 20 times (synthesising 600 s takes minutes), a click on each beat.
    music = np.tile(music_like(30.0, INPUT_RATE, peak_dbfs=-12.0, seed=3), round(INPUT_S / 30))
    audio = music + 0.3 * transients(INPUT_S, INPUT_RATE, hits_per_s=4.0)
    sf.write(path, audio.T, INPUT_RATE, subtype="FLOAT")


def child(profile: str, source: Path) -> dict[str, Any]:
    """Process one long track in this process; its memory and time."""
    import numpy as np
    import soundfile as sf

    from soundtrack.process import process_track
    from soundtrack.spec import LOUDNESS_PROFILES, Mastering
    from tests.specs import make_spec

    frames, _ = sf.read(source, dtype="float32", always_2d=True)
    audio = np.ascontiguousarray(frames.T)
    del frames
    mastering = Mastering(
        loudness=LOUDNESS_PROFILES[profile], sample_rate=INPUT_RATE, fade_out_s=2.0
    )
    spec = make_spec(
        id="long",
        duration_s=INPUT_S,
        mastering=mastering,
        formats=("ogg", "mp3", "wav"),
    )
    with tempfile.TemporaryDirectory() as tmp:  # imports and compiles on 10 s of it first
        warm = replace(spec, duration_s=10.0, render_duration_s=10.0)
        process_track(warm, audio[:, : 10 * INPUT_RATE], INPUT_RATE, Path(tmp))
    # Resident now, not the high-water mark: reading the WAV held a transposed copy a moment.
    before_kb = _resident_kb()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        outcome = process_track(spec, audio, INPUT_RATE, Path(tmp))
    wall_s = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if outcome.status != "approved":
        failed = [g for g in outcome.gates if not g.passed]
        raise SystemExit(f"the chain did not approve the input: {outcome.status}, {failed}")
    return {
        "profile": profile,
        "track_mb": audio.nbytes / 2**20,
        "before_mb": before_kb / 1024,
        "peak_mb": peak_kb / 1024,
        "wall_s": wall_s,
        "limited_db": outcome.master.limiter_reduction_db,
    }


def _resident_kb() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def report(runs: list[dict[str, Any]]) -> str:
    lines = [
        "## Memory: post-processing one 600 s track",
        "",
        f"`python bench/long_master.py` on {platform.machine()}, Python "
        f"{platform.python_version()}. Input: {INPUT_S:.0f} s stereo {INPUT_RATE} Hz: 30 s of "
        "music played 20 times, with a click on every beat. Ours = `process_track` (master, "
        "analysis, OGG + MP3 + WAV, each decoded and judged) in a fresh process; added = its "
        "peak resident memory less the memory before it (imports and the input); baseline = "
        "the track's float32 samples.",
        "",
        "| profile | limiter (dB) | track (MB) | before (MB) | peak (MB) | added (MB) "
        "| added / track | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        added = run["peak_mb"] - run["before_mb"]
        lines.append(
            f"| {run['profile']} | {run['limited_db']:.1f} | {run['track_mb']:.0f} "
            f"| {run['before_mb']:.0f} | {run['peak_mb']:.0f} | {added:.0f} "
            f"| {added / run['track_mb']:.1f} | {run['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=PROFILES, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.input)))
        return
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "input.wav"
        make_input(source)
        for profile in PROFILES:
            cmd = [sys.executable, __file__, "--child", profile, "--input", str(source)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
            if out.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(report(runs))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
