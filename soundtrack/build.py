"""The whole build as plain Python: check inputs, plan, render, master, publish, write the lock.

Each step (soundtrack/steps.py) runs through an `Executor`: `ThreadExecutor` runs them here,
and flows/build.py runs the same build with Prefect tasks. Inputs are checked once, first;
the steps trust the resolved specs.
"""

from __future__ import annotations

import errno
import logging
import queue
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from soundtrack import PIPELINE_VERSION, events, steps
from soundtrack.approval import (
    Candidate,
    Reviewer,
    Verdict,
    first_take,
    rejected_takes,
    rejections,
)
from soundtrack.atomic import atomic_path
from soundtrack.catalog import limit_problems
from soundtrack.errors import InputError, ModelLoadError, StorageError
from soundtrack.formats import parent_format
from soundtrack.gates import rejection
from soundtrack.held import scratch_folder
from soundtrack.inputs import CheckedInputs, check_access, check_cache, check_inputs
from soundtrack.models import check_model, load_count
from soundtrack.models.device import requested_device, resolve_device
from soundtrack.models.source import keep_fingerprints
from soundtrack.plan import DEFAULT_BATCH_SIZE, Plan, plan_build, reusable, select
from soundtrack.plan import batch as into_batches
from soundtrack.publish import (
    changed_since,
    index_of,
    lock_bytes,
    rejected_since,
    track_record,
    with_links,
)
from soundtrack.redaction import redact
from soundtrack.renders import (
    Render,
    RenderCache,
    RenderFailure,
    cache_root,
    fetch_parent,
    share_parent,
)
from soundtrack.report import (
    BuildReport,
    LockOfNewerVersion,
    LockUnreadable,
    ModelInfo,
    ReviewApproval,
    TakeRecord,
    TrackRecord,
    read_lock,
)
from soundtrack.resolve import take, with_parent
from soundtrack.schema import MAX_STORAGE_WAIT_S
from soundtrack.separate import stem_model_problem
from soundtrack.spec import ParentAudio, TrackSpec

if TYPE_CHECKING:
    from soundtrack.process import TrackOutcome
    from soundtrack.stems import StemsOutcome

T = TypeVar("T")
Logger = logging.Logger | logging.LoggerAdapter[Any]
log = logging.getLogger(__name__)

# Mastering and encoding are light next to generation; a few run beside the one GPU batch.
MAX_WORKERS = 4
# A master holds a few copies of its track at once (about 2 GB for 600 s of stereo): past this
# much audio in masters at once, the next waits (a track longer than this masters alone).
MASTERING_BUDGET_S = 1200.0
SETTLE_S = 120.0  # how long a stopped build waits for its steps under way
# Less room than one long track's temporary files take (10 min of 48 kHz float stereo: 220 MiB):
# a folder this low is named with an error that says the disk is full. One all but full is
# named with any error, which may not say so ("System error.").
LOW_DISK_BYTES = 256 * 2**20
FULL_DISK_BYTES = 16 * 2**20


class Executor(Protocol):
    """Runs one step: here on a thread, in flows/build.py as a Prefect task named `label`."""

    def submit(self, step: Callable[..., T], *args: Any, label: str) -> Future[T]: ...


class ThreadExecutor:
    """Steps on a few threads, the way the Prefect flow runs them, without a server."""

    def __init__(self, max_workers: int = MAX_WORKERS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers)

    def submit(self, step: Callable[..., T], *args: Any, label: str) -> Future[T]:
        return self._pool.submit(step, *args)


class Observer(Protocol):
    """Who watches a build (the Prefect UI's artifacts): each track as it ends, then the end."""

    def track_done(self, record: TrackRecord) -> None: ...

    def finished(
        self,
        report: BuildReport,
        outcomes: Sequence[TrackOutcome],
        index: BuildReport | None,
        unpublished: str | None,
    ) -> None:
        """The build ended: `index` is the lock it wrote (what the storage serves now), or None
        and `unpublished` says why it wrote none."""


@dataclass(frozen=True)
class BuildResult:
    """The report, and when not every track is approved or published, one line saying why."""

    report: BuildReport
    failure: str | None = None

    @property
    def exit_status(self) -> int:
        return 0 if self.failure is None else 1


@dataclass(frozen=True)
class Options:
    """How to build, beside what to build (the manifest)."""

    only: Sequence[str] = ()
    force: bool = False
    out: str | None = None
    model: str | None = None
    device: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    local_models: bool = True  # False when renders happen elsewhere (a GPU work pool)
    storage_wait_s: float | None = None  # None: the manifest's storage_wait_s
    gates: Sequence[str] = ()  # GATE=SEVERITY for every track (--gate tempo=warn)
    review: bool = False  # ask a person before publishing, whatever the manifest says
    discarded: Path | None = None  # deleted when the build ends: nothing may be published there
    build_name: str | None = None  # recorded in the lock: whose verdicts these are


@dataclass(frozen=True)
class Prepared:
    """Checked inputs, the lock already published and the plan: everything before a render."""

    checked: CheckedInputs
    lock: BuildReport | None
    plan: Plan
    warnings: list[str]
    # Tracks another build changed in the lock while this one waited for its review: theirs.
    theirs: frozenset[str] = frozenset()


def build(
    manifest: Path,
    options: Options,
    *,
    executor: Executor,
    observer: Observer | None = None,
    logger: Logger = log,
    reviewer: Reviewer | None = None,
) -> BuildResult:
    """Build a soundtrack: every changed track rendered, mastered, judged, published; the lock
    written last. Bad input raises InputError before anything renders, writes or uploads."""
    prepared = prepare(manifest, options, logger)
    return run(
        prepared, options, executor=executor, observer=observer, logger=logger, reviewer=reviewer
    )


