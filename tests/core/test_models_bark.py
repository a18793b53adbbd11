"""The Bark backend on a tiny random-weight BarkModel: one track per call, seeded per track."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch

from soundtrack import models
from soundtrack.build import Options, ThreadExecutor, build
from soundtrack.errors import GenerationError, InputError
from soundtrack.models import GeneratedAudio, GenerationRequest, check_model, get_generator
from soundtrack.models.bark import BarkGenerator, bark_text, load_bark
from soundtrack.models.source import resolve_source
from soundtrack.spec import Sampling
from tests.reference import ebur128

PIANO = "calm piano loop for a menu screen"
SYNTH = "synthwave in D minor with warm analog pads and a driving bassline"


def req(track_id: str, prompt: str = PIANO, seconds: float = 1.0, seed: int = 1, **kw: Any) -> Any:
    return GenerationRequest(track_id, prompt, seconds, seed, Sampling(), **kw)


def audio_of(result: GeneratedAudio | GenerationError) -> np.ndarray:
    assert isinstance(result, GeneratedAudio), result
    return result.audio


@pytest.fixture
def generator(tiny_bark_dir: Path) -> BarkGenerator:
    loaded = get_generator(str(tiny_bark_dir), device="cpu")
    assert isinstance(loaded, BarkGenerator)
    return loaded


def test_the_tiny_model_is_a_bark_model_with_its_licence(tiny_bark_dir: Path) -> None:
    assert check_model(str(tiny_bark_dir)) == "bark"
    assert (tiny_bark_dir / "model.safetensors").exists()
    assert not list(tiny_bark_dir.glob("*.bin"))
    loaded = get_generator(str(tiny_bark_dir), device="cpu")
    assert loaded.license == "soundtrack-tiny-random-weights"
    assert (loaded.sample_rate, loaded.channels) == (24000, 1)


def test_weights_load_from_safetensors_only(tiny_bark_dir: Path, tmp_path: Path) -> None:
    import shutil

    from soundtrack.errors import ModelLoadError

    folder = shutil.copytree(tiny_bark_dir, tmp_path / "bark")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"holds no weights as safetensors \(only pytorch"):
        get_generator(str(folder), device="cpu")


def test_a_track_comes_out_at_24khz_mono_cut_to_its_length(generator: BarkGenerator) -> None:
    steps: list[tuple[int, int]] = []
    results = generator.generate(
        [req("a", seconds=1.0), req("b", seconds=0.37)], progress=lambda *s: steps.append(s)
    )
    for result, frames in zip(results, (24000, round(0.37 * 24000)), strict=True):
        audio = audio_of(result)
        assert audio.dtype == np.float32 and audio.shape == (1, frames)
        assert isinstance(result, GeneratedAudio) and result.sample_rate == 24000
    assert steps == [(1, 2), (2, 2)]


def test_a_render_that_ends_early_comes_back_as_it_is(
    tiny_bark_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bark = fresh(tiny_bark_dir)
    short = torch.full((1, 6000), 0.25)  # Bark stopped after a quarter of a second
    monkeypatch.setattr(bark._model, "generate", lambda **_: short)
    (result,) = bark.generate([req("a", seconds=1.0)])
    assert audio_of(result).shape == (1, 6000)


def test_the_seed_decides_the_audio(generator: BarkGenerator) -> None:
    one, again, other = generator.generate([req("a"), req("b"), req("c", seed=2)])
    assert np.array_equal(audio_of(one), audio_of(again))
    assert not np.array_equal(audio_of(one), audio_of(other))
    # The global generator is Bark's: other torch users between calls change nothing.
    torch.rand(100)
    (later,) = generator.generate([req("a")])
    assert np.array_equal(audio_of(one), audio_of(later))


def test_the_prompt_is_spoken_and_lyrics_are_sung_instead(generator: BarkGenerator) -> None:
    assert bark_text(req("a", lyrics="we sail at dawn")) == "♪ we sail at dawn ♪"
    assert bark_text(req("a")) == PIANO
    piano, synth, sung = generator.generate(
        [req("a"), req("b", SYNTH), req("c", lyrics="la da night sky")]
    )
    assert not np.array_equal(audio_of(piano), audio_of(synth))
    assert not np.array_equal(audio_of(piano), audio_of(sung)), "the lyrics reach the model"


def test_requests_beyond_barks_limits_are_refused_before_any_work(
    generator: BarkGenerator,
) -> None:
    with pytest.raises(InputError, match=r"track 'long': duration_s must be <= 14 s for Bark"):
        generator.generate([req("ok"), req("long", seconds=20.0)])
    with pytest.raises(InputError, match="batch_size must be >= 1, got 0"):
        generator.generate([req("ok")], batch_size=0)


def test_a_text_too_long_for_bark_fails_its_track_and_the_rest_renders(
    generator: BarkGenerator,
) -> None:
    """Only the tokenizer knows a text's length in tokens: the track fails with the reason,
    and the batch's other tracks still render."""
    words, prompt, ok = generator.generate(
        [req("words", lyrics=" ".join(["la"] * 70)), req("prompt", "piano " * 80), req("ok")]
    )
    assert isinstance(words, GenerationError) and words.track_id == "words"
    assert re.fullmatch(r"its lyrics must be <= 64 tokens for Bark .*, got \d+", words.reason)
    assert isinstance(prompt, GenerationError) and "its prompt must be <= 64 tokens" in str(prompt)
    assert isinstance(ok, GeneratedAudio)


