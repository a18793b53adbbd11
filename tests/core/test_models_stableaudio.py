"""Stable Audio Open on the tiny random-weight pipeline: exact lengths at 44.1 kHz, seeds that
belong to the track, a negative prompt that reaches guidance, loud failures, a build."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from soundtrack import models
from soundtrack.build import Options, ThreadExecutor, build
from soundtrack.cli import app
from soundtrack.errors import GenerationError, InputError
from soundtrack.models import GeneratedAudio, GenerationRequest, get_generator, stableaudio
from soundtrack.models.source import resolve_source
from soundtrack.models.stableaudio import (
    StableAudioGenerator,
    StableAudioSettings,
    load_stableaudio,
)
from soundtrack.spec import Sampling
from tests.reference import ebur128

PIANO = "calm piano loop for a menu screen"
SYNTH = "synthwave in D minor with warm analog pads and a driving bassline"
FEW_STEPS = StableAudioSettings(steps=8)  # the tiny model's noise needs no more


def req(track_id: str, prompt: str = PIANO, seconds: float = 2.0, seed: int = 1, **kw: Any) -> Any:
    return GenerationRequest(track_id, prompt, seconds, seed, Sampling(), **kw)


def audio_of(result: GeneratedAudio | GenerationError) -> np.ndarray:
    assert isinstance(result, GeneratedAudio), result
    return result.audio


@pytest.fixture
def few_steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every Stable Audio generator loaded meanwhile renders in 8 steps (the default is 100)."""
    monkeypatch.setattr(stableaudio, "DEFAULT_SETTINGS", FEW_STEPS)
    models._loaded.clear()
    yield
    models._loaded.clear()


@pytest.fixture
def generator(tiny_stableaudio_dir: Path, few_steps: None) -> StableAudioGenerator:
    loaded = get_generator(str(tiny_stableaudio_dir), device="cpu")
    assert isinstance(loaded, StableAudioGenerator)
    return loaded


def test_tracks_come_out_at_their_exact_length_at_44khz_stereo(
    generator: StableAudioGenerator, tiny_stableaudio_dir: Path
) -> None:
    two, five = generator.generate([req("two", seconds=2.0), req("five", SYNTH, 5.0, seed=2)])
    for result, seconds in ((two, 2.0), (five, 5.0)):
        assert isinstance(result, GeneratedAudio)
        assert result.sample_rate == 44100
        assert result.audio.dtype == np.float32
        assert result.audio.shape == (2, round(seconds * 44100))
        assert np.all(np.isfinite(result.audio)) and np.max(np.abs(result.audio)) > 0.1
        assert result.model_id == str(tiny_stableaudio_dir)
        assert result.revision.startswith("sha256:")
        assert result.license == "soundtrack-tiny-random-weights"


def test_the_seed_and_the_prompt_decide_the_audio(generator: StableAudioGenerator) -> None:
    first = audio_of(generator.generate([req("a", seed=7)])[0])
    again = audio_of(generator.generate([req("a", seed=7)])[0])
    other_seed = audio_of(generator.generate([req("a", seed=8)])[0])
    other_prompt = audio_of(generator.generate([req("a", SYNTH, seed=7)])[0])
    assert np.array_equal(first, again)
    assert np.max(np.abs(first - other_seed)) > 0.005
    assert np.max(np.abs(first - other_prompt)) > 1e-4


def test_a_track_renders_the_same_alone_and_in_a_batch(generator: StableAudioGenerator) -> None:
    alone = audio_of(generator.generate([req("a", seed=3)])[0])
    # Its neighbour has a longer prompt; T5 pads every prompt to the same length.
    batch = generator.generate([req("n", SYNTH, seed=4), req("a", seed=3)])
    # Measured on this CPU: under 1e-6 (float rounding of the batched shapes), not bitwise.
    assert np.max(np.abs(audio_of(batch[1]) - alone)) <= 1e-5