def prepare(
    manifest: Path, options: Options, logger: Logger = log, *, reports: Sequence[Path] = ()
) -> Prepared:
    """Check inputs (manifest, files, storage access, the models needed), read the lock, plan.

    `reports` are further files the caller will write (--report, --junit).
    """
    requested_device(options.device)  # a mistyped name is bad input even when all is cached
    wait_s = options.storage_wait_s
    if wait_s is not None and not 0 <= wait_s <= MAX_STORAGE_WAIT_S:  # NaN too: a wait never over
        raise InputError(
            f"--storage-wait-s must be 0 to {MAX_STORAGE_WAIT_S:g} seconds, got {wait_s:g}"
        )
    checked = check_inputs(
        manifest,
        out=options.out,
        model=options.model,
        only=options.only,
        reports=reports,
        gates=options.gates,
        discarded=options.discarded,
    )
    check_access(checked.storage, checked.manifest.soundtrack)
    check_cache()
    lock, warnings = _previous_lock(checked, options.only)
    for warning in warnings:
        logger.warning(warning)
    plan = _plan(checked, lock, options)
    if options.local_models:
        _check_models(plan, given=" (--model)" if options.model else "")
        if plan.todo or plan.variations:
            _check_device(options.device)
    keep_fingerprints()  # the inputs are accepted: what was hashed to check them is kept
    renders = RenderCache(cache_root())
    logger.info(
        "%d tracks: %d cached, %d to render in %d batch(es) (%d of them rendered before, in this "
        "machine's render cache: mastered again), %d recordings, %d variations (after their "
        "parents)",
        len(checked.specs),
        len(plan.cached),
        sum(len(b) for b in plan.batches),
        len(plan.batches),
        sum(renders.lists(spec) for b in plan.batches for spec in b),
        len(plan.recordings),
        len(plan.variations) - len(plan.left_out),
    )
    return Prepared(checked, lock, plan, warnings)


def run(
    prepared: Prepared,
    options: Options,
    *,
    executor: Executor,
    observer: Observer | None = None,
    logger: Logger = log,
    reviewer: Reviewer | None = None,
) -> BuildResult:
    """Holding the soundtrack's storage (one build at a time), repair what a stopped build
    left, then render, master and publish what the plan says, and write the lock (last).

    With review, the tracks rendered and approved by their gates wait for `reviewer` with the
    storage let go (another build may publish meanwhile), then publish as the reviewer says,
    with the build's recordings.
    """
    checked = prepared.checked
    reviewing = options.review or checked.manifest.review == "required"
    if reviewing and reviewer is None:
        raise InputError("review: required needs the build flow and a Prefect server to ask")
    loads_before = load_count()
    ending: _Ending | None = None
    with _staging(checked.manifest.soundtrack) as staging:
        with _held(checked, options, logger) as (lock, lock_warnings, repaired):
            if lock != prepared.lock:
                logger.info("the lock changed since the build was planned: planning again")
                for warning in lock_warnings:
                    logger.warning(warning)
                prepared = Prepared(checked, lock, _plan(checked, lock, options), lock_warnings)
            prepared = replace(prepared, warnings=[*prepared.warnings, *repaired])
            tracks = _Tracks(
                checked,
                executor,
                staging,
                options.device,
                observer,
                share_parents=not options.local_models,
                reviewing=reviewing,
                earlier={r.id: r for r in prepared.lock.tracks} if prepared.lock else {},
                left_out=prepared.plan.left_out,
                logger=logger,
            )
            _start(tracks, prepared, options)
            tracks.run(options.batch_size)
            if reviewer is None or not tracks.candidates:
                tracks.publish_recordings()
                tracks.run(options.batch_size)
                ending = _finish(
                    prepared, tracks, executor, logger, loads_before, options.build_name
                )
        if ending is not None:  # the storage let go first: the UI's QC report takes minutes
            return ending.told(observer)
        assert reviewer is not None  # a build with none ended above
        timeout_s = checked.manifest.review_timeout_s
        logger.info("%d track(s) wait for review (up to %g s)", len(tracks.candidates), timeout_s)
        verdicts = reviewer(tracks.candidates, staging, timeout_s)
        with _held(checked, options, logger) as (lock, _, repaired):
            # Another build may have published while this one waited: its lock is the base, and
            # what it changed is not this build's, planned before it, to publish over.
            published = changed_since(prepared.lock, lock)
            # The same take rejected by another build's reviewer: the verdict given first
            # stands, as a publication does.
            asked = {(c.spec.id, c.spec.spec_hash, c.spec.take) for c in tracks.candidates}
            rejected = {i for i, _, _ in rejected_since(prepared.lock, lock) & asked} - published
            theirs = frozenset(published | rejected)
            taken: list[str] = []
            if published:
                taken.append(
                    "another build published while this one waited for review: the lock keeps "
                    f"its entries of {', '.join(sorted(published))}"
                )
            if rejected:
                taken.append(
                    "another build's reviewer rejected takes while this one waited for review: "
                    f"the lock keeps its verdicts on {', '.join(sorted(rejected))}"
                )
            for warning in taken:
                logger.warning(warning)
            warnings = [*prepared.warnings, *repaired, *taken]
            prepared = replace(prepared, lock=lock, theirs=theirs, warnings=warnings)
            if verdicts is None:
                failure = f"nobody answered the review within {timeout_s:g} s: nothing published"
                tracks.unanswered(failure)
                left_out = _left_out(prepared)
                report = _report(prepared, tracks, loads_before, options.build_name, left_out)
                return BuildResult(with_links(report, prepared.checked.storage), failure)
            tracks.reviewed(verdicts, lock, theirs, frozenset(rejected))
            tracks.run(options.batch_size)
            ending = _finish(prepared, tracks, executor, logger, loads_before, options.build_name)
        return ending.told(observer)


