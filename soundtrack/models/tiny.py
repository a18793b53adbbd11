"""A tiny random-weight MusicGen (noise, not music) for smoke tests without downloading weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    EncodecConfig,
    EncodecFeatureExtractor,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenProcessor,
    T5Config,
    T5Tokenizer,
)

TINY_LICENSE = "soundtrack-tiny-random-weights"  # the model card's license_name; noise, not music

# Words a composer's prompts use, so the trained vocabulary splits real prompts into many pieces.
_CORPUS = (
    "synthwave in D minor at 90 BPM with warm analog pads and a driving bassline",
    "orchestral battle theme, brass, strings, taiko drums, heroic, 140 bpm",
    "calm piano loop for a menu screen, soft, gentle, C major",
    "lofi hip hop beat with vinyl crackle, jazzy chords, relaxed",
    "ambient drone for a cave level, dark, reverb, slow evolving textures",
    "chiptune boss fight, fast arpeggios, square waves, 8-bit",
    "acoustic guitar folk tune, village theme, flute melody, happy",
    "tense stealth music, pulsing synth, low strings, suspense",
)
_CODEBOOK_SIZE = 128  # codec codes, decoder vocabulary; the pad/start token is one past it
_ALPHABET = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,.-'")


def offline_tokenizer() -> T5Tokenizer:
    """A small T5 (Unigram) tokenizer trained on the spot from music prompts: no download."""
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=256,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",  # noqa: S106 (a token, not a password)
        initial_alphabet=_ALPHABET,
        show_progress=False,
    )
    unigram.train_from_iterator(_CORPUS, trainer)
    vocab = [(piece, score) for piece, score in json.loads(unigram.to_str())["model"]["vocab"]]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _config(text_vocab_size: int, channels: int) -> MusicgenConfig:
    # Sizes from transformers' own MusicGen tests, except two that audio prompts (long form) need:
    # the decoder's vocabulary is the codec's codebook (their 99 vs 128 sends codes out of range),
    # and 4 codebooks of 7 bits at 50 Hz are 1.4 kbps (at 2.2 EnCodec would encode 6 codebooks).
    text_encoder = T5Config(
        vocab_size=text_vocab_size, d_model=16, d_ff=4, num_layers=2, num_heads=4, d_kv=4
    )
    audio_encoder = EncodecConfig(
        hidden_size=99,
        compress=1,
        num_filters=4,
        codebook_size=_CODEBOOK_SIZE,
        codebook_dim=99,
        sampling_rate=32000,
        upsampling_ratios=[8, 5, 4, 4],
        target_bandwidths=[1.4],
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=_CODEBOOK_SIZE,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=4,
        pad_token_id=_CODEBOOK_SIZE,
        bos_token_id=_CODEBOOK_SIZE,
        num_codebooks=4 * channels,  # stereo checkpoints interleave left/right codebooks
        audio_channels=channels,
    )
    return MusicgenConfig(text_encoder=text_encoder, audio_encoder=audio_encoder, decoder=decoder)


def randomise_codebooks(model: MusicgenForConditionalGeneration) -> None:
    """EnCodec's codebooks start at zero, so every code would decode to the same waveform."""
    quantizer: Any = model.audio_encoder.quantizer
    with torch.no_grad():
        for layer in quantizer.layers:
            layer.codebook.embed.normal_()


def make_tiny(directory: Path, *, stereo: bool = False, seed: int = 0) -> Path:
    """Write a tiny random-weight MusicGen (mono, or stereo) with its processor into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = offline_tokenizer()
    torch.manual_seed(seed)
    model = MusicgenForConditionalGeneration(_config(len(tokenizer), 2 if stereo else 1))
    randomise_codebooks(model)
    model.generation_config.decoder_start_token_id = _CODEBOOK_SIZE
    model.generation_config.pad_token_id = _CODEBOOK_SIZE
    model.generation_config.bos_token_id = _CODEBOOK_SIZE
    model.save_pretrained(directory)
    feature_extractor = EncodecFeatureExtractor(
        feature_size=2 if stereo else 1, sampling_rate=32000
    )
    processor = MusicgenProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)  # type: ignore[no-untyped-call]
    processor.save_pretrained(directory)
    (directory / "README.md").write_text(
        f"---\nlicense: other\nlicense_name: {TINY_LICENSE}\n---\n"
        "# Tiny random-weight MusicGen\n\n"
        "Written by `soundtrack models make-tiny` for smoke tests without downloading weights. "
        "Its output is noise (mostly a DC offset), not music.\n"
    )
    return directory
