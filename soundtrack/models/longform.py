"""Long form: tracks above one window rendered as overlapping windows joined by crossfades."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowPlan:
    """A track's windows in codec frames: the first has no prompt, the others new frames only."""

    first_frames: int
    continuation_frames: tuple[int, ...]
    overlap_frames: int

    @property
    def windows(self) -> int:
        """Number of generate calls this track takes part in."""
        return 1 + len(self.continuation_frames)


def plan_windows(total_frames: int, overlap_frames: int, window_frames: int) -> WindowPlan:
    """Split a track into a first window and continuations of window - overlap new frames each."""
    if not 0 < overlap_frames < window_frames:
        raise ValueError(
            f"overlap of {overlap_frames} frames does not fit a {window_frames}-frame window"
        )
    first = min(total_frames, window_frames)
    remaining = total_frames - first
    continuations: list[int] = []
    while remaining > 0:
        continuations.append(min(remaining, window_frames - overlap_frames))
        remaining -= continuations[-1]
    return WindowPlan(first, tuple(continuations), overlap_frames)


def equal_power_join(head: np.ndarray, tail: np.ndarray, overlap_samples: int) -> np.ndarray:
    """Join two (channels, samples) clips whose last/first overlap_samples cover the same time.

    The gains keep the power of the mix equal across the joint for the measured correlation
    rho of the two overlaps: g_out^2 + g_in^2 + 2 rho g_out g_in = 1. Uncorrelated clips get an
    equal-power curve; a re-decoded audio prompt (rho near 1) gets equal gain instead, where
    sin/cos gains would swell by up to 3 dB mid-fade.
    """
    if not 0 < overlap_samples <= min(head.shape[-1], tail.shape[-1]):
        raise ValueError(f"an overlap of {overlap_samples} samples does not fit the clips")
    out_part = head[:, -overlap_samples:].astype(np.float64)
    in_part = tail[:, :overlap_samples].astype(np.float64)
    energy = np.sqrt(np.sum(out_part**2) * np.sum(in_part**2))
    rho = float(np.clip(np.sum(out_part * in_part) / energy, 0.0, 1.0)) if energy > 0 else 0.0
    ramp = np.linspace(0.0, 1.0, overlap_samples)
    norm = np.sqrt((1 - ramp) ** 2 + ramp**2 + 2 * rho * ramp * (1 - ramp))
    joint = out_part * ((1 - ramp) / norm) + in_part * (ramp / norm)
    return np.concatenate(
        [head[:, :-overlap_samples], joint.astype(np.float32), tail[:, overlap_samples:]], axis=-1
    )
