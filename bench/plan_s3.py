"""Planning a no-op rebuild on S3 behind a network's latency: every published file is checked
(a HEAD) before its track is taken as cached; one at a time (the baseline) vs CHECKS_AT_ONCE.

A SeaweedFS server on this machine, reached through a TCP relay that holds every chunk for
half the round trip each way, stands in for a bucket across a network. The soundtrack is built
once with the tiny model; then `prepare` (inputs, storage access, the lock, the plan: what a
`soundtrack build` does before it renders) runs in pairs, baseline and ours. The ratio is the
median of the pairs' ratios.
Run: python bench/plan_s3.py [--tracks 50] [--rtt-ms 30] [--pairs 3]   (prints a markdown section)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from soundtrack import plan  # noqa: E402
from soundtrack.build import Options, prepare  # noqa: E402
from tests.prefect_server import PrefectServer  # noqa: E402  (the servers the tests use)
from tests.s3server import SeaweedServer, free_ports  # noqa: E402


def manifest(tracks: int, bucket: str) -> str:
    cues = "".join(
        f"  - id: cue-{n:02d}\n    prompt: cue {n}, strings and piano\n    seed: {n}\n"
        for n in range(tracks)
    )
    return (
        f"schema: 1\nsoundtrack: bench\nstorage: s3://{bucket}/assets\n"
        f"defaults: {{duration: 2}}\ntracks:\n{cues}"
    )


@contextlib.contextmanager
def relay(target_port: int, one_way_s: float) -> Iterator[int]:
    """A loopback port whose connections reach `target_port`, each chunk `one_way_s` late."""
    (port,) = free_ports(1)
    loop = asyncio.new_event_loop()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await chunks.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        delivering = asyncio.ensure_future(deliver())
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                chunks.put_nowait((loop.time() + one_way_s, data))
        chunks.put_nowait((loop.time() + one_way_s, b""))
        with contextlib.suppress(ConnectionError):
            await delivering

    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = loop.run_until_complete(asyncio.start_server(connect, "127.0.0.1", port))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:

        async def shut() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shut(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def timed_prepare(path: Path, model: Path, checks_at_once: int) -> tuple[float, int]:
    plan.CHECKS_AT_ONCE = checks_at_once
    start = time.perf_counter()
    prepared = prepare(path, Options(model=str(model)))  # as `--model tiny` hands it on
    return time.perf_counter() - start, len(prepared.plan.cached)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=50)
    parser.add_argument("--rtt-ms", type=float, default=30.0)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    soundtrack = str(Path(sys.executable).with_name("soundtrack"))
    ours = plan.CHECKS_AT_ONCE

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        with SeaweedServer(work / "s3") as s3, PrefectServer(work / "prefect") as server:
            bucket = s3.create_bucket()
            env = {
                **os.environ,
                **server.env,
                **s3.aws_env(),
                "PREFECT_HOME": str(work / "client"),
                "SOUNDTRACK_CACHE_DIR": str(work / "cache"),
            }
            (work / "m.yaml").write_text(manifest(args.tracks, bucket))
            subprocess.run(
                [soundtrack, "models", "make-tiny", "tiny"], cwd=work, env=env, check=True
            )
            build = [soundtrack, "build", "m.yaml", "--model", "tiny"]
            subprocess.run(build, cwd=work, env=env, check=True, capture_output=True)
            tiny = (work / "tiny").resolve()
            with relay(int(s3.endpoint.rsplit(":", 1)[1]), args.rtt_ms / 2000) as port:
                os.environ.update({**env, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"})
                pairs = []
                for _ in range(args.pairs):
                    baseline_s, cached = timed_prepare(work / "m.yaml", tiny, 1)
                    ours_s, cached_too = timed_prepare(work / "m.yaml", tiny, ours)
                    assert cached == cached_too == args.tracks, (cached, cached_too)
                    pairs.append((baseline_s, ours_s))

    baseline_s = statistics.median(b for b, _ in pairs)
    ours_s = statistics.median(o for _, o in pairs)
    ratios = sorted(b / o for b, o in pairs)
    print(
        f"## Planning a no-op rebuild on S3: {args.tracks} published tracks, "
        f"{args.rtt_ms:g} ms round trip\n"
    )
    print(
        f"Command: `python bench/plan_s3.py --tracks {args.tracks} --rtt-ms {args.rtt_ms:g} "
        f"--pairs {args.pairs}`; machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; medians of {args.pairs} pairs.\n"
    )
    print("| files checked | seconds |")
    print("|---|---|")
    print(f"| one at a time (baseline) | {baseline_s:.2f} |")
    print(f"| {ours} at a time (ours) | {ours_s:.2f} |")
    print(
        f"| speed-up (median of the pairs' ratios; spread) | {statistics.median(ratios):.2f}x "
        f"({ratios[0]:.2f}-{ratios[-1]:.2f}) |"
    )


if __name__ == "__main__":
    main()
