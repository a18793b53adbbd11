"""Every command explains itself: --help works and says what the command does and exits with."""

from __future__ import annotations

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
