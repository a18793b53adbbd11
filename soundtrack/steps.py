"""The build's steps, each one call with plain arguments: what a Prefect task wraps, retries and
caches, and what a plain executor runs as it is (soundtrack/build.py composes them)."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from soundtrack import events
from soundtrack.errors import StorageError
from soundtrack.publish import publish_outcome
from soundtrack.renders import Render, RenderCache, RenderFailure, cache_root, render_batch
from soundtrack.report import ModelInfo, TrackRecord
from soundtrack.spec import TrackSpec
from soundtrack.storage import open_storage

if TYPE_CHECKING:
    from soundtrack.master import Master
    from soundtrack.process import MasterInfo, TrackOutcome
    from soundtrack.separate import Separator
    from soundtrack.separations import SeparationJob
    from soundtrack.stems import StemsOutcome


def render(
    specs: list[TrackSpec], cache_dir: str, device: str | None
) -> list[Render | RenderFailure]:
    """Render one batch (one generate call) into the render cache; returns paths and hashes."""
    results = render_batch(specs, RenderCache(Path(cache_dir)), device=device)
    for spec, result in zip(specs, results, strict=True):
        if not isinstance(result, RenderFailure):
            events.emit(spec.id, "generated")
    return results


def master(spec: TrackSpec, audio_path: str, staging_dir: str) -> TrackOutcome:
    """Master, judge and encode one render or recording into a staging folder."""
    # Imported on first use: scipy, librosa and Great Expectations take seconds to load, and
    # a build that has nothing to master should not pay for them.
    from soundtrack.audio import read_audio
    from soundtrack.expectations import load_expectations
    from soundtrack.process import process_track

    audio, sample_rate = read_audio(Path(audio_path))
    extra = (
        load_expectations(spec.expectations, sha256=spec.expectations_sha256)
        if spec.expectations
        else []
    )
    parent = None
    if spec.parent_audio is not None:  # fetched by the build when it released the variation
        parent = read_audio(RenderCache(cache_root()).parent_path(spec.parent_audio))
    outcome = process_track(
        spec, audio, sample_rate, Path(staging_dir), extra_expectations=extra, parent=parent
    )
    events.emit(spec.id, "mastered")
    return outcome


def separate(
    spec: TrackSpec, outcome: TrackOutcome, staging_dir: str, device: str | None
) -> StemsOutcome:
    """Split an approved mix into the stems the track asks for; judge and encode them."""
    from soundtrack.stems import SeparationCache, judge_stems
    from soundtrack.stems import separate as split

    mix, stem_model = _mix(spec, outcome)
    separator = _separator(stem_model, device)
    separation = split(mix.audio, mix.sample_rate, separator, SeparationCache(cache_root()))
    stems = judge_stems(spec, mix, separation, Path(staging_dir))
    events.emit(spec.id, "separated")
    return stems


def hand_over_mix(
    spec: TrackSpec, outcome: TrackOutcome, storage_url: str, base_dir: str
) -> SeparationJob:
    """Put an approved mix where a render-pool machine can separate it."""
    from soundtrack.separations import share_mix

    mix_path, _, stem_model = _separable(spec, outcome)
    storage = open_storage(storage_url, base_dir=Path(base_dir))
    return share_mix(storage, spec.id, mix_path, stem_model)


def separate_handed_over(
    job: SeparationJob, storage_url: str, base_dir: str, device: str | None
) -> None:
    """On a render-pool machine: separate a handed-over mix unless its sources are handed
    back already, and hand them back."""
    from soundtrack.audio import read_audio
    from soundtrack.separations import fetch_mix, is_shared, share_separation
    from soundtrack.stems import SeparationCache
    from soundtrack.stems import separate as split

    storage = open_storage(storage_url, base_dir=Path(base_dir))
    if is_shared(storage, job):
        return
    separator = _separator(job.stem_model, device)
    with tempfile.TemporaryDirectory() as folder:
        audio, rate = read_audio(fetch_mix(storage, job, Path(folder)))
    separation = split(audio, rate, separator, SeparationCache(cache_root()))
    share_separation(storage, job, separation, rate)


def judge_handed_back(
    spec: TrackSpec,
    outcome: TrackOutcome,
    staging_dir: str,
    job: SeparationJob,
    storage_url: str,
    base_dir: str,
    missing: str,
) -> StemsOutcome:
    """Judge and encode the stems of sources a render-pool machine handed back; `missing`
    says why, when it did not."""
    from soundtrack.separations import fetch_separation
    from soundtrack.stems import judge_stems

    mix, _ = _mix(spec, outcome)
    separation = fetch_separation(open_storage(storage_url, base_dir=Path(base_dir)), job)
    if separation is None:
        raise RuntimeError(missing)
    stems = judge_stems(spec, mix, separation, Path(staging_dir))
    events.emit(spec.id, "separated")
    return stems


def _separable(spec: TrackSpec, outcome: TrackOutcome) -> tuple[Path, MasterInfo, str]:
    """The approved mix's file and master, and the track's stem model."""
    if outcome.mix_path is None or outcome.master is None or spec.stem_model is None:
        raise ValueError(f"track {spec.id!r} has no approved mix to separate")
    return outcome.mix_path, outcome.master, spec.stem_model


def _mix(spec: TrackSpec, outcome: TrackOutcome) -> tuple[Master, str]:
    """The approved master as the separator gets it, and the track's stem model."""
    from soundtrack.audio import read_audio
    from soundtrack.master import Master

    path, info, stem_model = _separable(spec, outcome)
    audio, sample_rate = read_audio(path)
    mix = Master(
        audio, sample_rate, info.loop_start, info.loop_length, info.input_lufs, info.gain_db, 0.0
    )
    return mix, stem_model


@functools.lru_cache(maxsize=2)
def _separator(stem_model: str, device: str | None) -> Separator:
    """One loaded separator per model and device in a process, as generators are kept."""
    from soundtrack.separate import load_separator

    return load_separator(stem_model, device)


def publish(
    spec: TrackSpec,
    outcome: TrackOutcome,
    storage_url: str,
    base_dir: str,
    model: ModelInfo | None,
    stems: StemsOutcome | None = None,
) -> TrackRecord:
    """Upload an approved track's files (and its stems'), verified by checksum."""
    storage = open_storage(storage_url, base_dir=Path(base_dir))
    return publish_outcome(storage, spec, outcome, model=model, stems=stems)


def write_index(
    soundtrack: str, lock: bytes, storage_url: str, base_dir: str
) -> tuple[str, str | None]:
    """Replace the soundtrack's lock file, then its review page made from that lock: the last
    writes of a build. Returns the lock's URI, and why the page was not written (None when it
    was): the lock is published without it, and written again would change nothing."""
    from soundtrack.report import BuildReport
    from soundtrack.review import review_page
    from soundtrack.storage import soundtrack_folder

    storage = open_storage(storage_url, base_dir=Path(base_dir))
    uri = storage.write_index(soundtrack, lock)
    folder = soundtrack_folder(storage, soundtrack)
    page = review_page(BuildReport.model_validate_json(lock), folder=folder)
    try:
        storage.write_review(soundtrack, page.encode())
    except StorageError as exc:
        return uri, f"the lock is published; its review page is not: {exc}"
    return uri, None
