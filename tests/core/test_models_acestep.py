"""ACE-Step 1.5 on the tiny random-weight pipeline: exact lengths at 48 kHz, seeds that belong
to the track, conditioning as the model's own inputs, loud failures, an allow-list, a build."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
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
from soundtrack.errors import GenerationError, InputError, ModelLoadError
from soundtrack.models import GeneratedAudio, GenerationRequest, check_model, get_generator
from soundtrack.models.acestep import AceStepGenerator, load_acestep
from soundtrack.models.source import resolve_source
from soundtrack.spec import Sampling
from tests.reference import ebur128

PIANO = "calm piano loop for a menu screen"
SYNTH = "synthwave in D minor with warm analog pads and a driving bassline"


def req(track_id: str, prompt: str = PIANO, seconds: float = 2.0, seed: int = 1, **kw: Any) -> Any:
    return GenerationRequest(track_id, prompt, seconds, seed, Sampling(), **kw)


def audio_of(result: GeneratedAudio | GenerationError) -> np.ndarray:
    assert isinstance(result, GeneratedAudio), result
    return result.audio


@pytest.fixture
def generator(tiny_acestep_dir: Path) -> AceStepGenerator:
    loaded = get_generator(str(tiny_acestep_dir), device="cpu")
    assert isinstance(loaded, AceStepGenerator)
    return loaded


def fresh(model_dir: Path) -> AceStepGenerator:
    """A generator of its own (not the process's cached one), to be damaged by a test."""
    return load_acestep(resolve_source(str(model_dir), None), "cpu")


def test_tracks_come_out_at_their_exact_length_at_48khz_stereo(
    generator: AceStepGenerator, tiny_acestep_dir: Path
) -> None:
    two, five = generator.generate([req("two", seconds=2.0), req("five", SYNTH, 5.0, seed=2)])
    for result, seconds in ((two, 2.0), (five, 5.0)):
        assert isinstance(result, GeneratedAudio)
        assert result.sample_rate == 48000
        assert result.audio.dtype == np.float32
        assert result.audio.shape == (2, round(seconds * 48000))
        assert np.all(np.isfinite(result.audio)) and np.max(np.abs(result.audio)) > 0.1
        assert result.model_id == str(tiny_acestep_dir)
        assert result.revision.startswith("sha256:")
        assert result.license == "soundtrack-tiny-random-weights"


def test_a_two_minute_track_renders_in_one_call_without_windows(
    generator: AceStepGenerator,
) -> None:
    # MusicGen would need four 30 s windows; ACE-Step renders it whole: one call's steps.
    seen: list[tuple[int, int]] = []
    (long,) = generator.generate(
        [req("long", seconds=120.0)], progress=lambda done, total: seen.append((done, total))
    )
    assert audio_of(long).shape == (2, 120 * 48000)
    steps = generator.settings.steps
    assert seen == [(i, steps) for i in range(1, steps + 1)]
    # Not one short render repeated: the second minute is not a copy of the first.
    first, second = audio_of(long)[:, : 60 * 48000], audio_of(long)[:, 60 * 48000 :]
    assert float(np.max(np.abs(first - second))) > 0.1


def test_the_seed_and_the_prompt_decide_the_audio(generator: AceStepGenerator) -> None:
    first = audio_of(generator.generate([req("a", seed=7)])[0])
    again = audio_of(generator.generate([req("a", seed=7)])[0])
    other_seed = audio_of(generator.generate([req("a", seed=8)])[0])
    other_prompt = audio_of(generator.generate([req("a", SYNTH, seed=7)])[0])
    assert np.array_equal(first, again)
    assert np.max(np.abs(first - other_seed)) > 0.05
    assert np.max(np.abs(first - other_prompt)) > 1e-4


def test_a_track_renders_the_same_alone_and_in_a_batch(generator: AceStepGenerator) -> None:
    alone = audio_of(generator.generate([req("a", seconds=2.0, seed=3)])[0])
    # Its neighbours have longer prompts (padding) and other lengths that render at 10 s too.
    batch = generator.generate(
        [
            req("n1", SYNTH, 5.0, seed=4),
            req("a", seconds=2.0, seed=3),
            req("n2", "orchestral battle theme, brass, strings, taiko drums", 9.0, seed=5),
        ]
    )
    # Measured on this CPU: at most 4e-7 (float rounding of the batched shapes), not bitwise.
    assert np.max(np.abs(audio_of(batch[1]) - alone)) <= 1e-5


def test_conditions_are_computed_once_and_the_render_is_unchanged(tiny_acestep_dir: Path) -> None:
    reused = fresh(tiny_acestep_dir)
    reference = fresh(tiny_acestep_dir)
    plain: Any = reference._pipeline  # diffusers' own modules back in place
    plain.condition_encoder.timbre_encoder = plain.condition_encoder.timbre_encoder.module
    for layer in plain.transformer.layers:
        layer.cross_attn.to_k = layer.cross_attn.to_k.module
        layer.cross_attn.to_v = layer.cross_attn.to_v.module
    pipeline: Any = reused._pipeline
    runs = {"timbre": 0, "keys": 0}
    pipeline.condition_encoder.timbre_encoder.module.register_forward_hook(
        lambda *_: runs.update(timbre=runs["timbre"] + 1)
    )
    pipeline.transformer.layers[0].cross_attn.to_k.module.register_forward_hook(
        lambda *_: runs.update(keys=runs["keys"] + 1)
    )
    calls = [
        [req("a", seed=3)],
        [req("b", SYNTH, 5.0, seed=4)],
        [req("c", seed=5), req("d", SYNTH, 5.0, seed=6)],  # one call of two: other shapes
    ]
    for requests in calls:
        for ours, theirs in zip(
            reused.generate(requests), reference.generate(requests), strict=True
        ):
            assert np.array_equal(audio_of(ours), audio_of(theirs))
    assert runs["timbre"] == 2, "once for one track, once more for the batch of two"
    # The keys once per call (each call has its own prompts), not once per step.
    assert reused.settings.steps > 1 and runs["keys"] == len(calls)


def test_bpm_key_and_time_signature_are_conditioning_not_words(
    generator: AceStepGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    pipeline: Any = generator._pipeline
    encode = pipeline.encode_prompt

    def recording(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return encode(**kwargs)

    monkeypatch.setattr(pipeline, "encode_prompt", recording)
    tagged = dict(bpm=120, key="D minor", time_signature="3/4")
    results = generator.generate(
        [
            req("tagged", f"{PIANO}, D minor, 120 BPM", plain_prompt=PIANO, **tagged),
            req("plain", PIANO),
        ]
    )
    assert len(calls) == 2, "different conditioning: separate pipeline calls"
    by_bpm = {call["bpm"]: call for call in calls}
    assert by_bpm[120]["prompt"] == [PIANO] and by_bpm[120]["keyscale"] == "D minor"
    assert by_bpm[120]["timesignature"] == "3"
    assert by_bpm[None]["keyscale"] is None and by_bpm[None]["timesignature"] is None
    assert by_bpm[120]["lyrics"] == [""], "instrumental: one empty lyric per prompt"
    assert not np.array_equal(audio_of(results[0]), audio_of(results[1]))


def test_lyrics_are_sung_per_track_and_change_the_render(
    generator: AceStepGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    pipeline: Any = generator._pipeline
    encode = pipeline.encode_prompt

    def recording(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return encode(**kwargs)

    monkeypatch.setattr(pipeline, "encode_prompt", recording)
    words = "[verse]\nwe sail at dawn"
    sung, instrumental = generator.generate([req("sung", lyrics=words), req("instrumental")])
    (call,) = calls
    assert call["lyrics"] == [words, ""], "one lyric per prompt, empty for an instrumental"
    assert not np.array_equal(audio_of(sung), audio_of(instrumental))


def test_the_manifests_settings_replace_the_checkpoints(generator: AceStepGenerator) -> None:
    from soundtrack.spec import AceStepSampling

    steps: list[int] = []
    generator.generate(
        [req("fewer", ace_step=AceStepSampling(steps=2))], progress=lambda d, t: steps.append(t)
    )
    assert steps == [2, 2], "two steps, as the manifest asked"
    given = generator.settings_for(req("x", ace_step=AceStepSampling(shift=2.0)))
    assert given.shift == 2.0 and given.steps == generator.settings.steps


def test_progress_counts_steps_over_every_call(generator: AceStepGenerator) -> None:
    seen: list[tuple[int, int]] = []
    generator.generate(
        [req("a", seconds=2.0), req("b", seconds=12.0)],
        progress=lambda done, total: seen.append((done, total)),
    )
    steps = generator.settings.steps
    assert seen == [(i, 2 * steps) for i in range(1, 2 * steps + 1)]


def test_requests_beyond_the_models_limits_are_refused_before_any_work(
    generator: AceStepGenerator,
) -> None:
    with pytest.raises(InputError, match=r"track 'long': duration_s must be <= 600 s"):
        generator.generate([req("short"), req("long", seconds=601.0)])
    with pytest.raises(InputError, match=r"time_signature must be beats/unit .* got '3:4'"):
        generator.generate([req("odd", time_signature="3:4")])


def damaged(model_dir: Path, fill: Callable[[torch.Tensor], torch.Tensor]) -> AceStepGenerator:
    """The tiny pipeline whose VAE decoder output for the first track is replaced by `fill`."""
    generator = fresh(model_dir)

    def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[0] = fill(output[0])
        return output

    pipeline: Any = generator._pipeline
    pipeline.vae.decoder.register_forward_hook(hook)
    return generator


def test_a_text_longer_than_ace_step_reads_fails_its_track_and_the_rest_renders(
    generator: AceStepGenerator,
) -> None:
    """The pipeline cut its text at 256 tokens, lyrics at 2048, silently: a long prompt lost
    its end and then the bpm, key and length that follow it in the text ACE-Step reads."""
    long_prompt, long_lyrics, ok = generator.generate(
        [
            req("long-prompt", " ".join(f"w{i}" for i in range(300)), bpm=120),
            req("long-lyrics", lyrics="\n".join(["la la la"] * 1000)),
            req("ok", lyrics="la la la"),
        ]
    )
    assert isinstance(long_prompt, GenerationError) and long_prompt.track_id == "long-prompt"
    assert re.fullmatch(
        r"its prompt makes \d+ tokens .* over the 256 it reads: .*, the bpm, key and length"
        r" among it",
        long_prompt.reason,
    )
    assert isinstance(long_lyrics, GenerationError)
    assert re.fullmatch(
        r"its lyrics makes \d+ tokens .* over the 2048 it reads: the rest would be cut off",
        long_lyrics.reason,
    )
    assert isinstance(ok, GeneratedAudio)


@pytest.mark.parametrize(
    ("fill", "reason"),
    [
        (lambda x: torch.full_like(x, float("nan")), "NaN/inf samples"),
        (torch.zeros_like, "all zeros"),
    ],
    ids=["nan", "silent"],
)
def test_nan_or_silent_output_is_that_tracks_generation_error(
    tiny_acestep_dir: Path, fill: Callable[[torch.Tensor], torch.Tensor], reason: str
) -> None:
    bad, good = damaged(tiny_acestep_dir, fill).generate([req("bad"), req("good", SYNTH)])
    assert isinstance(bad, GenerationError) and bad.track_id == "bad" and reason in bad.reason
    assert isinstance(good, GeneratedAudio), "the rest of the batch is unaffected"


def copy_with_index(model_dir: Path, target: Path, **changes: Any) -> Path:
    shutil.copytree(model_dir, target)
    index = json.loads((target / "model_index.json").read_text())
    (target / "model_index.json").write_text(json.dumps({**index, **changes}))
    return target


def test_pickled_weights_are_never_loaded(tiny_acestep_dir: Path, tmp_path: Path) -> None:
    """A folder whose weights are pickles (.bin), not safetensors, is refused at load, naming
    the missing safetensors and how to provide them; nothing is unpickled."""
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_acestep_dir, pickled)
    weights = pickled / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save({"state": torch.zeros(1)}, weights.with_suffix(".bin"))
    weights.unlink()
    with pytest.raises(ModelLoadError) as refused:
        get_generator(str(pickled), device="cpu")
    said = str(refused.value)
    assert f"{pickled / 'transformer'} holds no weights as safetensors" in said, said
    assert "(only diffusion_pytorch_model.bin)" in said and "never loaded" in said, said
    assert "hf download /" not in said, "a local folder is not on the hub"


def test_an_unknown_pipeline_or_component_is_refused_by_name(
    tiny_acestep_dir: Path, tmp_path: Path
) -> None:
    other = copy_with_index(tiny_acestep_dir, tmp_path / "other", _class_name="AudioLDM2Pipeline")
    with pytest.raises(ModelLoadError) as refused:
        check_model(str(other))
    assert "'AudioLDM2Pipeline', which has no backend (supported: AceStepPipeline, " in str(
        refused.value
    )
    custom = copy_with_index(tiny_acestep_dir, tmp_path / "custom", vae=["my_vae", "MyVae"])
    with pytest.raises(ModelLoadError, match=r"component 'vae' is \['my_vae', 'MyVae'\]; only "):
        check_model(str(custom))
    assert resolve_source(str(tiny_acestep_dir), None).model_type == "ace-step"
    # The layout diffusers' converter writes: no scheduler entry, components under "diffusers".
    converted = copy_with_index(
        tiny_acestep_dir,
        tmp_path / "converted",
        condition_encoder=["diffusers", "AceStepConditionEncoder"],
        audio_tokenizer=None,
        audio_token_detokenizer=None,
    )
    assert resolve_source(str(converted), None).model_type == "ace-step"


def test_the_revision_covers_the_component_folders(tiny_acestep_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_acestep_dir, tmp_path / "copy")
    before = resolve_source(str(copy), None).revision
    with (copy / "vae" / "config.json").open("a") as handle:
        handle.write("\n")
    assert resolve_source(str(copy), None).revision != before


def test_the_revision_follows_a_symlinked_component_folder(
    tiny_acestep_dir: Path, tmp_path: Path
) -> None:
    """A component kept elsewhere and linked in is loaded from there, so its files are hashed
    as if they were in place: changed weights there re-render, never reuse the old audio."""
    copy = shutil.copytree(tiny_acestep_dir, tmp_path / "copy")
    in_place = resolve_source(str(copy), None).revision
    (copy / "vae").rename(tmp_path / "shared-vae")
    (copy / "vae").symlink_to(tmp_path / "shared-vae")
    (copy / "loop").symlink_to(copy)  # a link back up is followed once, not forever
    linked = resolve_source(str(copy), None).revision
    assert linked == in_place, "the same files, the same revision"
    with (tmp_path / "shared-vae" / "config.json").open("a") as handle:
        handle.write("\n")
    assert resolve_source(str(copy), None).revision != linked


def test_make_tiny_writes_an_ace_step_pipeline(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["models", "make-tiny", str(tmp_path / "m"), "--family", "ace-step"]
    )
    assert result.exit_code == 0, result.output
    assert "ACE-Step" in result.output
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == "AceStepPipeline"
    assert list((tmp_path / "m").glob("*/*.bin")) == []
    # text encoder, transformer, condition encoder, VAE, and the audio tokenizer and detokenizer
    # a cover (a variation) needs
    assert len(list((tmp_path / "m").glob("*/*.safetensors"))) == 6
    assert resolve_source(str(tmp_path / "m"), None).model_type == "ace-step"


MANIFEST = """\
schema: 1
soundtrack: ace
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


def test_a_build_on_the_tiny_ace_step_model_approves_both_tracks(
    tiny_acestep_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "m.yaml").write_text(MANIFEST)
    monkeypatch.setenv("SOUNDTRACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SOUNDTRACK_STORAGE", raising=False)
    models._loaded.clear()
    result = build(
        tmp_path / "m.yaml",
        Options(model=str(tiny_acestep_dir)),
        executor=ThreadExecutor(),
    )
    assert result.exit_status == 0, result.failure
    assert {t.id: t.status for t in result.report.tracks} == {
        "sting": "approved",
        "theme": "approved",
    }
    out = tmp_path / "out" / "ace"
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


def test_a_cover_hands_the_pipeline_its_source_audio(
    generator: AceStepGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny model's random tokenizer maps most sources to one code, so its covers of very
    different sources come out identical, and a cover that dropped its source would pass every
    other test: what the pipeline is handed shows a variation renders from its parent."""
    calls: list[dict[str, Any]] = []
    pipeline_class: Any = type(generator._pipeline)
    call = pipeline_class.__call__

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "__call__", recording)
    source = np.random.default_rng(1).uniform(-0.5, 0.5, (2, 12 * 48000)).astype(np.float32)
    generator.generate([req("cover", seconds=10.0, source_audio=source, source_rate=48000)])
    (handed,) = calls
    assert handed["task_type"] == "cover"
    given = handed["src_audio"].numpy()
    assert given.shape == (1, 2, 10 * 48000)  # the render's length, in whole latent frames
    np.testing.assert_array_equal(given[0], source[:, : 10 * 48000])


@pytest.mark.parametrize("seconds", [10.01, 12.5, 13.33])
def test_a_cover_of_any_length_comes_out_at_that_length(
    generator: AceStepGenerator, seconds: float
) -> None:
    """A cover renders as many latent frames (25 a second) as its source fills: a length that
    is no whole number of them came out short of the track and failed it."""
    source = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 20 * 48000)).astype(np.float32)
    (result,) = generator.generate(
        [req("cover", seconds=seconds, source_audio=source, source_rate=48000)]
    )
    assert audio_of(result).shape == (2, round(seconds * 48000))
