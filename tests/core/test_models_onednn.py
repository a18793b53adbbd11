"""Linear layers through oneDNN on the CPU: the products of nn.Linear to float rounding (against
float64), and every CPU loader uses them for all its float32 linear layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from soundtrack.models import get_generator, onednn
from soundtrack.models.device import pipeline_modules

pytestmark = pytest.mark.skipif(not onednn.AVAILABLE, reason="no oneDNN on this machine")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "shape", [(48,), (0, 48), (1, 48), (2, 48), (125, 48), (2, 7, 48), (2, 3, 5, 48)]
)
def test_onednn_linear_is_the_float64_product_to_float32_rounding(
    shape: tuple[int, ...], bias: bool
) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(48, 96, bias=bias).eval()
    wide = torch.randn(*shape[:-1], 96) * 3
    for x in (wide[..., :48].contiguous(), wide[..., ::2]):  # and a non-contiguous input
        with torch.inference_mode():
            plain = layer(x)
            onednn.speed_up(layer)
            fast = layer(x)
            layer.__class__ = nn.Linear
        expected = torch.nn.functional.linear(
            x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double()
        )
        assert fast.shape == plain.shape == (*shape[:-1], 96)
        assert fast.dtype == torch.float32
        if fast.numel():
            scale = float(expected.abs().max())
            assert float((fast.double() - expected).abs().max()) < 1e-5 * scale
            assert float((fast - plain).abs().max()) < 1e-5 * scale


def test_the_swap_keeps_parameters_ties_and_leaves_other_layers_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 8))
    model[3].weight = model[0].weight  # tied, as a language model's head and its embedding
    model[2].to(torch.bfloat16)  # not float32: left as it is
    keys = list(model.state_dict())
    parameters = [id(p) for p in model.parameters()]
    assert onednn.speed_up(model) == 2
    assert [type(m).__name__ for m in model] == ["OneDnnLinear", "ReLU", "Linear", "OneDnnLinear"]
    assert list(model.state_dict()) == keys
    assert [id(p) for p in model.parameters()] == parameters
    assert model[3].weight is model[0].weight


def test_every_cpu_loader_runs_its_float32_linears_through_onednn(
    tiny_model_dir: Path, tiny_acestep_dir: Path, tiny_stableaudio_dir: Path, tiny_bark_dir: Path
) -> None:
    for directory in (tiny_model_dir, tiny_acestep_dir, tiny_stableaudio_dir, tiny_bark_dir):
        generator = get_generator(str(directory), device="cpu")
        model = getattr(generator, "_model", None) or generator._pipeline  # type: ignore[attr-defined]
        modules = [model] if isinstance(model, nn.Module) else pipeline_modules(model)
        layers = [m for root in modules for m in root.modules() if isinstance(m, nn.Linear)]
        assert layers, directory
        plain = [m for m in layers if type(m) is not onednn.OneDnnLinear]
        assert not plain, f"{directory.name}: {len(plain)} of {len(layers)} linear layers left"
