"""The approval step in the Prefect UI: the build flow pauses with a form, one answer per track."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as NotYet
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger, pause_flow_run
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput
from prefect.settings import get_current_settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from flows.markdown import literal
from soundtrack.approval import Candidate, Verdict, candidates_report
from soundtrack.review_server import HOST, CandidateSite, make_server

# How often the paused flow asks the server whether it was answered, or cancelled.
POLL_S = 5


class ReviewCancelled(Exception):
    """The run was cancelled (in the Prefect UI) while it waited for its review."""


class Answer(BaseModel):
    """A reviewer's answer about one track."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approve", "reject"] = Field(
        description="approve: publish this take; reject: the next build renders the next take."
    )
    comment: str = Field(
        default="", max_length=2000, description="Why (kept in the lock, shown on the review page)."
    )


def review_form(candidates: Sequence[Candidate]) -> type[RunInput]:
    """The input form: one required answer per track, keyed by track id."""
    fields: dict[str, Any] = {
        f"track_{i}": (
            Answer,
            Field(alias=c.spec.id, title=c.spec.id, description=_summary(c)),
        )
        for i, c in enumerate(candidates)
    }
    return create_model("SoundtrackReview", __base__=RunInput, **fields)


def ask_in_prefect_ui(
    candidates: Sequence[Candidate], staging: Path, timeout_s: float
) -> Mapping[str, Verdict] | None:
    """Pause this flow run until a reviewer answers its form (None after `timeout_s`)."""
    logger = get_run_logger()
    first = candidates[0].spec
    report = candidates_report(candidates, staging, first.soundtrack, "staging")
    with _serving(CandidateSite(report, staging)) as page_url:
        description = _description(candidates, staging, page_url)
        form = review_form(candidates).with_initial_data(description=description)
        logger.warning(
            "waiting up to %g s for a review of %d track(s): answer at %s; listen at %s",
            timeout_s,
            len(candidates),
            where_to_answer(),
            page_url,
        )
        try:
            answers = _paused(form, timeout_s)
        except FlowPauseTimeout:
            logger.error("nobody answered the review within %g s: nothing is published", timeout_s)
            return None
    given = answers.model_dump(by_alias=True)
    return {
        track_id: Verdict(answer["decision"] == "approve", answer["comment"])
        for track_id, answer in given.items()
    }


def _paused(form: type[RunInput], timeout_s: float) -> RunInput:
    """The reviewer's answers, as `pause_flow_run` waits for them; ReviewCancelled once the run
    is cancelled, which Prefect's wait does not notice (it waits for a resume until timeout)."""
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None  # in the build flow
    run_id = context.flow_run.id
    answered: Future[RunInput] = Future()

    def wait() -> None:
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                left_s = round(deadline - time.monotonic())
                if left_s < 1:
                    raise FlowPauseTimeout("the review was not answered in time")
                try:
                    answers = pause_flow_run(
                        wait_for_input=form, timeout=left_s, poll_interval=POLL_S
                    )
                except ValidationError:
                    # Resumed with no answers (its state set to Running by hand): nothing can
                    # be published unreviewed, so the form is asked again.
                    get_run_logger().warning(
                        "the run was resumed without the review's answers: asking again"
                    )
                    time.sleep(POLL_S)  # however it came about, never a loop on the API
                    continue
                answered.set_result(answers)
                return
        except BaseException as exc:  # handed to the build's thread, which raises it
            answered.set_exception(exc)

    # The wait runs beside this thread, in the flow run's context; left waiting when the run is
    # cancelled, it only reads the run's state until its timeout or the process's end.
    waiting = contextvars.copy_context()
    threading.Thread(target=waiting.run, args=(wait,), name="review-wait", daemon=True).start()
    with get_client(sync_client=True) as client:
        while True:
            try:
                return answered.result(timeout=POLL_S)
            except NotYet:
                state = client.read_flow_run(run_id).state
            if state is not None and (state.is_cancelling() or state.is_cancelled()):
                raise ReviewCancelled("cancelled while waiting for the review: nothing published")


def where_to_answer() -> str:
    """The flow run's page in the Prefect UI (its id when the UI's address is unknown)."""
    context = FlowRunContext.get()
    run_id = context.flow_run.id if context and context.flow_run else "?"
    ui = get_current_settings().ui_url
    return f"{ui}/runs/flow-run/{run_id}" if ui else f"flow run {run_id} in the Prefect UI"


@contextmanager
def _serving(site: CandidateSite) -> Iterator[str]:
    """The candidates' review page served on 127.0.0.1 while the build waits; its URL."""
    server = make_server(site, 0)
    thread = threading.Thread(target=server.serve_forever, name="review-page", daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def _summary(candidate: Candidate) -> str:
    spec, outcome = candidate.spec, candidate.outcome
    warned = [g.name for g in outcome.gates if not g.passed]
    parts = [f"take {spec.take + 1} (seed {spec.seed})", f"{spec.duration_s:g} s"]
    if spec.variation_of:
        parts.append(f"variation of {spec.variation_of}")
    if warned:  # a team's expectation names its own gates
        parts.append(f"warnings: {literal(', '.join(warned))}")
    return "; ".join(parts)


def _description(candidates: Sequence[Candidate], staging: Path, page_url: str) -> str:
    lines = [
        f"**{len(candidates)} track(s) passed their gates and wait for you.** Approve or reject "
        "each; a rejected take is not published and the next build renders the next take.",
        "",
        f"Listen to the takes: [{page_url}]({page_url}) (served by the build, on the machine "
        f"it runs on; the files are staged in {literal(str(staging))}).",
        "",
    ]
    lines += [
        f"- **{c.spec.id}**: {literal(c.spec.prompt or '')} ({_summary(c)})" for c in candidates
    ]
    return "\n".join(lines)
