"""Judging: every gate fails exactly when its metric crosses its limit, through the GX suite."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from soundtrack.atomic import link_twins
from soundtrack.errors import InputError
from soundtrack.expectations import build_data_docs, load_expectations
from soundtrack.gates import (
    GateResult,
    GateTable,
    evaluate,
    gate_expectations,
    judge,
    metrics_row,
    rejection,
    tempo_error_pct,
)
from soundtrack.measure import Metrics
from soundtrack.spec import LOUDNESS_PROFILES, GateLimits
from soundtrack.theme import THEME_LIMIT

CONSOLE = LOUDNESS_PROFILES["console"]
GOOD = Metrics(
    sample_rate=44100,
    channels=2,
    frames=441000,
    duration_s=10.0,
    integrated_lufs=-24.0,
    true_peak_dbtp=-2.0,
    sample_peak_dbfs=-2.4,
    clipped_runs=0,
    clip_run_samples=3,
    dc_offset=0.0,
    lead_silence_s=0.0,
    trail_silence_s=0.1,
    longest_dropout_s=0.0,
    silence_threshold_dbfs=-60.0,
)
GOOD_LOOP = dataclasses.replace(
    GOOD,
    trail_silence_s=0.0,
    loop_start=0,
    loop_length=441000,
    seam_jump_ratio=0.8,
    seam_loudness_change_lu=0.3,
    seam_loudness_excess_lu=0.3,
)
MASTER_GATES = [
    "silence",
    "clipping",
    "dropout",
    "lead_silence",
    "trail_silence",
    "loudness",
    "true_peak",
    "dc_offset",
    "duration",
]


def _judge(metrics: Metrics, **kwargs: Any) -> list[GateResult]:
    args: dict[str, Any] = {
        "limits": GateLimits(),
        "loudness": CONSOLE,
        "duration_s": 10.0,
        "loop": metrics.loop_start is not None,
        "sample_rate": 44100,
        "channels": 2,
    }
    return judge(metrics, **{**args, **kwargs})


def _master_table(
    track_id: str, metrics: Metrics, *, theme: bool = False, **columns: float
) -> GateTable:
    """One master row (with `columns` added) and the default gates of a 10 s non-loop track."""
    expectations = gate_expectations(
        ["master"],
        limits=GateLimits(),
        loudness=CONSOLE,
        duration_s=10.0,
        loop=False,
        sample_rate=44100,
        channels=2,
        theme=theme,
    )
    row = {**metrics_row(track_id, "master", metrics), **columns}
    return GateTable(track_id, (row,), tuple(expectations))


def _failed(results: list[GateResult]) -> set[str]:
    return {r.name for r in results if not r.passed}


def test_a_good_master_passes_every_gate_with_its_measured_value() -> None:
    results = _judge(GOOD)
    assert [r.name for r in results] == MASTER_GATES
    assert _failed(results) == set()
    by_name = {r.name: r for r in results}
    assert by_name["loudness"].value == -24.0
    assert by_name["loudness"].limit == "-24.0 ± 2.0 LUFS"
    assert by_name["true_peak"].value == -2.0
    assert by_name["duration"].limit == "10 ± 0.5 s"
    # A recording as long as what mastering keeps of it: a length no one wrote down.
    own_length = {r.name: r for r in _judge(GOOD, duration_s=132299 / 44100)}
    assert own_length["duration"].limit == "3 ± 0.5 s"
    assert by_name["dc_offset"].severity == "warn"
    assert {r.severity for r in results if r.name != "dc_offset"} == {"fail"}


def test_a_loop_adds_the_seam_gates_and_allows_no_trailing_silence() -> None:
    results = _judge(GOOD_LOOP)
    assert [r.name for r in results] == [*MASTER_GATES, "loop_seam_jump", "loop_seam_loudness"]
    assert _failed(results) == set()
    assert _failed(_judge(dataclasses.replace(GOOD_LOOP, trail_silence_s=0.01))) == {
        "trail_silence"
    }


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({"integrated_lufs": -26.1}, {"loudness"}),
        ({"integrated_lufs": -21.9}, {"loudness"}),
        ({"integrated_lufs": -math.inf}, {"silence", "loudness"}),
        ({"true_peak_dbtp": -0.9}, {"true_peak"}),
        ({"clipped_runs": 1}, {"clipping"}),
        ({"longest_dropout_s": 2.0}, {"dropout"}),
        ({"lead_silence_s": 0.06}, {"lead_silence"}),
        ({"trail_silence_s": 0.51}, {"trail_silence"}),
        ({"duration_s": 9.49}, {"duration"}),
        ({"duration_s": 10.51}, {"duration"}),
        ({"dc_offset": 0.0011}, {"dc_offset"}),
        ({"seam_jump_ratio": 4.1}, {"loop_seam_jump"}),
        ({"seam_loudness_excess_lu": 1.6}, {"loop_seam_loudness"}),
    ],
)
def test_each_gate_fails_when_its_metric_crosses_the_limit(
    change: dict[str, float], failing: set[str]
) -> None:
    assert _failed(_judge(dataclasses.replace(GOOD_LOOP, **change))) == failing


def test_values_at_the_limit_pass() -> None:
    at_limit = dataclasses.replace(
        GOOD,
        integrated_lufs=-26.0,
        true_peak_dbtp=-1.0,
        lead_silence_s=0.05,
        trail_silence_s=0.5,
        longest_dropout_s=1.99,
        duration_s=10.5,
        dc_offset=0.001,
    )
    assert _failed(_judge(at_limit)) == set()


def test_silence_reports_no_value_and_dc_offset_only_warns() -> None:
    results = _judge(dataclasses.replace(GOOD, integrated_lufs=-math.inf, dc_offset=0.1))
    by_name = {r.name: r for r in results}
    assert by_name["silence"].value is None and not by_name["silence"].passed
    assert by_name["dc_offset"].severity == "warn" and not by_name["dc_offset"].passed


def test_limits_and_loudness_targets_are_overridable() -> None:
    dropout = dataclasses.replace(GOOD, longest_dropout_s=3.0)
    assert _failed(_judge(dropout)) == {"dropout"}
    assert _failed(_judge(dropout, limits=GateLimits(dropout_max_s=5.0))) == set()
    mobile = dataclasses.replace(GOOD, integrated_lufs=-18.0)
    assert _failed(_judge(mobile)) == {"loudness"}
    assert _failed(_judge(mobile, loudness=LOUDNESS_PROFILES["mobile"])) == set()
    assert "duration" not in {r.name for r in _judge(GOOD, duration_s=None)}


def test_silence_and_clipping_also_judge_the_source() -> None:
    clipped_source = dataclasses.replace(GOOD, clipped_runs=40, integrated_lufs=-12.0)
    results = {r.name: r for r in _judge(GOOD, source=clipped_source)}
    assert not results["clipping"].passed and results["clipping"].value == 40
    assert results["silence"].passed
    assert results["loudness"].value == -24.0  # the master's, not the source's
    source_only = _judge(dataclasses.replace(GOOD, integrated_lufs=-math.inf), label="source")
    assert [(r.name, r.passed) for r in source_only] == [("silence", False), ("clipping", True)]
    # Silence is judged on the quieter of the two: either one silent fails the track.
    silent = dataclasses.replace(GOOD, integrated_lufs=-math.inf)
    assert not {r.name: r for r in _judge(silent, source=GOOD)}["silence"].passed
    assert not {r.name: r for r in _judge(GOOD, source=silent)}["silence"].passed


@pytest.mark.parametrize("column", ["integrated_lufs", "true_peak_dbtp", "duration_s"])
def test_a_metric_that_is_nan_fails_its_gates_with_no_value(column: str) -> None:
    """NaN compares false with every limit: taken as a value, it passed min and max alike."""
    results = _judge(dataclasses.replace(GOOD, **{column: math.nan}))
    failed = [r for r in results if not r.passed]
    assert failed, "a metric nobody could measure passed every gate"
    assert all(r.value is None for r in failed)
    assert {r.name for r in failed} == {
        "integrated_lufs": {"silence", "loudness"},
        "true_peak_dbtp": {"true_peak"},
        "duration_s": {"duration"},
    }[column]


def test_decoded_files_are_judged_on_peak_duration_rate_and_channels() -> None:
    names = ["true_peak_ogg", "sample_rate_ogg", "channels_ogg", "duration_ogg"]
    assert [r.name for r in _judge(GOOD, label="ogg")] == names
    assert _failed(_judge(GOOD, label="ogg")) == set()
    bad = dataclasses.replace(GOOD, true_peak_dbtp=-0.5, sample_rate=48000, channels=1)
    assert _failed(_judge(bad, label="ogg")) == {"true_peak_ogg", "sample_rate_ogg", "channels_ogg"}
    # Below the rate and above the channels as well: each is "=", not a bound on one side.
    low = dataclasses.replace(GOOD, sample_rate=22050, channels=6)
    assert _failed(_judge(low, label="ogg")) == {"sample_rate_ogg", "channels_ogg"}
    short = dataclasses.replace(GOOD, duration_s=8.0)
    assert _failed(_judge(short, label="mp3")) == {"duration_mp3"}


TEAM_PEAK = {
    "type": "expect_column_max_to_be_between",
    "kwargs": {"column": "sample_peak_dbfs", "max_value": -3.0},
    "meta": {"gate": "team_sample_peak"},
}


def test_gates_judged_before_are_taken_as_given_and_names_still_checked() -> None:
    table = _master_table("t", GOOD)
    fresh = evaluate(table)
    assert all(r.passed for r in fresh)
    # A verdict passed in is used as it is (this one contradicts the row), in its place.
    given = GateResult("loudness", -30.0, "given", False, "fail")
    results = evaluate(table, done=[given])
    assert [r.name for r in results] == MASTER_GATES
    assert results == [given if r.name == "loudness" else r for r in fresh]
    repeated = GateTable("t", table.rows, (*table.expectations, table.expectations[5]))
    with pytest.raises(InputError, match="unique"):
        evaluate(repeated, done=[given])


def test_a_team_adds_its_own_expectations() -> None:
    results = _judge(GOOD, extra_expectations=[TEAM_PEAK])
    assert results[-1] == GateResult("team_sample_peak", -2.4, results[-1].limit, False, "fail")
    warning = {**TEAM_PEAK, "severity": "warning", "meta": {}}
    (extra,) = [r for r in _judge(GOOD, extra_expectations=[warning]) if r.name not in MASTER_GATES]
    assert (extra.name, extra.severity, extra.passed) == (
        "expect_column_max_to_be_between:sample_peak_dbfs",
        "warn",
        False,
    )
    relaxed = {**TEAM_PEAK, "kwargs": {"column": "sample_peak_dbfs", "max_value": -1.0}}
    assert _failed(_judge(GOOD, extra_expectations=[relaxed])) == set()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"type": "expect_nothing_at_all", "kwargs": {}}, "extra expectation \\[0\\]"),
        ({**TEAM_PEAK, "meta": {"gate": "loudness"}}, "unique"),
        ({**TEAM_PEAK, "kwargs": {"column": "true_peak", "max_value": 0.0}}, "does not exist"),
    ],
)
def test_a_bad_team_expectation_is_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        _judge(GOOD, extra_expectations=[config])


def test_expectations_load_from_a_gx_suite_file(tmp_path: Path) -> None:
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"name": "team", "expectations": [TEAM_PEAK]}))
    assert [c["meta"]["gate"] for c in load_expectations(path)] == ["team_sample_peak"]
    path.write_text(json.dumps({"name": "team"}))
    with pytest.raises(InputError, match="expectations"):
        load_expectations(path)


def test_data_docs_show_every_track_validation(tmp_path: Path) -> None:
    tables = []
    for track_id, metrics in (
        ("calm", GOOD),
        ("harsh", dataclasses.replace(GOOD, true_peak_dbtp=0.5)),
    ):
        tables.append(_master_table(track_id, metrics))
    assert not all(r.passed for r in evaluate(tables[1]))
    index = build_data_docs(tables, tmp_path / "qc")
    assert index == tmp_path / "qc" / "index.html"
    pages = {p.name: p.read_text() for p in (tmp_path / "qc" / "validations").rglob("*.html")}
    text = " ".join(pages.values())
    assert "gates-calm" in index.read_text() and "gates-harsh" in index.read_text()
    assert "true_peak" in text and "4x-oversampled true peak" in text


def test_data_docs_built_again_write_new_page_assets_not_through_shared_links(
    tmp_path: Path,
) -> None:
    """A retried flow run builds its report again in its folder, whose page assets are hard
    links to another run's: GX opened each for writing, through the link, into every report."""
    tables = [_master_table("calm", GOOD)]
    build_data_docs(tables, tmp_path / "older")
    build_data_docs(tables, tmp_path / "retried")
    link_twins(tmp_path / "retried" / "static", tmp_path / "older" / "static")
    older = (tmp_path / "older").rglob("static/**/*")
    assets = [p.relative_to(tmp_path / "older") for p in older if p.is_file()]
    assert assets and all(
        (tmp_path / "retried" / a).samefile(tmp_path / "older" / a) for a in assets
    )
    build_data_docs(tables, tmp_path / "retried")
    assert not any((tmp_path / "retried" / a).samefile(tmp_path / "older" / a) for a in assets)


