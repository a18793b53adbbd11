"""Failure is loud: NaN, silence and unloadable models raise errors that name what is wrong."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import MusicgenForConditionalGeneration, MusicgenProcessor

from soundtrack.errors import GenerationError, InputError
from soundtrack.models import (
    GeneratedAudio,
    GenerationRequest,
    check_audio,
    generate_one,
    get_generator,
)
from soundtrack.models.musicgen import MusicgenGenerator
from soundtrack.spec import Sampling


def req(track_id: str, prompt: str = "calm piano loop", seconds: float = 1.0) -> GenerationRequest:
    return GenerationRequest(track_id, prompt, seconds, 1, Sampling())


def broken_generator(
    model_dir: Path, damage: Callable[[Any, MusicgenProcessor], None]
) -> MusicgenGenerator:
    """The tiny model with real damage done to its weights (no mocks: the real code path runs)."""
    model: Any = MusicgenForConditionalGeneration.from_pretrained(model_dir)
    processor = MusicgenProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        damage(model, processor)
    return MusicgenGenerator(
        model, processor, model_id="damaged", revision="r", license="l", device="cpu"
    )


def codec_output(fill: float) -> Callable[[Any, MusicgenProcessor], None]:
    def damage(model: Any, processor: MusicgenProcessor) -> None:
        last = model.audio_encoder.decoder.layers[-1].conv
        with torch.no_grad():
            last.parametrizations.weight.original0.fill_(fill)  # weight-norm gain
            last.bias.fill_(fill)

    return damage


# --- check_audio on synthetic signals ---


def test_check_audio_accepts_a_quiet_but_audible_signal() -> None:
    tone = 10 ** (-50 / 20) * np.sin(np.linspace(0, 200, 32000, dtype=np.float32))[None, :]
    check_audio("quiet", tone)


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.array([[0.1, np.nan, 0.2]], np.float32), "1 NaN/inf samples"),
        (np.array([[0.1, np.inf, -np.inf]], np.float32), "2 NaN/inf samples"),
        (np.zeros((2, 32000), np.float32), "all zeros"),
        (np.full((1, 32000), 10 ** (-70 / 20), np.float32), "near-silent: peak -70.0 dBFS"),
        (np.zeros((1, 0), np.float32), "empty"),
    ],
)
def test_check_audio_rejects_nan_inf_and_silence(audio: np.ndarray, message: str) -> None:
    with pytest.raises(GenerationError, match=message) as caught:
        check_audio("boss-fight", audio)
    assert caught.value.track_id == "boss-fight" and "boss-fight" in str(caught.value)


@pytest.mark.parametrize("rendered", [31999, 32000, 32001])
def test_a_render_is_cut_to_its_frames_or_is_too_short_to_be(rendered: int) -> None:
    """A pipeline that rendered a frame short would otherwise ship a track a frame short."""
    from types import SimpleNamespace

    from soundtrack.models.base import cut_render

    model = SimpleNamespace(sample_rate=32000, model_id="m", revision="r", license="MIT")
    render = np.sin(np.arange(rendered, dtype=np.float32))[None, :]
    result = cut_render("boss-fight", render, 32000, model)  # type: ignore[arg-type]
    if rendered < 32000:
        assert isinstance(result, GenerationError)
        assert str(result) == "track 'boss-fight': the pipeline rendered 31999 frames, 32000 needed"
    else:
        assert isinstance(result, GeneratedAudio) and result.audio.shape == (1, 32000)


# --- generation with damaged weights ---


def test_nan_from_the_codec_fails_every_track_by_name(tiny_model_dir: Path) -> None:
    generator = broken_generator(tiny_model_dir, codec_output(float("nan")))
    results = generator.generate([req("title"), req("credits", seconds=2.0)])
    assert [type(r) for r in results] == [GenerationError, GenerationError]
    assert [r.track_id for r in results] == ["title", "credits"]
    assert "NaN/inf samples" in str(results[0])
    with pytest.raises(GenerationError, match="track 'title': the render contains"):
        generate_one(req("title"), generator)


def test_an_all_zero_render_raises_instead_of_passing_as_silence(tiny_model_dir: Path) -> None:
    generator = broken_generator(tiny_model_dir, codec_output(0.0))
    with pytest.raises(GenerationError, match="track 'menu': the render is all zeros"):
        generate_one(req("menu"), generator)


def test_a_nan_track_fails_alone_and_the_rest_of_the_batch_survives(tiny_model_dir: Path) -> None:
    poisoned_prompt, clean_prompt = "xylophone zebra", "calm piano loop"

    def poison_a_word(model: Any, processor: MusicgenProcessor) -> None:
        poisoned = set(processor.tokenizer(poisoned_prompt).input_ids)
        clean = set(processor.tokenizer(clean_prompt).input_ids)
        token = min(poisoned - clean)
        model.text_encoder.shared.weight[token] = float("nan")

    generator = broken_generator(tiny_model_dir, poison_a_word)
    bad, good = generator.generate([req("bad", poisoned_prompt), req("good", clean_prompt)])
    assert isinstance(bad, GenerationError) and bad.track_id == "bad"
    assert "NaN/inf logits" in bad.reason
    assert isinstance(good, GeneratedAudio) and np.all(np.isfinite(good.audio))
    check_audio("good", good.audio)


def test_bad_requests_are_input_errors_naming_the_track(tiny_model_dir: Path) -> None:
    generator = get_generator(str(tiny_model_dir), device="cpu")
    cases = [
        (GenerationRequest("t", "  ", 1.0, 1, Sampling()), "prompt is empty"),
        (GenerationRequest("t", "p", 0.0, 1, Sampling()), "duration_s must be > 0, got 0.0"),
        (GenerationRequest("t", "p", 40.0, 1, Sampling(), overlap_s=30.0), "overlap_s must be"),
        (GenerationRequest("t", "p", 1.0, 1, Sampling(temperature=0.0)), "temperature must be"),
        (GenerationRequest("t", "p", 1.0, 1, Sampling(top_p=1.5)), "top_p must be within"),
    ]
    for request, message in cases:
        with pytest.raises(InputError, match=f"track 't': .*{message}"):
            generator.generate([request])
    with pytest.raises(InputError, match="batch_size must be >= 1"):
        generator.generate([req("t")], batch_size=0)
