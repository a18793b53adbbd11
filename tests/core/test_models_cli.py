"""`soundtrack generate` and `soundtrack models make-tiny`, run through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from transformers import MusicgenForConditionalGeneration, MusicgenProcessor
from typer.testing import CliRunner

from soundtrack.cli import app
from soundtrack.models import GeneratedAudio, GenerationRequest, get_generator
from soundtrack.spec import Sampling
from tests.core.test_models_failures import codec_output
from tests.running import stopped_after_the_weights

runner = CliRunner()


def test_generate_writes_a_wav_of_the_requested_length(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "takes" / "title.wav"
    args = ["generate", "--model", str(tiny_model_dir), "--prompt", "heroic brass fanfare"]
    result = runner.invoke(app, [*args, "--duration", "1.5", "--seed", "42", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "seed 42" in result.stdout and "soundtrack-tiny-random-weights" in result.stdout
    info = sf.info(str(out))
    assert (info.frames, info.samplerate, info.channels) == (48000, 32000, 1)
    assert [p.name for p in out.parent.iterdir()] == ["title.wav"]  # no temporary file left
    # The same seed through the library gives the same take.
    generator = get_generator(str(tiny_model_dir), device="cpu")
    request = GenerationRequest("x", "heroic brass fanfare", 1.5, 42, Sampling())
    (again,) = generator.generate([request])
    assert isinstance(again, GeneratedAudio)
    np.testing.assert_array_equal(sf.read(str(out), dtype="float32")[0], again.audio[0])


def test_generate_without_seed_or_output_names_the_take(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["generate", "--model", str(tiny_model_dir), "--prompt", "Calm piano, C major!"]
    result = runner.invoke(app, [*args, "--duration", "0.5"])
    assert result.exit_code == 0, result.output
    (wav,) = tmp_path.glob("*.wav")
    seed = wav.stem.rsplit("-", 1)[1]
    assert wav.name == f"calm-piano-c-major-{seed}.wav" and f"seed {seed}" in result.stdout
    # The same prompt and seed again (another model, other settings): the first take stays.
    first = wav.read_bytes()
    again = runner.invoke(app, [*args, "--duration", "0.7", "--seed", seed])
    assert again.exit_code == 0, again.output
    assert wav.read_bytes() == first
    assert sf.info(tmp_path / f"calm-piano-c-major-{seed}.take2.wav").duration == pytest.approx(0.7)


def test_an_unknown_model_exits_2_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    args = ["generate", "--model", "soundtrack-tests/no-such-model", "--prompt", "p"]
    target = tmp_path / "auditions" / "today" / "x.wav"
    result = runner.invoke(app, [*args, "--duration", "1", "-o", str(target)])
    assert result.exit_code == 2
    assert "soundtrack-tests/no-such-model" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "auditions").exists(), "nothing written, not even its folders"


def test_bad_input_exits_2_before_loading_anything(tmp_path: Path) -> None:
    args = ["generate", "--model", str(tmp_path / "nowhere"), "--prompt", " "]
    result = runner.invoke(app, [*args, "--duration", "1"])
    assert result.exit_code == 2 and "prompt is empty" in result.stderr


def test_generate_refuses_an_output_it_should_not_write_before_loading(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WAV only, never among the model's files, and a length the model's family renders:
    exit 2 before any model loads, and every file as it was."""
    monkeypatch.setattr("soundtrack.models.get_generator", None)  # loading would raise
    manifest = tmp_path / "m.yaml"
    manifest.write_text("schema: 1\n")
    before = {p: p.read_bytes() for p in tiny_model_dir.rglob("*") if p.is_file()}
    base = ["generate", "--prompt", "p", "--duration", "1", "--model", str(tiny_model_dir)]
    cases = [
        (str(manifest), "give a .wav file"),
        (str(tmp_path), "give a .wav file"),
        (str(tiny_model_dir / "take.wav"), "where the model's files are"),
        (str(tiny_model_dir / "config.json"), "give a .wav file"),
    ]
    for output, said in cases:
        result = runner.invoke(app, [*base, "-o", output])
        assert result.exit_code == 2 and said in " ".join(result.stderr.split()), result.output
    assert manifest.read_text() == "schema: 1\n"
    assert {p: p.read_bytes() for p in tiny_model_dir.rglob("*") if p.is_file()} == before

    for option, said in (
        (["--seed", "-1"], "--seed must be 0 to 4294967295"),
        (["--seed", str(2**80)], "--seed must be 0 to 4294967295"),
        (["--duration", "inf"], "--duration must be 0.4 to 600 s"),
        (["--duration", "0.1"], "--duration must be 0.4 to 600 s"),
        (["--duration", "601"], "--duration must be 0.4 to 600 s"),
    ):
        result = runner.invoke(app, [*base, *option, "-o", str(tmp_path / "x.wav")])
        assert result.exit_code == 2 and said in result.stderr, (option, result.output)
    stable = ["generate", "--model", "stabilityai/stable-audio-open-1.0", "--prompt", "p"]
    result = runner.invoke(app, [*stable, "--duration", "60", "-o", str(tmp_path / "x.wav")])
    assert result.exit_code == 2, result.output
    assert "longer than stable-audio models render (47 s at most)" in result.stderr
    assert not (tmp_path / "x.wav").exists()
    # A hub id's files are in the hub cache: a take written there sits among other models'.
    hub = tmp_path / "hub"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    result = runner.invoke(app, [*stable, "--duration", "10", "-o", str(hub / "x.wav")])
    assert result.exit_code == 2, result.output
    assert "where the model's files are" in " ".join(result.stderr.split())
    assert not hub.exists()