@contextmanager
def _held(
    checked: CheckedInputs, options: Options, logger: Logger
) -> Iterator[tuple[BuildReport | None, list[str], list[str]]]:
    """Hold the soundtrack's storage, repair what a stopped build left, and read the lock (the
    latest: another build may have published since); let go of what was staged and not
    committed when done. Yields the lock, what reading it warned of, and what was repaired."""
    soundtrack, storage = checked.manifest.soundtrack, checked.storage
    wait_s = options.storage_wait_s
    if wait_s is None:
        wait_s = checked.manifest.storage_wait_s
    with storage.hold(soundtrack, wait_s=wait_s, on_wait=logger.warning):
        repaired = storage.repair(soundtrack)
        for line in repaired:
            logger.warning(line)
        lock, warnings = _previous_lock(checked, options.only)
        try:
            yield lock, warnings, repaired
        finally:
            storage.discard(soundtrack)  # what is staged and not committed by now never will be


def _start(tracks: _Tracks, prepared: Prepared, options: Options) -> None:
    """Each track goes render -> master -> publish, a step starting when the one before ends."""
    checked, plan, previous = prepared.checked, prepared.plan, tracks.earlier
    selected = {spec.id for spec in select(checked.specs, options.only)}
    planned = {spec.id for spec in plan.todo} | {record.id for record in plan.cached}
    for spec in plan.variations:  # before the cached records, which may be their parents
        tracks.wait(spec, previous.get(spec.id), selected=spec.id in selected, force=options.force)
        parent = spec.variation_of
        left_out = parent not in planned and parent not in selected
        if parent in previous and previous[parent].usable and left_out:
            tracks.stale(parent)  # published, but not as the manifest has it now
    for record in plan.cached:
        tracks.finish(record)
    for batch in plan.batches:
        tracks.render(batch)
    for spec in plan.recordings:
        tracks.master(spec, None)


def _report(
    prepared: Prepared,
    tracks: _Tracks,
    loads_before: int,
    build_name: str | None,
    left_out: Sequence[str],
) -> BuildReport:
    """The build's report, in manifest order; `left_out` as `_left_out` says it."""
    checked = prepared.checked
    order = {spec.id: i for i, spec in enumerate(checked.specs)}
    return BuildReport(
        soundtrack=checked.manifest.soundtrack,
        storage=checked.storage_url,
        model_loads=load_count() - loads_before,
        build_name=build_name,
        tracks=sorted(tracks.records.values(), key=lambda r: order[r.id]),
        warnings=[
            *prepared.warnings,
            *tracks.warnings,
            *_stale_variations(prepared, tracks.records),
            *left_out,
        ],
    )


def _left_out(prepared: Prepared) -> list[str]:
    """Tracks the lock listed that the manifest has not: the new lock leaves them out and gc
    may then delete their files. Said, since a second manifest of the same soundtrack name in
    the same storage does this too, silently, to the first's tracks."""
    # What another build published while this one waited for review stays, whatever it is.
    kept = {spec.id for spec in prepared.checked.specs} | prepared.theirs
    gone = [t.id for t in prepared.lock.tracks if t.id not in kept] if prepared.lock else []
    if not gone:
        return []
    name = prepared.checked.manifest.soundtrack
    return [
        f"the lock of {name} listed {', '.join(gone)}, which this manifest has not: the new "
        "lock leaves them out, and gc --delete may then remove their files (does another "
        f"manifest publish a soundtrack named {name!r} there?)"
    ]


def _stale_variations(prepared: Prepared, records: Mapping[str, TrackRecord]) -> list[str]:
    """Variations a build left as they were while it published their parent anew (--only the
    parent): said, since they follow the parent's previous take until they are built."""
    before = {r.id: r for r in prepared.lock.tracks} if prepared.lock else {}
    stale = []
    for spec in prepared.checked.specs:
        parent = records.get(spec.variation_of or "")
        kept = before.get(spec.id)
        if (
            spec.id not in records
            and kept is not None
            and parent is not None
            and parent.status == "approved"
            and (kept.parent_audio_sha256 or kept.parent_sha256)
            not in {f.audio_sha256 or f.sha256 for f in parent.files}
        ):
            stale.append(
                f"{spec.id} varies {parent.id}, published anew by this build: it follows "
                f"{parent.id}'s previous take until it is built too (--only {parent.id} "
                f"--only {spec.id}, or everything)"
            )
    return stale


@dataclass(frozen=True)
class _Ending:
    """A build's result, and what its observer is told once the storage is let go."""

    result: BuildResult
    outcomes: Sequence[TrackOutcome]
    index: BuildReport | None  # the lock written; None when none was (the result says why)

    def told(self, observer: Observer | None) -> BuildResult:
        if observer is not None:
            unpublished = self.result.failure if self.index is None else None
            observer.finished(self.result.report, self.outcomes, self.index, unpublished)
        return self.result


def _finish(
    prepared: Prepared,
    tracks: _Tracks,
    executor: Executor,
    logger: Logger,
    loads_before: int,
    build_name: str | None,
) -> _Ending:
    """Report; the index goes last and only when every approval is published."""
    left_out = _left_out(prepared)
    for warning in left_out:
        logger.warning(warning)
    storage = prepared.checked.storage
    report = with_links(_report(prepared, tracks, loads_before, build_name, left_out), storage)
    track_ids = [spec.id for spec in prepared.checked.specs]
    index = with_links(index_of(report, prepared.lock, track_ids, theirs=prepared.theirs), storage)
    unpublished, unreviewed = _write_index(prepared, tracks, index, executor, logger)
    if unpublished is not None:
        report = _not_published(report, unpublished)
        return _Ending(BuildResult(report, unpublished), tracks.outcomes, None)
    if unreviewed is not None:
        report = report.model_copy(update={"warnings": [*report.warnings, unreviewed]})
    failure = None
    if not report.ok:
        counts = report.counts()
        failure = f"{counts['rejected']} track(s) rejected, {counts['failed']} failed"
    return _Ending(BuildResult(report, failure), tracks.outcomes, index)


