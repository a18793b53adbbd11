"""Loops: loop end search, the baked crossfade, loop points in the master and in the files."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from mutagen.oggvorbis import OggVorbis

from soundtrack.encode import encode
from soundtrack.errors import AudioError
from soundtrack.limiter import true_peak_dbtp
from soundtrack.loops import (
    SEARCH_S,
    SHORTEST_LOOP_S,
    BarLoop,
    bake_crossfade,
    ends_at_its_loop,
    find_loop_end,
    make_bar_loop,
    make_loop,
    render_duration_s,
)
from soundtrack.master import finish, master, prepare
from soundtrack.measure import measure
from soundtrack.spec import LOUDNESS_PROFILES, GateLimits, Mastering
from tests import signals
from tests.reference import ebur128

RATE = 44100
TAGS = {
    "title": "Overworld",
    "soundtrack": "sky-odyssey",
    "track_id": "overworld",
    "spec_hash": "c",
}


def _wrap_jump_ratio(loop: np.ndarray, rate: int = RATE) -> float:
    """|x[end-1] - x[start]| over the median sample step within 10 ms either side of the wrap.
    Local, because a seam that lands on a note onset inherits the onset's own (large) steps."""
    span = round(0.01 * rate)
    around = np.concatenate([loop[:, -span:], loop[:, :span]], axis=1)
    jump = np.abs(loop[:, -1] - loop[:, 0]).max()
    return float(jump / np.median(np.abs(np.diff(around, axis=1))))


def test_loop_end_lands_where_the_music_repeats() -> None:
    # The signal repeats every 8 s; asking for 8.3 s must find the repeat, not stop at 8.3 s.
    music = signals.music_like(12.0, RATE).astype(np.float64)
    loop_end = find_loop_end(music, RATE, 8.3, crossfade_samples=round(0.25 * RATE))
    assert abs(loop_end - 8 * RATE) <= 0.02 * RATE
    assert music.mean(axis=0)[loop_end - 1] < 0.0 <= music.mean(axis=0)[loop_end]


def test_the_loop_end_stays_within_the_search_of_the_duration() -> None:
    """The music repeats at 8 s, 0.6 s short of the 8.6 s asked for: outside the search, so
    the end is found near 8.6 s (and crossfaded), not at the repeat."""
    music = signals.music_like(12.0, RATE).astype(np.float64)
    loop_end = find_loop_end(music, RATE, 8.6, crossfade_samples=round(0.25 * RATE))
    assert 8.6 - SEARCH_S <= loop_end / RATE <= 8.6 + SEARCH_S


def test_a_bar_loop_is_cut_to_its_bars_unless_the_audio_already_ends_there() -> None:
    music = signals.music_like(6.0, RATE).astype(np.float64)
    bar_loop = BarLoop(start=1000, length=2 * RATE + 0.6, ends_within=50.0)
    end = 1000 + 88201  # the bars' length to the nearest sample
    # 2 % past the bars: cut there, with what follows crossfaded into the first downbeat.
    longer = music[:, : end + round(0.02 * bar_loop.length)]
    looped = make_bar_loop(longer, RATE, bar_loop, crossfade_ms=10.0)
    assert looped.shape == (2, end)
    np.testing.assert_allclose(looped[:, 1000], longer[:, end])
    # Within `ends_within` of them: a recording cut to its bars, kept as it is.
    cut = music[:, : end + 30]
    np.testing.assert_array_equal(make_bar_loop(cut, RATE, bar_loop, crossfade_ms=10.0), cut)


def test_a_recording_ends_at_its_loop_within_one_percent_of_it() -> None:
    """docs/formats.md: a recording within 1 % of its loop's length is looped as it is; a longer
    one is searched and crossfaded like a render."""
    loop = 8 * RATE  # 352800 frames: 1 % is 3528
    assert ends_at_its_loop(loop + 3528, loop) and ends_at_its_loop(loop - 3528, loop)
    assert not ends_at_its_loop(loop + 3529, loop) and not ends_at_its_loop(loop - 3529, loop)


@pytest.mark.parametrize("period_s", [0.62, 0.69, 0.75])
@pytest.mark.parametrize("duration_s", [0.8, 1.0, 1.1])
def test_a_short_loop_ends_where_its_seam_can_still_be_measured(
    period_s: float, duration_s: float
) -> None:
    """A 1 s loop of music that repeats every 0.69 s was cut there, under the two 0.4 s
    loudness blocks its seam's measure reads: validate took it, and every build failed it."""
    mastering = Mastering(loudness=LOUDNESS_PROFILES["mobile"])
    rendered_s = render_duration_s(duration_s, mastering.loop_crossfade_ms)
    bar = signals.music_like(period_s, 32000, channels=1, seed=3)
    raw = np.tile(bar, (1, math.ceil(rendered_s / period_s)))[:, : round(rendered_s * 32000)]
    m = master(raw, 32000, mastering, loop=True, duration_s=duration_s)
    assert m.loop_length / m.sample_rate >= SHORTEST_LOOP_S
    metrics = measure(m.audio, m.sample_rate, loop_start=0, loop_length=m.loop_length)
    assert metrics.seam_loudness_change_lu is not None


