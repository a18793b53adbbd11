"""The benchmarks refuse what they cannot measure before minutes of building real-size models."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_generate() -> ModuleType:
    """bench/generate.py, imported as `python bench/generate.py` runs it (in this process: its
    imports cost seconds, once)."""
    spec = importlib.util.spec_from_file_location("bench_generate", ROOT / "bench" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


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
def test_bench_generate_refuses_bad_arguments_at_once(
    args: list[str], said: str, bench_generate: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        bench_generate.main(args)  # an exception, not an exit, would fail the test itself
    assert exited.value.code == 2 and said in capsys.readouterr().err
