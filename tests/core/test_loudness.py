"""The BS.1770 meters against pyloudnorm (the same filter and gating, block for block, on whole
blocks), ffmpeg's ebur128
(EBU Tech 3341's sine, and its short-term log) and a plain 4x upsampling by scipy with the same
interpolator."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
from imageio_ffmpeg import get_ffmpeg_exe as ffmpeg_exe
from scipy.signal import sosfilt, upfirdn

from soundtrack.audio import write_wav
from soundtrack.loudness import (
    _INTERPOLATOR,
    _k_weighting,
    block_powers,
    integrated_lufs,
    oversampled_peaks,
    short_term_lufs,
)
from tests.reference import ebur128, ebur128_short_term
from tests.signals import fading, music_like, pink_noise, sine


def _pyloudnorm(audio: np.ndarray, rate: int, block_s: float = 0.4) -> float:
    """pyloudnorm with BS.1770's own filter (its default is an approximation)."""
    meter = pyloudnorm.Meter(rate, filter_class="DeMan", block_size=block_s)
    return float(meter.integrated_loudness(audio.T))


def _loud_then_quiet(rate: int) -> np.ndarray:
    # 4 s of music, then 4 s 30 dB down: the relative gate drops the quiet half.
    music = music_like(8.0, rate, peak_dbfs=-3.0, seed=3)
    music[:, 4 * rate :] *= 10 ** (-30 / 20)
    return music


@pytest.mark.parametrize(
    ("name", "audio", "rate"),
    [
        ("stereo music 44.1 kHz", music_like(12.0, 44100, seed=1), 44100),
        ("mono music 32 kHz", music_like(6.0, 32000, channels=1, seed=2), 32000),
        ("pink noise 48 kHz", pink_noise(-20.0, 5.0, 48000), 48000),
        ("five channels", pink_noise(-30.0, 3.0, 48000, channels=5), 48000),
        ("relative gate", _loud_then_quiet(44100), 44100),
        # From -20 to -95 LUFS: blocks on both sides of each gate.
        ("a fade through both gates", fading(pink_noise(-20.0, 14.0, 44100), 75.0), 44100),
    ],
)
def test_integrated_loudness_matches_pyloudnorm(name: str, audio: np.ndarray, rate: int) -> None:
    assert integrated_lufs(audio, rate) == pytest.approx(_pyloudnorm(audio, rate), abs=1e-6)


def test_every_block_is_filtered_as_by_one_pass_over_the_whole_channel() -> None:
    """The K-weighting runs a piece of the channel at a time (a 10-minute track's float64
    copies took 0.9 GB); each 400 ms block holds what scipy's filter gives over the whole."""
    rate, block_frames = 48000, 19200
    music = music_like(20.0, rate, seed=4)
    weighted = sosfilt(_k_weighting(rate), music.astype(np.float64), axis=1) ** 2
    starts = np.arange(0, music.shape[1] - block_frames + 1, block_frames // 4)
    expected = [weighted[:, s : s + block_frames].mean(axis=1).sum() for s in starts]
    assert block_powers(music, rate) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("duration_s", "rate"), [(0.46, 44100), (0.55, 48000), (0.96, 44100), (8.0, 8000)]
)
def test_integrated_loudness_matches_ffmpeg_on_short_files_and_at_low_rates(
    tmp_path: Path, duration_s: float, rate: int
) -> None:
    """pyloudnorm's last, part-filled block read a 0.46 s file 0.3 LU low, and its default
    K-weighting read 8 kHz music 0.25 LU low and 2 kHz audio as -inf."""
    music = music_like(duration_s, rate, seed=4)
    write_wav(tmp_path / "music.wav", music, rate)
    reference_lufs, _ = ebur128(tmp_path / "music.wav")
    assert integrated_lufs(music, rate) == pytest.approx(reference_lufs, abs=0.06)


def test_audio_under_8_khz_is_measured_at_48_khz(tmp_path: Path) -> None:
    """The K-weighting's shelf (1.68 kHz) cannot be designed at 2 kHz: such audio read -inf
    (ffmpeg's ebur128 reads -70 there); resampled by ffmpeg to 48 kHz it has a loudness."""
    music = music_like(4.0, 2000, seed=4)
    write_wav(tmp_path / "low.wav", music, 2000)
    subprocess.run(
        [
            ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            str(tmp_path / "low.wav"),
            "-ar",
            "48000",
            "-c:a",
            "pcm_f32le",
            str(tmp_path / "up.wav"),
        ],
        check=True,
    )
    reference_lufs, _ = ebur128(tmp_path / "up.wav")
    assert integrated_lufs(music, 2000) == pytest.approx(reference_lufs, abs=0.06)


