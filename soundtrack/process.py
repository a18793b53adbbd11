"""One track's processing chain: measure the input, master, encode, decode and judge every file."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from soundtrack.encode import EncodedFile, encode
from soundtrack.errors import AudioError
from soundtrack.expectations import check_expectations
from soundtrack.gates import (
    MASTER,
    SOURCE,
    Gate,
    GateResult,
    GateTable,
    evaluate,
    gate_expectations,
    metrics_row,
)
from soundtrack.master import Master, master
from soundtrack.measure import Metrics, measure, measure_file
from soundtrack.spec import TrackSpec

_T = TypeVar("_T")


@dataclass(frozen=True)
class MasterInfo:
    """What the report needs to know about a master (no audio)."""

    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    loop_start: int | None
    loop_length: int | None
    input_lufs: float
    gain_db: float
    limiter_reduction_db: float


@dataclass(frozen=True)
class TrackOutcome:
    """A processed track: approved with its files, or rejected with nothing kept."""

    track_id: str
    status: Literal["approved", "rejected"]
    gates: list[GateResult]
    files: list[EncodedFile]  # empty when rejected
    master: MasterInfo | None  # None when the input could not be mastered (a silent source)
    qc: GateTable  # the metric rows and expectations judged: input to the QC report


def process_track(
    spec: TrackSpec,
    audio: np.ndarray,
    sample_rate: int,
    out_dir: Path,
    *,
    extra_expectations: Sequence[Mapping[str, Any]] = (),
) -> TrackOutcome:
    """master -> encode spec.formats into out_dir as <spec.id>.<ext> -> decode each file ->
    gates on the input, the master and every decoded file -> approved only if no 'fail' gate
    failed; a rejected track's files are removed (so `out_dir` should be a staging folder)."""
    extra = check_expectations(extra_expectations)
    with ThreadPoolExecutor(max_workers=len(spec.formats) + 1) as pool:
        # 1. Master (on threads of its own); silence cannot be normalised, and the silence gate
        # on the input says so
        try:
            m = master(
                audio, sample_rate, spec.mastering, loop=spec.loop, duration_s=spec.duration_s
            )
        except AudioError:
            rows = [metrics_row(spec.id, SOURCE, _measure(spec, audio, sample_rate))]
            outcome = _judged(spec, rows, extra, files=[], master_info=None)
            if outcome.status == "rejected":
                return outcome
            raise
        # 2. Encode each format, then decode and measure each file. Meanwhile measure the input
        # (silence and clipping are judged on it as well, before mastering gain can hide them;
        # measured now, not beside mastering, which has both cores) and the master, and judge
        # both, so that only the decoded files' gates (and a team's) are left for the end.
        jobs = [pool.submit(_encode_and_measure, spec, m, fmt, out_dir) for fmt in spec.formats]
        source_job = pool.submit(_measure, spec, audio, sample_rate)
        (rows, body_gates), done = _gather(jobs, partial(_judge_body, spec, m, source_job))
    rows += [metrics_row(spec.id, file.format, metrics) for file, metrics in done]
    # 3. Judge; nothing of a rejected track is kept
    files = [file for file, _ in done]
    return _judged(spec, rows, extra, files=files, master_info=_info(m), done=body_gates)


def _measure(
    spec: TrackSpec, audio: np.ndarray, sample_rate: int, m: Master | None = None
) -> Metrics:
    """Measure the input, or with `m` the master and its loop."""
    return measure(
        audio,
        sample_rate,
        loop_start=None if m is None else m.loop_start,
        loop_length=None if m is None else m.loop_length,
        clip_run_samples=spec.gates.clip_run_samples,
        silence_threshold_dbfs=spec.gates.dropout_threshold_dbfs,
    )


def _judge_body(
    spec: TrackSpec, m: Master, source_job: Future[Metrics]
) -> tuple[list[dict[str, Any]], list[GateResult]]:
    """The source and master rows, and the verdicts of the gates on them."""
    master_metrics = _measure(spec, m.audio, m.sample_rate, m)
    rows = [
        metrics_row(spec.id, SOURCE, source_job.result()),
        metrics_row(spec.id, MASTER, master_metrics),
    ]
    gates = _gates(spec, [SOURCE, MASTER])
    return rows, evaluate(GateTable(spec.id, tuple(rows), tuple(gates)))


def _encode_and_measure(
    spec: TrackSpec, m: Master, fmt: str, out_dir: Path
) -> tuple[EncodedFile, Metrics]:
    tags = {
        "title": spec.id,
        "soundtrack": spec.soundtrack,
        "track_id": spec.id,
        "spec_hash": spec.spec_hash,
    }
    (file,) = encode(m, (fmt,), out_dir, spec.id, tags=tags, wav_bit_depth=spec.wav_bit_depth)
    try:
        metrics = measure_file(
            file.path,
            clip_run_samples=spec.gates.clip_run_samples,
            silence_threshold_dbfs=spec.gates.dropout_threshold_dbfs,
        )
    except Exception:
        file.path.unlink(missing_ok=True)
        raise
    return file, metrics


def _gather(
    jobs: list[Future[tuple[EncodedFile, Metrics]]], work: Callable[[], _T]
) -> tuple[_T, list[tuple[EncodedFile, Metrics]]]:
    """Run `work` here while the jobs run, then collect them; if anything failed, the files
    that were written are removed and the first error is raised."""
    errors: list[BaseException] = []
    try:
        result = work()
    except Exception as exc:
        errors.append(exc)
    errors += [error for job in jobs if (error := job.exception()) is not None]
    done = [job.result() for job in jobs if job.exception() is None]
    if errors:
        _remove([file for file, _ in done])
        raise errors[0]
    return result, done


def _judged(
    spec: TrackSpec,
    rows: list[dict[str, Any]],
    extra: list[dict[str, Any]],
    *,
    files: list[EncodedFile],
    master_info: MasterInfo | None,
    done: Sequence[GateResult] = (),
) -> TrackOutcome:
    labels = [row["label"] for row in rows]
    table = GateTable(spec.id, tuple(rows), tuple(_gates(spec, labels)), tuple(extra))
    try:
        gates = evaluate(table, done=done)
    except Exception:
        _remove(files)
        raise
    approved = all(g.passed for g in gates if g.severity == "fail")
    if not approved:
        _remove(files)
    return TrackOutcome(
        track_id=spec.id,
        status="approved" if approved else "rejected",
        gates=gates,
        files=files if approved else [],
        master=master_info,
        qc=table,
    )


def _gates(spec: TrackSpec, labels: Sequence[str]) -> list[Gate]:
    return gate_expectations(
        labels,
        limits=spec.gates,
        loudness=spec.mastering.loudness,
        duration_s=spec.duration_s,
        loop=spec.loop,
        sample_rate=spec.mastering.sample_rate,
        channels=spec.mastering.channels,
    )


def _remove(files: list[EncodedFile]) -> None:
    for file in files:
        file.path.unlink(missing_ok=True)


def _info(m: Master) -> MasterInfo:
    channels, frames = m.audio.shape
    return MasterInfo(
        sample_rate=m.sample_rate,
        channels=channels,
        frames=frames,
        duration_s=frames / m.sample_rate,
        loop_start=m.loop_start,
        loop_length=m.loop_length,
        input_lufs=m.input_lufs,
        gain_db=m.gain_db,
        limiter_reduction_db=m.limiter_reduction_db,
    )
