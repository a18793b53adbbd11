"""Post-processing: our chain vs an ffmpeg command-line reference chain, same input, same run.

Input: 60 s of stereo 32 kHz audio (MusicGen's rate). Ours: process_track (input measures,
master to -24 LUFS under -2 dBTP, resample to 44.1 kHz, OGG q6 + MP3 V2, decode both and gate
them through the GX suite). Reference: ffmpeg loudnorm pass 1 (analysis), then pass 2 (linear
loudnorm + soxr aresample to 44.1 kHz + libvorbis q6 and libmp3lame V2 in one process).
Both run on all cores and pinned to one core (taskset), alternating, --repeats times; the ratio
is the median of each run of ours over the reference run right after it, which cancels most of
the drift of a shared machine.
Run: python bench/postprocess.py [--repeats 7]   (prints a markdown section)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
INPUT_S = 60.0
INPUT_RATE = 32000
TARGET_LUFS = -24.0
REFERENCE_TP_DBTP = -2.0  # our master's ceiling: -1 dBTP minus 1 dB of encoding headroom


def reference_chain(src: Path, out_dir: Path) -> None:
    """ffmpeg loudnorm two-pass + aresample + both encodes."""
    from soundtrack.audio import ffmpeg_exe

    ffmpeg = ffmpeg_exe()
    analysis = f"loudnorm=I={TARGET_LUFS}:TP={REFERENCE_TP_DBTP}:LRA=11:print_format=json"
    first = subprocess.run(
        [ffmpeg, "-hide_banner", "-nostats", "-i", str(src), "-af", analysis, "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    stats = json.loads(first.stderr[first.stderr.rindex("{") : first.stderr.rindex("}") + 1])
    measured = (
        f"measured_I={stats['input_i']}:measured_TP={stats['input_tp']}:"
        f"measured_LRA={stats['input_lra']}:measured_thresh={stats['input_thresh']}:"
        f"offset={stats['target_offset']}:linear=true"
    )
    graph = (
        f"[0:a]loudnorm=I={TARGET_LUFS}:TP={REFERENCE_TP_DBTP}:LRA=11:{measured},"
        "aresample=44100:resampler=soxr,asplit=2[ogg][mp3]"
    )
    subprocess.run(
        [
            *(ffmpeg, "-hide_banner", "-nostats", "-y", "-i", str(src)),
            *("-filter_complex", graph),
            *("-map", "[ogg]", "-c:a", "libvorbis", "-q:a", "6", str(out_dir / "ref.ogg")),
            *("-map", "[mp3]", "-c:a", "libmp3lame", "-q:a", "2", str(out_dir / "ref.mp3")),
        ],
        capture_output=True,
        check=True,
    )


def _timed(stages: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap `fn` to add the CPU time of its calling thread to stages[name] (calls overlap in
    wall time: encoding runs in threads beside measuring)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            stages[name] = stages.get(name, 0.0) + time.thread_time() - start

    return wrapper


def _cpu_s() -> tuple[float, float]:
    """CPU seconds used so far by this process and by its finished children (the encoders)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def measure_once(repeats: int) -> dict[str, Any]:
    """Time both chains `repeats` times, alternating, in this process (its CPU affinity)."""
    import numpy as np
    import soundfile as sf

    from soundtrack import process
    from tests.signals import music_like
    from tests.specs import make_spec

    audio = music_like(INPUT_S, INPUT_RATE, peak_dbfs=-3.0, seed=7)
    spec = make_spec(id="bench", duration_s=INPUT_S)
    stages: dict[str, float] = {}
    for name in ("master", "measure", "encode", "measure_file", "evaluate"):
        setattr(process, name, _timed(stages, name, getattr(process, name)))
    # libvorbis runs inside SoundFile.write (in a thread of ours), LAME in an ffmpeg child.
    sf.SoundFile.write = _timed(stages, "vorbis", sf.SoundFile.write)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        src = tmp_dir / "input.wav"
        sf.write(src, audio.T, INPUT_RATE, subtype="FLOAT")
        start = time.perf_counter()
        warm = process.process_track(spec, audio, INPUT_RATE, tmp_dir / "warm")  # imports GX
        cold_s = time.perf_counter() - start
        if warm.status != "approved":
            raise SystemExit(f"our chain rejected the input: {warm.gates}")
        ours, reference, runs = [], [], []
        for i in range(repeats):
            stages.clear()
            own_before, children_before = _cpu_s()
            start = time.perf_counter()
            process.process_track(spec, audio, INPUT_RATE, tmp_dir / f"ours{i}")
            ours.append(time.perf_counter() - start)
            own_after, children_after = _cpu_s()
            stages["lame"] = children_after - children_before
            stages["total"] = own_after - own_before + stages["lame"]
            stages["encode"] -= stages["vorbis"]
            runs.append(dict(stages))
            start = time.perf_counter()
            reference_chain(src, tmp_dir)
            reference.append(time.perf_counter() - start)
    median_stages = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {
        "cores": len(os.sched_getaffinity(0)),
        "cold_s": cold_s,
        "ours_s": statistics.median(ours),
        "reference_s": statistics.median(reference),
        "ratio": statistics.median(o / r for o, r in zip(ours, reference, strict=True)),
        "ours_all_s": ours,
        "reference_all_s": reference,
        "stages_s": median_stages,
        "numpy": np.__version__,
    }


