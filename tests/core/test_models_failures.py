"""Failure is loud: NaN, silence and unloadable models raise errors that name what is wrong."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import MusicgenForConditionalGeneration, MusicgenProcessor

from soundtrack.errors import GenerationError, InputError, ModelLoadError
from soundtrack.models import (
    GeneratedAudio,
    GenerationRequest,
    check_audio,
    generate_one,
    get_generator,
    load_count,
)
from soundtrack.models.musicgen import MusicgenGenerator
from soundtrack.models.source import read_license
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


# --- loading ---


def test_an_unknown_model_id_fails_fast_naming_it_and_how_to_provide_it() -> None:
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        get_generator("soundtrack-tests/no-such-model", device="cpu")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "soundtrack-tests/no-such-model" in message
    assert "HF_HOME" in message and "local directory" in message


def test_a_missing_or_foreign_directory_fails_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such directory"):
        get_generator(str(tmp_path / "missing"), device="cpu")
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        get_generator(str(tmp_path), device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bark"}))
    with pytest.raises(ModelLoadError, match="model_type 'bark' has no backend"):
        get_generator(str(tmp_path), device="cpu")


def test_a_local_directory_pinned_to_another_revision_is_refused(tiny_model_dir: Path) -> None:
    revision = get_generator(str(tiny_model_dir), device="cpu").revision
    assert get_generator(str(tiny_model_dir), revision=revision, device="cpu").revision == revision
    with pytest.raises(ModelLoadError, match="the directory changed since the pin"):
        get_generator(str(tiny_model_dir), revision="sha256:" + "0" * 64, device="cpu")


def test_an_unknown_device_is_bad_input(tiny_model_dir: Path) -> None:
    with pytest.raises(InputError, match="device must be auto, cpu, mps, cuda or cuda:N"):
        get_generator(str(tiny_model_dir), device="tpu")


def test_the_model_is_loaded_once_per_process_even_from_many_threads(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    before = load_count()
    got: list[object] = []
    threads = [
        threading.Thread(target=lambda: got.append(get_generator(str(copy), device="cpu")))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other_spelling = get_generator(f"{copy}/../copy/", device="cpu")
    assert load_count() == before + 1
    assert all(g is got[0] for g in [*got, other_spelling]) and len(got) == 4
    # The copy has the same files, so the same fingerprint as the original.
    assert got[0].revision == get_generator(str(tiny_model_dir), device="cpu").revision  # type: ignore[attr-defined]


def test_licence_comes_from_the_model_card_or_a_known_default(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n# card\n")
    assert read_license(tmp_path, "someone/model") == "CC-BY-NC-4.0"
    (tmp_path / "README.md").write_text("# a card without front matter\n")
    assert read_license(tmp_path, "facebook/musicgen-stereo-small") == "CC-BY-NC-4.0"
    assert read_license(tmp_path, "someone/model") == "unknown"


def test_half_precision_keeps_the_codec_in_float32(tiny_model_dir: Path) -> None:
    from soundtrack.models.musicgen import load_musicgen
    from soundtrack.models.source import resolve_source

    generator = load_musicgen(resolve_source(str(tiny_model_dir), None), "cpu", torch.bfloat16)
    result = generate_one(req("half", seconds=2.0), generator)
    assert result.audio.dtype == np.float32 and result.audio.shape == (1, 64000)