def test_an_audition_named_from_a_long_prompt_gets_a_short_name(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["generate", "--model", str(tiny_model_dir), "--prompt", "x" * 300, "--seed", "7"]
    result = runner.invoke(app, [*args, "--duration", "0.5"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.glob("*.wav")] == ["x" * 60 + "-7.wav"]


def test_a_silent_render_exits_1_and_writes_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    silent = tmp_path / "silent-model"
    model: Any = MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir)
    processor = MusicgenProcessor.from_pretrained(tiny_model_dir)
    codec_output(0.0)(model, processor)
    model.save_pretrained(silent)
    processor.save_pretrained(silent)
    out = tmp_path / "x.wav"
    args = ["generate", "--model", str(silent), "--prompt", "p", "--duration", "1", "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "track 'audition': the render is all zeros" in result.stderr
    assert "Traceback" not in result.output and not out.exists()


# SIGTERM arrives as the WAV's last byte is written, before it is renamed into place.
_TERMINATED_WHILE_WRITING = """
import os, signal, sys, time
import soundfile
write = soundfile.write
def writing(*args, **kwargs):
    write(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
soundfile.write = writing
from soundtrack.cli import app
app(sys.argv[1:], prog_name="soundtrack")
"""


def test_sigterm_while_the_wav_is_written_leaves_no_file(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM ended generate on the spot, leaving its half-written .part file beside -o (up to
    230 MB for a 600 s take); Ctrl-C already cleaned it up."""
    out = tmp_path / "out"
    out.mkdir()
    args = ["--model", str(tiny_model_dir), "--prompt", "p", "--duration", "1", "--seed", "1"]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _TERMINATED_WHILE_WRITING,
            "generate",
            *args,
            "-o",
            str(out / "a.wav"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 130, result.stderr
    assert list(out.iterdir()) == []


def test_make_tiny_stereo_renders_two_channels_in_long_form_too(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "make-tiny", "--stereo", str(tmp_path / "tiny")])
    assert result.exit_code == 0, result.output
    assert "not music" in runner.invoke(app, ["models", "make-tiny", "--help"]).stdout
    generator = get_generator(str(tmp_path / "tiny"), device="cpu")
    assert generator.channels == 2
    short, long = generator.generate(
        [
            GenerationRequest("short", "tense stealth", 1.0, 3, Sampling()),
            GenerationRequest("long", "ambient drone", 31.0, 4, Sampling(), overlap_s=5.0),
        ]
    )
    assert isinstance(short, GeneratedAudio) and isinstance(long, GeneratedAudio)
    assert short.audio.shape == (2, 32000) and long.audio.shape == (2, 31 * 32000)
    assert np.max(np.abs(short.audio[0] - short.audio[1])) > 1e-3  # two channels, not a copy


def test_make_tiny_never_writes_among_other_files(tmp_path: Path) -> None:
    """make-tiny writes to a new or empty folder, or over a tiny model of the same family: a
    folder of other files (real weights, say) is refused and left as it was."""
    user = tmp_path / "weights"
    user.mkdir()
    (user / "config.json").write_text('{"model_type": "musicgen"}')
    (user / "model.safetensors").write_bytes(b"real weights")
    result = runner.invoke(app, ["models", "make-tiny", str(user)])
    assert result.exit_code == 2, result.output
    assert "not empty and holds no tiny musicgen model" in " ".join(result.output.split())
    assert sorted(p.name for p in user.iterdir()) == ["config.json", "model.safetensors"]
    assert (user / "model.safetensors").read_bytes() == b"real weights"

    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["models", "make-tiny", str(tmp_path / "file")])
    assert result.exit_code == 2 and "is a file, not a folder" in result.output, result.output

    tiny = tmp_path / "tiny"
    tiny.mkdir()  # empty: fine
    assert runner.invoke(app, ["models", "make-tiny", str(tiny)]).exit_code == 0
    assert runner.invoke(app, ["models", "make-tiny", str(tiny)]).exit_code == 0, "rewritten"
    other = runner.invoke(app, ["models", "make-tiny", str(tiny), "--family", "demucs"])
    assert other.exit_code == 2, other.output
    assert get_generator(str(tiny), device="cpu").sample_rate == 32000
    # A MusicGen of the same layout whose card is no tiny one's: a real model, or a fine-tune.
    (tiny / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\nOur fine-tune.\n")
    weights = {p.name: p.read_bytes() for p in tiny.iterdir()}
    real = runner.invoke(app, ["models", "make-tiny", str(tiny)])
    assert real.exit_code == 2, real.output
    assert "holds no tiny musicgen model" in " ".join(real.output.split())
    assert {p.name: p.read_bytes() for p in tiny.iterdir()} == weights


def test_a_pipeline_stopped_midway_leaves_its_empty_folder_empty(tmp_path: Path) -> None:
    """A diffusers pipeline is written as component folders: stopped after the first, make-tiny
    into an empty folder left that folder's vae/ behind, and refused to write over it again."""
    out = tmp_path / "pipeline"
    out.mkdir()
    args = ["models", "make-tiny", str(out), "--family", "ace-step"]
    stopped = stopped_after_the_weights(*args)
    assert stopped.returncode == 130, stopped.stderr
    assert list(out.iterdir()) == []
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


def test_paths_nothing_can_be_written_to_exit_2_before_any_work(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A link to nothing, a path through a file, a folder the system refuses, or another
    model's folder (its revision hashes every file): one line and exit 2, not a traceback after
    the render, and nothing written."""
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "afile").write_text("keep")
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "model_index.json").write_text("{}")
    os.mkfifo(tmp_path / "pipe.wav")  # was replaced by a plain file
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for target, said in [
        (tmp_path / "pipe.wav", "is not a regular file (a device or pipe)"),
        (tmp_path / "dangling" / "x.wav", "is a link to nothing"),
        (tmp_path / "afile" / "x.wav", "afile is a file, not a folder"),
        (Path("/proc/x.wav"), "cannot write there"),
        (other / "takes" / "x.wav", f"inside the model folder {other}"),
        (tmp_path, "is a folder: give a .wav file in it"),
    ]:
        args = ["generate", "--model", str(tiny_model_dir), "--prompt", "p", "--duration", "1"]
        result = runner.invoke(app, [*args, "-o", str(target)])
        assert result.exit_code == 2 and said in result.stderr, (target, result.output)
        assert "loading" not in result.output and "Traceback" not in result.output
    for target, said in [
        (tmp_path / "dangling", "is a link to nothing"),
        (tmp_path / "afile" / "sub", "afile is a file, not a folder"),
        (Path("/proc/tiny"), "cannot write there"),
    ]:
        for command in (
            ["make-tiny", str(target)],
            ["convert-demucs", str(tmp_path / "x.th"), str(target)],
        ):
            result = runner.invoke(app, ["models", *command])
            assert result.exit_code == 2 and said in result.stderr, (command, result.output)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


AUDITION_FIELDS = {
    "musicgen": {"bpm": 90, "key": "f# minor", "time_signature": "3/4"},
    "ace-step": {"bpm": 90, "key": "f# minor", "time_signature": "3/4", "lyrics": "[verse]\nla"},
    "stable-audio": {"negative_prompt": "drums, vocals"},
    "bark": {"lyrics": "over the hills"},
}


@pytest.mark.parametrize("family", sorted(AUDITION_FIELDS))
def test_generate_renders_what_a_manifest_track_with_the_same_fields_renders(
    family: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """--bpm, --key, --time-signature, --lyrics and --negative-prompt reach the model as a
    track's fields do (conditioning or prompt words), and change the take. (Seed 4: the tiny
    MusicGen is nearly deaf to its prompt, and with some seeds a few more words change nothing.)"""
    from soundtrack.manifest import load_manifest
    from soundtrack.renders import Render, RenderCache, render_batch
    from soundtrack.resolve import resolve_tracks

    fixture = {"musicgen": "tiny_model_dir", "ace-step": "tiny_acestep_dir"}.get(
        family, f"tiny_{family.replace('-', '')}_dir"
    )
    model: Path = request.getfixturevalue(fixture)
    fields = AUDITION_FIELDS[family]
    options = [f"--{name.replace('_', '-')}={value}" for name, value in fields.items()]
    base = ["generate", "--model", str(model), "--prompt", "calm piano.", "--duration", "2"]
    for name, extra in (("with.wav", options), ("without.wav", [])):
        result = runner.invoke(app, [*base, "--seed", "4", "-o", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output

    manifest = tmp_path / "m.yaml"
    written = "".join(f"    {name}: {value!r}\n" for name, value in fields.items())
    manifest.write_text(
        "schema: 1\nsoundtrack: s\nstorage: ./out\ntracks:\n  - id: t\n    prompt: calm piano.\n"
        f"    duration: 2\n    seed: 4\n    model: {model}\n{written}"
    )
    (spec,) = resolve_tracks(load_manifest(manifest), tmp_path)
    (render,) = render_batch([spec], RenderCache(tmp_path / "cache"), device="cpu")
    assert isinstance(render, Render)
    as_track = sf.read(str(render.path), dtype="float32")[0]
    np.testing.assert_array_equal(sf.read(str(tmp_path / "with.wav"), dtype="float32")[0], as_track)
    without = sf.read(str(tmp_path / "without.wav"), dtype="float32")[0]
    assert without.shape != as_track.shape or not np.array_equal(without, as_track)


def test_generate_refuses_what_the_models_family_does_not_take_before_loading(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("soundtrack.models.get_generator", None)  # loading would raise
    out = tmp_path / "x.wav"
    base = ["generate", "--prompt", "p", "--duration", "1", "-o", str(out)]
    cases = [
        (str(tiny_model_dir), ["--lyrics", "la"], ["--lyrics: musicgen models take no lyrics"]),
        (
            "stabilityai/stable-audio-open-1.0",
            ["--lyrics", "la", "--negative-prompt", "drums"],
            ["--lyrics: stable-audio models take no lyrics (lyrics: ace-step, bark)"],
        ),
        (
            "ACE-Step/acestep-v15-turbo-diffusers",
            ["--negative-prompt", "drums"],
            ["--negative-prompt: ace-step models take no negative_prompt"],
        ),
        (
            str(tiny_model_dir),
            ["--bpm", "500", "--key", "H major", "--time-signature", "5", "--lyrics", " "],
            [
                "--bpm: Input should be less than or equal to 300 (got 500)",
                "--key: 'H major' is not a key",
                "--time-signature: write beats/note value",
                "--lyrics: lyrics is empty",
            ],
        ),
    ]
    for model, options, said in cases:
        result = runner.invoke(app, [*base, "--model", model, *options])
        shown = " ".join(result.stderr.split())
        assert result.exit_code == 2 and all(s in shown for s in said), (options, result.output)
        assert "Traceback" not in result.output
    assert not out.exists()


def test_paths_with_brackets_are_printed_as_they_are(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Rich read `[old]` in a file name as markup (printing another name) and `[/]` as a
    closing tag (a traceback after the WAV was written)."""
    model = tmp_path / "model[/]v2"
    made = runner.invoke(app, ["models", "make-tiny", str(model)])
    assert made.exit_code == 0, made.output
    assert f"to {model}" in " ".join(made.stdout.split())
    for name in ("take[old].wav", "a[/]b.wav"):
        out = tmp_path / name
        args = ["generate", "--model", str(model), "--prompt", "p", "--duration", "0.5"]
        result = runner.invoke(app, [*args, "--seed", "1", "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert f"wrote {out}:" in result.stdout
        assert sf.info(str(out)).frames == 16000
