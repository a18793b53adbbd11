"""`python -m tests.corebuild MANIFEST [--storage-wait-s S] [--kill-at N ROOT]`: the core build
on threads, without Prefect, exiting as the CLI does (0, 1, 2, 75), for tests that run builds
side by side or kill one. `--kill-at N ROOT` sends the process SIGKILL at its Nth change to a
file or folder under ROOT (rename, link, unlink), as a crash or `kill -9` there would."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def kill_at(n: int, root: Path) -> None:
    """SIGKILL this process at its `n`th rename, link or unlink of a path under `root`."""
    root = root.resolve()
    done = 0

    def counted(change: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal done
            paths = [a for a in args if isinstance(a, str | os.PathLike)]
            if any(Path(os.path.abspath(p)).is_relative_to(root) for p in paths):
                done += 1
                if done == n:
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
    args = parser.parse_args()
    if args.kill_at:
        kill_at(int(args.kill_at[0]), Path(args.kill_at[1]))
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
