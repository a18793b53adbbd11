"""`python -m tests.corebuild MANIFEST [--storage-wait-s S] [--kill-at N ROOT]
[--kill-once-made PATH ROOT]`: the core build on threads, without Prefect, exiting as the CLI
does (0, 1, 2, 75), for tests that run builds side by side or kill one. `--kill-at N ROOT` sends
the process SIGKILL at its Nth change to a file or folder under ROOT (rename, link, unlink), as a
crash or `kill -9` there would; `--kill-once-made PATH ROOT` at its first change there after
PATH exists."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def start(manifest: Path, *args: str) -> subprocess.Popen[str]:
    """A core build of `manifest` in a process of its own (stdout and stderr piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.corebuild", str(manifest), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> None:
    """Kill a build (stopped or not) that a test left running."""
    if process.poll() is None:
        process.kill()
        process.wait()


def wait_for(condition: Callable[[], object], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def second_waits_for_first(
    first_manifest: Path,
    second_manifest: Path,
    *,
    published_some: Callable[[], object],
    lock_written: Callable[[], bool],
) -> None:
    """Build the first manifest, stop it once it has published some files but before its lock,
    start the second: it must say it waits for the first (by pid); then both finish, exit 0."""
    first = start(first_manifest)
    try:
        wait_for(lambda: published_some() or first.poll() is not None)
        os.kill(first.pid, signal.SIGSTOP)
        assert first.poll() is None, first.communicate()
        assert not lock_written()
        second = start(second_manifest, "--storage-wait-s", "300")
        assert second.stderr is not None
        waiting = second.stderr.readline()
        while "is being built by" not in waiting:
            assert waiting, "the second build ended without waiting"
            waiting = second.stderr.readline()
        assert f"is being built by process {first.pid} on " in waiting
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=120) == 0, first.communicate()
        assert second.wait(timeout=120) == 0, second.communicate()
    finally:
        stop(first)


def kill_at(n: int, root: Path) -> None:
    """SIGKILL this process at its `n`th rename, link or unlink of a path under `root`."""
    _kill_when(root, lambda done: done == n)


def kill_once_made(path: Path, root: Path) -> None:
    """SIGKILL this process at its first rename, link or unlink under `root` once `path` exists
    (before that change is made)."""
    _kill_when(root, lambda _: path.exists())


def _kill_when(root: Path, due: Callable[[int], bool]) -> None:
    """SIGKILL this process at a change under `root` when `due(changes so far, this one
    included)`."""
    root = root.resolve()
    done = 0

    def counted(change: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal done
            paths = [a for a in args if isinstance(a, str | os.PathLike)]
            if any(Path(os.path.abspath(p)).is_relative_to(root) for p in paths):
                done += 1
                if due(done):
                    os.kill(os.getpid(), signal.SIGKILL)
            return change(*args, **kwargs)

        return wrapper

    for name in ("replace", "rename", "link", "unlink"):
        setattr(os, name, counted(getattr(os, name)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--storage-wait-s", type=float)
    parser.add_argument("--kill-at", nargs=2)
    parser.add_argument("--kill-once-made", nargs=2)
    args = parser.parse_args()
    # Ctrl-C as in a terminal: a test runner's worker (xdist) hands SIGINT down ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.kill_at:
        kill_at(int(args.kill_at[0]), Path(args.kill_at[1]))
    if args.kill_once_made:
        kill_once_made(Path(args.kill_once_made[0]), Path(args.kill_once_made[1]))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")

    from soundtrack.build import Options, ThreadExecutor, build
    from soundtrack.errors import InputError, StorageBusy

    try:
        result = build(
            args.manifest,
            Options(storage_wait_s=args.storage_wait_s),
            executor=ThreadExecutor(),
        )
    except StorageBusy as exc:
        print(f"storage busy: {exc}", file=sys.stderr)
        sys.exit(75)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(result.exit_status)


if __name__ == "__main__":
    main()
