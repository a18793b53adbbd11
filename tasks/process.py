"""Mastering, gates and encoding of one track (no retries: a gate rejection is a verdict)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from soundtrack import events
from soundtrack.audio import read_audio
from soundtrack.process import TrackOutcome, process_track
from soundtrack.spec import TrackSpec


@task(name="master", cache_policy=NO_CACHE, persist_result=False)
def master_track(spec: TrackSpec, audio_path: str, staging_dir: str) -> TrackOutcome:
    """Master, judge and encode one render or recording into a staging folder."""
    audio, sample_rate = read_audio(Path(audio_path))
    outcome = process_track(spec, audio, sample_rate, Path(staging_dir))
    events.emit(spec.id, "processed" if outcome.status == "approved" else "rejected")
    return outcome
