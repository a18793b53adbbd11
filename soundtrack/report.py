"""The build report, which is also the lock file (`soundtrack.lock.json`) indexing published files.

The lock is the index a game or a later build reads; it is written last, so a reader never sees
half a build. Its name and place belong to storage (`soundtrack.storage.INDEX_NAME`). JUnit XML
is rendered from the same report for CI systems.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

from soundtrack import PIPELINE_VERSION
from soundtrack.errors import SoundtrackError
from soundtrack.gates import GateResult
from soundtrack.storage import Storage, soundtrack_folder
from soundtrack.storage.base import is_relative_key

REPORT_SCHEMA = 1
Status = Literal["approved", "rejected", "failed", "cached"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A content hash names files (the review server's copies): only its 64 hex digits may.
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class ModelInfo(_Model):
    id: str
    revision: str
    license: str


class FileRecord(_Model):
    format: str
    key: str
    uri: str
    sha256: Sha256
    bytes: int
    # A lock is read back from storage, where anyone may edit it: an infinite duration would
    # be written back as null, which no later read takes. (Optional measures may be NaN: null.)
    duration_s: float = Field(allow_inf_nan=False)
    sample_rate: int
    channels: int
    loop_start: int | None = None
    loop_length: int | None = None
    stem: str | None = Field(default=None, description="The stem this file holds; None: the mix.")
    url: str | None = Field(default=None, description="Presigned download link (S3 only).")
    audio_sha256: Sha256 | None = Field(
        default=None,
        description="Of the file the track's variations render from: sha256 of its decoded "
        "samples, which their keys hold (its bytes change with its tags).",
    )

    @field_validator("key")
    @classmethod
    def _key_inside(cls, key: str) -> str:
        return _inside(key)


def _inside(key: str) -> str:
    # A lock is read back from storage, where anyone may have edited it: a key that could
    # name a path outside the storage root makes the lock unreadable, not the build's input.
    if not is_relative_key(key):
        raise ValueError(f"file key {key!r} is not a relative path inside the storage")
    # No key this tool publishes has one: a name starting with "." is its own records' (the
    # journal, the lease), which a review server would otherwise serve from a forged lock.
    if any(segment.startswith(".") for segment in key.split("/")):
        raise ValueError(f"file key {key!r} names a hidden file (its records), not a track's")
    return key


class SidecarRecord(_Model):
    """The engine sidecar published beside a track's audio (docs/formats.md#sidecar)."""

    format: Literal["json"] = "json"
    key: str
    uri: str
    sha256: Sha256
    bytes: int
    url: str | None = Field(default=None, description="Presigned download link (S3 only).")

    @field_validator("key")
    @classmethod
    def _key_inside(cls, key: str) -> str:
        return _inside(key)


class PictureRecord(_Model):
    """The PNG of a track or stem: waveform, spectrogram, loudness (docs/formats.md#pictures)."""

    format: Literal["png"] = "png"
    key: str
    uri: str
    sha256: Sha256
    bytes: int
    width_px: int
    height_px: int
    url: str | None = Field(default=None, description="Presigned download link (S3 only).")

    @field_validator("key")
    @classmethod
    def _key_inside(cls, key: str) -> str:
        return _inside(key)


class TakeRecord(_Model):
    """One take of a track that may be re-rolled: its seed and what became of it."""

    take: int = Field(description="0 for the first take: the CLI and the review page say take 1.")
    seed: int
    status: Literal["approved", "rejected", "failed"]
    rejected_by: list[str] = Field(default_factory=list, description="Gates that failed it.")
    reason: str | None = None


class ReviewRejection(_Model):
    """A take a reviewer rejected: the next build of the same spec renders a later take."""

    spec_hash: str
    take: int = Field(description="0 for the first take, as in TakeRecord.")
    seed: int
    comment: str = ""


def _unset(value: object) -> bool:
    return value is None


