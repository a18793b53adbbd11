"""Linear layers through oneDNN on the CPU: the same float32 products, faster.

torch sends a float32 nn.Linear to MKL's sgemm, which on this project's machines (AMD EPYC) ran
MusicGen's per-step [2, 1024] x [1024, 4096] products at 0.3-0.4 of oneDNN's speed and the
ACE-Step DiT's [125, 2048] x [2048, 6144] at 0.6-0.7 of it. oneDNN's inner product ships with
every x86-64 build of torch (its compiler's CPU backend calls it); each product is float rounding
away from MKL's (docs/benchmarks.md).
"""

from __future__ import annotations

import platform

import torch
from torch import nn

# Measured on x86-64 only; elsewhere torch's oneDNN may sit on other kernels (ARM's ACL). The op
# is torch's own but private, so a torch without it keeps plain layers.
AVAILABLE = (
    platform.machine().lower() in ("x86_64", "amd64")
    and bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
)


class OneDnnLinear(nn.Linear):
    """nn.Linear computed by oneDNN's inner product (inference only: it has no gradient)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            x, self.weight, self.bias, "none", [], ""
        )
        return out


def speed_up(model: nn.Module) -> int:
    """Turn the model's float32 CPU nn.Linear layers into OneDnnLinear, in place; how many."""
    if not AVAILABLE:
        return 0
    swapped = 0
    for module in model.modules():
        if (
            type(module) is nn.Linear
            and module.weight.dtype == torch.float32
            and module.weight.device.type == "cpu"
        ):
            # A class swap keeps the module's parameters (tied ones too), hooks and place.
            module.__class__ = OneDnnLinear
            swapped += 1
    return swapped
