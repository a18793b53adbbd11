"""Model families: known from a checkpoint's files, the catalogue or the hub cache, without
weights or network; every track held to what its family renders, at validate and again at build."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from soundtrack.catalog import FAMILIES, family_name
from soundtrack.cli import app
from soundtrack.errors import InputError
from soundtrack.resolve import seconds_to_render
from soundtrack.spec import LOUDNESS_PROFILES, GateLimits, Mastering
from tests.hubcache import put_in_cache

MANIFEST = """\
schema: 1
soundtrack: families
storage: ./out
defaults: {{formats: [ogg]}}
tracks:
  - id: line
    prompt: a sung line
    duration: {duration}
    model: {model}
"""


def run(folder: Path, *args: str) -> tuple[int, str]:
    """The CLI run in `folder`: its exit code and its output on one line."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        os.chdir(cwd)
    return result.exit_code, " ".join(result.output.split())


def validate(folder: Path, duration: float, model: str) -> tuple[int, str]:
    (folder / "m.yaml").write_text(MANIFEST.format(duration=duration, model=model))
    return run(folder, "validate", "m.yaml")


def test_families_come_from_files_the_catalogue_or_the_cache(
    offline_hub: Path, tiny_model_dir: Path, tiny_acestep_dir: Path
) -> None:
    assert family_name(str(tiny_model_dir)) == "musicgen"
    assert family_name(str(tiny_acestep_dir)) == "ace-step"
    assert family_name("facebook/musicgen-small") == "musicgen"
    assert family_name("stabilityai/stable-audio-open-1.0") == "stable-audio"
    assert family_name("someone/new-model") is None
    put_in_cache(offline_hub, "someone/new-model", "config.json", '{"model_type": "bark"}')
    assert family_name("someone/new-model") == "bark"
    put_in_cache(offline_hub, "someone/pipe", "model_index.json", json.dumps(ACE_INDEX))
    assert family_name("someone/pipe") == "ace-step"


def test_validate_holds_a_track_to_its_family(offline_hub: Path, tmp_path: Path) -> None:
    code, said = validate(tmp_path, 20, "suno/bark-small")
    assert code == 2, said
    assert (
        "track line: model suno/bark-small: duration 20 s is longer than bark models render" in said
    )
    assert f"({FAMILIES['bark'].max_call_s:g} s at most)" in said
    assert "bark models have no backend" not in said  # it has one: only the length is refused

    code, said = validate(tmp_path, 60, "ACE-Step/acestep-v15-xl-turbo-diffusers")
    assert code == 0, said

    code, said = validate(tmp_path, 20, "someone/new-model")
    assert code == 0, said
    assert "someone/new-model: limits unchecked until the weights are present" in said


def test_lyrics_go_only_to_a_family_that_sings(offline_hub: Path, tmp_path: Path) -> None:
    ace_step = "ACE-Step/acestep-v15-xl-turbo-diffusers"
    for model, allowed in (("facebook/musicgen-small", False), (ace_step, True)):
        (tmp_path / "m.yaml").write_text(
            MANIFEST.format(duration=12, model=model) + "    lyrics: we sail at dawn\n"
        )
        code, said = run(tmp_path, "validate", "m.yaml")
        assert (code == 0) == allowed, said
        if not allowed:
            assert "musicgen models take no lyrics (lyrics: ace-step, bark)" in said


def test_a_negative_prompt_needs_guidance_and_a_shift_a_timestep(
    offline_hub: Path, tmp_path: Path
) -> None:
    """At guidance 1 Stable Audio rendered a negative prompt's track exactly as the same track
    without it; an ACE-Step shift of 1e-8 passed validate and raised in diffusers' scheduler."""
    stable = "stabilityai/stable-audio-open-1.0"
    for guidance, valid in ((1, False), (1.5, True)):
        (tmp_path / "m.yaml").write_text(
            MANIFEST.format(duration=12, model=stable)
            + "    negative_prompt: drums\n"
            + f"    sampling: {{stable-audio: {{guidance: {guidance}}}}}\n"
        )
        code, said = run(tmp_path, "validate", "m.yaml")
        assert (code == 0) == valid, said
        if not valid:
            assert "negative_prompt needs guidance above 1" in said, said
    ace_step = "ACE-Step/acestep-v15-xl-turbo-diffusers"
    for shift, valid in ((1.0e-8, False), (0.1, True)):
        (tmp_path / "m.yaml").write_text(
            MANIFEST.format(duration=12, model=ace_step)
            + f"    sampling: {{ace-step: {{shift: {shift}}}}}\n"
        )
        code, said = run(tmp_path, "validate", "m.yaml")
        assert (code == 0) == valid, said
        if not valid:
            assert "shift" in said and "0.1" in said, said


