"""Which failures a task retries: what may heal (a dropped connection), not what cannot."""

from __future__ import annotations

import pytest
from prefect.states import Failed

from soundtrack.errors import GenerationError, InputError, ModelLoadError, StorageError
from tasks.generate import _transient


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (InputError("track 'dots': prompt is empty"), False),  # was retried after 5 s
        (ModelLoadError("weights not found"), False),
        (GenerationError("a", "the render is silent"), False),
        (StorageError("cannot reach the endpoint", transient=True), True),
        (OSError("a dropped connection"), True),
    ],
)
def test_a_render_is_retried_only_for_what_may_heal(error: Exception, retried: bool) -> None:
    assert _transient(None, None, Failed(data=error)) is retried