def _musical(row: dict[str, Any], **limits: Any) -> dict[str, GateResult]:
    """The master's gates on GOOD with `row` added, for a 120 bpm track in A minor."""
    table = GateTable(
        "t",
        ({**metrics_row("t", "master", GOOD), **row},),
        tuple(
            gate_expectations(
                ["master"],
                limits=GateLimits(**limits),
                loudness=CONSOLE,
                duration_s=10.0,
                loop=False,
                sample_rate=44100,
                channels=2,
                bpm=120,
                key="A minor",
            )
        ),
    )
    return {g.name: g for g in evaluate(table)}


@pytest.mark.parametrize(
    ("measured_bpm", "passed"),
    [
        (120.0, True),
        (124.7, True),  # within 4 %
        (115.3, True),
        (125.0, False),  # 4.2 % fast
        (114.9, False),
        (60.5, True),  # half time is the same tempo counted at another level
        (238.0, True),  # double time
        (90.0, False),  # a 3:4 relation is another tempo
        (360.0, False),  # triple time: another tempo
        (80.0, False),  # two thirds
    ],
)
def test_tempo_gate_accepts_the_target_at_half_and_double_time(
    measured_bpm: float, passed: bool
) -> None:
    error = tempo_error_pct(measured_bpm, 120)
    tempo = _musical({"tempo_error_pct": error, "key_offset_semitones": 0})["tempo"]
    assert tempo.passed is passed and tempo.severity == "fail"
    assert tempo.limit == "<= 4% from 120 bpm (or half or double)"
    assert tempo.value == pytest.approx(error)


