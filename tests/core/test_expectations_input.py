"""A team's expectations file is data, never code: what GX would evaluate as code or query text
is refused by load_expectations and by the evaluation path, within size, depth and count limits."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pandas as pd
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings

from soundtrack import steps
from soundtrack.errors import InputError
from soundtrack.expectations import (
    ALLOWED_KWARGS,
    EXPECTATIONS_MAX_BYTES,
    EXPECTATIONS_MAX_COUNT,
    EXPECTATIONS_MAX_DEPTH,
    TABLE_COLUMNS,
    build_data_docs,
    check_expectations,
    load_expectations,
)
from soundtrack.gates import GateResult, GateTable, evaluate, judge, metrics_row
from soundtrack.manifest import load_manifest
from soundtrack.measure import Metrics
from soundtrack.resolve import resolve_tracks
from soundtrack.spec import LOUDNESS_PROFILES, GateLimits
from tests.signals import music_like

MASTER = Metrics(
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
LOUD_SOURCE = dataclasses.replace(MASTER, integrated_lufs=-12.0, sample_peak_dbfs=-0.5)
PEAK: dict[str, Any] = {
    "type": "expect_column_max_to_be_between",
    "kwargs": {"column": "sample_peak_dbfs", "max_value": -2.0},
    "meta": {"gate": "house_peak"},
}
ON_MASTER: dict[str, Any] = {
    "type": "comparison",
    "column": {"name": "label"},
    "operator": "==",
    "parameter": "master",
}


def _with(**kwargs: Any) -> dict[str, Any]:
    return {**PEAK, "kwargs": {**PEAK["kwargs"], **kwargs}}


def _write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


def _payload(canary: Path) -> str:
    return f"@pd.io.common.os.system({json.dumps('touch ' + shlex.quote(str(canary)))})"


def _judge(extra: list[dict[str, Any]]) -> dict[str, GateResult]:
    results = judge(
        MASTER,
        source=LOUD_SOURCE,
        limits=GateLimits(),
        loudness=LOUDNESS_PROFILES["console"],
        duration_s=10.0,
        loop=False,
        sample_rate=44100,
        channels=2,
        extra_expectations=extra,
    )
    return {r.name: r for r in results}


def test_the_payload_is_live_code_when_pandas_queries_it(tmp_path: Path) -> None:
    # The control: what GX does with a pandas row condition runs the shell command.
    canary = tmp_path / "CANARY"
    pd.DataFrame({"label": ["master"]}).query(_payload(canary))
    assert canary.exists()


def test_a_pandas_row_condition_is_refused_and_never_runs(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    bad = _with(row_condition=_payload(canary), condition_parser="pandas")
    path = _write(tmp_path / "team.json", [PEAK, {**PEAK, "meta": {"gate": "b"}}, bad])
    with pytest.raises(InputError) as refused:
        load_expectations(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: extra expectation [2] 'expect_column_max_to_be_between': ")
    assert "kwargs.condition_parser 'pandas' is not allowed" in message
    assert "allowed: 'great_expectations' or none" in message
    # Without the parser's name, the string is still pandas query text.
    _write(path, {"name": "team", "expectations": [_with(row_condition=_payload(canary))]})
    with pytest.raises(InputError, match=r"\[0\].*kwargs.row_condition '@pd.io.*structured"):
        load_expectations(path)
    assert not canary.exists()


def test_the_evaluation_path_refuses_code_whatever_built_the_table(tmp_path: Path) -> None:
    canary = tmp_path / "CANARY"
    pandas_string = _with(row_condition=_payload(canary), condition_parser="pandas")
    # What GX turns a pandas string into when it builds the expectation: still query text.
    pass_through = _with(
        row_condition={"type": "pass_through", "pass_through_filter": _payload(canary)}
    )
    row = metrics_row("t", "master", MASTER)
    for bad in (pandas_string, pass_through):
        table = GateTable("t", (row,), (), (bad,))
        with pytest.raises(InputError, match=r"gates-t expectation \[0\]"):
            evaluate(table)
        with pytest.raises(InputError, match=r"gates-t expectation \[0\]"):
            build_data_docs([table], tmp_path / "qc")
        with pytest.raises(InputError, match=r"extra expectation \[0\]"):
            _judge([bad])
    assert not canary.exists()


def test_a_structured_row_condition_loads_and_judges_only_its_rows(tmp_path: Path) -> None:
    # Over every row the loud source's -0.5 dBFS peak fails; over the master row, -2.4 passes.
    assert not _judge([PEAK])["house_peak"].passed
    as_json = _with(row_condition=ON_MASTER)
    as_gx_string = _with(
        row_condition='col("label") == "master"', condition_parser="great_expectations"
    )
    either_label = _with(
        row_condition={
            "type": "and",
            "conditions": [
                {
                    "type": "comparison",
                    "column": {"name": "label"},
                    "operator": "IN",
                    "parameter": ["master"],
                },
                {"type": "nullity", "column": {"name": "loop_start"}, "is_null": True},
            ],
        }
    )
    for config in (as_json, as_gx_string, either_label):
        (loaded,) = check_expectations(load_expectations(_write(tmp_path / "team.json", [config])))
        # Only structured conditions reach the evaluation path; the parser's name is dropped.
        assert isinstance(loaded["kwargs"]["row_condition"], dict)
        assert "condition_parser" not in loaded["kwargs"]
        result = _judge([loaded])["house_peak"]
        assert (result.passed, result.value) == (True, -2.4)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {
                "type": "unexpected_rows_expectation",
                "kwargs": {"unexpected_rows_query": "SELECT 1"},
            },
            "'unexpected_rows_expectation': type 'unexpected_rows_expectation' is not allowed; "
            "allowed: column comparisons only: expect_column_max_to_be_between",
        ),
        (
            {
                "type": "expect_column_values_to_match_regex",
                "kwargs": {"column": "label", "regex": "(a+)+$"},
            },
            "type 'expect_column_values_to_match_regex' is not allowed",
        ),
        (
            _with(result_format="COMPLETE"),
            "kwargs.result_format 'COMPLETE' is not a known kwarg; allowed: column, min_value",
        ),
        (
            _with(max_value={"$PARAMETER": "now()"}),
            "kwargs.max_value {'$PARAMETER': 'now()'} is not allowed; "
            "allowed: a finite number or null",
        ),
        (
            _with(condition_parser="spark", row_condition="label = 'master'"),
            "kwargs.condition_parser 'spark' is not allowed",
        ),
        (
            _with(
                row_condition={"type": "pass_through", "pass_through_filter": "label == 'master'"}
            ),
            "kwargs.row_condition.type 'pass_through' is not allowed; allowed: 'comparison', "
            "'nullity', 'and' or 'or'",
        ),
        (
            # GX's own grammar accepts any quoted name, and pandas reads a name in backticks:
            # a backtick in the name would end it and start query text.
            _with(
                row_condition="col(\"x` | @pd.io.common.os.system('true') | `y\") > 1",
                condition_parser="great_expectations",
            ),
            "kwargs.row_condition.column {'name': \"x` | @pd.io.common.os.system('true') | `y\"} "
            'does not exist; allowed: {"name": a column of the gates\' table: '
            "bar_loudness_change_lu, beat_count, beats_per_bar,",
        ),
        (
            {**PEAK, "windows": [{"constraint_fn": "x", "parameter_name": "p", "range": 1}]},
            "windows [{'constraint_fn'",
        ),
        (_with(column="true_peak"), "kwargs.column 'true_peak' does not exist"),
        ({**PEAK, "severity": "info"}, "severity 'info' is not allowed; allowed: 'critical'"),
    ],
)
def test_kwargs_that_reach_an_evaluator_are_refused(
    tmp_path: Path, config: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path / "team.json", [PEAK, config])
    with pytest.raises(InputError) as refused:
        load_expectations(path)
    assert f"extra expectation [1] {config['type']!r}: " in str(refused.value)
    assert message in str(refused.value)


def test_an_oversize_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "team.json"
    padding = " " * EXPECTATIONS_MAX_BYTES  # whitespace: valid JSON, only too large
    path.write_text(json.dumps([PEAK]) + padding)
    size = path.stat().st_size
    with pytest.raises(InputError) as refused:
        load_expectations(path)
    assert str(refused.value) == (
        f"{path}: the expectations file is larger than the limit of 1048576 bytes (1 MiB): "
        f"{size} bytes"
    )


def test_too_deep_nesting_is_refused_before_parsing(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(RecursionError):  # what json.loads alone would do with it
        json.loads(deep)
    path = tmp_path / "team.json"
    path.write_text(deep)
    with pytest.raises(InputError) as refused:
        load_expectations(path)
    assert str(refused.value) == (
        f"{path}: the expectations JSON is nested 100000 levels deep; the limit is 20"
    )
    # Brackets inside strings are not nesting.
    _write(path, [{**PEAK, "meta": {"gate": "g", "limit": "[" * 50}}])
    assert load_expectations(path)[0]["meta"]["limit"] == "[" * 50
    at_limit = "[" * EXPECTATIONS_MAX_DEPTH + "]" * EXPECTATIONS_MAX_DEPTH
    path.write_text(at_limit)  # parsed (and then refused for its shape)
    with pytest.raises(InputError, match="expected a list of expectation configurations"):
        load_expectations(path)
    path.write_text(f"[{at_limit}]")
    with pytest.raises(InputError, match="nested 21 levels deep; the limit is 20"):
        load_expectations(path)


def test_too_many_expectations_are_refused(tmp_path: Path) -> None:
    many = [{**PEAK, "meta": {"gate": f"g{i}"}} for i in range(EXPECTATIONS_MAX_COUNT + 1)]
    path = _write(tmp_path / "team.json", {"name": "team", "expectations": many})
    with pytest.raises(InputError) as refused:
        load_expectations(path)
    assert str(refused.value) == f"{path}: 501 expectations; the limit is 500"
    assert len(load_expectations(_write(path, many[:EXPECTATIONS_MAX_COUNT]))) == 500


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[{"type": "expect_column_max_to_be_between", '
            '"kwargs": {"column": "dc_offset", "max_value": NaN}}]',
            "NaN is not a number",
        ),
        ("[" + '{"type": "x", "kwargs": {"v": 1e999}}' + "]", "number 1e999 is out of range"),
        ("[" + "9" * 5000 + "]", "Exceeds the limit"),
        ('[{"type": ', "Expecting value"),
    ],
)
def test_numbers_a_gate_cannot_hold_and_broken_json_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "team.json"
    path.write_text(text)
    with pytest.raises(InputError, match=f"cannot read expectations from {path}: .*{message}"):
        load_expectations(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"column": "sample_peak_dbfs"}, "has neither bound"),
        ({"column": "sample_peak_dbfs", "min_value": None}, "has neither bound"),
        ({"column": "sample_peak_dbfs", "min_value": -1.0, "max_value": -3.0}, "at most max_value"),
    ],
)
def test_bounds_gx_would_refuse_after_rendering_are_refused_when_loaded(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    for kind in ("expect_column_values_to_be_between", "expect_column_max_to_be_between"):
        path = _write(tmp_path / "team.json", [{"type": kind, "kwargs": kwargs}])
        with pytest.raises(InputError, match=message):
            load_expectations(path)
    rows = {k: v for k, v in kwargs.items() if k != "column"}
    path = _write(
        tmp_path / "team.json", [{"type": "expect_table_row_count_to_be_between", "kwargs": rows}]
    )
    with pytest.raises(InputError, match=message):
        load_expectations(path)


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_KWARG_NAMES = [
    *sorted({name for spec in ALLOWED_KWARGS.values() for name in spec}),
    "unexpected_rows_query",
    "result_format",
    "regex",
]
_COLUMNS = st.sampled_from([*sorted(TABLE_COLUMNS), "true_peak", "x`y"])
_CONDITIONS = st.recursive(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["comparison", "nullity", "pass_through"]),
            "column": st.fixed_dictionaries({"name": _COLUMNS}),
            "operator": st.sampled_from(["==", "<", "IN", "LIKE"]),
            "parameter": _SCALARS | st.lists(_SCALARS, max_size=3),
        },
        optional={"is_null": st.booleans()},
    ),
    lambda inner: st.fixed_dictionaries(
        {"type": st.sampled_from(["and", "or"]), "conditions": st.lists(inner, max_size=3)}
    ),
    max_leaves=6,
)
# Values near what each kwarg allows, so that many generated expectations load.
_PLAUSIBLE = {
    "column": _COLUMNS,
    "column_A": _COLUMNS,
    "column_B": _COLUMNS,
    "min_value": st.none() | st.integers() | st.floats(),
    "max_value": st.none() | st.integers() | st.floats(),
    "strict_min": st.booleans(),
    "strict_max": st.booleans(),
    "mostly": st.floats(0.0, 1.0) | _JSON,
    "value_set": st.lists(_SCALARS, max_size=4),
    "ignore_row_if": st.sampled_from(["neither", "either_value_is_missing", "always"]),
    "or_equal": st.booleans(),
    "row_condition": _CONDITIONS | st.just('col("label") == "master"') | st.text(max_size=12),
    "condition_parser": st.sampled_from(["great_expectations", "pandas"]),
}
_EXPECTATIONS = st.sampled_from(sorted(ALLOWED_KWARGS)).flatmap(
    lambda kind: st.fixed_dictionaries(
        {
            "type": st.just(kind),
            "kwargs": st.fixed_dictionaries(
                {
                    k: _PLAUSIBLE[k]
                    for k in ("column", "column_A", "column_B")
                    if k in ALLOWED_KWARGS[kind]
                },
                optional={
                    k: _PLAUSIBLE[k] for k in ALLOWED_KWARGS[kind] if not k.startswith("column")
                },
            ),
        },
        optional={
            "meta": _JSON | st.fixed_dictionaries({"gate": st.text(max_size=8)}),
            "severity": st.sampled_from(["critical", "warning", "info"]),
        },
    )
) | st.fixed_dictionaries(
    {
        "type": st.sampled_from([*sorted(ALLOWED_KWARGS), "unexpected_rows_expectation"]),
        "kwargs": st.dictionaries(st.sampled_from(_KWARG_NAMES), _JSON, max_size=5),
    }
)
_DOCUMENTS = (
    _JSON
    | st.lists(_EXPECTATIONS, max_size=4)
    | st.fixed_dictionaries(
        {"name": _JSON, "expectations": st.lists(_EXPECTATIONS | _JSON, max_size=4)}
    )
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=_DOCUMENTS)
def test_any_json_document_loads_or_raises_an_input_error(tmp_path: Path, document: Any) -> None:
    path = _write(tmp_path / "team.json", document)
    try:
        loaded = check_expectations(load_expectations(path))
    except InputError:
        return
    for config in loaded:  # what loads is only what the evaluation path accepts
        assert config["type"] in ALLOWED_KWARGS
        assert "condition_parser" not in config["kwargs"]
        assert not isinstance(config["kwargs"].get("row_condition"), str)


def test_two_expectations_under_one_gate_name_are_refused_when_loaded(tmp_path: Path) -> None:
    """Two of one type and column, told apart only by their row conditions, took the same
    default name: `validate` passed, and `build` failed the track after rendering it."""
    master_only = {"row_condition": ON_MASTER}
    twice = [
        {"type": "expect_column_max_to_be_between", "kwargs": {**PEAK["kwargs"], **rows}}
        for rows in ({}, master_only)
    ]
    with pytest.raises(InputError, match=r"\[0\] and \[1\] are both named 'expect_column_max"):
        load_expectations(_write(tmp_path / "team.json", twice))
    named = [{**twice[0], "meta": {"gate": "peak"}}, {**twice[1], "meta": {"gate": "peak"}}]
    with pytest.raises(InputError, match=r"are both named 'peak'; give each its own meta.gate"):
        load_expectations(_write(tmp_path / "team.json", named))
    for builtin in ("loudness", "true_peak_ogg", " Loudness "):
        clash = [{**PEAK, "meta": {"gate": builtin}}]
        with pytest.raises(InputError, match=f"gate name '{builtin}' is a built-in gate's"):
            load_expectations(_write(tmp_path / "team.json", clash))
    blank = [{**PEAK, "meta": {"gate": "\u200b "}}]
    with pytest.raises(InputError, match="is blank"):
        load_expectations(_write(tmp_path / "team.json", blank))
    apart = [{**twice[0], "meta": {"gate": "peak"}}, {**twice[1], "meta": {"gate": "master_peak"}}]
    assert len(check_expectations(load_expectations(_write(tmp_path / "team.json", apart)))) == 2


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("odd \ud800", "lone surrogate"),
        ("a\x01b", "control characters"),
        ("</failure>\x0c", "control"),
        ("house\ufffepeak", r"U\+FFFE"),
    ],
)
@pytest.mark.parametrize("where", ["gate", "limit", "description", "notes", "key"])
def test_text_no_lock_or_junit_can_hold_is_refused_when_loaded(
    tmp_path: Path, text: str, said: str, where: str
) -> None:
    """A lone surrogate in meta.gate passed `validate`, then the build died writing the lock."""
    config: dict[str, Any] = {**PEAK, "meta": {"gate": "house_peak"}}
    if where in ("gate", "limit"):
        config["meta"] = {"gate": "house_peak", where: text}
    elif where == "key":
        config["meta"] = {"gate": "house_peak", text: "x"}
    else:
        config[where] = text
    path = tmp_path / "team.json"
    path.write_text(json.dumps([config]))  # json.dumps escapes the surrogate as \ud800
    with pytest.raises(InputError, match=said):
        load_expectations(path)


@pytest.mark.parametrize(
    "condition",
    [
        'col("label") == "master" or col("label") == "ogg"',  # GX ran `label == master` alone
        'col("label") == "master" garbage',
        "col('label') == 'master'",  # GX cannot parse it: validate passed, the build failed
    ],
)
def test_a_string_condition_gx_would_cut_short_or_not_parse_is_refused(
    tmp_path: Path, condition: str
) -> None:
    path = _write(
        tmp_path / "team.json",
        [_with(row_condition=condition, condition_parser="great_expectations")],
    )
    with pytest.raises(InputError, match=r"one comparison, col\(\"column\"\) OP value"):
        load_expectations(path)


@pytest.mark.timeout(60)
def test_an_unclosed_string_full_of_escapes_is_refused_at_once(tmp_path: Path) -> None:
    """A quote then 100,000 escaped quotes: the depth scan matched a string from each quote,
    in time growing with the square of the length (60 KB took 13 s, 1 MiB would take an hour)."""
    path = tmp_path / "team.json"
    path.write_text('"' + '\\"' * 100_000)
    with pytest.raises(InputError):
        load_expectations(path)


def test_a_description_reaches_the_qc_report_as_text(tmp_path: Path) -> None:
    """Data Docs wrote an expectation's description into the page as it was: a <script> in a
    team's rules ran in the QC report the Prefect UI links to."""
    described = {**PEAK, "description": "<script>alert('qc')</script> peak & more"}
    (config,) = check_expectations([described])
    table = GateTable("t", (metrics_row("t", "master", MASTER),), (), (config,))
    build_data_docs([table], tmp_path / "qc")
    pages = " ".join(p.read_text() for p in (tmp_path / "qc").rglob("*.html"))
    assert "<script>alert('qc')</script>" not in pages
    assert "&lt;script&gt;alert(" in pages


