"""A tiny random-weight ACE-Step 1.5 pipeline (noise, not music) in the real on-disk layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AceStepAudioTokenDetokenizer,
    AceStepAudioTokenizer,
    AceStepPipeline,
    AutoencoderOobleck,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
from diffusers.pipelines.ace_step import AceStepConditionEncoder
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

from soundtrack.models.tiny import _CORPUS, TINY_LICENSE

SAMPLE_RATE = 48000
# The VAE's hop: 48 kHz / 1920 = 25 latent frames per second, as in the real checkpoints.
DOWNSAMPLING_RATIOS = [2, 4, 4, 6, 10]
ACOUSTIC_DIM = 8  # latent channels (64 in the real checkpoints)
# The words of ACE-Step's prompt template: prompts, not the template, decide what is unknown.
_TEMPLATE = (
    "# Instruction Fill the audio semantic mask based on the given conditions : Caption Metas"
)
_METAS = "- bpm timesignature keyscale duration seconds N/A major minor Languages en Lyric"


def offline_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over music-prompt words: no download; unknown words share <unk>."""
    words = sorted({w for text in (*_CORPUS, _TEMPLATE, _METAS) for w in _split(text)})
    vocab = {"<pad>": 0, "<unk>": 1, "<|endoftext|>": 2}
    for word in words:
        vocab.setdefault(word, len(vocab))
    word_level = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))  # noqa: S106
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=word_level,
        unk_token="<unk>",  # noqa: S106 (a token, not a password)
        pad_token="<pad>",  # noqa: S106
    )


def _split(text: str) -> list[str]:
    return [word for word, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)]


def make_tiny_acestep(directory: Path, *, seed: int = 0) -> Path:
    """Write a tiny random-weight AceStepPipeline (about 1 MB) with its tokenizer into
    `directory`: model_index.json and one folder per component, weights as safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = offline_tokenizer()
    torch.manual_seed(seed)
    # Sizes from the field notes (diffusers' own fast tests build the same tiny parts).
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=4,
        )
    )
    widths = {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}
    condition_encoder = AceStepConditionEncoder(  # type: ignore[no-untyped-call]
        hidden_size=32,
        intermediate_size=64,
        text_hidden_dim=16,  # the text encoder's hidden size
        timbre_hidden_dim=ACOUSTIC_DIM,
        num_lyric_encoder_hidden_layers=1,
        num_timbre_encoder_hidden_layers=1,
        **widths,
    )
    transformer = AceStepTransformer1DModel(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        in_channels=3 * ACOUSTIC_DIM,  # noise, source latents and chunk mask, concatenated
        audio_acoustic_hidden_dim=ACOUSTIC_DIM,
        patch_size=2,
        is_turbo=True,  # 8 steps, no guidance, like ACE-Step/acestep-v15-turbo-diffusers
        model_version="turbo",
        **widths,
    )
    vae = AutoencoderOobleck(  # type: ignore[no-untyped-call]
        encoder_hidden_size=2 * ACOUSTIC_DIM,  # mean and scale
        downsampling_ratios=DOWNSAMPLING_RATIOS,
        channel_multiples=[1, 1, 1, 1, 1],
        decoder_channels=4,
        decoder_input_channels=ACOUSTIC_DIM,
        audio_channels=2,
        sampling_rate=SAMPLE_RATE,
    )
    # The 5 Hz audio tokens a cover (a variation) is conditioned on, and back to 25 Hz.
    tokens = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "audio_acoustic_hidden_dim": ACOUSTIC_DIM,
        "num_attention_pooler_hidden_layers": 1,
        **widths,
    }
    audio_tokenizer = AceStepAudioTokenizer(fsq_dim=32, **tokens)  # type: ignore[no-untyped-call]
    audio_token_detokenizer = AceStepAudioTokenDetokenizer(**tokens)  # type: ignore[no-untyped-call]
    # ACE-Step computes its own sigmas in [0, 1]; the scheduler takes them as given.
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)  # type: ignore[no-untyped-call]
    pipeline: Any = AceStepPipeline(  # type: ignore[no-untyped-call]
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        condition_encoder=condition_encoder,
        scheduler=scheduler,
        audio_tokenizer=audio_tokenizer,
        audio_token_detokenizer=audio_token_detokenizer,
    )
    pipeline.save_pretrained(directory, safe_serialization=True)
    (directory / "README.md").write_text(
        f"---\nlicense: other\nlicense_name: {TINY_LICENSE}\n---\n"
        "# Tiny random-weight ACE-Step 1.5\n\n"
        "Written by `soundtrack models make-tiny --family ace-step` for smoke tests without "
        "downloading weights. Its output is noise, not music.\n"
    )
    return directory
