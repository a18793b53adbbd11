"""The quality gates: the built-in catalogue, and the evaluator that holds metric rows to it.

A track's table has one row of metrics per label: "source" (the input before mastering),
"master", and one per delivery format ("ogg", "mp3", "wav": the decoded file). Each built-in gate
is the min, max or sum of one column over some labels' rows, held to bounds in plain Python.
A team's own Great Expectations checks ride along in the table and are run by
`soundtrack.expectations`, imported only for a table that has some.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, cast

from soundtrack.errors import InputError

if TYPE_CHECKING:
    from soundtrack.measure import Metrics
    from soundtrack.spec import GateLimits, LoudnessTarget

SOURCE = "source"
MASTER = "master"
Severity = Literal["fail", "warn"]  # "fail" rejects the track, "warn" is reported only
Statistic = Literal["min", "max", "sum"]
# The built-in gates a manifest may set a severity for ("fail", "warn" or "off"); a decoded
# file's gate (true_peak_ogg) follows the gate it is named after.
GATE_NAMES = frozenset(
    {
        "silence",
        "clipping",
        "dropout",
        "lead_silence",
        "trail_silence",
        "loudness",
        "true_peak",
        "dc_offset",
        "duration",
        "sample_rate",
        "channels",
        "loop_seam_jump",
        "loop_seam_loudness",
        "tempo",
        "key",
        "theme",
    }
)
# The analysis's columns on the master's row (process.analysis_columns writes them).
MUSIC_COLUMNS = frozenset(
    {
        "duration_s",
        "tempo_bpm",
        "beat_count",
        "beats_per_bar",
        "first_downbeat_s",
        "key",
        "key_confidence",
        "key_offset_semitones",
        "tempo_error_pct",
        "loudness_range_lu",
        "spectral_centroid_hz",
        "onset_rate_per_s",
    }
)
# A variation's master row also carries its melody against its parent's (process._theme_columns).
THEME_COLUMNS = frozenset({"theme_similarity", "theme_transposition_semitones"})
TEMPO_MULTIPLES = (0.5, 1.0, 2.0)  # a tempo read at half or double time is the same tempo


def tempo_error_pct(measured_bpm: float, target_bpm: float) -> float:
    """How far, in percent, a measured tempo lies from the target, or from half or double it."""
    return 100.0 * min(abs(measured_bpm / (m * target_bpm) - 1.0) for m in TEMPO_MULTIPLES)


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict, as the lock file records it: the measured value, the limit it was
    held to, and whether it passed."""

    name: str
    value: float | None  # None when there was nothing to measure (digital silence, no loop)
    limit: str
    passed: bool
    severity: Severity


def rejection(results: Sequence[GateResult]) -> str:
    """Why the gates reject: each failing gate, what it measured and the limit it missed."""
    return "rejected by gates: " + ", ".join(
        f"{g.name} {'measured nothing' if g.value is None else plain_number(g.value)} "
        f"(limit {g.limit})"
        for g in results
        if not g.passed and g.severity == "fail"
    )


def plain_number(value: float) -> str:
    """Five significant digits, as a person writes them: 44100 rather than 4.41e+04, and 250.51
    against a limit of 250 +/- 0.5, not 250.5."""
    text = f"{value:.5g}"
    return f"{value:.0f}" if "e+" in text else text


@dataclass(frozen=True)
class Gate:
    """A built-in gate: `statistic` of `column` over the rows with `labels`, within bounds."""

    name: str
    statistic: Statistic
    column: str
    labels: tuple[str, ...]
    limit: str  # the bounds in words, as the report shows them
    description: str  # what is measured, and why
    severity: Severity = "fail"
    min_value: float | None = None
    max_value: float | None = None
    strict_min: bool = False
    strict_max: bool = False

    def judge(self, rows: Sequence[Mapping[str, Any]]) -> GateResult:
        """The verdict on the table's rows; missing and NaN values are skipped, as pandas does."""
        values = [
            float(row[self.column])
            for row in rows
            if row["label"] in self.labels and _present(row.get(self.column))
        ]
        observed: float | None = None
        if values:
            observed = _STATISTICS[self.statistic](values)
        return GateResult(
            name=self.name,
            value=observed if observed is not None and math.isfinite(observed) else None,
            limit=self.limit,
            passed=observed is not None and self._within(observed),
            severity=self.severity,
        )

    def _within(self, observed: float) -> bool:
        if self.min_value is not None and (
            observed <= self.min_value if self.strict_min else observed < self.min_value
        ):
            return False
        return self.max_value is None or (
            observed < self.max_value if self.strict_max else observed <= self.max_value
        )