def fresh(model_dir: Path) -> BarkGenerator:
    """A generator of its own (not the process's cached one), to be damaged by a test."""
    return load_bark(resolve_source(str(model_dir), None), "cpu")


@pytest.mark.parametrize(
    ("fill", "reason"),
    [
        (lambda x: torch.full_like(x, float("nan")), "NaN/inf samples"),
        (torch.zeros_like, "all zeros"),
    ],
    ids=["nan", "silent"],
)
def test_nan_or_silent_output_is_that_tracks_generation_error(
    tiny_bark_dir: Path, fill: Callable[[torch.Tensor], torch.Tensor], reason: str
) -> None:
    bark = fresh(tiny_bark_dir)
    bark._model.codec_model.decoder.register_forward_hook(lambda _m, _a, out: fill(out))
    (bad,) = bark.generate([req("bad")])
    assert isinstance(bad, GenerationError) and bad.track_id == "bad" and reason in bad.reason


@pytest.mark.parametrize("stage", ["semantic", "coarse_acoustics"])
def test_nan_logits_in_any_stage_fail_that_track_and_the_rest_renders(
    tiny_bark_dir: Path, stage: str
) -> None:
    """NaN logits make a sampling stage refuse its probabilities: a generation error naming
    the track, never a crash of the batch. (The fine stage's argmax, at its temperature 1,
    reads NaN as a token; the codec's output is then judged as any render.)"""
    bark = fresh(tiny_bark_dir)
    model = getattr(bark._model, stage)
    heads = list(model.lm_heads) if stage == "fine_acoustics" else [model.lm_head]
    nan = [
        h.register_forward_hook(lambda _m, _a, out: torch.full_like(out, float("nan")))
        for h in heads
    ]
    (bad,) = bark.generate([req("bad")])
    assert isinstance(bad, GenerationError) and bad.track_id == "bad", bad
    assert "NaN/inf logits" in bad.reason
    for handle in nan:
        handle.remove()
    (good,) = bark.generate([req("good")])
    assert not isinstance(good, GenerationError), good


MANIFEST = """\
schema: 1
soundtrack: bark
storage: ./out
defaults:
  loudness: console
tracks:
  - id: line
    prompt: calm piano loop
    lyrics: la da night sky
    duration: 2
    seed: 1
    gates:
      duration_tolerance_s: 2.0
"""


def test_a_build_on_the_tiny_bark_model_approves_a_sung_line(
    tiny_bark_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bark has no length control: a render can end before the track's length, so a Bark track
    # sets its duration gate's tolerance (here the whole track; the tiny model runs to length).
    (tmp_path / "m.yaml").write_text(MANIFEST)
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SOUNDTRACK_STORAGE", raising=False)
    models._loaded.clear()
    result = build(
        tmp_path / "m.yaml", Options(model=str(tiny_bark_dir)), executor=ThreadExecutor()
    )
    assert result.exit_status == 0, result.failure
    assert {t.id: t.status for t in result.report.tracks} == {"line": "approved"}
    out = tmp_path / "out" / "bark"
    for suffix in ("ogg", "mp3"):
        path = out / f"line.{suffix}"
        info = sf.info(str(path))
        assert info.samplerate == 44100
        assert abs(info.frames / 44100 - 2.0) <= 0.05, (path.name, info.frames)
        lufs, true_peak = ebur128(path)
        assert abs(lufs - -24.0) <= 0.5, (path.name, lufs)
        assert true_peak <= -1.0, (path.name, true_peak)
    lock = json.loads((out / "soundtrack.lock.json").read_text())
    assert {t["id"] for t in lock["tracks"]} == {"line"}


def test_make_tiny_writes_a_bark_model(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from soundtrack.cli import app

    result = CliRunner().invoke(
        app, ["models", "make-tiny", str(tmp_path / "b"), "--family", "bark"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote a tiny random-weight Bark" in result.output
    files = {p.name for p in (tmp_path / "b").iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "vocab.txt"} <= files
    card = (tmp_path / "b" / "README.md").read_text()
    assert "license: other" in card and "license_name: soundtrack-tiny-random-weights" in card
    assert json.loads((tmp_path / "b" / "config.json").read_text())["model_type"] == "bark"
    refused = CliRunner().invoke(
        app, ["models", "make-tiny", str(tmp_path / "s"), "--family", "bark", "--stereo"]
    )
    assert refused.exit_code == 2 and "Bark is mono" in refused.output


@pytest.mark.parametrize("module", ["soundtrack.models.bark", "soundtrack.models.tiny_bark"])
def test_bark_imports_without_asking_the_hub_for_kernels(module: str) -> None:
    """Importing transformers' Bark asked huggingface.co for compiled flash-attention kernels
    (to download and load them), even for a model on disk."""
    code = f"""
import socket
looked_up = []
def refuse(host, *args, **kwargs):
    looked_up.append(host)
    raise socket.gaierror("no network in this test")
socket.getaddrinfo = refuse
import {module}
import transformers.models.bark.modeling_bark
print(looked_up)
"""
    offline = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # as on a machine with a network
    env = {k: v for k, v in os.environ.items() if k not in offline}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