def test_lyrics_and_time_signature_shape_the_spec_only_when_set(tmp_path: Path) -> None:
    from soundtrack.manifest import load_manifest
    from soundtrack.resolve import resolve_tracks

    path = tmp_path / "m.yaml"
    plain = MANIFEST.format(duration=12, model="ACE-Step/acestep-v15-xl-turbo-diffusers")
    path.write_text(plain)
    (before,) = resolve_tracks(load_manifest(path), tmp_path)
    path.write_text(plain + "    lyrics: we sail at dawn\n    time_signature: 3/4\n")
    (after,) = resolve_tracks(load_manifest(path), tmp_path)
    assert after.lyrics == "we sail at dawn" and after.time_signature == "3/4"
    assert after.spec_hash != before.spec_hash and after.generation_key != before.generation_key
    # MusicGen hears the time signature as words; ACE-Step gets it as conditioning instead.
    assert after.prompt == "a sung line, 3/4 time" and after.plain_prompt == "a sung line"
    path.write_text(plain + "    time_signature: 7/5\n")
    with pytest.raises(InputError, match="time_signature"):
        load_manifest(path)


def test_sampling_per_family_and_the_flat_form_is_musicgens(
    offline_hub: Path, tmp_path: Path, tiny_acestep_dir: Path
) -> None:
    from soundtrack.manifest import load_manifest
    from soundtrack.resolve import resolve_tracks

    path = tmp_path / "m.yaml"
    flat = "    sampling: {temperature: 0.9, top_k: 100}\n"
    keyed = "    sampling: {musicgen: {temperature: 0.9, top_k: 100}, ace-step: {steps: 4}}\n"
    specs = {}
    for name, block in (("flat", flat), ("keyed", keyed)):
        path.write_text(MANIFEST.format(duration=12, model="facebook/musicgen-small") + block)
        (specs[name],) = resolve_tracks(load_manifest(path), tmp_path)
    assert specs["flat"].sampling == specs["keyed"].sampling and specs["flat"].sampling_flat
    assert not specs["keyed"].sampling_flat
    assert specs["keyed"].ace_step_sampling is None, "a MusicGen track has no use for it"
    path.write_text(
        MANIFEST.format(duration=12, model="ACE-Step/acestep-v15-turbo-diffusers") + keyed
    )
    (ace,) = resolve_tracks(load_manifest(path), tmp_path)
    assert ace.ace_step_sampling is not None and ace.ace_step_sampling.steps == 4

    ace_step = "ACE-Step/acestep-v15-xl-turbo-diffusers"
    code, said = validate_text(tmp_path, MANIFEST.format(duration=12, model=ace_step) + flat)
    assert code == 2 and "ace-step models take their own block" in said, said
    code, said = validate_text(tmp_path, MANIFEST.format(duration=12, model=ace_step) + keyed)
    assert code == 0, said

    # --model swaps the family under the manifest's settings: the flag is named.
    (tmp_path / "m.yaml").write_text(
        MANIFEST.format(duration=12, model="facebook/musicgen-small") + flat
    )
    code, said = run(tmp_path, "build", "m.yaml", "--model", str(tiny_acestep_dir))
    assert code == 2 and f"{tiny_acestep_dir} (--model): `sampling`" in said, said


KEYS = """\
schema: 1
soundtrack: keys
defaults:
  duration: 12
  sampling: {sampling}
tracks:
  - {{id: mg, prompt: theme, model: facebook/musicgen-small}}
  - {{id: ace, prompt: theme, model: ACE-Step/acestep-v15-turbo-diffusers}}
  - {{id: sao, prompt: rain, model: stabilityai/stable-audio-open-1.0}}
  - {{id: bark, prompt: hum, duration: 5, model: suno/bark-small}}
  - {{id: local, prompt: theme, model: ./ace}}
  - {{id: new, prompt: theme, model: someone/new-model}}
"""