def test_rules_changed_during_a_build_are_not_judged_under_the_old_hash(tmp_path: Path) -> None:
    """The build hashed the rules into each spec, then read them again to judge: rules edited
    in between judged the track, and the verdict was cached under the old rules' hash."""
    sf.write(tmp_path / "mix.wav", music_like(3.0, 44100).T, 44100)
    _write(tmp_path / "rules.json", [PEAK])
    (tmp_path / "m.yaml").write_text(
        "schema: 1\nsoundtrack: s\nexpectations: rules.json\ntracks:\n"
        "  - id: a\n    source: mix.wav\n"
    )
    (spec,) = resolve_tracks(load_manifest(tmp_path / "m.yaml"), tmp_path)
    _write(tmp_path / "rules.json", [_with(max_value=100.0)])
    with pytest.raises(InputError, match=r"rules\.json changed during the build"):
        steps.master(spec, str(tmp_path / "mix.wav"), str(tmp_path / "staging"))


def test_a_variations_column_in_a_manifest_of_other_tracks_is_bad_input(tmp_path: Path) -> None:
    """validate passed a rule on theme_similarity for a manifest without variations; the
    build then failed every track (exit 1, "column ... does not exist") and wrote its lock."""
    from soundtrack.inputs import check_inputs

    sf.write(tmp_path / "mix.wav", music_like(3.0, 44100).T, 44100)
    theme = {
        "type": "expect_column_min_to_be_between",
        "kwargs": {"column": "theme_similarity", "min_value": 0.5},
    }
    _write(tmp_path / "rules.json", [theme])
    (tmp_path / "m.yaml").write_text(
        "schema: 1\nsoundtrack: s\nexpectations: rules.json\ntracks:\n"
        "  - id: a\n    source: mix.wav\n"
    )
    with pytest.raises(InputError, match="theme_similarity, which only a variation's rows"):
        check_inputs(tmp_path / "m.yaml")
    transposed = {**ON_MASTER, "column": {"name": "theme_transposition_semitones"}}
    _write(tmp_path / "rules.json", [_with(row_condition=transposed)])
    with pytest.raises(InputError, match="theme_transposition_semitones"):
        check_inputs(tmp_path / "m.yaml")
    assert not (tmp_path / "assets").exists()
