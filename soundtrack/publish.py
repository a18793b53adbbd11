"""Publishing one approved track and assembling the build's report (the lock file)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from soundtrack.errors import StorageError
from soundtrack.formats import content_type_for, output_format
from soundtrack.pictures import PICTURE_CONTENT_TYPE, PICTURE_EXT, Picture
from soundtrack.redaction import redact
from soundtrack.report import (
    BuildReport,
    FailedRebuild,
    FileRecord,
    ModelInfo,
    PictureRecord,
    SidecarRecord,
    Status,
    StemRecord,
    TrackRecord,
)
from soundtrack.sidecar import SIDECAR_EXT
from soundtrack.spec import TrackSpec
from soundtrack.storage import PublishedFile

if TYPE_CHECKING:
    from soundtrack.gates import GateResult
    from soundtrack.process import TrackOutcome
    from soundtrack.stems import StemsOutcome
    from soundtrack.storage import Storage

PRESIGN_EXPIRY_S = 7 * 24 * 3600


class Publisher(Protocol):
    """What publishing a track needs of a storage (approval.StagedFiles describes staged
    candidates through the same path)."""

    def asset_key(
        self,
        soundtrack: str,
        track_id: str,
        spec_hash: str,
        ext: str,
        *,
        sha256: str,
        stem: str | None = None,
    ) -> str: ...

    def put_asset(
        self,
        path: Path,
        key: str,
        *,
        sha256: str,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> PublishedFile: ...

    def presign(self, key: str, expires_s: int = ...) -> str: ...


def track_record(
    spec: TrackSpec,
    status: Status,
    *,
    model: ModelInfo | None = None,
    reason: str | None = None,
    gates: Sequence[GateResult] = (),
    files: Sequence[FileRecord] = (),
    outcome: TrackOutcome | None = None,
) -> TrackRecord:
    """The report entry of one track (with what `outcome` measured, when it was processed)."""
    return TrackRecord.model_validate(
        {
            "id": spec.id,
            "status": status,
            "spec_hash": spec.spec_hash,
            "seed": None if spec.source else spec.seed,
            "prompt": spec.prompt,
            "source": spec.source.name if spec.source else None,
            "model": model,
            # A reason quotes exception text, which may carry a library's view of a secret.
            "reason": None if reason is None else redact(reason),
            "gates": list(gates),
            "files": list(files),
            "analysis": None if outcome is None else outcome.analysis_row(),
            "reference": None if outcome is None else outcome.reference,
            "variation_of": spec.variation_of,
            "parent_sha256": spec.parent_audio.sha256 if spec.parent_audio else None,
            "parent_audio_sha256": spec.parent_audio.audio_sha256 if spec.parent_audio else None,
        }
    )


def publish_outcome(
    storage: Publisher,
    spec: TrackSpec,
    outcome: TrackOutcome,
    *,
    model: ModelInfo | None,
    stems: StemsOutcome | None = None,
    presign_expiry_s: int = PRESIGN_EXPIRY_S,
) -> TrackRecord:
    """Upload an approved track's files, picture and sidecar and its stems' files and pictures
    (each verified by checksum) and return its report entry."""
    if outcome.status != "approved" or outcome.master is None:
        raise ValueError(f"track {spec.id!r} is {outcome.status}; only approved tracks publish")
    metadata = {
        "track-id": spec.id,
        "spec-hash": spec.spec_hash,
        "model": model.id if model else "recording",
        "seed": str(spec.seed),
    }
    info = outcome.master
    files = []
    stem_files = [
        (stem.name, encoded) for stem in (stems.stems if stems else []) for encoded in stem.files
    ]
    for name, encoded in [(None, encoded) for encoded in outcome.files] + stem_files:
        key = storage.asset_key(
            spec.soundtrack,
            spec.id,
            spec.spec_hash,
            encoded.format,
            sha256=encoded.sha256,
            stem=name,
        )
        loops = output_format(encoded.format).loop_points
        published = storage.put_asset(
            encoded.path,
            key,
            sha256=encoded.sha256,
            content_type=content_type_for(encoded.format),
            metadata=metadata,
        )
        files.append(
            FileRecord(
                format=encoded.format,
                key=published.key,
                uri=published.uri,
                sha256=published.sha256,
                bytes=published.bytes,
                duration_s=info.duration_s,
                sample_rate=info.sample_rate,
                channels=info.channels,
                # Only where the file itself carries them: the lock describes the file.
                loop_start=info.loop_start if loops else None,
                loop_length=info.loop_length if loops else None,
                stem=name,
                url=_link(storage, published, presign_expiry_s),
                audio_sha256=encoded.audio_sha256,
            )
        )
    record = track_record(
        spec, "approved", model=model, gates=outcome.gates, files=files, outcome=outcome
    )

    publish_picture = partial(
        _publish_picture, storage, spec, metadata=metadata, presign_expiry_s=presign_expiry_s
    )
    if outcome.picture is not None:
        record = record.model_copy(update={"picture": publish_picture(outcome.picture, None)})
    if stems is not None:
        records = [
            StemRecord(
                name=stem.name,
                status=stem.status,
                reason=stem.reason,
                gates=[stems.sum_gate, *stem.gates],
                picture=None if stem.picture is None else publish_picture(stem.picture, stem.name),
            )
            for stem in stems.stems
        ]
        separator = ModelInfo(id=stems.model_id, revision=stems.revision, license=stems.license)
        record = record.model_copy(update={"stems": records, "stem_model": separator})
    if outcome.sidecar is None:
        return record
    published = storage.put_asset(
        outcome.sidecar.path,
        storage.asset_key(
            spec.soundtrack, spec.id, spec.spec_hash, SIDECAR_EXT, sha256=outcome.sidecar.sha256
        ),
        sha256=outcome.sidecar.sha256,
        content_type="application/json",
        metadata=metadata,
    )
    sidecar = SidecarRecord(
        key=published.key,
        uri=published.uri,
        sha256=published.sha256,
        bytes=published.bytes,
        url=_link(storage, published, presign_expiry_s),
    )
    return record.model_copy(update={"sidecar": sidecar})


def _publish_picture(
    storage: Publisher,
    spec: TrackSpec,
    picture: Picture,
    stem: str | None,
    *,
    metadata: Mapping[str, str],
    presign_expiry_s: int,
) -> PictureRecord:
    """Upload the PNG of a track (or of its `stem`) beside its audio; its lock entry."""
    published = storage.put_asset(
        picture.path,
        storage.asset_key(
            spec.soundtrack, spec.id, spec.spec_hash, PICTURE_EXT, sha256=picture.sha256, stem=stem
        ),
        sha256=picture.sha256,
        content_type=PICTURE_CONTENT_TYPE,
        metadata=metadata,
    )
    return PictureRecord(
        key=published.key,
        uri=published.uri,
        sha256=published.sha256,
        bytes=published.bytes,
        width_px=picture.width_px,
        height_px=picture.height_px,
        url=_link(storage, published, presign_expiry_s),
    )


def _link(storage: Publisher, published: PublishedFile, expiry_s: int) -> str | None:
    """A presigned download link on S3; None for a folder, whose `uri` is the link."""
    return storage.presign(published.key, expiry_s) if published.uri.startswith("s3://") else None


def changed_since(planned: BuildReport | None, now: BuildReport | None) -> set[str]:
    """The tracks whose served files another build changed (published anew, added, took out)
    between the lock a build planned against and the lock `now` (none read: nothing to keep)."""
    if now is None:
        return set()

    def serving(lock: BuildReport | None) -> dict[str, object]:
        # What a lock serves of each track (nothing, for a failed one): a failed rebuild that
        # left it as it was, or the same take published again, changes nothing a player hears.
        return {
            t.id: (t.spec_hash, sorted((f.key, f.sha256) for f in t.stored_files()))
            if t.usable
            else None
            for t in (lock.tracks if lock else [])
        }

    before, after = serving(planned), serving(now)
    return {i for i in before.keys() | after.keys() if before.get(i) != after.get(i)}


def rejected_since(
    planned: BuildReport | None, now: BuildReport | None
) -> set[tuple[str, str, int]]:
    """(track id, spec hash, take) of the takes another build's reviewer rejected between the
    lock a build planned against and the lock `now`."""

    def rejected(lock: BuildReport | None) -> set[tuple[str, str, int]]:
        tracks = lock.tracks if lock else []
        return {(t.id, r.spec_hash, r.take) for t in tracks for r in t.rejected_in_review}

    return rejected(now) - rejected(planned)


def index_of(
    report: BuildReport,
    previous: BuildReport | None,
    track_ids: list[str],
    *,
    theirs: set[str] | frozenset[str] = frozenset(),
) -> BuildReport:
    """The lock to publish: this build's usable tracks, and for every other track still in the
    manifest, what the previous lock had published (a failed or rejected rebuild, or a track
    left out by --only, keeps serving its last approved files, or its record of takes rejected).

    A track this build reused as published takes the previous lock's entry as it is now. The
    tracks `theirs` (another build changed them while this one waited for its review) keep
    the previous lock's entry, or its lack of one, whatever this build did with them."""
    recorded = {t.id: t for t in previous.tracks} if previous else {}
    earlier = {track_id: t for track_id, t in recorded.items() if t.usable}
    now = {t.id: t for t in report.tracks}
    tracks = []
    for track_id in track_ids:
        current = now.get(track_id)
        if track_id in theirs:
            if track_id in recorded:
                tracks.append(recorded[track_id])
        elif current is not None and current.status == "cached" and track_id in earlier:
            # As plan.reusable has it (its comparison's reference recorded, in an older lock).
            reused = {"status": "cached", "failed_rebuild": None, "reference": current.reference}
            tracks.append(earlier[track_id].model_copy(update=reused))
        elif current is not None and current.usable:
            tracks.append(current)
        elif current is None and track_id in recorded:
            tracks.append(recorded[track_id])
        elif track_id in earlier:
            # What this build made of it is remembered beside the files still served: its
            # verdict (for CI reading the lock), and a take rejected in review.
            kept = earlier[track_id]
            if current is not None:
                failed = FailedRebuild(
                    status="rejected" if current.status == "rejected" else "failed",
                    spec_hash=current.spec_hash,
                    reason=current.reason,
                    gates=current.gates,
                )
                kept = kept.model_copy(update={"failed_rebuild": failed})
            if current is not None and current.rejected_in_review:
                kept = kept.model_copy(update={"rejected_in_review": current.rejected_in_review})
            tracks.append(kept)
        elif current is not None:
            tracks.append(current)
    # What another build added while this one waited is not this build's to take out.
    listed = set(track_ids)
    tracks += [recorded[i] for i in recorded if i in theirs and i not in listed]
    return report.model_copy(update={"tracks": tracks})


