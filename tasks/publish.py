"""Publishing: uploads retried with exponential backoff and jitter; the index goes last."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from soundtrack import steps
from soundtrack.errors import StorageError
from soundtrack.report import ModelInfo, TrackRecord
from soundtrack.spec import TrackSpec

if TYPE_CHECKING:
    from soundtrack.process import TrackOutcome
    from soundtrack.stems import StemsOutcome


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    # AccessDenied or a missing bucket will not heal; a dropped connection or SlowDown may.
    error = state.result(raise_on_failure=False)
    return isinstance(error, StorageError) and error.transient


# Exponential backoff with jitter on top of boto3's own retries; nothing to cache or persist.
RETRYING: dict[str, Any] = {
    "retries": 4,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _transient,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}


@task(name="publish", **RETRYING)
def publish_track(
    spec: TrackSpec,
    outcome: TrackOutcome,
    storage_url: str,
    base_dir: str,
    model: ModelInfo | None,
    stems: StemsOutcome | None = None,
) -> TrackRecord:
    """Upload an approved track's files (and its stems'), verified by checksum."""
    return steps.publish(spec, outcome, storage_url, base_dir, model, stems)


@task(name="write-index", **RETRYING)
def write_index(
    soundtrack: str, lock: bytes, storage_url: str, base_dir: str
) -> tuple[str, str | None]:
    """Replace the soundtrack's lock file, then its review page: the last writes of a build
    (why the page was not written comes back, and is no retry's: the lock is published)."""
    return steps.write_index(soundtrack, lock, storage_url, base_dir)
