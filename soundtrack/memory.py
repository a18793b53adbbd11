"""How this process allocates memory: large blocks kept for reuse (no torch import here: the CLI
sets this up before every command)."""

from __future__ import annotations

import ctypes
import platform

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_KEPT_BYTES = 1 << 30  # blocks up to this size are reused, and this much freed memory is kept


def keep_freed_memory() -> None:
    """Have glibc keep large freed blocks for reuse instead of handing them back to the kernel.

    torch allocates every activation anew, and glibc maps each block over 32 MiB fresh: a 10 s
    ACE-Step decode (250 MB activations) spent 2.3 of its 10.5 s in 2.4 million page faults, and
    8.0 s with its memory reused (docs/benchmarks.md). One arena, because a thread's own arena
    maps every block over 64 MiB whatever the threshold; so this runs before rendering threads
    start. PyTorch's tuning guide preloads another allocator for this; this needs none.
    """
    if platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(None)
    for parameter, value in (
        (_M_ARENA_MAX, 1),
        (_M_MMAP_THRESHOLD, _KEPT_BYTES),
        (_M_TRIM_THRESHOLD, _KEPT_BYTES),
    ):
        libc.mallopt(parameter, value)