def test_only_a_tracks_own_familys_sampling_keys_its_render(
    offline_hub: Path, tmp_path: Path, tiny_acestep_dir: Path
) -> None:
    """Tuning one family in a mixed soundtrack re-renders that family's tracks, not the others
    (a local folder's family read from its files); a hub id nothing at hand knows keeps every
    block in its keys, which a download later must not change."""
    from soundtrack.manifest import load_manifest
    from soundtrack.resolve import resolve_tracks

    (tmp_path / "ace").symlink_to(tiny_acestep_dir)
    keys = {}
    for name, sampling in [
        ("none", "{}"),
        ("musicgen", "{temperature: 0.9}"),
        ("ace-step", "{ace-step: {steps: 6}}"),
        ("stable-audio", "{stable-audio: {steps: 50}}"),
    ]:
        path = tmp_path / "m.yaml"
        path.write_text(KEYS.format(sampling=sampling))
        specs = resolve_tracks(load_manifest(path), tmp_path)
        keys[name] = {s.id: (s.spec_hash, s.generation_key) for s in specs}
    changed = {
        family: {t for t in keys["none"] if keys[family][t] != keys["none"][t]}
        for family in ("musicgen", "ace-step", "stable-audio")
    }
    assert changed == {
        "musicgen": {"mg", "new"},
        "ace-step": {"ace", "local", "new"},
        "stable-audio": {"sao", "new"},
    }
    put_in_cache(offline_hub, "someone/new-model", "config.json", '{"model_type": "bark"}')
    path.write_text(KEYS.format(sampling="{ace-step: {steps: 6}}"))
    specs = resolve_tracks(load_manifest(path), tmp_path)
    assert {s.id: (s.spec_hash, s.generation_key) for s in specs} == keys["ace-step"]


def validate_text(folder: Path, text: str) -> tuple[int, str]:
    (folder / "m.yaml").write_text(text)
    return run(folder, "validate", "m.yaml")


def test_a_models_problems_name_the_field_and_line_that_set_them(
    offline_hub: Path, tmp_path: Path
) -> None:
    """They named the track alone, where every other problem of `validate` names its field and
    line; a value the defaults set is named where the defaults set it."""
    text = (
        "schema: 1\nsoundtrack: t\nstorage: ./out\nusage: commercial\n"
        "defaults: {duration: 20, model: suno/bark-small}\ntracks:\n"
        "  - id: a\n    prompt: x\n    negative_prompt: drums\n"
        "  - id: b\n    prompt: y\n    duration: 5\n    model: facebook/musicgen-small\n"
        "    lyrics: la la\n"
    )
    code, said = validate_text(tmp_path, text)
    assert code == 2, said
    for expected in (
        "defaults.duration (line 5): track a: model suno/bark-small: duration 20 s is longer",
        "tracks[0].negative_prompt (line 9): track a: model suno/bark-small: bark models take no",
        "tracks[1].lyrics (line 14): track b: model facebook/musicgen-small: musicgen models take",
        "tracks[1].model (line 13): track b: model facebook/musicgen-small: its licence CC-BY-NC",
    ):
        assert expected in said, said


STABLE = "stabilityai/stable-audio-open-1.0"
ACE = "ACE-Step/acestep-v15-turbo-diffusers"


@pytest.mark.parametrize(
    ("model", "length", "extra"),
    [
        (STABLE, "duration: 46.5", ""),
        # Renders exactly 47 s at the length it names: not floored a tenth short.
        (STABLE, "duration: 70.5", "    loop_crossfade_ms: 1000\n"),
        (STABLE, "bars: 40", "    bpm: 100\n"),
        (STABLE, "bars: 16", "    bpm: 60\n    loop_crossfade_ms: 1000\n"),
        (STABLE, "duration: 60", "    bpm: 90\n    time_signature: 6/8\n"),
        (ACE, "duration: 599.5", ""),
    ],
)
def test_a_loop_too_long_for_its_model_is_told_the_longest_that_fits(
    offline_hub: Path, tmp_path: Path, model: str, length: str, extra: str
) -> None:
    text = MANIFEST.format(duration=1, model=model).replace("duration: 1", length)
    code, said = validate_text(tmp_path, text + "    loop: true\n" + extra)
    assert code == 2 and "with the room a loop renders to find its seam (" in said, said
    family, longest = ("stable-audio", 47) if model == STABLE else ("ace-step", 600)
    assert f"fits) is longer than {family} models render ({longest} s at most)" in said, said
    found = re.search(r"a loop of at most ([0-9.]+) (s|bars)", said)
    assert found is not None, said
    fits, unit = float(found[1]), found[2]
    # The length it names fits, and a tenth of a second (a bar) more does not.
    field, step = ("bars", 1) if unit == "bars" else ("duration", 0.1)
    for value, expected in ((fits, 0), (round(fits + step, 1), 2)):
        number = int(value) if unit == "bars" else value
        manifest = text.replace(length, f"{field}: {number}") + "    loop: true\n" + extra
        assert validate_text(tmp_path, manifest)[0] == expected, (value, said)


