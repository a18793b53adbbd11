"""Model families: known from a checkpoint's files, the catalogue or the hub cache, without
weights or network; every track held to what its family renders, at validate and again at build."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from soundtrack.catalog import FAMILIES, family_name
from soundtrack.cli import app
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


def validate(folder: Path, duration: float, model: str) -> tuple[int, str]:
    (folder / "m.yaml").write_text(MANIFEST.format(duration=duration, model=model))
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = CliRunner().invoke(app, ["validate", "m.yaml"])
    finally:
        os.chdir(cwd)
    return result.exit_code, " ".join(result.output.split())


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
    put_in_cache(
        offline_hub, "someone/pipe", "model_index.json", '{"_class_name": "AceStepPipeline"}'
    )
    assert family_name("someone/pipe") == "ace-step"


def test_validate_holds_a_track_to_its_family(offline_hub: Path, tmp_path: Path) -> None:
    code, said = validate(tmp_path, 20, "suno/bark-small")
    assert code == 2, said
    assert "track line: model suno/bark-small: duration 20 s is longer than a bark model" in said
    assert f"({FAMILIES['bark'].max_call_s:g} s at most)" in said
    assert "bark models have no backend in this version" in said

    code, said = validate(tmp_path, 60, "ACE-Step/acestep-v15-xl-turbo-diffusers")
    assert code == 0, said

    code, said = validate(tmp_path, 20, "someone/new-model")
    assert code == 0, said
    assert "someone/new-model: limits unchecked until the weights are present" in said