_STATISTICS: dict[str, Callable[[list[float]], float]] = {"min": min, "max": max, "sum": math.fsum}


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class GateTable:
    """A track's metric rows and what they are judged by: all that is needed to judge them
    again or to render the QC report (small, picklable)."""

    track_id: str
    rows: tuple[dict[str, Any], ...]
    expectations: tuple[Gate, ...]  # the built-in gates
    team: tuple[dict[str, Any], ...] = ()  # a team's GX configurations, as check_expectations gives


def metrics_row(track_id: str, label: str, metrics: Metrics) -> dict[str, Any]:
    """One row of the gates' table."""
    return {"track_id": track_id, "label": label, **metrics.as_row()}


def judge(
    metrics: Metrics,
    *,
    limits: GateLimits,
    loudness: LoudnessTarget,
    duration_s: float | None,
    loop: bool,
    sample_rate: int,
    channels: int,
    label: str = MASTER,
    source: Metrics | None = None,
    track_id: str = "track",
    extra_expectations: Sequence[Mapping[str, Any]] = (),
    analysis: Mapping[str, Any] | None = None,
    bpm: float | None = None,
    key: str | None = None,
    theme: bool = False,
) -> list[GateResult]:
    """Judge one piece of audio: label "master" runs the master's gates (silence and clipping
    over `source` too when given), "source" only silence and clipping, any other label the
    decoded-file gates; `duration_s` None skips the duration gate. The master's `analysis`
    columns (process.analysis_columns) let the tempo and key gates judge `bpm` and `key`."""
    rows = [{**metrics_row(track_id, label, metrics), **(analysis or {})}]
    if source is not None:
        rows.insert(0, metrics_row(track_id, SOURCE, source))
    gates = gate_expectations(
        [row["label"] for row in rows],
        limits=limits,
        loudness=loudness,
        duration_s=duration_s,
        loop=loop,
        sample_rate=sample_rate,
        channels=channels,
        bpm=bpm,
        key=key,
        theme=theme,
    )
    team: list[dict[str, Any]] = []
    if extra_expectations:
        from soundtrack.expectations import check_expectations  # Great Expectations: slow import

        team = check_expectations(extra_expectations)
    return evaluate(GateTable(track_id, tuple(rows), tuple(gates), tuple(team)))


def evaluate(table: GateTable, *, done: Sequence[GateResult] = ()) -> list[GateResult]:
    """One result per built-in gate, in the table's order, then one per team expectation
    (through GX). Built-in gates named in `done` were judged already (on the same rows they
    select, e.g. before the decoded files' rows existed) and are taken from it."""
    team: list[GateResult] = []
    if table.team:
        from soundtrack.expectations import run_expectations  # Great Expectations: slow import

        team = run_expectations(table)
    names = [gate.name for gate in table.expectations] + [result.name for result in team]
    if len(set(names)) != len(names):
        raise InputError(f"gate names must be unique, got {sorted(names)}")
    judged = {result.name: result for result in done}
    return [judged.get(gate.name) or gate.judge(table.rows) for gate in table.expectations] + team


