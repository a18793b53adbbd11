"""Waits a task makes on something outside its build (the GPU, a render pool), each of which a
stopped build must be able to end: Prefect stops a flow on SIGTERM or Ctrl-C and then waits for
its task threads, so a wait with no end kept a stopped build alive until the other build, or a
worker that never came, was done."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, cast

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling

from soundtrack.errors import InputError, SoundtrackError

POLL_S = 0.5  # how soon a wait notices its build stopped
POOL_POLL_S = 2.0  # between reads of a render-pool run's state
POOL_NOTICE_S = 60.0  # a run no worker took for this long is worth a line, then every 5 min
STOPPING = threading.Event()  # the build was told to stop


class Stopped(SoundtrackError):
    """The build was stopped (SIGTERM, Ctrl-C) while a task waited."""


@contextmanager
def stop_waits_on_signals() -> Iterator[None]:
    """While a build runs in this, the main, thread: SIGTERM and SIGINT also end the waits of
    its tasks, then do what they did (Prefect's handler stops the flow)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # a flow run in a thread (a test's): its process's signals are not its own
        return
    STOPPING.clear()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    # An ignored signal (SIGINT in a background job) stops nothing: it stays ignored.
    before = {sig: handler for sig, handler in handlers.items() if handler != signal.SIG_IGN}

    def stop(signum: int, frame: FrameType | None) -> None:
        STOPPING.set()
        handler = before[signal.Signals(signum)]
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    for sig in before:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def wait_until(took: Callable[[], bool], waiting: str, *, log: bool = True) -> None:
    """Call `took` until it says it took what it waits for; log `waiting` once (unless not
    `log`); raise Stopped when the build is stopped meanwhile."""
    logged = not log
    while not took():
        if not logged and not STOPPING.is_set():  # stopped meanwhile: it waits no more
            get_run_logger().info(waiting)
            logged = True
        if STOPPING.wait(POLL_S):
            raise Stopped(f"the build was stopped while it waited ({waiting})")


def check_deployment(name: str) -> None:
    """InputError unless the Prefect server has deployment `name` (flow/deployment)."""
    if name.count("/") != 1 or not all(name.split("/")):
        raise InputError(
            f"render pool {name!r} is not a deployment name: give flow/deployment, e.g. "
            "render-batch/gpu"
        )
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise InputError(
                f"render pool {name!r}: the Prefect server at {client.api_url} has no such "
                "deployment (deploy it with `prefect deploy`: docs/operations.md)"
            ) from None


def run_on_pool(deployment: str, parameters: dict[str, Any]) -> FlowRun:
    """Start a run of `deployment` and wait for it to end, saying so while no worker takes it;
    a stopped build cancels it (no worker renders for a build that is gone)."""
    child = cast(FlowRun, run_deployment(deployment, parameters=parameters, timeout=0))
    logger = get_run_logger()
    started = time.monotonic()
    notice_at = POOL_NOTICE_S
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(child.id)
            if run.state is not None and run.state.is_final():
                return run
            if STOPPING.wait(POOL_POLL_S):
                queued = run.state is None or run.state.is_scheduled() or run.state.is_pending()
                why = "its build was stopped"
                stopped: State[Any] = Cancelled(message=why) if queued else Cancelling(message=why)
                client.set_flow_run_state(child.id, stopped, force=True)
                raise Stopped(f"the build was stopped; its render-batch run {child.name!r} too")
            waited_s = time.monotonic() - started
            if waited_s >= notice_at and run.state is not None and run.state.is_scheduled():
                deployment_id = child.deployment_id
                pool = (
                    client.read_deployment(deployment_id).work_pool_name if deployment_id else "?"
                )
                logger.warning(
                    f"render-batch run {child.name!r} has waited {waited_s:.0f} s for a worker: "
                    f"is one polling work pool {pool!r}? (docs/operations.md)"
                )
                notice_at += 300.0
