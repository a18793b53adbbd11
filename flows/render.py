"""The render-batch flow: a GPU machine's share of a build (a generation batch, or mixes to
separate into stems), handed back through storage."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from soundtrack.renders import cache_root
from soundtrack.separations import SeparationJob
from soundtrack.spec import TrackSpec
from tasks.generate import render_and_share
from tasks.process import separate_and_share


@flow(name="render-batch", validate_parameters=True)
def render_batch(
    specs: Annotated[
        list[TrackSpec], Field(description="The batch's tracks, as resolved by the build.")
    ],
    storage: Annotated[str, Field(description="Where renders are handed back (folder or s3://).")],
    base_dir: Annotated[
        str, Field(description="The folder a relative storage folder is relative to.")
    ],
    device: Annotated[str | None, Field(description="cuda, mps or cpu; default: auto.")] = None,
    separations: Annotated[
        list[SeparationJob] | None,
        Field(description="Approved mixes the build handed over, to separate into stems."),
    ] = None,
) -> list[str]:
    """Render one batch of a build, or separate its mixes, and hand the results back; returns,
    per track rendered, "ok" or the reason it failed (a failed separation fails the run)."""
    # The build checked its inputs and resolved these specs: nothing is read again here.
    outcomes: list[str] = []
    if specs:
        names = ", ".join(spec.id for spec in specs)
        outcomes = render_and_share.with_options(task_run_name=f"render[{names}]")(
            specs, str(cache_root()), device, storage, base_dir
        )
    for job in separations or []:
        separate_and_share.with_options(task_run_name=f"separate[{job.track_id}]")(
            job, storage, base_dir, device
        )
    return outcomes
