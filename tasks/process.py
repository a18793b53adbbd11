"""Mastering, gates and encoding of one track (no retries: a gate rejection is a verdict)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task
from prefect.cache_policies import NO_CACHE

from soundtrack import steps
from soundtrack.separations import SeparationJob
from soundtrack.spec import TrackSpec
from tasks.waits import run_on_pool

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


@task(name="separate-and-share", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def separate_and_share(
    job: SeparationJob, storage_url: str, base_dir: str, device: str | None
) -> None:
    """On a render-pool machine: separate a mix the build handed over and hand its sources
    back through the storage."""
    steps.separate_handed_over(job, storage_url, base_dir, device)


@task(name="separate-on-pool", cache_policy=NO_CACHE, persist_result=False)
def separate_on_pool(
    spec: TrackSpec,
    outcome: TrackOutcome,
    staging_dir: str,
    device: str | None,
    deployment: str,
    storage_url: str,
    base_dir: str,
) -> StemsOutcome:
    """Send an approved mix to the render-batch deployment to be separated there; wait for it,
    then judge and encode the stems here, as the mix was."""
    job = steps.hand_over_mix(spec, outcome, storage_url, base_dir)
    parameters = {
        "specs": [],
        "separations": [job],
        "storage": storage_url,
        "base_dir": base_dir,
        "device": device,
    }
    child = run_on_pool(deployment, parameters)
    state = child.state.name if child.state else "unknown"
    missing = f"render-batch run {child.name!r} ended {state} without its sources"
    return steps.judge_handed_back(spec, outcome, staging_dir, job, storage_url, base_dir, missing)