def _disk_checked(error: BaseException, staging: Path) -> tuple[str, bool]:
    """Why a step failed, led by the folder it writes in that is out of room, when the error
    says so or a folder is all but full (and whether): a full disk surfaces as whatever failed
    on it ("System error.", an encoder's "Conversion failed!", a short write)."""
    said_full = False
    cause: BaseException | None = error
    while cause is not None and not said_full:
        said_full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
        cause = cause.__cause__ or cause.__context__
    for folder in (staging, Path(tempfile.gettempdir()), cache_root()):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        if free < (LOW_DISK_BYTES if said_full else FULL_DISK_BYTES):
            return f"{folder} has {free / 2**20:.1f} MiB free, a full disk? ({error})", True
    return str(error), False


def _not_published(report: BuildReport, why: str) -> BuildReport:
    """The report of a build that wrote no lock: what it approved is served nowhere, so it is
    a failure there (and in JUnit) with no files; a cached track is served as before."""
    tracks = [
        track.model_copy(
            update={
                "status": "failed",
                "reason": f"approved, not published: {why}",
                "files": [],
                "sidecar": None,
                "picture": None,
                "stems": [],  # none published either
            }
        )
        if track.status == "approved"
        else track
        for track in report.tracks
    ]
    return report.model_copy(update={"tracks": tracks})


def _write_index(
    prepared: Prepared, tracks: _Tracks, index: BuildReport, executor: Executor, logger: Logger
) -> tuple[str | None, str | None]:
    """Write the lock unless a publish failed, then the review page: why the lock was not
    written (None when it was), and why the page was not (a warning)."""
    if tracks.publish_errors:
        errors = "; ".join(tracks.publish_errors)
        kept = "the previous index is untouched" if prepared.lock else "nothing is published"
        return f"publishing failed, {kept}: {errors}", None
    checked = prepared.checked
    try:
        index_uri, unreviewed = executor.submit(
            steps.write_index,
            checked.manifest.soundtrack,
            lock_bytes(index),
            checked.storage_url,
            str(checked.manifest_path.parent),
            label=f"write-index[{checked.manifest.soundtrack}]",
        ).result()
    except StorageError as exc:
        return f"writing the index failed: {redact(str(exc))}", None
    logger.info("index written: %s", index_uri)
    if unreviewed is not None:
        unreviewed = redact(unreviewed)
        logger.warning(unreviewed)
    return None, unreviewed


def _previous_lock(
    checked: CheckedInputs, only: Sequence[str]
) -> tuple[BuildReport | None, list[str]]:
    """The published lock, if any; a damaged one is None, with a warning to say out loud (this
    build's lock replaces it), unless --only would leave the other tracks out of that lock. A
    newer version's lock is bad input: this build would write it back without what it holds."""
    soundtrack = checked.manifest.soundtrack
    where = f"lock of {soundtrack} at {checked.storage_url}"
    rolling_back = (
        "build with that version or a later one; to go back to this one on purpose, delete "
        "the lock and build every track (without --only: the lock it writes is the only one)"
    )
    try:
        lock = read_lock(checked.storage, soundtrack)
    except LockOfNewerVersion as exc:
        raise InputError(f"{where} unreadable ({exc}): {rolling_back}") from None
    except LockUnreadable as exc:
        unreadable = f"{where} unreadable ({exc})"
        if only:
            # Their files would stay published, in no lock: what gc deletes as unreferenced.
            raise InputError(
                f"{unreadable}: --only would write a lock of the tracks it names alone; build "
                "every track (without --only) to write it again"
            ) from None
        return None, [f"{unreadable}, rebuilding it"]
    if lock is None or lock.pipeline_version == PIPELINE_VERSION:
        return lock, []
    written_by = f"{where} was written by pipeline version {lock.pipeline_version!r}"
    if _later(lock.pipeline_version, PIPELINE_VERSION):
        # Its files were mastered by a newer pipeline: every track would be mastered again,
        # the older way, and published over them.
        raise InputError(
            f"{written_by}, later than this one's ({PIPELINE_VERSION}): {rolling_back}"
        )
    return lock, [
        f"{written_by}; this is {PIPELINE_VERSION}: each track it builds is mastered, judged "
        "and published again (docs/manifest.md)"
    ]


def _later(version: str, than: str) -> bool:
    """Whether pipeline version `version` is a later one than `than` (versions count up)."""
    return version.isascii() and version.isdigit() and int(version) > int(than)


def _plan(checked: CheckedInputs, lock: BuildReport | None, options: Options) -> Plan:
    return plan_build(
        checked.specs,
        lock,
        checked.storage,
        only=options.only,
        force=options.force,
        batch_size=options.batch_size,
    )


def _model_of(render: Render | RenderFailure) -> ModelInfo | None:
    """The model a render (or a failed one) came from, as the lock records it."""
    if render.model_id is None or render.revision is None or render.license is None:
        return None
    return ModelInfo(id=render.model_id, revision=render.revision, license=render.license)


def _check_device(device: str | None) -> None:
    """The device renders run on is here (torch sees it): found now, not at the render."""
    try:
        resolve_device(device)
    except ModelLoadError as exc:
        raise InputError(str(exc)) from None