def test_baked_crossfade_continues_across_the_wrap() -> None:
    music = signals.music_like(12.0, RATE).astype(np.float64)
    loop_end, crossfade = 8 * RATE + 1234, round(0.25 * RATE)
    looped = bake_crossfade(music, loop_end, crossfade)
    assert looped.shape == (2, loop_end)
    # Sample 0 now holds what followed the loop end, so the wrap is the original's own step.
    np.testing.assert_allclose(looped[:, 0], music[:, loop_end])
    np.testing.assert_allclose(looped[:, crossfade:], music[:, crossfade:loop_end])
    # Equal power: the gains meet at -3 dB halfway.
    t = crossfade // 2
    mixed = music[:, t] * np.sin(np.pi / 4) + music[:, loop_end + t] * np.cos(np.pi / 4)
    np.testing.assert_allclose(looped[:, t], mixed, atol=1e-4)


def test_made_loop_has_a_seamless_wrap() -> None:
    music = signals.music_like(12.0, RATE).astype(np.float64)
    loop = make_loop(music, RATE, 9.1, 250.0)  # 9.1 s is not a repeat point: the crossfade hides it
    assert loop.shape[1] / RATE == pytest.approx(9.1, abs=0.5)
    assert _wrap_jump_ratio(loop) <= GateLimits().seam_jump_max_ratio
    # Cutting at the same point without the crossfade leaves a jump the gate would reject.
    assert _wrap_jump_ratio(music[:, : loop.shape[1] + 150]) > GateLimits().seam_jump_max_ratio


def test_too_short_audio_for_a_loop_is_refused() -> None:
    music = signals.music_like(8.0, RATE).astype(np.float64)
    with pytest.raises(AudioError, match=r"loop needs at least"):
        find_loop_end(music, RATE, 10.0, crossfade_samples=round(0.25 * RATE))


def test_loop_master_and_files_carry_the_loop_points(tmp_path: Path) -> None:
    # MusicGen-like: 32 kHz mono, rendered with room for the search and the crossfade.
    mastering = Mastering(loudness=LOUDNESS_PROFILES["mobile"])
    rendered_s = render_duration_s(10.0, mastering.loop_crossfade_ms)
    raw = signals.music_like(rendered_s, 32000, channels=1)
    m = master(raw, 32000, mastering, loop=True, duration_s=10.0)
    assert m.sample_rate == 44100
    assert m.loop_start == 0
    assert m.loop_length == m.audio.shape[1]
    assert m.loop_length / m.sample_rate == pytest.approx(10.0, abs=0.5)
    assert _wrap_jump_ratio(m.audio) <= GateLimits().seam_jump_max_ratio
    assert true_peak_dbtp(m.audio, loop_start=0) <= mastering.loudness.true_peak_max_dbtp

    files = {f.format: f for f in encode(m, ["ogg", "wav"], tmp_path, "loop", tags=TAGS)}
    ogg = OggVorbis(files["ogg"].path)
    assert ogg.tags is not None
    assert ogg.tags["LOOPSTART"] == [str(m.loop_start)]
    assert ogg.tags["LOOPLENGTH"] == [str(m.loop_length)]
    assert sf.info(str(files["ogg"].path)).frames == m.loop_length  # the file is the loop
    integrated, true_peak = ebur128(files["ogg"].path)
    assert integrated == pytest.approx(mastering.loudness.integrated_lufs, abs=0.5)
    assert true_peak <= mastering.loudness.true_peak_max_dbtp

    loops = _smpl_loops(files["wav"].path.read_bytes())
    assert loops == [(m.loop_start, m.loop_start + m.loop_length - 1)]  # smpl's end is inclusive


def _smpl_loops(wav: bytes) -> list[tuple[int, int]]:
    """(start, end) of each loop in the RIFF `smpl` chunk, walking the chunks from the header."""
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    assert struct.unpack("<I", wav[4:8])[0] == len(wav) - 8
    offset = 12
    while offset < len(wav):
        chunk_id, size = (
            wav[offset : offset + 4],
            struct.unpack("<I", wav[offset + 4 : offset + 8])[0],
        )
        body = wav[offset + 8 : offset + 8 + size]
        if chunk_id == b"smpl":
            count = struct.unpack("<I", body[28:32])[0]
            return [
                struct.unpack("<II", body[36 + 24 * i + 8 : 36 + 24 * i + 16]) for i in range(count)
            ]
        offset += 8 + size + size % 2
    return []


