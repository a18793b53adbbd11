"""Judging measured audio: the quality gates as a Great Expectations suite, and its Data Docs.

Each gate is one built-in GX expectation over a table with one row of metrics per (track,
label); labels are "source" (the input before mastering), "master", and one per delivery
format ("ogg", "mp3", "wav": the decoded file). GX is imported only when judging.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soundtrack.errors import InputError, StorageError
from soundtrack.measure import Metrics
from soundtrack.spec import GateLimits, LoudnessTarget

SOURCE = "source"
MASTER = "master"
_SEVERITY_TO_GX = {"fail": "critical", "warn": "warning"}
_GX_LOCK = threading.Lock()  # GX contexts and stores are not documented as thread-safe


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict: the measured value, the limit it was held to, and whether it passed."""

    name: str
    value: float | None  # None when there was nothing to measure (digital silence, no loop)
    limit: str
    passed: bool
    severity: str  # "fail" | "warn"


@dataclass(frozen=True)
class GateTable:
    """A track's metric rows and the expectations they are judged by: all that is needed to
    re-run the validation for a QC report (small, picklable, JSON-ready)."""

    track_id: str
    rows: tuple[dict[str, Any], ...]
    expectations: tuple[dict[str, Any], ...]  # GX expectation configurations


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
) -> list[GateResult]:
    """Judge one piece of audio: label "master" runs the master's gates (silence and clipping
    over `source` too when given), "source" only silence and clipping, any other label the
    decoded-file gates; `duration_s` None skips the duration gate."""
    rows = [metrics_row(track_id, label, metrics)]
    if source is not None:
        rows.insert(0, metrics_row(track_id, SOURCE, source))
    labels = [row["label"] for row in rows]
    table = GateTable(
        track_id,
        tuple(rows),
        tuple(
            gate_expectations(
                labels,
                limits=limits,
                loudness=loudness,
                duration_s=duration_s,
                loop=loop,
                sample_rate=sample_rate,
                channels=channels,
            )
        )
        + tuple(check_expectations(extra_expectations)),
    )
    return evaluate(table)