@pytest.mark.parametrize(
    ("similarity", "passed"), [(THEME_LIMIT, True), (THEME_LIMIT - 0.01, False)]
)
def test_a_variation_fails_below_the_theme_limit_and_passes_at_it(
    similarity: float, passed: bool
) -> None:
    table = _master_table("t", GOOD, theme=True, theme_similarity=similarity)
    (theme,) = [g for g in evaluate(table) if g.name == "theme"]
    assert (theme.passed, theme.severity, theme.value) == (passed, "fail", similarity)


def test_no_tempo_found_fails_the_tempo_gate() -> None:
    assert not _musical({"tempo_error_pct": None})["tempo"].passed


def test_tempo_tolerance_is_a_setting() -> None:
    error = tempo_error_pct(125.9, 120)  # 4.9 %
    assert _musical({"tempo_error_pct": error}, tempo_tolerance_pct=5.0)["tempo"].passed
    assert not _musical({"tempo_error_pct": error}, tempo_tolerance_pct=4.0)["tempo"].passed


def test_key_gate_warns_when_the_key_is_neither_the_target_nor_its_relative() -> None:
    assert _musical({"tempo_error_pct": 0.0, "key_offset_semitones": 0})["key"].passed
    off_key = _musical({"tempo_error_pct": 0.0, "key_offset_semitones": 2})["key"]
    assert not off_key.passed and off_key.severity == "warn" and off_key.value == 2
    assert not _musical({"tempo_error_pct": 0.0, "key_offset_semitones": 1})["key"].passed
    assert off_key.limit == "A minor or C major (0 semitones away)"


