"""The generator interface: requests in, float32 audio with its provenance out."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from soundtrack.errors import GenerationError, InputError
from soundtrack.spec import AceStepSampling, Sampling, StableAudioSampling

MAX_WINDOW_S = 30.0  # MusicGen was trained on 30 s excerpts; one generate call stays within it
SILENCE_PEAK_DBFS = -60.0  # a render whose sample peak stays below this is treated as silent
_TIME_SIGNATURE = re.compile(r"^[1-9][0-9]?/(1|2|4|8|16|32)$")


@dataclass(frozen=True)
class GenerationRequest:
    """One track to render: what to play, how long, and the seed that makes it reproducible."""

    track_id: str
    prompt: str
    duration_s: float
    seed: int
    sampling: Sampling
    overlap_s: float = 10.0  # long form: seconds of the previous window fed back as audio prompt
    # Musical targets. A model that takes them as conditioning (ACE-Step) receives them so and
    # reads `plain_prompt`; a text-only model (MusicGen) reads `prompt`, where the build has
    # already written key and BPM as words.
    bpm: int | None = None
    key: str | None = None  # e.g. "D minor"
    time_signature: str | None = None  # e.g. "3/4"
    lyrics: str | None = None  # words to sing (ACE-Step, Bark); None: instrumental
    ace_step: AceStepSampling | None = None  # the manifest's ACE-Step settings, if any
    plain_prompt: str | None = None  # `prompt` without the key and BPM words; None: the same
    negative_prompt: str | None = None  # what to steer away from (Stable Audio); None: nothing
    stable_audio: StableAudioSampling | None = None  # the manifest's Stable Audio settings
    # A recording to render from (a variation's parent): float32 (channels, frames) at
    # source_rate; a model that takes one (ACE-Step: a cover) renders from its start.
    source_audio: np.ndarray | None = field(default=None, compare=False, repr=False)
    source_rate: int | None = None


@dataclass(frozen=True)
class GeneratedAudio:
    """A render: float32 (channels, frames), exactly round(duration_s * sample_rate) frames;
    Bark's, which may end early, at most that many (its length an upper bound)."""

    track_id: str
    audio: np.ndarray
    sample_rate: int
    model_id: str
    revision: str
    license: str


ProgressCallback = Callable[[int, int], None]  # (steps done, steps in total)


class Generator(Protocol):
    """A loaded model that renders batches of requests."""

    model_id: str
    revision: str
    license: str
    sample_rate: int
    channels: int
    device: str

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        batch_size: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> list[GeneratedAudio | GenerationError]:
        """One result per request, in order; a bad track comes back as a GenerationError."""
        ...


def check_request(request: GenerationRequest) -> None:
    """Raise InputError naming the track for a request no model can honour."""
    name = f"track {request.track_id!r}"
    if not request.prompt.strip():
        raise InputError(f"{name}: prompt is empty")
    if not (math.isfinite(request.duration_s) and request.duration_s > 0):
        raise InputError(f"{name}: duration_s must be > 0, got {request.duration_s}")
    if not (math.isfinite(request.overlap_s) and 0 < request.overlap_s < MAX_WINDOW_S):
        raise InputError(
            f"{name}: overlap_s must be > 0 and < {MAX_WINDOW_S:g} s (one window), "
            f"got {request.overlap_s}"
        )
    if request.bpm is not None and not 0 < request.bpm <= 1000:
        raise InputError(f"{name}: bpm must be > 0 and <= 1000, got {request.bpm}")
    if request.time_signature is not None and not _TIME_SIGNATURE.match(request.time_signature):
        raise InputError(
            f"{name}: time_signature must be beats/unit such as 4/4 or 6/8, "
            f"got {request.time_signature!r}"
        )
    sampling = request.sampling
    if not sampling.temperature > 0:
        raise InputError(f"{name}: sampling.temperature must be > 0, got {sampling.temperature}")
    if sampling.top_k < 0:
        raise InputError(f"{name}: sampling.top_k must be >= 0 (0 = off), got {sampling.top_k}")
    if not 0 <= sampling.top_p <= 1:
        raise InputError(
            f"{name}: sampling.top_p must be within [0, 1] (0 = off), got {sampling.top_p}"
        )


def check_audio(track_id: str, audio: np.ndarray) -> None:
    """Raise GenerationError naming the track for NaN/inf, all-zero or near-silent audio."""
    if audio.size == 0:
        raise GenerationError(track_id, "the render is empty (0 samples)")
    if not np.all(np.isfinite(audio)):
        bad = int(np.count_nonzero(~np.isfinite(audio)))
        raise GenerationError(track_id, f"the render contains {bad} NaN/inf samples")
    peak = float(np.max(np.abs(audio)))
    if peak == 0.0:
        raise GenerationError(track_id, "the render is all zeros (digital silence)")
    peak_dbfs = 20.0 * np.log10(peak)
    if peak_dbfs < SILENCE_PEAK_DBFS:
        raise GenerationError(
            track_id,
            f"the render is near-silent: peak {peak_dbfs:.1f} dBFS < {SILENCE_PEAK_DBFS:.0f} dBFS",
        )


def cut_render(
    track_id: str, render: np.ndarray, frames: int, generator: Generator
) -> GeneratedAudio | GenerationError:
    """The first `frames` of a (channels, frames) render as the track's result, or why there is
    none: a render too short, NaN or silent is that track's GenerationError."""
    if render.shape[-1] < frames:
        return GenerationError(
            track_id, f"the pipeline rendered {render.shape[-1]} frames, {frames} needed"
        )
    return judged(track_id, render[:, :frames].copy(), generator)  # the copy detaches the batch


def judged(
    track_id: str, audio: np.ndarray, generator: Generator
) -> GeneratedAudio | GenerationError:
    """A track's render as its result, recording the model that made it; NaN or silence is
    that track's GenerationError."""
    try:
        check_audio(track_id, audio)
    except GenerationError as error:
        return error
    return GeneratedAudio(
        track_id=track_id,
        audio=audio,
        sample_rate=generator.sample_rate,
        model_id=generator.model_id,
        revision=generator.revision,
        license=generator.license,
    )
