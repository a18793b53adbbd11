"""Measuring: levels against ffmpeg's ebur128, silences, clipping, DC, loop tags and the seam."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from soundtrack.encode import encode
from soundtrack.errors import AudioError
from soundtrack.loudness import oversampled_peaks
from soundtrack.master import Master
from soundtrack.measure import measure, measure_file, read_loop_tags
from soundtrack.spec import GateLimits
from tests.music import chord_cycle, struck_bars
from tests.reference import ebur128
from tests.signals import music_like, pink_noise, sine

SR = 44100
TAGS = {"title": "t", "soundtrack": "test", "track_id": "t", "spec_hash": "ab12"}
CYCLE = 16 * SR  # chord_cycle's period at 120 bpm: 8 bars of 2 s
LIMITS = GateLimits()
# As a beat analysis may place bar lines: on the downbeat, or 10 ms either side of it.
BAR_OFFSETS_MS = pytest.mark.parametrize("offset_ms", [-10.0, 0.0, 10.0])


def _with_zeros(audio: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    out = audio.copy()
    out[:, round(start_s * SR) : round(end_s * SR)] = 0.0
    return out


def test_loudness_and_true_peak_agree_with_ffmpeg_ebur128(tmp_path: Path) -> None:
    path = tmp_path / "music.wav"
    sf.write(path, music_like(8.0, SR, peak_dbfs=-2.0).T, SR, subtype="FLOAT")
    metrics = measure_file(path)
    lufs, peak_dbtp = ebur128(path)
    assert metrics.integrated_lufs == pytest.approx(lufs, abs=0.1)
    assert metrics.true_peak_dbtp == pytest.approx(peak_dbtp, abs=0.2)
    assert metrics.true_peak_dbtp >= metrics.sample_peak_dbfs
    assert (metrics.sample_rate, metrics.channels, metrics.frames) == (SR, 2, 8 * SR)


def test_true_peak_finds_the_peaks_between_samples() -> None:
    # A quarter-rate sine sampled 45 degrees off its crests: samples reach 0.707 of its peak.
    n = np.arange(2 * SR)
    # Faded in and out over 10 ms: a quarter-rate tone cut off at full level overshoots there.
    fades = np.clip(np.minimum(n, n[::-1]) / (0.01 * SR), 0.0, 1.0)
    wave = (0.5 * fades * np.sin(np.pi / 2 * n + np.pi / 4)).astype(np.float32)[None, :]
    metrics = measure(wave, SR)
    assert metrics.sample_peak_dbfs == pytest.approx(-9.03, abs=0.01)
    assert metrics.true_peak_dbtp == pytest.approx(-6.02, abs=0.2)


def test_digital_silence_is_all_silence_and_has_no_loudness() -> None:
    metrics = measure(np.zeros((2, 3 * SR), dtype=np.float32), SR)
    assert metrics.integrated_lufs == -math.inf
    assert metrics.true_peak_dbtp == -math.inf
    assert metrics.lead_silence_s == metrics.trail_silence_s == pytest.approx(3.0)
    assert metrics.longest_dropout_s == pytest.approx(3.0)


def test_silences_are_timed_to_the_block() -> None:
    audio = _with_zeros(music_like(10.0, SR), 0.0, 0.2)
    audio = _with_zeros(audio, 4.0, 7.0)
    audio = _with_zeros(audio, 9.0, 10.0)
    metrics = measure(audio, SR)
    # To the sample (a sine's first samples after a silence are quiet too: microseconds), not
    # to the 10 ms block: a 2.0 s gap read 1.99 s and passed the dropout gate's "< 2 s", and a
    # lead of 59.9 ms read 50 ms and passed its "<= 50 ms".
    assert metrics.lead_silence_s == pytest.approx(0.2, abs=0.001)
    assert metrics.longest_dropout_s == pytest.approx(3.0, abs=0.001)
    assert metrics.trail_silence_s == pytest.approx(1.0, abs=0.001)
    gap = _with_zeros(sine(440.0, -20.0, 8.0, SR), 3.0053, 5.0053)
    assert measure(gap, SR).longest_dropout_s >= 2.0
    lead = _with_zeros(sine(440.0, -20.0, 2.0, SR), 0.0, 0.0599)
    assert measure(lead, SR).lead_silence_s == pytest.approx(0.0599, abs=0.0001)


def test_zero_crossings_are_not_silence() -> None:
    metrics = measure(sine(40.0, -20.0, 5.0, SR), SR)
    assert (metrics.lead_silence_s, metrics.trail_silence_s, metrics.longest_dropout_s) == (0, 0, 0)


def test_silence_threshold_is_a_parameter() -> None:
    quiet = pink_noise(-55.0, 5.0, SR)
    assert measure(quiet, SR).longest_dropout_s == 0.0
    assert measure(quiet, SR, silence_threshold_dbfs=-20.0).lead_silence_s == pytest.approx(5.0)


def test_hard_clipping_is_found_even_after_the_level_was_lowered() -> None:
    clipped = np.clip(music_like(5.0, SR) * 4.0, -1.0, 1.0)
    assert measure(clipped, SR).clipped_runs > 10
    assert measure(clipped * 0.25, SR).clipped_runs > 10


def test_clipped_runs_count_each_plateau_at_the_extremes() -> None:
    # Plateaus of known lengths at each channel's top and bottom, entered steeply from their
    # own side of the wave; only those of at least clip_run_samples count, one apiece,
    # wherever they are (the ends included).
    audio = (0.3 * np.sin(np.arange(SR) / 40.0)).astype(np.float32)[None, :].repeat(2, axis=0)
    plateaus = {0: [(0, 5), (900, 2), (SR - 4, 4), (2000, 3)], 1: [(100, 7), (700, 3)]}
    for channel, spans in plateaus.items():
        for i, (start, length) in enumerate(spans):
            audio[channel, start : start + length] = 0.9 if i % 2 == 0 else -0.8
    # channel 0: runs of 5, 4 at 0.9 and of 2 (too short), 3 at -0.8; channel 1: 7 and 3
    assert measure(audio, SR, clip_run_samples=3).clipped_runs == 3 + 2
    assert measure(audio, SR, clip_run_samples=5).clipped_runs == 1 + 1


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_square_and_pulse_waves_are_not_clipping(subtype: str, tmp_path: Path) -> None:
    """A chiptune's naive square wave holds its peak for half a period and jumps across zero
    to it: it was rejected as thousands of clipped plateaus. Clipped, it still counts."""
    t = np.arange(3 * SR) / SR
    square = np.where(np.sin(2 * np.pi * 220.0 * t) >= 0, 0.4, -0.4)
    pulse = np.where((t * 110.0) % 1.0 < 0.25, 0.5, 0.0)  # 25 % duty, from silence
    # Two voices: their sum steps between flat levels, reaching its top from 0.1, not zero.
    voices = 0.3 * np.sign(np.sin(2 * np.pi * 220.0 * t)) + 0.2 * np.sign(
        np.sin(2 * np.pi * 330.0 * t)
    )
    for name, wave in (("square", square), ("pulse", pulse), ("voices", voices)):
        path = tmp_path / f"{name}.wav"
        sf.write(path, np.stack([wave, wave]).T, SR, subtype=subtype)
        assert measure_file(path).clipped_runs == 0, name
    tone = sine(220.0, -3.0, 3.0, SR)
    driven = np.clip(tone * 2.0, -0.7, 0.7) * 0.57  # a clipped tone: not a square's jumps
    assert measure(driven.astype(np.float32), SR).clipped_runs >= 2 * 2 * 3 * 220 - 4


def test_round_peaks_of_quantised_bass_are_not_clipping() -> None:
    bass = np.round(sine(30.0, -0.1, 5.0, SR) * 32767.0) / 32767.0  # flat for ~3 LSB steps
    assert measure(bass.astype(np.float32), SR).clipped_runs == 0
    assert measure(music_like(5.0, SR), SR).clipped_runs == 0
    barely = np.clip(bass, -0.95, 0.95)  # clipped by 0.35 dB
    # one plateau per polarity, channel and period
    assert measure(barely.astype(np.float32), SR).clipped_runs >= 2 * 2 * 30 * 5 - 4


@pytest.mark.parametrize("subtype", ["FLOAT", "PCM_16"])
def test_a_louder_stray_sample_does_not_hide_the_clip_level(subtype: str, tmp_path: Path) -> None:
    """A part mixed in after the clip (a click, a stray sample) rises above the clipped
    plateaus now and then: they are still found, at the level they share."""
    clipped = np.clip(music_like(5.0, SR) * 4.0, -0.9, 0.9) * 0.5
    strayed = clipped.copy()
    strayed[0, 1000] = 0.46  # one sample over channel 0's top
    strayed[:, SR // 4 :: SR // 4] -= 0.1  # clicks under both bottoms, every quarter second
    for name, audio in (("clean", clipped), ("strayed", strayed)):
        sf.write(tmp_path / f"{name}.wav", audio.T, SR, subtype=subtype)
    clean = measure_file(tmp_path / "clean.wav").clipped_runs
    assert clean > 100
    # A click landing on a plateau may split it in two, or take it.
    assert measure_file(tmp_path / "strayed.wav").clipped_runs == pytest.approx(clean, abs=20)


NOISY_CRESTS = [
    ("PCM_U8", freq, level, 0.01) for freq in (110.0, 440.0, 997.0) for level in (-0.5, -6.0, -15.0)
] + [
    ("PCM_16", freq, level, 2.0**-15)
    for freq in (40.0, 60.0, 120.0)
    for level in (-0.1, -11.0, -20.0)
]


@pytest.mark.parametrize(("subtype", "freq_hz", "level_dbfs", "noise_rms"), NOISY_CRESTS)
def test_noisy_crests_in_integer_files_are_not_clipping(
    subtype: str, freq_hz: float, level_dbfs: float, noise_rms: float, tmp_path: Path
) -> None:
    """A tone with noise (dither, hiss) in a file of few bits sits on each level under its
    peak for a few samples at many of its crests, left by steps of noise: not clip levels,
    since its louder samples pass them far more often."""
    tone = sine(freq_hz, level_dbfs, 3.0, SR)
    noisy = tone + noise_rms * np.random.default_rng(7).standard_normal(tone.shape)
    sf.write(tmp_path / "tone.wav", noisy.T, SR, subtype=subtype)
    assert measure_file(tmp_path / "tone.wav").clipped_runs == 0


QUIET_TONES = [
    ("PCM_16", level, freq) for level in (-20.0, -40.0) for freq in (40.0, 100.0, 997.0)
] + [
    ("PCM_U8", -20.0, 997.0),  # 8 bits: a slow wave clipped at 13 LSB is reached in 1-LSB steps
    # Crests of 3-5 samples left by 2-3 steps, which a fixed 1.5-step rule counted as clipped.
    ("PCM_16", -6.0, 40.0),
    ("PCM_16", -10.75, 80.0),
    ("PCM_16", -40.0, 440.0),
    ("PCM_U8", -15.0, 997.0),
]


@pytest.mark.parametrize(("subtype", "level_dbfs", "freq_hz"), QUIET_TONES)
def test_quiet_tones_in_integer_files_are_not_clipping_until_clipped(
    subtype: str, level_dbfs: float, freq_hz: float, tmp_path: Path
) -> None:
    """A quiet tone's crest, in a file of few bits, sits on one value for several samples and
    is reached by one step of those bits: not a clipped plateau. The same tone clipped by 3 dB
    and then turned down to the same level is."""
    tone = sine(freq_hz, level_dbfs, 3.0, SR)
    clipped = np.clip(tone, -0.7 * np.abs(tone).max(), 0.7 * np.abs(tone).max()) / 0.7
    for audio, clips in ((tone, False), (clipped, True)):
        path = tmp_path / f"{clips}.wav"
        sf.write(path, audio.T, SR, subtype=subtype)
        runs = measure_file(path).clipped_runs
        periods = 3.0 * freq_hz
        assert (runs >= periods) if clips else (runs == 0), (clips, runs)


def test_dc_offset_is_the_largest_channel_mean() -> None:
    audio = music_like(5.0, SR)
    audio[1] += 0.01
    assert measure(audio, SR).dc_offset == pytest.approx(0.01, abs=1e-3)


def test_a_seamless_loop_has_a_small_seam_and_a_cut_one_a_large_one() -> None:
    audio = sine(441.0, -6.0, 8.0, SR)  # exactly 441 periods per second: any whole second loops
    seamless = measure(audio, SR, loop_start=SR, loop_length=6 * SR)
    cut = measure(audio, SR, loop_start=SR, loop_length=6 * SR - 25)  # a quarter period short
    assert seamless.seam_jump_ratio is not None and cut.seam_jump_ratio is not None
    assert seamless.seam_jump_ratio < 1.0
    assert cut.seam_jump_ratio > 10.0
    assert seamless.seam_loudness_change_lu == pytest.approx(0.0, abs=0.05)


def test_the_true_peak_of_a_loop_counts_its_seam() -> None:
    """A player goes from the loop's end into its start on every pass: a jump there overshoots
    between samples, which the file read once from its start never does."""
    t = np.arange(SR) / SR
    # 100.5 periods: the loop ends at the trough and starts at the crest.
    wave = 0.7 * np.cos(2 * np.pi * 100.5 * t)
    audio = np.stack([wave, wave]).astype(np.float32)
    once = measure(audio, SR)
    looped = measure(audio, SR, loop_start=0, loop_length=SR)
    assert once.true_peak_dbtp == pytest.approx(20 * math.log10(0.7), abs=0.05)
    seam_dbtp = 20 * math.log10(float(oversampled_peaks(audio, ends="loop").max()))
    assert looped.true_peak_dbtp == pytest.approx(seam_dbtp, abs=1e-6)
    assert looped.true_peak_dbtp > once.true_peak_dbtp + 0.5


@pytest.mark.parametrize(
    ("loop_start", "loop_length", "said"),
    [
        (10, 1, "the loop from frame 10 is 1 frame(s) long; a loop needs at least 2"),
        (5000, -4899, "the loop starts at frame 5000 and ends at frame 101: its end must come"),
        (60000, -15900, "the loop starts at frame 60000 and ends at frame 44100: its end must"),
        (-1, 100, "loop [-1, 99) frames lies outside the audio's 44100 frames"),
        (44000, 101, "loop [44000, 44101) frames lies outside the audio's 44100 frames"),
    ],
)
def test_a_loop_that_cannot_be_measured_is_named_as_it_is(
    loop_start: int, loop_length: int, said: str
) -> None:
    """A one-frame loop inside the audio was said to lie outside it."""
    with pytest.raises(AudioError) as error:
        measure(sine(441.0, -6.0, 1.0, SR), SR, loop_start=loop_start, loop_length=loop_length)
    assert said in str(error.value)


def test_seam_loudness_compares_the_loop_end_with_its_start() -> None:
    audio = pink_noise(-20.0, 12.0, SR)
    audio[:, 6 * SR :] *= 0.5  # the second half is 6 dB quieter
    metrics = measure(audio, SR, loop_start=0, loop_length=12 * SR)
    assert metrics.seam_loudness_change_lu == pytest.approx(6.02, abs=0.2)


def _bar_lines(offset_ms: float) -> list[int]:
    """chord_cycle's downbeats after the first, to the end of the second cycle, `offset_ms` off."""
    return [k * 2 * SR + round(offset_ms / 1000.0 * SR) for k in range(1, 9)]


