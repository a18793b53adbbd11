"""The benchmarks refuse what they cannot measure before minutes of building real-size models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--pairs", "1"], "--pairs must be at least 3"),
        (["--family", "ace-step", "--pairs", "0"], "--pairs must be at least 3"),
        (["--tracks", "0"], "--tracks must be at least 1"),
        (["--seconds", "-1"], "--seconds must be above 0"),
        (["--seconds", "nan"], "--seconds must be above 0"),
        (["--device", "bogus"], "device must be auto, cpu, mps, cuda or cuda:N"),
    ],
)
def test_bench_generate_refuses_bad_arguments_at_once(args: list[str], said: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "generate.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2 and said in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
