"""Classifier-free guidance and sampling with one random stream per track, inside HF generate."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import (
    LogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from soundtrack.spec import Sampling


def uses_guidance(sampling: Sampling) -> bool:
    """Whether the batch carries unconditional twins (guidance 1.0: the conditional model alone)."""
    return sampling.guidance != 1.0


class TrackSampler(LogitsProcessor):
    """Applies CFG, then samples each track's codebooks from that track's own torch.Generator.

    Generate runs greedy over the scores returned here (0 for the drawn token, -inf elsewhere), so
    the global RNG is never used: a track's random stream depends only on its seed and on how many
    steps it has taken, not on the other tracks of its batch or on other threads.
    """

    def __init__(
        self,
        sampling: Sampling,
        generators: Sequence[torch.Generator],
        on_step: Callable[[], None],
    ) -> None:
        self._guidance = sampling.guidance
        self._cfg = uses_guidance(sampling)
        self._generators = generators
        self._on_step = on_step
        self._temperature = TemperatureLogitsWarper(sampling.temperature)
        # audiocraft's rule: nucleus sampling when top_p > 0, else top-k when top_k > 0.
        self._truncate: TopPLogitsWarper | TopKLogitsWarper | None = None
        if sampling.top_p > 0.0:
            self._truncate = TopPLogitsWarper(sampling.top_p)
        elif sampling.top_k > 0:
            self._truncate = TopKLogitsWarper(sampling.top_k)
        self.nonfinite_tracks: set[int] = set()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tracks = len(self._generators)
        logits = scores.float()
        if self._cfg:
            cond, uncond = logits.chunk(2, dim=0)
            logits = uncond + self._guidance * (cond - uncond)
        codebooks = logits.shape[0] // tracks
        finite = torch.isfinite(logits).all(dim=-1).view(tracks, codebooks).all(dim=-1)
        for track in torch.nonzero(~finite).flatten().tolist():
            # Keep the batch going; the track is reported as failed once generation ends.
            self.nonfinite_tracks.add(track)
            logits.view(tracks, codebooks, -1)[track] = 0.0
        logits = self._temperature(input_ids, logits)
        if self._truncate is not None:
            logits = self._truncate(input_ids, logits)
        probs = torch.softmax(logits, dim=-1)
        uniforms = torch.stack([torch.rand(codebooks, generator=g) for g in self._generators])
        cdf = probs.cumsum(dim=-1)
        targets = uniforms.to(cdf.device).view(-1, 1) * cdf[:, -1:]
        tokens = torch.searchsorted(cdf, targets, right=True).clamp_(max=cdf.shape[-1] - 1)
        if self._cfg:
            tokens = tokens.repeat(2, 1)  # the unconditional twin must follow the same tokens
        chosen = torch.full_like(scores, float("-inf"))
        chosen.scatter_(1, tokens, 0.0)
        self._on_step()
        return chosen  # type: ignore[return-value]