def _check_models(plan: Plan, *, given: str) -> None:
    """Every model a batch needs is at hand, loadable, and can render its tracks (its files
    now say its family, which `validate` may have had to leave unchecked), and every stem
    model is there: found now, not after other renders."""
    specs = [spec for batch in plan.batches for spec in batch]
    problems = []
    for model, revision in dict.fromkeys((spec.model, spec.model_revision) for spec in specs):
        users = [s for s in specs if (s.model, s.model_revision) == (model, revision)]
        try:
            family = check_model(model, revision)
        except ModelLoadError as exc:
            problems.append(f"{_tracks([spec.id for spec in users])}{given}: {exc}")
            continue
        problems += [
            f"track {s.id}{given}: {problem}"
            for s in users
            for _, problem in limit_problems(s, family)
        ]
    with_stems = [spec for spec in plan.todo + plan.variations if spec.stems]
    for stem_model in dict.fromkeys(spec.stem_model or "" for spec in with_stems):
        problem = stem_model_problem(stem_model)
        if problem:
            separated = [spec.id for spec in with_stems if spec.stem_model == stem_model]
            problems.append(f"{_tracks(separated)}: {problem}")
    if len(problems) == 1:
        raise InputError(problems[0])
    if problems:
        raise InputError(f"{len(problems)} problems with the models", problems)


def _taken_by_another(whose: str, *, rejected: bool) -> str:
    if rejected:
        return (
            f"another build's reviewer rejected a take of {whose} while this build waited for "
            "its review: that verdict stands and this take is not published (build again to "
            "review the next take)"
        )
    return (
        f"another build published {whose} while this build waited for its review: this take "
        "is not published over it (build again to review against what it published)"
    )


def _tracks(ids: Sequence[str]) -> str:
    return f"track {ids[0]}" if len(ids) == 1 else f"tracks {', '.join(ids)}"


def _staging(soundtrack: str) -> AbstractContextManager[Path]:
    """A staging folder of this build's own: builds running side by side (a nightly and a CI
    build) may stage the same track. Those of killed builds are deleted on the way."""
    return scratch_folder(cache_root() / "staging", f"{soundtrack}-")