def gate_expectations(
    labels: Sequence[str],
    *,
    limits: GateLimits,
    loudness: LoudnessTarget,
    duration_s: float | None,
    loop: bool,
    sample_rate: int,
    channels: int,
) -> list[dict[str, Any]]:
    """The built-in gates for a track whose table has rows with `labels`, as GX expectation
    configurations; meta carries the gate's stable name and its limit in words."""
    out: list[dict[str, Any]] = []
    body = [label for label in (SOURCE, MASTER) if label in labels]
    if body:
        out += [
            _expect(
                "silence",
                "min",
                "integrated_lufs",
                body,
                f"> {limits.silence_floor_lufs} LUFS",
                "integrated loudness clears the BS.1770 absolute gate",
                min_value=limits.silence_floor_lufs,
                strict_min=True,
            ),
            _expect(
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
        out += _master_expectations(limits, loudness, duration_s, loop)
    for label in labels:
        if label not in (SOURCE, MASTER):
            out += _decoded_expectations(label, limits, loudness, duration_s, sample_rate, channels)
    return out


def _master_expectations(
    limits: GateLimits, loudness: LoudnessTarget, duration_s: float | None, loop: bool
) -> list[dict[str, Any]]:
    target, tolerance = loudness.integrated_lufs, loudness.tolerance_lu
    trail_max_s = 0.0 if loop else limits.trail_silence_max_s
    out = [
        _expect(
            "dropout",
            "max",
            "longest_dropout_s",
            [MASTER],
            f"< {limits.dropout_max_s} s below {limits.dropout_threshold_dbfs} dBFS",
            "longest silent span inside the track (ffmpeg silencedetect defaults)",
            max_value=limits.dropout_max_s,
            strict_max=True,
        ),
        _expect(
            "lead_silence",
            "max",
            "lead_silence_s",
            [MASTER],
            f"<= {limits.lead_silence_max_ms / 1000.0} s",
            "silence before the first sound (engine start latency)",
            max_value=limits.lead_silence_max_ms / 1000.0,
        ),
        _expect(
            "trail_silence",
            "max",
            "trail_silence_s",
            [MASTER],
            f"<= {trail_max_s} s",
            "silence after the last sound (0 for loops: it would be a gap at every wrap)",
            max_value=trail_max_s,
        ),
        _expect(
            "loudness",
            "max",
            "integrated_lufs",
            [MASTER],
            f"{target} ± {tolerance} LUFS",
            "integrated loudness of the master (EBU R128, Sony ASWG-R001, AES TD1004)",
            min_value=target - tolerance,
            max_value=target + tolerance,
        ),
        _expect(
            "true_peak",
            "max",
            "true_peak_dbtp",
            [MASTER],
            f"<= {loudness.true_peak_max_dbtp} dBTP",
            "4x-oversampled true peak of the master (ITU-R BS.1770-4 Annex 2)",
            max_value=loudness.true_peak_max_dbtp,
        ),
        _expect(
            "dc_offset",
            "max",
            "dc_offset",
            [MASTER],
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
            _expect(
                "loop_seam_jump",
                "max",
                "seam_jump_ratio",
                [MASTER],
                f"<= {limits.seam_jump_max_ratio} x the local curvature",
                "click at the loop wrap: its second difference vs the waveform's within 10 ms",
                max_value=limits.seam_jump_max_ratio,
            ),
            _expect(
                "loop_seam_loudness",
                "max",
                "seam_loudness_change_lu",
                [MASTER],
                f"<= {limits.seam_loudness_max_lu} LU",
                "short-term loudness of the loop's last 3 s vs its first 3 s",
                max_value=limits.seam_loudness_max_lu,
            ),
        ]
    return out


def _decoded_expectations(
    label: str,
    limits: GateLimits,
    loudness: LoudnessTarget,
    duration_s: float | None,
    sample_rate: int,
    channels: int,
) -> list[dict[str, Any]]:
    out = [
        _expect(
            f"true_peak_{label}",
            "max",
            "true_peak_dbtp",
            [label],
            f"<= {loudness.true_peak_max_dbtp} dBTP",
            f"true peak of the decoded {label} file (lossy coding raises peaks)",
            max_value=loudness.true_peak_max_dbtp,
        ),
        _expect(
            f"sample_rate_{label}",
            "max",
            "sample_rate",
            [label],
            f"= {sample_rate} Hz",
            f"sample rate of the decoded {label} file",
            min_value=sample_rate,
            max_value=sample_rate,
        ),
        _expect(
            f"channels_{label}",
            "max",
            "channels",
            [label],
            f"= {channels}",
            f"channel count of the decoded {label} file",
            min_value=channels,
            max_value=channels,
        ),
    ]
    if duration_s is not None:
        out.append(_duration(f"duration_{label}", label, duration_s, limits))
    return out


def _duration(name: str, label: str, duration_s: float, limits: GateLimits) -> dict[str, Any]:
    tolerance = limits.duration_tolerance_s
    return _expect(
        name,
        "max",
        "duration_s",
        [label],
        f"{duration_s} ± {tolerance} s",
        f"duration of the {label} against the requested duration",
        min_value=duration_s - tolerance,
        max_value=duration_s + tolerance,
    )


def _expect(
    name: str,
    statistic: str,
    column: str,
    labels: Sequence[str],
    limit: str,
    what: str,
    *,
    severity: str = "fail",
    **bounds: float | bool,
) -> dict[str, Any]:
    """A column min/max/sum expectation over the rows with `labels`: one row (or the source and
    master rows together) per gate, so GX reports the measured value as `observed_value`."""
    gx = _gx()
    from great_expectations.expectations.row_conditions import Column

    kind = {
        "min": gx.expectations.ExpectColumnMinToBeBetween,
        "max": gx.expectations.ExpectColumnMaxToBeBetween,
        "sum": gx.expectations.ExpectColumnSumToBeBetween,
    }[statistic]
    rows = Column("label") == labels[0] if len(labels) == 1 else Column("label").is_in(labels)
    expectation = kind(
        column=column,
        row_condition=rows,
        meta={"gate": name, "limit": limit},
        description=f"{name}: {what}, {limit}",
        severity=_SEVERITY_TO_GX[severity],
        **bounds,
    )
    config: dict[str, Any] = expectation.configuration.to_json_dict()
    return config


def check_expectations(configs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A team's own GX expectation configurations ({"type", "kwargs", optional "meta",
    "severity"}), checked and named: meta.gate defaults to "<type>:<column>"."""
    if not configs:
        return []
    _gx()
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    out = []
    for i, raw in enumerate(configs):
        config = {k: v for k, v in raw.items() if k not in ("id", "rendered_content")}
        try:
            expectation = ExpectationConfiguration(**config).to_domain_obj()
        except Exception as exc:  # GX raises many types for a bad configuration
            raise InputError(
                f"extra expectation [{i}] {raw.get('type')!r} is invalid: {exc}"
            ) from exc
        checked: dict[str, Any] = expectation.configuration.to_json_dict()
        meta = dict(checked.get("meta") or {})
        meta.setdefault("gate", f"{checked['type']}:{checked['kwargs'].get('column', '')}")
        checked["meta"] = meta
        out.append(checked)
    return out


def load_expectations(path: Path) -> list[dict[str, Any]]:
    """Expectation configurations from a JSON file: a list of them, or a GX suite export
    ({"name": ..., "expectations": [...]})."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read expectations from {path}: {exc}") from exc
    configs = data.get("expectations") if isinstance(data, dict) else data
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise InputError(
            f"{path}: expected a list of expectation configurations or a GX suite with "
            "an 'expectations' list"
        )
    return check_expectations(configs)


def evaluate(table: GateTable, *, done: Sequence[GateResult] = ()) -> list[GateResult]:
    """Validate the table's rows against its expectations with GX; one result per expectation,
    in the table's order. Gates named in `done` were judged already (on the same rows they
    select, e.g. before the decoded files' rows existed) and are taken from it."""
    names = [config["meta"]["gate"] for config in table.expectations]
    if len(set(names)) != len(names):
        raise InputError(f"gate names must be unique, got {sorted(names)}")
    judged = {result.name: result for result in done}
    todo = tuple(c for c in table.expectations if c["meta"]["gate"] not in judged)
    by_name: dict[str, Any] = {}
    if todo:
        with _GX_LOCK:
            context = _context(None)
            validation = _validate(context, GateTable(table.track_id, table.rows, todo))
        by_name = {r.expectation_config.meta["gate"]: r for r in validation.results}
    results = []
    for name, config in zip(names, table.expectations, strict=True):
        if name in judged:
            results.append(judged[name])
            continue
        result = by_name[name]
        error = _gx_error(result.exception_info)
        if error is not None:
            raise InputError(f"gate {name!r} could not be evaluated: {error}")
        results.append(
            GateResult(
                name=name,
                value=_number(result.result.get("observed_value")),
                limit=config["meta"].get("limit") or _limit_text(config),
                passed=bool(result.success),
                severity="fail" if config.get("severity", "critical") == "critical" else "warn",
            )
        )
    return results


def build_data_docs(tables: Sequence[GateTable], out_dir: Path) -> Path:
    """Validate every track's table again and render GX Data Docs (the QC report) into
    `out_dir`; returns the path of its index.html."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with _GX_LOCK:
        context = _context(out_dir)
        for table in tables:
            _validate(context, table, store=True)
        context.build_data_docs()
    index = out_dir / "index.html"
    if not index.is_file():
        raise StorageError(f"GX wrote no Data Docs index at {index}", transient=False)
    return index


def _gx() -> Any:
    import great_expectations

    return great_expectations


def _context(docs_dir: Path | None) -> Any:
    gx = _gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        sites["qc"] = {
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites=sites,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _validate(context: Any, table: GateTable, *, store: bool = False) -> Any:
    """Run the table's suite over its rows; with `store` through a ValidationDefinition, whose
    results the context keeps for Data Docs (twice the work: every object is serialised)."""
    import pandas as pd

    gx = _gx()
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    name = f"gates-{table.track_id}"
    batch = (
        context.data_sources.add_or_update_pandas("metrics")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("rows")
    )
    suite = gx.ExpectationSuite(
        name=name,
        expectations=[ExpectationConfiguration(**c).to_domain_obj() for c in table.expectations],
    )
    parameters = {"dataframe": pd.DataFrame(list(table.rows))}
    if not store:
        return batch.get_batch(batch_parameters=parameters).validate(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch, suite=context.suites.add(suite))
    )
    return definition.run(batch_parameters=parameters)


def _gx_error(info: Any) -> str | None:
    """The message of an exception GX caught while validating one expectation: reported at the
    top level, or per metric (a missing column, for one)."""
    if not info:
        return None
    reports = [info] if "raised_exception" in info else list(info.values())
    for report in reports:
        if isinstance(report, dict) and report.get("exception_message"):
            return str(report["exception_message"])
    return None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _limit_text(config: Mapping[str, Any]) -> str:
    kwargs = {
        k: v
        for k, v in config["kwargs"].items()
        if k not in ("column", "row_condition", "condition_parser") and v is not None
    }
    return config.get("description") or json.dumps(kwargs, sort_keys=True, default=str)
