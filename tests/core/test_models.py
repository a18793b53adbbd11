"""Generation on the tiny random-weight MusicGen: exact lengths, batching, seeds, long form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from soundtrack.audio import write_wav
from soundtrack.errors import GenerationError
from soundtrack.models import GeneratedAudio, GenerationRequest, Generator, get_generator
from soundtrack.models.longform import plan_windows
from soundtrack.spec import Sampling

SR = 32000


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Generator:
    return get_generator(str(tiny_model_dir), device="cpu")


def req(
    track_id: str, duration_s: float, seed: int = 1, prompt: str = "calm piano loop", **kw: Any
) -> GenerationRequest:
    return GenerationRequest(
        track_id, prompt, duration_s, seed, kw.pop("sampling", Sampling()), **kw
    )


def ok(result: GeneratedAudio | GenerationError) -> GeneratedAudio:
    assert isinstance(result, GeneratedAudio), result
    return result


def test_a_batch_of_three_comes_out_at_exactly_each_duration(
    tiny: Generator, tmp_path: Path
) -> None:
    steps: list[tuple[int, int]] = []
    results = tiny.generate(
        [
            req("a", 2.0, 1, "synthwave in D minor"),
            req("b", 3.0, 2, "orchestral battle"),
            req("c", 5.0, 3),
        ],
        progress=lambda done, total: steps.append((done, total)),
    )
    assert [r.track_id for r in results] == ["a", "b", "c"]
    for result, seconds in zip(results, (2.0, 3.0, 5.0), strict=True):
        audio = ok(result).audio
        sample_rate = ok(result).sample_rate
        assert audio.dtype == np.float32 and audio.shape == (1, round(seconds * SR))
        # The file a user gets decodes to the same length (libsndfile as the independent reader).
        path = tmp_path / f"{result.track_id}.wav"
        write_wav(path, audio, sample_rate)
        info = sf.info(str(path))
        assert (info.frames, info.samplerate, info.channels) == (round(seconds * SR), SR, 1)
    # One generate call of 5 s (250 frames + 3 codebook-delay steps), not three calls.
    assert steps[-1] == (253, 253)
    assert [done for done, _ in steps] == list(range(1, 254))


def test_provenance_is_recorded(tiny: Generator, tiny_model_dir: Path) -> None:
    result = ok(tiny.generate([req("a", 1.0)])[0])
    assert result.model_id == str(tiny_model_dir.resolve())
    assert result.revision.startswith("sha256:") and len(result.revision) == 7 + 64
    assert result.license == "soundtrack-tiny-random-weights"
    assert (result.sample_rate, tiny.sample_rate, tiny.channels) == (SR, SR, 1)


def test_same_seed_same_audio_other_seed_or_prompt_differs(tiny: Generator) -> None:
    first = ok(tiny.generate([req("a", 2.0, seed=7)])[0]).audio
    again = ok(tiny.generate([req("a", 2.0, seed=7)])[0]).audio
    other_seed = ok(tiny.generate([req("a", 2.0, seed=8)])[0]).audio
    other_prompt = ok(tiny.generate([req("a", 2.0, seed=7, prompt="chiptune boss fight")])[0]).audio
    assert np.array_equal(first, again)
    assert np.max(np.abs(first - other_seed)) > 1e-3
    assert np.max(np.abs(first - other_prompt)) > 1e-3


def test_the_seed_belongs_to_the_track_not_the_batch(tiny: Generator) -> None:
    alone = ok(tiny.generate([req("b", 2.0, seed=5, prompt="lofi beat")])[0]).audio
    batch = tiny.generate([req("a", 2.0, seed=4), req("b", 2.0, seed=5, prompt="lofi beat")])
    batch_again = tiny.generate([req("a", 2.0, seed=4), req("b", 2.0, seed=5, prompt="lofi beat")])
    assert np.array_equal(ok(batch[1]).audio, ok(batch_again[1]).audio)  # same batch: bit-identical
    # Another batch composition only changes float rounding, not the sampled tokens.
    np.testing.assert_allclose(ok(batch[1]).audio, alone, atol=1e-5)
    assert np.max(np.abs(ok(batch[0]).audio - ok(batch[1]).audio)) > 1e-3


def test_different_sampling_settings_are_split_into_their_own_batches(tiny: Generator) -> None:
    hot = Sampling(temperature=1.5, top_k=20)
    mixed = tiny.generate([req("a", 1.0, 1), req("hot", 1.0, 2, sampling=hot), req("c", 2.0, 3)])
    plain = tiny.generate([req("a", 1.0, 1), req("c", 2.0, 3)])
    hot_alone = tiny.generate([req("hot", 1.0, 2, sampling=hot)])
    assert np.array_equal(ok(mixed[0]).audio, ok(plain[0]).audio)
    assert np.array_equal(ok(mixed[2]).audio, ok(plain[1]).audio)
    assert np.array_equal(ok(mixed[1]).audio, ok(hot_alone[0]).audio)


def test_batch_size_one_renders_every_track(tiny: Generator) -> None:
    steps: list[int] = []
    results = tiny.generate(
        [req("a", 1.0, 1), req("b", 2.0, 2)], batch_size=1, progress=lambda d, t: steps.append(t)
    )
    assert [ok(r).audio.shape[1] for r in results] == [SR, 2 * SR]
    assert steps[-1] == (50 + 3) + (100 + 3)  # two generate calls


def test_65_s_comes_out_at_65_s_through_three_windows_beside_short_tracks(tiny: Generator) -> None:
    plan = plan_windows(65 * 50, overlap_frames=500, window_frames=1500)
    assert plan.windows == 3 and (plan.first_frames, plan.continuation_frames) == (
        1500,
        (1000, 750),
    )
    totals: list[int] = []
    long, same_start, short = tiny.generate(
        [
            req("long", 65.0, 11, "ambient drone"),
            req("30s", 30.0, 11, "ambient drone"),
            req("2s", 2.0),
        ],
        progress=lambda d, t: totals.append(t),
    )
    audio = ok(long).audio
    assert audio.shape == (1, 65 * SR)
    assert ok(same_start).audio.shape == (1, 30 * SR)
    assert ok(short).audio.shape == (1, 2 * SR)
    # One batch, three generate calls: 30 s, then continuations of 20 s and 15 s (+3 delay steps).
    assert totals[-1] == (1500 + 3) + (1000 + 3) + (750 + 3)
    # The first window is the track's start: the same seed and prompt at 30 s render it too.
    assert np.array_equal(audio[:, : 20 * SR], ok(same_start).audio[:, : 20 * SR])
    # The joints (20-30 s, 40-50 s) keep the level: no swell or dip across the crossfades.
    centred = audio[0] - audio[0].mean()
    rms_db = [20 * np.log10(np.sqrt(np.mean(block**2))) for block in centred.reshape(13, -1)]
    assert max(rms_db) - min(rms_db) < 0.5, rms_db


def test_durations_off_the_frame_grid_are_exact(tiny: Generator) -> None:
    results = tiny.generate([req("a", 1.23456), req("b", 0.5)])
    assert [ok(r).audio.shape[1] for r in results] == [round(1.23456 * SR), SR // 2]
