"""A tiny random-weight Stable Audio Open pipeline (noise, not music) in the real on-disk layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderOobleck,
    EDMDPMSolverMultistepScheduler,
    StableAudioDiTModel,
    StableAudioPipeline,
    StableAudioProjectionModel,
)
from transformers import T5Config, T5EncoderModel

from soundtrack.models.tiny import TINY_LICENSE, offline_tokenizer

SAMPLE_RATE = 44100
# The VAE's hop, as in stabilityai/stable-audio-open-1.0: 2048 samples per latent frame; 1024
# latent frames are its longest render, 47.55 s.
DOWNSAMPLING_RATIOS = [2, 4, 4, 8, 8]
LATENT_FRAMES = 1024
LATENT_DIM = 4  # latent channels (64 in the real checkpoint)
MAX_PROMPT_TOKENS = 128  # T5's padded prompt length, as in the real checkpoint


def make_tiny_stableaudio(directory: Path, *, seed: int = 0) -> Path:
    """Write a tiny random-weight StableAudioPipeline (well under 1 MB) with its tokenizer into
    `directory`: model_index.json and one folder per component, weights as safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = offline_tokenizer()  # T5's, trained on the spot: no download
    tokenizer.model_max_length = MAX_PROMPT_TOKENS
    torch.manual_seed(seed)
    # Sizes after diffusers' own fast tests (tests/pipelines/stable_audio), with the real
    # checkpoint's sample rate, hop and latent length so that renders are 44.1 kHz up to 47 s.
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=16,
            d_ff=32,
            num_layers=2,
            num_heads=4,
            d_kv=4,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    projection_model = StableAudioProjectionModel(  # type: ignore[no-untyped-call]
        text_encoder_dim=16, conditioning_dim=4, min_value=0, max_value=512
    )
    transformer = StableAudioDiTModel(  # type: ignore[no-untyped-call]
        sample_size=LATENT_FRAMES,
        in_channels=LATENT_DIM,
        num_layers=2,
        attention_head_dim=4,
        num_attention_heads=2,
        num_key_value_attention_heads=2,
        out_channels=LATENT_DIM,
        cross_attention_dim=4,
        time_proj_dim=8,
        global_states_input_dim=8,  # start and end seconds, conditioning_dim each
        cross_attention_input_dim=4,
    )
    vae = AutoencoderOobleck(  # type: ignore[no-untyped-call]
        encoder_hidden_size=2,
        downsampling_ratios=DOWNSAMPLING_RATIOS,
        channel_multiples=[1, 1, 1, 1, 1],
        decoder_channels=2,
        decoder_input_channels=LATENT_DIM,
        audio_channels=2,
        sampling_rate=SAMPLE_RATE,
    )
    # The real checkpoint's CosineDPMSolverMultistepScheduler needs torchsde, which this
    # environment lacks; EDM's DPM-Solver (the pipeline's declared type) takes its settings.
    scheduler = EDMDPMSolverMultistepScheduler(  # type: ignore[no-untyped-call]
        sigma_min=0.3,
        sigma_max=500,
        sigma_data=1.0,
        solver_order=2,
        prediction_type="v_prediction",
        sigma_schedule="exponential",
    )
    pipeline: Any = StableAudioPipeline(  # type: ignore[no-untyped-call]
        vae=vae,
        text_encoder=text_encoder,
        projection_model=projection_model,
        tokenizer=tokenizer,
        transformer=transformer,
        scheduler=scheduler,
    )
    pipeline.save_pretrained(directory, safe_serialization=True)
    (directory / "README.md").write_text(
        f"---\nlicense: other\nlicense_name: {TINY_LICENSE}\n---\n"
        "# Tiny random-weight Stable Audio Open\n\n"
        "Written by `soundtrack models make-tiny --family stable-audio` for smoke tests without "
        "downloading weights. Its output is noise, not music.\n"
    )
    return directory
