"""A team's own Great Expectations (GX) checks, and the QC report: the one door to GX.

A team's expectations are data, never code: `load_expectations` reads a file within size, depth
and count limits and holds every configuration to an allow-list of column comparisons with
structured row conditions, without importing GX (`soundtrack validate` uses it). GX itself is
imported on first use: to check a configuration its own way, to run a team's expectations
(`run_expectations`), and to render Data Docs (`build_data_docs`).
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NamedTuple

from soundtrack.atomic import clear_folder
from soundtrack.errors import InputError, StorageError
from soundtrack.formats import FORMATS
from soundtrack.gates import (
    GATE_NAMES,
    MUSIC_COLUMNS,
    THEME_COLUMNS,
    Gate,
    GateResult,
    GateTable,
)
from soundtrack.measure import Metrics
from soundtrack.schema import text_problem, visible

_SEVERITY_TO_GX = {"fail": "critical", "warn": "warning"}
_GX_LOCK = threading.Lock()  # GX contexts and stores are not documented as thread-safe


# Limits on a team's expectations file, checked before (size, nesting) and after parsing
# (counts), so that no shape of file makes loading slow or large: json.loads recurses once per
# level of nesting (RecursionError near 1000), and every expectation becomes a GX object.
EXPECTATIONS_MAX_BYTES = 1 << 20  # 1 MiB: a few thousand expectations' worth of JSON
EXPECTATIONS_MAX_DEPTH = 20  # a suite export with an and-condition over lists is 8 levels deep
EXPECTATIONS_MAX_COUNT = 500
SET_MAX_ITEMS = 1000  # value_set, and the values of an IN / NOT_IN row condition
ROW_CONDITION_MAX_CHARS = 1000  # GX's own `col("x") == 1` string form
CONDITIONS_MAX = 100  # GX's own limit on the comparisons in one row condition

# The gates' table's columns (metrics_row): the only names a team's expectation may read. A
# structured row condition's column name reaches DataFrame.query in backticks, so a name with a
# backtick in it would be query text: a fixed set of plain identifiers closes that door too.
TABLE_COLUMNS = frozenset(
    {
        "track_id",
        "label",
        *(field.name for field in fields(Metrics)),
        *MUSIC_COLUMNS,
        *THEME_COLUMNS,
    }
)


class _Kind(NamedTuple):
    """What one kwarg may hold: a test, and the words that say so in a refusal."""

    accepts: Callable[[Any], bool]
    allowed: str


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int with hundreds of digits: no float holds it
        return False


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | bool) or _is_finite_number(value)


def _is_scalar_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= SET_MAX_ITEMS
        and all(_is_scalar(item) for item in value)
    )


_COLUMN = _Kind(
    lambda v: isinstance(v, str) and v in TABLE_COLUMNS,
    "a column of the gates' table: " + ", ".join(sorted(TABLE_COLUMNS)),
)
_BOUND = _Kind(lambda v: v is None or _is_finite_number(v), "a finite number or null")
_FLAG = _Kind(lambda v: isinstance(v, bool), "true or false")
_FRACTION = _Kind(
    lambda v: v is None or (_is_finite_number(v) and 0 <= v <= 1), "a number from 0 to 1"
)
_SET = _Kind(_is_scalar_list, f"a list of at most {SET_MAX_ITEMS} strings, numbers or booleans")
_IGNORE_ROW_IF = _Kind(
    lambda v: v in ("both_values_are_missing", "either_value_is_missing", "neither"),
    "'both_values_are_missing', 'either_value_is_missing' or 'neither'",
)
# row_condition and condition_parser depend on each other: _check_row_condition checks them.
_ROW_RULES = _Kind(lambda v: False, "see _check_row_condition")
_ROWS = {"row_condition": _ROW_RULES, "condition_parser": _ROW_RULES}
_BETWEEN = {"min_value": _BOUND, "max_value": _BOUND, "strict_min": _FLAG, "strict_max": _FLAG}
_PAIR = {"column_A": _COLUMN, "column_B": _COLUMN, "ignore_row_if": _IGNORE_ROW_IF}
# Expectation types a team may use, and the kwargs each may set: comparisons of the table's
# columns with numbers and sets. Left out on purpose, because GX evaluates them as code or query
# text: unexpected_rows_expectation (unexpected_rows_query, SQL),
# expect_query_results_to_match_comparison (base_query, comparison_query), regex and LIKE
# patterns (the regex engine, a SQL LIKE), json_schema, strftime_format, type_ / type_list (looked
# up in pandas by name), other_table_name; and from every type: result_format, windows, batch_id,
# catch_exceptions, and {"$PARAMETER": ...} values (GX's expression parser): only plain values
# of the kinds above pass.
ALLOWED_KWARGS: dict[str, dict[str, _Kind]] = {
    **{
        f"expect_column_{statistic}_to_be_between": {"column": _COLUMN, **_BETWEEN, **_ROWS}
        for statistic in ("min", "max", "sum", "mean", "median", "stdev")
    },
    "expect_column_values_to_be_between": {
        "column": _COLUMN,
        **_BETWEEN,
        "mostly": _FRACTION,
        **_ROWS,
    },
    **{
        f"expect_column_values_to_{verb}_in_set": {
            "column": _COLUMN,
            "value_set": _SET,
            "mostly": _FRACTION,
            **_ROWS,
        }
        for verb in ("be", "not_be")
    },
    **{
        f"expect_column_values_to_{verb}_null": {"column": _COLUMN, "mostly": _FRACTION, **_ROWS}
        for verb in ("be", "not_be")
    },
    "expect_column_pair_values_a_to_be_greater_than_b": {
        **_PAIR,
        "or_equal": _FLAG,
        "mostly": _FRACTION,
        **_ROWS,
    },
    "expect_column_pair_values_to_be_equal": {**_PAIR, "mostly": _FRACTION, **_ROWS},
    "expect_table_row_count_to_be_between": {**_BETWEEN, **_ROWS},
}
_REQUIRED_KWARGS = frozenset({"column", "column_A", "column_B", "value_set"})
# Top-level keys: "id" and "rendered_content" (in GX suite exports) are dropped before GX sees
# them; "condition_parser" only ever arrives from input, never on the evaluation path.
_INPUT_KEYS = (
    "type",
    "kwargs",
    "meta",
    "severity",
    "description",
    "notes",
    "id",
    "rendered_content",
)
_EVALUATED_KEYS = ("type", "kwargs", "meta", "severity", "description", "notes")
_SEVERITIES = ("critical", "warning")
_OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "IN", "NOT_IN")
_CONDITION_TYPES = "'comparison', 'nullity', 'and' or 'or'"
# GX's string condition, whole: one col("name") compared with a number or a quoted value, or
# .notnull(). GX's parser takes the first comparison and drops the rest of the string (`and`,
# `or`, anything): a string it would cut short, or could not parse, is refused here.
_GX_CONDITION = re.compile(
    r'\s*col\("([^"]*)"\)\s*(?:\.(?i:notnull)\(\)|(?:==|!=|<=|>=|<|>)\s*'
    r'(?:[+-]?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|"[^"\']+"|\'[^"\']+\'))\s*'
)


class _Refuser:
    """Builds the InputError for one expectation: where it is, its index and type."""

    def __init__(self, where: str, index: int, config: Mapping[str, Any]) -> None:
        self.prefix = f"{where} [{index}] {_shown(config.get('type'))}"

    def __call__(
        self, key: str, value: Any, allowed: str, problem: str = "is not allowed"
    ) -> InputError:
        return InputError(f"{self.prefix}: {key} {_shown(value)} {problem}; allowed: {allowed}")


def _shown(value: Any, max_chars: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def _check_config(config: Any, where: str, index: int, *, evaluated: bool) -> None:
    """Raise InputError unless `config` is an allowed expectation configuration. `evaluated`:
    the form GX is about to run (structured row conditions only, a named gate), else input."""
    if not isinstance(config, Mapping):
        raise InputError(
            f"{where} [{index}]: {_shown(config)} is not allowed; allowed: an object with "
            "'type' and 'kwargs'"
        )
    refuse = _Refuser(where, index, config)
    keys = _EVALUATED_KEYS if evaluated else _INPUT_KEYS
    for key in config:
        if key not in keys:
            raise refuse(str(key), config[key], ", ".join(keys), "is not a known key")
    kind = config.get("type")
    spec = ALLOWED_KWARGS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise refuse("type", kind, "column comparisons only: " + ", ".join(sorted(ALLOWED_KWARGS)))
    kwargs = config.get("kwargs")
    if not isinstance(kwargs, Mapping):
        raise refuse("kwargs", kwargs, "an object of keyword arguments")
    for key, value in kwargs.items():
        check = spec.get(key)
        if check is _ROW_RULES:
            continue
        if check is None:
            raise refuse(f"kwargs.{key}", value, ", ".join(spec), "is not a known kwarg")
        if not check.accepts(value):
            problem = "does not exist" if check is _COLUMN else "is not allowed"
            raise refuse(f"kwargs.{key}", value, check.allowed, problem)
    # Checked here as GX would check it, so that `validate` (no GX) refuses a missing one too.
    for key in sorted(_REQUIRED_KWARGS.intersection(spec).difference(kwargs)):
        raise refuse(f"kwargs.{key}", None, spec[key].allowed, "is missing")
    if "min_value" in spec:
        _check_bounds(kwargs, refuse)
    _check_row_condition(kwargs, refuse, evaluated=evaluated)
    _check_annotations(config, refuse, evaluated=evaluated)


def _check_bounds(kwargs: Mapping[str, Any], refuse: _Refuser) -> None:
    # GX refuses these when it runs, after the renders; found at `validate` time instead.
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is None and high is None:
        raise refuse("kwargs", dict(kwargs), "min_value, max_value or both", "has neither bound")
    if low is not None and high is not None and low > high:
        raise refuse("kwargs.min_value", low, f"at most max_value ({high})", "is not allowed")


def _check_row_condition(kwargs: Mapping[str, Any], refuse: _Refuser, *, evaluated: bool) -> None:
    # GX gives a string row condition to DataFrame.query (pandas evaluates `@` references, so
    # `@pd.io.common.os.system(...)` runs a shell) unless the parser is great_expectations, whose
    # `col("x") == 1` grammar becomes a structured condition: checked again once GX made it.
    parser = kwargs.get("condition_parser")
    condition = kwargs.get("row_condition")
    if "condition_parser" in kwargs and (evaluated or parser != "great_expectations"):
        raise refuse(
            "kwargs.condition_parser",
            parser,
            "'great_expectations' or none (pandas, spark and SQL conditions are code)",
        )
    if condition is None:
        return
    if isinstance(condition, str):
        if evaluated or parser != "great_expectations":
            raise refuse(
                "kwargs.row_condition",
                condition,
                "a structured condition object (type " + _CONDITION_TYPES + "), or a "
                "col(\"...\") string with condition_parser 'great_expectations'; a string for "
                "pandas or spark is code",
            )
        if len(condition) > ROW_CONDITION_MAX_CHARS:
            raise refuse(
                "kwargs.row_condition",
                f"{len(condition)} characters",
                f"at most {ROW_CONDITION_MAX_CHARS} characters",
            )
        # Checked now, not only once GX has parsed it: `validate` runs no GX.
        whole = _GX_CONDITION.fullmatch(condition)
        if whole is None:
            raise refuse(
                "kwargs.row_condition",
                condition,
                'one comparison, col("column") OP value (OP one of == != < <= > >=, value a '
                'number or "text"), or col("column").notnull(); to combine comparisons, a '
                "structured condition of type 'and' or 'or'",
            )
        if not _COLUMN.accepts(whole.group(1)):
            raise refuse(
                "kwargs.row_condition.column",
                {"name": whole.group(1)},
                '{"name": ' + _COLUMN.allowed + "}",
                "does not exist",
            )
        return
    count = _check_condition(condition, "kwargs.row_condition", refuse, depth=1)
    if count > CONDITIONS_MAX:
        raise refuse(
            "kwargs.row_condition", f"{count} comparisons", f"at most {CONDITIONS_MAX} comparisons"
        )


def theme_columns_read(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns only a variation's rows have (THEME_COLUMNS) that `configs` read, in their
    kwargs or row conditions."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                # A kwarg's column, or a structured condition's {"name": ...}.
                if key in ("column", "column_A", "column_B", "name") and isinstance(item, str):
                    found.add(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and (whole := _GX_CONDITION.fullmatch(value)):
            found.add(whole.group(1))

    for config in configs:
        walk(config.get("kwargs"))
    return sorted(found & THEME_COLUMNS)


def _check_condition(condition: Any, key: str, refuse: _Refuser, *, depth: int) -> int:
    """Check one structured row condition; returns its number of comparisons."""
    if depth > EXPECTATIONS_MAX_DEPTH:  # Python callers' configs are not depth-checked JSON
        raise refuse(key, "...", f"conditions nested at most {EXPECTATIONS_MAX_DEPTH} deep")
    if not isinstance(condition, Mapping):
        raise refuse(key, condition, "an object with type " + _CONDITION_TYPES)
    kind = condition.get("type")
    shape: tuple[str, ...] = {
        "comparison": ("type", "column", "operator", "parameter"),
        "nullity": ("type", "column", "is_null"),
        "and": ("type", "conditions"),
        "or": ("type", "conditions"),
    }.get(kind if isinstance(kind, str) else "", ())
    if not shape:
        # "pass_through" is GX's wrapper for a pandas/spark query string: code.
        raise refuse(f"{key}.type", kind, _CONDITION_TYPES + " (structured GX conditions)")
    for name in condition:
        if name not in shape:
            raise refuse(f"{key}.{name}", condition[name], ", ".join(shape), "is not a known key")
    if kind in ("and", "or"):
        parts = condition.get("conditions")
        if not isinstance(parts, list) or not 1 <= len(parts) <= CONDITIONS_MAX:
            raise refuse(f"{key}.conditions", parts, f"a list of 1 to {CONDITIONS_MAX} conditions")
        return sum(
            _check_condition(part, f"{key}.conditions[{i}]", refuse, depth=depth + 1)
            for i, part in enumerate(parts)
        )
    column = condition.get("column")
    name = column.get("name") if isinstance(column, Mapping) and len(column) == 1 else None
    if not _COLUMN.accepts(name):
        raise refuse(f"{key}.column", column, '{"name": ' + _COLUMN.allowed + "}", "does not exist")
    if kind == "nullity":
        if not isinstance(condition.get("is_null"), bool):
            raise refuse(f"{key}.is_null", condition.get("is_null"), _FLAG.allowed)
        return 1
    operator = condition.get("operator")
    if operator not in _OPERATORS:
        raise refuse(f"{key}.operator", operator, ", ".join(_OPERATORS))
    parameter = condition.get("parameter")
    if operator in ("IN", "NOT_IN"):
        if not _is_scalar_list(parameter):
            raise refuse(f"{key}.parameter", parameter, _SET.allowed)
    elif not _is_scalar(parameter):
        raise refuse(f"{key}.parameter", parameter, "a string, a finite number or a boolean")
    return 1


def _check_annotations(config: Mapping[str, Any], refuse: _Refuser, *, evaluated: bool) -> None:
    # What GX only stores and renders; null stands for absent in input (as in GX's exports).
    def given(key: str, default: Any) -> Any:
        value = config.get(key, default)
        return default if value is None and not evaluated else value

    severity = config.get("severity", "critical")  # GX refuses a null one
    if severity not in _SEVERITIES:
        raise refuse("severity", severity, "'critical' (rejects the track) or 'warning'")
    meta = given("meta", {})
    if not isinstance(meta, Mapping):
        raise refuse("meta", meta, "an object")
    gate = meta.get("gate")
    if not (isinstance(gate, str) and gate) and (evaluated or gate is not None):
        raise refuse("meta.gate", gate, "a non-empty string naming the gate")
    if not isinstance(meta.get("limit", ""), str):
        raise refuse("meta.limit", meta.get("limit"), "a string: the limit in words")
    description = given("description", "")
    if not isinstance(description, str):
        raise refuse("description", description, "a string")
    notes = given("notes", "")
    if not (
        isinstance(notes, str)
        or (isinstance(notes, list) and all(isinstance(n, str) for n in notes))
    ):
        raise refuse("notes", notes, "a string or a list of strings")


def _check_input(configs: Sequence[Mapping[str, Any]]) -> None:
    """The count limit and the allow-list, on configurations as a team wrote them."""
    if len(configs) > EXPECTATIONS_MAX_COUNT:
        raise InputError(
            f"{len(configs)} extra expectations; at most {EXPECTATIONS_MAX_COUNT} are allowed"
        )
    for i, raw in enumerate(configs):
        _check_config(raw, "extra expectation", i, evaluated=False)


def check_expectations(configs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A team's own GX expectation configurations ({"type", "kwargs", optional "meta",
    "severity"}) in the form `run_expectations` takes: checked against the allow-list, then by
    GX, and named (meta.gate defaults to "<type>:<column>"). Raises InputError naming the
    expectation and what is allowed."""
    if not configs:
        return []
    # 1. The input as given, before GX sees any of it.
    _check_input(configs)
    _gx()
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    out = []
    for i, raw in enumerate(configs):
        # 2. GX's own validation of the kwargs (required ones, their types).
        config = {k: v for k, v in raw.items() if k not in ("id", "rendered_content")}
        try:
            expectation = ExpectationConfiguration(**config).to_domain_obj()
        except Exception as exc:  # GX raises many types for a bad configuration
            raise InputError(
                f"extra expectation [{i}] {raw.get('type')!r} is invalid: {exc}"
            ) from exc
        checked: dict[str, Any] = expectation.configuration.to_json_dict()
        # A string row condition is now a structured one: the parser's name has no use left.
        checked["kwargs"].pop("condition_parser", None)
        meta = dict(checked.get("meta") or {})
        meta.setdefault("gate", f"{checked['type']}:{checked['kwargs'].get('column', '')}")
        checked["meta"] = meta
        # 3. What GX made of it is what will run: the form run_expectations accepts.
        _check_config(checked, "extra expectation", i, evaluated=True)
        out.append(checked)
    return out


