"""What the diffusers backends (ACE-Step, Stable Audio) share: tracks that render alike go
through one pipeline call, each render is cut to its track's exact length and judged on its own."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from soundtrack.errors import GenerationError, InputError
from soundtrack.models import onednn, oobleck
from soundtrack.models.base import (
    GeneratedAudio,
    GenerationRequest,
    Generator,
    ProgressCallback,
    cut_render,
)
from soundtrack.models.device import pipeline_modules, pipeline_parameters, set_cpu_threads


def run_on_cpu(pipeline: Any) -> None:
    """Ready a loaded pipeline for the CPU: every core, the faster Oobleck VAE modules, and linear
    layers through oneDNN."""
    set_cpu_threads(pipeline_parameters(pipeline))
    oobleck.speed_up(pipeline.vae)
    for module in pipeline_modules(pipeline):
        onednn.speed_up(module)


@dataclass(frozen=True)
class PipelineTrack:
    index: int  # position in the caller's request list
    request: GenerationRequest
    samples: int  # exactly round(duration_s * sample_rate)
    render_s: float  # seconds the pipeline renders: at least the track's


def render_batches(
    generator: Generator,
    tracks: Sequence[PipelineTrack | GenerationError],
    batch_size: int | None,
    *,
    alike: Callable[[PipelineTrack], Hashable],
    steps: Callable[[GenerationRequest], int],
    render: Callable[[list[PipelineTrack], Callable[[], None]], np.ndarray],
    progress: ProgressCallback | None,
) -> list[GeneratedAudio | GenerationError]:
    """Tracks with the same `alike` key share calls of `batch_size` (default: all); `render`
    makes one call, (tracks, channels, samples), calling its step callback once per step. A
    track that is already a GenerationError (its text too long) comes back as it is."""
    size = batch_size if batch_size is not None else max(1, len(tracks))
    if size < 1:
        raise InputError(f"batch_size must be >= 1, got {size}")
    groups: dict[Hashable, list[PipelineTrack]] = {}
    for track in tracks:
        if isinstance(track, PipelineTrack):
            groups.setdefault(alike(track), []).append(track)
    batches = [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]
    total = sum(steps(batch[0].request) for batch in batches)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    results: dict[int, GeneratedAudio | GenerationError] = {}
    for batch in batches:
        audio = render(batch, step)
        for j, track in enumerate(batch):
            results[track.index] = cut_render(
                track.request.track_id, audio[j], track.samples, generator
            )
    return [t if isinstance(t, GenerationError) else results[t.index] for t in tracks]
