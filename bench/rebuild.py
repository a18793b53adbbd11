"""No-op rebuild of a fully published 20-track soundtrack vs an empty Prefect flow run.

Both are whole `python` processes against the same local Prefect server, so Prefect's own
start-up (imports, API client, flow-run bookkeeping) is the baseline; the difference is what a
cached build costs on top. Target: at most 3 s more than the baseline, and zero model loads.
Run: python bench/rebuild.py [--tracks 20] [--repeats 3]   (prints a markdown section)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.prefect_server import PrefectServer  # noqa: E402  (the same real server the tests use)

EMPTY_FLOW = "from prefect import flow\nflow(name='empty')(lambda: None)()\n"
TARGET_EXTRA_S = 3.0


def manifest(tracks: int) -> str:
    cues = "".join(
        f"  - id: cue-{n:02d}\n    prompt: cue {n}, strings and piano\n    seed: {n}\n"
        + ("    loop: true\n" if n % 4 == 0 else "")
        for n in range(tracks)
    )
    return (
        f"schema: 1\nsoundtrack: bench\nstorage: ./out\ndefaults: {{duration: 3}}\ntracks:\n{cues}"
    )


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    soundtrack = str(Path(sys.executable).with_name("soundtrack"))

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        with PrefectServer(work / "server") as server:
            env = {
                **os.environ,
                **server.env,
                "PREFECT_HOME": str(work / "client"),
                "SOUNDTRACK_CACHE_DIR": str(work / "cache"),
            }
            (work / "m.yaml").write_text(manifest(args.tracks))
            subprocess.run(
                [soundtrack, "models", "make-tiny", "tiny"], cwd=work, env=env, check=True
            )
            build = [soundtrack, "build", "m.yaml", "--model", "tiny", "--report", "r.json"]
            first_s = timed(build, work, env)
            baseline = [
                timed([sys.executable, "-c", EMPTY_FLOW], work, env) for _ in range(args.repeats)
            ]
            rebuild = [timed(build, work, env) for _ in range(args.repeats)]
            report = json.loads((work / "r.json").read_text())

    statuses = {track["status"] for track in report["tracks"]}
    base_s, ours_s = statistics.median(baseline), statistics.median(rebuild)
    extra_s = ours_s - base_s
    print(f"## Rebuild: a fully cached {args.tracks}-track soundtrack vs an empty flow run\n")
    print(f"Command: `python bench/rebuild.py --tracks {args.tracks} --repeats {args.repeats}`; ")
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    print(f"machine: {machine}, Python {platform.python_version()}, ")
    print("a local `prefect server start`; medians of the repeats (whole processes).\n")
    print("| run | seconds |")
    print("|---|---|")
    print(f"| first build ({args.tracks} tracks on the tiny model, for context) | {first_s:.1f} |")
    print(f"| empty Prefect flow run (baseline) | {base_s:.2f} |")
    print(f"| no-op rebuild (`soundtrack build`, everything cached) | {ours_s:.2f} |")
    print(f"| difference (target <= {TARGET_EXTRA_S:.0f} s) | {extra_s:+.2f} |")
    print(f"| ratio rebuild / baseline | {ours_s / base_s:.2f}x |\n")
    loads = report["model_loads"]
    print(f"Statuses on the rebuild: {', '.join(sorted(statuses))}; model loads: {loads}.")
    verdict = extra_s <= TARGET_EXTRA_S and loads == 0 and statuses == {"cached"}
    print(f"Target met: {'yes' if verdict else 'NO'}.")


if __name__ == "__main__":
    main()