def test_a_bar_loop_renders_room_for_the_whole_bars_it_is_cut_to() -> None:
    """30 s at 140 bpm is cut to the nearest whole bars, 18 (30.86 s): its render held 30 s at
    the slowest tempo the gate allows, short of them by 0.9 s when its first downbeat came late."""
    mastering = Mastering(loudness=LOUDNESS_PROFILES["console"])
    bar_s = 4 * 60 / 140
    slowest_s = 1.0 + GateLimits.tempo_tolerance_pct / 100.0
    rendered = seconds_to_render(30.0, mastering, loop=True, bar_s=bar_s)
    assert rendered >= 18 * bar_s * slowest_s + bar_s  # the bars, after a downbeat a bar in
    # Nearer the bars below (16, 27.4 s), it holds the duration asked.
    plain = seconds_to_render(27.9, mastering, loop=True)
    assert seconds_to_render(27.9, mastering, loop=True, bar_s=bar_s) == pytest.approx(
        plain + 27.9 * (slowest_s - 1.0) + bar_s
    )


@pytest.mark.parametrize(
    ("extra", "none_fits"),
    [
        # A 12 s bar at 20 bpm within Bark's 14 s: it was told "at most 1.2 s".
        ("    bpm: 20\n", "no loop of whole 12 s bars at 20 bpm fits"),
        # 8.6 s fit the render, but a loop is 10.4 s at least with a 5 s crossfade.
        ("    loop_crossfade_ms: 5000\n", "no loop fits"),
    ],
)
def test_a_loop_no_render_can_hold_says_none_fits(
    offline_hub: Path, tmp_path: Path, extra: str, none_fits: str
) -> None:
    text = MANIFEST.format(duration=12, model="suno/bark-small")
    code, said = validate_text(tmp_path, text + "    loop: true\n" + extra)
    assert code == 2 and f"; {none_fits}) is longer than bark models render" in said, said


ACE_INDEX = {
    "_class_name": "AceStepPipeline",
    "vae": ["diffusers", "AutoencoderOobleck"],
    "text_encoder": ["transformers", "Qwen3Model"],
    "tokenizer": ["transformers", "Qwen2TokenizerFast"],
    "transformer": ["diffusers", "AceStepTransformer1DModel"],
    "condition_encoder": ["diffusers", "AceStepConditionEncoder"],
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
}
ACE_CONFIGS = (
    "vae/config.json, text_encoder/config.json, tokenizer/tokenizer_config.json, "
    "transformer/config.json, condition_encoder/config.json"
)


