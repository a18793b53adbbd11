"""Mastering, gates and encoding of one track (no retries: a gate rejection is a verdict)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE

from soundtrack import events
from soundtrack.spec import TrackSpec

if TYPE_CHECKING:
    from soundtrack.process import TrackOutcome


@task(name="master", cache_policy=NO_CACHE, persist_result=False)
def master_track(spec: TrackSpec, audio_path: str, staging_dir: str) -> TrackOutcome:
    """Master, judge and encode one render or recording into a staging folder."""
    # Imported on first use: scipy, librosa and Great Expectations take seconds to load, and
    # a build that has nothing to master should not pay for them.
    from soundtrack.audio import read_audio
    from soundtrack.gates import load_expectations
    from soundtrack.process import process_track

    audio, sample_rate = read_audio(Path(audio_path))
    extra = load_expectations(spec.expectations) if spec.expectations else []
    outcome = process_track(spec, audio, sample_rate, Path(staging_dir), extra_expectations=extra)
    events.emit(spec.id, "mastered")
    return outcome
