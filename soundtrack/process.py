"""One track's processing chain: measure the input, master, encode, decode and judge every file."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from soundtrack.analysis import Analysis, analyse, analyse_file, analysis_row, compare
from soundtrack.audio import read_audio, resample, samples_sha256, write_wav
from soundtrack.encode import EncodedFile, encode
from soundtrack.errors import AudioError
from soundtrack.expectations import check_expectations
from soundtrack.formats import parent_format
from soundtrack.gates import (
    MASTER,
    SOURCE,
    Gate,
    GateResult,
    GateTable,
    evaluate,
    gate_expectations,
    metrics_row,
    tempo_error_pct,
)
from soundtrack.keys import parse_key, relative, semitones_apart
from soundtrack.loops import (
    BAR_END_FRACTION,
    CUT_TO_BARS_S,
    TEMPO_PRECISION,
    BarLoop,
    ends_at_its_loop,
)
from soundtrack.master import ENCODING_HEADROOM_DB, Master, finish, prepare
from soundtrack.measure import Metrics, measure, measure_decoded
from soundtrack.pictures import PICTURE_EXT, Picture, draw_picture
from soundtrack.sidecar import sidecar, write_sidecar
from soundtrack.spec import TrackSpec

_T = TypeVar("_T")
# A first downbeat this close after a bar's length still counts back to the start (sample 0).
_GRID_SLACK_S = 0.02
# Below what a first encoding overshot by, for a second: the encoders' choices move with it.
CODEC_MARGIN_DB = 0.5


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
    analysis: Analysis | None = None  # of the master: positions are the master's samples
    sidecar: EncodedFile | None = None  # the engine sidecar (<track>.json) of an approved track
    picture: Picture | None = None  # <track>.png of an approved track, for people to look at
    reference: dict[str, Any] | None = None  # the master compared with the track's reference
    mix_path: Path | None = None  # the master as float WAV in staging, for its stems

    def analysis_row(self) -> dict[str, Any] | None:
        """The analysis's numbers, as the report records them."""
        return None if self.analysis is None else analysis_row(self.analysis)


def process_track(
    spec: TrackSpec,
    audio: np.ndarray,
    sample_rate: int,
    out_dir: Path,
    *,
    extra_expectations: Sequence[Mapping[str, Any]] = (),
    parent: tuple[np.ndarray, int] | None = None,
) -> TrackOutcome:
    """master -> encode spec.formats into out_dir as <spec.id>.<ext> -> decode each file ->
    gates on the input, the master and every decoded file -> approved only if no 'fail' gate
    failed; a rejected track's files are removed (so `out_dir` should be a staging folder).
    A variation's `parent` audio is what its theme gate compares it with."""
    extra = check_expectations(extra_expectations)
    with ThreadPoolExecutor(max_workers=len(spec.formats) + 1) as pool:
        # 1. Master (on threads of its own), listening to the music on the way: a loop with a
        # tempo target is cut on its bars. Silence cannot be normalised, and the silence gate
        # on the input says so.
        try:
            prepared = prepare(
                audio,
                sample_rate,
                spec.mastering,
                loop=spec.loop,
                duration_s=spec.duration_s,
                recording=spec.source is not None,
            )
            heard = analyse(
                prepared.audio,
                prepared.sample_rate,
                beats_per_bar=spec.beats_per_bar,
                bpm_hint=spec.bpm,
            )
            # A render runs past its loop to search and crossfade; a recording may end on it.
            loop_frames = spec.duration_s * prepared.sample_rate
            master = partial(
                finish,
                prepared,
                spec.mastering,
                loop=spec.loop,
                duration_s=spec.duration_s,
                bar_loop=_bar_loop(spec, heard),
                recorded_loop=spec.source is not None
                and ends_at_its_loop(prepared.audio.shape[1], loop_frames),
                # A loudness gate that only warns (or is off) takes the nearest master there is.
                loudness_out_of_reach_fails=spec.gates.severity("loudness") in (None, "fail"),
            )
            m = master()
        except AudioError:
            rows = [metrics_row(spec.id, SOURCE, _measure(spec, audio, sample_rate))]
            outcome = _judged(spec, rows, extra, None, files=[])
            if outcome.status == "rejected":
                return outcome
            raise
        analysis = _on_master(heard, m, spec)
        # 2. Encode each format, then decode and measure each file. Meanwhile measure the input
        # (silence and clipping are judged on it as well, before mastering gain can hide them;
        # measured now, not beside mastering, which has both cores) and the master, and judge
        # both, so that only the decoded files' gates (and a team's) are left for the end.
        source_job = pool.submit(_measure, spec, audio, sample_rate)
        (rows, body_gates), done = _encode_all(pool, spec, m, analysis, source_job, parent, out_dir)
        # A lossy encoder can overshoot the headroom on sharp transients (LAME by 2 dB on one
        # click in a thousand): mastered once more, that much lower, and encoded again. Its gain
        # may rise as much, no more: a master limited harder still is no better one.
        over_db = max(
            metrics.true_peak_dbtp - spec.mastering.loudness.true_peak_max_dbtp
            for _, metrics in done
        )
        if over_db > 0 and spec.gates.severity("true_peak") in (None, "fail"):
            first = [file for file, _ in done]
            lower_db = over_db + CODEC_MARGIN_DB
            try:
                lower = master(
                    headroom_db=ENCODING_HEADROOM_DB + lower_db, max_gain_db=m.gain_db + lower_db
                )
            except AudioError:
                lower = None  # the loudness is out of reach that low: the first files are judged
            except BaseException:
                _remove(first)
                raise
            if lower is not None:
                _remove(first)
                m, analysis = lower, _on_master(heard, lower, spec)
                (rows, body_gates), done = _encode_all(
                    pool, spec, m, analysis, source_job, parent, out_dir
                )
    rows += [metrics_row(spec.id, file.format, metrics) for file, metrics in done]
    # 3. Judge; nothing of a rejected track is kept
    files = [file for file, _ in done]
    outcome = _judged(spec, rows, extra, m, files=files, done=body_gates)
    reference = None
    if spec.reference is not None:
        # a: the reference, b: the render (as `soundtrack compare REFERENCE RENDER` prints it)
        compared = compare(_reference_analysis(spec.reference), analysis).to_dict()
        reference = {**compared, "reference_sha256": spec.reference_sha256}
    outcome = replace(outcome, analysis=analysis, reference=reference)
    if outcome.status != "approved" or outcome.master is None:
        return outcome
    data = sidecar(spec, outcome.master, analysis)
    picture = draw_picture(
        m.audio,
        m.sample_rate,
        out_dir / f"{spec.id}.{PICTURE_EXT}",
        title=spec.id,
        target_lufs=spec.mastering.loudness.integrated_lufs,
        loop_start=m.loop_start,
        loop_length=m.loop_length,
        bar_lines=analysis.downbeats,
    )
    outcome = replace(outcome, sidecar=write_sidecar(data, out_dir, spec.id), picture=picture)
    if not spec.stems:
        return outcome
    mix_path = out_dir / f"{spec.id}.mix.wav"  # staging only: what the separator splits
    write_wav(mix_path, m.audio, m.sample_rate)
    return replace(outcome, mix_path=mix_path)