@dataclass
class _Tracks:
    """Each track's way through render -> master -> publish, a step starting as soon as the one
    before it is done; every track ends with one record."""

    checked: CheckedInputs
    executor: Executor
    staging: Path
    device: str | None
    observer: Observer | None
    share_parents: bool  # renders happen on other machines: hand them the parents' audio
    reviewing: bool  # rendered tracks wait for a person (candidates) instead of publishing
    earlier: dict[str, TrackRecord]  # the lock's records by track id, as the plan read them
    left_out: frozenset[str]  # variations --only left out (the plan's): not in the progress
    logger: Logger  # the run's: a worker's build has no terminal to print its table on
    candidates: list[Candidate] = field(default_factory=list)
    # Recordings of a reviewed build, published with its candidates: published before, they
    # would be in no lock while the build waits (dropped from a folder's staging; gc's on S3).
    recordings: list[Candidate] = field(default_factory=list)
    records: dict[str, TrackRecord] = field(default_factory=dict)
    outcomes: list[TrackOutcome] = field(default_factory=list)
    publish_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    takes: dict[str, list[TakeRecord]] = field(default_factory=dict)  # of tracks that re-roll
    approvals: dict[str, ReviewApproval] = field(default_factory=dict)  # by the reviewer
    _rerolls: list[TrackSpec] = field(default_factory=list)
    _first: dict[str, TrackSpec] = field(default_factory=dict)  # take 0 of each track rendered
    _done: queue.Queue[Future[Any]] = field(default_factory=queue.Queue)
    _next: dict[Future[Any], Callable[[Future[Any]], None]] = field(default_factory=dict)
    _waiting: dict[str, list[_Variation]] = field(default_factory=dict)  # by parent id
    _released: list[TrackSpec] = field(default_factory=list)  # variations ready to render
    _stale: set[str] = field(default_factory=set)  # parents --only left out of date
    _queued: deque[list[TrackSpec]] = field(default_factory=deque)  # batches for a busy device
    _rendering: int = 0
    # Masters beyond MAX_WORKERS (or the budget) wait here, in turn, not in the pool's queue: a
    # publish submitted when a master ends runs next, not after every master (500 recordings
    # showed 0/500 for minutes).
    _masters: deque[tuple[TrackSpec, Render | None]] = field(default_factory=deque)
    _mastering: int = 0
    _mastering_s: float = 0.0

    def run(self, batch_size: int) -> None:
        """Until every track has its record: hand each finished step to what follows it; render
        variations as their parents are approved; when all is done but re-rolls, render those,
        batched together. Stopped (Ctrl-C), it lets the steps under way end first."""
        try:
            self._run(batch_size)
        except BaseException:
            self._settle()
            raise

    def _settle(self) -> None:
        """Wait for the steps under way: the staging and the storage were cleaned up under a
        master or publish, which failed with tracebacks and left files behind; and a render
        the process would wait for at its exit anyway (its thread is joined) ended after the
        interpreter began to, where loading a model fails with tracebacks. Nothing new
        starts: their results go unread."""
        under_way = [f for f in self._next if not f.done()]
        if under_way:
            log.warning("stopping: %d step(s) under way end first", len(under_way))
            wait(under_way, timeout=SETTLE_S)

    def _run(self, batch_size: int) -> None:
        while self._next or self._rerolls or self._released:
            if self._released:
                released, self._released = self._released, []
                for group in into_batches(released, batch_size):
                    self.render(group)
            elif not self._next:
                rerolls, self._rerolls = self._rerolls, []
                for group in into_batches(rerolls, batch_size):
                    self.render(group)
            else:
                future = self._done.get()
                self._next.pop(future)(future)
        while self._waiting:  # a variation failed here takes its own waiting variations along
            parent = next(iter(self._waiting))
            for variation in self._waiting.pop(parent):
                # Not selected by --only and not published as it is now: no audio to render from.
                if variation.selected:
                    reason = f"its parent {parent!r} is neither built nor published"
                    if parent in self._stale:
                        reason = (
                            f"its parent {parent!r} is not published as the manifest now has "
                            f"it, and not selected: build it too (--only {parent} --only "
                            f"{variation.spec.id})"
                        )
                    self.finish(track_record(variation.spec, "failed", reason=reason))

    def wait(
        self, spec: TrackSpec, record: TrackRecord | None, *, selected: bool, force: bool
    ) -> None:
        """Hold a variation until its parent has a record (`record`: the lock's, if any)."""
        if spec.variation_of is None:
            raise ValueError(f"track {spec.id!r} is no variation")
        self._waiting.setdefault(spec.variation_of, []).append(
            _Variation(spec, record, selected=selected, force=force)
        )

    def finish(self, record: TrackRecord) -> None:
        if record.id in self.takes:
            record = record.model_copy(update={"takes": self.takes[record.id]})
        earlier = self.earlier.get(record.id)
        if not record.rejected_in_review and earlier is not None:
            # The takes a reviewer rejected stay with the spec whatever becomes of this one, so
            # no later render (--force, a build without review, a failed take's rerun) starts
            # again at one of them. A failure keeps them all: a variation failed with its
            # parent is recorded under its spec before the parent's audio is part of it.
            failed = record.status == "failed"
            kept = (
                earlier.rejected_in_review if failed else rejected_takes(record.spec_hash, earlier)
            )
            record = record.model_copy(update={"rejected_in_review": kept})
        self.records[record.id] = record
        if record.status in ("rejected", "failed"):
            reason = record.reason or record.status
            said = reason if reason.startswith(record.status) else f"{record.status}: {reason}"
            self.logger.warning("%s: %s", record.id, said)
        if record.id not in self.left_out:  # no work of this build's: not in its progress
            if self.observer is not None:
                self.observer.track_done(record)
            events.emit(record.id, "published" if record.status == "approved" else record.status)
        for variation in self._waiting.pop(record.id, []):
            self._release(variation, record.id, _parent_audio(record), record.status)

    def stale(self, track_id: str) -> None:
        """`track_id` is published, but not as the manifest has it, and left out by --only."""
        self._stale.add(track_id)

    def _release(
        self, variation: _Variation, parent: str, audio: ParentAudio | None, status: str
    ) -> None:
        """A parent has its audio (or `status` says why not): its variation is cached,
        rendered from it, or failed."""
        spec = variation.spec
        if audio is None:
            if variation.selected:
                reason = f"its parent {parent!r} was {status}: nothing to render from"
                self.finish(track_record(spec, "failed", reason=reason))
            return
        spec = first_take(with_parent(spec, audio), variation.record)
        storage = self.checked.storage
        cached = reusable(
            variation.record,
            spec,
            storage.has_asset,
            selected=variation.selected,
            force=variation.force,
        )
        if cached is not None:
            self.finish(cached)
            return
        if not variation.selected:
            self.stale(spec.id)  # its published take follows its parent's previous one
            return
        cache = RenderCache(cache_root())
        # A parent published in this build is in the cache already; an earlier build's is at
        # its published key.
        fetch_parent(storage, cache, audio, audio.key)
        if self.share_parents:
            share_parent(storage, cache, audio)
        self._released.append(spec)

    def _keep_for_variations(self, spec: TrackSpec, outcome: TrackOutcome) -> ParentAudio | None:
        """Copy an approved parent's staged file (the one its variations render from) into the
        render cache: the staging folder goes, and the file's published key is not committed
        until the lock is. Returns the audio kept, None when no variation waits for it."""
        staged = _parent_file(outcome.files)
        if spec.id not in self._waiting or staged is None:
            return None
        key = self.checked.storage.asset_key(
            spec.soundtrack, spec.id, spec.spec_hash, staged.format, sha256=staged.sha256
        )
        audio = ParentAudio(spec.id, key, staged.sha256, staged.format, staged.audio_sha256)
        path = RenderCache(cache_root()).parent_path(audio)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            shutil.copyfile(staged.path, tmp)
        return audio

    def render(self, batch: list[TrackSpec]) -> None:
        # Batches render in the plan's order, one at a time: each model's in a row, so a device
        # that holds one model (a GPU) loads each once, and a CPU's cores go to one render (the
        # GPU slot takes renders in turn anyway: batches waiting for it in the pool's threads
        # held back every master behind them). A render pool's machines take their own turns,
        # and a batch the render cache holds needs no device: it is read at once.
        rendered = all(map(RenderCache(cache_root()).holds, batch))
        if not (self.share_parents or rendered) and self._rendering:
            self._queued.append(batch)
            return
        if not rendered:
            self._rendering += 1
        for spec in batch:
            self._first.setdefault(spec.id, spec)
        label = f"generate[{', '.join(_take_label(spec) for spec in batch)}]"
        if all(spec.parent_audio for spec in batch):
            label = f"vary[{', '.join(_vary_label(spec) for spec in batch)}]"
        future = self.executor.submit(
            steps.render, batch, str(cache_root()), self.device, label=label
        )
        self._then(future, lambda f: self._rendered(batch, f, took_turn=not rendered))

    def _rendered(
        self,
        batch: list[TrackSpec],
        future: Future[list[Render | RenderFailure]],
        *,
        took_turn: bool,
    ) -> None:
        if took_turn:
            self._rendering -= 1
            if self._queued:
                self.render(self._queued.popleft())
        try:
            results = future.result()
        except Exception as exc:
            # A render pool's failure is another machine's: its disks are not these.
            reason = str(exc) if self.share_parents else _disk_checked(exc, self.staging)[0]
            for spec in batch:
                self.finish(track_record(spec, "failed", reason=reason))
            return
        for spec, result in zip(batch, results, strict=True):
            if isinstance(result, RenderFailure):
                if not self._rerolled(spec, "failed", reason=result.reason):
                    model = _model_of(result)
                    self.finish(track_record(spec, "failed", model=model, reason=result.reason))
            else:
                self.master(spec, result)

    def _rerolled(
        self,
        spec: TrackSpec,
        status: Literal["rejected", "failed"],
        *,
        reason: str,
        gates: Sequence[str] = (),
    ) -> bool:
        """Record a take that did not pass; True when the track renders another take."""
        if spec.attempts == 1:
            return False
        self.takes.setdefault(spec.id, []).append(
            TakeRecord(
                take=spec.take,
                seed=spec.seed,
                status=status,
                rejected_by=list(gates),
                reason=redact(reason),
            )
        )
        if spec.take + 1 >= self._first[spec.id].take + spec.attempts:
            return False
        self._rerolls.append(take(spec, spec.take + 1))
        events.emit(spec.id, "re-roll")
        return True

    def master(self, spec: TrackSpec, render: Render | None) -> None:
        if self._masters or not self._fits(spec):
            self._masters.append((spec, render))
        else:
            self._start_master(spec, render)

    def _start_master(self, spec: TrackSpec, render: Render | None) -> None:
        self._mastering += 1
        self._mastering_s += spec.render_duration_s
        audio = render.path if render else spec.source
        model = _model_of(render) if render else None
        future = self.executor.submit(
            steps.master,
            spec,
            str(audio),
            str(self.staging / spec.spec_hash),
            label=f"master[{_take_label(spec)}]",
        )
        self._then(future, lambda f: self._then_next_master(spec, model, f))

    def _then_next_master(
        self, spec: TrackSpec, model: ModelInfo | None, future: Future[TrackOutcome]
    ) -> None:
        """What follows the master is submitted first (its publish), then a waiting master."""
        self._mastering -= 1
        self._mastering_s -= spec.render_duration_s
        self._mastered(spec, model, future)
        while self._masters and self._fits(self._masters[0][0]):
            self._start_master(*self._masters.popleft())

    def _fits(self, spec: TrackSpec) -> bool:
        """Whether `spec` may master now, beside the masters under way."""
        if self._mastering >= MAX_WORKERS:
            return False
        return (
            not self._mastering or self._mastering_s + spec.render_duration_s <= MASTERING_BUDGET_S
        )

    def _mastered(
        self, spec: TrackSpec, model: ModelInfo | None, future: Future[TrackOutcome]
    ) -> None:
        try:
            outcome = future.result()
        except Exception as exc:
            # Another take would fail as this one did on a full disk: none is rendered.
            reason, full = _disk_checked(exc, self.staging)
            if full or not self._rerolled(spec, "failed", reason=reason):
                self.finish(track_record(spec, "failed", model=model, reason=reason))
            return
        if outcome.status != "approved":
            shutil.rmtree(self.staging / spec.spec_hash, ignore_errors=True)
            failed = [g.name for g in outcome.gates if not g.passed and g.severity == "fail"]
            reason = rejection(outcome.gates)
            if self._rerolled(spec, "rejected", reason=reason, gates=failed):
                return
            self.outcomes.append(outcome)
            record = track_record(
                spec, "rejected", model=model, reason=reason, gates=outcome.gates, outcome=outcome
            )
            self.finish(record)
            return
        self.outcomes.append(outcome)
        if spec.attempts > 1:
            self.takes.setdefault(spec.id, []).append(
                TakeRecord(take=spec.take, seed=spec.seed, status="approved")
            )
        if spec.stems:
            separated = self.executor.submit(
                steps.separate,
                spec,
                outcome,
                str(self.staging / spec.spec_hash),
                self.device,
                label=f"separate[{spec.id}]",
            )
            self._then(separated, lambda f: self._separated(spec, model, outcome, f))
            return
        self.publish(spec, model, outcome, None)

    def _separated(
        self,
        spec: TrackSpec,
        model: ModelInfo | None,
        outcome: TrackOutcome,
        future: Future[StemsOutcome],
    ) -> None:
        """The mix passed its own gates: it is published whatever became of its stems."""
        try:
            stems = future.result()
        except Exception as exc:
            from soundtrack.stems import unseparated  # numpy, soxr: only builds with stems

            reason = redact(f"separation failed: {exc}")
            stems = unseparated(spec, reason)
            self.warnings.append(f"{spec.id}: stems: {reason}")
        self.publish(spec, model, outcome, stems)

    def publish(
        self,
        spec: TrackSpec,
        model: ModelInfo | None,
        outcome: TrackOutcome,
        stems: StemsOutcome | None,
    ) -> None:
        if self.reviewing:
            held = Candidate(spec, model, outcome, stems)
            (self.candidates if spec.source is None else self.recordings).append(held)
            # Its variations render from the take under review and are reviewed beside it.
            audio = self._keep_for_variations(spec, outcome)
            for variation in self._waiting.pop(spec.id, []):
                self._release(variation, spec.id, audio, "approved")
            return
        self.submit_publish(spec, model, outcome, stems)

    def reviewed(
        self,
        verdicts: Mapping[str, Verdict],
        lock: BuildReport | None,
        theirs: frozenset[str],
        rejected_by_another: frozenset[str],
    ) -> None:
        """Publish what the reviewer approved; record what they rejected, and the variations
        of a rejected take, which rendered from audio that will not be published. Tracks
        `theirs` (another build published them since, or its reviewer rejected a take of them:
        `rejected_by_another`) fail unpublished, with their variations."""
        withheld = set(theirs)
        for held in self.recordings:  # never reviewed: only published by another
            if held.spec.id in withheld:
                self._failed(held, _taken_by_another(held.spec.id, rejected=False))
        self.recordings = [held for held in self.recordings if held.spec.id not in withheld]
        self.publish_recordings()
        previous = {r.id: r for r in lock.tracks} if lock else {}
        self.earlier = previous  # read anew after the wait: what publishes now builds on it
        rejected: set[str] = set()
        for candidate in self.candidates:
            spec = candidate.spec
            if spec.id in withheld or spec.variation_of in withheld:
                taken = spec.id if spec.id in withheld else spec.variation_of
                whose = spec.id if taken == spec.id else f"its parent {taken}"
                withheld.add(spec.id)
                self._failed(
                    candidate, _taken_by_another(whose, rejected=taken in rejected_by_another)
                )
                continue
            verdict = verdicts.get(spec.id, Verdict(approved=False, comment="no answer"))
            if spec.variation_of in rejected:
                verdict = Verdict(False, f"its parent {spec.variation_of!r} was rejected")
            if verdict.approved:
                self.approvals[spec.id] = ReviewApproval(
                    take=spec.take, seed=spec.seed, comment=verdict.comment
                )
                self.submit_publish(spec, candidate.model, candidate.outcome, candidate.stems)
                continue
            rejected.add(spec.id)
            record = track_record(
                spec,
                "rejected",
                model=candidate.model,
                reason=f"rejected in review: {verdict.comment or 'no comment'}",
                gates=candidate.outcome.gates,
                outcome=candidate.outcome,
            )
            history = rejections(spec, previous.get(spec.id), verdict.comment)
            self.finish(record.model_copy(update={"rejected_in_review": history}))

    def publish_recordings(self) -> None:
        """Publish the recordings a reviewed build held back (nobody is asked about them)."""
        for held in self.recordings:
            self.submit_publish(held.spec, held.model, held.outcome, held.stems)
        self.recordings = []

    def unanswered(self, reason: str) -> None:
        """The candidates nobody reviewed, and the recordings held back with them: failed, each
        saying why, none published."""
        for candidate in self.candidates + self.recordings:
            self._failed(candidate, reason)

    def _failed(self, candidate: Candidate, reason: str) -> None:
        outcome = candidate.outcome
        self.finish(
            track_record(
                candidate.spec,
                "failed",
                model=candidate.model,
                reason=reason,
                gates=outcome.gates,
                outcome=outcome,
            )
        )

    def submit_publish(
        self,
        spec: TrackSpec,
        model: ModelInfo | None,
        outcome: TrackOutcome,
        stems: StemsOutcome | None,
    ) -> None:
        published = self.executor.submit(
            steps.publish,
            spec,
            outcome,
            self.checked.storage_url,
            str(self.checked.manifest_path.parent),
            model,
            stems,
            label=f"publish[{spec.id}]",
        )
        self._then(published, lambda f: self._published(spec, model, outcome, f))

    def _published(
        self,
        spec: TrackSpec,
        model: ModelInfo | None,
        outcome: TrackOutcome,
        future: Future[TrackRecord],
    ) -> None:
        try:
            record = future.result()
            self._keep_for_variations(spec, outcome)
        except Exception as exc:
            self.publish_errors.append(f"{spec.id}: {exc}")
            reason = f"approved but not published: {exc}"
            self.finish(
                track_record(
                    spec, "failed", model=model, reason=reason, gates=outcome.gates, outcome=outcome
                )
            )
            return
        finally:
            # Published or not, the staged copies are done with: a rerun masters the track
            # again (a published parent's file was kept for its variations first).
            shutil.rmtree(self.staging / spec.spec_hash, ignore_errors=True)
        if spec.id in self.approvals:
            record = record.model_copy(update={"approved_in_review": self.approvals[spec.id]})
        self.finish(record)

    def _then(self, future: Future[T], step: Callable[[Future[T]], None]) -> None:
        self._next[future] = step
        future.add_done_callback(self._done.put)


