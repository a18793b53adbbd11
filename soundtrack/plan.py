"""Planning a build: which tracks are already approved and published, and how to batch the rest."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from soundtrack.approval import first_take
from soundtrack.errors import InputError
from soundtrack.report import BuildReport, TrackRecord
from soundtrack.spec import TrackSpec

if TYPE_CHECKING:  # a type only: the storage package imports boto3, which planning never needs
    from soundtrack.storage import Storage

DEFAULT_BATCH_SIZE = 4
# Each published file is checked before a track is taken as cached, a HEAD on S3: one after the
# other, a no-op rebuild of 500 tracks waited on 2000 round trips. botocore pools 10 connections.
CHECKS_AT_ONCE = 10

Holds = Callable[[str, str], bool]  # whether storage holds this key with this sha256


@dataclass(frozen=True)
class Plan:
    """What a build has to do; `cached` records are reused as they are."""

    cached: list[TrackRecord] = field(default_factory=list)
    batches: list[list[TrackSpec]] = field(default_factory=list)  # generation, one call each
    recordings: list[TrackSpec] = field(default_factory=list)  # `source:` tracks to process
    # Variations wait for their parent's approved audio, which is part of their spec hash:
    # whether one is cached is known once its parent is.
    variations: list[TrackSpec] = field(default_factory=list)
    # Variations --only left out: they wait too, to keep their entry if it is still theirs,
    # but are no work of this build's.
    left_out: frozenset[str] = frozenset()

    @property
    def todo(self) -> list[TrackSpec]:
        return [spec for batch in self.batches for spec in batch] + self.recordings

    @property
    def total(self) -> int:
        """The tracks this build ends with a record of its own (the progress counts them)."""
        return len(self.cached) + len(self.todo) + len(self.variations) - len(self.left_out)


def select(specs: Sequence[TrackSpec], only: Sequence[str]) -> list[TrackSpec]:
    """The tracks named by --only (all when empty); unknown ids are an input error."""
    if not only:
        return list(specs)
    known = {spec.id for spec in specs}
    unknown = [track_id for track_id in only if track_id not in known]
    if unknown:
        raise InputError(
            f"--only names tracks that are not in the manifest: {', '.join(unknown)} "
            f"(tracks: {', '.join(sorted(known))})"
        )
    return [spec for spec in specs if spec.id in only]


def reusable(
    record: TrackRecord | None,
    spec: TrackSpec,
    holds: Holds,
    *,
    selected: bool,
    force: bool,
) -> TrackRecord | None:
    """The lock's record as this build's `cached` one, when it published this exact spec and
    the build is not forced to render it again."""
    if record is None or not is_published(record, spec, holds) or (force and selected):
        return None
    # What it serves is this spec's approved take: a rebuild that failed since is no verdict now.
    update: dict[str, object] = {"status": "cached", "failed_rebuild": None}
    if record.reference is not None and "reference_sha256" not in record.reference:
        update["reference"] = {**record.reference, "reference_sha256": spec.reference_sha256}
    return record.model_copy(update=update)


def is_published(record: TrackRecord, spec: TrackSpec, holds: Holds) -> bool:
    """True when the lock approved this exact spec and every file (its sidecar and pictures
    too) is there with its checksum."""
    return approved_as_is(record, spec) and all(
        holds(f.key, f.sha256) for f in record.stored_files()
    )


def approved_as_is(record: TrackRecord, spec: TrackSpec) -> bool:
    """True when the lock approved this exact spec, its stems were separated (a separation that
    failed is tried again) and it was compared with the reference the track has now (outside
    the spec hash: judged again from its render). A track published before sidecars existed is
    published again; one published before pictures existed keeps being served without them."""
    compared = record.reference
    # A lock written before comparisons recorded their reference: taken as this one's (and
    # recorded so by `reusable`); a reference taken out since is a change.
    compared_with = (
        None if compared is None else compared.get("reference_sha256", spec.reference_sha256 or "")
    )
    return (
        record.usable
        and not record.unseparated
        and record.spec_hash == spec.spec_hash
        and compared_with == spec.reference_sha256
        and {f.format for f in record.files if f.stem is None} == set(spec.formats)
        and record.sidecar is not None
    )


def held_files(records: Iterable[TrackRecord], storage: Storage) -> set[tuple[str, str]]:
    """(key, sha256) of each file of `records` that storage holds, checked several at once."""
    wanted = sorted({(f.key, f.sha256) for record in records for f in record.stored_files()})
    with ThreadPoolExecutor(CHECKS_AT_ONCE, thread_name_prefix="check") as pool:
        held = list(pool.map(lambda file: storage.has_asset(*file), wanted))
    return {file for file, there in zip(wanted, held, strict=True) if there}


def plan_build(
    specs: Sequence[TrackSpec],
    lock: BuildReport | None,
    storage: Storage,
    *,
    only: Sequence[str] = (),
    force: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Plan:
    """Split the manifest into cached tracks, generation batches and recordings.

    Tracks left out by `only` keep their published entry when it still matches the manifest, so
    the lock stays complete. Variations are planned once their parents are (`variations`).
    """
    chosen = select(specs, only)
    selected = {spec.id for spec in chosen}
    previous = {record.id: record for record in lock.tracks} if lock else {}
    published = {record.id for record in previous.values() if record.usable}
    # A variation renders from its parent's approved audio: a parent left out by --only and
    # never published (or only rejected) leaves it nothing to render from, which is known now.
    orphans = [
        f"{spec.id} (a variation of {spec.variation_of})"
        for spec in chosen
        if spec.variation_of is not None
        and spec.variation_of not in selected
        and spec.variation_of not in published
    ]
    if orphans:
        raise InputError(
            f"--only selects {', '.join(orphans)}, whose parent is neither selected nor "
            "published here: select the parent too (--only PARENT)"
        )
    cached: list[TrackRecord] = []
    pending: list[TrackSpec] = []
    variations = [spec for spec in specs if spec.variation_of is not None]
    originals = [spec for spec in specs if spec.variation_of is None]
    held = held_files(
        (
            previous[spec.id]
            for spec in originals
            if spec.id in previous and approved_as_is(previous[spec.id], spec)
        ),
        storage,
    )

    def holds(key: str, sha256: str) -> bool:
        return (key, sha256) in held

    for spec in originals:
        record = reusable(
            previous.get(spec.id), spec, holds, selected=spec.id in selected, force=force
        )
        if record is not None:
            cached.append(record)
        elif spec.id in selected:
            pending.append(first_take(spec, previous.get(spec.id)))
    # A GPU holds one model at a time, and variations render after their parents: the models
    # variations render with go last, so their parents and then the variations share one load.
    varied = {spec.model for spec in variations}
    generated = sorted(
        (spec for spec in pending if spec.source is None), key=lambda spec: spec.model in varied
    )
    return Plan(
        cached=cached,
        batches=batch(generated, batch_size),
        recordings=[spec for spec in pending if spec.source is not None],
        variations=variations,
        left_out=frozenset(spec.id for spec in variations if spec.id not in selected),
    )


def batch(specs: Sequence[TrackSpec], batch_size: int) -> list[list[TrackSpec]]:
    """Group tracks that one generate call can render together: same model and settings,
    similar lengths (a batch runs as long as its longest track)."""
    groups: dict[tuple[object, ...], list[TrackSpec]] = {}
    for spec in specs:
        key = (
            spec.model,
            spec.model_revision,
            spec.sampling,
            spec.ace_step_sampling,
            spec.stable_audio_sampling,
            spec.overlap_s,
        )
        groups.setdefault(key, []).append(spec)
    batches = []
    for group in groups.values():
        ordered = sorted(group, key=lambda spec: (spec.duration_s, spec.id))
        batches += [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    return batches