@BAR_OFFSETS_MS
def test_a_phrase_that_repeats_exactly_is_judged_against_its_own_bar_lines(
    offset_ms: float,
) -> None:
    # A chord per bar, each at its own level: the loudness steps at every bar line, the wrap too.
    metrics = measure(
        chord_cycle(17.0, SR), SR, loop_start=0, loop_length=CYCLE, bar_lines=_bar_lines(offset_ms)
    )
    assert (
        metrics.seam_loudness_change_lu is not None and metrics.bar_loudness_change_lu is not None
    )
    assert metrics.seam_loudness_change_lu > LIMITS.seam_loudness_max_lu  # raw: rejected today
    assert metrics.seam_loudness_excess_lu is not None
    assert metrics.seam_loudness_excess_lu <= LIMITS.seam_loudness_max_lu


@BAR_OFFSETS_MS
def test_a_level_defect_at_the_wrap_still_exceeds_the_music_s_own_change(offset_ms: float) -> None:
    audio = chord_cycle(17.0, SR)
    audio[:, CYCLE - 3 * SR : CYCLE] *= 10.0 ** (-3.0 / 20.0)  # a level step 1 s into bar 7
    metrics = measure(audio, SR, loop_start=0, loop_length=CYCLE, bar_lines=_bar_lines(offset_ms))
    assert metrics.seam_loudness_excess_lu is not None
    assert metrics.seam_loudness_excess_lu > LIMITS.seam_loudness_max_lu


