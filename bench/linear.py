"""The CPU's linear layers: torch's default (MKL's sgemm) against OneDnnLinear, the module every
CPU loader swaps in, at the products MusicGen-small, Bark and ACE-Step 1.5 run.

Weights are cold, as in a model: each product cycles through 24 distinct weight matrices (one per
layer), so a small product reads its weights from memory, not from the cache. Each figure is the
median of --repeats passes over the 24, per product. At every usable core, then at one thread:
the scaling says whether a product is bound by arithmetic (about the core count) or by memory.
Run: python bench/linear.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from generate import loads, machine, versions
from torch import nn

from soundtrack.models import onednn

LAYERS = 24
PRODUCTS = (  # rows, in, out, whose
    (1, 1024, 4096, "one row (Bark's GPT models)"),
    (2, 1024, 4096, "MusicGen-small, feed-forward in (a track and its guidance twin)"),
    (2, 4096, 1024, "MusicGen-small, feed-forward out"),
    (8, 1024, 4096, "MusicGen-small, feed-forward in, 4 tracks batched"),
    (125, 2048, 2048, "ACE-Step DiT, attention projection (10 s: 125 patches)"),
    (125, 2048, 6144, "ACE-Step DiT, feed-forward in"),
    (125, 6144, 2048, "ACE-Step DiT, feed-forward out"),
)


def seconds_per_product(layers: list[nn.Linear], x: torch.Tensor, repeats: int) -> float:
    """Median over `repeats` passes through every layer, per product."""
    times = []
    with torch.inference_mode():
        for layer in layers:  # warm-up: oneDNN builds its kernel per shape once
            layer(x)
        for _ in range(repeats):
            started = time.perf_counter()
            for layer in layers:
                layer(x)
            times.append((time.perf_counter() - started) / len(layers))
    return statistics.median(times)


def measure(rows: int, inputs: int, outputs: int, repeats: int) -> dict[str, float]:
    """Seconds per product for MKL and oneDNN, at every thread and at one."""
    torch.manual_seed(0)
    layers = [nn.Linear(inputs, outputs) for _ in range(LAYERS)]
    x = torch.randn(rows, inputs)
    cores = torch.get_num_threads()
    result = {}
    for threads in (cores, 1):
        torch.set_num_threads(threads)
        for layer in layers:
            layer.__class__ = nn.Linear
        result[f"mkl{threads}"] = seconds_per_product(layers, x, repeats)
        onednn.speed_up(nn.ModuleList(layers))
        result[f"onednn{threads}"] = seconds_per_product(layers, x, repeats)
    torch.set_num_threads(cores)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if not onednn.AVAILABLE:
        raise SystemExit("oneDNN is not available on this machine: nothing to compare")
    cores = torch.get_num_threads()
    before = loads()
    rows = []
    for m, k, n, whose in PRODUCTS:
        t = measure(m, k, n, args.repeats)
        mkl, dnn = t[f"mkl{cores}"], t[f"onednn{cores}"]
        rows.append(
            f"| {m} x {k} x {n} | {whose} | {mkl * 1e3:.2f} ms | {dnn * 1e3:.2f} ms "
            f"| **{mkl / dnn:.2f}x** | {k * n * 4 / dnn / 1e9:.0f} GB/s, "
            f"{2 * m * k * n / dnn / 1e9:.0f} GFLOP/s | {t['onednn1'] / dnn:.2f}x |"
        )
    print("## Linear layers: MKL (torch's default) vs oneDNN, float32 on the CPU\n")
    print(f"Command: `python bench/linear.py --repeats {args.repeats}`  ")
    print(f"Machine: {machine('cpu')}; {versions()} ({cores} threads)  ")
    print(f"Load average (1/5/15 min) before: {before}, after: {loads()}\n")
    print(
        "| product (rows x in x out) | whose | MKL | oneDNN | speed-up | oneDNN reads, computes "
        f"| oneDNN, {cores} threads vs 1 |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
