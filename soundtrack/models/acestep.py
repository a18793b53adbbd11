"""ACE-Step 1.5 through diffusers' AceStepPipeline: text2music, batched, per-track seeded.

One pipeline call renders 10 s to 600 s of 48 kHz stereo, no windows. bpm, key and time
signature go in as the model's own conditioning, not as words in the prompt; lyrics, when a track
has them, are sung (without them the track is an instrumental). A request with a source recording
(a variation's parent) is rendered as ACE-Step's `cover` of it: the source from its start, looped
when shorter, for the render's length.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import AceStepPipeline
from diffusers.models.transformers.ace_step_transformer import AceStepAttnProcessor2_0

from soundtrack.audio import resample, to_channels
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

MIN_RENDER_S = 10.0  # ACE-Step's shortest render: a shorter track renders this long, then is cut
MAX_RENDER_S = 600.0  # its longest render in one call
# Tokens of text and of lyrics the pipeline reads (its defaults, as ACE-Step's own handler).
MAX_TEXT_TOKENS = 256
MAX_LYRIC_TOKENS = 2048


@dataclass(frozen=True)
class AceStepSettings:
    """Sampling settings of one pipeline call; read from the checkpoint, passed on every call."""

    steps: int = 8  # the turbo checkpoints are distilled for 8 flow-matching steps
    shift: float = 3.0  # timestep-schedule shift (the pipeline's default)
    guidance_scale: float = 1.0  # 1 = no CFG (turbo); base and SFT checkpoints use 7


class _CrossAttentionMask:
    """The condition encoder's padding mask, for the DiT's cross-attention.

    diffusers' pipeline drops the mask the condition encoder returns, so in a batch each track's
    cross-attention would also attend to the padding of its neighbours' longer prompts, and a
    track would render differently alone and in a batch. This restores the mask: the encoder's
    forward hook stores it, the cross-attention processors apply it. A batch without padding runs
    exactly as diffusers runs it.
    """

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def store(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        mask = output[1]
        self.mask = None if bool(mask.all()) else mask.to(torch.bool)


class _MaskedCrossAttention(AceStepAttnProcessor2_0):
    def __init__(self, masks: _CrossAttentionMask) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._masks = masks

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        mask = self._masks.mask
        if mask is not None and attention_mask is None and encoder_hidden_states is not None:
            if mask.shape[1] != encoder_hidden_states.shape[1]:
                raise RuntimeError(
                    f"cross-attention mask covers {mask.shape[1]} positions, the condition "
                    f"{encoder_hidden_states.shape[1]}"
                )
            # Guidance stacks (conditional, unconditional) rows: both keep the track's mask.
            mask = mask.repeat(hidden_states.shape[0] // mask.shape[0], 1)
            attention_mask = mask[:, None, None, :]  # (batch, heads, queries, keys)
        result: torch.Tensor = super().__call__(
            attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb
        )
        return result


class _Reused(torch.nn.Module):
    """A module run again only when its inputs change; otherwise its last outputs, as they were."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self._inputs: tuple[torch.Tensor, ...] = ()
        self._outputs: Any = None

    def forward(self, *inputs: torch.Tensor) -> Any:
        if self._outputs is None or not _equal(inputs, self._inputs):
            self._outputs = self.module(*inputs)
            # A copy: a caller that later changes its tensor in place must not match it.
            self._inputs = tuple(t.detach().clone() for t in inputs)
        return self._outputs


def _equal(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and x.device == y.device and torch.equal(x, y)
        for x, y in zip(a, b, strict=True)
    )


def _reuse_conditions(pipeline: Any) -> None:
    """Compute what stays the same once: the DiT's cross-attention keys and values over a call's
    steps, and the timbre of the built-in silence latent over calls. Recomputed, they took 2.5 s
    of a 10 s render on the CPU (docs/benchmarks.md); reused, the render is bit for bit the same."""
    encoder = pipeline.condition_encoder
    encoder.timbre_encoder = _Reused(encoder.timbre_encoder)
    for attention in _cross_attentions(pipeline):
        attention.to_k = _Reused(attention.to_k)
        attention.to_v = _Reused(attention.to_v)


def _cross_attentions(pipeline: Any) -> list[Any]:
    """The DiT's cross-attention modules, one per block that has one."""
    return [
        layer.cross_attn
        for layer in pipeline.transformer.layers
        if getattr(layer, "use_cross_attention", False)
    ]


