"""What a build shows in the Prefect UI: progress as tracks finish, a table, links, a QC report,
and the picture of each published track and stem.

Artifacts are stored on the Prefect server and shown to anyone with access to it: every text
that may quote an error or a URL passes through `redact` (soundtrack/redaction.py). The UI
renders descriptions, markdown and table cells as Markdown: text that quotes a path, a reason or
a team's gate name goes in as a `literal`, or a folder named `x](javascript:...)` is a link.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import stat
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit
from urllib.request import url2pathname
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from flows.markdown import destination, literal
from soundtrack.atomic import link_twins
from soundtrack.errors import SoundtrackError
from soundtrack.publish import PRESIGN_EXPIRY_S
from soundtrack.redaction import redact
from soundtrack.renders import cache_root
from soundtrack.report import BuildReport, PictureRecord, TrackRecord

if TYPE_CHECKING:
    from soundtrack.process import TrackOutcome

KEY_GATES = ("loudness", "true_peak", "duration")
QC_REPORTS_KEPT = 20  # runs per soundtrack in the cache, about 0.1 MB per track each
_RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class BuildArtifacts:
    """Creates the build's artifacts; `track_done` may be called from any task thread."""

    def __init__(self, soundtrack: str, total: int) -> None:
        self.soundtrack = soundtrack
        self._started = datetime.now(UTC)  # every link it shows is signed after this
        self.total = max(total, 1)
        self.done = 0
        self._lock = threading.Lock()
        self._statuses: Counter[str] = Counter()
        self._lost = False  # the server stopped answering: no more artifacts
        # Called from a sync flow, so this is the UUID (the annotation also admits a coroutine).
        # The run's own, with no key: the soundtrack's keyed cards (tracks, assets) show the
        # last build that published, and a later run stopped early read as that build's state.
        self._progress = cast(
            UUID,
            create_progress_artifact(0.0, description=f"Tracks of {soundtrack} finished"),
        )

    def track_done(self, record: TrackRecord) -> None:
        with self._lock:
            self.done += 1
            self._statuses[record.status] += 1
            # Every status so far, not the last track's alone: a track rejected early stays said.
            statuses = ", ".join(f"{n} {status}" for status, n in sorted(self._statuses.items()))
            self._show(
                lambda: update_progress_artifact(
                    self._progress,
                    100.0 * self.done / self.total,
                    description=f"{self.done}/{self.total} tracks finished: {statuses} "
                    f"(last: {record.id}, {record.status})",
                )
            )

    def stopped(self, reason: str) -> None:
        """The build ended before its tracks did: the progress says why, not 'in progress'."""
        with self._lock:
            self._show(
                lambda: update_progress_artifact(
                    self._progress,
                    100.0 * self.done / self.total,
                    description=f"stopped after {self.done}/{self.total} tracks: "
                    + literal(redact(reason)),
                )
            )

    def finished(
        self,
        report: BuildReport,
        outcomes: Sequence[TrackOutcome],
        index: BuildReport | None,
        unpublished: str | None,
    ) -> None:
        self._show(lambda: self._create_all(report, outcomes, index, unpublished))

    def _show(self, call: Callable[[], object]) -> None:
        """The UI is the build's window, not its work: a server gone away mid-build stops the
        artifacts (one warning), not the build, whose renders and files are already made."""
        if self._lost:
            return
        try:
            call()
        except Exception as exc:
            self._lost = True
            get_run_logger().warning(
                "the Prefect UI stops showing this build's progress and results: %s",
                redact(f"{type(exc).__name__}: {exc}"),
            )

    def _create_all(
        self,
        report: BuildReport,
        outcomes: Sequence[TrackOutcome],
        index: BuildReport | None,
        unpublished: str | None,
    ) -> None:
        # The soundtrack's keyed cards are the last build that published, with every track its
        # lock lists (also those --only left out): one that did not shows its table and why in
        # its own run only.
        built = {track.id for track in report.tracks}
        kept = [t for t in index.tracks if t.id not in built] if index is not None else []
        served = {t.id: t for t in index.tracks} if index is not None else {}
        create_table_artifact(
            table=[_row(track, served.get(track.id)) for track in [*report.tracks, *kept]],
            key=f"{self.soundtrack}-tracks" if index is not None else None,
            description=f"{self.soundtrack}: "
            + ", ".join(f"{n} {status}" for status, n in report.counts().items() if n),
        )
        docs = _data_docs(self.soundtrack, outcomes)
        create_markdown_artifact(
            _links(report, index, docs, unpublished, self._started),
            key=f"{self.soundtrack}-assets" if index is not None else None,
            description="Published assets" if index is not None else "Not published",
        )
        if index is None:
            return
        # The UI shows an image it can fetch: S3's presigned links. A folder's pictures are
        # listed, by path, in the markdown above.
        for name, picture in _pictures(index):
            if picture.url is not None and picture.url.startswith(("https://", "http://")):
                create_image_artifact(
                    redact(picture.url),
                    key=f"{self.soundtrack}-{name.replace('.', '-')}-picture",
                    description=f"{name}: waveform, spectrogram and short-term loudness",
                )


def _row(track: TrackRecord, served: TrackRecord | None) -> dict[str, object]:
    """This build's measures of `track`; its status and formats what the lock serves, when it
    keeps earlier files (the assets card said so, and the table "rejected", no format)."""
    values = {g.name: g.value for g in track.gates}
    shown = served if served is not None and served.failed_rebuild is not None else track
    row: dict[str, object] = {"track": track.id, "status": _status(shown)}
    for name in KEY_GATES:
        value = values.get(name)
        row[name] = "" if value is None else round(value, 2)
    row["formats"] = ", ".join(f.format for f in shown.files if f.stem is None)
    analysis = track.analysis or {}
    row["bpm"] = "" if analysis.get("tempo_bpm") is None else f"{analysis['tempo_bpm']:.1f}"
    row["key"] = analysis.get("key") or ""
    row["takes"] = literal(redact(track.takes_summary()))
    row["variation of"] = track.variation_of or ""
    row["stems"] = literal(redact(track.stems_summary()))
    row["reason"] = literal(redact(track.reason or ""))
    return row