@dataclass(frozen=True)
class _Variation:
    """A variation waiting for its parent, with what decides whether it is cached."""

    spec: TrackSpec
    record: TrackRecord | None  # the lock's
    selected: bool
    force: bool


def _parent_audio(parent: TrackRecord) -> ParentAudio | None:
    """The published file a variation of `parent` renders from; None when it has none."""
    own = [file for file in parent.files if file.stem is None]  # a lock may list stems first
    chosen = _parent_file(own) if parent.usable else None
    if chosen is None:
        return None
    return ParentAudio(parent.id, chosen.key, chosen.sha256, chosen.format, chosen.audio_sha256)


class _Formatted(Protocol):
    @property
    def format(self) -> str: ...

    @property
    def audio_sha256(self) -> str | None: ...


F = TypeVar("F", bound=_Formatted)


def _parent_file(files: Sequence[F]) -> F | None:
    """Of a track's own files (published or staged, not its stems'), the one its variations
    render from: the first in the format parent_format picks."""
    chosen = parent_format([f.format for f in files])
    return next((f for f in files if f.format == chosen), None)


def _take_label(spec: TrackSpec) -> str:
    """A track's name in a task label: its take too, from the second on."""
    return spec.id if spec.take == 0 else f"{spec.id}#take{spec.take + 1}"


def _vary_label(spec: TrackSpec) -> str:
    """A variation in a task label: `combat-high <- title-theme`."""
    return f"{_take_label(spec)} <- {spec.variation_of}"