def test_a_wrap_cut_through_a_chord_fails_the_raw_jump_limit() -> None:
    # loop_seam_jump judges the raw click: the bar lines, each a chord attack, excuse nothing.
    length = CYCLE + round(0.3 * SR)  # 0.3 s into the next cycle's first chord
    metrics = measure(
        chord_cycle(17.0, SR), SR, loop_start=0, loop_length=length, bar_lines=_bar_lines(0.0)
    )
    assert metrics.seam_jump_ratio is not None
    assert metrics.seam_jump_ratio > LIMITS.seam_jump_max_ratio


def test_an_attack_struck_on_every_bar_line_is_the_music_s_own_not_a_click() -> None:
    """A tone struck at zero phase on each downbeat kinks once at the wrap of an exact bar loop:
    read as a click (8-13), the loop was rejected. Against the attacks on its exact bar grid it
    reads 1; the same music mis-cut, on its own (wrong) grid, still reads a click."""
    audio = struck_bars(4, SR)
    bar = 2 * SR
    exact = [bar * k for k in range(1, 4)]
    raw = measure(audio, SR, loop_start=0, loop_length=4 * bar)
    judged = measure(audio, SR, loop_start=0, loop_length=4 * bar, bar_lines=exact)
    assert raw.seam_jump_ratio is not None
    assert raw.seam_jump_ratio > LIMITS.seam_jump_max_ratio
    assert judged.seam_jump_ratio == pytest.approx(1.0, abs=0.01)
    short = 4 * bar - 3001  # the wrap 3001 samples before the downbeat
    grid = [round(short / 4 * k) for k in range(1, 4)]
    cut = measure(audio, SR, loop_start=0, loop_length=short, bar_lines=grid)
    assert cut.seam_jump_ratio is not None
    assert cut.seam_jump_ratio > LIMITS.seam_jump_max_ratio
    # A step into the wrap, on the exact grid: a click beside the attack is still a click (read
    # against the attacks whatever their size, it read 3.6 here and passed).
    rate = 32000
    stepped = struck_bars(8, rate)
    stepped[:, 16 * rate - 3 : 16 * rate] += 0.25
    grid = [2 * rate * k for k in range(1, 8)]
    clicked = measure(stepped, rate, loop_start=0, loop_length=16 * rate, bar_lines=grid)
    assert clicked.seam_jump_ratio is not None
    assert clicked.seam_jump_ratio > LIMITS.seam_jump_max_ratio


