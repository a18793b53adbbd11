"""Running the `soundtrack` CLI the way a user does, for the end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect.client.schemas.objects import Artifact, FlowRun

SOUNDTRACK = str(Path(sys.executable).with_name("soundtrack"))


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