class FailedRebuild(_Model):
    """The last build of a track, rejected or failed: the files still served are an earlier
    take's (an earlier spec's, or the same spec's before a --force)."""

    status: Literal["rejected", "failed"]
    spec_hash: str
    reason: str | None = None
    gates: list[GateResult] = Field(default_factory=list)


class ReviewApproval(_Model):
    """The reviewer's approval of the take published (review: required)."""

    take: int = Field(description="0 for the first take, as in TakeRecord.")
    seed: int
    comment: str = ""


class StemRecord(_Model):
    """One stem a track asked for; its files are in the track's `files` (`stem` set)."""

    name: str
    status: Literal["published", "silent", "rejected"]
    reason: str | None = None
    gates: list[GateResult] = Field(default_factory=list)
    picture: PictureRecord | None = Field(default=None, description="Of a published stem.")


class TrackRecord(_Model):
    id: str
    status: Status
    spec_hash: str
    seed: int | None = None
    prompt: str | None = None
    source: str | None = None
    model: ModelInfo | None = None
    reason: str | None = Field(default=None, description="Why a track failed or was rejected.")
    gates: list[GateResult] = Field(default_factory=list)
    files: list[FileRecord] = Field(default_factory=list)
    sidecar: SidecarRecord | None = None
    picture: PictureRecord | None = Field(default=None, description="Of an approved track.")
    analysis: dict[str, float | int | str | None] | None = Field(
        default=None, description="What the master measured: tempo, key, loudness range..."
    )
    reference: dict[str, Any] | None = Field(
        default=None, description="The render compared with the track's reference recording."
    )
    takes: list[TakeRecord] = Field(
        default_factory=list, description="Every take tried, when the track may re-roll."
    )
    rejected_in_review: list[ReviewRejection] = Field(
        default_factory=list,
        description="Takes a reviewer rejected (review: required), kept until the spec changes.",
    )
    # Left out when unset, so a lock without them stays readable by the version before them.
    approved_in_review: ReviewApproval | None = Field(
        default=None,
        exclude_if=_unset,
        description="The reviewer's approval of this take, with their comment.",
    )
    failed_rebuild: FailedRebuild | None = Field(
        default=None,
        exclude_if=_unset,
        description="The last build of the track, rejected or failed, while this entry's "
        "earlier files stay served.",
    )
    stems: list[StemRecord] = Field(
        default_factory=list, description="Each stem asked for: published, silent or rejected."
    )
    stem_model: ModelInfo | None = Field(
        default=None, description="The separator the stems came from, with its licence."
    )
    variation_of: str | None = Field(
        default=None, description="The parent track this one was rendered from."
    )
    parent_sha256: Sha256 | None = Field(
        default=None, description="sha256 of the parent's published file it was rendered from."
    )
    parent_audio_sha256: Sha256 | None = Field(
        default=None, description="sha256 of that file's decoded samples (its audio_sha256)."
    )

    def stored_files(self) -> list[FileRecord | SidecarRecord | PictureRecord]:
        """Every object this entry names in storage: its audio (stems' too), its sidecar and
        its pictures."""
        others = [self.sidecar, self.picture, *(stem.picture for stem in self.stems)]
        return [*self.files, *(entry for entry in others if entry is not None)]

    @property
    def usable(self) -> bool:
        """Approved now or earlier: its files are published and referenced by the lock."""
        return self.status in ("approved", "cached")

    @property
    def unseparated(self) -> bool:
        """Its stems were asked for and the separation failed (the sum gate measured nothing):
        worth another try."""
        return any(g.name == "stems_sum" and g.value is None for s in self.stems for g in s.gates)

    def stems_summary(self) -> str:
        """What became of the stems asked for, in a line ("drums, bass published; vocals
        silent")."""
        by_status: dict[str, list[str]] = {}
        for stem in self.stems:
            by_status.setdefault(stem.status, []).append(stem.name)
        parts = [f"{', '.join(names)} {status}" for status, names in by_status.items()]
        # Each reason once, after the stems it is theirs (the sum gate's is every stem's).
        by_reason: dict[str, list[str]] = {}
        for stem in self.stems:
            if stem.status == "rejected" and stem.reason:
                by_reason.setdefault(stem.reason, []).append(stem.name)
        reasons = [f"{', '.join(names)}: {reason}" for reason, names in by_reason.items()]
        return "; ".join(parts + reasons)

    def takes_summary(self) -> str:
        """The takes tried, in a line ("take 3 of 3 passed (seed 9); 1: tempo; 2: loudness")."""
        if not self.takes:
            return ""
        last = self.takes[-1]
        verdict = "passed" if last.status == "approved" else last.status
        tried = [
            f"{t.take + 1}: {', '.join(t.rejected_by) or t.status}"
            for t in self.takes
            if t.status != "approved"
        ]
        head = f"take {last.take + 1} {verdict} (seed {last.seed})"
        return "; ".join([head, *tried])

    def review_summary(self) -> str:
        """What reviewers said of this spec's takes, in a line (takes counted from 1)."""
        said = [
            f"take {r.take + 1} rejected: {r.comment or 'no comment'}"
            for r in self.rejected_in_review
        ]
        if self.approved_in_review is not None:
            approval = self.approved_in_review
            said.append(f"take {approval.take + 1} approved: {approval.comment or 'no comment'}")
        return "; ".join(said)


