"""The build flow: soundtrack/build.py's build, its steps run as Prefect tasks, shown in the UI."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import State
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run as current_run
from prefect.settings import get_current_settings
from prefect.states import Cancelled, Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import Task
from pydantic import Field

from flows.artifacts import BuildArtifacts
from flows.review import ReviewCancelled, ask_in_prefect_ui
from soundtrack import steps
from soundtrack.build import MAX_WORKERS, Options, prepare, run
from soundtrack.errors import InputError, SoundtrackError
from soundtrack.plan import DEFAULT_BATCH_SIZE
from soundtrack.redaction import install_log_redaction, redact
from soundtrack.renders import RenderCache
from soundtrack.report import BuildReport
from soundtrack.spec import TrackSpec
from tasks.generate import GPU_LIMIT, generate_batch, generate_on_pool
from tasks.process import master_track, separate_on_pool, separate_stems
from tasks.publish import publish_track, write_index
from tasks.waits import check_deployment, stop_waits_on_signals

if TYPE_CHECKING:
    from soundtrack.process import TrackOutcome

T = TypeVar("T")

# Each step's task; a render is sent by TaskExecutor._render (here, or to the GPU pool).
TASKS: dict[Callable[..., Any], Task[Any, Any]] = {
    steps.master: master_track,
    steps.separate: separate_stems,
    steps.publish: publish_track,
    steps.write_index: write_index,
}


def worker_workspace() -> Path | None:
    """The temporary folder a process worker runs this flow run in and deletes when the run ends
    (tempfile's `tmp...prefect`, where a git_clone pull step checks the repository out), when
    the run is in one."""
    temp = Path(tempfile.gettempdir()).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (
            folder.parent == temp
            and folder.name.startswith("tmp")
            and folder.name.endswith("prefect")
        ):
            return folder
    return None


class BuildRejected(SoundtrackError):
    """A build that ran to its end with tracks rejected or failed, carrying its report: a failed
    run's result must be an exception (a deployed run's engine raises it)."""

    def __init__(self, message: str, report: BuildReport) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self) -> tuple[type[BuildRejected], tuple[str, BuildReport]]:
        return (BuildRejected, (str(self), self.report))


@dataclass(frozen=True)
class RenderPool:
    """Where generation batches and separations go instead of this machine: a render-batch
    deployment, whose renders and stems' sources come back through the build's storage."""

    deployment: str
    storage_url: str
    base_dir: str


class TaskExecutor:
    """Runs each step as its Prefect task (retries, caching, a name in the UI); a render, and
    the separation of a mix into stems, go to the GPU work pool's deployment when there is one."""

    def __init__(self, render_pool: RenderPool | None) -> None:
        self.render_pool = render_pool

    def submit(self, step: Callable[..., T], *args: Any, label: str) -> Future[T]:
        if step is steps.render:
            return _settled(self._render(label, *args))
        if step is steps.separate and self.render_pool is not None:
            return _settled(self._separate_on_pool(label, self.render_pool, *args))
        return _settled(TASKS[step].with_options(task_run_name=label).submit(*args))

    def _render(
        self, label: str, specs: list[TrackSpec], cache_dir: str, device: str | None
    ) -> PrefectFuture[Any]:
        if self.render_pool is not None:
            pool = self.render_pool
            return generate_on_pool.with_options(task_run_name=label).submit(
                specs, pool.deployment, device, cache_dir, pool.storage_url, pool.base_dir
            )
        # A cached task result is only a list of paths: when a render behind it is gone (a
        # cleaned cache folder), run the task again instead of reusing it.
        cache = RenderCache(Path(cache_dir))
        lost = not all(cache.holds(spec) for spec in specs)
        options = generate_batch.with_options(task_run_name=label, refresh_cache=lost)
        return options.submit(specs, cache_dir, device)

    @staticmethod
    def _separate_on_pool(
        label: str,
        pool: RenderPool,
        spec: TrackSpec,
        outcome: TrackOutcome,
        staging_dir: str,
        device: str | None,
    ) -> PrefectFuture[Any]:
        on_pool = separate_on_pool.with_options(task_run_name=label)
        return on_pool.submit(
            spec, outcome, staging_dir, device, pool.deployment, pool.storage_url, pool.base_dir
        )


def _settled(prefect_future: PrefectFuture[T]) -> Future[T]:
    """A standard future that ends as the task run does (after its retries)."""
    future: Future[T] = Future()

    def settle(done: PrefectFuture[T]) -> None:
        try:
            value = done.result(raise_on_failure=False)
        except (Exception, asyncio.CancelledError) as exc:  # cancelled: the build is stopping
            future.set_exception(exc)
            return
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)

    prefect_future.add_done_callback(settle)
    return future


