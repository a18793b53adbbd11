"""What `soundtrack validate`'s loader costs on real manifests and on YAML alias bombs.

"Billion laughs": level k holds nine aliases of level k - 1, so the document expands to about
9**k values; 700 bytes reach 9**9. The loader checks aliases, nesting and the expanded size on
the composed graph (each shared node once) before building anything, so a bomb costs what a
small manifest costs. For contrast, the line map as it was before issue 12 (walking every
alias path) on smaller bombs: it grows ninefold per level. Time is the best of the repeats;
peak memory is what tracemalloc saw of Python's allocations in one more run.
Run: python bench/yaml_limits.py [--repeats 3]   (prints a markdown table)
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soundtrack.errors import InputError  # noqa: E402
from soundtrack.manifest import load_manifest  # noqa: E402
from soundtrack.resolve import resolve_tracks  # noqa: E402


def bomb(levels: int) -> str:
    lines = [
        "schema: 1",
        "soundtrack: bomb",
        "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]",
    ]
    lines += [f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]" for k in range(1, levels + 1)]
    return "\n".join([*lines, "tracks:", "  - id: a", f"    prompt: *a{levels}", ""])


# Copied from soundtrack/manifest.py as it was before issue 12: every alias path is walked.
def naive_line_map(node: yaml.Node | None, path: str = "") -> dict[str, int]:
    lines: dict[str, int] = {}
    if node is None:
        return lines
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = f"{path}.{key_node.value}" if path else str(key_node.value)
            lines[child] = key_node.start_mark.line + 1
            lines.update({k: v for k, v in naive_line_map(value_node, child).items() if k != child})
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(naive_line_map(item, f"{path}[{index}]"))
    return lines


def validate(path: Path) -> str:
    """What `soundtrack validate` runs: load and resolve; the outcome in a few words."""
    try:
        specs = resolve_tracks(load_manifest(path), path.parent)
    except InputError as error:
        return "refused: " + (error.problems[0] if error.problems else str(error))[:96]
    return f"valid, {len(specs)} tracks"


def measure(call: Callable[[], Any], repeats: int) -> tuple[float, float, str]:
    """Best wall time (s) of `repeats` plain runs, and the peak traced memory (MiB) of one."""
    best = float("inf")
    outcome = ""
    for _ in range(repeats):
        start = time.perf_counter()
        outcome = str(call())
        best = min(best, time.perf_counter() - start)
    tracemalloc.start()
    call()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return best, peak / 2**20, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)

        def write(name: str, text: str) -> Path:
            path = work / name
            path.write_text(text)
            return path

        cases: list[tuple[str, str, int, Callable[[], Any]]] = []
        real = ROOT / "manifests" / "sky-odyssey.yaml"
        cases.append(("sky-odyssey.yaml", "validate", real.stat().st_size, lambda: validate(real)))
        big = write("merges.yaml", _merges(500))
        cases.append(
            ("500 tracks, each `<<: *cue`", "validate", big.stat().st_size, lambda: validate(big))
        )
        for levels in (6, 9):
            path = write(f"bomb{levels}.yaml", bomb(levels))
            size = path.stat().st_size
            cases.append((f"alias bomb, 9**{levels}", "validate", size, lambda p=path: validate(p)))
        # 9**6 would take about 40 s and 1.7 GiB here; each level costs nine times the last.
        for levels in (3, 4, 5):
            text = bomb(levels)
            cases.append(
                (
                    f"alias bomb, 9**{levels}",
                    "line map before issue 12",
                    len(text),
                    lambda t=text: (
                        f"{len(naive_line_map(yaml.compose(t, yaml.SafeLoader))):,} paths"
                    ),
                )
            )

        print(f"## YAML limits ({platform.python_version()}, {platform.machine()})\n")
        print("| document | loader | bytes | time | peak memory | outcome |")
        print("|---|---|---:|---:|---:|---|")
        for name, loader, size, call in cases:
            seconds, mib, outcome = measure(call, args.repeats)
            print(
                f"| {name} | {loader} | {size:,} | {seconds * 1000:.1f} ms | {mib:.1f} MiB | "
                f"{outcome} |"
            )


def _merges(tracks: int) -> str:
    """The largest manifest the models accept, every track merging one shared mapping."""
    first = "  - &cue\n    id: cue-000\n    prompt: cue 0, strings\n    duration: 12\n"
    first += "    fade_out_s: 1.5\n    sampling: {top_k: 200, temperature: 0.9}\n"
    rest = "".join(
        f"  - <<: *cue\n    id: cue-{n:03d}\n    prompt: cue {n}, strings and piano\n"
        for n in range(1, tracks)
    )
    return f"schema: 1\nsoundtrack: bench\ntracks:\n{first}{rest}"


if __name__ == "__main__":
    main()
