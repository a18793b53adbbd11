"""Great Expectations takes seconds to import: judging the built-in gates and `validate` never
do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

JUDGE = """
import json, sys
from soundtrack.gates import GateTable, evaluate, gate_expectations, judge, metrics_row
from soundtrack.measure import Metrics
from soundtrack.spec import LOUDNESS_PROFILES, GateLimits

metrics = Metrics(
    sample_rate=44100, channels=2, frames=441000, duration_s=10.0, integrated_lufs=-24.0,
    true_peak_dbtp=-2.0, sample_peak_dbfs=-2.4, clipped_runs=0, clip_run_samples=3,
    dc_offset=0.0, lead_silence_s=0.0, trail_silence_s=0.1, longest_dropout_s=0.0,
    silence_threshold_dbfs=-60.0,
)
settings = dict(limits=GateLimits(), loudness=LOUDNESS_PROFILES["console"], duration_s=10.0,
                loop=False, sample_rate=44100, channels=2)
rows = (metrics_row("t", "source", metrics), metrics_row("t", "master", metrics))
gates = tuple(gate_expectations(["source", "master"], **settings))
results = evaluate(GateTable("t", rows, gates)) + judge(metrics, label="ogg", **settings)
passed = all(r.passed for r in results)
print(json.dumps([len(results), passed, "great_expectations" in sys.modules]))
"""

VALIDATE = """
import json, sys
from soundtrack.cli import app

sys.argv = ["soundtrack", "validate", sys.argv[1]]
try:
    app()
except SystemExit as exc:
    code = exc.code
print(json.dumps([code, "great_expectations" in sys.modules]))
"""

MANIFEST = """\
schema: 1
soundtrack: quiet-game
storage: ./assets
expectations: qc/house-rules.json
tracks:
  - id: menu
    prompt: "calm piano"
    duration: 10
"""


def _house_rules(row_condition: str) -> str:
    rule = {
        "type": "expect_column_max_to_be_between",
        "kwargs": {
            "column": "sample_peak_dbfs",
            "max_value": -3.0,
            "row_condition": row_condition,
            "condition_parser": "great_expectations",
        },
        "meta": {"gate": "house_sample_peak"},
    }
    return json.dumps([rule])


def _last_line(code: str, *args: str) -> list[object]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, cwd=ROOT
    )
    result: list[object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_judging_the_built_in_gates_does_not_import_great_expectations() -> None:
    assert _last_line(JUDGE) == [13, True, False]


def test_validate_checks_an_expectations_file_without_importing_great_expectations(
    tmp_path: Path,
) -> None:
    (tmp_path / "qc").mkdir()
    (tmp_path / "qc" / "house-rules.json").write_text(_house_rules('col("label") == "master"'))
    (tmp_path / "game.yaml").write_text(MANIFEST)
    assert _last_line(VALIDATE, str(tmp_path / "game.yaml")) == [0, False]
    # The same file with an unknown column is refused, still without GX.
    (tmp_path / "qc" / "house-rules.json").write_text(_house_rules('col("peak") < 0'))
    assert _last_line(VALIDATE, str(tmp_path / "game.yaml")) == [2, False]
