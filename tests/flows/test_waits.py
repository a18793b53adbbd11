"""A signal ends a build's waits, then does what it did before; one it ignores stays ignored."""

from __future__ import annotations

import signal
from types import FrameType

from tasks.waits import STOPPING, stop_waits_on_signals


def test_a_signal_ends_the_waits_and_one_the_build_was_started_to_ignore_stays_ignored() -> None:
    """A build started in the background (`cmd &` under a shell without job control) ignores
    Ctrl-C meant for the terminal's foreground job: that must not end its waits either."""
    told: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        told.append(signum)

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_waits_on_signals():
            signal.raise_signal(signal.SIGINT)
            assert not STOPPING.is_set(), "an ignored Ctrl-C ended the build's waits"
            signal.raise_signal(signal.SIGTERM)
            assert STOPPING.is_set(), "SIGTERM left the waits waiting"
            assert told == [signal.SIGTERM], "the handler before ours was not called"
        assert signal.getsignal(signal.SIGTERM) is handler
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        STOPPING.clear()
        for sig, old in before.items():
            signal.signal(sig, old)
