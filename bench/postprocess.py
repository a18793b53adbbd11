"""Post-processing: our chain vs an ffmpeg command-line reference chain, same input, same run.

Input: 60 s of stereo 32 kHz audio (MusicGen's rate). Ours: process_track (input measures,
master to -24 LUFS under -2 dBTP, resample to 44.1 kHz, the music analysis, OGG q6 + MP3 V2,
decode both and judge them by the gates). The analysis is also timed alone on the same master,
right after each run of ours, so its share of the chain comes from the same run.
Reference: ffmpeg loudnorm pass 1 (analysis), then pass 2 (linear
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
from functools import partial
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


def _cpu_s() -> tuple[float, float]:
    """CPU seconds used so far by this process and by its finished children (LAME's ffmpeg)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _bench_input() -> tuple[Any, Any]:
    from tests.signals import music_like
    from tests.specs import make_spec

    audio = music_like(INPUT_S, INPUT_RATE, peak_dbfs=-3.0, seed=7)
    return make_spec(id="bench", duration_s=INPUT_S), audio


def measure_once(repeats: int, work: Path) -> dict[str, Any]:
    """Time both chains `repeats` times, alternating, in this process (its CPU affinity)."""
    import soundfile as sf

    from soundtrack import process
    from soundtrack.analysis import analyse
    from soundtrack.master import prepare

    spec, audio = _bench_input()
    src = work / "input.wav"
    sf.write(src, audio.T, INPUT_RATE, subtype="FLOAT")
    start = time.perf_counter()
    warm = process.process_track(spec, audio, INPUT_RATE, work / "warm")  # imports scipy etc.
    cold_s = time.perf_counter() - start
    if warm.status != "approved":
        raise SystemExit(f"our chain rejected the input: {warm.gates}")
    prepared = prepare(audio, INPUT_RATE, spec.mastering, loop=False, duration_s=INPUT_S)
    ours, analysis, reference = [], [], []
    for i in range(repeats):
        start = time.perf_counter()
        process.process_track(spec, audio, INPUT_RATE, work / f"ours{i}")
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        analyse(prepared.audio, prepared.sample_rate)
        analysis.append(time.perf_counter() - start)
        start = time.perf_counter()
        reference_chain(src, work)
        reference.append(time.perf_counter() - start)
    return {
        "cores": len(os.sched_getaffinity(0)),
        "cold_s": cold_s,
        "ours_s": statistics.median(ours),
        "analysis_s": statistics.median(analysis),
        "reference_s": statistics.median(reference),
        "ratio": statistics.median(o / r for o, r in zip(ours, reference, strict=True)),
        # What the analysis adds to the rest of the chain, run by run.
        "analysis_share": statistics.median(
            a / (o - a) for a, o in zip(analysis, ours, strict=True)
        ),
        "ours_all_s": ours,
        "analysis_all_s": analysis,
        "reference_all_s": reference,
        "qc": warm.qc,
    }


def stage_costs(repeats: int, work: Path, qc: Any) -> dict[str, float]:
    """CPU seconds of each step of process_track run one after another (process_track overlaps
    them on threads, where their CPU cannot be told apart); medians of `repeats` runs."""
    import soundfile as sf

    from soundtrack.analysis import analyse
    from soundtrack.encode import encode
    from soundtrack.gates import evaluate
    from soundtrack.master import master, prepare
    from soundtrack.measure import measure, measure_file

    spec, audio = _bench_input()
    prepared = prepare(audio, INPUT_RATE, spec.mastering, loop=False, duration_s=INPUT_S)
    tags = {"title": "bench", "soundtrack": "bench", "track_id": "bench", "spec_hash": "0"}
    runs: list[dict[str, float]] = []
    vorbis_s: list[float] = []
    write = sf.SoundFile.write

    def timed_write(*args: Any, **kwargs: Any) -> Any:  # libvorbis encodes inside it
        start = time.thread_time()
        try:
            return write(*args, **kwargs)
        finally:
            vorbis_s.append(time.thread_time() - start)

    def cost(run: dict[str, float], name: str, step: Callable[[], Any]) -> Any:
        own, children = _cpu_s()
        result = step()
        own_after, children_after = _cpu_s()
        run[name] = own_after - own + children_after - children
        run[f"{name}, children"] = children_after - children
        return result

    sf.SoundFile.write = timed_write
    try:
        for i in range(repeats):
            run: dict[str, float] = {}
            out = work / f"stages{i}"
            m = cost(
                run,
                "master",
                partial(master, audio, INPUT_RATE, spec.mastering, loop=False, duration_s=INPUT_S),
            )
            cost(run, "analyse", partial(analyse, prepared.audio, prepared.sample_rate))
            cost(run, "measure input", partial(measure, audio, INPUT_RATE))
            cost(run, "measure master", partial(measure, m.audio, m.sample_rate))
            vorbis_s.clear()
            (ogg,) = cost(run, "encode ogg", partial(encode, m, ("ogg",), out, "b", tags=tags))
            run["vorbis"] = sum(vorbis_s)
            (mp3,) = cost(run, "encode mp3", partial(encode, m, ("mp3",), out, "b", tags=tags))
            run["lame"] = run["encode mp3, children"]  # the ffmpeg process that runs LAME
            cost(run, "decode + measure ogg", partial(measure_file, ogg.path))
            cost(run, "decode + measure mp3", partial(measure_file, mp3.path))
            cost(run, "evaluate", partial(evaluate, qc))
            runs.append(run)
    finally:
        sf.SoundFile.write = write
    return {name: statistics.median(r[name] for r in runs) for name in runs[0]}


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
        cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *cmd, "--stages"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def child(repeats: int, stages: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        result = measure_once(repeats, Path(tmp))
        qc = result.pop("qc")
        if stages:
            result["stages_s"] = stage_costs(repeats, Path(tmp), qc)
    return result


_STAGES = {
    "master": "`master` (DC removal, resampling, loudness, limiter)",
    "analyse": "`analyse` (tempo, beats, bars, key, loudness range, centroid, onsets, timbre)",
    "measure input": "`measure` the input",
    "measure master": "`measure` the master",
    "encode ogg": "`encode` OGG (libvorbis, then serial fix, tags, sha256)",
    "encode mp3": "`encode` MP3 (ffmpeg + LAME, then tags, sha256)",
    "decode + measure ogg": "`measure_file` OGG (decode and measure)",
    "decode + measure mp3": "`measure_file` MP3 (decode and measure)",
    "evaluate": "`evaluate` (the track's gates, in plain Python)",
}


def report(all_cores: dict[str, Any], one_core: dict[str, Any], gx: dict[str, float]) -> str:
    lines = [
        "## Post-processing: our chain vs ffmpeg reference",
        "",
        f"`python bench/postprocess.py` on {platform.machine()}, {os.cpu_count()} cores "
        f"({platform.processor() or 'CPU'}), Python {platform.python_version()}. Input: "
        f"{INPUT_S:.0f} s stereo {INPUT_RATE} Hz. Ours = `process_track` (master, the music "
        "analysis, gates on input, master and both decoded files, resample, OGG + MP3). "
        "Reference = ffmpeg loudnorm "
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
    lines += [
        "",
        "The music analysis alone, timed right after each run of ours on the same master "
        "(the reference does no analysis at all):",
        "",
        "| | cores | analysis (s) | analysis / rest of our chain | whole chain / reference |",
        "|---|---|---|---|---|",
    ]
    for label, r in (("all cores", all_cores), ("one core", one_core)):
        lines.append(
            f"| {label} | {r['cores']} | {r['analysis_s']:.2f} | {r['analysis_share']:.0%} "
            f"| {r['ratio']:.2f} |"
        )
    stages = one_core["stages_s"]
    total = sum(stages[name] for name in _STAGES)
    encoders = stages["vorbis"] + stages["lame"]
    lines += [
        "",
        "Where our CPU time goes: the steps of `process_track` run one after another on one "
        "core, CPU seconds of this process and its ffmpeg child, median run:",
        "",
        "| step | CPU s | share |",
        "|---|---|---|",
    ]
    for name, label in _STAGES.items():
        lines.append(f"| {label} | {stages[name]:.2f} | {stages[name] / total:.0%} |")
    lines += [
        f"| total | {total:.2f} | 100% |",
        "",
        f"Inside those, the two encoders take {encoders:.2f} s CPU ({encoders / total:.0%}): "
        f"libvorbis {stages['vorbis']:.2f} s (inside libsndfile's `SoundFile.write`), LAME's "
        f"ffmpeg process {stages['lame']:.2f} s. That is the floor no chain that ships these two "
        "files gets under.",
        "",
        f"Runs (s): all cores ours {_fmt(all_cores['ours_all_s'])}, analysis "
        f"{_fmt(all_cores['analysis_all_s'])}, reference "
        f"{_fmt(all_cores['reference_all_s'])}; one core ours {_fmt(one_core['ours_all_s'])}, "
        f"analysis {_fmt(one_core['analysis_all_s'])}, "
        f"reference {_fmt(one_core['reference_all_s'])}. First call in a process (imports "
        f"included): {all_cores['cold_s']:.2f} s; `import great_expectations` alone (paid only "
        f"for a team's expectations or the QC report): {gx['import_s']:.2f} s.",
    ]
    return "\n".join(lines)


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stages", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(child(args.repeats, args.stages)))
        return
    all_cores = _run_child(False, args.repeats)
    one_core = _run_child(True, args.repeats)
    print(report(all_cores, one_core, gx_costs()))


if __name__ == "__main__":
    main()