def test_the_k_weighting_is_bs_1770s_own_at_48_khz() -> None:
    """BS.1770-4 Table 1 and 2's coefficients, where pyloudnorm's default design is 0.04 LU off:
    a -20 dBFS 997 Hz sine in two channels reads -20.00 LUFS."""
    from soundtrack.loudness import _k_weighting

    shelf, high_pass = _k_weighting(48000)
    assert shelf == pytest.approx(
        [
            1.53512485958697,
            -2.69169618940638,
            1.19839281085285,
            1.0,
            -1.69065929318241,
            0.73248077421585,
        ],
        abs=1e-9,
    )
    assert high_pass == pytest.approx(
        [1.0, -2.0, 1.0, 1.0, -1.99004745483398, 0.99007225036621], abs=1e-9
    )
    assert integrated_lufs(sine(997.0, -20.0, 10.0, 48000), 48000) == pytest.approx(
        -20.0, abs=0.005
    )


def test_one_long_block_is_short_term_loudness() -> None:
    music = music_like(3.0, 44100, seed=5)
    assert integrated_lufs(music, 44100, block_s=3.0) == pytest.approx(
        _pyloudnorm(music, 44100, block_s=3.0), abs=1e-6
    )


def test_audio_under_the_absolute_gate_has_no_loudness() -> None:
    quiet = sine(1000.0, -80.0, 2.0, 44100)
    assert integrated_lufs(quiet, 44100) == -math.inf
    assert integrated_lufs(np.zeros((2, 44100), np.float32), 44100) == -math.inf


def test_ebu_tech_3341_sine_reads_minus_23_lufs(tmp_path: Path) -> None:
    sine_23 = sine(1000.0, -23.0, 20.0, 48000)
    write_wav(tmp_path / "sine.wav", sine_23, 48000)
    reference_lufs, reference_peak_dbtp = ebur128(tmp_path / "sine.wav")
    assert integrated_lufs(sine_23, 48000) == pytest.approx(-23.0, abs=0.1)
    assert integrated_lufs(sine_23, 48000) == pytest.approx(reference_lufs, abs=0.1)
    peak_dbtp = 20 * math.log10(oversampled_peaks(sine_23).max())
    assert peak_dbtp == pytest.approx(reference_peak_dbtp, abs=0.1)


@pytest.mark.parametrize("rate", [48000, 44100])
def test_short_term_loudness_matches_ffmpeg_every_100_ms(tmp_path: Path, rate: int) -> None:
    music = _loud_then_quiet(rate)
    write_wav(tmp_path / "music.wav", music, rate)
    reference = {round(t, 1): lufs for t, lufs in ebur128_short_term(tmp_path / "music.wav")}
    times_s, lufs = short_term_lufs(music, rate)
    # A value from the first full 3 s window to the last 100 ms step, as ffmpeg prints them
    # (-120.7 before its window has filled).
    assert times_s[0] == pytest.approx(3.0) and times_s[-1] == pytest.approx(8.0)
    assert np.diff(times_s) == pytest.approx(0.1)
    assert {lufs for t, lufs in reference.items() if t < 2.95} == {-120.7}
    expected = np.array([reference[round(t, 1)] for t in times_s])
    assert lufs == pytest.approx(expected, abs=0.1)  # ffmpeg prints 0.1 steps
    assert lufs.max() - lufs.min() > 15, "the quiet half is measured, not gated away"


def test_short_term_loudness_steps_by_its_hop() -> None:
    music = music_like(6.0, 44100, seed=6)
    fine_times_s, fine = short_term_lufs(music, 44100)
    times_s, lufs = short_term_lufs(music, 44100, hop_s=0.5)
    assert times_s == pytest.approx(fine_times_s[::5]) and lufs == pytest.approx(fine[::5])
    assert short_term_lufs(music[:, : 2 * 44100], 44100)[1].size == 0  # under 3 s: none
    with pytest.raises(ValueError, match=r"hop_s must be above 0 s \(got 0.0\)"):
        short_term_lufs(music, 44100, hop_s=0.0)