def gx_costs() -> dict[str, float]:
    """Cold `import great_expectations`, in a fresh process."""
    code = (
        "import time; t=time.perf_counter(); import great_expectations; "
        "print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {"import_s": float(out.stdout.strip())}


def _run_child(one_core: bool, repeats: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--repeats", str(repeats)]
    if one_core:
        cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def report(all_cores: dict[str, Any], one_core: dict[str, Any], gx: dict[str, float]) -> str:
    lines = [
        "## Post-processing: our chain vs ffmpeg reference",
        "",
        f"`python bench/postprocess.py` on {platform.machine()}, {os.cpu_count()} cores "
        f"({platform.processor() or 'CPU'}), Python {platform.python_version()}. Input: "
        f"{INPUT_S:.0f} s stereo {INPUT_RATE} Hz. Ours = `process_track` (master, gates on input, "
        "master and both decoded files, resample, OGG + MP3). Reference = ffmpeg loudnorm "
        "two-pass + soxr aresample + libvorbis q6 + libmp3lame V2 (one process for pass 2). "
        "Times are medians of the runs listed; the ratio is the median of the ratios of each "
        "run of ours to the reference run right after it.",
        "",
        "| | cores | ours (s) | reference (s) | ours / reference | ours, x real time |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in (("all cores", all_cores), ("one core", one_core)):
        lines.append(
            f"| {label} | {r['cores']} | {r['ours_s']:.2f} | {r['reference_s']:.2f} "
            f"| {r['ratio']:.2f} | {r['ours_s'] / INPUT_S:.3f} |"
        )
    stages = one_core["stages_s"]
    total = stages["total"]
    encoders = stages["vorbis"] + stages["lame"]
    lines += [
        "",
        "Where our CPU time goes, one core, median run: `master` (DC, resample, loudness, "
        "limiter), `measure` (input and master), the two encoders (libvorbis inside "
        "libsndfile's `SoundFile.write`, in a thread of ours; LAME in an ffmpeg process), "
        "`encode` (the rest of encoding: feeding ffmpeg, tags, sha256), `measure_file` (decode "
        "and measure each delivery file), `evaluate` (the GX validation of the track):",
        "",
        "| stage | CPU s | share |",
        "|---|---|---|",
    ]
    names = {"vorbis": "OGG encoder (libvorbis)", "lame": "MP3 encoder (LAME, ffmpeg)"}
    order = ("master", "measure", "vorbis", "lame", "encode", "measure_file", "evaluate")
    for name in order:
        label = names.get(name, f"`{name}`")
        lines.append(f"| {label} | {stages[name]:.2f} | {stages[name] / total:.0%} |")
    lines += [
        f"| total | {total:.2f} | 100% |",
        "",
        f"The two encoders take {encoders:.2f} s CPU, {encoders / total:.0%} of ours: the floor "
        "no chain that ships these two files gets under.",
    ]
    lines += [
        "",
        f"Runs (s): all cores ours {_fmt(all_cores['ours_all_s'])}, reference "
        f"{_fmt(all_cores['reference_all_s'])}; one core ours {_fmt(one_core['ours_all_s'])}, "
        f"reference {_fmt(one_core['reference_all_s'])}. First call in a process (GX import "
        f"included): {all_cores['cold_s']:.2f} s; `import great_expectations` alone: "
        f"{gx['import_s']:.2f} s.",
    ]
    return "\n".join(lines)


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(measure_once(args.repeats)))
        return
    all_cores = _run_child(False, args.repeats)
    one_core = _run_child(True, args.repeats)
    print(report(all_cores, one_core, gx_costs()))


if __name__ == "__main__":
    main()
