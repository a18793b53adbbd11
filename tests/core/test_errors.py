"""Errors survive pickling: Prefect stores a failed task's exception, and workers send it back."""

from __future__ import annotations

import pickle

from soundtrack.errors import GenerationError, InputError, StorageError


def test_errors_round_trip_through_pickle() -> None:
    generation = pickle.loads(pickle.dumps(GenerationError("theme", "output is NaN")))
    assert (generation.track_id, generation.reason) == ("theme", "output is NaN")
    assert str(generation) == "track 'theme': output is NaN"
    storage = pickle.loads(pickle.dumps(StorageError("SlowDown", transient=True)))
    assert storage.transient and str(storage) == "SlowDown"
    bad = pickle.loads(pickle.dumps(InputError("2 problems", ["a", "b"])))
    assert bad.problems == ["a", "b"] and str(bad) == "2 problems"
