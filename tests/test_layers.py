"""The layering rule, enforced: the core library never imports Prefect, tasks or flows."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_CORE = ("prefect", "tasks", "flows")


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_library_never_imports_orchestration() -> None:
    core = [p for p in (ROOT / "soundtrack").rglob("*.py") if p.name != "cli.py"]
    assert len(core) > 3
    offenders = {
        str(p.relative_to(ROOT)): sorted(imported_roots(p) & set(FORBIDDEN_IN_CORE)) for p in core
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_tasks_never_import_flows() -> None:
    offenders = [p for p in (ROOT / "tasks").rglob("*.py") if "flows" in imported_roots(p)]
    assert offenders == []


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from prefect import task\nimport flows.build\n")
    assert imported_roots(bad) >= {"prefect", "flows"}