class BuildReport(_Model):
    report_schema: int = REPORT_SCHEMA
    soundtrack: str
    pipeline_version: str = PIPELINE_VERSION
    storage: str
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    model_loads: int = Field(default=0, description="Models loaded by this build (0 when cached).")
    build_name: str | None = Field(
        default=None,
        description="The name of the run that wrote it (its Prefect flow run's): a CI job that "
        "named its run knows its own build's lock from another's.",
    )
    tracks: list[TrackRecord]
    warnings: list[str] = Field(
        default_factory=list, description="What the build noticed and worked around."
    )

    @field_validator("report_schema")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        # An older schema's lock reads (a field a later schema added is optional); a newer one's
        # may hold what this version would drop on writing it back.
        if not 1 <= value <= REPORT_SCHEMA:
            raise ValueError(f"schema {value}; this version reads schema {REPORT_SCHEMA}")
        return value

    @field_validator("created_at")
    @classmethod
    def _a_time_with_its_zone(cls, value: str) -> str:
        # Read as one by the JUnit file and scripts/lock_to_junit.py, beside times in UTC.
        try:
            when = datetime.fromisoformat(value)
            if when.tzinfo is not None:
                when.astimezone(UTC)  # OverflowError for a zone that moves it past year 9999
        except (ValueError, OverflowError):
            raise ValueError(f"{value!r} is no ISO 8601 time") from None
        if when.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone")
        return value

    def counts(self) -> dict[str, int]:
        """Number of tracks per status."""
        counts = {status: 0 for status in ("approved", "cached", "rejected", "failed")}
        for track in self.tracks:
            counts[track.status] += 1
        return counts

    @property
    def ok(self) -> bool:
        """True when every track is approved or cached (exit code 0)."""
        return all(track.usable for track in self.tracks)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


class LockUnreadable(SoundtrackError):
    """A lock file that is truncated, damaged or of another schema; the message says why."""


class LockOfNewerVersion(LockUnreadable):
    """A lock of a later schema, or holding fields this version does not know: a newer
    version's, which a build here would write back without them."""


def parse_lock(data: bytes | None) -> BuildReport | None:
    """Read a lock file (None when there is none); raise LockUnreadable naming what is wrong."""
    if data is None:
        return None
    try:
        return BuildReport.model_validate_json(data)
    except ValidationError as exc:
        if any(_of_newer_version(error) for error in exc.errors()):
            raise LockOfNewerVersion(
                f"{first_problem(exc)}: a newer soundtrack-pipeline's lock, or an edited one"
            ) from None
        raise LockUnreadable(first_problem(exc)) from None


