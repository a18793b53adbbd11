"""Large freed blocks are reused rather than mapped afresh, counted in page faults, in a thread
started after the set-up (as `soundtrack build` renders)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

BLOCK_BYTES = 256 << 20  # the size of a 10 s ACE-Step decoder activation
PAGES = BLOCK_BYTES // 4096

SCRIPT = """
import resource, sys, threading
import torch
torch.set_num_threads(1)
if sys.argv[1] == "kept":
    from soundtrack.memory import keep_freed_memory
    keep_freed_memory()
faults = []
def render():
    signal = torch.ones(int(sys.argv[2]) // 4)
    for _ in range(4):  # rounds of ten activations, each allocated, written and freed
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            signal * 2.0
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=render)
thread.start()
thread.join()
print(faults[-1])
"""


def last_round_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(BLOCK_BYTES)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_a_thread_reuses_a_freed_block_instead_of_faulting_it_in_again() -> None:
    plain = last_round_faults("plain")  # ten blocks mapped afresh: 10 x 65 536 faults here
    if plain < 5 * PAGES:
        pytest.skip(f"this kernel maps the blocks with few faults ({plain}): nothing to save")
    assert last_round_faults("kept") < PAGES // 10, f"plain: {plain} faults"