def test_without_bar_lines_inside_the_loop_the_excess_is_the_raw_seam() -> None:
    audio = chord_cycle(17.0, SR)
    judged = measure(audio, SR, loop_start=0, loop_length=CYCLE, bar_lines=_bar_lines(0.0))
    for bar_lines in ([], [0, CYCLE]):  # none; the loop's start and end only
        raw = measure(audio, SR, loop_start=0, loop_length=CYCLE, bar_lines=bar_lines)
        assert raw.bar_loudness_change_lu is None
        assert raw.seam_jump_ratio == judged.seam_jump_ratio
        assert raw.seam_loudness_change_lu == judged.seam_loudness_change_lu
        assert raw.seam_loudness_excess_lu == raw.seam_loudness_change_lu
    # 1 s from the ends: no room for 3 s loudness windows
    near_ends = measure(audio, SR, loop_start=0, loop_length=CYCLE, bar_lines=[SR, CYCLE - SR])
    assert near_ends.bar_loudness_change_lu is None
    assert near_ends.seam_loudness_excess_lu == near_ends.seam_loudness_change_lu
    unlooped = measure(audio, SR, bar_lines=_bar_lines(0.0))
    assert unlooped.bar_loudness_change_lu is None and unlooped.seam_loudness_excess_lu is None


