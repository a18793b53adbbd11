"""Where a process worker runs a flow run: its temporary folder, which it deletes afterwards."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from flows.build import worker_workspace


def test_a_run_in_a_process_workers_temporary_checkout_knows_the_folder_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As prefect's process worker makes it, with a git_clone step's checkout inside.
    with tempfile.TemporaryDirectory(suffix="prefect") as workspace:
        checkout = Path(workspace) / "game-main" / "audio"
        checkout.mkdir(parents=True)
        monkeypatch.chdir(checkout)
        assert worker_workspace() == Path(workspace).resolve()
        monkeypatch.chdir(tmp_path)
    assert worker_workspace() is None


def test_a_build_in_a_temporary_folder_of_its_own_is_no_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CI job's `mktemp -d` folder is not deleted under the build: its storage is kept."""
    with tempfile.TemporaryDirectory() as folder:
        monkeypatch.chdir(folder)
        assert worker_workspace() is None
        monkeypatch.chdir(tmp_path)