def gate_expectations(
    labels: Sequence[str],
    *,
    limits: GateLimits,
    loudness: LoudnessTarget,
    duration_s: float | None,
    loop: bool,
    sample_rate: int,
    channels: int,
    bpm: float | None = None,
    key: str | None = None,
    theme: bool = False,
) -> list[Gate]:
    """The built-in gates for a track whose table has rows with `labels`, in report order,
    at the severities the manifest sets ("off" leaves a gate out); `theme` for a variation."""
    gates = _built_in(labels, limits, loudness, duration_s, loop, sample_rate, channels)
    if MASTER in labels:
        gates += _musical_gates(limits, bpm, key, theme=theme)
    out = []
    for gate in gates:
        severity = limits.severity(_named_after(gate.name, labels))
        if severity == "off":
            continue
        out.append(gate if severity is None else replace(gate, severity=cast(Severity, severity)))
    return out


def _named_after(name: str, labels: Sequence[str]) -> str:
    """The gate a decoded file's gate is named after (true_peak_ogg: true_peak)."""
    for label in labels:
        if name.endswith(f"_{label}") and name[: -len(label) - 1] in GATE_NAMES:
            return name[: -len(label) - 1]
    return name


def _musical_gates(
    limits: GateLimits, bpm: float | None, key: str | None, *, theme: bool = False
) -> list[Gate]:
    """Tempo and key against the track's targets: the analysis measures them on the master; a
    variation's melody against its parent's."""
    out = []
    if bpm is not None:
        tolerance_pct = limits.tempo_tolerance_pct
        out.append(
            Gate(
                "tempo",
                "max",
                "tempo_error_pct",
                (MASTER,),
                f"<= {tolerance_pct:g}% from {bpm:g} bpm (or half or double)",
                "measured tempo (beat tracking, refined) against the track's bpm, in percent",
                max_value=tolerance_pct,
            )
        )
    if key is not None:
        from soundtrack.keys import parse_key, relative

        target = parse_key(key)
        out.append(
            Gate(
                "key",
                "max",
                "key_offset_semitones",
                (MASTER,),
                f"{target.name} or {relative(target).name} (0 semitones away)",
                "semitones between the measured key and the track's key or its relative",
                severity="warn",
                max_value=0.0,
            )
        )
    if theme:
        from soundtrack.theme import THEME_LIMIT

        out.append(
            Gate(
                "theme",
                "min",
                "theme_similarity",
                (MASTER,),
                f">= {THEME_LIMIT:g} (provisional)",
                "melody similarity with the parent track (chroma under the best transposition "
                "and a time warp; docs/gates.md)",
                min_value=THEME_LIMIT,
            )
        )
    return out


def _built_in(
    labels: Sequence[str],
    limits: GateLimits,
    loudness: LoudnessTarget,
    duration_s: float | None,
    loop: bool,
    sample_rate: int,
    channels: int,
) -> list[Gate]:
    out: list[Gate] = []
    body = tuple(label for label in (SOURCE, MASTER) if label in labels)
    if body:
        out += [
            Gate(
                "silence",
                "min",
                "integrated_lufs",
                body,
                f"> {limits.silence_floor_lufs} LUFS",
                "integrated loudness clears the BS.1770 absolute gate",
                min_value=limits.silence_floor_lufs,
                strict_min=True,
            ),
            Gate(
                "clipping",
                "sum",
                "clipped_runs",
                body,
                f"<= {limits.clipped_runs_max} runs of >= {limits.clip_run_samples} samples "
                "at peak",
                "clipped plateaus, in the source before mastering and in the master",
                max_value=limits.clipped_runs_max,
            ),
        ]
    if MASTER in labels:
        out += _master_gates(limits, loudness, duration_s, loop)
    for label in labels:
        if label not in (SOURCE, MASTER):
            out += _decoded_gates(label, limits, loudness, duration_s, sample_rate, channels)
    return out