def test_loop_tags_are_read_from_ogg_comments_and_the_wav_smpl_chunk(tmp_path: Path) -> None:
    audio = music_like(3.0, SR)
    info = {"input_lufs": -20.0, "gain_db": 0.0, "limiter_reduction_db": 0.0}
    loop = Master(audio, SR, loop_start=1000, loop_length=100000, **info)
    plain = Master(audio, SR, loop_start=None, loop_length=None, **info)
    files = encode(loop, ("ogg", "wav", "mp3"), tmp_path / "loop", "x", tags=TAGS)
    assert [read_loop_tags(f.path, 3 * SR) for f in files] == [(1000, 100000), (1000, 100000), None]
    ogg = measure_file(files[0].path)
    assert (ogg.loop_start, ogg.loop_length, ogg.frames) == (1000, 100000, 3 * SR)
    assert ogg.seam_jump_ratio is not None
    unlooped = encode(plain, ("ogg", "wav"), tmp_path / "plain", "x", tags=TAGS)
    assert [read_loop_tags(f.path, 3 * SR) for f in unlooped] == [None, None]
    # LOOPSTART alone loops to the end, as RPG Maker reads it (inspect refused it, exit 2).
    from mutagen.oggvorbis import OggVorbis

    tagged = OggVorbis(unlooped[0].path)
    assert tagged.tags is not None
    tagged.tags["LOOPSTART"] = ["1000"]
    tagged.save()
    assert read_loop_tags(unlooped[0].path, 3 * SR) == (1000, 3 * SR - 1000)


