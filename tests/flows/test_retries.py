"""Which failures a task retries: what may heal (a dropped connection), not what cannot."""

from __future__ import annotations

import pytest
from prefect.states import Failed

from soundtrack.errors import GenerationError, InputError, ModelLoadError, StorageError
from tasks import generate, publish


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
    assert generate._transient(None, None, Failed(data=error)) is retried


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        # AccessDenied or a missing bucket: minutes of backoff before the build said so.
        (StorageError("s3://b/games: AccessDenied", transient=False), False),
        (StorageError("cannot reach the endpoint", transient=True), True),
        (InputError("track id is a path"), False),
    ],
)
def test_a_publish_is_retried_only_for_what_may_heal(error: Exception, retried: bool) -> None:
    assert publish._transient(None, None, Failed(data=error)) is retried
