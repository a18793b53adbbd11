"""The approval step (`review: required`) against a real Prefect server: the build pauses after
the gates with a form, the test answers it through Prefect's API as the UI would, and only what
the reviewer approved is published; the rejected take is recorded with the comment, and the
next build renders the next take. Unanswered past its timeout, the build publishes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from tests.prefect_server import PrefectServer
from tests.reference import sha256_of
from tests.running import SOUNDTRACK, answer, build, paused_run, review_form, statuses

pytestmark = pytest.mark.slow

MANIFEST = """\
schema: 1
soundtrack: reviewed
storage: ./out
review: required
review_timeout_s: {timeout}
defaults: {{duration: 2, formats: [ogg, wav]}}
tracks:
  - id: harbour
    prompt: harbour at dawn, [soft strings](https://example.com)
    seed: 21
  - id: chase
    prompt: rooftop chase, fast drums
    seed: 22
"""


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path, prefect_server: PrefectServer) -> Any:
    env = {
        **os.environ,
        **prefect_server.env,
        "PREFECT_HOME": str(tmp_path / "prefect-client"),
        "SOUNDTRACK_CACHE_DIR": str(tmp_path / "cache"),
    }
    env.pop("SOUNDTRACK_STORAGE", None)
    return tmp_path, env, ["--model", str(tiny_model_dir)]


def candidate_page(description: str) -> tuple[str, dict[str, bytes]]:
    """The candidates' review page the form links to, and each OGG it plays, by file name."""
    (url,) = set(re.findall(r"\((http://127\.0\.0\.1:\d+/)\)", description))
    page = urllib.request.urlopen(url, timeout=30).read().decode()
    oggs = {
        link.rpartition("/")[2]: urllib.request.urlopen(url + link, timeout=30).read()
        for link in set(re.findall(r'src="([^"]+\.ogg)"', page))
    }
    return page, oggs


def started(
    workdir: Path, env: dict[str, str], args: list[str], timeout_s: int
) -> tuple[subprocess.Popen[str], datetime]:
    """A reviewed build started in the background, and a time before its flow run was made."""
    (workdir / "m.yaml").write_text(MANIFEST.format(timeout=timeout_s))
    since = datetime.now(UTC)
    process = subprocess.Popen(
        [SOUNDTRACK, "build", "m.yaml", *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, since


def resume_without_answer(api_url: str, run: Any) -> None:
    """Force the paused run to Running without its input, as the UI's state menu can."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Running

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as api:
        api.set_flow_run_state(run.id, Running(), force=True)


def test_a_reviewer_approves_one_track_and_rejects_the_other_with_a_comment(
    project: Any, prefect_server: PrefectServer
) -> None:
    workdir, env, args = project
    out = workdir / "out" / "reviewed"
    process, since = started(workdir, env, args, timeout_s=300)
    try:
        run = paused_run(prefect_server.api_url, since, process.poll)
        # Paused before anything is published: no lock, no asset, and the storage let go.
        assert not (out / "soundtrack.lock.json").exists()
        assert not out.exists() or not list(out.glob("*.ogg"))
        # Set running by hand (the UI's "Change state"), with no answer: asked again, not a
        # traceback, and nothing published unreviewed.
        resume_without_answer(prefect_server.api_url, run)
        asked_first = run.state.state_details.pause_key if run.state else None
        run = paused_run(prefect_server.api_url, since, process.poll)
        assert run.state is not None and run.state.state_details.pause_key != asked_first
        schema, description = review_form(prefect_server.api_url, run)
        # A prompt is shown as written, not as Markdown: its link is no link.
        assert "](https" not in description and "\\[soft strings\\]" in description
        page, oggs = candidate_page(description)
        answer(
            prefect_server.api_url,
            run,
            {
                "harbour": {"decision": "approve"},
                "chase": {"decision": "reject", "comment": "too busy under dialogue"},
            },
        )
        output, _ = process.communicate(timeout=300)
    finally:
        process.kill()
    # One field per rendered track, keyed by its id, each a required approve/reject answer.
    assert set(schema["properties"]) == {"harbour", "chase"}
    assert set(schema["required"]) == {"harbour", "chase"}
    assert "answer at" in output and str(run.id) in output, output
    assert "resumed without the review's answers: asking again" in output, output
    assert "Traceback" not in output, output
    assert process.returncode == 1, output  # a track was rejected

    lock = json.loads((out / "soundtrack.lock.json").read_text())
    tracks = {track["id"]: track for track in lock["tracks"]}
    assert statuses(lock) == {"harbour": "approved", "chase": "rejected"}
    for entry in tracks["harbour"]["files"]:
        assert sha256_of(out / f"harbour.{entry['format']}") == entry["sha256"]
    assert not list(out.glob("chase*")), "a rejected take is not published"
    assert "too busy under dialogue" in tracks["chase"]["reason"]
    (rejection,) = tracks["chase"]["rejected_in_review"]
    assert (rejection["take"], rejection["seed"]) == (0, 22)
    assert "too busy under dialogue" in output  # the report table says why
    # The form linked to a page of the takes, served while the build waited: the approved
    # take's file there is the one published.
    assert "harbour" in page and "chase" in page
    assert set(oggs) == {"harbour.ogg", "chase.ogg"}
    ogg = next(f for f in tracks["harbour"]["files"] if f["format"] == "ogg")
    assert hashlib.sha256(oggs["harbour.ogg"]).hexdigest() == ogg["sha256"]

    # The next build (review off) renders the next take of the re-roll sequence: seed 23.
    (workdir / "m.yaml").write_text(MANIFEST.format(timeout=300).replace("review: required\n", ""))
    rebuilt = build(workdir, env, *args)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    lock = json.loads((out / "soundtrack.lock.json").read_text())
    tracks = {track["id"]: track for track in lock["tracks"]}
    assert statuses(lock) == {"harbour": "cached", "chase": "approved"}
    assert tracks["chase"]["seed"] == 23
    assert sf.info(str(out / "chase.wav")).duration == pytest.approx(2.0, abs=0.01)


def test_a_review_nobody_answers_times_out_publishing_nothing(
    project: Any, prefect_server: PrefectServer
) -> None:
    workdir, env, args = project
    (workdir / "m.yaml").write_text(MANIFEST.format(timeout=2))
    result = build(workdir, env, *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "nobody answered the review within 2 s" in result.stdout + result.stderr
    assert "build failed:" in result.stderr and "Traceback" not in result.stderr, result.stderr
    out = workdir / "out" / "reviewed"
    assert not (out / "soundtrack.lock.json").exists()
    published = [p.name for p in out.rglob("*.*") if p.suffix in (".ogg", ".wav", ".json", ".png")]
    assert not published


# The UI's Cancel, and its "change state" (or any API client) setting Cancelled outright.
@pytest.mark.parametrize("cancel", ["Cancelling", "Cancelled"])
def test_a_review_cancelled_in_the_ui_ends_the_build_publishing_nothing(
    project: Any, prefect_server: PrefectServer, cancel: str
) -> None:
    """Prefect's pause waits for a resume only: a cancelled build waited out its whole timeout
    (4 h by default), then died in an UnfinishedRun traceback."""
    from prefect import states
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    workdir, env, args = project
    process, since = started(workdir, env, args, timeout_s=600)
    try:
        run = paused_run(prefect_server.api_url, since, process.poll)
        settings = {PREFECT_API_URL: prefect_server.api_url}
        with temporary_settings(settings), get_client(sync_client=True) as api:
            api.set_flow_run_state(run.id, getattr(states, cancel)(), force=True)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, output
    assert "cancelled" in output and "Traceback" not in output, output
    out = workdir / "out" / "reviewed"
    assert not (out / "soundtrack.lock.json").exists()
    published = [p.name for p in out.rglob("*.*")] if out.exists() else []
    assert not published, published
    with temporary_settings(settings), get_client(sync_client=True) as api:
        state = api.read_flow_run(run.id).state
    assert state is not None and state.is_cancelled(), state


def test_review_without_a_prefect_server_is_refused_before_anything_runs(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    (tmp_path / "m.yaml").write_text(MANIFEST.format(timeout=60))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_API_URL", None)
    for command in (["validate", "m.yaml"], ["build", "m.yaml", "--model", str(tiny_model_dir)]):
        result = subprocess.run(
            [SOUNDTRACK, *command], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert result.returncode == 2, result.stdout + result.stderr
        assert "PREFECT_API_URL" in result.stderr, result.stderr
    # A manifest that asks for no review, built with --review.
    (tmp_path / "m.yaml").write_text(MANIFEST.format(timeout=60).replace("review: required\n", ""))
    command = ["build", "m.yaml", "--review", "--model", str(tiny_model_dir)]
    result = subprocess.run(
        [SOUNDTRACK, *command], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "PREFECT_API_URL" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
