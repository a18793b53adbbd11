"""Stable Audio Open through diffusers' StableAudioPipeline: text to 44.1 kHz stereo, batched,
per-track seeded.

One pipeline call renders up to 47 s (the checkpoint's longest render); the model has no bpm or
key conditioning, so those stay words in the prompt. A track's negative prompt, when it has one,
steers guidance away from it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import StableAudioPipeline

from soundtrack.errors import GenerationError, InputError
from soundtrack.models.base import (
    GeneratedAudio,
    GenerationRequest,
    ProgressCallback,
    check_request,
)
from soundtrack.models.device import model_dtype
from soundtrack.models.pipeline import PipelineTrack, render_batches, run_on_cpu
from soundtrack.models.source import ModelSource, cannot_load

MAX_RENDER_S = 47.0  # the catalog's limit for the family (the checkpoint renders 47.55 s)


@dataclass(frozen=True)
class StableAudioSettings:
    """Sampling settings of one pipeline call (the model card's)."""

    steps: int = 100
    guidance_scale: float = 7.0


# A track renders with these unless its manifest's `stable-audio` sampling block sets others.
DEFAULT_SETTINGS = StableAudioSettings()


class StableAudioGenerator:
    """A loaded Stable Audio Open pipeline behind the Generator interface."""

    def __init__(
        self,
        pipeline: Any,  # StableAudioPipeline (diffusers' lazy imports leave it untyped)
        *,
        model_id: str,
        revision: str,
        license: str,
        device: str,
        settings: StableAudioSettings | None = None,
    ) -> None:
        self.model_id = model_id
        self.revision = revision
        self.license = license
        self.device = device
        self.sample_rate = int(pipeline.vae.config.sampling_rate)
        self.channels = int(pipeline.vae.config.audio_channels)
        self.settings = settings or DEFAULT_SETTINGS
        # The longest and shortest render one call allows: the DiT's latent length, and the
        # projection model's range of seconds.
        hop = int(pipeline.vae.hop_length)
        longest = int(pipeline.transformer.config.sample_size) * hop / self.sample_rate
        self.max_render_s = min(MAX_RENDER_S, longest)
        self.min_render_s = max(0.0, float(pipeline.projection_model.config.min_value))
        self._pipeline = pipeline
        self._pipeline.set_progress_bar_config(disable=True)
        self._lock = threading.Lock()  # one batch at a time per loaded pipeline
        if device == "cpu":
            run_on_cpu(pipeline)

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        batch_size: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> list[GeneratedAudio | GenerationError]:
        """One result per request, in order; NaN or silent tracks come back as GenerationError."""
        tracks = [self._track(i, request) for i, request in enumerate(requests)]
        with self._lock:
            return render_batches(
                self,
                tracks,
                batch_size,
                alike=_alike,
                steps=lambda request: self.settings_for(request).steps,
                render=self._render,
                progress=progress,
            )

    def _track(self, index: int, request: GenerationRequest) -> PipelineTrack | GenerationError:
        check_request(request)
        if request.duration_s > self.max_render_s:
            raise InputError(
                f"track {request.track_id!r}: duration_s must be <= {self.max_render_s:g} s for "
                f"Stable Audio (its longest render), got {request.duration_s}"
            )
        # The pipeline cuts a text longer than its T5 reads, with a warning only, and the words
        # cut are the last: the bpm and key words added to the prompt. Only the tokenizer knows.
        tokenizer = self._pipeline.tokenizer
        limit = int(tokenizer.model_max_length)
        for what, text in (
            ("prompt", request.prompt),
            ("negative_prompt", request.negative_prompt),
        ):
            tokens = len(tokenizer(text, verbose=False)["input_ids"]) if text is not None else 0
            if tokens > limit:
                return GenerationError(
                    request.track_id,
                    f"its {what} must be <= {limit} tokens for Stable Audio, its end token "
                    f"included (the text its T5 encoder reads; the rest would be cut off), got "
                    f"{tokens}",
                )
        samples = round(request.duration_s * self.sample_rate)
        # Half a frame more: the pipeline cuts at int(seconds * rate), never short of `samples`.
        seconds = max(self.min_render_s, (samples + 0.5) / self.sample_rate)
        return PipelineTrack(index, request, samples, min(seconds, self.max_render_s))

    def settings_for(self, request: GenerationRequest) -> StableAudioSettings:
        """The default settings, with what the track's manifest sets instead."""
        given = request.stable_audio
        if given is None:
            return self.settings
        return StableAudioSettings(
            steps=given.steps if given.steps is not None else self.settings.steps,
            guidance_scale=given.guidance
            if given.guidance is not None
            else self.settings.guidance_scale,
        )

    def _render(self, batch: list[PipelineTrack], step: Callable[[], None]) -> np.ndarray:
        """(tracks, channels, frames) float32 for one batch: one pipeline call."""
        settings = self.settings_for(batch[0].request)
        negative = [t.request.negative_prompt for t in batch]
        with torch.inference_mode():
            output = self._pipeline(
                # Bpm and key are already words in `prompt`: the model has no such conditioning.
                prompt=[t.request.prompt for t in batch],
                negative_prompt=None if negative[0] is None else negative,
                audio_end_in_s=batch[0].render_s,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                # CPU generators: each track's noise depends on its seed alone, on any device.
                generator=[torch.Generator().manual_seed(t.request.seed) for t in batch],
                output_type="np",
                callback=lambda *_: step(),
                callback_steps=1,
            )
        audio: np.ndarray = np.asarray(output.audios, dtype=np.float32)
        return audio


def _alike(t: PipelineTrack) -> tuple[object, ...]:
    """What tracks sharing a pipeline call have in common: length, settings, and whether they
    have a negative prompt (the pipeline takes one length per call, and guidance without a
    negative prompt uses an empty condition, not an encoded one)."""
    return (t.render_s, t.request.negative_prompt is None, t.request.stable_audio)


def load_stableaudio(
    source: ModelSource, device: str, dtype: torch.dtype | None = None
) -> StableAudioGenerator:
    """Load a Stable Audio Open checkpoint from disk (its components were checked against the
    allow-list when the source was resolved): safetensors only, never custom code."""
    dtype = dtype or model_dtype(device)
    try:
        pipeline: Any = StableAudioPipeline.from_pretrained(  # type: ignore[no-untyped-call]
            source.directory,
            dtype=dtype,
            use_safetensors=True,
            local_files_only=True,
            low_cpu_mem_usage=False,
        )
    except Exception as error:  # whatever a malformed checkpoint makes its library raise
        raise cannot_load(source, "Stable Audio", error) from error
    pipeline.to(device)
    return StableAudioGenerator(
        pipeline,
        model_id=source.model_id,
        revision=source.revision,
        license=source.license,
        device=device,
    )