class AceStepGenerator:
    """A loaded ACE-Step 1.5 pipeline behind the Generator interface."""

    def __init__(
        self,
        pipeline: Any,  # AceStepPipeline (diffusers' lazy imports leave it untyped)
        *,
        model_id: str,
        revision: str,
        license: str,
        device: str,
        settings: AceStepSettings | None = None,
    ) -> None:
        self.model_id = model_id
        self.revision = revision
        self.license = license
        self.device = device
        self.sample_rate = int(pipeline.sample_rate)
        self.channels = int(pipeline.vae.config.audio_channels)
        self.settings = settings or default_settings(pipeline)
        self._pipeline = pipeline
        self._pipeline.set_progress_bar_config(disable=True)
        # The VAE decodes long renders in 20 s tiles: whole, a 60 s render's decoder activations
        # took 9 GB of RAM on the CPU (the full-size model was killed for memory), 600 s 90 GB.
        self._pipeline.vae.enable_tiling()
        # Right padding: the text encoder runs without a mask, and a causal encoder's real tokens
        # never see padding that follows them (Qwen's tokenizer pads on the left by default).
        self._pipeline.tokenizer.padding_side = "right"
        masks = _CrossAttentionMask()
        self._pipeline.condition_encoder.register_forward_hook(masks.store)
        for attention in _cross_attentions(self._pipeline):
            attention.set_processor(_MaskedCrossAttention(masks))
        _encode_to_the_mean(self._pipeline.vae)
        self._lock = threading.Lock()  # one batch at a time per loaded pipeline (the mask too)
        if device == "cpu":
            run_on_cpu(pipeline)
            # On a GPU the equality checks would stall the queue for milliseconds saved.
            _reuse_conditions(pipeline)

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
        if request.duration_s > MAX_RENDER_S:
            raise InputError(
                f"track {request.track_id!r}: duration_s must be <= {MAX_RENDER_S:g} s for "
                f"ACE-Step (its longest render), got {request.duration_s}"
            )
        samples = round(request.duration_s * self.sample_rate)
        track = PipelineTrack(index, request, samples, max(MIN_RENDER_S, request.duration_s))
        too_long = self._too_long(track)
        return track if too_long is None else GenerationError(request.track_id, too_long)

    def _too_long(self, track: PipelineTrack) -> str | None:
        """Why the pipeline would cut the track's text, warning at most: the end of its prompt
        and then its bpm, key and length, which follow it in the text ACE-Step reads (the
        pipeline's own template, made as it makes it), or the end of its lyrics."""
        request, pipeline = track.request, self._pipeline
        task = "cover" if request.source_audio is not None else "text2music"
        text, lyrics = pipeline._format_prompt(
            prompt=request.plain_prompt or request.prompt,
            lyrics=request.lyrics or "",
            audio_duration=track.render_s,
            instruction=pipeline._get_task_instruction(task_type=task),
            bpm=request.bpm,
            keyscale=request.key,
            timesignature=_beats(request.time_signature),
        )
        for what, formatted, limit in (
            ("prompt", text, MAX_TEXT_TOKENS),
            ("lyrics", lyrics, MAX_LYRIC_TOKENS),
        ):
            tokens = len(pipeline.tokenizer(formatted)["input_ids"])
            if tokens > limit:
                return (
                    f"its {what} makes {tokens} tokens of the text ACE-Step reads (with the "
                    f"template it is set in), over the {limit} it reads: the rest would be cut "
                    "off" + (", the bpm, key and length among it" if what == "prompt" else "")
                )
        return None

    def _source(self, track: PipelineTrack) -> torch.Tensor:
        """The track's source recording as the cover's input: stereo at the pipeline's rate,
        from its start for the render's length in whole latent frames (a cover renders as many
        as its source fills), looped when shorter."""
        request = track.request
        audio = to_channels(np.asarray(request.source_audio, dtype=np.float32), self.channels)
        audio = resample(audio, request.source_rate or self.sample_rate, self.sample_rate)
        hop = round(self.sample_rate / self._pipeline.latents_per_second)
        frames = -(-round(track.render_s * self.sample_rate) // hop) * hop
        audio = np.tile(audio, (1, -(-frames // audio.shape[1])))[:, :frames]
        return torch.from_numpy(np.ascontiguousarray(audio))

    def settings_for(self, request: GenerationRequest) -> AceStepSettings:
        """The checkpoint's settings, with what the track's manifest sets instead."""
        given = request.ace_step
        if given is None:
            return self.settings
        return AceStepSettings(
            steps=given.steps if given.steps is not None else self.settings.steps,
            shift=given.shift if given.shift is not None else self.settings.shift,
            guidance_scale=given.guidance
            if given.guidance is not None
            else self.settings.guidance_scale,
        )

    def _render(self, batch: list[PipelineTrack], step: Callable[[], None]) -> np.ndarray:
        """(tracks, channels, samples) float32 for one batch: one pipeline call."""

        def on_step(*_: Any) -> dict[str, torch.Tensor]:
            step()
            return {}  # no tensor of the pipeline's replaced

        first = batch[0].request
        settings = self.settings_for(first)
        cover = first.source_audio is not None  # alike: every track of the batch, or none
        with torch.inference_mode():
            output = self._pipeline(
                prompt=[t.request.plain_prompt or t.request.prompt for t in batch],
                # One per prompt (a list); "" is an instrumental.
                lyrics=[t.request.lyrics or "" for t in batch],
                audio_duration=batch[0].render_s,
                bpm=first.bpm,
                keyscale=first.key,
                timesignature=_beats(first.time_signature),
                max_text_length=MAX_TEXT_TOKENS,
                max_lyric_length=MAX_LYRIC_TOKENS,
                task_type="cover" if cover else "text2music",
                src_audio=torch.stack([self._source(t) for t in batch]) if cover else None,
                num_inference_steps=settings.steps,
                shift=settings.shift,
                guidance_scale=settings.guidance_scale,
                # CPU generators: each track's noise depends on its seed alone, on any device.
                generator=[torch.Generator().manual_seed(t.request.seed) for t in batch],
                output_type="np",
                callback_on_step_end=on_step,
            )
        audio: np.ndarray = np.asarray(output.audios, dtype=np.float32)
        return audio


def _encode_to_the_mean(vae: Any) -> None:
    """Encode a cover's source to the mean of the VAE's posterior: the pipeline samples it with
    torch's global generator, so the same cover would differ from call to call (by 0.04 on the
    tiny model) and with whatever else draws from that generator."""
    encode = vae.encode

    def mean_encode(audio: torch.Tensor, return_dict: bool = True) -> Any:
        output = encode(audio, return_dict=return_dict)
        posterior = output.latent_dist if return_dict else output[0]
        posterior.sample = lambda generator=None: posterior.mean
        return output

    vae.encode = mean_encode


def _beats(time_signature: str | None) -> str | None:
    """ACE-Step's time signature is the beats per bar: "3" for 3/4, "6" for 6/8."""
    return time_signature.split("/")[0] if time_signature else None


def _alike(t: PipelineTrack) -> tuple[object, ...]:
    """What tracks sharing a pipeline call have in common: length, bpm, key, time signature,
    settings, and whether they are covers of a source recording."""
    request = t.request
    cover = request.source_audio is not None
    return (t.render_s, request.bpm, request.key, request.time_signature, request.ace_step, cover)


def default_settings(pipeline: Any) -> AceStepSettings:
    """Turbo checkpoints: 8 steps without guidance; base and SFT: guidance 7."""
    return AceStepSettings() if pipeline.is_turbo else AceStepSettings(guidance_scale=7.0)


def load_acestep(
    source: ModelSource, device: str, dtype: torch.dtype | None = None
) -> AceStepGenerator:
    """Load an ACE-Step checkpoint from disk (its components were checked against the allow-list
    when the source was resolved): safetensors only, never custom code."""
    dtype = dtype or model_dtype(device)
    try:
        pipeline: Any = AceStepPipeline.from_pretrained(  # type: ignore[no-untyped-call]
            source.directory,
            dtype=dtype,
            use_safetensors=True,
            local_files_only=True,
            low_cpu_mem_usage=False,
        )
    except Exception as error:  # whatever a malformed checkpoint makes its library raise
        raise cannot_load(source, "ACE-Step", error) from error
    pipeline.to(device)
    return AceStepGenerator(
        pipeline,
        model_id=source.model_id,
        revision=source.revision,
        license=source.license,
        device=device,
    )
