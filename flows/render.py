"""The render-batch flow: one generation batch on a GPU machine, handed back through storage."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from soundtrack.renders import cache_root
from soundtrack.spec import TrackSpec
from tasks.generate import render_and_share


@flow(name="render-batch", validate_parameters=True)
def render_batch(
    specs: Annotated[
        list[TrackSpec],
        Field(min_length=1, description="The batch's tracks, as resolved by the build."),
    ],
    storage: Annotated[str, Field(description="Where renders are handed back (folder or s3://).")],
    base_dir: Annotated[
        str, Field(description="The folder a relative storage folder is relative to.")
    ],
    device: Annotated[str | None, Field(description="cuda, mps or cpu; default: auto.")] = None,
) -> list[str]:
    """Render one batch of a build and publish the renders, keyed by generation key."""
    # The build checked its inputs and resolved these specs: nothing is read again here.
    names = ", ".join(spec.id for spec in specs)
    return render_and_share.with_options(task_run_name=f"render[{names}]")(
        specs, str(cache_root()), device, storage, base_dir
    )
