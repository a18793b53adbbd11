"""Mastering, gates and encoding of one track (no retries: a gate rejection is a verdict)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE

from soundtrack import steps
from soundtrack.spec import TrackSpec

if TYPE_CHECKING:
    from soundtrack.process import TrackOutcome
    from soundtrack.stems import StemsOutcome


@task(name="master", cache_policy=NO_CACHE, persist_result=False)
def master_track(spec: TrackSpec, audio_path: str, staging_dir: str) -> TrackOutcome:
    """Master, judge and encode one render or recording into a staging folder."""
    return steps.master(spec, audio_path, staging_dir)


@task(name="separate", cache_policy=NO_CACHE, persist_result=False)
def separate_stems(
    spec: TrackSpec, outcome: TrackOutcome, staging_dir: str, device: str | None
) -> StemsOutcome:
    """Split an approved mix into its stems, judge and encode them beside it."""
    return steps.separate(spec, outcome, staging_dir, device)
