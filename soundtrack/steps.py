"""The build's steps, each one call with plain arguments: what a Prefect task wraps, retries and
caches, and what a plain executor runs as it is (soundtrack/build.py composes them)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from soundtrack import events
from soundtrack.publish import publish_outcome
from soundtrack.renders import Render, RenderCache, RenderFailure, cache_root, render_batch
from soundtrack.report import ModelInfo, TrackRecord
from soundtrack.spec import TrackSpec
from soundtrack.storage import open_storage

if TYPE_CHECKING:
    from soundtrack.process import TrackOutcome
    from soundtrack.separate import Separator
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
    extra = load_expectations(spec.expectations) if spec.expectations else []
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
    from soundtrack.audio import read_audio
    from soundtrack.master import Master
    from soundtrack.stems import SeparationCache, separate_stems

    if outcome.mix_path is None or outcome.master is None or spec.stem_model is None:
        raise ValueError(f"track {spec.id!r} has no approved mix to separate")
    audio, sample_rate = read_audio(outcome.mix_path)
    info = outcome.master
    mix = Master(
        audio, sample_rate, info.loop_start, info.loop_length, info.input_lufs, info.gain_db, 0.0
    )
    separator = _separator(spec.stem_model, device or "cpu")
    stems = separate_stems(spec, mix, separator, Path(staging_dir), SeparationCache(cache_root()))
    events.emit(spec.id, "separated")
    return stems


@functools.lru_cache(maxsize=2)
def _separator(stem_model: str, device: str) -> Separator:
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


def write_index(soundtrack: str, lock: bytes, storage_url: str, base_dir: str) -> str:
    """Replace the soundtrack's lock file: the last write of a build."""
    return open_storage(storage_url, base_dir=Path(base_dir)).write_index(soundtrack, lock)
