"""The build flow: manifest in, approved assets and a lock file out; only changes are rebuilt."""

from __future__ import annotations

import queue
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows.artifacts import BuildArtifacts
from soundtrack import events
from soundtrack.errors import SoundtrackError
from soundtrack.inputs import check_inputs
from soundtrack.models import load_count
from soundtrack.plan import DEFAULT_BATCH_SIZE, plan_build
from soundtrack.publish import index_of, lock_bytes, track_record
from soundtrack.redaction import install_log_redaction
from soundtrack.renders import Render, RenderCache, RenderFailure, cache_root
from soundtrack.report import BuildReport, LockUnreadable, ModelInfo, TrackRecord, parse_lock
from soundtrack.spec import TrackSpec
from tasks.generate import GPU_LIMIT, generate_batch, generate_on_pool
from tasks.process import master_track
from tasks.publish import publish_track, read_index, write_index

if TYPE_CHECKING:
    from soundtrack.process import TrackOutcome

# Mastering and encoding are light next to generation; a few run beside the one GPU batch.
MAX_WORKERS = 4


class BuildFailed(SoundtrackError):
    """The build finished without approving every track; `report` says which and why."""

    def __init__(self, message: str, report: BuildReport) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self) -> tuple[type[BuildFailed], tuple[str, BuildReport]]:
        return (BuildFailed, (str(self), self.report))


def ensure_gpu_limit() -> None:
    """A concurrency limit that does not exist limits nothing: create it (one batch at a time)."""
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, 1)


@dataclass(frozen=True)
class RenderPool:
    """Where generation batches go instead of this machine: a render-batch deployment."""

    deployment: str
    parameters: dict[str, Any]


class _Pipeline:
    """Runs each track through master -> publish as soon as its render is ready."""

    def __init__(
        self,
        storage: str,
        base_dir: Path,
        staging: Path,
        artifacts: BuildArtifacts,
        render_pool: RenderPool | None,
    ):
        self.storage = storage
        self.render_pool = render_pool
        self.base_dir = str(base_dir)
        self.staging = staging
        self.artifacts = artifacts
        self.records: dict[str, TrackRecord] = {}
        self.outcomes: list[TrackOutcome] = []
        self.publish_errors: list[str] = []
        self._done: queue.Queue[PrefectFuture[Any]] = queue.Queue()
        self._handlers: dict[PrefectFuture[Any], Callable[[PrefectFuture[Any]], None]] = {}

    def watch(
        self, future: PrefectFuture[Any], handler: Callable[[PrefectFuture[Any]], None]
    ) -> None:
        self._handlers[future] = handler
        future.add_done_callback(self._done.put)

    def run(self) -> None:
        while self._handlers:
            future = self._done.get()
            self._handlers.pop(future)(future)

    def finish(self, record: TrackRecord) -> None:
        self.records[record.id] = record
        self.artifacts.track_done(record)
        events.emit(record.id, "published" if record.status == "approved" else record.status)

    def generate(self, batch: list[TrackSpec], cache_dir: str, device: str | None) -> None:
        names = ", ".join(spec.id for spec in batch)
        if self.render_pool is None:
            # A cached task result is only a list of paths: when a render behind it is gone
            # (a cleaned cache folder), run the task again instead of reusing it.
            cache = RenderCache(Path(cache_dir))
            lost = any(cache.get(spec.generation_key or "") is None for spec in batch)
            future = generate_batch.with_options(
                task_run_name=f"generate[{names}]", refresh_cache=lost
            ).submit(batch, cache_dir, device)
        else:
            future = generate_on_pool.with_options(task_run_name=f"generate[{names}]").submit(
                batch,
                self.render_pool.deployment,
                self.render_pool.parameters,
                cache_dir,
                self.storage,
                self.base_dir,
            )
        self.watch(future, lambda f: self._rendered(batch, f))

    def _rendered(self, batch: list[TrackSpec], future: PrefectFuture[Any]) -> None:
        results = _result(future)
        if isinstance(results, BaseException):
            for spec in batch:
                self.finish(track_record(spec, "failed", reason=str(results)))
            return
        for spec, result in zip(batch, results, strict=True):
            if isinstance(result, RenderFailure):
                self.finish(track_record(spec, "failed", reason=result.reason))
            else:
                self.master(spec, result)

    def master(self, spec: TrackSpec, render: Render | None) -> None:
        audio = render.path if render else spec.source
        model = (
            ModelInfo(id=render.model_id, revision=render.revision, license=render.license)
            if render
            else None
        )
        future = master_track.with_options(task_run_name=f"master[{spec.id}]").submit(
            spec, str(audio), str(self.staging / spec.spec_hash)
        )
        self.watch(future, lambda f: self._mastered(spec, model, f))

    def _mastered(
        self, spec: TrackSpec, model: ModelInfo | None, future: PrefectFuture[Any]
    ) -> None:
        outcome = _result(future)
        if isinstance(outcome, BaseException):
            self.finish(track_record(spec, "failed", model=model, reason=str(outcome)))
            return
        self.outcomes.append(outcome)
        if outcome.status != "approved":
            shutil.rmtree(self.staging / spec.spec_hash, ignore_errors=True)
            failed = [g.name for g in outcome.gates if not g.passed and g.severity == "fail"]
            reason = f"rejected by gates: {', '.join(failed)}"
            self.finish(
                track_record(spec, "rejected", model=model, reason=reason, gates=outcome.gates)
            )
            return
        future = publish_track.with_options(task_run_name=f"publish[{spec.id}]").submit(
            spec, outcome, self.storage, self.base_dir, model
        )
        self.watch(future, lambda f: self._published(spec, model, outcome, f))

    def _published(
        self,
        spec: TrackSpec,
        model: ModelInfo | None,
        outcome: TrackOutcome,
        future: PrefectFuture[Any],
    ) -> None:
        record = _result(future)
        # Published or not, the staged copies are done with: a rerun masters the track again.
        shutil.rmtree(self.staging / spec.spec_hash, ignore_errors=True)
        if isinstance(record, BaseException):
            self.publish_errors.append(f"{spec.id}: {record}")
            reason = f"approved but not published: {record}"
            self.finish(
                track_record(spec, "failed", model=model, reason=reason, gates=outcome.gates)
            )
            return
        self.finish(record)


