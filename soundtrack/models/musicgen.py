"""MusicGen through transformers: batched, per-track seeded, windowed beyond 30 s."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    MusicgenForConditionalGeneration,
    MusicgenProcessor,
)
from transformers.modeling_outputs import BaseModelOutput

from soundtrack.errors import GenerationError, InputError
from soundtrack.models import onednn
from soundtrack.models.base import (
    MAX_WINDOW_S,
    GeneratedAudio,
    GenerationRequest,
    ProgressCallback,
    check_request,
    judged,
)
from soundtrack.models.device import model_dtype, set_cpu_threads
from soundtrack.models.longform import WindowPlan, equal_power_join, plan_windows
from soundtrack.models.sampling import TrackSampler, uses_guidance
from soundtrack.models.source import ModelSource, cannot_load
from soundtrack.spec import Sampling


@dataclass(frozen=True)
class _Track:
    index: int  # position in the caller's request list
    request: GenerationRequest
    samples: int
    plan: WindowPlan


class _Steps:
    """Counts sampling steps across every generate call of one generate() and reports them."""

    def __init__(self, total: int, progress: ProgressCallback | None) -> None:
        self.total = total
        self.done = 0
        self._progress = progress

    def step(self) -> None:
        self.done += 1
        if self._progress is not None:
            self._progress(self.done, self.total)


class MusicgenGenerator:
    """A loaded MusicGen checkpoint (mono or stereo) behind the Generator interface."""

    def __init__(
        self,
        model: MusicgenForConditionalGeneration,
        processor: MusicgenProcessor,
        *,
        model_id: str,
        revision: str,
        license: str,
        device: str,
    ) -> None:
        self.model_id = model_id
        self.revision = revision
        self.license = license
        self.device = device
        config: Any = model.config  # transformers types sub-configs as dict | config | None
        self.sample_rate = int(config.audio_encoder.sampling_rate)
        self.channels = int(config.decoder.audio_channels)
        self._model = model
        self._model.eval()  # type: ignore[no-untyped-call]
        self._processor = processor
        self._frame_rate = int(config.audio_encoder.frame_rate)
        self._hop = self.sample_rate // self._frame_rate
        self._window_frames = round(MAX_WINDOW_S * self._frame_rate)
        # The codebook delay pattern: codebook k lags k steps, so the last one needs k extra steps.
        self._delay = int(config.decoder.num_codebooks) // self.channels - 1
        # Settings travel with each call; the checkpoint's defaults (CFG, top-k) must not mix in.
        start = model.generation_config.decoder_start_token_id
        self._model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
            decoder_start_token_id=start,
            pad_token_id=model.generation_config.pad_token_id,
            bos_token_id=model.generation_config.bos_token_id,
        )
        self._lock = threading.Lock()  # one batch at a time per loaded model
        if device == "cpu":
            set_cpu_threads(model.num_parameters())
            onednn.speed_up(model)

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        batch_size: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> list[GeneratedAudio | GenerationError]:
        """One result per request, in order; NaN or silent tracks come back as GenerationError."""
        # 1. Check inputs before any work. The build's planner sizes batches (one batching
        # layer): by default the requests given are one batch.
        size = batch_size if batch_size is not None else max(1, len(requests))
        if size < 1:
            raise InputError(f"batch_size must be >= 1, got {size}")
        tracks = [self._track(i, request) for i, request in enumerate(requests)]
        # 2. Same settings share a generate call; similar lengths share a batch.
        batches = self._batches(tracks, size)
        steps = _Steps(sum(self._batch_steps(batch) for batch in batches), progress)
        # 3. Render, then judge each track on its own.
        results: dict[int, GeneratedAudio | GenerationError] = {}
        with self._lock:
            for batch in batches:
                renders = self._render(batch, steps)
                for track, render in zip(batch, renders, strict=True):
                    results[track.index] = self._result(track, render)
        return [results[i] for i in range(len(tracks))]

    def _track(self, index: int, request: GenerationRequest) -> _Track:
        check_request(request)
        # At least one frame of prompt and one of new audio per window.
        overlap = min(max(1, round(request.overlap_s * self._frame_rate)), self._window_frames - 1)
        samples = round(request.duration_s * self.sample_rate)
        frames = math.ceil(samples / self._hop)
        return _Track(index, request, samples, plan_windows(frames, overlap, self._window_frames))

    @staticmethod
    def _batches(tracks: list[_Track], size: int) -> list[list[_Track]]:
        groups: dict[tuple[Sampling, int], list[_Track]] = {}
        for track in tracks:
            groups.setdefault((track.request.sampling, track.plan.overlap_frames), []).append(track)
        batches: list[list[_Track]] = []
        for group in groups.values():
            ordered = sorted(group, key=lambda t: (t.samples, t.index))
            batches.extend(ordered[i : i + size] for i in range(0, len(ordered), size))
        return batches

    def _batch_steps(self, batch: list[_Track]) -> int:
        steps = max(t.plan.first_frames for t in batch) + self._delay
        for window in range(1, max(t.plan.windows for t in batch)):
            active = [t for t in batch if t.plan.windows > window]
            steps += max(t.plan.continuation_frames[window - 1] for t in active) + self._delay
        return steps

    def _render(self, batch: list[_Track], steps: _Steps) -> list[np.ndarray | str]:
        """Each track's audio, or why it failed; windows after the first are prompted by audio."""
        sampling = batch[0].request.sampling
        overlap_samples = batch[0].plan.overlap_frames * self._hop
        hidden, mask = self._encode_text([t.request.prompt for t in batch])
        seeds = [torch.Generator().manual_seed(t.request.seed) for t in batch]
        failures: dict[int, str] = {}
        first = self._window(
            hidden,
            mask,
            seeds,
            sampling,
            max(t.plan.first_frames for t in batch),
            None,
            steps,
            failures,
        )
        audio = [first[j, :, : t.plan.first_frames * self._hop] for j, t in enumerate(batch)]
        for window in range(1, max(t.plan.windows for t in batch)):
            rows = [j for j, t in enumerate(batch) if t.plan.windows > window]
            new_frames = {j: batch[j].plan.continuation_frames[window - 1] for j in rows}
            prompt = np.stack([audio[j][:, -overlap_samples:] for j in rows])
            window_failures: dict[int, str] = {}
            out = self._window(
                hidden[rows],
                mask[rows],
                [seeds[j] for j in rows],
                sampling,
                max(new_frames.values()),
                prompt,
                steps,
                window_failures,
            )
            for k, j in enumerate(rows):
                if k in window_failures:
                    failures.setdefault(j, f"window {window + 1}: {window_failures[k]}")
                end = overlap_samples + new_frames[j] * self._hop
                audio[j] = equal_power_join(audio[j], out[k, :, :end], overlap_samples)
        return [
            failures[j] if j in failures else audio[j][:, : t.samples].copy()  # detach the batch
            for j, t in enumerate(batch)
        ]

    def _encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self._processor(text=prompts, padding=True, return_tensors="pt")
        device = self._model.device
        mask = inputs["attention_mask"].to(device)
        with torch.inference_mode():
            hidden = self._model.text_encoder(
                input_ids=inputs["input_ids"].to(device), attention_mask=mask
            ).last_hidden_state
        return hidden, mask

    def _window(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        seeds: list[torch.Generator],
        sampling: Sampling,
        new_frames: int,
        prompt: np.ndarray | None,
        steps: _Steps,
        failures: dict[int, str],
    ) -> np.ndarray:
        """One generate call: (tracks, channels, samples) float32, prompt audio included."""
        sampler = TrackSampler(sampling, seeds, steps.step)
        inputs: dict[str, Any] = {}
        if prompt is not None:
            inputs["input_values"] = torch.from_numpy(prompt).to(self._model.device)
        if uses_guidance(sampling):
            # Unconditional twins: zero text states, fully masked, as in transformers' own CFG.
            hidden = torch.cat([hidden, torch.zeros_like(hidden)])
            mask = torch.cat([mask, torch.zeros_like(mask)])
            if prompt is not None:
                inputs["input_values"] = torch.cat([inputs["input_values"]] * 2)
        with torch.inference_mode():
            values = self._model.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                attention_mask=mask,
                max_new_tokens=new_frames + self._delay,
                do_sample=False,  # TrackSampler has drawn the token; greedy just reads it back
                logits_processor=LogitsProcessorList([sampler]),
                **inputs,
            )
        for track in sorted(sampler.nonfinite_tracks):
            failures[track] = "the decoder produced NaN/inf logits"
        audio: np.ndarray = values[: len(seeds)].float().cpu().numpy()
        return audio

    def _result(self, track: _Track, render: np.ndarray | str) -> GeneratedAudio | GenerationError:
        track_id = track.request.track_id
        if isinstance(render, str):
            return GenerationError(track_id, render)
        return judged(track_id, render, self)


def load_musicgen(
    source: ModelSource, device: str, dtype: torch.dtype | None = None
) -> MusicgenGenerator:
    """Load a MusicGen checkpoint from disk; the codec stays float32 to keep audio precision."""
    dtype = dtype or model_dtype(device)
    try:
        model: Any = MusicgenForConditionalGeneration.from_pretrained(
            source.directory, dtype=dtype, local_files_only=True, use_safetensors=True
        )
        processor = MusicgenProcessor.from_pretrained(source.directory, local_files_only=True)
    except Exception as error:  # whatever a malformed checkpoint makes its library raise
        raise cannot_load(source, "MusicGen", error) from error
    model.audio_encoder.to(torch.float32)
    model.to(device)
    return MusicgenGenerator(
        model,
        processor,
        model_id=source.model_id,
        revision=source.revision,
        license=source.license,
        device=device,
    )
