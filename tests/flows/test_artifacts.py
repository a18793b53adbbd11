"""The build's UI artifacts are its window, not its work: a server that stops taking them
(one gone away mid-build) costs one warning, never the build."""

from __future__ import annotations

import logging
import uuid

import pytest

from flows.artifacts import BuildArtifacts
from soundtrack.report import TrackRecord
from tests.prefect_server import PrefectServer


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
