"""In-process build events (track id, stage) for whoever shows progress, e.g. Rich bars."""

from __future__ import annotations

import threading
from collections.abc import Callable

Listener = Callable[[str, str], None]  # (track id, stage)
# Tasks report intermediate stages ("generated", "mastered"); every track ends with one of these.
FINAL = frozenset({"published", "cached", "rejected", "failed"})

_listeners: list[Listener] = []
_lock = threading.Lock()


def subscribe(listener: Listener) -> Callable[[], None]:
    """Call `listener` on every event from now on; returns the function that unsubscribes."""
    with _lock:
        _listeners.append(listener)

    def unsubscribe() -> None:
        with _lock:
            _listeners.remove(listener)

    return unsubscribe


def emit(track_id: str, stage: str) -> None:
    """Tell every listener that `track_id` reached `stage`."""
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(track_id, stage)