def test_the_negative_prompt_reaches_guidance_and_changes_the_render(
    generator: StableAudioGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    pipeline: Any = generator._pipeline
    encode = pipeline.encode_prompt

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append({"prompt": args[0], "negative_prompt": args[3]})
        return encode(*args, **kwargs)

    monkeypatch.setattr(pipeline, "encode_prompt", recording)
    steered, plain = generator.generate([req("steered", negative_prompt="drums"), req("plain")])
    assert len(calls) == 2, "with and without a negative prompt: separate pipeline calls"
    assert calls[0] == {"prompt": [PIANO], "negative_prompt": ["drums"]}
    assert calls[1] == {"prompt": [PIANO], "negative_prompt": None}
    assert np.max(np.abs(audio_of(steered) - audio_of(plain))) > 1e-4


def test_progress_counts_steps_over_every_call(generator: StableAudioGenerator) -> None:
    seen: list[tuple[int, int]] = []
    generator.generate(
        [req("a", seconds=1.0), req("b", seconds=1.5)],
        progress=lambda done, total: seen.append((done, total)),
    )
    steps = FEW_STEPS.steps
    assert seen == [(i, 2 * steps) for i in range(1, 2 * steps + 1)]


def test_requests_beyond_the_models_limit_are_refused_before_any_work(
    generator: StableAudioGenerator,
) -> None:
    with pytest.raises(InputError, match=r"track 'long': duration_s must be <= 47 s"):
        generator.generate([req("short"), req("long", seconds=48.0)])


def test_a_text_longer_than_t5_reads_fails_its_track_and_the_rest_renders(
    generator: StableAudioGenerator,
) -> None:
    """The pipeline cut a prompt at its T5's length with a warning only (the bpm and key words,
    last, went first): two tracks of prompts differing past the cut rendered bit-identical."""
    words = " ".join(f"w{i}" for i in range(200))
    calm, loud, negative, ok = generator.generate(
        [
            req("calm", f"{words} calm piano"),
            req("loud", f"{words} loud metal drums"),
            req("negative", negative_prompt=words),
            req("ok"),
        ]
    )
    for result, what in ((calm, "prompt"), (loud, "prompt"), (negative, "negative_prompt")):
        assert isinstance(result, GenerationError), result
        assert re.fullmatch(
            rf"its {what} must be <= 128 tokens for Stable Audio, .*, got \d+", result.reason
        )
    assert isinstance(ok, GeneratedAudio)


def damaged(model_dir: Path, fill: Callable[[torch.Tensor], torch.Tensor]) -> StableAudioGenerator:
    """The tiny pipeline whose VAE decoder output for the first track is replaced by `fill`."""
    generator = load_stableaudio(resolve_source(str(model_dir), None), "cpu")

    def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[0] = fill(output[0])
        return output

    pipeline: Any = generator._pipeline
    pipeline.vae.decoder.register_forward_hook(hook)
    return generator


@pytest.mark.parametrize(
    ("fill", "reason"),
    [
        (lambda x: torch.full_like(x, float("nan")), "NaN/inf samples"),
        (torch.zeros_like, "all zeros"),
    ],
    ids=["nan", "silent"],
)
def test_nan_or_silent_output_is_that_tracks_generation_error(
    tiny_stableaudio_dir: Path,
    few_steps: None,
    fill: Callable[[torch.Tensor], torch.Tensor],
    reason: str,
) -> None:
    bad, good = damaged(tiny_stableaudio_dir, fill).generate([req("bad"), req("good", SYNTH)])
    assert isinstance(bad, GenerationError) and bad.track_id == "bad" and reason in bad.reason
    assert isinstance(good, GeneratedAudio), "the rest of the batch is unaffected"


def test_make_tiny_writes_a_stable_audio_pipeline(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["models", "make-tiny", str(tmp_path / "m"), "--family", "stable-audio"]
    )
    assert result.exit_code == 0, result.output
    assert "Stable Audio" in result.output
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == "StableAudioPipeline"
    assert list((tmp_path / "m").glob("*/*.bin")) == []
    assert len(list((tmp_path / "m").glob("*/*.safetensors"))) == 4
    assert resolve_source(str(tmp_path / "m"), None).model_type == "stable-audio"
    assert (
        "license_name: soundtrack-tiny-random-weights" in (tmp_path / "m" / "README.md").read_text()
    )


MANIFEST = """\
schema: 1
soundtrack: sao
storage: ./out
defaults:
  loudness: console
tracks:
  - id: sting
    prompt: calm piano loop
    duration: 3
    seed: 1
  - id: theme
    prompt: synthwave with warm analog pads
    key: D minor
    bpm: 90
    duration: 5
    seed: 2
    gates: {tempo: warn}  # a tiny random model's noise has no tempo to measure
"""


def test_a_build_on_the_tiny_stable_audio_model_approves_both_tracks(
    tiny_stableaudio_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, few_steps: None
) -> None:
    (tmp_path / "m.yaml").write_text(MANIFEST)
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SOUNDTRACK_STORAGE", raising=False)
    result = build(
        tmp_path / "m.yaml",
        Options(model=str(tiny_stableaudio_dir)),
        executor=ThreadExecutor(),
    )
    assert result.exit_status == 0, result.failure
    assert {t.id: t.status for t in result.report.tracks} == {
        "sting": "approved",
        "theme": "approved",
    }
    out = tmp_path / "out" / "sao"
    for track_id, seconds in (("sting", 3.0), ("theme", 5.0)):
        for suffix in ("ogg", "mp3"):
            path = out / f"{track_id}.{suffix}"
            info = sf.info(str(path))
            assert info.samplerate == 44100 and info.channels == 2
            assert abs(info.frames / 44100 - seconds) <= 0.05, (path.name, info.frames)
            lufs, true_peak = ebur128(path)
            assert abs(lufs - -24.0) <= 0.5, (path.name, lufs)
            assert true_peak <= -1.0, (path.name, true_peak)
    lock = json.loads((out / "soundtrack.lock.json").read_text())
    assert {t["id"] for t in lock["tracks"]} == {"sting", "theme"}


NEGATIVE = """\
schema: 1
soundtrack: steer
storage: ./out
defaults: {{formats: [ogg]}}
tracks:
  - id: line
    prompt: calm piano loop
    duration: 12
    model: {model}
"""


def test_a_negative_prompt_goes_only_to_stable_audio(offline_hub: Path, tmp_path: Path) -> None:
    for model, allowed in (
        ("facebook/musicgen-small", False),
        ("stabilityai/stable-audio-open-1.0", True),
    ):
        (tmp_path / "m.yaml").write_text(
            NEGATIVE.format(model=model) + "    negative_prompt: drums, vocals\n"
        )
        result = CliRunner().invoke(app, ["validate", str(tmp_path / "m.yaml")])
        said = " ".join(result.output.split())
        assert (result.exit_code == 0) == allowed, said
        if not allowed:
            assert "musicgen models take no negative_prompt (negative_prompt: stable-audio)" in said


def test_the_negative_prompt_shapes_the_spec_only_when_set(tmp_path: Path) -> None:
    from soundtrack.manifest import load_manifest
    from soundtrack.resolve import resolve_tracks

    path = tmp_path / "m.yaml"
    plain = NEGATIVE.format(model="stabilityai/stable-audio-open-1.0")
    path.write_text(plain)
    (before,) = resolve_tracks(load_manifest(path), tmp_path)
    path.write_text(plain + "    negative_prompt: drums\n")
    (after,) = resolve_tracks(load_manifest(path), tmp_path)
    assert before.negative_prompt is None and after.negative_prompt == "drums"
    assert after.spec_hash != before.spec_hash and after.generation_key != before.generation_key
    assert after.prompt == before.prompt, "not words in the prompt"
    from soundtrack.renders import RenderCache, _request

    assert _request(after, RenderCache(tmp_path)).negative_prompt == "drums"
    path.write_text(plain + "    negative_prompt: ''\n")
    with pytest.raises(InputError, match="negative_prompt"):
        load_manifest(path)


def test_the_manifests_settings_replace_the_defaults(generator: StableAudioGenerator) -> None:
    from soundtrack.spec import StableAudioSampling

    steps: list[int] = []
    generator.generate(
        [req("fewer", stable_audio=StableAudioSampling(steps=2))],
        progress=lambda d, t: steps.append(t),
    )
    assert steps == [2, 2], "two steps, as the manifest asked"
    given = generator.settings_for(req("x", stable_audio=StableAudioSampling(guidance=3.0)))
    assert given.guidance_scale == 3.0 and given.steps == generator.settings.steps


def test_a_stable_audio_sampling_block_shapes_the_spec_only_when_set(tmp_path: Path) -> None:
    from soundtrack.manifest import load_manifest
    from soundtrack.renders import RenderCache, _request
    from soundtrack.resolve import resolve_tracks
    from soundtrack.spec import StableAudioSampling

    path = tmp_path / "m.yaml"
    plain = NEGATIVE.format(model="stabilityai/stable-audio-open-1.0")
    path.write_text(plain)
    (before,) = resolve_tracks(load_manifest(path), tmp_path)
    path.write_text(plain + "    sampling: {stable-audio: {steps: 50, guidance: 5}}\n")
    (after,) = resolve_tracks(load_manifest(path), tmp_path)
    assert before.stable_audio_sampling is None
    assert after.stable_audio_sampling == StableAudioSampling(steps=50, guidance=5.0)
    assert after.spec_hash != before.spec_hash and after.generation_key != before.generation_key
    assert _request(after, RenderCache(tmp_path)).stable_audio == after.stable_audio_sampling
    path.write_text(plain + "    sampling: {stable-audio: {steps: 0}}\n")
    with pytest.raises(InputError, match="problem"):
        load_manifest(path)


def test_the_published_checkpoints_scheduler_loads_and_renders(
    tiny_stableaudio_dir: Path, tmp_path: Path, few_steps: None
) -> None:
    """stabilityai/stable-audio-open-1.0 ships CosineDPMSolverMultistepScheduler, which needs
    torchsde (a dependency for this reason): the tiny pipeline with that scheduler renders."""
    import shutil

    from diffusers import CosineDPMSolverMultistepScheduler

    copy = tmp_path / "cosine"
    shutil.copytree(tiny_stableaudio_dir, copy)
    shutil.rmtree(copy / "scheduler")
    CosineDPMSolverMultistepScheduler().save_pretrained(copy / "scheduler")
    index = json.loads((copy / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "CosineDPMSolverMultistepScheduler"]
    (copy / "model_index.json").write_text(json.dumps(index))
    loaded = get_generator(str(copy), device="cpu")
    assert type(loaded._pipeline.scheduler).__name__ == "CosineDPMSolverMultistepScheduler"  # type: ignore[attr-defined]
    (result,) = loaded.generate([req("cosine", seconds=1.0)])
    assert np.abs(audio_of(result)).max() > 0
