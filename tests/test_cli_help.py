"""Every command explains itself: --help works and says what the command does and exits with."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from soundtrack.cli import app

runner = CliRunner()
COMMANDS = [
    [],
    ["validate"],
    ["schema"],
    ["generate"],
    ["inspect"],
    ["compare"],
    ["build"],
    ["gc"],
    ["review"],
    ["models"],
    ["models", "make-tiny"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "soundtrack")
def test_help_explains_the_command(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    text = " ".join(result.output.split())
    assert len(text) > 200, "a sentence or more of explanation"
    if command and command != ["models"]:
        assert "Exit" in text or "exit" in text or command[0] in ("schema", "models")


def test_every_command_is_covered() -> None:
    commands = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    names = commands | {g.name for g in app.registered_groups}
    assert names <= {c[0] for c in COMMANDS if c}


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"soundtrack-pipeline {version('soundtrack-pipeline')}\n"


LONG = "x" * 300  # a name no file system holds (255 bytes at most)


@pytest.mark.parametrize(
    "command",
    [
        ["validate", f"{LONG}.yaml"],
        ["build", f"{LONG}.yaml"],
        ["build", "m.yaml", "--report", f"{LONG}.json"],
        ["build", "m.yaml", "--junit", f"{LONG}.xml"],
        ["build", "m.yaml", "--model", f"./{LONG}"],
        ["inspect", f"{LONG}.wav"],
        ["compare", "a.wav", f"{LONG}.wav"],
        ["schema", "-o", f"{LONG}.json"],
        ["models", "make-tiny", LONG],
        ["models", "convert-demucs", f"{LONG}.th", "out"],
        ["generate", "--model", f"./{LONG}", "--prompt", "calm", "--duration", "2"],
        ["generate", "--model", "m", "--prompt", "calm", "--duration", "2", "-o", f"{LONG}.wav"],
    ],
    ids=lambda c: " ".join(a for a in c if LONG not in a),
)
def test_a_path_no_file_system_can_hold_is_bad_input(command: list[str], tmp_path: Path) -> None:
    """Each of these ended in an OSError traceback (File name too long), exit 1."""
    (tmp_path / "m.yaml").write_text(
        "schema: 1\nsoundtrack: t\nstorage: ./out\ntracks:\n  - {id: a, prompt: x}\n"
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = runner.invoke(app, command)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 2, result.output
    assert "longer than 255 bytes" in " ".join(result.output.replace("│", " ").split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]


@pytest.mark.parametrize(
    ("field", "said"),
    [
        (f"source: {LONG}.wav", "tracks[0].source"),
        (f"reference: {LONG}.wav", "tracks[0].reference"),
        (f"model: ./{LONG}", "tracks[0].model"),
        (f"stems: [drums]\n    stem_model: {LONG}", "tracks[0].stem_model"),
        ("model: org/name-", "no such directory"),
        ("model: org/na--me", "no such directory"),
        (f"model: org/{'n' * 97}", "no such directory"),
    ],
)
def test_a_manifest_path_or_id_no_one_can_hold_is_named_as_bad_input(
    field: str, said: str, tmp_path: Path
) -> None:
    """Names over 255 bytes, and ids the hub refuses (which huggingface_hub raised on), ended
    `validate` in a traceback, exit 1."""
    (tmp_path / "m.yaml").write_text(
        "schema: 1\nsoundtrack: t\nstorage: ./out\ndefaults: {duration: 3}\ntracks:\n"
        f"  - id: a\n    prompt: x\n    {field}\n"
    )
    result = runner.invoke(app, ["validate", str(tmp_path / "m.yaml")])
    assert result.exit_code == 2, result.output
    assert said in result.output and "Traceback" not in result.output
