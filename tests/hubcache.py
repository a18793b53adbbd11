"""A Hugging Face cache laid out as `hf download` leaves it, for tests that must not download."""

from __future__ import annotations

from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_cache(cache: Path, model: str, name: str, text: str) -> Path:
    """`name` of hub repo `model` in the cache (snapshots/<commit>/name, refs/main)."""
    repo = cache / f"models--{model.replace('/', '--')}"
    (repo / "snapshots" / COMMIT).mkdir(parents=True, exist_ok=True)
    (repo / "snapshots" / COMMIT / name).write_text(text)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT / name