def test_a_recording_that_is_its_loop_keeps_its_length_and_its_seam() -> None:
    """An 8 s recording that loops seamlessly, given no bpm, was cut to 7.64 s and crossfaded:
    nothing follows a recording's end, so the search had to end 0.25 s early, and the beat
    skipped at every wrap."""
    mastering = Mastering(loudness=LOUDNESS_PROFILES["mobile"])
    # Whole periods of a tone swelling twice in the 8 s: its end runs on into its start.
    t = np.arange(8 * RATE) / RATE
    swell = 0.6 + 0.4 * np.cos(2 * np.pi * 0.25 * t)
    recording = (signals.sine(441.0, -6.0, 8.0, RATE) * swell).astype(np.float32)
    prepared = prepare(recording, RATE, mastering, loop=True, duration_s=8.0, recording=True)
    m = finish(prepared, mastering, loop=True, duration_s=8.0, recorded_loop=True)
    # Its first sample, a zero crossing, is the loop's too (it went with the leading silence,
    # and the wrap skipped it).
    assert m.loop_length == m.audio.shape[1] == 8 * RATE
    assert _wrap_jump_ratio(m.audio) <= GateLimits().seam_jump_max_ratio
    gain = float(np.max(np.abs(m.audio))) / float(np.max(np.abs(recording)))
    np.testing.assert_allclose(m.audio, recording * gain, atol=0.02)  # no crossfade


def test_a_recording_that_is_its_loop_keeps_its_length_to_the_nearest_sample_at_another_rate() -> (
    None
):
    """88201 samples at 44.1 kHz are 96001.09 at 48 kHz: the loop was rounded up, a sample
    longer than the recording (a bar loop's LOOPLENGTH, one off its bars)."""
    mastering = Mastering(loudness=LOUDNESS_PROFILES["mobile"], sample_rate=48000)
    t = np.arange(88201) / 44100
    tone = (0.5 * np.sin(2 * np.pi * 441.0 * t) * (0.6 + 0.4 * np.cos(np.pi * t))).astype(
        np.float32
    )
    recording = np.stack([tone, tone])
    prepared = prepare(recording, 44100, mastering, loop=True, duration_s=2.0, recording=True)
    m = finish(prepared, mastering, loop=True, duration_s=2.0, recorded_loop=True)
    assert m.loop_length == m.audio.shape[1] == 96001


@pytest.mark.parametrize("rate_hz", [22050, 32000, 44100])
def test_a_square_wave_loop_wraps_as_its_edges_step(rate_hz: int) -> None:
    """A chiptune loop recording, whole periods of a naive square wave, wraps on an edge: its
    step is the wave's own, as at every edge, and it read 5.2 (rejected)."""
    mastering = Mastering(loudness=LOUDNESS_PROFILES["mobile"], sample_rate=rate_hz)
    t = np.arange(6 * 22050) / 22050
    square = 0.4 * np.sign(np.sin(2 * np.pi * 220.5 * t))  # 100 samples a period; 0 first
    recording = np.stack([square, square]).astype(np.float32)
    prepared = prepare(recording, 22050, mastering, loop=True, duration_s=6.0, recording=True)
    m = finish(prepared, mastering, loop=True, duration_s=6.0, recorded_loop=True)
    assert m.loop_length == m.audio.shape[1] == 6 * rate_hz
    limit = GateLimits().seam_jump_max_ratio
    metrics = measure(m.audio, rate_hz, loop_start=0, loop_length=m.loop_length)
    assert metrics.seam_jump_ratio is not None and metrics.seam_jump_ratio <= limit
    # Cut between its edges, the wave kinks where it never does: still a click.
    tone = signals.sine(441.0, -6.0, 6.0, rate_hz)
    cut = measure(tone, rate_hz, loop_start=0, loop_length=6 * rate_hz - 37)
    assert cut.seam_jump_ratio is not None and cut.seam_jump_ratio > 10.0


def test_a_long_render_is_searched_and_crossfaded_not_kept_whole() -> None:
    """A render runs 0.65 s past its loop (the search, then the crossfade): from 65 s on that
    is within 1 % of its duration, and a recording's rule would have kept it raw and clicking."""
    mastering = Mastering(loudness=LOUDNESS_PROFILES["mobile"])
    rendered = signals.music_like(render_duration_s(70.0, mastering.loop_crossfade_ms), RATE)
    m = master(rendered, RATE, mastering, loop=True, duration_s=70.0)
    assert abs(m.audio.shape[1] / RATE - 70.0) <= 0.4
    assert _wrap_jump_ratio(m.audio) <= GateLimits().seam_jump_max_ratio
