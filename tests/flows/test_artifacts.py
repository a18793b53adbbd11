"""The build's UI artifacts are its window, not its work: a server that stops taking them
(one gone away mid-build) costs one warning, never the build."""

from __future__ import annotations

import logging
import uuid

import pytest

from flows.artifacts import BuildArtifacts
from soundtrack.report import BuildReport, FileRecord, TrackRecord
from tests.prefect_server import PrefectServer
from tests.running import run_artifacts


def test_artifacts_the_server_refuses_cost_one_warning_not_the_build(
    prefect_server: PrefectServer, caplog: pytest.LogCaptureFixture
) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @flow
    def build_whose_progress_card_is_gone() -> int:
        artifacts = BuildArtifacts(f"gone-{uuid.uuid4().hex[:8]}", 3)
        with get_client(sync_client=True) as client:
            client.delete_artifact(artifacts._progress)  # the server no longer has it
        for track in ("a", "b", "c"):
            artifacts.track_done(TrackRecord(id=track, status="approved", spec_hash="ab"))
        return artifacts.done

    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}),
        caplog.at_level(logging.WARNING),
    ):
        assert build_whose_progress_card_is_gone() == 3
        APILogHandler().flush()  # to this server: after the block there is none to send them to
    warnings = [r for r in caplog.records if "stops showing this build's progress" in r.message]
    assert len(warnings) == 1, [r.message for r in caplog.records]


def test_a_build_whose_lock_was_not_written_shows_nothing_published(
    prefect_server: PrefectServer,
) -> None:
    """The links artifact listed every approved file as published when the lock's write
    failed (or a publish did): no lock names them, on a folder they are not even there."""
    from prefect import flow
    from prefect.context import get_run_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    record = TrackRecord(
        id="a",
        status="approved",
        spec_hash="ab",
        files=[
            FileRecord(
                format="ogg",
                key="s/a.ogg",
                uri="file:///out/s/a.ogg",
                sha256="0" * 64,
                bytes=1,
                duration_s=2.0,
                sample_rate=44100,
                channels=2,
            )
        ],
    )
    report = BuildReport(soundtrack="s", storage="./out", model_loads=0, tracks=[record])

    @flow
    def build_whose_lock_failed() -> object:
        artifacts = BuildArtifacts("s", 1)
        artifacts.track_done(record)
        artifacts.finished(report, [], "writing the index failed: disk full")
        return get_run_context().flow_run.id  # type: ignore[union-attr]

    from prefect.logging.handlers import APILogHandler

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        run_id = build_whose_lock_failed()
        APILogHandler().flush()
    (links,) = [a for a in run_artifacts(prefect_server.api_url, run_id) if a.key == "s-assets"]
    assert "Nothing published: writing the index failed: disk full" in str(links.data)
    assert "a.ogg" not in str(links.data) and links.description == "Not published"