def _of_newer_version(error: ErrorDetails) -> bool:
    # A field it does not know: a model's, or a dataclass's (a gate's result).
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return True
    later = error["loc"] == ("report_schema",) and isinstance(error["input"], int)
    return later and error["input"] > REPORT_SCHEMA


def read_lock(storage: Storage, soundtrack: str) -> BuildReport | None:
    """The soundtrack's published lock (None when there is none); LockUnreadable when it is
    damaged, or names a file outside the soundtrack's folder: another soundtrack's (which its
    own builds and gc may replace) or a copied lock's, none of this soundtrack's files."""
    report = parse_lock(storage.read_index(soundtrack))
    folder = soundtrack_folder(storage, soundtrack)
    tracks = report.tracks if report else []
    outside = sorted(
        f.key for track in tracks for f in track.stored_files() if not f.key.startswith(folder)
    )
    if outside:
        raise LockUnreadable(
            f"it names {outside[0]}, outside its folder {folder}: a lock names only its own files"
        )
    return report


def first_problem(exc: ValidationError) -> str:
    """The first thing wrong with stored JSON, where it is, and how many more there are."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {message}{more}"


# What XML 1.0 cannot hold at all, escaped or not: one such character and a CI's JUnit reader
# refuses the whole file.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(text: str) -> str:
    """`text` as XML can hold it: characters it cannot, written out as \\xNN."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def latest_verdicts(lock: BuildReport) -> BuildReport:
    """The lock as the verdicts of the builds that wrote it: a track whose last rebuild was
    rejected or failed reads as that, not as the earlier files it still serves."""
    tracks = [_latest(track) for track in lock.tracks]
    return lock.model_copy(update={"tracks": tracks})


def _latest(track: TrackRecord) -> TrackRecord:
    failed = track.failed_rebuild
    if failed is None:
        return track
    verdict = {name: getattr(failed, name) for name in ("status", "spec_hash", "reason", "gates")}
    return track.model_copy(update={**verdict, "files": []})


def to_junit(report: BuildReport) -> str:
    """JUnit XML: one testcase per track; gate failures as failures, generation errors as errors."""
    counts = report.counts()
    suite = ET.Element(
        "testsuite",
        name=f"soundtrack.{report.soundtrack}",
        tests=str(len(report.tracks)),
        failures=str(counts["rejected"]),
        errors=str(counts["failed"]),
        skipped="0",
        # Ant's JUnit schema takes a timestamp without a zone (strict validators refuse one).
        timestamp=datetime.fromisoformat(report.created_at)
        .astimezone(UTC)
        .strftime("%Y-%m-%dT%H:%M:%S"),
    )
    for track in report.tracks:
        case = ET.SubElement(suite, "testcase", classname=report.soundtrack, name=track.id)
        failed_gates = [g for g in track.gates if not g.passed and g.severity == "fail"]
        if track.status == "rejected":
            # None: nothing to measure (a silent track has no loudness), not a number.
            measured = {g.name: "nothing" if g.value is None else g.value for g in failed_gates}
            message = "; ".join(
                f"{g.name}: {measured[g.name]} (limit {g.limit})" for g in failed_gates
            )
            failure = ET.SubElement(
                case, "failure", message=_xml_text(message or (track.reason or ""))
            )
            failure.text = "\n".join(
                f"{g.name}: measured {measured[g.name]}, limit {g.limit}" for g in failed_gates
            )
        elif track.status == "failed":
            ET.SubElement(case, "error", message=_xml_text(track.reason or "failed"))
        lines = [f"status: {track.status}", f"spec_hash: {track.spec_hash}"]
        lines += [f"{f.format}: {f.uri} sha256={f.sha256}" for f in track.files]
        # A rejected stem leaves its track approved (the mix is published): said here, or a
        # CI reading only this file never learns of it.
        lines += [f"stems: {track.stems_summary()}"] if track.stems else []
        ET.SubElement(case, "system-out").text = _xml_text("\n".join(lines))
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"
