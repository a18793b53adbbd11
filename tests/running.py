"""Running the `soundtrack` CLI the way a user does, for the end-to-end tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect.client.schemas.objects import Artifact, FlowRun

SOUNDTRACK = str(Path(sys.executable).with_name("soundtrack"))

# SIGTERM arrives once the first weights file is written (a model's folder half written).
_TERMINATED_AFTER_THE_WEIGHTS = """
import os, signal, sys, time
import safetensors.torch
save = safetensors.torch.save_file
def saving(*args, **kwargs):
    save(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
safetensors.torch.save_file = saving
from soundtrack.cli import app
app(sys.argv[1:], prog_name="soundtrack")
"""


def stopped_after_the_weights(*args: str) -> subprocess.CompletedProcess[str]:
    """`soundtrack ARGS`, sent SIGTERM once it has written its first weights file."""
    return subprocess.run(
        [sys.executable, "-c", _TERMINATED_AFTER_THE_WEIGHTS, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def build(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`soundtrack build m.yaml ARGS` in `workdir`; never raises on a non-zero exit."""
    return subprocess.run(
        [SOUNDTRACK, "build", "m.yaml", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def statuses(report: dict[str, Any]) -> dict[str, str]:
    """Track id -> status of a report or lock."""
    return {track["id"]: track["status"] for track in report["tracks"]}


def build_runs(api_url: str, since: datetime) -> list[FlowRun]:
    """The build-soundtrack flow runs the Prefect server at `api_url` created since `since`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["build-soundtrack"]))
        )
    return [run for run in runs if run.created is not None and run.created >= since]


def task_run_names(api_url: str, flow_run_id: Any) -> list[str]:
    """The names of a flow run's task runs, as the Prefect UI lists them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return [run.name for run in runs]


def run_artifacts(api_url: str, flow_run_id: Any) -> list[Artifact]:
    """The artifacts a flow run created, as the Prefect server stores them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def paused_run(api_url: str, since: datetime, ended: Callable[[], object]) -> FlowRun:
    """The build's flow run once it is paused for its review (fails if `ended()` first)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert ended() is None, "the build ended before it paused for its review"
        runs = [run for run in build_runs(api_url, since) if run.state and run.state.is_paused()]
        if runs:
            return runs[0]
        time.sleep(0.5)
    raise AssertionError("the build never paused for review")


def review_form(api_url: str, run: FlowRun) -> tuple[dict[str, Any], str]:
    """The paused run's input form, as the UI shows it: its JSON schema and its description."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    assert run.state is not None and run.state.state_details.run_input_keyset
    keyset = run.state.state_details.run_input_keyset
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as api:
        # The form is saved a moment after the pause: wait for it as the UI would.
        deadline = time.monotonic() + 60  # a busy machine's server saves it seconds later
        while time.monotonic() < deadline:
            schema, description = (
                api.read_flow_run_input(run.id, keyset[part]) for part in ("schema", "description")
            )
            if schema and description:
                return json.loads(schema), json.loads(description)
            time.sleep(0.1)
    raise AssertionError("the paused run has no input form")


def answer(api_url: str, run: FlowRun, run_input: dict[str, Any]) -> None:
    """Resume the paused run with `run_input`, as the UI's form does."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as api:
        response = api.resume_flow_run(run.id, run_input=run_input)
    assert response.status.value == "ACCEPT", response


def free_gpu_slot(api_url: str, limit: str) -> None:
    """Free the GPU slot of a build that died holding it, with the request docs/operations.md
    gives an operator (the server itself frees it when the lease runs out, a minute later)."""
    request = urllib.request.Request(
        f"{api_url}/v2/concurrency_limits/{limit}",
        data=b'{"active_slots": 0}',
        headers={"Content-Type": "application/json"},
        method="PATCH",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status in (200, 204), response.status