def _upsampled_magnitudes(audio: np.ndarray) -> np.ndarray:
    """|x| at n, n + 1/4, n + 2/4, n + 3/4 per frame (max over channels), by zero-stuffing and
    filtering with the interpolator; phase 0 is the samples themselves."""
    delay = (_INTERPOLATOR.size - 1) // 2
    up = upfirdn(_INTERPOLATOR, audio.astype(np.float64), up=4, axis=1)
    up = up[:, delay : delay + 4 * audio.shape[1]].reshape(audio.shape[0], -1, 4)
    up[:, :, 0] = audio
    magnitudes: np.ndarray = np.abs(up).max(axis=2).max(axis=0)
    return magnitudes


def test_oversampled_peaks_are_the_4x_upsampled_signal() -> None:
    noise = (np.random.default_rng(6).standard_normal((2, 20_000)) * 0.2).astype(np.float32)
    # Beyond its ends the audio is mirrored (x[-n] = x[n]), as libswresample extends it.
    edge = _INTERPOLATOR.size
    mirrored = np.pad(noise, ((0, 0), (edge, edge)), mode="reflect")
    expected = _upsampled_magnitudes(mirrored)[edge:-edge]
    assert np.abs(oversampled_peaks(noise) - expected).max() < 1e-6
    assert oversampled_peaks(noise).max() == pytest.approx(expected.max(), abs=1e-6)


@pytest.mark.parametrize(("low_hz", "high_hz"), [(20, 15000), (15000, 18800)])
def test_the_4x_points_of_music_up_to_18_8_khz_are_read_as_they_are(
    low_hz: int, high_hz: int
) -> None:
    """The interpolator was flat to 15 kHz only (-0.5 dB at 18 kHz): a hi-hat's or a click's
    peaks read low, and the limiter let through what it could not see."""
    rate, frames = 44100, 4410  # every tone below repeats in 0.1 s: the loop reads exactly
    quarters = np.arange(4 * frames) / 4
    rng = np.random.default_rng(3)
    tones = np.arange(low_hz, high_hz, 170)
    phases = rng.uniform(0, 2 * np.pi, tones.size)
    fine = 0.2 * np.sin(2 * np.pi * np.outer(quarters, tones) / rate + phases).sum(axis=1)
    exact = np.abs(fine).reshape(-1, 4).max(axis=1)  # the signal itself at n, n + 1/4, ...
    read = oversampled_peaks(fine[::4][np.newaxis].astype(np.float32), ends="loop")
    assert np.abs(read - exact).max() < 0.01 * exact.max()


@pytest.mark.parametrize(
    "shape",
    ["starts at its crest", "ends at its crest", "starts and ends on a held level"],
)
def test_a_file_that_starts_or_ends_loud_reads_its_true_peak_as_ffmpeg_does(
    tmp_path: Path, shape: str
) -> None:
    rate = 48000
    t = np.arange(3 * rate) / rate
    wave = {
        "starts at its crest": 0.85 * np.cos(2 * np.pi * 200 * t),
        "ends at its crest": 0.85 * np.cos(2 * np.pi * 200 * t[::-1]),
        "starts and ends on a held level": np.full(t.size, 0.5),
    }[shape]
    audio = np.stack([wave, wave]).astype(np.float32)
    write_wav(tmp_path / "edge.wav", audio, rate)
    _, reference_dbtp = ebur128(tmp_path / "edge.wav")
    # Silence beyond the ends would read the step into the first sample as a 1 dB overshoot.
    peak_dbtp = 20 * math.log10(oversampled_peaks(audio).max())
    assert peak_dbtp == pytest.approx(reference_dbtp, abs=0.05)


def test_circular_peaks_wrap_the_end_into_the_start() -> None:
    loop = (np.random.default_rng(7).standard_normal((1, 5_000)) * 0.2).astype(np.float32)
    frames = loop.shape[1]
    # The middle of three copies back to back sees its neighbours as the loop would.
    expected = _upsampled_magnitudes(np.tile(loop, 3))[frames : 2 * frames]
    assert np.abs(oversampled_peaks(loop, ends="loop") - expected).max() < 1e-6
    # Without the wrap the first and last few frames see silence, and read differently.
    assert np.abs(oversampled_peaks(loop) - expected).max() > 1e-3