def _smpl_chunk(start: int, end: int, kind: int = 0) -> bytes:
    """A `smpl` chunk with one loop from `start` to `end` (inclusive) of type `kind`."""
    body = struct.pack("<9I", 0, 0, 0, 60, 0, 0, 0, 1, 0)
    body += struct.pack("<6I", 0, kind, start, end, 0, 0)
    return b"smpl" + struct.pack("<I", len(body)) + body


def test_loop_points_other_tools_write_are_read_as_they_mean_them(tmp_path: Path) -> None:
    """SDL_mixer's LOOPEND, FLAC's comments and RF64's smpl chunk read as no loop, or LOOPEND
    as a loop to the end; a ping-pong loop read as a forward one."""
    from mutagen.flac import FLAC
    from mutagen.oggvorbis import OggVorbis

    audio = music_like(3.0, SR)
    ogg = tmp_path / "sdl.ogg"
    sf.write(ogg, audio.T, SR, format="OGG", subtype="VORBIS")
    tagged = OggVorbis(ogg)
    tagged["LOOPSTART"], tagged["LOOPEND"] = ["1000"], ["101000"]  # the first frame after
    tagged.save()
    flac = tmp_path / "godot.flac"
    sf.write(flac, audio.T, SR, format="FLAC")
    comments = FLAC(flac)
    comments["LOOPSTART"], comments["LOOPLENGTH"] = ["1000"], ["100000"]
    comments.save()
    rf64 = tmp_path / "long.wav"
    sf.write(rf64, audio.T, SR, format="RF64", subtype="PCM_16")
    with rf64.open("ab") as f:
        f.write(_smpl_chunk(1000, 100999))
    for path in (ogg, flac, rf64):
        assert read_loop_tags(path, 3 * SR) == (1000, 100000), path.name
    pingpong = tmp_path / "pingpong.wav"
    sf.write(pingpong, audio.T, SR, subtype="PCM_16")
    with pingpong.open("ab") as f:
        f.write(_smpl_chunk(1000, 100999, kind=1))
    with pytest.raises(AudioError, match=r"smpl loop is ping-pong; .* only a forward loop"):
        read_loop_tags(pingpong, 3 * SR)
    # A chunk claiming 4 GB is refused, not read into memory.
    claims = tmp_path / "claims.wav"
    sf.write(claims, audio.T, SR, subtype="PCM_16")
    with claims.open("ab") as f:
        f.write(b"smpl" + struct.pack("<I", 0xFFFFFF00) + bytes(60))
    with pytest.raises(AudioError, match=r"smpl chunk .* is cut short"):
        read_loop_tags(claims, 3 * SR)


@pytest.mark.parametrize(
    ("audio", "kwargs", "message"),
    [
        (np.full((2, SR), np.nan, dtype=np.float32), {}, "NaN"),
        (np.zeros((2, SR // 10), dtype=np.float32), {}, "0.10 s long; .* at least 0.4 s"),
        # Never "0.40 s long; ... needs at least 0.4 s".
        (np.zeros((2, int(0.399 * SR)), dtype=np.float32), {}, "0.399 s long"),
        (np.zeros((2, int(0.4 * SR) - 1), dtype=np.float32), {}, r"0\.39998 s long"),
        (np.zeros((3, SR), dtype=np.float32), {}, "3 channels: the gates measure mono and stereo"),
        (np.zeros((2, SR), dtype=np.float32), {"loop_start": 0}, "given together"),
        (np.zeros((2, SR), dtype=np.float32), {"loop_start": 10, "loop_length": SR}, "outside"),
        (np.zeros((2, SR), dtype=np.float32), {"bar_lines": [-1]}, r"within the audio's .* \[-1\]"),
    ],
)
def test_bad_input_is_refused_with_a_reason(
    audio: np.ndarray, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(AudioError, match=message):
        measure(audio, SR, **kwargs)


def test_a_missing_file_is_an_audio_error(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="not found"):
        measure_file(tmp_path / "nope.ogg")
