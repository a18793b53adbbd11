"""The render-batch flow: one generation batch on a GPU machine, handed back through storage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from prefect import flow
from pydantic import Field

from soundtrack.manifest import load_manifest
from soundtrack.plan import select
from soundtrack.renders import cache_root
from soundtrack.resolve import resolve_tracks
from tasks.generate import render_and_share


@flow(name="render-batch", validate_parameters=True)
def render_batch(
    manifest: Annotated[str, Field(description="Manifest path, as the build flow was given it.")],
    track_ids: Annotated[list[str], Field(min_length=1, description="The batch's tracks.")],
    storage: Annotated[str, Field(description="Where renders are handed back (folder or s3://).")],
    model: Annotated[str | None, Field(description="Model override of the build.")] = None,
    device: Annotated[str | None, Field(description="cuda, mps or cpu; default: auto.")] = None,
) -> list[str]:
    """Render one batch of a build and publish the renders, keyed by generation key."""
    # 1. Resolve the same specs the build resolved (same manifest, same override)
    path = Path(manifest).resolve()
    specs = select(
        resolve_tracks(load_manifest(path), path.parent, model_override=model), track_ids
    )
    # 2. Render what storage lacks, in one generate call, and share it
    names = ", ".join(track_ids)
    return render_and_share.with_options(task_run_name=f"render[{names}]")(
        specs, str(cache_root()), device, storage, str(path.parent)
    )