def _result(future: PrefectFuture[Any]) -> Any:
    """The task's return value, or the exception it ended with (after its retries)."""
    # The done callback can fire before the run's final state is recorded; result() waits for it.
    return future.result(raise_on_failure=False)


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
        str | None, Field(description="Output folder or s3:// URL instead of the manifest's.")
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
            description="Send each generation batch to this render-batch deployment (e.g. "
            "'render-batch/gpu') on a GPU work pool; renders come back through the storage."
        ),
    ] = None,
) -> BuildReport:
    """Build a soundtrack: generate, master, gate, encode and publish every changed track."""
    # A worker runs this flow without the CLI, which installs the same redaction for its runs.
    install_log_redaction()
    logger = get_run_logger()
    # 1. Check inputs: the manifest, its tracks, the storage
    checked = check_inputs(Path(manifest).resolve(), out=out, model=model)
    path, loaded, url, storage = (
        checked.manifest_path,
        checked.manifest,
        checked.storage_url,
        checked.storage,
    )
    specs = checked.specs
    storage.check_access()

    # 2. Plan: what is published already, what to render, in which batches
    reading = read_index.with_options(task_run_name=f"read-index[{loaded.soundtrack}]")
    warnings = []
    try:
        lock = parse_lock(reading(loaded.soundtrack, url, str(path.parent)))
    except LockUnreadable as exc:
        # Said out loud, never silently: the damaged lock is replaced by this build's.
        warnings.append(f"lock of {loaded.soundtrack} at {url} unreadable ({exc}), rebuilding it")
        logger.warning(warnings[-1])
        lock = None
    plan = plan_build(specs, lock, storage, only=only or [], force=force, batch_size=batch_size)
    logger.info(
        "%d tracks: %d cached, %d to render in %d batches, %d recordings",
        len(specs),
        len(plan.cached),
        sum(len(b) for b in plan.batches),
        len(plan.batches),
        len(plan.recordings),
    )
    artifacts = BuildArtifacts(loaded.soundtrack, total=len(plan.cached) + len(plan.todo))
    pool = None
    if render_pool is not None:
        params = {"manifest": manifest, "storage": url, "model": model, "device": device}
        pool = RenderPool(render_pool, params)
    # Builds running side by side (a nightly and a CI build) may stage the same track: each
    # build stages in a folder of its own.
    (cache_root() / "staging").mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{loaded.soundtrack}-", dir=cache_root() / "staging"))
    pipeline = _Pipeline(url, path.parent, staging, artifacts, pool)
    for record in plan.cached:
        pipeline.finish(record)

    # 3. Render, master and publish each track as soon as its predecessor step is done
    loads_before = load_count()
    if plan.batches and render_pool is None:
        ensure_gpu_limit()
    try:
        for batch in plan.batches:
            pipeline.generate(batch, str(cache_root()), device)
        for spec in plan.recordings:
            pipeline.master(spec, None)
        pipeline.run()
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    # 4. Report, in manifest order; the index goes last and only when every approval is published
    order = {spec.id: i for i, spec in enumerate(specs)}
    report = BuildReport(
        soundtrack=loaded.soundtrack,
        storage=url,
        model_loads=load_count() - loads_before,
        tracks=sorted(pipeline.records.values(), key=lambda r: order[r.id]),
        warnings=warnings,
    )
    artifacts.summary(report, pipeline.outcomes)
    if pipeline.publish_errors:
        raise BuildFailed(
            "publishing failed, the previous index is untouched: "
            + "; ".join(pipeline.publish_errors),
            report,
        )
    index = index_of(report, lock, [spec.id for spec in specs])
    index_uri = write_index.with_options(task_run_name=f"write-index[{loaded.soundtrack}]")(
        loaded.soundtrack, lock_bytes(index), url, str(path.parent)
    )
    logger.info("index written: %s", index_uri)
    if not report.ok:
        counts = report.counts()
        raise BuildFailed(
            f"{counts['rejected']} track(s) rejected, {counts['failed']} failed", report
        )
    return report