def test_a_manifest_sets_any_gates_severity_per_format_gates_included() -> None:
    severities = (("key", "fail"), ("tempo", "off"), ("true_peak", "warn"))
    gates = gate_expectations(
        ["source", "master", "ogg", "mp3"],
        limits=GateLimits(severities=severities),
        loudness=CONSOLE,
        duration_s=10.0,
        loop=False,
        sample_rate=44100,
        channels=2,
        bpm=120,
        key="A minor",
    )
    by_name = {g.name: g.severity for g in gates}
    assert "tempo" not in by_name
    assert by_name["key"] == "fail"
    assert by_name["true_peak"] == by_name["true_peak_ogg"] == by_name["true_peak_mp3"] == "warn"
    assert by_name["loudness"] == by_name["sample_rate_ogg"] == "fail"


def test_the_music_columns_are_what_the_master_row_carries() -> None:
    import numpy as np

    from soundtrack.analysis import analyse
    from soundtrack.expectations import TABLE_COLUMNS
    from soundtrack.gates import MUSIC_COLUMNS, THEME_COLUMNS
    from soundtrack.master import Master
    from soundtrack.process import _theme_columns, analysis_columns

    tone = np.tile(np.sin(np.arange(44100 * 3) * 2 * np.pi * 220 / 44100), (2, 1))
    tone = tone.astype(np.float32)
    columns = analysis_columns(analyse(tone, 44100), "A minor", 120)
    assert set(columns) == MUSIC_COLUMNS and MUSIC_COLUMNS <= TABLE_COLUMNS
    master = Master(tone, 44100, None, None, -20.0, 0.0, 0.0)
    assert set(_theme_columns(master, (tone, 44100))) == THEME_COLUMNS <= TABLE_COLUMNS


def test_a_rejection_names_each_failing_gate_with_what_it_measured_and_its_limit() -> None:
    results = [
        GateResult("loudness", -23.98, "-24 +/- 1 LUFS", True, "fail"),
        GateResult("tempo", 112.3456, "120 bpm +/- 4%", False, "fail"),
        GateResult("key", 5.0, "D minor", False, "warn"),  # warns: not a reason to reject
        GateResult("silence", None, "above -70 LUFS", False, "fail"),
        GateResult("sample_rate", 48000.0, "44100", False, "fail"),
    ]
    assert rejection(results) == (
        "rejected by gates: tempo 112.35 (limit 120 bpm +/- 4%), silence measured nothing "
        "(limit above -70 LUFS), sample_rate 48000 (limit 44100)"
    )