def ensure_gpu_limit() -> None:
    """A concurrency limit that does not exist limits nothing: create this machine's (one batch
    at a time) on a Prefect server, leaving one that is there as its admin set it; the
    temporary server's builds take a lock file instead (gpu_slot)."""
    if not get_current_settings().api.url:
        return
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        except ObjectNotFound:
            # Another build of this machine may create it first.
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=1)
                )


@flow(
    name="build-soundtrack",
    # Prefect's TaskRunner generic is invariant, so mypy rejects its own thread-pool runner here.
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS),  # type: ignore[arg-type]
    validate_parameters=True,
)
def build_soundtrack(
    manifest: Annotated[str, Field(description="Path of the soundtrack manifest (YAML).")],
    only: Annotated[
        list[str] | None, Field(description="Build only these track ids (others stay as they are).")
    ] = None,
    force: Annotated[
        bool, Field(description="Rebuild tracks even when already published.")
    ] = False,
    out: Annotated[
        str | None,
        Field(
            description="Output folder or s3:// URL instead of the manifest's storage; a "
            "relative folder is relative to the manifest's folder, as its storage is."
        ),
    ] = None,
    model: Annotated[
        str | None, Field(description="Use this model (hub id or directory) for every track.")
    ] = None,
    device: Annotated[str | None, Field(description="cuda, mps or cpu; default: auto.")] = None,
    batch_size: Annotated[
        int, Field(ge=1, le=64, description="Tracks per generate call.")
    ] = DEFAULT_BATCH_SIZE,
    render_pool: Annotated[
        str | None,
        Field(
            description="Send each generation batch, and each mix to separate into stems, to "
            "this render-batch deployment (e.g. 'render-batch/gpu') on a GPU work pool; they "
            "come back through the storage."
        ),
    ] = None,
    storage_wait_s: Annotated[
        float | None,
        Field(
            ge=0,
            le=24 * 3600,
            description="Wait this long for another build of the soundtrack to the same storage "
            "to finish (default: the manifest's storage_wait_s).",
        ),
    ] = None,
    gates: Annotated[
        list[str] | None,
        Field(description="GATE=SEVERITY (fail, warn, off) for every track, e.g. tempo=warn."),
    ] = None,
    review: Annotated[
        bool,
        Field(
            description="Pause for a person to approve each rendered track before anything is "
            "published, whatever the manifest's review says."
        ),
    ] = False,
) -> BuildReport | State[Any]:
    """Build a soundtrack: generate, master, gate, encode and publish every changed track.

    A rejected or failed track, bad input, or storage failing or busy with another build of the
    soundtrack ends the run Failed with a one-line message (the report, or the error, as its
    result); only a bug raises.
    """
    # A worker runs this flow without the CLI, which installs the same redaction for its runs.
    install_log_redaction()
    logger = get_run_logger()
    options = Options(
        only=only or (),
        force=force,
        out=out,
        model=model,
        device=device,
        batch_size=batch_size,
        local_models=render_pool is None,
        storage_wait_s=storage_wait_s,
        gates=gates or (),
        review=review,
        discarded=worker_workspace(),
        build_name=current_run.name,
    )
    try:
        prepared = prepare(Path(manifest), options, logger)
        if render_pool is not None:
            check_deployment(render_pool)
    except InputError as exc:
        # Every problem, as the CLI prints them: the run's state is all a deployment's user sees.
        message = redact("\n  - ".join([str(exc), *exc.problems]))
        logger.error("bad input: %s", message)
        return Failed(message=message, data=exc)
    except SoundtrackError as exc:  # storage that cannot be reached, a model that cannot load
        logger.error("%s", redact(str(exc)))
        return Failed(message=redact(str(exc)), data=exc)
    pool = None
    if render_pool is not None:
        checked = prepared.checked
        base_dir = str(checked.manifest_path.parent)
        pool = RenderPool(render_pool, checked.storage_url, base_dir)
    elif prepared.plan.batches:
        ensure_gpu_limit()
    artifacts = BuildArtifacts(prepared.checked.manifest.soundtrack, prepared.plan.total)
    try:
        with stop_waits_on_signals():
            result = run(
                prepared,
                options,
                executor=TaskExecutor(pool),
                observer=artifacts,
                logger=logger,
                reviewer=ask_in_prefect_ui,
            )
    except SoundtrackError as exc:  # storage busy with another build, or failing
        artifacts.stopped(str(exc))
        return Failed(message=redact(str(exc)), data=exc)
    except ReviewCancelled as exc:
        logger.warning("%s", exc)
        artifacts.stopped("cancelled")
        return Cancelled(message=str(exc))
    except BaseException:  # Ctrl-C, SIGTERM: the UI says so, not "k/N finished" for ever
        artifacts.stopped("interrupted")
        raise
    if result.failure is not None:
        message = redact(result.failure)
        return Failed(message=message, data=BuildRejected(message, result.report))
    return result.report
