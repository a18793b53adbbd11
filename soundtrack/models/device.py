"""Which torch device and dtype generation runs on, and how many CPU threads it uses.

torch is imported where it is used: a build checks the device's name before anything loads."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from soundtrack.errors import InputError, ModelLoadError

if TYPE_CHECKING:
    import torch

DEVICE_ENV = "SOUNDTRACK_DEVICE"
SMALL_MODEL_PARAMETERS = 50_000_000  # below this, extra threads only add synchronisation


def requested_device(device: str | None) -> str:
    """The device asked for: an explicit one, else $SOUNDTRACK_DEVICE, else auto; InputError
    for a name that is none (checked without importing torch)."""
    if device is not None and not device.strip():
        raise InputError("device is empty: give auto, cpu, mps, cuda or cuda:N")
    requested = device or os.environ.get(DEVICE_ENV) or "auto"
    if not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", requested):
        raise InputError(
            f"device must be auto, cpu, mps, cuda or cuda:N (argument or ${DEVICE_ENV}), "
            f"got {requested!r}"
        )
    return requested


def resolve_device(device: str | None) -> str:
    """An explicit device, else $SOUNDTRACK_DEVICE, else cuda, then mps, then cpu."""
    import torch

    requested = requested_device(device)
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind = requested.split(":", 1)[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} requested but torch sees no CUDA device")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {requested!r} requested but torch sees no MPS device")
    return requested


def model_dtype(device: str) -> torch.dtype:
    """Half precision on accelerators (bf16 where supported), float32 on the CPU."""
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def pipeline_modules(pipeline: Any) -> list[torch.nn.Module]:
    """A diffusers pipeline's torch modules (its tokenizers and scheduler are not)."""
    import torch

    return [c for c in pipeline.components.values() if isinstance(c, torch.nn.Module)]


def pipeline_parameters(pipeline: Any) -> int:
    """The parameters of a diffusers pipeline's torch modules, all components together."""
    return sum(int(p.numel()) for m in pipeline_modules(pipeline) for p in m.parameters())


def set_cpu_threads(parameters: int) -> None:
    """One thread for tiny models (per-op overhead dominates), else every core we may run on."""
    import torch

    if parameters < SMALL_MODEL_PARAMETERS:
        threads = 1
    elif hasattr(os, "sched_getaffinity"):
        threads = len(os.sched_getaffinity(0))  # cgroup/affinity aware, unlike os.cpu_count
    else:
        threads = os.cpu_count() or 1
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
