"""The Oobleck VAE of ACE-Step 1.5 and Stable Audio Open, faster on the CPU, same arithmetic.

Two things cost diffusers' decoder half its time on the CPU (profiled in docs/benchmarks.md): the
residual units' 1x1 convolutions, which oneDNN runs at a sixth of a plain matrix product's
speed on long audio, and the Snake activation's four temporaries the size of the signal. Here a
1x1 convolution is one matrix product per track (float rounding moves, by about 1e-7), and Snake
runs in place (bit for bit diffusers' result).
"""

from __future__ import annotations

import torch
from diffusers.models.autoencoders.autoencoder_oobleck import OobleckResidualUnit, Snake1d
from torch import nn


class FastSnake(nn.Module):
    """Snake1d, x + sin(alpha * x)^2 / beta, with one temporary instead of four."""

    def __init__(self, snake: Snake1d) -> None:
        super().__init__()
        self.alpha = snake.alpha
        self.beta = snake.beta
        self.logscale = bool(snake.logscale)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha and 1 / beta as diffusers computes them (the same epsilon)."""
        alpha = torch.exp(self.alpha) if self.logscale else self.alpha
        beta = torch.exp(self.beta) if self.logscale else self.beta
        return alpha, (beta + 1e-9).reciprocal()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, inverse_beta = self.factors()
        return torch.mul(x, alpha).sin_().square_().mul_(inverse_beta).add_(x)

    def inplace(self, x: torch.Tensor) -> torch.Tensor:
        """The same on a tensor nothing else reads."""
        alpha, inverse_beta = self.factors()
        return x.add_(torch.mul(x, alpha).sin_().square_().mul_(inverse_beta))


class FastResidualUnit(nn.Module):
    """OobleckResidualUnit: snake, dilated conv, snake, 1x1 conv, plus the input."""

    def __init__(self, unit: OobleckResidualUnit) -> None:
        super().__init__()
        self.snake1 = FastSnake(unit.snake1)
        self.conv1 = unit.conv1
        self.snake2 = FastSnake(unit.snake2)
        pointwise = unit.conv2
        self.weight = nn.Parameter(_plain_weight(pointwise)[:, :, 0], requires_grad=False)
        self.bias = pointwise.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.snake2.inplace(self.conv1(self.snake1(x)))
        crop = (x.shape[-1] - hidden.shape[-1]) // 2
        if crop > 0:
            x = x[..., crop:-crop]
        out = torch.empty_like(hidden)  # inference only: addmm's out= refuses autograd
        for track in range(hidden.shape[0]):  # one product per track: never batch-dependent
            torch.addmm(x[track], self.weight, hidden[track], out=out[track])
        if self.bias is not None:
            out.add_(self.bias[:, None])
        return out


def speed_up(vae: nn.Module) -> None:
    """Swap the VAE's residual units and Snake activations for the faster ones, in place."""
    for name, module in list(vae.named_modules()):
        if isinstance(module, OobleckResidualUnit):
            _replace(vae, name, FastResidualUnit(module))
    for name, module in list(vae.named_modules()):
        if isinstance(module, Snake1d):
            _replace(vae, name, FastSnake(module))


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent), child, module)


def _plain_weight(conv: nn.Conv1d) -> torch.Tensor:
    """A convolution's effective weight. torch's old weight_norm, which diffusers uses, refreshes
    `weight` only in a forward hook: after loading a checkpoint it is stale until removed."""
    if hasattr(conv, "weight_g"):
        torch.nn.utils.remove_weight_norm(conv)
    return conv.weight.detach()
