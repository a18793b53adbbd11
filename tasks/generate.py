"""Generation: one batch per task, under the GPU concurrency limit, cached on generation keys."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefect import task
from prefect.concurrency.sync import concurrency
from prefect.context import TaskRunContext

from soundtrack import events
from soundtrack.errors import GenerationError, ModelLoadError
from soundtrack.renders import Render, RenderCache, RenderFailure, render_batch
from soundtrack.spec import TrackSpec

GPU_LIMIT = "soundtrack-gpu"
# The slot's lease is renewed while a batch renders; a build killed mid-batch frees it when the
# lease runs out, instead of blocking every later build.
GPU_LEASE_S = 60  # the server's minimum


def batch_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Prefect's default key covers the task's source, not the model, seed or pipeline version
    it depends on; the tracks' generation keys cover all of those."""
    keys = sorted(spec.generation_key or spec.id for spec in parameters["specs"])
    return "render-" + hashlib.sha256("|".join(keys).encode()).hexdigest()


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    # A model that cannot load, or a render that came out silent, does not heal on retry.
    error = state.result(raise_on_failure=False)
    return not isinstance(error, ModelLoadError | GenerationError | ValueError)


@task(
    name="generate",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=_transient,
    cache_key_fn=batch_cache_key,
    persist_result=True,
)
def generate_batch(
    specs: list[TrackSpec], cache_dir: str, device: str | None
) -> list[Render | RenderFailure]:
    """Render one batch (one generate call) into the render cache; returns paths and hashes."""
    with concurrency(GPU_LIMIT, occupy=1, lease_duration=GPU_LEASE_S, strict=True):
        results = render_batch(specs, RenderCache(Path(cache_dir)), device=device)
    for spec, result in zip(specs, results, strict=True):
        events.emit(spec.id, "failed" if isinstance(result, RenderFailure) else "generated")
    return results