_JSON_MARKS = re.compile(r'[\[\]{}"\\]')  # what opens or closes a string or a level


def _json_depth(text: str) -> int:
    """How deeply the JSON text nests arrays and objects, by one pass that does not recurse
    (a string matched from each quote took time in the square of an unclosed one's length)."""
    depth = deepest = 0
    in_string = False
    escaped_at = -1  # the position a backslash in a string escapes
    for match in _JSON_MARKS.finditer(text):
        mark, at = match.group(), match.start()
        if in_string:
            if at == escaped_at:
                continue
            if mark == "\\":
                escaped_at = at + 1
            elif mark == '"':
                in_string = False
        elif mark == '"':
            in_string = True
        elif mark in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif mark in "]}":
            depth -= 1
    return deepest


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise ValueError(f"number {text} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a gate can compare with")


def load_expectations(path: Path, *, sha256: str | None = None) -> list[dict[str, Any]]:
    """Expectation configurations from a JSON file: a list of them, or a GX suite export
    ({"name": ..., "expectations": [...]}), within the limits above and the allow-list; no GX
    import. The one entry point for `validate` and `build` (`check_expectations` then runs GX's
    own checks). With `sha256`, the bytes read must be those the spec hash holds."""
    # 1. Read at most the size limit (a special file could report any size).
    if not path.is_file():
        raise InputError(f"cannot read expectations from {path}: not a regular file")
    try:
        with path.open("rb") as file:
            data = file.read(EXPECTATIONS_MAX_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read expectations from {path}: {exc}") from exc
    if len(data) > EXPECTATIONS_MAX_BYTES:
        raise InputError(
            f"{path}: the expectations file is larger than the limit of "
            f"{EXPECTATIONS_MAX_BYTES} bytes (1 MiB): {path.stat().st_size} bytes"
        )
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        # Judged by other rules than the spec hash names, a track would be cached as passing them.
        raise InputError(f"{path} changed during the build: build again")
    # 2. Nesting, before json.loads recurses into it.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read expectations from {path}: not UTF-8: {exc}") from exc
    depth = _json_depth(text)
    if depth > EXPECTATIONS_MAX_DEPTH:
        raise InputError(
            f"{path}: the expectations JSON is nested {depth} levels deep; the limit is "
            f"{EXPECTATIONS_MAX_DEPTH}"
        )
    # 3. Parse: NaN, Infinity and out-of-range numbers are refused here (JSONDecodeError and
    # the int-digits limit are ValueErrors too).
    try:
        parsed = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except ValueError as exc:
        raise InputError(f"cannot read expectations from {path}: {exc}") from exc
    if problem := _text_problem(parsed):
        raise InputError(f"{path}: {problem}")
    configs = parsed.get("expectations") if isinstance(parsed, dict) else parsed
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise InputError(
            f"{path}: expected a list of expectation configurations or a GX suite with "
            "an 'expectations' list"
        )
    if len(configs) > EXPECTATIONS_MAX_COUNT:
        raise InputError(
            f"{path}: {len(configs)} expectations; the limit is {EXPECTATIONS_MAX_COUNT}"
        )
    # 4. Every expectation against the allow-list, each under a gate name of its own.
    try:
        _check_input(configs)
        _check_names(configs)
    except InputError as exc:
        raise InputError(f"{path}: {exc}", exc.problems) from exc
    return configs


def _text_problem(value: Any) -> str | None:
    """Why a string in the JSON (a key or a value) cannot be written to the lock or JUnit."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            pending += item
        elif isinstance(item, str) and (problem := text_problem(item)):
            return f"{_shown(item)} {problem}"
    return None


def _check_names(configs: Sequence[Mapping[str, Any]]) -> None:
    """Each expectation's gate name (meta.gate, else "<type>:<column>", as check_expectations
    names it) is its own: a report, a lock and JUnit hold one result per name."""
    seen: dict[str, int] = {}
    built_in = {*GATE_NAMES, *(f"{gate}_{fmt}" for gate in GATE_NAMES for fmt in FORMATS)}
    for i, config in enumerate(configs):
        meta = config.get("meta") or {}
        column = config["kwargs"].get("column", "")
        given = meta.get("gate") or f"{config['type']}:{column}"
        # As a reader tells names apart: " Loudness " is loudness, a zero-width space nothing.
        name = visible(given).casefold()
        if not name:
            raise InputError(f"extra expectation [{i}]: meta.gate {given!r} is blank")
        taken = name in built_in
        if taken:
            raise InputError(
                f"extra expectation [{i}]: gate name {given!r} is a built-in gate's; set "
                "meta.gate to another name"
            )
        if name in seen:
            raise InputError(
                f"extra expectations [{seen[name]}] and [{i}] are both named {given!r}; give "
                "each its own meta.gate"
            )
        seen[name] = i


def run_expectations(table: GateTable) -> list[GateResult]:
    """Validate the table's rows against its team expectations with GX; one result each, in
    order."""
    _check_team(table)
    with _GX_LOCK:
        validation = _validate(_context(None), table, table.team)
    by_name = {r.expectation_config.meta["gate"]: r for r in validation.results}
    results = []
    for config in table.team:
        name = config["meta"]["gate"]
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
    """Validate every track's table again with GX, its built-in gates as the GX expectations
    that judge the same, and render Data Docs (the QC report) into `out_dir`; returns the path
    of its index.html."""
    for table in tables:
        _check_team(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A run built again (a flow run retried) would write its page assets through the hard
    # links it shares with other runs' reports (atomic.link_twins): GX opens them for writing.
    clear_folder(out_dir / "static")
    with _GX_LOCK:
        context = _context(out_dir)
        for table in tables:
            team = [_escaped_description(config) for config in table.team]
            configs = [_gx_config(gate) for gate in table.expectations] + team
            _validate(context, table, configs, store=True)
        context.build_data_docs()
    index = out_dir / "index.html"
    if not index.is_file():
        raise StorageError(f"GX wrote no Data Docs index at {index}", transient=False)
    return index


def _escaped_description(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with its description made HTML text: Data Docs writes it into the page as it
    is (a <script> in a team's description ran in the QC report), where it escapes the rest."""
    description = config.get("description")
    if not isinstance(description, str):
        return dict(config)
    return {**config, "description": html.escape(description)}


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