def lock_bytes(report: BuildReport) -> bytes:
    """The lock file as written to storage: the report without short-lived presigned links."""
    stable = report.model_copy(update={"tracks": [_unsigned(t) for t in report.tracks]})
    return stable.to_json().encode()


_Linked = TypeVar("_Linked", FileRecord, SidecarRecord, PictureRecord)


def with_links(report: BuildReport, storage: Storage) -> BuildReport:
    """`report` with every file's URI where this storage has it, and a presigned link on every
    S3 file that has none: a cached track's record comes from the lock, which keeps none, and
    named where the files were then (a folder restored elsewhere, a CI cache)."""

    def linked(item: _Linked | None) -> _Linked | None:
        if item is None:
            return None
        item = item.model_copy(update={"uri": storage.uri(item.key)})
        if item.url is not None or not item.uri.startswith("s3://"):
            return item
        try:
            url = storage.presign(item.key, PRESIGN_EXPIRY_S)
        except StorageError:
            return item  # credentials that cannot sign now: the file is published all the same
        return item.model_copy(update={"url": url})

    tracks = [
        track.model_copy(
            update={
                "files": [linked(f) for f in track.files],
                "sidecar": linked(track.sidecar),
                "picture": linked(track.picture),
                "stems": [s.model_copy(update={"picture": linked(s.picture)}) for s in track.stems],
            }
        )
        for track in report.tracks
    ]
    return report.model_copy(update={"tracks": tracks})


def _unsigned(track: TrackRecord) -> TrackRecord:
    """`track` without presigned links: they expire long before the lock does."""
    bare = {"url": None}
    return track.model_copy(
        update={
            "files": [f.model_copy(update=bare) for f in track.files],
            "sidecar": track.sidecar and track.sidecar.model_copy(update=bare),
            "picture": track.picture and track.picture.model_copy(update=bare),
            "stems": [
                s.model_copy(update={"picture": s.picture and s.picture.model_copy(update=bare)})
                for s in track.stems
            ],
        }
    )
