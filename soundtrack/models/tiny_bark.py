"""A tiny random-weight Bark (noise, not speech or song) in the real on-disk layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from soundtrack.models import hub_kernels  # noqa: F401  before transformers' Bark, which it guards

# isort: split
from transformers import (
    BarkCoarseConfig,
    BarkConfig,
    BarkFineConfig,
    BarkModel,
    BarkSemanticConfig,
    BertTokenizer,
    EncodecConfig,
)
from transformers.models.bark.generation_configuration_bark import (
    BarkCoarseGenerationConfig,
    BarkFineGenerationConfig,
    BarkGenerationConfig,
    BarkSemanticGenerationConfig,
)

from soundtrack.models.tiny import _CORPUS, TINY_LICENSE

SAMPLE_RATE = 24000
SEMANTIC_VOCAB = 10000  # as in suno/bark: semantic tokens, then its end-of-sequence token
CODEBOOK_SIZE = 16  # EnCodec codes (1024 in suno/bark)
TEXT_OFFSET = SEMANTIC_VOCAB + 48  # where the text tokens start in the semantic model's input
_TEXT_INPUT_S = 64  # tokens of text read (256 in suno/bark)
_LYRICS = "♪ la da oh hey night sky we sing the road home tonight"


def offline_tokenizer(directory: Path) -> BertTokenizer:
    """A word-level BERT tokenizer (Bark's kind) over prompt and lyric words: no download."""
    words = sorted(
        {w for text in (*_CORPUS, _LYRICS) for w in text.lower().replace(",", " ").split()}
    )
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", *words]
    path = directory / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    return BertTokenizer(str(path), do_lower_case=True)


def _generation_config(text_vocab: int) -> BarkGenerationConfig:
    """suno/bark's token layout, scaled to the tiny vocabularies."""
    semantic = BarkSemanticGenerationConfig(  # type: ignore[no-untyped-call]
        eos_token_id=SEMANTIC_VOCAB,
        semantic_vocab_size=SEMANTIC_VOCAB,
        text_encoding_offset=TEXT_OFFSET,
        text_pad_token=TEXT_OFFSET + text_vocab,
        semantic_infer_token=TEXT_OFFSET + text_vocab + 4,
        max_input_semantic_length=_TEXT_INPUT_S,
    )
    coarse = BarkCoarseGenerationConfig(
        coarse_semantic_pad_token=SEMANTIC_VOCAB + 2 * CODEBOOK_SIZE,
        coarse_infer_token=SEMANTIC_VOCAB + 2 * CODEBOOK_SIZE + 2,
        max_coarse_input_length=64,
        max_coarse_history=126,
        sliding_window_len=60,
    )
    fine = BarkFineGenerationConfig(max_fine_history_length=32, max_fine_input_length=64)  # type: ignore[no-untyped-call]
    config: BarkGenerationConfig = BarkGenerationConfig.from_sub_model_configs(
        semantic, coarse, fine, sample_rate=SAMPLE_RATE, codebook_size=CODEBOOK_SIZE
    )
    return config


def _config(text_vocab: int) -> BarkConfig:
    small: dict[str, Any] = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "block_size": 1024}
    coarse_vocab = SEMANTIC_VOCAB + 2 * CODEBOOK_SIZE + 3
    return BarkConfig(
        semantic_config=BarkSemanticConfig(
            input_vocab_size=TEXT_OFFSET + text_vocab + 5, output_vocab_size=TEXT_OFFSET, **small
        ).to_dict(),
        coarse_acoustics_config=BarkCoarseConfig(
            input_vocab_size=coarse_vocab, output_vocab_size=coarse_vocab, **small
        ).to_dict(),
        fine_acoustics_config=BarkFineConfig(
            input_vocab_size=CODEBOOK_SIZE + 1,
            output_vocab_size=CODEBOOK_SIZE,
            n_codes_total=8,
            n_codes_given=1,
            **{**small, "block_size": 64},
        ).to_dict(),
        # 24 kHz at a hop of 320: 75 frames per second, suno/bark's coarse rate.
        codec_config=EncodecConfig(
            codebook_size=CODEBOOK_SIZE,
            hidden_size=8,
            num_filters=4,
            num_residual_layers=1,
            codebook_dim=8,
            upsampling_ratios=[8, 5, 4, 2],
            sampling_rate=SAMPLE_RATE,
        ).to_dict(),
    )


def _wake(model: Any, text_vocab: int) -> None:
    """Weights the input can steer: at transformers' init scale the sampled tokens would
    follow the seed alone, whatever the text; EnCodec's codebooks start at zero."""
    with torch.no_grad():
        for part in (model.semantic, model.coarse_acoustics, model.fine_acoustics):
            for module in part.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.normal_(std=module.in_features**-0.5)
        for part in (model.semantic, model.coarse_acoustics):
            part.input_embeds_layer.weight.normal_()
            part.lm_head.weight.normal_()
        for embedding in model.fine_acoustics.input_embeds_layers:
            embedding.weight.normal_()
        # The end token stays unlikely (a render runs to its length); the "infer" token carries
        # nothing of its own, so what the model reads comes from the text.
        model.semantic.lm_head.weight[SEMANTIC_VOCAB].zero_()
        model.semantic.input_embeds_layer.weight[TEXT_OFFSET + text_vocab + 4].zero_()
        for layer in model.codec_model.quantizer.layers:
            layer.codebook.embed.normal_()


def make_tiny_bark(directory: Path, *, seed: int = 0) -> Path:
    """Write a tiny random-weight BarkModel (about 6 MB) with its tokenizer into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = offline_tokenizer(directory)
    torch.manual_seed(seed)
    model = BarkModel(_config(len(tokenizer)))
    _wake(model, len(tokenizer))
    model.save_pretrained(directory)
    # save_pretrained cannot validate Bark's nested generation config; its JSON is written as is.
    (directory / "generation_config.json").write_text(
        _generation_config(len(tokenizer)).to_json_string(), encoding="utf-8"
    )
    tokenizer.save_pretrained(directory)
    (directory / "README.md").write_text(
        f"---\nlicense: other\nlicense_name: {TINY_LICENSE}\n---\n"
        "# Tiny random-weight Bark\n\n"
        "Written by `soundtrack models make-tiny --family bark` for smoke tests without "
        "downloading weights. Its output is noise, not speech or song.\n"
    )
    return directory
