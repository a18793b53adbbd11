"""The faster Oobleck VAE against diffusers' own: the same Snake bit for bit, the same decode and
encode to float rounding, and the loaders use it on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderOobleck
from diffusers.models.autoencoders.autoencoder_oobleck import OobleckResidualUnit, Snake1d

from soundtrack.models import get_generator, oobleck
from soundtrack.models.acestep import AceStepGenerator
from soundtrack.models.stableaudio import StableAudioGenerator


def vae_pair(logscale_snakes: bool = True) -> tuple[AutoencoderOobleck, AutoencoderOobleck]:
    """Two copies of one small VAE, with the checkpoint's kind of weight norm and Snake factors
    away from 1; the second sped up after its weights were loaded, as a loader does."""
    config = dict(
        encoder_hidden_size=16,
        downsampling_ratios=[2, 4],
        channel_multiples=[1, 2],
        decoder_channels=16,
        decoder_input_channels=8,
        audio_channels=2,
        sampling_rate=48000,
    )
    torch.manual_seed(3)
    reference = AutoencoderOobleck(**config).eval()  # type: ignore[no-untyped-call]
    for module in reference.modules():
        if isinstance(module, Snake1d):
            for factor in (module.alpha, module.beta):
                factor.data.normal_(0.0, 0.5)
                if not logscale_snakes:  # a linear factor near 0 would make 1/beta explode
                    factor.data.exp_()
            module.logscale = logscale_snakes
    fast = AutoencoderOobleck(**config).eval()  # type: ignore[no-untyped-call]
    fast.load_state_dict(reference.state_dict())
    for module in fast.modules():
        if isinstance(module, Snake1d):
            module.logscale = logscale_snakes
    oobleck.speed_up(fast)
    return reference, fast


@pytest.mark.parametrize("logscale", [True, False])
def test_snake_is_diffusers_snake_bit_for_bit(logscale: bool) -> None:
    snake = Snake1d(32, logscale=logscale)
    torch.manual_seed(0)
    snake.alpha.data.normal_(0.0, 0.5)
    snake.beta.data.normal_(0.0, 0.5)
    x = torch.randn(3, 32, 5000) * 4
    with torch.inference_mode():
        expected = snake(x)
        fast = oobleck.FastSnake(snake)
        assert torch.equal(fast(x), expected)
        assert torch.equal(fast.inplace(x.clone()), expected)


@pytest.mark.parametrize("logscale", [True, False])
def test_decode_and_encode_match_diffusers_to_float_rounding(logscale: bool) -> None:
    reference, fast = vae_pair(logscale)
    assert not any(isinstance(m, (OobleckResidualUnit, Snake1d)) for m in fast.modules())
    torch.manual_seed(1)
    latents = torch.randn(2, 8, 40)
    audio = torch.randn(2, 2, 1600)
    with torch.inference_mode():
        expected = reference.decode(latents).sample
        decoded = fast.decode(latents).sample
        scale = float(expected.abs().max())
        assert scale > 1e-3  # a silent decode would match anything
        assert decoded.shape == expected.shape
        assert float((decoded - expected).abs().max()) < 1e-5 * max(scale, 1.0)
        mean = reference.encode(audio).latent_dist.mean
        fast_mean = fast.encode(audio).latent_dist.mean
        assert float((fast_mean - mean).abs().max()) < 1e-5 * max(float(mean.abs().max()), 1.0)
        # Each track alone gives what it gives in the batch, to float rounding.
        alone = fast.decode(latents[1:]).sample
        assert float((alone[0] - decoded[1]).abs().max()) < 1e-5 * max(scale, 1.0)


def test_a_stale_weight_norm_weight_is_not_used() -> None:
    """Loading a checkpoint sets weight_g and weight_v; the conv's `weight` stays the random
    initial one until its next forward. The fast unit must use the loaded weights."""
    reference, fast = vae_pair()
    unit = next(m for m in fast.modules() if isinstance(m, oobleck.FastResidualUnit))
    ref_unit = next(m for m in reference.modules() if isinstance(m, OobleckResidualUnit))
    expected = torch._weight_norm(ref_unit.conv2.weight_v, ref_unit.conv2.weight_g, 0)[:, :, 0]
    assert torch.equal(unit.weight, expected)


def test_the_cpu_loaders_decode_with_the_fast_vae(
    tiny_acestep_dir: Path, tiny_stableaudio_dir: Path
) -> None:
    loaders = ((tiny_acestep_dir, AceStepGenerator), (tiny_stableaudio_dir, StableAudioGenerator))
    for directory, kind in loaders:
        generator = get_generator(str(directory), device="cpu")
        assert isinstance(generator, kind)
        vae = generator._pipeline.vae
        assert any(isinstance(m, oobleck.FastResidualUnit) for m in vae.modules())
        assert not any(isinstance(m, (OobleckResidualUnit, Snake1d)) for m in vae.modules())