def _reference_analysis(path: Path) -> Analysis:
    """The analysis of a reference recording, once per file and version in this process."""
    stat = path.stat()
    return _analysed(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _analysed(path: Path, mtime_ns: int, size: int) -> Analysis:
    return analyse_file(path)


def _bar_loop(spec: TrackSpec, heard: Analysis) -> BarLoop | None:
    """Where a loop cut on bars starts (the earliest downbeat of the bar grid) and its length
    in samples (whole bars, nearest its duration, at the measured tempo or, when that is the
    target's as far as the analysis can tell, at the target's exact one)."""
    if not spec.bar_loop or heard.tempo_bpm is None or not heard.downbeats or spec.bpm is None:
        return None  # no beat to count bars by: a plain loop, which the tempo gate rejects
    sr = heard.sample_rate
    target_bar = spec.bar_s(spec.bpm) * sr
    # At the measured tempo, the bars drifted by up to 10 ms over 8.
    exact = abs(heard.tempo_bpm / spec.bpm - 1.0) <= TEMPO_PRECISION
    bar = target_bar if exact else spec.bar_s(heard.tempo_bpm) * sr
    # A recording of its own length counts the bars of the music heard, its silence trimmed.
    frames = heard.frames if spec.own_length else spec.duration_s * sr
    bars = spec.bars or max(1, round(frames / bar))
    within = CUT_TO_BARS_S * sr if exact else BAR_END_FRACTION * bars * bar
    if abs(heard.frames - bars * target_bar) <= CUT_TO_BARS_S * sr or (
        abs(heard.frames - bars * bar) <= within
    ):
        # A recording cut to its bars (a loop exported from a DAW: exactly the target's, or the
        # measured tempo's as near as it is measured) is its loop from its first sample,
        # whichever beat the analysis hears as a downbeat: an accent alone is a weak cue.
        return BarLoop(0, float(heard.frames), ends_within=0.0)
    # The tracker may find its first downbeat a bar or more in: count the grid back to the start.
    found = heard.downbeats[0]
    first = max(0, round(found - ((found + _GRID_SLACK_S * sr) // bar) * bar))
    if spec.own_length and not spec.bars:
        # A recording holds what it holds: 15.2 s at 2 s a bar is 7 bars, not the nearest 8.
        bars = max(1, min(bars, int((heard.frames - first) // bar)))
    return BarLoop(first, bars * bar, ends_within=within)


def _on_master(heard: Analysis, m: Master, spec: TrackSpec) -> Analysis:
    """The analysis as the master has it: beats past its end dropped; a bar loop's tempo read
    off its length, and its beats and bars on that exact grid (it repeats on them)."""
    frames = m.audio.shape[1]
    if not (spec.bar_loop and m.loop_start is not None and m.loop_length and heard.tempo_bpm):
        return replace(
            heard,
            frames=frames,
            beats=tuple(b for b in heard.beats if b < frames),
            downbeats=tuple(b for b in heard.downbeats if b < frames),
        )
    return on_loop_grid(
        replace(heard, frames=frames), m.loop_start, m.loop_length, spec.beats_per_bar
    )


def on_loop_grid(
    heard: Analysis, loop_start: int, loop_length: int, beats_per_bar: int
) -> Analysis:
    """`heard` (with a tempo) of a loop of whole bars from `loop_start`: its tempo read off the
    loop's length, and its beats and bars on that exact grid (it repeats on them)."""
    assert heard.tempo_bpm is not None
    bar = beats_per_bar * 60.0 / heard.tempo_bpm * heard.sample_rate
    bars = max(1, round(loop_length / bar))
    beats, downbeats = bar_grid(loop_start, loop_length, bars, beats_per_bar, heard.frames)
    beat = loop_length / (bars * beats_per_bar)
    return replace(
        heard, tempo_bpm=60.0 * heard.sample_rate / beat, beats=beats, downbeats=downbeats
    )


# A build's bar loop is cut on the bars of the tempo it heard, so it reads as whole bars within a
# hair of the tempo heard again. A loop further off, in tempo or by a part of a bar left over
# (4.5 bars; 60.5 bars, 0.8 % in tempo), is a free loop.
WHOLE_BARS_TEMPO_TOLERANCE = 0.01
WHOLE_BARS_LEFTOVER_BARS = 0.1


def as_bar_loop(
    heard: Analysis, loop_start: int, loop_length: int, beats_per_bar: int
) -> Analysis | None:
    """`heard` on its loop's bar grid (on_loop_grid) when the loop is whole bars at the tempo
    heard; None for a free loop, whose tempo and bars are the ones heard."""
    assert heard.tempo_bpm is not None
    bars = loop_length / (beats_per_bar * 60.0 / heard.tempo_bpm * heard.sample_rate)
    gridded = on_loop_grid(heard, loop_start, loop_length, beats_per_bar)
    assert gridded.tempo_bpm is not None
    whole = (
        abs(bars - round(bars)) <= WHOLE_BARS_LEFTOVER_BARS
        and abs(gridded.tempo_bpm / heard.tempo_bpm - 1) <= WHOLE_BARS_TEMPO_TOLERANCE
    )
    return gridded if whole else None


def bar_grid(
    loop_start: int, loop_length: int, bars: int, beats_per_bar: int, frames: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The beats and bar lines (frames) of a loop of whole `bars` from `loop_start`, the grid
    run back into an intro and on to `frames`."""
    beat = loop_length / (bars * beats_per_bar)
    first = loop_start - int(loop_start // beat) * beat
    beats = np.arange(first, frames - 0.5, beat)
    beats = beats[beats < frames - 0.5]  # arange's count, itself rounded, can take one more
    # Beat numbers counted from the loop start are whole up to float error, which left bar 4
    # at 3.999...: rounded before asking which fall on a bar.
    on_bar = np.rint((beats - loop_start) / beat).astype(int) % beats_per_bar == 0
    return tuple(np.rint(beats).astype(int).tolist()), tuple(
        np.rint(beats[on_bar]).astype(int).tolist()
    )


def _measure(
    spec: TrackSpec,
    audio: np.ndarray,
    sample_rate: int,
    m: Master | None = None,
    *,
    bar_lines: Sequence[int] = (),
) -> Metrics:
    """Measure the input, or with `m` the master and its loop (judged against `bar_lines`)."""
    return measure(
        audio,
        sample_rate,
        loop_start=None if m is None else m.loop_start,
        loop_length=None if m is None else m.loop_length,
        clip_run_samples=spec.gates.clip_run_samples,
        silence_threshold_dbfs=spec.gates.dropout_threshold_dbfs,
        bar_lines=bar_lines,
    )


def analysis_columns(analysis: Analysis, key: str | None, bpm: float | None) -> dict[str, Any]:
    """The analysis's numbers on the master's row (gates and a team's expectations read them),
    with the measured tempo's and key's distances from the targets `bpm` and `key`."""
    error = None
    if bpm is not None and analysis.tempo_bpm is not None:
        error = tempo_error_pct(analysis.tempo_bpm, bpm)
    offset = None
    if key is not None and analysis.key is not None:
        measured, target = parse_key(analysis.key), parse_key(key)
        # The relative key shares the target's notes: compare like modes, 0 when it is either.
        if measured.mode != target.mode:
            target = relative(target)
        offset = abs(semitones_apart(target, measured))
    return {**analysis_row(analysis), "tempo_error_pct": error, "key_offset_semitones": offset}


def _theme_columns(m: Master, parent: tuple[np.ndarray, int] | None) -> dict[str, Any]:
    """A variation's melody measured against its parent's, on the master's row."""
    if parent is None:
        return {}
    from soundtrack.theme import MIN_DURATION_S, melody_similarity

    audio, sample_rate = parent
    if min(audio.shape[1] / sample_rate, m.audio.shape[1] / m.sample_rate) < MIN_DURATION_S:
        return {}  # no melody to follow in a blip: the theme gate fails as unmeasured
    match = melody_similarity(m.audio, resample(audio, sample_rate, m.sample_rate), m.sample_rate)
    return {
        "theme_similarity": match.similarity,
        "theme_transposition_semitones": match.transposition_semitones,
    }


def _judge_body(
    spec: TrackSpec,
    m: Master,
    analysis: Analysis,
    source_job: Future[Metrics],
    parent: tuple[np.ndarray, int] | None,
) -> tuple[list[dict[str, Any]], list[GateResult]]:
    """The source and master rows (the master's with its analysis), and the verdicts of the
    gates on them."""
    master_metrics = _measure(spec, m.audio, m.sample_rate, m, bar_lines=analysis.downbeats)
    rows = [
        metrics_row(spec.id, SOURCE, source_job.result()),
        {
            **metrics_row(spec.id, MASTER, master_metrics),
            **analysis_columns(analysis, spec.key, spec.bpm),
            **_theme_columns(m, parent),
        },
    ]
    gates = _gates(spec, [SOURCE, MASTER], m)
    return rows, evaluate(GateTable(spec.id, tuple(rows), tuple(gates)))


def _encode_all(
    pool: ThreadPoolExecutor,
    spec: TrackSpec,
    m: Master,
    analysis: Analysis,
    source_job: Future[Metrics],
    parent: tuple[np.ndarray, int] | None,
    out_dir: Path,
) -> tuple[tuple[list[dict[str, Any]], list[GateResult]], list[tuple[EncodedFile, Metrics]]]:
    """Every format of `m` encoded, decoded and measured, beside the verdicts on the source
    and the master."""
    jobs = [pool.submit(_encode_and_measure, spec, m, fmt, out_dir) for fmt in spec.formats]
    return _gather(jobs, partial(_judge_body, spec, m, analysis, source_job, parent))


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
        # Decoded once: measured, and hashed when variations render from it.
        audio, sample_rate = read_audio(file.path)
        metrics = measure_decoded(
            file.path,
            audio,
            sample_rate,
            clip_run_samples=spec.gates.clip_run_samples,
            silence_threshold_dbfs=spec.gates.dropout_threshold_dbfs,
        )
        if fmt == parent_format(spec.formats):
            file = replace(file, audio_sha256=samples_sha256(audio, sample_rate))
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
    m: Master | None,
    *,
    files: list[EncodedFile],
    done: Sequence[GateResult] = (),
) -> TrackOutcome:
    labels = [row["label"] for row in rows]
    table = GateTable(spec.id, tuple(rows), tuple(_gates(spec, labels, m)), tuple(extra))
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
        master=None if m is None else _info(m),
        qc=table,
    )


def _gates(spec: TrackSpec, labels: Sequence[str], m: Master | None) -> list[Gate]:
    # A loop cut on bars is as long as its whole bars (and any intro
    # before its first downbeat), and a recording with no duration asked is as long as its
    # master: the duration gates hold the files to that.
    duration_s = spec.duration_s
    if m is not None and (spec.own_length or (spec.bar_loop and m.loop_length is not None)):
        duration_s = m.audio.shape[1] / m.sample_rate
    return gate_expectations(
        labels,
        limits=spec.gates,
        loudness=spec.mastering.loudness,
        duration_s=duration_s,
        loop=spec.loop,
        sample_rate=spec.mastering.sample_rate,
        channels=spec.mastering.channels,
        bpm=spec.bpm,
        key=spec.key,
        theme=spec.parent_audio is not None,
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