def _links(
    report: BuildReport,
    index: BuildReport | None,
    docs: Path | None,
    unpublished: str | None,
    started: datetime,
) -> str:
    lines = [f"# {report.soundtrack}", ""]
    if unpublished is not None:
        # No lock names the files: links would show as published a build that is not.
        lines.append(f"Nothing published: {literal(redact(unpublished))}")
    elif index is not None:
        lines += _file_links(report, index, started)
    if docs is not None:
        link = f"[{literal(str(docs))}]({docs.as_uri()})"
        lines += ["", f"QC report (Great Expectations Data Docs): {link}"]
    return redact("\n".join(lines) + "\n")


def _file_links(report: BuildReport, index: BuildReport, started: datetime) -> list[str]:
    """What the lock serves, track by track (a rebuild rejected keeps its earlier files), then
    the tracks of this build that it does not serve."""
    lines = ["| track | status | files |", "|---|---|---|"]
    for track in index.tracks:
        links = [
            (f"{f.stem}.{f.format}" if f.stem else f.format, f.url or f.uri) for f in track.files
        ]
        if track.sidecar is not None:
            links.append(("json", track.sidecar.url or track.sidecar.uri))
        files = " ".join(f"[{name}]({destination(target)})" for name, target in links) or "-"
        lines.append(f"| {track.id} | {_status(track)} | {files} |")
    served = {track.id for track in index.tracks}
    lines += [f"| {t.id} | {t.status} | - |" for t in report.tracks if t.id not in served]
    stored = [f for track in index.tracks for f in track.stored_files()]
    if any((f.url or "").startswith(("https://", "http://")) for f in stored):
        until = started + timedelta(seconds=PRESIGN_EXPIRY_S)
        lines += [
            "",
            f"The links are presigned for {PRESIGN_EXPIRY_S // 86400} days: they work until "
            f"{until:%Y-%m-%d %H:%M} UTC at "
            "least, less when the build's credentials are temporary; the next build signs new "
            "ones.",
        ]
    pictures = _pictures(index)
    if pictures:
        lines += ["", "Pictures (waveform, spectrogram, short-term loudness against the target):"]
        lines += [
            f"- {name}: [{literal(redact(_where(p.uri)))}]({destination(p.url or p.uri)})"
            for name, p in pictures
        ]
    return lines


def _status(track: TrackRecord) -> str:
    if track.failed_rebuild is None:
        return track.status
    return f"{track.status}; its rebuild {track.failed_rebuild.status}, earlier files served"


def _pictures(report: BuildReport) -> list[tuple[str, PictureRecord]]:
    """(track, or track.stem) -> its picture, for each one the report holds."""
    found = [(t.id, t.picture) for t in report.tracks]
    found += [(f"{t.id}.{s.name}", s.picture) for t in report.tracks for s in t.stems]
    return [(name, picture) for name, picture in found if picture is not None]


def _where(uri: str) -> str:
    """A file:// URI as the path it names; any other URI as it is."""
    parts = urlsplit(uri)
    return url2pathname(parts.path) if parts.scheme == "file" else uri


def _data_docs(soundtrack: str, outcomes: Sequence[TrackOutcome]) -> Path | None:
    # The QC report is a convenience: a failure to render it must not fail the build.
    if not outcomes:
        return None
    from soundtrack.expectations import build_data_docs  # only a build that processed tracks

    # Seconds per hundred tracks, after the lock: said, or the build looks stuck at its end.
    get_run_logger().info("writing the QC report (Data Docs) of %d track(s)", len(outcomes))
    # A folder per run: in one per soundtrack, an earlier run's link opened the latest report.
    reports = cache_root() / "qc" / soundtrack
    try:
        index = build_data_docs([o.qc for o in outcomes], reports / str(flow_run.id))
    except (SoundtrackError, OSError, ValueError) as exc:
        # Redacted here too: a worker's process may not have the CLI's log redaction.
        get_run_logger().warning("QC report (Data Docs) not written: %s", redact(str(exc)))
        return None
    try:
        _keep_last_runs(reports, index.parent)
    except OSError as exc:
        get_run_logger().warning("older QC reports not removed: %s", redact(str(exc)))
    return index


def _keep_last_runs(reports: Path, run: Path) -> None:
    """Keep the soundtrack's last QC_REPORTS_KEPT QC reports (an older run's link finds nothing
    rather than another's), `run`'s 4 MB of page assets shared with the run before's."""
    runs = _runs(reports)
    earlier = [other for other in runs if other != run]
    if earlier:
        with contextlib.suppress(OSError):  # a copy costs only space
            link_twins(run / "static", earlier[0] / "static")
    for old in runs[QC_REPORTS_KEPT:]:
        shutil.rmtree(old, ignore_errors=True)  # another build of it may be removing it too


def _runs(reports: Path) -> list[Path]:
    """The soundtrack's QC report folders, one per run, newest first."""
    runs: list[tuple[float, Path]] = []
    for entry in reports.iterdir():
        if not _RUN_ID.fullmatch(entry.name):
            continue
        with contextlib.suppress(FileNotFoundError):  # another build of it removed it
            status = entry.lstat()
            if stat.S_ISDIR(status.st_mode):  # a link is none of ours
                runs.append((status.st_mtime, entry))
    return [run for _, run in sorted(runs, reverse=True)]
