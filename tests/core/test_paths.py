"""What no file system can hold is said before one is asked: a NUL, a name or a path too long."""

from __future__ import annotations

import pytest

from soundtrack.paths import path_problem


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("out/\x00x", "contains a NUL byte"),
        ("out/" + "n" * 255, None),  # ext4's longest name
        ("out/" + "n" * 256, "has a name longer than 255 bytes"),
        ("out/" + "é" * 127, None),  # 254 bytes: a name is counted in bytes, not characters
        ("out/" + "é" * 128, "has a name longer than 255 bytes"),
        ("/" + "/".join(["d" * 254] * 17)[:4094], None),  # Linux's PATH_MAX less its NUL
        ("/" + "/".join(["d" * 254] * 17)[:4095], "is longer than 4095 bytes"),
    ],
)
def test_a_path_no_file_system_can_hold_is_named(path: str, problem: str | None) -> None:
    assert path_problem(path) == problem
