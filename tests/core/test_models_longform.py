"""Window planning and the crossfade that joins windows, on synthetic signals."""

from __future__ import annotations

import numpy as np
import pytest

from soundtrack.models.longform import equal_power_join, plan_windows


@pytest.mark.parametrize(
    ("total", "overlap", "expected"),
    [
        (100, 500, (100, ())),  # 2 s: one window
        (1500, 500, (1500, ())),  # exactly 30 s
        (1501, 500, (1500, (1,))),
        (3250, 500, (1500, (1000, 750))),  # 65 s at 50 Hz, 10 s overlap
        (3000, 600, (1500, (900, 600))),
    ],
)
def test_windows_cover_the_track_and_never_exceed_30_s(
    total: int, overlap: int, expected: tuple[int, tuple[int, ...]]
) -> None:
    plan = plan_windows(total, overlap, window_frames=1500)
    assert (plan.first_frames, plan.continuation_frames) == expected
    assert plan.first_frames + sum(plan.continuation_frames) == total
    assert all(overlap + new <= 1500 for new in plan.continuation_frames)


def _rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(x.astype(np.float64) ** 2)))


def test_join_of_unrelated_noise_keeps_the_power() -> None:
    rng = np.random.default_rng(0)
    head = rng.standard_normal((2, 48000)).astype(np.float32)
    tail = rng.standard_normal((2, 48000)).astype(np.float32)
    joined = equal_power_join(head, tail, 16000)
    assert joined.shape == (2, 48000 + 48000 - 16000) and joined.dtype == np.float32
    assert np.array_equal(joined[:, :32000], head[:, :32000])
    assert np.array_equal(joined[:, 48000:], tail[:, 16000:])
    middle = joined[:, 32000 + 6000 : 32000 + 10000]  # a plain linear fade would dip 3 dB here
    assert abs(_rms_db(middle) - _rms_db(head)) < 0.3


def test_join_of_the_same_audio_is_seamless() -> None:
    # A continuation's re-decoded prompt is nearly the audio it continues: no 3 dB swell.
    t = np.arange(64000) / 32000
    tone = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None, :]
    joined = equal_power_join(tone[:, :40000], tone[:, 24000:], 16000)
    np.testing.assert_allclose(joined, tone, atol=1e-6)


def test_join_rejects_an_overlap_longer_than_a_clip() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        equal_power_join(np.zeros((1, 10), np.float32), np.zeros((1, 100), np.float32), 20)
