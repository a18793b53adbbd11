"""Bark (suno/bark) through transformers' BarkModel: one track per call, seeded per track.

Bark speaks its text, or sings it between ♪ marks: a track's lyrics when it has them, else its
prompt. It samples from torch's global generator and has no length control: its semantic tokens
are capped so a render reaches the track's length unless the model ends it earlier. A longer
render is cut to the track's length; a shorter one comes back as it is, for the build's duration
gate to judge (a Bark track sets `gates.duration_tolerance_s` to what it accepts).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from soundtrack.models import hub_kernels  # noqa: F401  before transformers' Bark, which it guards

# isort: split
from transformers import AutoTokenizer, BarkModel

from soundtrack.errors import GenerationError, InputError
from soundtrack.models import onednn
from soundtrack.models.base import (
    GeneratedAudio,
    GenerationRequest,
    ProgressCallback,
    check_request,
    cut_render,
)
from soundtrack.models.device import model_dtype, set_cpu_threads
from soundtrack.models.source import ModelSource, cannot_load

MAX_RENDER_S = 14.0  # Bark's longest render (768 semantic tokens at 49.9 Hz, with a margin)

# torch's global generator is shared by every model in the process: one Bark render at a time.
_GLOBAL_RNG = threading.Lock()


def bark_text(request: GenerationRequest) -> str:
    """What Bark renders: the lyrics, sung (between ♪ marks), or else the prompt, spoken (without
    the key and BPM words, which Bark would say aloud)."""
    if request.lyrics:
        return f"♪ {request.lyrics.strip()} ♪"
    return request.plain_prompt or request.prompt


class BarkGenerator:
    """A loaded Bark checkpoint behind the Generator interface."""

    def __init__(
        self,
        model: BarkModel,
        tokenizer: Any,
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
        generation: Any = model.generation_config
        self.sample_rate = int(generation.sample_rate)
        self.channels = 1
        semantic = generation.semantic_config
        self._semantic_rate_hz = float(semantic["semantic_rate_hz"])
        self._max_text_tokens = int(semantic["max_input_semantic_length"])
        self._model = model
        self._model.eval()  # type: ignore[no-untyped-call]
        self._tokenizer = tokenizer
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
        """One result per request, in order; NaN or silent tracks come back as GenerationError.
        Each track renders in a call of its own (Bark's seed is torch's global one), so
        `batch_size` changes nothing once checked."""
        # 1. Check inputs before any work.
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        inputs = [self._inputs(request) for request in requests]
        # 2. Render each track, then judge it on its own.
        results: list[GeneratedAudio | GenerationError] = []
        for done, (request, encoded) in enumerate(zip(requests, inputs, strict=True), start=1):
            if isinstance(encoded, GenerationError):
                results.append(encoded)
            else:
                results.append(self._result(request, self._render(request, encoded)))
            if progress is not None:
                progress(done, len(requests))
        return results

    def _inputs(self, request: GenerationRequest) -> dict[str, torch.Tensor] | GenerationError:
        """The tokens Bark reads, or why this track cannot be read (its text is too long: the
        tokenizer, not the manifest, knows; the rest of the batch still renders)."""
        check_request(request)
        if request.duration_s > MAX_RENDER_S:
            raise InputError(
                f"track {request.track_id!r}: duration_s must be <= {MAX_RENDER_S:g} s for "
                f"Bark (its longest render), got {request.duration_s}"
            )
        text = bark_text(request)
        tokens = len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokens > self._max_text_tokens:
            what = "lyrics" if request.lyrics else "prompt"
            return GenerationError(
                request.track_id,
                f"its {what} must be <= {self._max_text_tokens} tokens for Bark (the text it "
                f"reads), got {tokens}",
            )
        encoded: dict[str, torch.Tensor] = self._tokenizer(
            text,
            return_tensors="pt",
            padding="max_length",
            max_length=self._max_text_tokens,
            add_special_tokens=False,
            return_attention_mask=True,
            return_token_type_ids=False,
        )
        return {key: value.to(self._model.device) for key, value in encoded.items()}

    def _render(
        self, request: GenerationRequest, encoded: dict[str, torch.Tensor]
    ) -> np.ndarray | GenerationError:
        """(1, frames) float32: at least the track's length unless Bark ends it sooner; or why
        its sampling stopped (NaN or infinite logits in any of its three stages)."""
        # One semantic token more than the length needs: the coarse stage rounds down.
        semantic_tokens = math.ceil(request.duration_s * self._semantic_rate_hz) + 1
        with _GLOBAL_RNG, torch.inference_mode():
            torch.manual_seed(request.seed)  # the CPU's and every accelerator's generator
            try:
                values = self._model.generate(
                    input_ids=encoded["input_ids"],
                    attention_mask=encoded["attention_mask"],
                    do_sample=True,
                    semantic_max_new_tokens=semantic_tokens,
                )
            except RuntimeError as error:  # torch.multinomial's refusal of NaN probabilities
                if "probability tensor contains" not in str(error):
                    raise
                return GenerationError(request.track_id, "the model produced NaN/inf logits")
        audio: np.ndarray = values[:1].float().cpu().numpy()
        return audio

    def _result(
        self, request: GenerationRequest, render: np.ndarray | GenerationError
    ) -> GeneratedAudio | GenerationError:
        if isinstance(render, GenerationError):
            return render
        # The duration is an upper bound for Bark: a shorter render is kept as it is.
        frames = min(round(request.duration_s * self.sample_rate), render.shape[-1])
        return cut_render(request.track_id, render, frames, self)


def load_bark(source: ModelSource, device: str, dtype: torch.dtype | None = None) -> BarkGenerator:
    """Load a Bark checkpoint from disk (safetensors only); the codec stays float32."""
    dtype = dtype or model_dtype(device)
    try:
        model: Any = BarkModel.from_pretrained(
            source.directory, dtype=dtype, local_files_only=True, use_safetensors=True
        )
        tokenizer = AutoTokenizer.from_pretrained(source.directory, local_files_only=True)
    except Exception as error:  # whatever a malformed checkpoint makes its library raise
        raise cannot_load(source, "Bark", error) from error
    model.codec_model.to(torch.float32)
    model.to(device)
    return BarkGenerator(
        model,
        tokenizer,
        model_id=source.model_id,
        revision=source.revision,
        license=source.license,
        device=device,
    )