def _check_team(table: GateTable) -> None:
    # The one door to GX's evaluation: whatever built the table (check_expectations, a Python
    # caller, a GateTable unpickled from a Prefect result), nothing GX would run as code gets in.
    for i, config in enumerate(table.team):
        _check_config(config, f"gates-{table.track_id} expectation", i, evaluated=True)


def _gx_config(gate: Gate) -> dict[str, Any]:
    """A built-in gate as the GX expectation that judges the same rows the same way: a column
    min/max/sum, so that GX reports the measured value as `observed_value`."""
    gx = _gx()
    from great_expectations.expectations.row_conditions import Column

    kind = {
        "min": gx.expectations.ExpectColumnMinToBeBetween,
        "max": gx.expectations.ExpectColumnMaxToBeBetween,
        "sum": gx.expectations.ExpectColumnSumToBeBetween,
    }[gate.statistic]
    labels = list(gate.labels)
    rows = Column("label") == labels[0] if len(labels) == 1 else Column("label").is_in(labels)
    expectation = kind(
        column=gate.column,
        row_condition=rows,
        meta={"gate": gate.name, "limit": gate.limit},
        description=f"{gate.name}: {gate.description}, {gate.limit}",
        severity=_SEVERITY_TO_GX[gate.severity],
        min_value=gate.min_value,
        max_value=gate.max_value,
        strict_min=gate.strict_min,
        strict_max=gate.strict_max,
    )
    config: dict[str, Any] = expectation.configuration.to_json_dict()
    return config


def _validate(
    context: Any, table: GateTable, configs: Sequence[Mapping[str, Any]], *, store: bool = False
) -> Any:
    """Run `configs` as one suite over the table's rows; with `store` through a
    ValidationDefinition, whose results the context keeps for Data Docs (twice the work: every
    object is serialised)."""
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
        expectations=[ExpectationConfiguration(**c).to_domain_obj() for c in configs],
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
