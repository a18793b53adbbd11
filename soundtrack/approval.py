"""The approval step (`review: required`): a person approves or rejects each track a build
rendered, after its gates and before anything is published.

The core asks a `Reviewer` (flows/build.py pauses the Prefect flow run for an input form) and
records each verdict: an approved take publishes as it would have; a rejected one is recorded
in the lock with the reviewer's comment and its take, so the next build of the same spec renders
the take after it rather than the same one again.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from soundtrack.redaction import redact
from soundtrack.report import BuildReport, ModelInfo, ReviewRejection, TrackRecord
from soundtrack.resolve import take
from soundtrack.spec import TrackSpec

if TYPE_CHECKING:  # the storage package imports boto3, which planning (first_take) never needs
    from soundtrack.process import TrackOutcome
    from soundtrack.stems import StemsOutcome
    from soundtrack.storage import PublishedFile


@dataclass(frozen=True)
class Candidate:
    """A track rendered in this build and approved by its gates, its files still staged."""

    spec: TrackSpec
    model: ModelInfo | None
    outcome: TrackOutcome
    stems: StemsOutcome | None


@dataclass(frozen=True)
class Verdict:
    """What the reviewer said of one candidate."""

    approved: bool
    comment: str = ""

    def __post_init__(self) -> None:
        # A reviewer's words reach terminals, CI logs, JUnit's XML and the published lock: an
        # ESC sequence would run, a bidi override would turn the line around, a lone surrogate
        # is no text, and a secret pasted in (or filled in by Prefect's form) is no comment.
        object.__setattr__(self, "comment", redact(_plain(self.comment)))


# By Unicode category: controls and line breaks, lone surrogates, format characters.
_REPLACED = {"Cc": " ", "Zl": " ", "Zp": " ", "Cs": "\ufffd", "Cf": ""}


def _plain(text: str) -> str:
    """`text` on one line: control characters and line breaks as spaces, format characters
    dropped."""
    kinds = {c: unicodedata.category(c) for c in set(text)}
    return "".join(_REPLACED.get(kinds[c], c) for c in text).strip()


class Reviewer(Protocol):
    """Asks a person about every candidate (their files are under `staging`); returns a verdict
    per track id, or None when nobody answered within `timeout_s`."""

    def __call__(
        self, candidates: Sequence[Candidate], staging: Path, timeout_s: float
    ) -> Mapping[str, Verdict] | None: ...


def first_take(spec: TrackSpec, record: TrackRecord | None) -> TrackSpec:
    """The take a build renders first: the one after the last a reviewer rejected of this
    spec (the lock's `record`), else the spec itself."""
    rejected = [r.take for r in rejected_takes(spec.spec_hash, record)]
    return take(spec, max(rejected) + 1) if rejected else spec


def rejections(
    spec: TrackSpec, previous: TrackRecord | None, comment: str
) -> list[ReviewRejection]:
    """The lock's rejections of this spec, with this take's added."""
    rejected = ReviewRejection(
        spec_hash=spec.spec_hash, take=spec.take, seed=spec.seed, comment=comment
    )
    return [*rejected_takes(spec.spec_hash, previous), rejected]


def rejected_takes(spec_hash: str, record: TrackRecord | None) -> list[ReviewRejection]:
    """The takes of the spec `spec_hash` a reviewer rejected, as the lock's `record` lists them."""
    return [r for r in (record.rejected_in_review if record else []) if r.spec_hash == spec_hash]


class StagedFiles:
    """Candidates described where they are staged, through the same path that publishes them:
    each file's key is its path below the staging folder, and nothing is copied."""

    def __init__(self, staging: Path) -> None:
        self.staging = staging

    def asset_key(
        self,
        soundtrack: str,
        track_id: str,
        spec_hash: str,
        ext: str,
        *,
        sha256: str,
        stem: str | None = None,
    ) -> str:
        return ""  # a staged file keeps its own place (put_asset keys it by its path)

    def put_asset(
        self,
        path: Path,
        key: str,
        *,
        sha256: str,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> PublishedFile:
        from soundtrack.storage import PublishedFile

        relative = path.resolve().relative_to(self.staging.resolve()).as_posix()
        return PublishedFile(relative, path.as_uri(), sha256, path.stat().st_size, False)

    def presign(self, key: str, expires_s: int = 0) -> str:
        raise ValueError("staged candidates have no links to sign")


def candidates_report(
    candidates: Sequence[Candidate], staging: Path, soundtrack: str, storage_url: str
) -> BuildReport:
    """The candidates as a report whose keys are their staged paths: what the review page of
    the takes waiting for a reviewer is made from."""
    from soundtrack.publish import publish_outcome

    staged = StagedFiles(staging)
    tracks = [
        publish_outcome(staged, c.spec, c.outcome, model=c.model, stems=c.stems) for c in candidates
    ]
    return BuildReport(soundtrack=soundtrack, storage=storage_url, tracks=tracks)