def _master_gates(
    limits: GateLimits, loudness: LoudnessTarget, duration_s: float | None, loop: bool
) -> list[Gate]:
    target_lufs, tolerance_lu = loudness.integrated_lufs, loudness.tolerance_lu
    trail_max_s = 0.0 if loop else limits.trail_silence_max_s
    out = [
        Gate(
            "dropout",
            "max",
            "longest_dropout_s",
            (MASTER,),
            f"< {limits.dropout_max_s} s below {limits.dropout_threshold_dbfs} dBFS",
            "longest silent span inside the track (ffmpeg silencedetect defaults)",
            max_value=limits.dropout_max_s,
            strict_max=True,
        ),
        Gate(
            "lead_silence",
            "max",
            "lead_silence_s",
            (MASTER,),
            f"<= {limits.lead_silence_max_ms / 1000.0} s",
            "silence before the first sound (engine start latency)",
            max_value=limits.lead_silence_max_ms / 1000.0,
        ),
        Gate(
            "trail_silence",
            "max",
            "trail_silence_s",
            (MASTER,),
            f"<= {trail_max_s} s",
            "silence after the last sound (0 for loops: it would be a gap at every wrap)",
            max_value=trail_max_s,
        ),
        Gate(
            "loudness",
            "max",
            "integrated_lufs",
            (MASTER,),
            f"{target_lufs} ± {tolerance_lu} LUFS",
            "integrated loudness of the master (EBU R128, Sony ASWG-R001, AES TD1004)",
            min_value=target_lufs - tolerance_lu,
            max_value=target_lufs + tolerance_lu,
        ),
        Gate(
            "true_peak",
            "max",
            "true_peak_dbtp",
            (MASTER,),
            f"<= {loudness.true_peak_max_dbtp} dBTP",
            "4x-oversampled true peak of the master (ITU-R BS.1770-4 Annex 2)",
            max_value=loudness.true_peak_max_dbtp,
        ),
        Gate(
            "dc_offset",
            "max",
            "dc_offset",
            (MASTER,),
            f"<= {limits.dc_offset_max}",
            "largest per-channel mean (ffmpeg astats)",
            severity="warn",
            max_value=limits.dc_offset_max,
        ),
    ]
    if duration_s is not None:
        out.append(_duration("duration", MASTER, duration_s, limits))
    if loop:
        out += [
            Gate(
                "loop_seam_jump",
                "max",
                "seam_jump_ratio",
                (MASTER,),
                f"<= {limits.seam_jump_max_ratio} x the local curvature",
                "click at the loop wrap: its second difference vs the waveform's within 10 ms",
                max_value=limits.seam_jump_max_ratio,
            ),
            Gate(
                "loop_seam_loudness",
                "max",
                "seam_loudness_excess_lu",
                (MASTER,),
                f"<= {limits.seam_loudness_max_lu} LU beyond the music's own change at a bar line",
                "short-term loudness of the loop's last 3 s vs its first 3 s, less the largest "
                "change across its other bar lines",
                max_value=limits.seam_loudness_max_lu,
            ),
        ]
    return out


def _decoded_gates(
    label: str,
    limits: GateLimits,
    loudness: LoudnessTarget,
    duration_s: float | None,
    sample_rate: int,
    channels: int,
) -> list[Gate]:
    out = [
        Gate(
            f"true_peak_{label}",
            "max",
            "true_peak_dbtp",
            (label,),
            f"<= {loudness.true_peak_max_dbtp} dBTP",
            f"true peak of the decoded {label} file (lossy coding raises peaks)",
            max_value=loudness.true_peak_max_dbtp,
        ),
        Gate(
            f"sample_rate_{label}",
            "max",
            "sample_rate",
            (label,),
            f"= {sample_rate} Hz",
            f"sample rate of the decoded {label} file",
            min_value=sample_rate,
            max_value=sample_rate,
        ),
        Gate(
            f"channels_{label}",
            "max",
            "channels",
            (label,),
            f"= {channels}",
            f"channel count of the decoded {label} file",
            min_value=channels,
            max_value=channels,
        ),
    ]
    if duration_s is not None:
        out.append(_duration(f"duration_{label}", label, duration_s, limits))
    return out


def _duration(name: str, label: str, duration_s: float, limits: GateLimits) -> Gate:
    tolerance_s = limits.duration_tolerance_s
    return Gate(
        name,
        "max",
        "duration_s",
        (label,),
        f"{plain_number(duration_s)} ± {plain_number(tolerance_s)} s",
        f"duration of the {label} against the requested duration",
        min_value=duration_s - tolerance_s,
        max_value=duration_s + tolerance_s,
    )