@pytest.mark.parametrize(
    ("files", "said"),
    [
        ({"model_index.json": {**ACE_INDEX, "_class_name": ["pipe", "Evil"]}}, "['pipe', 'Evil']"),
        ({"model_index.json": {**ACE_INDEX, "_class_name": "AudioLDM2Pipeline"}}, "AudioLDM2"),
        ({"model_index.json": {**ACE_INDEX, "vae": [["x"], ["y"]]}}, "component 'vae' is [['x']"),
        ({"model_index.json": {**ACE_INDEX, "scheduler": ["evil", "S"]}}, "never custom code"),
        ({"model_index.json": {**ACE_INDEX, "extra": ["diffusers", "X"]}}, "no such component"),
        ({"model_index.json": {**ACE_INDEX, "vae": [None, None]}}, "leaves out vae, which Ace"),
        ({"model_index.json": ACE_INDEX}, f"lacks: {ACE_CONFIGS}, scheduler/scheduler_config"),
        (
            # tokenizer.json alone: the render crashed on the length it then took (10^30)
            {
                "model_index.json": ACE_INDEX,
                "scheduler/scheduler_config.json": {},
                "tokenizer/tokenizer.json": {},
                **{
                    f"{n}/config.json": {}
                    for n in ACE_INDEX
                    if n not in ("_class_name", "scheduler", "tokenizer")
                },
            },
            "lacks: tokenizer/tokenizer_config.json;",
        ),
        (
            {
                "model_index.json": ACE_INDEX,
                "scheduler/scheduler_config.json": {},
                "vae/diffusion_pytorch_model.safetensors": b"\x02" + b"\0" * 7 + b"{}",
            },
            f"lacks: {ACE_CONFIGS};",
        ),
        ({"model_index.json": ["AceStepPipeline"]}, "holds list, not a JSON object"),
        ({"model_index.json": b"\xff\xfe{"}, "unreadable model_index.json"),
        ({"config.json": {"model_type": "musicgen_melody"}}, "'musicgen_melody' has no backend"),
        ({"config.json": {"model_type": ["bark"]}}, "config.json has no model_type"),
        ({"config.json": "{not json"}, "unreadable config.json"),
        ({"weights.safetensors": b""}, "not a model directory"),
        ({"config.json": {"format": "soundtrack-demucs"}}, "a separation model (Demucs): name it"),
        ({"config.json": {"model_type": "musicgen"}}, "holds no weights as safetensors"),
        (
            {"config.json": {"model_type": "bark"}, "model.safetensors": b"\xff" * 64},
            "model.safetensors is not a safetensors file (a header of",
        ),
        (
            {
                "config.json": {"model_type": "bark"},
                "model.safetensors": b"\x04" + b"\0" * 7 + b"[1] ",
            },
            "its header is not a JSON object",
        ),
    ],
)
def test_a_local_folder_is_read_as_a_build_reads_it(
    tmp_path: Path, files: dict[str, object], said: str
) -> None:
    """validate reads a local model folder's files (never its weights) with the loader's own
    rules: a folder a build would refuse exits 2 at validate, naming what is wrong, not "limits
    unchecked"; `build` exits 2 the same way before anything is written."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name, content in files.items():
        data = content if isinstance(content, (bytes, str)) else json.dumps(content)
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    code, output = validate(tmp_path, 5, "./model")
    assert code == 2, output
    assert f"track line: model '{folder}': " in output and said in output, output
    assert "limits unchecked" not in output and "Traceback" not in output

    code, output = run(tmp_path, "build", "m.yaml")
    assert code == 2 and said in output, output
    assert not (tmp_path / "out").exists()


def test_melody_checkpoints_are_known_for_their_licence_but_have_no_backend(
    offline_hub: Path, tmp_path: Path
) -> None:
    code, said = validate(tmp_path, 5, "facebook/musicgen-melody")
    assert code == 2, said
    assert "musicgen-melody models have no backend in this version" in said
    code, said = validate(tmp_path, 5, "facebook/musicgen-stereo-small")
    assert code == 0, said


def test_a_model_path_that_is_no_folder_is_refused_at_validate(tmp_path: Path) -> None:
    """A path (./, /, ~) never names a hub model: one that is not a folder is an error, named
    against the manifest's folder, not "limits unchecked"."""
    code, said = validate(tmp_path, 5, "./missing")
    assert code == 2 and f"model '{tmp_path / 'missing'}': no such directory" in said, said
    (tmp_path / "weights.safetensors").write_bytes(b"")
    code, said = validate(tmp_path, 5, "./weights.safetensors")
    assert code == 2 and "a file, not a model directory" in said, said
    assert "limits unchecked" not in said


def test_a_flat_sampling_in_defaults_is_musicgens_and_other_families_ignore_it(
    offline_hub: Path, tmp_path: Path
) -> None:
    ace_step = "ACE-Step/acestep-v15-xl-turbo-diffusers"
    text = MANIFEST.format(duration=12, model=ace_step).replace(
        "defaults: {formats: [ogg]}", "defaults: {formats: [ogg], sampling: {temperature: 0.9}}"
    )
    assert "temperature: 0.9" in text
    code, said = validate_text(tmp_path, text)
    assert code == 0, said
    code, said = validate_text(tmp_path, text + "    sampling: {top_k: 100}\n")
    assert code == 2 and "track line: model " in said and "take their own block" in said, said
